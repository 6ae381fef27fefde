"""Loading a capsal checkpoint alone (the model class, vocabulary, data config and input shape travel inside it), or
a pretrained model named by its config in its place (:func:`load_model`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from capsal import __version__
from capsal.errors import UserError
from capsal.models.base import CaptioningModule
from capsal.safe_load import captioner_class, check_targets, load_checkpoint

log = logging.getLogger("capsal")


def load_captioner(path: str | Path, map_location: str | torch.device = "cpu") -> CaptioningModule:
    """The trained captioner in ``path``, in eval mode; one clear line when the file is not a capsal checkpoint, does
    not load into this capsal's classes, or would have capsal run or build anything but what it allows
    (:func:`open_checkpoint`).

    A checkpoint saved by a newer capsal is loaded with a warning naming both versions; if its class or weights
    are not this capsal's, the error names both versions too."""
    path = Path(path).expanduser()
    opened = open_checkpoint(path)
    try:
        model = opened.model_class.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except (TypeError, KeyError, ValueError, AttributeError, RuntimeError, InstantiationException) as error:
        if isinstance(error, InstantiationException) and isinstance(error.__cause__, UserError):
            raise  # its own line: e.g. the checkpoint of a CheckpointBackbone refused
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, whatever the error's layout
        raise UserError(
            f"{path} does not load into {opened.meta['model_class']} ({opened.versions}): {reason}; {opened.fix}"
        ) from error
    return model.eval()


@dataclass
class OpenedCheckpoint:
    """A capsal checkpoint read and checked, nothing of it built yet: its path and contents, its capsal metadata, the
    model class it names, and for messages the versions (saved by, this one) and what to do about them."""

    path: Path
    contents: dict[str, Any]
    meta: dict[str, Any]
    model_class: type
    versions: str
    fix: str


def open_checkpoint(path: Path) -> OpenedCheckpoint:
    """The capsal checkpoint ``path``, read weights-only, its model class allowlisted and imported, the configs
    stored in it (hyper-parameters, datamodule) checked target by target (:mod:`capsal.safe_load`); one line
    otherwise. What loading and resuming do first, so nothing from the file is imported or called before."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint.get("capsal") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_class"), str):
        raise UserError(f"{path} is not a capsal checkpoint (it has no capsal metadata); train one with capsal-train")
    saved = str(meta.get("version") or "unknown")
    newer = _is_newer(saved)
    versions = f"saved by capsal {saved}, this is capsal {__version__}"
    fix = f"install capsal {saved} or newer" if newer else "retrain it or use the capsal that saved it"
    model_class = captioner_class(meta["model_class"], path, f"{versions}; {fix}")
    check_targets(checkpoint.get("hyper_parameters"), f"{path} (its hyper-parameters)")
    check_targets(meta.get("datamodule"), f"{path} (its datamodule)")
    if newer:
        log.warning("%s was saved by capsal %s, newer than this capsal %s: loading it anyway", path, saved, __version__)
    return OpenedCheckpoint(path, checkpoint, meta, model_class, versions, fix)


def load_model(cfg: DictConfig, map_location: str | torch.device = "cpu") -> CaptioningModule:
    """What ``capsal-explain`` and ``capsal-eval`` explain: the checkpoint ``ckpt_path=``, or the pretrained model
    ``model=`` (``model=hf_captioner model.name_or_path=...``), in eval mode; exactly one of the two."""
    node = cfg.get("model")
    if (cfg.get("ckpt_path") is None) == (node is None):
        raise UserError(
            "give exactly one of ckpt_path=<the .ckpt capsal-train saved> or a pretrained model "
            "(model=hf_captioner model.name_or_path=<hub id or save_pretrained folder>)"
        )
    if node is None:
        return load_captioner(cfg.ckpt_path, map_location)
    target = str(node.get("_target_", ""))
    if not getattr(get_class(target), "PRETRAINED", False):
        raise UserError(
            f"model={target.rpartition('.')[2]} is untrained; pass ckpt_path= the checkpoint capsal-train saved, "
            "or a pretrained model such as model=hf_captioner"
        )
    return instantiate(node).to(map_location).eval()


def model_source(cfg: DictConfig) -> str:
    """What was explained, for summaries: the checkpoint's path or the pretrained model's name."""
    if cfg.get("ckpt_path") is not None:
        return str(Path(cfg.ckpt_path).expanduser().resolve())
    return str(cfg.model.get("name_or_path", cfg.model.get("_target_")))


def _is_newer(saved: str) -> bool:
    """Whether version ``saved`` is newer than this capsal, by release numbers (unparsable versions are not)."""

    def release(version: str) -> tuple[int, ...] | None:
        match = re.match(r"\d+(?:\.\d+)*", version.strip())
        return tuple(int(part) for part in match.group(0).split(".")) if match else None

    mine, theirs = release(__version__), release(saved)
    if mine is None or theirs is None:
        return False
    width = max(len(mine), len(theirs))  # 0.2 == 0.2.0
    return theirs + (0,) * (width - len(theirs)) > mine + (0,) * (width - len(mine))


def checkpoint_datamodule(model: CaptioningModule, config: Any = None):
    """The datamodule ``config`` describes, else the one recorded in the checkpoint, encoding with the model's
    vocabulary."""
    if config is None and model.datamodule_config is not None:
        check_targets(model.datamodule_config, "the datamodule config stored in the checkpoint")
    config = config if config is not None else model.datamodule_config
    if config is None:
        raise UserError(
            "the model records no datamodule (a pretrained model, or a checkpoint without one); pass datamodule=... "
            "(e.g. datamodule=shapes_image) or use input=<file>"
        )
    datamodule = instantiate(OmegaConf.create(config) if isinstance(config, dict) else config, _convert_="all")
    datamodule.vocab = model.vocab
    return datamodule
