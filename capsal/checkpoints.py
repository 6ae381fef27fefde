"""Loading a capsal checkpoint alone: the model class, vocabulary, data config and input shape travel inside it."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when one is present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
