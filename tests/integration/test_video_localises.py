"""Spatio-temporal saliency localises inside video frames on the paper's pipeline, in miniature: a CNN pre-trained
by captioning shapes_image, frozen; its grids of shapes_video cached by capsal-extract; S2VT trained on the cache
(frame descriptor = grid mean); capsal-eval scores where inside its most salient frame each phrase points."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from parity import check, compare
from tiny import compose_app, compose_train, torch_threads

from capsal import viz
from capsal.callbacks import gallery
from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.cli.evaluate import evaluate
from capsal.cli.extract import extract
from capsal.cli.train import train
from capsal.datamodules.features import FeatureSample
from capsal.explainers import build_explainers

QUIET = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.max_time=null",
    "summary_examples=0",
]
BACKBONE = [  # the demo's pre-training, narrower and shorter
    "datamodule.num_train=2000",
    "datamodule.num_val=16",
    "model.backbone.channels=[8,16,32]",
    "trainer.max_epochs=4",
]
VIDEO_DATA = [  # shapes_video as the demo has it (26 frames of 64x64), fewer clips
    "datamodule.frame_size=64",
    "datamodule.num_train=512",
    "datamodule.num_val=8",
    "datamodule.num_test=48",
]
VIDEO = [
    "model.hidden_size=128",
    "model.embed_size=32",
    "model.caption_metrics=[]",
    "trainer.max_epochs=30",
    "callbacks.saliency.localisation=false",
    "callbacks.saliency.num_samples=2",
    "callbacks.saliency.every_n_epochs=30",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """As make demo-video: these small steps gain little from two torch threads and lose much on a busy machine."""
    with torch_threads(1):
        yield


def _train(output: Path, *overrides: str) -> dict:
    cfg = compose_train(*QUIET, *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output)
    OmegaConf.resolve(cfg)
    return train(cfg)


@pytest.fixture(scope="session")
def cached_video_model(tmp_path_factory) -> dict:
    """One chain for the session, seeded: pre-train the backbone, extract, train S2VT on the cache (paths inside)."""
    with torch_threads(1):
        return _chain(tmp_path_factory.mktemp("video_chain"))


def _chain(root: Path) -> dict:
    start = time.perf_counter()
    pretrained = _train(root / "backbone", "experiment=demo_video_backbone", *BACKBONE)["last_checkpoint"]
    print(f"pre-trained in {time.perf_counter() - start:.0f} s")
    features = root / "features"
    extract(
        compose_app(
            "extract",
            root / "extract",
            "datamodule=shapes_video",
            *VIDEO_DATA,
            "backbone=checkpoint",
            f"backbone.checkpoint={pretrained}",
            f"features_dir={features}",
        )
    )
    print(f"extracted at {time.perf_counter() - start:.0f} s")
    paths = [f"datamodule.features_dir={features}", f"model.backbone.checkpoint={pretrained}"]
    summary = _train(root / "video", "experiment=demo_video", *VIDEO_DATA, *VIDEO, *paths)
    return {"root": root, "checkpoint": summary["last_checkpoint"], "seconds": time.perf_counter() - start}


@pytest.mark.slow
def test_caption_guided_points_inside_frames_better_than_random_points_and_the_gradient(cached_video_model):
    out = cached_video_model["root"] / "eval"
    cfg = compose_app(
        "eval",
        out,
        f"ckpt_path={cached_video_model['checkpoint']}",
        "explainers=[caption_guided,gradient,random]",
        "caption_metrics=[]",
        "trainer=cpu",
    )
    results = evaluate(cfg)["localisation"]
    spatial = {name: results[name]["spatial_pointing"]["avg"] for name in results}
    temporal = {name: results[name]["temporal_pointing"]["avg"] for name in results}
    print(
        f"spatial pointing in the most salient frame (48 test clips, chain {cached_video_model['seconds']:.0f} s): "
        + ", ".join(f"{name} {value:.3f} (temporal {temporal[name]:.3f})" for name, value in spatial.items())
    )
    assert spatial["caption_guided"] >= spatial["random"] + 0.2
    assert spatial["caption_guided"] >= spatial["gradient"] + 0.05


@pytest.mark.slow
def test_the_gallery_of_a_cache_trained_model_shows_the_real_frames(cached_video_model, monkeypatch):
    model = load_captioner(cached_video_model["checkpoint"])
    datamodule = checkpoint_datamodule(model)
    samples = [datamodule.sample("val", k) for k in range(2)]
    assert all(isinstance(s, FeatureSample) for s in samples)  # cached grids: pixels are not part of the batch
    shown: list[np.ndarray] = []
    draw = viz.overlay_cell

    def keep(image, *args, **kwargs):
        shown.append(image)
        return draw(image, *args, **kwargs)

    monkeypatch.setattr(viz, "overlay_cell", keep)
    grid = torch.stack([s.grid for s in samples]).float()
    explainers = build_explainers(["caption_guided"], {})
    figures = gallery.explain_gallery(model, explainers, samples, model.items(grid), grid)
    source = datamodule.build_split("val")  # the synthetic frames themselves
    frames = {tuple(np.round(f * 255).astype(np.uint8).ravel()[:64]) for s in range(2) for f in _frames(source[s])}
    assert shown and all(image.mean() > 0.1 for image in shown), "a gallery frame is black"
    assert all(tuple(np.round(image * 255).astype(np.uint8).ravel()[:64]) in frames for image in shown)
    for figure in figures:
        assert figure.image.shape[1] == viz.VIDEO_WIDTH and figure.image.std() > 20
    written = sorted((cached_video_model["root"] / "video" / "gallery").glob("epoch_*/sample_*.png"))
    assert len(written) == 4  # the training callback's gallery: 2 samples x (prediction, reference)


@pytest.mark.slow
def test_bf16_maps_of_the_cache_trained_model_match_float32(cached_video_model, bf16_kernels):
    model = load_captioner(cached_video_model["checkpoint"])
    check(compare(model, checkpoint_datamodule(model), "caption_guided"), "caption_guided", "cache-trained")


def _frames(sample) -> list[np.ndarray]:
    return [viz.to_numpy_image(frame) for frame in sample.pixels]
