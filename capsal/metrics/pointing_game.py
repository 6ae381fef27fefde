"""Pointing game (Zhang et al., ECCV 2016), the protocol of the paper's Table 1.

A phrase scores a hit when the maximum of its saliency map falls inside one of its ground-truth boxes. Maps are at
original image resolution (the explainer upsamples) and boxes are ``(x0, y0, x1, y1)`` in pixels, inclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange, reduce
from torch import Tensor

from capsal.metrics.base import OTHER, CategoryAccuracy, Unknown, check_boxes, points_in_boxes
from capsal.types import Box


def pointing_locations(maps: Tensor) -> Tensor:
    """``(P, H, W)`` maps -> ``(P, 2)`` long ``(x, y)`` points of maximum saliency.

    Ties point at the centroid of all maximal pixels, rounded half up (``floor(c + 0.5)``), so a constant or
    centre-symmetric map points at the centre rather than wherever ``argmax`` happens to stop.
    """
    if maps.ndim != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"saliency maps must be (P, H, W) with H, W > 0, got shape {tuple(maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("saliency maps contain NaN; fix the explainer output before scoring it")
    height = maps.shape[1]
    flat = rearrange(maps, "p h w -> p (h w)")
    peak = rearrange(flat == flat.amax(dim=1, keepdim=True), "p (h w) -> p h w", h=height).long()
    n = reduce(peak, "p h w -> p", "sum").double()
    xs = torch.arange(maps.shape[2], device=maps.device)
    ys = torch.arange(height, device=maps.device)
    cx = (reduce(peak, "p h w -> p w", "sum") * xs).sum(1).double() / n
    cy = (reduce(peak, "p h w -> p h", "sum") * ys).sum(1).double() / n
    return torch.floor(torch.stack([cx, cy], dim=1) + 0.5).long()


def pointing_location(saliency: Tensor) -> tuple[int, int]:
    """``(x, y)`` of the maximum of one ``(H, W)`` map (ties: rounded centroid), e.g. to mark it in a gallery."""
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map must be (H, W), got shape {tuple(saliency.shape)}")
    x, y = pointing_locations(saliency[None])[0].tolist()
    return int(x), int(y)


def _locations(maps: Tensor | Sequence[Tensor], keep: Sequence[int]) -> Tensor:
    if isinstance(maps, Tensor):
        if maps.ndim != 3:
            raise ValueError(f"saliency maps must be (P, H, W) or a list of (H, W), got shape {tuple(maps.shape)}")
        return pointing_locations(maps[torch.as_tensor(list(keep), dtype=torch.long, device=maps.device)])
    for i in keep:
        if maps[i].ndim != 2:
            raise ValueError(f"saliency map {i} must be (H, W), got shape {tuple(maps[i].shape)}")
    return torch.cat([pointing_locations(maps[i][None]) for i in keep])


def pointing_hits(maps: Tensor | Sequence[Tensor], boxes: Sequence[Sequence[Box]], tolerance: float = 0.0) -> Tensor:
    """Per-phrase pointing-game hits, ``(P,)`` bool on CPU; phrases without boxes are misses (the metric skips them)."""
    if len(maps) != len(boxes):
        raise ValueError(f"{len(maps)} saliency maps but {len(boxes)} box lists; give one per phrase")
    check_boxes(boxes)
    if len(maps) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return points_in_boxes(_locations(maps, range(len(maps))), boxes, tolerance).cpu()


class PointingGame(CategoryAccuracy):
    """Share of phrases whose saliency maximum lies inside (or within ``tolerance`` px of) one of their boxes.

    ``tolerance=0`` is the paper's protocol; Zhang et al. use 15 px. Phrases without boxes (Flickr30k's
    "notvisual") are not scored and are counted in ``skipped``.

    ``update(maps, boxes, categories)``: ``maps`` is ``(P, H, W)`` or a list of ``P`` maps ``(H_p, W_p)`` (images of
    different sizes), ``boxes[p]`` the boxes of phrase p, ``categories[p]`` its category.
    """

    def __init__(
        self, categories: Sequence[str], tolerance: float = 0.0, unknown: Unknown = OTHER, **kwargs: Any
    ) -> None:
        super().__init__(categories, unknown=unknown, **kwargs)
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = float(tolerance)

    def update(
        self, maps: Tensor | Sequence[Tensor], boxes: Sequence[Sequence[Box]], categories: Sequence[str]
    ) -> None:
        if not len(maps) == len(boxes) == len(categories):
            raise ValueError(
                f"got {len(maps)} maps, {len(boxes)} box lists and {len(categories)} categories; give one per phrase"
            )
        indices = self.category_indices(categories)
        check_boxes(boxes)
        keep = [p for p in range(len(boxes)) if len(boxes[p]) > 0]
        if keep:
            hits = points_in_boxes(_locations(maps, keep), [boxes[p] for p in keep], self.tolerance)
            self._accumulate("", hits.double(), [indices[p] for p in keep])
        self._skip("", len(boxes) - len(keep))
