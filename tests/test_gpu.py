"""On a CUDA GPU (marked ``gpu``: skipped without one, see conftest): the explainers give the CPU's numbers, the
saliency callback explains on the model's device, capsal-eval runs with ``trainer=gpu`` and, with two GPUs, DDP.

``benchmarks/device_check.sh`` runs these (``pytest -m gpu``) and the explainer benchmarks in one go.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_cfg

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs, explain_batch
from capsal.explainers import build_explainer
from capsal.models.protocol import visual_grid

pytestmark = pytest.mark.gpu


def first_batch(model, rows: int = 8):
    datamodule = checkpoint_datamodule(model)
    samples = [datamodule.sample("test", i) for i in range(4)]
    return next(iter(batches_of(caption_pairs(samples), model.vocab, rows)))


@pytest.mark.parametrize("devices", [-1, "-1", "auto"])
def test_cpu_threads_auto_counts_every_visible_gpu(devices):
    """``trainer.devices=-1`` or ``auto`` starts one process per GPU; Lightning's own parser says how many."""
    from lightning.fabric.utilities.device_parser import _parse_gpu_ids

    from capsal.devices import processes_per_machine

    assert processes_per_machine(devices, "gpu") == len(_parse_gpu_ids(-1, include_cuda=True)) >= 1


@pytest.mark.parametrize("checkpoint", ["image_checkpoint", "video_checkpoint"])
@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_explainers_on_cuda_match_the_cpu_in_float32(request, checkpoint, name):
    path = request.getfixturevalue(checkpoint)
    out = {}
    for device in ("cpu", "cuda"):
        model = load_captioner(path, map_location=device).to(device)
        batch = first_batch(model).to(device)
        with torch.no_grad():
            grid = visual_grid(model, batch)
            items = model.items(grid)
        saliency = explain_batch(build_explainer(name, precision=32), model, items, grid, batch.tokens)
        assert saliency.scores.device.type == device
        out[device] = saliency
    for field in ("losses", "scores", "region_losses", "region_scores"):
        cpu, cuda = getattr(out["cpu"], field), getattr(out["cuda"], field)
        if cpu is not None:
            assert cuda.dtype == torch.float32
            torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_bf16_on_cuda_returns_float32(image_checkpoint):
    model = load_captioner(image_checkpoint, map_location="cuda").cuda()
    items = torch.randn(2, 16, model.feature_size, device="cuda")
    for precision in ("bf16-mixed", "16-mixed"):
        saliency = build_explainer("caption_guided", precision=precision).explain(model, items, tokens=None)
        assert saliency.losses.dtype == torch.float32 and torch.isfinite(saliency.losses).all()


def test_gpu_fit_explains_on_the_models_device(tmp_path, monkeypatch):
    from capsal.cli.train import train

    devices: list[set[str]] = []
    update = LocalisationEvaluator.update

    def recording_update(self, model, batch, grid=None):
        results = update(self, model, batch, grid)
        states = {str(m.device) for metrics in self.metrics.values() for m in metrics.values()}
        devices.append(states | {str(s.scores.device) for s in results.values()})
        return results

    monkeypatch.setattr(LocalisationEvaluator, "update", recording_update)
    summary = train(tiny_cfg(tmp_path, "trainer=gpu", "callbacks.saliency.localisation_every_n_epochs=1"))
    assert devices and all(d == {"cuda:0"} for d in devices), devices
    assert (tmp_path / "gallery" / "index.html").is_file()
    assert list((tmp_path / "gallery").rglob("*.png"))
    assert Path(summary["last_checkpoint"]).is_file()


def run_eval(checkpoint: Path, out: Path, *overrides: str) -> dict:
    args = [f"ckpt_path={checkpoint}", f"output_dir={out}", f"hydra.run.dir={out}", "progress=false", *overrides]
    command = [sys.executable, "-m", "capsal.cli.evaluate", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_capsal_eval_on_one_gpu(image_checkpoint, tmp_path):
    overrides = ("max_samples=8", "caption_metrics=[]", "explainers=[caption_guided,gradient,uniform]")
    gpu = run_eval(image_checkpoint, tmp_path / "gpu", "trainer=gpu", *overrides)
    cpu = run_eval(image_checkpoint, tmp_path / "cpu", "trainer=cpu", *overrides)
    assert gpu["phrases"] == cpu["phrases"] > 0
    for name in ("caption_guided", "uniform"):
        assert gpu["localisation"][name]["pointing_game"]["avg"] == pytest.approx(
            cpu["localisation"][name]["pointing_game"]["avg"], abs=0.05
        )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_capsal_eval_ddp_on_two_gpus(image_checkpoint, tmp_path):
    overrides = ("max_samples=9", "caption_metrics=[]", "explainers=[caption_guided,uniform]")
    ddp = run_eval(image_checkpoint, tmp_path / "ddp", "trainer=ddp", "trainer.devices=2", *overrides)
    one = run_eval(image_checkpoint, tmp_path / "one", "trainer=gpu", *overrides)
    assert ddp["phrases"] == one["phrases"] > 0
    assert ddp["localisation"]["uniform"] == one["localisation"]["uniform"]
