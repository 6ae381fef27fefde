"""Per-category bookkeeping shared by every localisation metric, and the box helpers they share.

Boxes are ``(x0, y0, x1, y1)`` in pixels, inclusive.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from capsal.errors import UserError
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
            raise UserError(f"unknown must be 'other' or 'raise', got {unknown!r}")
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


def check_boxes(boxes: Sequence[Sequence[Box]]) -> None:
    """Reject malformed boxes with a message, instead of silently never hitting them."""
    for phrase_boxes in boxes:
        for box in phrase_boxes:
            if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box {tuple(box)} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")


def check_phrases(maps: Sized, boxes: Sequence[Sequence[Box]], categories: Sequence[str]) -> None:
    """One map, one box list and one category per phrase, every box well formed."""
    if not len(maps) == len(boxes) == len(categories):
        raise ValueError(
            f"got {len(maps)} maps, {len(boxes)} box lists and {len(categories)} categories; give one per phrase"
        )
    check_boxes(boxes)


def points_in_boxes(points: Tensor, boxes: Sequence[Sequence[Box]], tolerance: float = 0.0) -> Tensor:
    """``(P,)`` bool: point p hits one of ``boxes[p]`` (TorchRay's ``PointingGame`` rule).

    A point inside a box, edges included, is a hit whatever the tolerance; a point outside is a hit only when its
    Euclidean distance to the box is strictly less than ``tolerance`` (so ``tolerance=0`` means inside only, and a
    point exactly ``tolerance`` px away misses). A phrase with no boxes is a miss.
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
    distance = torch.hypot(dx, dy)
    near = (distance == 0) | (distance < tolerance)
    return hits.index_add_(0, owner, near.long()) > 0
