"""Loading a capsal checkpoint alone: the model class, vocabulary, data config and input shape travel inside it."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from capsal.errors import UserError
from capsal.models.base import CaptioningModule


def load_captioner(path: str | Path, map_location: str | torch.device = "cpu") -> CaptioningModule:
    """The trained captioner in ``path``, in eval mode; one clear line when the file is not a capsal checkpoint."""
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
    if not meta or "model_class" not in meta:
        raise UserError(f"{path} is not a capsal checkpoint (it has no capsal metadata); train one with capsal-train")
    module_name, _, class_name = meta["model_class"].rpartition(".")
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    return model.eval()


def checkpoint_datamodule(model: CaptioningModule, config: Any = None):
    """The datamodule ``config`` describes, else the one recorded in the checkpoint, encoding with the model's
    vocabulary."""
    config = config if config is not None else model.datamodule_config
    if config is None:
        raise UserError("this checkpoint records no datamodule; pass datamodule=... or use input=<file>")
    datamodule = instantiate(OmegaConf.create(config) if isinstance(config, dict) else config, _convert_="all")
    datamodule.vocab = model.vocab
    return datamodule
