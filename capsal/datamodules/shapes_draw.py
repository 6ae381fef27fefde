"""Geometry, drawing and caption grammar of the synthetic shapes datasets (numpy only, no torch).

Kept apart from the datamodules so the pieces that decide where the ground truth lies (masks, boxes, placement,
phrase spans) can be read and tested on their own.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from capsal.errors import UserError
from capsal.types import Caption, Phrase

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
GREY_LEVELS = (0.1, 0.5)  # background grey as a fraction of 255: dark to mid, never as bright as a colour
MIN_OBJECT_PX = 5  # below this a triangle, a diamond and a circle look alike
IntBox = tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def size_range(canvas: int, fractions: tuple[float, float]) -> tuple[int, int]:
    """Object sizes in pixels (low, high inclusive), proportional to the canvas so difficulty is size-independent."""
    return round_half_up(canvas * fractions[0]), round_half_up(canvas * fractions[1])


@functools.lru_cache(maxsize=512)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Filled ``shape`` rasterised on a ``size`` x ``size`` grid, cropped to its drawn pixels (read-only bool array).

    Cropping makes the mask's extent the object's tight box, so boxes derived from it match the drawn pixels exactly.
    """
    c = (np.arange(size) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")  # v grows downwards (rows), u rightwards (columns)
    if shape == "circle":
        mask = u**2 + v**2 <= 1.0
    elif shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "diamond":
        mask = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "triangle":  # apex up, base at the bottom row
        mask = np.abs(u) <= (v + 1) / 2
    else:
        raise UserError(f"shape {shape!r} is unknown; use some of {', '.join(SHAPES)}.")
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    mask.setflags(write=False)
    return mask


def box_at(y: int, x: int, mask: np.ndarray) -> IntBox:
    h, w = mask.shape
    return (int(x), int(y), int(x + w - 1), int(y + h - 1))


def box_center(box: IntBox) -> tuple[float, float]:
    """(cx, cy) of an inclusive box."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def place_apart(
    rng: np.random.Generator, canvas: int, masks: Sequence[np.ndarray], gap: int, attempts: int = 50
) -> list[IntBox] | None:
    """Boxes for ``masks`` on a square canvas, each at least ``gap`` background pixels from the others.

    Each object goes to a position drawn uniformly among all positions that keep it fully inside and apart from the
    ones already placed, so positions are uniform over the canvas (no centre bias). Returns None when every attempt
    painted itself into a corner; the caller then redraws the objects.
    """
    for _ in range(attempts):
        boxes: list[IntBox] = []
        for mask in masks:
            h, w = mask.shape
            ys = np.arange(canvas - h + 1)[:, None]
            xs = np.arange(canvas - w + 1)[None, :]
            free = np.ones((len(ys), xs.shape[1]), dtype=bool)
            for bx0, by0, bx1, by1 in boxes:
                free &= (xs + w - 1 + gap < bx0) | (xs > bx1 + gap) | (ys + h - 1 + gap < by0) | (ys > by1 + gap)
            candidates = np.flatnonzero(free)
            if candidates.size == 0:
                break
            y, x = divmod(int(rng.choice(candidates)), free.shape[1])
            boxes.append(box_at(y, x, mask))
        else:
            return boxes
    return None


def background(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A flat canvas (float32, ``shape`` ending in 3 channels) of one random dark-to-mid grey."""
    level = rng.uniform(*GREY_LEVELS) * 255.0
    return np.full(shape, level, dtype=np.float32)


def paint(canvas: np.ndarray, mask: np.ndarray, box: IntBox, color: str) -> None:
    """Fill ``mask`` with ``color`` in ``canvas`` (H, W, 3) with its top-left corner at the box's."""
    x0, y0, x1, y1 = box
    canvas[y0 : y1 + 1, x0 : x1 + 1][mask] = PALETTE[color]


def add_noise_uint8(rng: np.random.Generator, canvas: np.ndarray, noise: float) -> np.ndarray:
    """Per-pixel Gaussian noise of std ``noise`` * 255, clipped to uint8; objects get it too (no exact-colour cue)."""
    if noise > 0:
        canvas = canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise * 255.0)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def random_composition(rng: np.random.Generator, total: int, parts: int) -> np.ndarray:
    """``parts`` non-negative integers summing to ``total``, uniform over all such tuples (stars and bars)."""
    bars = np.sort(rng.choice(total + parts - 1, size=parts - 1, replace=False))
    return np.diff(np.concatenate([[-1], bars, [total + parts - 1]])) - 1


# -- caption grammar -------------------------------------------------------------------------------------------------
Piece = list[str] | tuple[list[str], Phrase]  # plain words, or the words of a grounded phrase


def compose(pieces: Sequence[Piece]) -> Caption:
    """Join pieces into a caption, giving each grounded phrase its word span in the joined sentence."""
    words: list[str] = []
    phrases: list[Phrase] = []
    for piece in pieces:
        if isinstance(piece, tuple):
            phrase_words, phrase = piece
            phrases.append(replace(phrase, start=len(words), end=len(words) + len(phrase_words)))
            words.extend(phrase_words)
        else:
            words.extend(piece)
    return Caption(text=" ".join(words), phrases=phrases)


def noun_phrase(color: str, shape: str, size_word: str | None = None) -> list[str]:
    """'a big red circle' (or 'a red circle' without a size word)."""
    return ["a", *([size_word] if size_word else []), color, shape]


def reading_order(boxes: Sequence[IntBox], canvas: int, bands: int = 3) -> list[int]:
    """Indices of ``boxes`` in reading order: by the horizontal band (``canvas / bands`` rows tall) holding the box
    centre, top band first, then left to right by centre column (ties: by centre row)."""
    band_height = canvas / bands

    def key(i: int) -> tuple[int, float, float]:
        cx, cy = box_center(boxes[i])
        return min(int(cy // band_height), bands - 1), cx, cy

    return sorted(range(len(boxes)), key=key)


def other_orders(rng: np.random.Generator, first: Sequence[int], count: int) -> list[list[int]]:
    """``first`` followed by ``count - 1`` other orders of the same indices: distinct while permutations last, then
    cycling (one object has a single order)."""
    rest = [list(p) for p in itertools.permutations(first) if list(p) != list(first)]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    pool = [list(first), *rest]
    return [pool[i % len(pool)] for i in range(count)]


RELATION_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def relation(a: IntBox, b: IntBox) -> str:
    """Where ``a`` lies relative to ``b`` along the dominant axis of their centre offset (vertical on ties)."""
    (ax, ay), (bx, by) = box_center(a), box_center(b)
    dx, dy = bx - ax, by - ay
    if abs(dy) >= abs(dx):
        return "above" if dy > 0 else "below"
    return "left of" if dx > 0 else "right of"


@dataclass(frozen=True)
class Event:
    """One object of a clip, visible and moving during frames [start, end)."""

    color: str
    shape: str
    size_word: str | None
    size: int
    start: int
    end: int
    direction: str
    positions: tuple[tuple[int, int], ...]  # (y, x) of the mask's top-left corner at each frame of the interval

    @property
    def mask(self) -> np.ndarray:
        return shape_mask(self.shape, self.size)

    def frame_boxes(self) -> dict[int, list[IntBox]]:
        return {self.start + k: [box_at(y, x, self.mask)] for k, (y, x) in enumerate(self.positions)}


def motion_path(
    rng: np.random.Generator, canvas: int, mask: np.ndarray, direction: str, frames: int
) -> tuple[tuple[int, int], ...]:
    """Top-left corners of an object moving steadily in ``direction`` over ``frames`` frames, fully inside.

    The displacement covers half to all of the free room, so short events move a few pixels per frame and every
    motion is large enough to see.
    """
    h, w = mask.shape
    vertical = direction in ("up", "down")
    room = canvas - (h if vertical else w)
    travel = int(rng.integers(-(-room // 2), room + 1))
    offsets = np.rint(np.linspace(0, travel, frames)).astype(int)
    start = int(rng.integers(0, room - travel + 1))
    along = start + offsets if direction in ("down", "right") else room - start - offsets
    across = np.full(frames, int(rng.integers(0, canvas - (w if vertical else h) + 1)))
    ys, xs = (along, across) if vertical else (across, along)
    return tuple((int(y), int(x)) for y, x in zip(ys, xs, strict=True))
