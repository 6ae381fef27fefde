"""The real-data path end to end at the real data's shape: every README command of a dataset, as a user runs them.

Each test writes a realistic copy (``tests/datasets_on_disk.py``), then ``capsal-extract`` (a real subprocess) ->
``capsal-train`` from the cache for S2VT and the Transformer (default callbacks on) -> ``capsal-eval`` ->
``capsal-explain sample=test:0 reference=true``. The Python entry points get configs composed by Hydra from the same
override strings the command line takes. Substitutions, and only these: ``weights=null``, ``trainer=cpu``, small
image sizes and sample counts, ``max_samples``, fewer explainers.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets_on_disk import write_flickr30k_entities, write_msrvtt
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict
from PIL import Image

from capsal.cli.evaluate import evaluate
from capsal.cli.explain import explain
from capsal.cli.train import train

pytestmark = pytest.mark.slow

MODELS = ("s2vt", "transformer")
PHASES: dict[str, float] = {}  # seconds per command, printed with each chain's wall time


def compose_cfg(app: str, output_dir: Path, *overrides: str):
    """The config ``capsal-<app> <overrides>`` runs with, writing into ``output_dir``."""
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        cfg = compose(config_name=app, overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def run_cli(app: str, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m capsal.cli.<app> <overrides>`` as a user runs it (no GPU, an empty torch hub cache)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TORCH_HOME": str(tmp_path / "torch_home")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", f"capsal.cli.{app}", *overrides, f"hydra.run.dir={tmp_path / f'hydra_{app}'}"]
    tick = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    PHASES[f"{app} (subprocess)"] = time.perf_counter() - tick
    assert result.returncode == 0, f"capsal-{app} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(autouse=True)
def _offline_torch_home(tmp_path, monkeypatch):
    (tmp_path / "torch_home").mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # nothing cached: nothing may be downloaded
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def train_overrides(name: str, root: Path, cache: Path, model: str, data: list[str], backbone: list[str]) -> list[str]:
    return [
        f"datamodule={name}",
        f"datamodule.root={root}",
        f"datamodule.features_dir={cache}",
        *data,
        "datamodule.batch_size=4",
        "datamodule.num_workers=0",
        f"model={model}",
        *backbone,
        "trainer=cpu",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]


def not_black(path: Path) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return float(pixels.std())


def train_eval_explain(tmp_path, name, root, cache, data, backbone, eval_options, check_eval) -> dict[str, dict]:
    """``capsal-train`` for each model from ``cache``, then ``capsal-eval`` and ``capsal-explain`` on its checkpoint."""
    out: dict[str, dict] = {}
    for model in MODELS:
        run = tmp_path / model
        overrides = train_overrides(name, root, cache, model, data, backbone)
        tick = time.perf_counter()
        summary = train(compose_cfg("train", run / "train", *overrides))
        PHASES[f"{name} train {model}"] = time.perf_counter() - tick
        assert summary["global_step"] == 2 and np.isfinite(summary["metrics"]["val/loss"])
        ckpt = Path(summary["last_checkpoint"])
        assert ckpt.is_file()
        gallery = Path(summary["gallery"])  # default callbacks: checkpoint + saliency gallery
        pngs = sorted(gallery.parent.rglob("*.png"))
        assert pngs and all(not_black(p) > 5 for p in pngs), "a gallery figure is blank"

        tick = time.perf_counter()
        results = evaluate(compose_cfg("eval", run / "eval", f"ckpt_path={ckpt}", *eval_options))
        PHASES[f"{name} eval {model}"] = time.perf_counter() - tick
        check_eval(model, results, run / "eval")

        explain_cfg = compose_cfg("explain", run / "explain", f"ckpt_path={ckpt}", "sample=test:0", "reference=true")
        tick = time.perf_counter()
        summary = explain(explain_cfg)
        PHASES[f"{name} explain {model}"] = time.perf_counter() - tick
        assert (run / "explain" / "saliency.png").is_file() and (run / "explain" / "summary.json").is_file()
        assert not_black(run / "explain" / "saliency.png") > 5
        out[model] = {**summary, "ckpt": str(ckpt), "dir": str(run / "explain")}
    return out


def explain_without_sources(tmp_path: Path, media: list[Path], explained: dict) -> None:
    """With the source files gone, ``capsal-explain sample=test:0`` explains the cached grid (the same scores) and
    shows the cache's thumbnails (not black)."""
    for path in media:
        path.unlink()
    out = tmp_path / "explain_without_sources"
    cfg = compose_cfg("explain", out, f"ckpt_path={explained['ckpt']}", "sample=test:0", "reference=true")
    summary = explain(cfg)
    assert summary["sentence"] == explained["sentence"]
    before, after = np.load(Path(explained["dir"]) / "saliency.npz"), np.load(out / "saliency.npz")
    key = "scores" if "scores" in before else "temporal"
    np.testing.assert_allclose(after[key], before[key], rtol=1e-4, atol=1e-5)
    assert not_black(out / "saliency.png") > 5


# -- Flickr30k Entities -----------------------------------------------------------------------------------------------
def test_flickr30k_entities_extract_train_eval_explain(tmp_path, capsys):
    start = time.perf_counter()
    copy = write_flickr30k_entities(tmp_path / "f30k")
    root, cache = copy.root, tmp_path / "f30k_feats"
    data = ["datamodule.image_size=128"]
    backbone = ["backbone.name=resnet50", "backbone.weights=null", "backbone.input_size=128"]
    result = run_cli(
        "extract",
        tmp_path,
        "datamodule=flickr30k_entities",
        f"datamodule.root={root}",
        f"features_dir={cache}",
        *backbone,
        *data,
        "datamodule.num_workers=0",
        "datamodule.protocol=full",
        "progress=false",
    )
    assert "train: 6 samples (full images)" in result.stdout and "test: 3 samples" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if copy.missing_id in line]  # Hydra logs to stdout
    assert len(skipped) == 1, result.stdout[-3000:]
    assert skipped[0].startswith("skipped files: 1 (test 1) missing, empty, unreadable")

    def check_eval(model, results, out: Path):
        assert results["samples"] == 3  # the listed id without files is not a sample
        assert results["captions"] == 3 * 5  # the wordless line of each image is no caption
        assert results["phrases"] == copy.phrases["test"]
        # skipped: notvisual, scene and nobndbox phrases, and for the transformer those past its 64 words
        cut = copy.past_64["test"] if model == "transformer" else 0
        assert model == "s2vt" or cut > 0  # the copy has a caption long enough to be cut
        for metric in ("pointing_game", "attention_correctness"):
            for explainer, values in results["localisation"].items():
                assert values[metric]["skipped"] == copy.phrases["test"] - copy.boxed["test"] + cut, (metric, explainer)
        tables = (out / "tables.md").read_text()
        assert "Table 1: pointing game" in tables and "Table 2: attention correctness" in tables
        assert "Table 3: captioning" in tables
        for name in ("pointing_game.csv", "attention_correctness.csv", "captioning.csv", "results.json"):
            assert (out / name).is_file(), name
        with (out / "phrases.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        for explainer in results["localisation"]:
            mine = [r for r in rows if r["explainer"] == explainer]
            assert len(mine) == copy.phrases["test"]  # one row per phrase, long captions' included
            assert sum(r["hit"] != "" for r in mine) == copy.boxed["test"] - cut  # scored: the phrases with boxes

    eval_options = ["explainers=[caption_guided,center]", "max_samples=3", "caption_metrics=[bleu,rouge,cider]"]
    backbone_model = ["model/backbone=resnet50", "model.backbone.weights=null", "model.backbone.input_size=128"]
    summaries = train_eval_explain(
        tmp_path, "flickr30k_entities", root, cache, data, backbone_model, eval_options, check_eval
    )
    for model, summary in summaries.items():
        assert summary["sentence"], model
    seconds = time.perf_counter() - start
    explain_without_sources(tmp_path, sorted((root / "flickr30k-images").iterdir()), summaries["s2vt"])
    with capsys.disabled():
        print(f"\nflickr30k_entities chain: {seconds:.1f} s;", ", ".join(f"{k} {v:.1f}" for k, v in PHASES.items()))
    PHASES.clear()


# -- MSR-VTT ----------------------------------------------------------------------------------------------------------
def test_msrvtt_extract_train_eval_explain(tmp_path, capsys):
    start = time.perf_counter()
    copy = write_msrvtt(tmp_path / "msrvtt")
    root, cache = copy.root, tmp_path / "msrvtt_feats"
    data = ["datamodule.num_frames=4", "datamodule.frame_size=64"]
    backbone = ["backbone.name=resnet50", "backbone.weights=null", "backbone.input_size=64"]
    result = run_cli(
        "extract",
        tmp_path,
        "datamodule=msrvtt",
        f"datamodule.root={root}",
        f"features_dir={cache}",
        *backbone,
        *data,
        "datamodule.num_workers=0",
        "progress=false",
    )
    broken = str(root / "videos" / f"{copy.broken}.mp4")
    summary_lines = [line for line in result.stdout.splitlines() if line.startswith("skipped files:")]
    assert len(summary_lines) == 1 and summary_lines[0].startswith("skipped files: 1 (train 1)")
    assert broken in summary_lines[0]
    manifest = json.loads((cache / "train" / "manifest.json").read_text())
    cached_ids = [i for shard in manifest["shards"] for i in shard["ids"]]
    assert cached_ids == [v for v in copy.splits["train"] if v != copy.broken]  # nothing took its place

    def check_eval(model, results, out: Path):
        assert results["samples"] == len(copy.splits["test"])
        assert results["captions"] == len(copy.splits["test"]) * (copy.captions_per_video - 1)
        assert results["localisation"] == {}  # no boxes: captioning only
        tables = (out / "tables.md").read_text()
        assert "Table 3: captioning" in tables and "Table 1" not in tables

    backbone_model = ["model/backbone=resnet50", "model.backbone.weights=null", "model.backbone.input_size=64"]
    eval_options = ["max_samples=2", "caption_metrics=[bleu,rouge,cider]"]
    summaries = train_eval_explain(tmp_path, "msrvtt", root, cache, data, backbone_model, eval_options, check_eval)
    for model, summary in summaries.items():
        assert summary["sentence"], model
    seconds = time.perf_counter() - start
    explain_without_sources(tmp_path, sorted((root / "videos").iterdir()), summaries["transformer"])
    with capsys.disabled():
        print(f"\nmsrvtt chain: {seconds:.1f} s;", ", ".join(f"{k} {v:.1f}" for k, v in PHASES.items()))
    PHASES.clear()
