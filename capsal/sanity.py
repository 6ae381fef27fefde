"""Model-randomisation sanity check (Adebayo et al., 2018): an explainer that reflects the model must change when
the model's weights are randomised, layer by layer from the output back to the input."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def randomise_(module: nn.Module) -> None:
    """Re-initialise every sub-module that knows how (``reset_parameters``), in place."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level layers with parameters, output first."""
    return [(name, child) for name, child in model.named_children() if any(True for _ in child.parameters())][::-1]


def count_stages(model: nn.Module) -> int:
    return len(_stages(model))


def cascading_randomisation(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield ``(stage, model)`` with the top ``k`` layers randomised, for k = 1, 2, ...: decoder first (from the
    output layer), then encoder, then the visual backbone. The original model is left untouched; the yielded
    model is one copy randomised further at each step, so use it before asking for the next stage."""
    randomised = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    done = []
    for name, child in _stages(randomised):
        randomise_(child)
        done.append(name)
        yield "+".join(done), randomised
