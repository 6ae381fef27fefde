"""Attention correctness (Liu et al., AAAI 2017), the protocol of the paper's Table 2.

The score of a phrase is the share of its saliency mass that falls inside the union of its ground-truth boxes. Maps
are made non-negative and normalised to sum 1 first, so a uniform map scores exactly (union area) / (image area):
the "uniform baseline" of Table 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor

from capsal.errors import UserError
from capsal.metrics.base import OTHER, CategoryAccuracy, Unknown, check_phrases
from capsal.types import Box

Negative = Literal["shift", "clamp"]


def box_mask(boxes: Sequence[Box], height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """``(H, W)`` bool mask of the union of inclusive boxes; parts outside the image are ignored."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if not boxes:
        return mask
    box = torch.tensor([list(b) for b in boxes], dtype=torch.float64, device=device)
    xs = torch.arange(width, dtype=torch.float64, device=device)
    ys = torch.arange(height, dtype=torch.float64, device=device)
    in_x = (xs >= box[:, 0:1]) & (xs <= box[:, 2:3])  # (n, W)
    in_y = (ys >= box[:, 1:2]) & (ys <= box[:, 3:4])  # (n, H)
    return (rearrange(in_y, "n h -> n h 1") & rearrange(in_x, "n w -> n 1 w")).any(0)


def attention_correctness(saliency: Tensor, boxes: Sequence[Box], negative: Negative = "shift") -> Tensor:
    """Share (float64 scalar) of the saliency of one ``(H, W)`` map inside the union of ``boxes``.

    Non-negativity: ``negative="shift"`` subtracts the minimum only when it is negative (maps that are already
    non-negative are used as they are; a signed map keeps its order), ``"clamp"`` zeroes negative values. A map with
    no mass left (all zero, or constant after the shift) carries no localisation and is scored as uniform.
    """
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map must be (H, W), got shape {tuple(saliency.shape)}")
    if negative not in ("shift", "clamp"):
        raise ValueError(f"negative must be 'shift' or 'clamp', got {negative!r}")
    values = saliency.detach().double()
    values = values - values.min().clamp(max=0) if negative == "shift" else values.clamp(min=0)
    mask = box_mask(boxes, *values.shape, device=values.device)
    total = values.sum()
    inside = (values * mask).sum() / total
    return torch.where(total == 0, mask.double().mean(), inside)  # NaN maps stay NaN


class AttentionCorrectness(CategoryAccuracy):
    """Mean share of saliency mass inside the phrase's boxes, per category and over all phrases (``avg``).

    Maps and boxes are scored as given: the datamodule's ``protocol`` frames the images (``center_crop``, Liu et al.'s
    protocol, hands over the central square and boxes clipped to it), so the metric never crops. Phrases without
    boxes are skipped (``skipped``).

    ``update(maps, boxes, categories)`` takes the same arguments as :class:`PointingGame`.
    """

    def __init__(
        self,
        categories: Sequence[str],
        negative: Negative = "shift",
        unknown: Unknown = OTHER,
        **kwargs: Any,
    ) -> None:
        super().__init__(categories, unknown=unknown, **kwargs)
        if negative not in ("shift", "clamp"):
            raise UserError(f"negative must be 'shift' or 'clamp', got {negative!r}")
        self.negative: Negative = negative

    def update(
        self, maps: Tensor | Sequence[Tensor], boxes: Sequence[Sequence[Box]], categories: Sequence[str]
    ) -> None:
        check_phrases(maps, boxes, categories)
        if isinstance(maps, Tensor) and maps.ndim != 3:
            raise ValueError(f"saliency maps must be (P, H, W) or a list of (H, W), got shape {tuple(maps.shape)}")
        indices = self.category_indices(categories)
        scores, scored, finite = [], [], []
        for p, phrase_boxes in enumerate(boxes):
            saliency = maps[p]
            if saliency.ndim != 2:
                raise ValueError(f"saliency map {p} must be (H, W), got shape {tuple(saliency.shape)}")
            if phrase_boxes:
                finite.append(torch.isfinite(saliency).all())
                scores.append(attention_correctness(saliency, phrase_boxes, self.negative))
                scored.append(indices[p])
        if scores:
            if not torch.stack(finite).all():
                raise ValueError("saliency maps contain NaN or inf; fix the explainer output before scoring it")
            self._accumulate("", torch.stack(scores), scored)
        self._skip("", len(boxes) - len(scored))
