"""Pointing game (Zhang et al., ECCV 2016), the protocol of the paper's Table 1, and the per-category bookkeeping
shared by every localisation metric.

A phrase scores a hit when the maximum of its saliency map falls inside one of its ground-truth boxes. Maps are at
original image resolution (the explainer upsamples) and boxes are ``(x0, y0, x1, y1)`` in pixels, inclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from einops import rearrange, reduce
from torch import Tensor
from torchmetrics import Metric

from capsal.types import Box

OTHER = "other"
RESERVED_KEYS = ("avg", "skipped")
Unknown = Literal["other", "raise"]


class CategoryAccuracy(Metric):
    """Mean of a per-phrase score over all phrases (``avg``, the paper's "Avg per NP") and per category.

    States are fixed-size sums (``total[C]``, ``count[C]``, ``skipped``) so that DDP reduces them exactly by summing.
    Categories are fixed at construction; a category not listed goes to an ``"other"`` bucket (appended when not
    listed, so with Flickr30k Entities' own ``"other"`` listed, unknown categories are counted in it) or, with
    ``unknown="raise"``, raises ``ValueError``. Subclasses may keep several scores side by side (``groups``); their
    keys are then prefixed ``"<group>/"``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, categories: Sequence[str], unknown: Unknown = OTHER, groups: Sequence[str] = ("",), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(categories, str):
            raise TypeError(f"categories must be a sequence of names, not the string {categories!r}")
        names = list(categories)
        if len(set(names)) != len(names):
            raise ValueError(f"categories has duplicates: {names}")
        clash = sorted(set(names) & set(RESERVED_KEYS))
        if clash:
            raise ValueError(f"categories {clash} clash with the result keys {list(RESERVED_KEYS)}; rename them")
        if unknown not in ("other", "raise"):
            raise ValueError(f"unknown must be 'other' or 'raise', got {unknown!r}")
        if unknown == OTHER and OTHER not in names:
            names.append(OTHER)
        self.categories: tuple[str, ...] = tuple(names)
        self.unknown = unknown
        self.groups: tuple[str, ...] = tuple(groups)
        self._index = {name: i for i, name in enumerate(self.categories)}
        for group in self.groups:
            size = len(self.categories)
            self.add_state(self._name(group, "total"), torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(self._name(group, "count"), torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(self._name(group, "skipped"), torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _name(group: str, state: str) -> str:
        return f"{group}_{state}" if group else state

    def category_indices(self, categories: Sequence[str]) -> list[int]:
        """Bucket index of each category; checked before any state changes so a bad batch leaves no trace."""
        fallback = self._index.get(OTHER) if self.unknown == OTHER else None
        out = []
        for name in categories:
            index = self._index.get(name, fallback)
            if index is None:
                raise ValueError(f"unknown phrase category {name!r}; expected one of {list(self.categories)}")
            out.append(index)
        return out

    def _accumulate(self, group: str, scores: Tensor, indices: Sequence[int]) -> None:
        if not indices:
            return
        total = getattr(self, self._name(group, "total"))
        count = getattr(self, self._name(group, "count"))
        index = torch.as_tensor(list(indices), dtype=torch.long, device=total.device)
        total.index_add_(0, index, scores.detach().to(device=total.device, dtype=total.dtype))
        count.index_add_(0, index, torch.ones_like(index))

    def _skip(self, group: str, n: int) -> None:
        if n:
            getattr(self, self._name(group, "skipped")).add_(n)

    def compute(self) -> dict[str, Tensor]:
        """``avg``, one value per category (nan where no phrase was scored) and ``skipped``, all float64 scalars."""
        out: dict[str, Tensor] = {}
        for group in self.groups:
            prefix = f"{group}/" if group else ""
            total = getattr(self, self._name(group, "total"))
            count = getattr(self, self._name(group, "count")).to(total.dtype)
            out[f"{prefix}avg"] = total.sum() / count.sum()
            out.update({f"{prefix}{name}": value for name, value in zip(self.categories, total / count, strict=True)})
            out[f"{prefix}skipped"] = getattr(self, self._name(group, "skipped")).to(total.dtype)
        return out


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


def check_boxes(boxes: Sequence[Sequence[Box]]) -> None:
    """Reject malformed boxes with a message, instead of silently never hitting them."""
    for phrase_boxes in boxes:
        for box in phrase_boxes:
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box {tuple(box)} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")


def points_in_boxes(points: Tensor, boxes: Sequence[Sequence[Box]], tolerance: float = 0.0) -> Tensor:
    """``(P,)`` bool: point p lies within ``tolerance`` pixels (Euclidean) of any of ``boxes[p]`` (inclusive).

    A phrase with no boxes is a miss.
    """
    if len(points) != len(boxes):
        raise ValueError(f"{len(points)} points but {len(boxes)} box lists")
    owners = [p for p, phrase_boxes in enumerate(boxes) for _ in phrase_boxes]
    hits = torch.zeros(len(points), dtype=torch.long, device=points.device)
    if not owners:
        return hits.bool()
    box = torch.tensor([list(b) for bs in boxes for b in bs], dtype=torch.float64, device=points.device)
    owner = torch.tensor(owners, dtype=torch.long, device=points.device)
    point = points[owner].double()
    zero = torch.zeros((), dtype=torch.float64, device=points.device)
    dx = torch.maximum(torch.maximum(box[:, 0] - point[:, 0], point[:, 0] - box[:, 2]), zero)
    dy = torch.maximum(torch.maximum(box[:, 1] - point[:, 1], point[:, 1] - box[:, 3]), zero)
    near = torch.hypot(dx, dy) <= tolerance
    return hits.index_add_(0, owner, near.long()) > 0


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
