"""Synthetic image and video captioning data with exact ground truth, to test and demo saliency without downloads.

Everything is drawn procedurally from ``(seed, split, index)``: the same arguments give the same pixels and captions
on every machine, splits differ, and nothing is read from disk. Layouts and captions of a split are computed when the
split is built (cheap, and the vocabulary needs them); pixels are drawn on access.

Image captions list the objects: "a big red circle and a small blue square". The first caption of an image lists
them in reading order (see ``shapes_draw.reading_order``: top band to bottom band of thirds of the canvas, left to
right inside a band); further captions use other orders. With ``relations=True`` two-object images say
"a big red circle above a small blue square" ("above", "below", "left of", "right of", by the dominant axis of the
centre offset). Video captions narrate the events in time order: "a red circle moves left then a blue square moves
up". Every noun phrase ("a big red circle") is a ``Phrase`` with category = the shape and the exact pixel boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from einops import rearrange
from pydantic import Field
from torch.utils.data import Dataset
from typing_extensions import Unpack

import capsal.datamodules.shapes_draw as draw
from capsal.constraints import NamesFrom, PositiveInt, UnitInterval
from capsal.datamodules.base import SPLITS, CaptionDataModule, LoaderOptions, check_positive
from capsal.errors import UserError
from capsal.types import Caption, Phrase, Sample

LAYOUT_STREAM, PIXEL_STREAM = 0, 1

IMAGE_SMALL, IMAGE_BIG = (10 / 64, 13 / 64), (18 / 64, 22 / 64)
IMAGE_GAP = 2  # background pixels kept between objects, so each object's pixels are separable
VIDEO_PLAIN, VIDEO_SMALL, VIDEO_BIG = (0.25, 0.31), (0.19, 0.25), (0.34, 0.41)
VIDEO_CONNECTORS = (["then"], ["and", "then"], ["after", "that"])


ShapeNames = NamesFrom(lambda: draw.SHAPES, non_empty=True)  # distinct names of ``shapes_draw.SHAPES``
ColorNames = NamesFrom(lambda: list(draw.PALETTE), non_empty=True)  # distinct names of ``shapes_draw.PALETTE``
EventFrames = Annotated[int, Field(strict=True, ge=2)]  # frames of an event: at least two, to show motion
DEFAULT_COLORS = ("red", "green", "blue", "yellow")


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, split, sample, purpose): samples are reproducible one by one."""
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _names(values: Sequence[str], known: Sequence[str], option: str) -> tuple[str, ...]:
    names = tuple(str(v) for v in values)
    unknown = [n for n in names if n not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"{option}={list(names)} must be distinct names from {list(known)}; fix {option}.")
    return names


def _min_canvas(fractions: tuple[float, float], start: int) -> int:
    canvas = start
    while draw.size_range(canvas, fractions)[0] < draw.MIN_OBJECT_PX:
        canvas += 1
    return canvas


def check_counts(option: str, low: int, high: int, colors: int, prefix: str = "") -> None:
    """min_/max_ counts ordered, and each object of an item in a colour of its own."""
    if low > high:
        raise UserError(
            f"{prefix}min_{option}={low} exceeds {prefix}max_{option}={high}; make min_{option} <= max_{option}."
        )
    if high > colors:
        raise UserError(
            f"{prefix}max_{option}={high} exceeds the {colors} colors, and the {option} of one item get distinct "
            f"colors; add colors or lower max_{option}."
        )


class _ShapesModule(CaptionDataModule):
    """Options shared by the image and video shapes datamodules."""

    name = "shapes"

    def __init__(
        self,
        num_train: PositiveInt,
        num_val: PositiveInt,
        num_test: PositiveInt,
        noise: UnitInterval,
        shapes: ShapeNames,
        colors: ColorNames,
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(**loader)
        check_positive(num_train=num_train, num_val=num_val, num_test=num_test)
        if self.seed < 0:
            raise UserError(f"seed={self.seed} must be 0 or more; pick a non-negative seed.")
        if not 0 <= noise <= 1:
            raise UserError(f"noise={noise} is the noise std as a fraction of 255 and must lie in [0, 1].")
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.noise = float(noise)
        self.shapes = _names(shapes, draw.SHAPES, "shapes")
        self.categories = tuple(self.shapes)  # a phrase's category is its shape
        self.colors = _names(colors, list(draw.PALETTE), "colors")

    def _check_count(self, option: str, low: int, high: int) -> None:
        check_positive(**{f"min_{option}": low, f"max_{option}": high})
        check_counts(option, low, high, len(self.colors))

    @classmethod
    def check_arguments(cls, arguments: dict, prefix: str = "") -> None:
        """Options wrong only together (``capsal.config_schema`` calls it before anything is built)."""
        option = "objects" if "min_objects" in arguments else "events"
        low, high = arguments.get(f"min_{option}"), arguments.get(f"max_{option}")
        colors = arguments.get("colors")
        if isinstance(low, int) and isinstance(high, int) and isinstance(colors, list | tuple):
            check_counts(option, low, high, len(colors), prefix)

    def caption_texts(self, split: str) -> list[str]:
        data = self.get_split(split)
        data = getattr(data, "base", data)  # a feature cache over the split: the captions are the split's
        return [c.text for caps in data.captions for c in caps]


# -- images ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageObject:
    color: str
    shape: str
    size_word: str
    size: int
    box: draw.IntBox

    @property
    def mask(self) -> np.ndarray:
        return draw.shape_mask(self.shape, self.size)

    def phrase(self) -> tuple[list[str], Phrase]:
        return draw.noun_phrase(self.color, self.shape, self.size_word), Phrase(0, 0, self.shape, [self.box])


class ShapesImageDataset(Dataset):
    """One split of shapes images: layouts and captions held in memory, pixels drawn per access."""

    def __init__(self, module: ShapesImageDataModule, split: str):
        self.split, self.seed, self.noise, self.image_size = split, module.seed, module.noise, module.image_size
        layouts = [module.layout(split, i) for i in range(module.sizes[split])]
        self.objects: list[tuple[ImageObject, ...]] = [objs for objs, _ in layouts]
        self.captions: list[list[Caption]] = [caps for _, caps in layouts]

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> Sample:
        rng = _rng(self.seed, self.split, index, PIXEL_STREAM)
        canvas = draw.background(rng, (self.image_size, self.image_size, 3))
        for obj in self.objects[index]:
            draw.paint(canvas, obj.mask, obj.box, obj.color)
        pixels = rearrange(draw.add_noise_uint8(rng, canvas, self.noise), "h w c -> 1 c h w")
        return Sample(
            torch.from_numpy(np.ascontiguousarray(pixels)),
            self.captions[index],
            f"shapes_image/{self.split}/{index:06d}",
        )


class ShapesImageDataModule(_ShapesModule):
    """Noisy grey canvases with 1-3 coloured shapes and captions that name them, with pixel-exact phrase boxes.

    Objects never overlap (``IMAGE_GAP`` px apart) and each has a colour of its own, so a colour word or a phrase
    points at exactly one object. Sizes scale with ``image_size`` (at 64 px: small 10-13 px, big 18-22 px).
    """

    def __init__(
        self,
        num_train: PositiveInt = 4000,
        num_val: PositiveInt = 200,
        num_test: PositiveInt = 200,
        image_size: PositiveInt = 64,
        min_objects: PositiveInt = 1,
        max_objects: PositiveInt = 3,
        captions_per_image: PositiveInt = 3,
        noise: UnitInterval = 0.1,
        relations: bool = False,
        shapes: ShapeNames = draw.SHAPES,
        colors: ColorNames = DEFAULT_COLORS,
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(num_train, num_val, num_test, noise, shapes, colors, **loader)
        check_positive(captions_per_image=captions_per_image)
        self._check_count("objects", min_objects, max_objects)
        self.image_size, self.min_objects, self.max_objects = int(image_size), int(min_objects), int(max_objects)
        self.captions_per_image, self.relations = int(captions_per_image), bool(relations)
        self.small, self.big = draw.size_range(image_size, IMAGE_SMALL), draw.size_range(image_size, IMAGE_BIG)
        if self.small[0] < draw.MIN_OBJECT_PX:
            raise UserError(
                f"image_size={image_size} makes small objects {self.small[0]} px across, too few to tell shapes apart; "
                f"use image_size >= {_min_canvas(IMAGE_SMALL, image_size)}."
            )
        if not self._fits(image_size, max_objects):
            needed = next((s for s in range(image_size, 16 * image_size) if self._fits(s, max_objects)), None)
            fix = f"use image_size >= {needed} or lower max_objects" if needed else "lower max_objects"
            raise UserError(
                f"max_objects={max_objects} big objects do not fit apart in image_size={image_size}; {fix}."
            )

    @staticmethod
    def _fits(canvas: int, count: int) -> bool:
        """Big objects with their gaps cover at most 85% of the canvas, a density at which random placement still
        succeeds on most attempts, so generation stays fast."""
        big = draw.size_range(canvas, IMAGE_BIG)[1]
        return count * (big + IMAGE_GAP) ** 2 <= 0.85 * canvas**2

    def layout(self, split: str, index: int) -> tuple[tuple[ImageObject, ...], list[Caption]]:
        """The objects of image ``index`` of ``split`` and its captions (deterministic)."""
        rng = _rng(self.seed, split, index, LAYOUT_STREAM)
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        boxes = None
        while boxes is None:  # redraw sizes too in the (rare) case the placement got stuck
            colors = [self.colors[i] for i in rng.choice(len(self.colors), size=count, replace=False)]
            shapes = [self.shapes[i] for i in rng.integers(len(self.shapes), size=count)]
            words = ["big" if b else "small" for b in rng.random(count) < 0.5]
            sizes = [int(rng.integers(*(self.big if w == "big" else self.small), endpoint=True)) for w in words]
            masks = [draw.shape_mask(s, n) for s, n in zip(shapes, sizes, strict=True)]
            boxes = draw.place_apart(rng, self.image_size, masks, IMAGE_GAP)
        objects = tuple(ImageObject(*fields) for fields in zip(colors, shapes, words, sizes, boxes, strict=True))
        return objects, self._captions(rng, objects)

    def _captions(self, rng: np.random.Generator, objects: Sequence[ImageObject]) -> list[Caption]:
        first = draw.reading_order([o.box for o in objects], self.image_size)
        if self.relations and len(objects) == 2:
            a, b = objects[first[0]], objects[first[1]]
            rel = draw.relation(a.box, b.box)
            pair = [
                draw.compose([a.phrase(), rel.split(), b.phrase()]),
                draw.compose([b.phrase(), draw.RELATION_INVERSE[rel].split(), a.phrase()]),
            ]
            return [pair[i % 2] for i in range(self.captions_per_image)]
        captions = []
        for order in draw.other_orders(rng, first, self.captions_per_image):
            pieces: list[draw.Piece] = []
            for k, i in enumerate(order):
                pieces += [["and"]] if k else []
                pieces.append(objects[i].phrase())
            captions.append(draw.compose(pieces))
        return captions

    def build_split(self, split: str) -> ShapesImageDataset:
        return ShapesImageDataset(self, split)


# -- videos ------------------------------------------------------------------------------------------------------------
class ShapesVideoDataset(Dataset):
    """One split of shapes clips: events and captions held in memory, frames drawn per access."""

    def __init__(self, module: ShapesVideoDataModule, split: str):
        self.split, self.seed, self.noise = split, module.seed, module.noise
        self.num_frames, self.frame_size = module.num_frames, module.frame_size
        layouts = [module.layout(split, i) for i in range(module.sizes[split])]
        self.events: list[tuple[draw.Event, ...]] = [events for events, _ in layouts]
        self.captions: list[list[Caption]] = [caps for _, caps in layouts]

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> Sample:
        rng = _rng(self.seed, self.split, index, PIXEL_STREAM)
        frames = draw.background(rng, (self.num_frames, self.frame_size, self.frame_size, 3))
        for event in self.events[index]:
            for t, boxes in event.frame_boxes().items():
                draw.paint(frames[t], event.mask, boxes[0], event.color)
        pixels = rearrange(draw.add_noise_uint8(rng, frames, self.noise), "t h w c -> t c h w")
        return Sample(
            torch.from_numpy(np.ascontiguousarray(pixels)),
            self.captions[index],
            f"shapes_video/{self.split}/{index:06d}",
        )


class ShapesVideoDataModule(_ShapesModule):
    """Clips of 1-2 events, each a coloured shape that appears, moves one way and disappears in its own interval.

    Events follow each other in time without overlapping, at random times, and have distinct colours; the caption
    narrates them in order, so "red" and "circle" are grounded in the frames of their event only.
    """

    is_video = True

    def __init__(
        self,
        num_train: PositiveInt = 2000,
        num_val: PositiveInt = 100,
        num_test: PositiveInt = 100,
        num_frames: PositiveInt = 26,
        frame_size: PositiveInt = 32,
        min_events: PositiveInt = 1,
        max_events: PositiveInt = 2,
        min_event_frames: EventFrames = 6,
        captions_per_clip: PositiveInt = 1,
        size_words: bool = False,
        noise: UnitInterval = 0.1,
        shapes: ShapeNames = draw.SHAPES,
        colors: ColorNames = DEFAULT_COLORS,
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(num_train, num_val, num_test, noise, shapes, colors, **loader)
        check_positive(captions_per_clip=captions_per_clip, num_frames=num_frames)
        self._check_count("events", min_events, max_events)
        if min_event_frames < 2:
            raise UserError(f"min_event_frames={min_event_frames} leaves no motion to see; use 2 or more.")
        if num_frames < max_events * min_event_frames:
            raise UserError(
                f"num_frames={num_frames} cannot hold max_events={max_events} events of min_event_frames="
                f"{min_event_frames}; use num_frames >= {max_events * min_event_frames} or fewer/shorter events."
            )
        self.num_frames, self.frame_size = int(num_frames), int(frame_size)
        self.min_events, self.max_events = int(min_events), int(max_events)
        self.min_event_frames = int(min_event_frames)
        self.captions_per_clip, self.size_words = int(captions_per_clip), bool(size_words)
        fractions = {"small": VIDEO_SMALL, "big": VIDEO_BIG} if size_words else {None: VIDEO_PLAIN}
        self.size_px = {word: draw.size_range(frame_size, f) for word, f in fractions.items()}
        smallest = min(low for low, _ in self.size_px.values())
        if smallest < draw.MIN_OBJECT_PX:
            needed = max(_min_canvas(f, frame_size) for f in fractions.values())
            raise UserError(
                f"frame_size={frame_size} makes objects {smallest} px across, too few to tell shapes apart; "
                f"use frame_size >= {needed}."
            )

    def layout(self, split: str, index: int) -> tuple[tuple[draw.Event, ...], list[Caption]]:
        """The events of clip ``index`` of ``split`` and its captions (deterministic)."""
        rng = _rng(self.seed, split, index, LAYOUT_STREAM)
        count = int(rng.integers(self.min_events, self.max_events + 1))
        # gaps before/between/after events and extra frames per event share the frames beyond the minimum lengths
        parts = draw.random_composition(rng, self.num_frames - count * self.min_event_frames, 2 * count + 1)
        colors = [self.colors[i] for i in rng.choice(len(self.colors), size=count, replace=False)]
        events, t = [], int(parts[0])
        for k in range(count):
            start, end = t, t + self.min_event_frames + int(parts[2 * k + 1])
            t = end + int(parts[2 * k + 2])
            shape = self.shapes[int(rng.integers(len(self.shapes)))]
            word = ("big" if rng.random() < 0.5 else "small") if self.size_words else None
            size = int(rng.integers(*self.size_px[word], endpoint=True))
            direction = ("left", "right", "up", "down")[int(rng.integers(4))]
            path = draw.motion_path(rng, self.frame_size, draw.shape_mask(shape, size), direction, end - start)
            events.append(draw.Event(colors[k], shape, word, size, start, end, direction, path))
        return tuple(events), self._captions(events)

    def _captions(self, events: Sequence[draw.Event]) -> list[Caption]:
        captions = []
        for c in range(self.captions_per_clip):
            pieces: list[draw.Piece] = []
            for k, ev in enumerate(events):
                pieces += [VIDEO_CONNECTORS[c % len(VIDEO_CONNECTORS)]] if k else []
                phrase = Phrase(0, 0, ev.shape, [], interval=(ev.start, ev.end), frame_boxes=ev.frame_boxes())
                pieces += [(draw.noun_phrase(ev.color, ev.shape, ev.size_word), phrase), ["moves", ev.direction]]
            captions.append(draw.compose(pieces))
        return captions

    def build_split(self, split: str) -> ShapesVideoDataset:
        return ShapesVideoDataset(self, split)
