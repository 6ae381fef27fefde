"""Temporal pointing game for video captioning: does the most salient frame of a phrase fall in the frames where the
phrase happens, and, in that frame, does the spatial saliency maximum fall in the phrase's boxes?

Frame indices refer to the ``T`` frames the saliency was computed on; intervals are half-open ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from capsal.errors import UserError
from capsal.maxima import peak_frames, peak_locations
from capsal.metrics.base import OTHER, CategoryAccuracy, Unknown, check_boxes, points_in_boxes
from capsal.types import Box


class TemporalPointingGame(CategoryAccuracy):
    """Temporal and spatial pointing accuracy for video phrases, avg and per category.

    ``update(temporal, intervals, categories, spatial=None, frame_boxes=None)``:

    - ``temporal``: ``(P, T)`` or a list of ``(T_p,)`` saliency vectors; ``intervals[p]``: ``(start, end)`` frames,
      half-open, or ``None`` (not scored temporally; counted in ``temporal/skipped``). Hit: the most salient frame
      lies in ``[start, end)``.
    - ``spatial`` (optional): ``(P, T, H, W)`` or a list of ``(T_p, H, W)`` maps or ``None`` per phrase, with
      ``frame_boxes[p]``: ``{frame: boxes}``. In the most salient frame the maximum of that frame's map must lie
      inside one of that frame's boxes or strictly closer than ``tolerance`` px to one; a frame without boxes for
      the phrase (the temporal pointing missed) is a spatial miss. Phrases with no boxes in any frame count in
      ``spatial/skipped``.

    ``compute()`` keys: ``temporal/avg``, ``temporal/<category>``, ``temporal/skipped`` and the same for ``spatial``
    (nan where nothing was scored, e.g. spatial when no spatial maps were given).
    """

    def __init__(
        self, categories: Sequence[str], tolerance: float = 0.0, unknown: Unknown = OTHER, **kwargs: Any
    ) -> None:
        super().__init__(categories, unknown=unknown, groups=("temporal", "spatial"), **kwargs)
        if tolerance < 0:
            raise UserError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = float(tolerance)

    def update(
        self,
        temporal: Tensor | Sequence[Tensor],
        intervals: Sequence[tuple[int, int] | None],
        categories: Sequence[str],
        spatial: Tensor | Sequence[Tensor | None] | None = None,
        frame_boxes: Sequence[Mapping[int, Sequence[Box]]] | None = None,
    ) -> None:
        n = len(temporal)
        if not n == len(intervals) == len(categories):
            raise ValueError(
                f"got {n} temporal saliencies, {len(intervals)} intervals and {len(categories)} categories; "
                "give one per phrase"
            )
        if (spatial is None) != (frame_boxes is None):
            raise ValueError("spatial maps and frame_boxes go together: give both or neither")
        if spatial is not None and frame_boxes is not None and not n == len(spatial) == len(frame_boxes):
            raise ValueError(f"got {n} phrases but {len(spatial)} spatial maps and {len(frame_boxes)} frame_boxes")
        indices = self.category_indices(categories)
        for interval in intervals:
            if interval is not None and (len(interval) != 2 or not interval[0] < interval[1]):
                raise ValueError(f"frame interval {interval} is not a non-empty half-open (start, end)")
        if frame_boxes is not None:
            for boxes_by_frame in frame_boxes:
                check_boxes(list(boxes_by_frame.values()))
        frames = self._frames(temporal)

        scored = [p for p in range(n) if intervals[p] is not None]
        if scored:
            start = torch.tensor([intervals[p][0] for p in scored], device=frames.device)
            end = torch.tensor([intervals[p][1] for p in scored], device=frames.device)
            at = frames[torch.tensor(scored, device=frames.device)]
            self._accumulate("temporal", ((at >= start) & (at < end)).double(), [indices[p] for p in scored])
        self._skip("temporal", n - len(scored))

        if spatial is None or frame_boxes is None:
            return
        given = [p for p in range(n) if spatial[p] is not None]
        scored = [p for p in given if any(len(b) > 0 for b in frame_boxes[p].values())]
        if scored:
            frame_of = frames.tolist()
            maps = [self._frame_map(spatial, p, frame_of[p], len(temporal[p])) for p in scored]
            points = torch.cat([peak_locations(m[None]) for m in maps])
            boxes = [list(frame_boxes[p].get(frame_of[p], [])) for p in scored]
            hits = points_in_boxes(points, boxes, self.tolerance)
            self._accumulate("spatial", hits.double(), [indices[p] for p in scored])
        self._skip("spatial", len(given) - len(scored))

    @staticmethod
    def _frames(temporal: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(temporal, Tensor):
            return peak_frames(temporal)
        for p, vector in enumerate(temporal):
            if vector.ndim != 1:
                raise ValueError(f"temporal saliency {p} must be (T,), got shape {tuple(vector.shape)}")
        return torch.cat([peak_frames(vector[None]) for vector in temporal]) if temporal else torch.zeros(0).long()

    @staticmethod
    def _frame_map(spatial: Tensor | Sequence[Tensor | None], p: int, frame: int, length: int) -> Tensor:
        maps = spatial[p]
        assert maps is not None
        if maps.ndim != 3 or maps.shape[0] != length:
            raise ValueError(f"spatial saliency {p} must be (T={length}, H, W), got shape {tuple(maps.shape)}")
        return maps[frame]
