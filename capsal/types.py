"""Small dataclasses shared by datamodules, models, explainers and metrics.

Conventions (see README "Design"): word spans and frame intervals are half-open, words are counted from 0
without bos; boxes are ``(x0, y0, x1, y1)`` in original image pixels, inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Box = tuple[float, float, float, float]


@dataclass
class Phrase:
    """A noun phrase of a caption with its ground truth (the Flickr30k Entities structure)."""

    start: int
    end: int
    category: str
    boxes: list[Box] = field(default_factory=list)
    interval: tuple[int, int] | None = None  # video: frames where the phrase is visible/active
    frame_boxes: dict[int, list[Box]] = field(default_factory=dict)  # video: boxes per frame index

    def words(self, caption_words: list[str]) -> list[str]:
        return caption_words[self.start : self.end]


@dataclass
class Caption:
    """One reference sentence and its grounded phrases."""

    text: str
    phrases: list[Phrase] = field(default_factory=list)


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
    """

    tokens: torch.Tensor
    captions: list[Caption]
    references: list[list[str]]
    sample_ids: list[str]
    pixels: torch.Tensor | None = None
    grid: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])
