"""Pointing game (Zhang et al., ECCV 2016), the protocol of the paper's Table 1.

A phrase scores a hit when the maximum of its saliency map falls inside one of its ground-truth boxes. Maps are at
original image resolution (the explainer upsamples) and boxes are ``(x0, y0, x1, y1)`` in pixels, inclusive. The
maximum is :func:`capsal.maxima.peak_locations` (ties: rounded centroid), the point every figure marks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from capsal.errors import UserError
from capsal.maxima import peak_locations
from capsal.metrics.base import OTHER, CategoryAccuracy, Unknown, check_boxes, check_phrases, points_in_boxes
from capsal.types import Box


def _locations(maps: Tensor | Sequence[Tensor], keep: Sequence[int]) -> Tensor:
    if isinstance(maps, Tensor):
        if maps.ndim != 3:
            raise ValueError(f"saliency maps must be (P, H, W) or a list of (H, W), got shape {tuple(maps.shape)}")
        return peak_locations(maps[torch.as_tensor(list(keep), dtype=torch.long, device=maps.device)])
    for i in keep:
        if maps[i].ndim != 2:
            raise ValueError(f"saliency map {i} must be (H, W), got shape {tuple(maps[i].shape)}")
    return torch.cat([peak_locations(maps[i][None]) for i in keep])


def pointing_hits(maps: Tensor | Sequence[Tensor], boxes: Sequence[Sequence[Box]], tolerance: float = 0.0) -> Tensor:
    """Per-phrase pointing-game hits, ``(P,)`` bool on CPU; phrases without boxes are misses (the metric skips them)."""
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} saliency maps but {len(boxes)} box lists; give one per phrase")
    check_boxes(boxes)
    if len(maps) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return points_in_boxes(_locations(maps, range(len(maps))), boxes, tolerance).cpu()


class PointingGame(CategoryAccuracy):
    """Share of phrases whose saliency maximum lies inside (or strictly closer than ``tolerance`` px to) a box.

    ``tolerance=0`` is the paper's protocol: inside a box, edges included. Zhang et al. use 15 px with TorchRay's
    strict rule: a maximum exactly 15 px from every box misses, one 14.9 px away hits. Phrases without boxes
    (Flickr30k's "notvisual") are not scored and are counted in ``skipped``.

    ``update(maps, boxes, categories)``: ``maps`` is ``(P, H, W)`` or a list of ``P`` maps ``(H_p, W_p)`` (images of
    different sizes), ``boxes[p]`` the boxes of phrase p, ``categories[p]`` its category.
    """

    def __init__(
        self, categories: Sequence[str], tolerance: float = 0.0, unknown: Unknown = OTHER, **kwargs: Any
    ) -> None:
        super().__init__(categories, unknown=unknown, **kwargs)
        if tolerance < 0:
            raise UserError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = float(tolerance)

    def update(
        self, maps: Tensor | Sequence[Tensor], boxes: Sequence[Sequence[Box]], categories: Sequence[str]
    ) -> None:
        check_phrases(maps, boxes, categories)
        indices = self.category_indices(categories)
        keep = [p for p in range(len(boxes)) if len(boxes[p]) > 0]
        if keep:
            hits = points_in_boxes(_locations(maps, keep), [boxes[p] for p in keep], self.tolerance)
            self._accumulate("", hits.double(), [indices[p] for p in keep])
        self._skip("", len(boxes) - len(keep))
