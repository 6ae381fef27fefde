"""Small dataclasses shared by datamodules, models, explainers and metrics.

Conventions (see README "Design"): word spans and frame intervals are half-open, words are counted from 0
without bos; boxes are ``(x0, y0, x1, y1)`` in original image pixels, inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ItemLayout:
    """How a model's items map back to its input: the cells of an image's grid (row-major ``h x w``), or the frames
    of a video (one pooled descriptor per frame, each over a grid of ``h x w`` regions).

    The model states it (``item_layout`` in the encoder-decoder protocol, see ``capsal.models.protocol``); everything
    else reads ``is_video`` and ``grid_size``.
    """

    is_video: bool
    grid_size: tuple[int, int]  # (h, w) of the descriptor grid; for videos, the grid inside each frame
    num_items: int
    # images whose items are no single grid (tiles and a thumbnail over them): ``(h*w, m)`` weights giving each
    # cell of ``grid_size`` from the items whose pixels cover it, each row summing to 1; None: item i is cell i
    cells: torch.Tensor | None = field(default=None, compare=False)

    def on_grid(self, values: torch.Tensor) -> torch.Tensor:
        """An image's item values ``(..., m)`` as values of the ``h*w`` grid cells (``cells``' weighted sums)."""
        return values if self.cells is None else values @ self.cells.T.to(values)

    def from_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Grid cell values ``(..., h*w)`` as item values: each item the weighted mean of the cells it covers."""
        if self.cells is None:
            return values
        cells = self.cells.to(values)
        return (values @ cells) / cells.sum(dim=0).clamp(min=torch.finfo(cells.dtype).tiny)


@dataclass
class Phrase:
    """A noun phrase of a caption with its ground truth (the Flickr30k Entities structure)."""

    start: int
    end: int
    category: str
    boxes: list[Box] = field(default_factory=list)
    interval: tuple[int, int] | None = None  # video: frames where the phrase is visible/active
    frame_boxes: dict[int, list[Box]] = field(default_factory=dict)  # video: boxes per frame index
    # the boxes in the frame maps are scored at (``Caption.original_size``); None: ``boxes``, which follow the pixels
    original_boxes: list[Box] | None = None

    def words(self, caption_words: list[str]) -> list[str]:
        return caption_words[self.start : self.end]


@dataclass
class Caption:
    """One reference sentence and its grounded phrases."""

    text: str
    phrases: list[Phrase] = field(default_factory=list)
    # (H, W) maps are scored at, when the pixels were resized: the original image under the datamodule's ``full``
    # protocol, its central square crop under ``center_crop``; None: the pixels' own size
    original_size: tuple[int, int] | None = None


@dataclass
class Sample:
    """One image (``T = 1``) or video clip as a dataset returns it."""

    pixels: torch.Tensor  # uint8 (T, 3, H, W)
    captions: list[Caption]
    sample_id: str


@dataclass
class Batch:
    """A collated batch. ``tokens`` row b is bos + ``captions[b]`` + eos, padded with pad.

    ``pixels`` is float in [0, 1], ``(B, T, 3, H, W)``; datasets of cached features set ``grid`` instead,
    ``(B, T, h, w, d)``. ``references`` holds every reference sentence of each sample (for captioning metrics).
    ``pixel_shape`` is ``(T, H, W)`` of the pixels the visual input came from (maps are scored at that size), also
    when only the cached grid travels.
    """

    tokens: torch.Tensor
    captions: list[Caption]
    references: list[list[str]]
    sample_ids: list[str]
    pixels: torch.Tensor | None = None
    grid: torch.Tensor | None = None
    pixel_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.pixel_shape is None and self.pixels is not None:
            frames, _, height, width = self.pixels.shape[1:]
            self.pixel_shape = (int(frames), int(height), int(width))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its tensors on ``device`` (Lightning moves batches through this method)."""
        moved = {name: getattr(self, name) for name in ("tokens", "pixels", "grid")}
        return replace(self, **{k: v.to(device) if v is not None else None for k, v in moved.items()})

    def select(self, rows: slice | list[int]) -> Batch:
        """The rows ``rows`` (a slice or a list of row numbers) of this batch, as a batch."""
        pick = (lambda values: values[rows]) if isinstance(rows, slice) else (lambda values: [values[r] for r in rows])
        tensors = {name: getattr(self, name) for name in ("tokens", "pixels", "grid")}
        lists = {name: pick(getattr(self, name)) for name in ("captions", "references", "sample_ids")}
        return replace(self, **{k: v[rows] if v is not None else None for k, v in tensors.items()}, **lists)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the original pixels."""
        if self.pixel_shape is None:
            raise ValueError("this batch has neither pixels nor a pixel_shape")
        return self.pixel_shape[1], self.pixel_shape[2]
