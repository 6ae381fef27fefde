"""Shared fixtures: configs composed once, tiny settings for fast real fits, a gpu marker that skips without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

# Tiny but real: small synthetic splits, a narrow model, one short epoch, CSV logs, no slow captioning metrics.
TINY_OVERRIDES = [
    "logger=csv",
    "datamodule.num_train=64",
    "datamodule.num_val=16",
    "datamodule.num_test=16",
    "datamodule.batch_size=16",
    "model.hidden_size=32",
    "model.embed_size=16",
    "model.backbone.channels=[8,16,16]",
    "model.caption_metrics=[]",
    "trainer.max_epochs=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "summary_examples=2",
]
TINY_VIDEO_OVERRIDES = ["datamodule.num_frames=8", "datamodule.frame_size=32", "datamodule.min_event_frames=3"]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def compose_train():
    """``compose_train(*overrides)`` -> the train config, as ``capsal-train`` would build it."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


@pytest.fixture
def tiny_train_cfg(compose_train, tmp_path: Path):
    """A tiny train config writing into ``tmp_path``; pass extra overrides (e.g. ``datamodule=shapes_video``)."""

    def _make(*overrides: str) -> DictConfig:
        extra = list(overrides)
        if any(o == "datamodule=shapes_video" for o in extra):
            extra = TINY_VIDEO_OVERRIDES + extra
        cfg = compose_train(*TINY_OVERRIDES, *extra)
        with open_dict(cfg):
            cfg.output_dir = str(tmp_path)
        OmegaConf.resolve(cfg)
        return cfg

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


def _train_tiny(compose_train, output_dir: Path, *overrides: str) -> Path:
    from capsal.cli.train import train

    extra = TINY_VIDEO_OVERRIDES if "datamodule=shapes_video" in overrides else []
    cfg = compose_train(*TINY_OVERRIDES, *extra, *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    summary = train(cfg)
    return Path(summary["last_checkpoint"])


@pytest.fixture(scope="session")
def image_checkpoint(compose_train, tmp_path_factory) -> Path:
    """A tiny S2VT trained one short epoch on shapes_image (shared by the tests that only need a checkpoint)."""
    return _train_tiny(compose_train, tmp_path_factory.mktemp("image_ckpt"))


@pytest.fixture(scope="session")
def video_checkpoint(compose_train, tmp_path_factory) -> Path:
    """A tiny S2VT trained one short epoch on shapes_video (8 frames of 32x32)."""
    return _train_tiny(compose_train, tmp_path_factory.mktemp("video_ckpt"), "datamodule=shapes_video")
