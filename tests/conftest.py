"""Shared fixtures: configs composed once, tiny fits (settings in ``tiny.py``), a gpu marker that skips without CUDA."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from tiny import compose_train as _compose_train
from tiny import one_object_shapes, quiet_trainer, tiny_cfg, torch_threads, train_tiny

# tests never download: Hugging Face models are built from configs and saved to tmp_path (tiny.save_tiny_hf)
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items):
    _long_modules_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _long_modules_first(items: list) -> None:
    """Modules with ``slow`` tests run first: ``make test`` gives each worker a module at a time, and a long module
    started last would leave the other workers idle until it ends (longest first shortens the whole run)."""
    long_modules = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in long_modules)  # stable: the order inside each module is kept


@pytest.fixture(params=["this CPU", "no bf16 kernels"])
def bf16_kernels(request, monkeypatch) -> str:
    """Both answers to "does this CPU run bf16 recurrent kernels?" (capsal.cpu_bf16): the machine's own (or what
    CAPSAL_CPU_BF16_RNN says), and none, which runs the float32 fallback of recurrent layers on any CPU."""
    if request.param == "no bf16 kernels":
        from capsal.cpu_bf16 import ENV

        monkeypatch.setenv(ENV, "0")
    return request.param


@pytest.fixture(scope="session")
def compose_train():
    """``compose_train(*overrides)`` -> the train config, as ``capsal-train`` would build it."""
    return _compose_train


@pytest.fixture
def tiny_train_cfg(tmp_path: Path):
    """A tiny train config writing into ``tmp_path``; pass extra overrides (e.g. ``datamodule=shapes_video``)."""

    def _make(*overrides: str) -> DictConfig:
        return tiny_cfg(tmp_path, *overrides)

    return _make


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch, tmp_path):
    """W&B writes its own settings and caches under tmp_path; WANDB_MODE is never set process-wide."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / ".wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / ".wandb-data"))  # offline table artifacts stage here
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.environ.pop("WANDB_MODE", None)


@pytest.fixture(scope="session")
def image_checkpoint(tmp_path_factory) -> Path:
    """A tiny S2VT trained one short epoch on shapes_image (shared by the tests that only need a checkpoint)."""
    return train_tiny(tmp_path_factory.mktemp("image_ckpt"))


@pytest.fixture(scope="session")
def video_checkpoint(tmp_path_factory) -> Path:
    """A tiny S2VT trained one short epoch on shapes_video (8 frames of 32x32)."""
    return train_tiny(tmp_path_factory.mktemp("video_ckpt"), "datamodule=shapes_video")


def _train_localising(model_class: type, steps: int):
    """``(model, datamodule)``: ``model_class`` trained ``steps`` steps on one-object shapes images, enough for its
    saliency to point at the named object (tests/integration/test_localises.py), on one torch thread whatever the
    runner's count, so its weights do not depend on it."""
    import lightning as L

    L.seed_everything(0)
    datamodule = one_object_shapes()
    datamodule.setup("fit")
    model = model_class(
        datamodule.vocab,
        hidden_size=128,
        embed_size=32,
        backbone={"_target_": "capsal.models.backbones.SmallCNN", "channels": [16, 32, 64]},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3},
        caption_metrics=[],
    )
    trainer = quiet_trainer(
        max_steps=steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    with torch_threads(1):
        trainer.fit(model, datamodule=datamodule)
    datamodule.setup("test")
    return model.eval(), datamodule


@pytest.fixture(scope="session")
def localising_image_model():
    """S2VT trained 250 steps (``_train_localising``); shared by the tests that need maps with structure."""
    from capsal.models.s2vt import S2VT

    return _train_localising(S2VT, 250)


@pytest.fixture(scope="session")
def localising_soft_attention_model():
    """The model kind ``make demo`` trains (soft attention), 750 steps (``_train_localising``): at 250 its maps do not
    point yet (0.15)."""
    from capsal.models.soft_attention import SoftAttention

    return _train_localising(SoftAttention, 750)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, which ``make test`` installs (as root); no test installs anything."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed: run `make chromium` as root (the Makefile installs it)")
    return path


@pytest.fixture
def browser(chromium, tmp_path):
    """A headless Chromium with the network off, one page open in it."""
    from devtools import DevTools

    devtools = DevTools(chromium, tmp_path / "chromium-profile")
    yield devtools
    devtools.close()
