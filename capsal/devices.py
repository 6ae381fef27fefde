"""Where tensors live: the one place that turns a ``device=`` option or a model into a ``torch.device``."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks the GPU when one is present, else the CPU; any other name is taken as given."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(model: object) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without tensors).

    Read from the tensors, not from ``model.device``, so a user's plain ``nn.Module`` works as well as a
    LightningModule.
    """
    for tensors in (getattr(model, "parameters", None), getattr(model, "buffers", None)):
        if callable(tensors):
            for tensor in tensors():
                return tensor.device
    return torch.device("cpu")
