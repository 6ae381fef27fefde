"""Tiny but real training settings shared by the fixtures in ``conftest.py`` and the tests that compose their own
configs: small synthetic splits, a narrow model, one short epoch, CSV logs, no slow captioning metrics."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir, initialize_config_module
from omegaconf import DictConfig, OmegaConf, open_dict

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


def compose_train(*overrides: str) -> DictConfig:
    """The train config with ``overrides``, as ``capsal-train`` would build it."""
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def tiny_cfg(output_dir: Path, *overrides: str) -> DictConfig:
    """The tiny train config writing into ``output_dir``, resolved; ``datamodule=shapes_video`` brings the tiny
    video settings along."""
    extra = TINY_VIDEO_OVERRIDES if "datamodule=shapes_video" in overrides else []
    cfg = compose_train(*TINY_OVERRIDES, *extra, *overrides)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def train_tiny(output_dir: Path, *overrides: str) -> Path:
    """Train the tiny config into ``output_dir``; returns the last checkpoint."""
    from capsal.cli.train import train

    summary = train(tiny_cfg(output_dir, *overrides))
    return Path(summary["last_checkpoint"])


def compose_app(name: str, output_dir: Path, *overrides: str, conf: Path | None = None) -> DictConfig:
    """The config ``capsal-<name>`` (``train``, ``eval``, ``explain``, ``extract``) composes with ``overrides``,
    writing into ``output_dir``, without progress bars; from the config folder ``conf`` when given, else capsal's."""
    context = (
        initialize_config_dir(config_dir=str(conf), version_base="1.3")
        if conf is not None
        else initialize_config_module(config_module="capsal.conf", version_base="1.3")
    )
    with context:
        cfg = compose(config_name=name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        if "progress" in cfg:
            cfg.progress = False
    return cfg
