"""Resume after a crash: ``capsal-train`` killed with SIGKILL after a checkpoint, resumed with ``ckpt_path=``,
continues where the checkpoint left off: the same vocabulary, the step count from the checkpoint, a loss close to
the one logged before the kill (not an untrained model's)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_OVERRIDES

EVERY = 5  # checkpoint every this many training steps
OVERRIDES = [
    *TINY_OVERRIDES,
    "datamodule.num_train=256",
    "trainer.max_epochs=100",
    "trainer.log_every_n_steps=1",
    "+logger.flush_logs_every_n_steps=1",
    "~callbacks.saliency",
    f"+callbacks.model_checkpoint.every_n_train_steps={EVERY}",
    "callbacks.model_checkpoint.monitor=null",
]


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capsal.cli.train", *OVERRIDES, f"output_dir={out}", f"hydra.run.dir={out}", *extra]


def losses(out: Path) -> list[tuple[int, float]]:
    """``(step, train/loss)`` rows the CSV logger wrote."""
    rows = []
    for path in (out / "csv").glob("version_*/metrics.csv"):
        with path.open() as handle:
            rows += [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(handle) if r.get("train/loss")]
    return sorted(rows)


def step_of(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    process = subprocess.Popen(command(first), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    last = first / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and step_of_safely(last) >= 3 * EVERY:
                break
            time.sleep(0.5)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = step_of(last)
    before = [loss for s, loss in losses(first) if s < step]
    resumed = subprocess.run(
        command(second, f"ckpt_path={last}", f"trainer.max_steps={step + 3}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = losses(second)
    assert after[0][0] >= step  # the step count continues from the checkpoint's
    old = torch.load(last, map_location="cpu", weights_only=False)["hyper_parameters"]["vocab"]
    new = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert new["hyper_parameters"]["vocab"] == old and new["global_step"] == step + 3
    untrained = losses(first)[0][1]
    assert abs(after[0][1] - before[-1]) <= 0.1 * before[-1] < 0.9 * untrained, (before[-3:], after[:3], untrained)


def step_of_safely(checkpoint: Path) -> int:
    """The checkpoint's step, or -1 while it is still being written."""
    try:
        return step_of(checkpoint)
    except Exception:
        return -1
