"""Where tensors live: the one place that turns a ``device=`` option or a model into a ``torch.device``."""

from __future__ import annotations

from typing import Any

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


def model_dtype(model: object) -> torch.dtype | None:
    """The dtype of a model's first floating-point parameter (None for a model without one)."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for tensor in parameters():
            if tensor.is_floating_point():
                return tensor.dtype
    return None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_objects(local: Any) -> list[Any]:
    """Every rank's ``local`` (any picklable object: strings cannot travel through ``all_gather``), in rank order;
    a collective under DDP, so every rank calls it."""
    _, world = rank_and_world()
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def gather_dicts(local: dict) -> dict:
    """Every rank's dict merged into one (see :func:`gather_objects`)."""
    merged: dict = {}
    for part in gather_objects(local):
        merged.update(part)
    return merged
