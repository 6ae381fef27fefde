"""Loading a capsal checkpoint alone (the model class, vocabulary, data config and input shape travel inside it), or
a pretrained model named by its config in its place (:func:`load_model`)."""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from capsal import __version__
from capsal.errors import UserError
from capsal.models.base import CaptioningModule

log = logging.getLogger("capsal")


def load_captioner(path: str | Path, map_location: str | torch.device = "cpu") -> CaptioningModule:
    """The trained captioner in ``path``, in eval mode; one clear line when the file is not a capsal checkpoint or
    does not load into this capsal's classes.

    A checkpoint saved by a newer capsal is loaded with a warning naming both versions; if its class or weights
    are not this capsal's, the error names both versions too."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass ckpt_path= the .ckpt file capsal-train saved")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); pass a capsal .ckpt"
        ) from error
    meta = checkpoint.get("capsal") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("model_class"), str):
        raise UserError(f"{path} is not a capsal checkpoint (it has no capsal metadata); train one with capsal-train")
    saved = str(meta.get("version") or "unknown")
    newer = _is_newer(saved)
    versions = f"saved by capsal {saved}, this is capsal {__version__}"
    fix = f"install capsal {saved} or newer" if newer else "retrain it or use the capsal that saved it"
    if newer:
        log.warning("%s was saved by capsal %s, newer than this capsal %s: loading it anyway", path, saved, __version__)
    model_class = _model_class(meta["model_class"], path, f"{versions}; {fix}")
    try:
        model = model_class.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    except (TypeError, KeyError, ValueError, AttributeError, RuntimeError, InstantiationException) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())  # one line, whatever the error's layout
        raise UserError(f"{path} does not load into {meta['model_class']} ({versions}): {reason}; {fix}") from error
    return model.eval()


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


def _model_class(name: str, path: Path, versions: str) -> type:
    """The LightningModule class a checkpoint names, or a UserError saying why it cannot be had."""
    module_name, _, class_name = name.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{path} needs model class {name}, which cannot be imported ({versions})") from error
    if not isinstance(model_class, type) or not callable(getattr(model_class, "load_from_checkpoint", None)):
        raise UserError(f"{path} names model class {name}, which is not a LightningModule captioner ({versions})")
    return model_class


def checkpoint_datamodule(model: CaptioningModule, config: Any = None):
    """The datamodule ``config`` describes, else the one recorded in the checkpoint, encoding with the model's
    vocabulary."""
    config = config if config is not None else model.datamodule_config
    if config is None:
        raise UserError(
            "the model records no datamodule (a pretrained model, or a checkpoint without one); pass datamodule=... "
            "(e.g. datamodule=shapes_image) or use input=<file>"
        )
    datamodule = instantiate(OmegaConf.create(config) if isinstance(config, dict) else config, _convert_="all")
    datamodule.vocab = model.vocab
    return datamodule
