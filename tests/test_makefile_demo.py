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
