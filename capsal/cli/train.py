"""``capsal-train``: a thin Hydra app around :func:`train`."""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from capsal.checkpoints import open_checkpoint
from capsal.cli.command import command
from capsal.cli.settings import TrainSettings
from capsal.config_schema import check_config
from capsal.cpu_bf16 import bf16_fallback
from capsal.datamodules.base import collate_samples
from capsal.datamodules.features import CachedFeatures, check_model_backbone
from capsal.devices import model_device, processes_per_machine, set_cpu_threads
from capsal.errors import UserError
from capsal.evaluation import generate_captions
from capsal.text import Vocabulary

log = logging.getLogger("capsal")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    nodes = cfg.get("callbacks") or {}
    return [instantiate(node) for node in nodes.values() if isinstance(node, DictConfig) and "_target_" in node]


def build_logger(cfg: DictConfig):
    node = cfg.get("logger")
    return instantiate(node) if node else False


def resume_vocabulary(path: str | None) -> list[str] | None:
    """The words of the checkpoint ``ckpt_path=`` resumes from (None without one, or for a model with its own
    tokenizer), once the file is checked as every checkpoint capsal loads is (weights only, its model class and stored
    configs allowlisted: :func:`capsal.checkpoints.open_checkpoint`): before anything is built, and before Lightning
    reads it again to restore the run."""
    if not path:
        return None
    checkpoint = Path(path).expanduser()
    if not checkpoint.is_file():
        raise UserError(f"ckpt_path={path} does not exist; pass the .ckpt file a previous capsal-train saved")
    opened = open_checkpoint(checkpoint)
    if getattr(opened.model_class, "OWN_TOKENIZER", False):
        return None
    try:
        return list(opened.contents["hyper_parameters"]["vocab"])
    except (KeyError, TypeError) as error:
        raise UserError(f"ckpt_path={path} is not a capsal checkpoint to resume ({type(error).__name__})") from error


def build_model(cfg: DictConfig, datamodule, vocabulary: list[str] | None = None) -> L.LightningModule:
    """The model ``cfg.model`` describes, and the datamodule encoding with its tokenizer: a vocabulary of the training
    captions (``vocabulary``, the resumed checkpoint's, so words keep their ids), or a pretrained model's own one."""
    if getattr(get_class(cfg.model._target_), "OWN_TOKENIZER", False):
        model = instantiate(cfg.model)
        datamodule.vocab = model.vocab
        return model
    if vocabulary is not None:
        datamodule.vocab = Vocabulary(vocabulary)
    return instantiate(cfg.model, vocab=datamodule.vocab.to_list())


def resume_options(trainer: L.Trainer) -> dict[str, bool]:
    """``weights_only=True`` for ``trainer.fit`` where this Lightning takes it, so Lightning too reads the resumed
    checkpoint weights-only (elsewhere ``torch.load``'s own default, weights-only since torch 2.6)."""
    return {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a captioner as ``cfg`` says; returns the summary (checkpoint, metrics, example captions)."""
    check_config(cfg, TrainSettings)
    vocabulary = resume_vocabulary(cfg.get("ckpt_path"))
    set_cpu_threads(
        cfg.get("cpu_threads"),
        processes_per_machine(cfg.trainer.get("devices"), cfg.trainer.get("accelerator", "auto")),
    )
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    datamodule.setup("fit")
    model = build_model(cfg, datamodule, vocabulary)
    model.datamodule_config = OmegaConf.to_container(cfg.datamodule, resolve=True)
    for split in ("train", "val"):  # a model trained from a cache must use the backbone that made it
        data = datamodule.get_split(split)
        if isinstance(data, CachedFeatures):
            check_model_backbone(data, cfg.model.get("backbone"), model)
    sample = datamodule.sample("train", 0)
    shape = getattr(sample, "pixel_shape", None)  # a cached sample: read without loading its pixels
    if shape is None:
        frames, _, height, width = sample.pixels.shape
        shape = (frames, height, width)
    model.input_shape = tuple(shape)
    callbacks = build_callbacks(cfg)
    logger = build_logger(cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    try:
        with bf16_fallback(model, trainer.precision, trainer.strategy.root_device):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), **resume_options(trainer))
        save_final_checkpoint(trainer)
    finally:
        _finish_wandb(logger)
    summary = _summarise(trainer, model, datamodule, output_dir, logger, int(cfg.get("summary_examples", 5)))
    if trainer.is_global_zero:
        print(format_summary(summary))
    return summary


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """``last.ckpt`` = the weights training ended with. Lightning writes it only beside a new best checkpoint, so a
    run stopped by ``max_time`` (or improving no more on ``val/loss``) would leave older weights under that name."""
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.save_last or checkpoint.dirpath is None:
        return
    default = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
    path = checkpoint.last_model_path or str(default)  # Lightning's own name for this run's last (last-v1.ckpt...)
    trainer.save_checkpoint(path)
    checkpoint.last_model_path = path


def _finish_wandb(logger) -> None:
    """Close the W&B run so later runs in this process (tests, multiruns) do not merge into it."""
    if logger and type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()


def _summarise(trainer: L.Trainer, model, datamodule, output_dir: Path, logger, examples: int) -> dict[str, Any]:
    checkpoint = trainer.checkpoint_callback
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    summary: dict[str, Any] = {
        "output_dir": str(output_dir),
        "best_checkpoint": getattr(checkpoint, "best_model_path", "") or None,
        "last_checkpoint": getattr(checkpoint, "last_model_path", "") or None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "metrics": metrics,
        "examples": example_captions(model, datamodule, examples) if examples else [],
    }
    if logger and type(logger).__name__ == "WandbLogger":
        summary["wandb_sync"] = f"wandb sync {output_dir / 'wandb' / 'latest-run'}"
    elif logger:
        summary["log_dir"] = logger.log_dir
    gallery = next((cb.gallery_index for cb in trainer.callbacks if getattr(cb, "gallery_index", None)), None)
    if gallery is not None and Path(gallery).is_file():
        summary["gallery"] = str(gallery)
    return summary


@torch.no_grad()
def example_captions(model, datamodule, count: int) -> list[dict[str, str]]:
    """The model's captions for the first validation samples, next to a reference."""
    split = datamodule.get_split("val")
    samples = [split[i] for i in range(min(count, len(split)))]
    was_training = model.training
    model.eval()
    batch = collate_samples(samples, model.vocab).to(model_device(model))
    predictions = generate_captions(model, [batch])
    model.train(was_training)
    return [
        {"id": s.sample_id, "predicted": predictions[s.sample_id], "reference": s.captions[0].text} for s in samples
    ]


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", "capsal-train summary", "-" * 72]
    lines.append(f"{'output dir':<18} {summary['output_dir']}")
    lines.append(f"{'best checkpoint':<18} {summary['best_checkpoint']}")
    lines.append(f"{'last checkpoint':<18} {summary['last_checkpoint']}")
    lines.append(f"{'epochs / steps':<18} {summary['epochs']} / {summary['global_step']}")
    for key in ("wandb_sync", "log_dir", "gallery"):
        if key in summary:
            lines.append(f"{key.replace('_', ' '):<18} {summary[key]}")
    if summary["metrics"]:
        lines.append("")
        lines.append("| metric | value |")
        lines.append("|---|---|")
        lines += [f"| {name} | {value:.4f} |" for name, value in sorted(summary["metrics"].items())]
    if summary["examples"]:
        lines.append("")
        lines.append("| sample | predicted | reference |")
        lines.append("|---|---|---|")
        lines += [f"| {e['id']} | {e['predicted']} | {e['reference']} |" for e in summary["examples"]]
    return os.linesep.join(lines)


main = command("capsal-train", "train", train)


if __name__ == "__main__":
    main()
