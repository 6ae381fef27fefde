"""capsal-explain, capsal-eval and capsal-train with a pretrained Hugging Face captioner (``model=hf_captioner
model.name_or_path=<folder>``) in place of a capsal checkpoint: tiny random models saved by ``save_pretrained``."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from tiny import HF_KEEP, compose_app, save_tiny_hf

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.cli.evaluate import evaluate
from capsal.cli.explain import explain
from capsal.cli.train import example_captions, train
from capsal.errors import UserError


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_apps")
    families = ("vit_gpt2", "blip", "git", "blip2", "llava", "paligemma", "idefics3", "qwen2_vl", "florence2")
    return {family: save_tiny_hf(root / family, family) for family in families}


def test_explain_an_image_file_with_a_pretrained_folder(folders, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(path)
    model = ["model=hf_captioner", f"model.name_or_path={folders['vit_gpt2']}"]
    summary = explain(compose_app("explain", tmp_path / "out", *model, f"input={path}", "query='a yellow triangle'"))
    assert summary["sentence"] == "a yellow triangle" and summary["checkpoint"] == str(folders["vit_gpt2"])
    arrays = np.load(tmp_path / "out" / "saliency.npz")
    assert arrays["scores"].shape == (3, 16)  # one row per word, though yellow and triangle are two tokens each
    assert arrays["maps"].shape == (3, 90, 150)  # the 4 x 4 patch grid mapped back onto the whole input
    image = np.asarray(Image.open(tmp_path / "out" / "saliency.png").convert("RGB"))
    assert image.shape[0] >= 150 and image.std() > 10


def test_explain_a_dataset_sample_needs_datamodule_and_keeps_blips_prompt_out_of_the_words(folders, tmp_path):
    model = ["model=hf_captioner", f"model.name_or_path={folders['blip']}", "model.prompt='a picture of'"]
    with pytest.raises(UserError, match="records no datamodule"):
        explain(compose_app("explain", tmp_path / "a", *model, "sample=val:0"))
    data = ["datamodule=shapes_image", "datamodule.num_val=4", "sample=val:1", "reference=true"]
    summary = explain(compose_app("explain", tmp_path / "b", *model, "model.keep=encoder_output", *data))
    assert not summary["sentence"].startswith("a picture of")
    assert all(len(p["text"].split()) >= 3 for p in summary["panels"])  # the reference's noun phrases, in words
    assert (tmp_path / "b" / "saliency.png").is_file()


def test_explain_refuses_both_or_neither_model_source_and_untrained_models(folders, tmp_path):
    with pytest.raises(UserError, match="exactly one of ckpt_path"):
        explain(compose_app("explain", tmp_path, "input=x.png"))
    with pytest.raises(UserError, match="untrained"):
        explain(compose_app("explain", tmp_path, "model=s2vt", "input=x.png"))


def test_eval_writes_the_tables_for_a_pretrained_folder(folders, tmp_path):
    model = ["model=hf_captioner", f"model.name_or_path={folders['blip']}"]
    data = ["datamodule=shapes_image", "datamodule.num_test=6", "max_samples=6", "caption_metrics=[]"]
    results = evaluate(compose_app("eval", tmp_path, *model, *data, "explainers=[caption_guided,soft_attention]"))
    tables = (tmp_path / "tables.md").read_text()
    assert "Table 1: pointing game" in tables and "| soft_attention |" in tables
    assert results["phrases"] > 0 and results["checkpoint"] == str(folders["blip"])
    assert 0.0 <= results["localisation"]["caption_guided"]["pointing_game"]["avg"] <= 1.0


@pytest.mark.parametrize(
    ("family", "keep"),
    [("git", "input"), ("git", "prefix"), ("blip2", "input"), ("blip2", "encoder_output")]
    + [(family, keep) for family in ("llava", "paligemma", "idefics3", "qwen2_vl") for keep in ("input", "prefix")]
    + [("florence2", "prefix"), ("florence2", "encoder_output")],
)
def test_explain_and_eval_a_pretrained_prefix_family_folder_on_shapes_image(folders, tmp_path, family, keep):
    model = ["model=hf_captioner", f"model.name_or_path={folders[family]}", f"model.keep={keep}"]
    data = ["datamodule=shapes_image", "datamodule.num_val=4", "datamodule.num_test=6"]
    summary = explain(compose_app("explain", tmp_path / "explain", *model, *data, "sample=val:1", "reference=true"))
    assert summary["panels"] and (tmp_path / "explain" / "saliency.png").is_file()
    arrays = np.load(tmp_path / "explain" / "saliency.npz")
    assert arrays["scores"].shape[-1] == 16  # one score per patch of the 4 x 4 grid
    eval_data = [*data, "max_samples=6", "caption_metrics=[]", "explainers=[caption_guided,gradient,random]"]
    results = evaluate(compose_app("eval", tmp_path / "eval", *model, *eval_data))
    assert "Table 1: pointing game" in (tmp_path / "eval" / "tables.md").read_text()
    assert results["phrases"] > 0 and results["checkpoint"] == str(folders[family])
    assert 0.0 <= results["localisation"]["caption_guided"]["pointing_game"]["avg"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "explainers"),
    [
        ("vit_gpt2", "[caption_guided,rollout,relevancy,random]"),
        ("git", "[caption_guided,random]"),
        ("qwen2_vl", "[caption_guided,random]"),
    ],
)
def test_a_fine_tuned_captioner_loads_alone_and_its_saliency_points_at_the_named_object(tmp_path, family, explainers):
    """Seeded: a tiny ViT-GPT2 (cross-attention) or GIT (image tokens as the language model's prefix; 64 x 64 pixels,
    an 8 x 8 patch grid) or Qwen2-VL (64 x 64 pixels, a 4 x 4 grid of merged tokens) fine-tuned 60 steps on
    single-object shapes_image; its checkpoint loads with the pretrained folder deleted, and caption-guided maxima
    fall on the named object far more often than random points (capsal-eval on 48 held-out images; ViT-GPT2's
    rollout and relevancy printed beside them)."""
    folder = save_tiny_hf(tmp_path / family, family, image_size=64)
    data = ["datamodule.num_train=2000", "datamodule.num_val=16", "datamodule.num_test=48", "datamodule.batch_size=32"]
    data += ["datamodule.min_objects=1", "datamodule.max_objects=1", "datamodule.captions_per_image=1"]
    steps = ["trainer.max_steps=60", "trainer.max_epochs=null", "trainer.check_val_every_n_epoch=null"]
    steps += ["trainer.val_check_interval=60", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false"]
    model = ["model=hf_captioner", f"model.name_or_path={folder}", "model.optimizer.lr=0.003"]
    model += ["model.caption_metrics=[]"]
    cfg = compose_app("train", tmp_path / "train", *model, *data, *steps, "logger=csv", "seed=0", "summary_examples=1")
    OmegaConf.resolve(cfg)
    start = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - start
    assert Path(summary["gallery"]).is_file()  # the saliency callback drew its gallery
    shutil.rmtree(folder)
    reloaded = load_captioner(summary["last_checkpoint"])
    again = example_captions(reloaded, checkpoint_datamodule(reloaded), 1)
    assert again == summary["examples"]  # the fine-tuned weights, tokenizer and data came back from the file alone
    results = evaluate(
        compose_app(
            "eval",
            tmp_path / "eval",
            f"ckpt_path={summary['last_checkpoint']}",
            f"explainers={explainers}",
            "caption_metrics=[]",
            "max_samples=48",
        )
    )
    pointing = {name: scores["pointing_game"]["avg"] for name, scores in results["localisation"].items()}
    guided, chance = pointing["caption_guided"], pointing["random"]
    shown = ", ".join(f"{name} {value:.3f}" for name, value in pointing.items())
    print(f"{family} fine-tuned in {seconds:.0f} s; pointing game: {shown}")
    assert guided >= chance + 0.15


def test_explain_and_eval_an_idefics3_folder_with_tiles_map_every_tile_onto_the_image(tmp_path):
    """2 x 2 tiles and a thumbnail (20 items) on a 4 x 4 grid of cells: the figure, the maps at the input's size, the
    explorer's grid, and capsal-eval's tables with the centre baseline read through the same layout."""
    folder = save_tiny_hf(tmp_path / "tiles", "idefics3_tiles")
    model = ["model=hf_captioner", f"model.name_or_path={folder}", "model.keep=prefix"]
    data = ["datamodule=shapes_image", "datamodule.num_val=4", "datamodule.num_test=6"]
    summary = explain(compose_app("explain", tmp_path / "explain", *model, *data, "sample=val:1", "reference=true"))
    assert summary["grid"] == [4, 4] and (tmp_path / "explain" / "saliency.png").is_file()
    arrays = np.load(tmp_path / "explain" / "saliency.npz")
    assert arrays["scores"].shape[-1] == 20 and arrays["maps"].shape[-2:] == (64, 64)
    eval_data = [*data, "max_samples=6", "caption_metrics=[]", "explainers=[caption_guided,center,random]"]
    results = evaluate(compose_app("eval", tmp_path / "eval", *model, *eval_data))
    assert "Table 1: pointing game" in (tmp_path / "eval" / "tables.md").read_text() and results["phrases"] > 0
    assert 0.0 <= results["localisation"]["center"]["pointing_game"]["avg"] <= 1.0


@pytest.mark.parametrize("family", ["llava", "paligemma", "idefics3", "florence2", "blip2"])
def test_capsal_train_fine_tunes_the_family_and_its_checkpoint_loads_alone(tmp_path, family):
    """``capsal-train model=hf_captioner`` on shapes_image, two steps: the validation loss is finite, and the
    checkpoint, with the pretrained folder deleted, gives the run's own example captions (weights, processor and
    prefix in the file)."""
    folder = save_tiny_hf(tmp_path / family, family)
    keep = HF_KEEP.get(family, ("input",))[0]
    data = ["datamodule.num_train=8", "datamodule.num_val=4", "datamodule.num_test=4", "datamodule.batch_size=4"]
    steps = ["trainer.max_steps=2", "trainer.max_epochs=null", "trainer.num_sanity_val_steps=0"]
    steps += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    model = ["model=hf_captioner", f"model.name_or_path={folder}", f"model.keep={keep}", "model.caption_metrics=[]"]
    cfg = compose_app("train", tmp_path / "train", *model, *data, *steps, "logger=csv", "seed=0", "summary_examples=1")
    OmegaConf.resolve(cfg)
    summary = train(cfg)
    assert math.isfinite(summary["metrics"]["val/loss"])
    shutil.rmtree(folder)
    reloaded = load_captioner(summary["last_checkpoint"])
    assert example_captions(reloaded, checkpoint_datamodule(reloaded), 1) == summary["examples"]
