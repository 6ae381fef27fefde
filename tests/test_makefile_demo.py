"""``make demo`` evaluates the model it has just trained, on every re-run: each run trains into a fresh folder,
``latest`` points at it, and ``capsal-eval`` reads that run's checkpoint (not ``last.ckpt`` of an older run, nor the
``last-v1.ckpt`` Lightning would write beside it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tiny import TINY_OVERRIDES

ROOT = Path(__file__).parents[1]
TINY_DEMO = [*TINY_OVERRIDES, "trainer.max_time=null", "datamodule.batch_size=16"]
TINY_EVAL = ["max_samples=4", "caption_metrics=[]", "sanity=false", "explainers=[caption_guided]", "progress=false"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_demo_run_evaluates_the_checkpoint_it_trained(tmp_path):
    args = [f"DEMO_DIR={tmp_path}", f"DEMO_ARGS={' '.join(TINY_DEMO)}", f"DEMO_EVAL_ARGS={' '.join(TINY_EVAL)}"]
    evaluated = []
    for _ in range(2):
        result = subprocess.run(["make", "-s", "demo", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        latest = (tmp_path / "image" / "latest").resolve()
        evaluated.append(json.loads((latest / "eval" / "results.json").read_text())["checkpoint"])
        assert evaluated[-1] == str(latest / "checkpoints" / "last.ckpt")
    runs = sorted(p for p in (tmp_path / "image").iterdir() if p.name != "latest")
    assert len(runs) == 2 and evaluated == [str(run / "checkpoints" / "last.ckpt") for run in runs]
    assert not list(runs[1].glob("checkpoints/last-v*.ckpt"))


# the backbone is the pre-trained one and the data are DEMO_VIDEO_DATA (extraction and training alike)
TINY_VIDEO_DEMO = [a for a in TINY_DEMO if not a.startswith(("model.backbone.", "datamodule."))]
TINY_VIDEO_DATA = [
    "datamodule.frame_size=64",
    "datamodule.num_frames=8",
    "datamodule.min_event_frames=3",
    "datamodule.num_train=32",
    "datamodule.num_val=8",
    "datamodule.num_test=8",
]
TINY_BACKBONE = [
    "datamodule.num_train=32",
    "datamodule.num_val=8",
    "model.backbone.channels=[4,8,8]",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_video_demo_pretrains_extracts_trains_on_the_cache_and_evaluates(tmp_path):
    args = [
        f"DEMO_DIR={tmp_path}",
        f"DEMO_BACKBONE_ARGS={' '.join(TINY_BACKBONE)}",
        f"DEMO_VIDEO_DATA={' '.join(TINY_VIDEO_DATA)}",
        "DEMO_EXTRACT_ARGS=progress=false",
        f"DEMO_ARGS={' '.join([*TINY_VIDEO_DEMO, 'callbacks.saliency.num_samples=1'])}",
        f"DEMO_EVAL_ARGS={' '.join(TINY_EVAL)}",
    ]
    result = subprocess.run(["make", "-s", "demo-video", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = (tmp_path / "video" / "latest").resolve()
    backbone = run / "backbone" / "checkpoints" / "last.ckpt"
    manifest = json.loads((run / "features" / "train" / "manifest.json").read_text())
    assert manifest["settings"]["backbone"]["checkpoint"] == str(backbone)  # the pre-trained CNN made the cache
    assert manifest["grid_shape"] == [8, 8, 8, 8]  # 8 frames of an 8x8 grid of 8 channels
    config = json.loads((run / "eval" / "results.json").read_text())
    assert config["checkpoint"] == str(run / "checkpoints" / "best.ckpt")  # the lowest validation loss
    assert "spatial_pointing" in config["localisation"]["caption_guided"]
    assert list((run / "gallery").glob("epoch_*/sample_0_reference.png"))  # the cache-trained model's gallery
