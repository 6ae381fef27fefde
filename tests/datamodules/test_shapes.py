"""Synthetic shapes datamodules: determinism, pixel-exact ground truth, caption grammar, batches and config errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from capsal.datamodules import ShapesImageDataModule, ShapesVideoDataModule
from capsal.datamodules.base import LOADER_DEFAULTS
from capsal.datamodules.shapes_draw import PALETTE, SHAPES
from capsal.text import tokenize
from capsal.types import Batch

CONF = Path(__file__).resolve().parents[2] / "capsal" / "conf" / "datamodule"
SIZE_WORDS = ("small", "big")


def color_mask(frame: torch.Tensor, color: str) -> np.ndarray:
    """Pixels of a (3, H, W) uint8 frame that have exactly ``color`` (valid with noise=0)."""
    rgb = torch.tensor(PALETTE[color], dtype=torch.uint8)[:, None, None]
    return (frame == rgb).all(0).numpy()


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def small_image(**kwargs) -> ShapesImageDataModule:
    options = {"num_train": 48, "num_val": 12, "num_test": 12, "batch_size": 8, **kwargs}
    return ShapesImageDataModule(**options)


def small_video(**kwargs) -> ShapesVideoDataModule:
    options = {"num_train": 24, "num_val": 8, "num_test": 8, "batch_size": 4, **kwargs}
    return ShapesVideoDataModule(**options)


@pytest.fixture(scope="module")
def clean_images() -> ShapesImageDataModule:
    return small_image(num_val=60, noise=0.0)


@pytest.fixture(scope="module")
def clean_videos() -> ShapesVideoDataModule:
    return small_video(num_val=40, noise=0.0, captions_per_clip=3)


# -- determinism -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [small_image, small_video])
def test_same_seed_same_data_and_splits_differ(make):
    a, b, other_seed = make(seed=3), make(seed=3), make(seed=4)
    for split in ("train", "val", "test"):
        for i in (0, 5):
            sa, sb = a.sample(split, i), b.sample(split, i)
            assert torch.equal(sa.pixels, sb.pixels)
            assert sa.captions == sb.captions
            assert sa.sample_id == f"shapes_{'video' if a.is_video else 'image'}/{split}/{i:06d}"
    assert torch.equal(a.sample("val", 2).pixels, a.sample("val", 2).pixels)  # drawing again gives the same pixels
    texts = {s: [c.text for i in range(8) for c in a.sample(s, i).captions] for s in ("train", "val", "test")}
    assert texts["train"] != texts["val"] != texts["test"] != texts["train"]
    assert not torch.equal(a.sample("val", 0).pixels, a.sample("test", 0).pixels)
    assert not torch.equal(a.sample("train", 0).pixels, other_seed.sample("train", 0).pixels)


# -- images: ground truth matches pixels -------------------------------------------------------------------------------
def test_image_phrase_boxes_are_the_drawn_pixels(clean_images):
    fill = {shape: [] for shape in SHAPES}
    for i in range(len(clean_images.get_split("val"))):
        sample = clean_images.sample("val", i)
        assert sample.pixels.shape == (1, 3, 64, 64) and sample.pixels.dtype == torch.uint8
        frame, caption = sample.pixels[0], sample.captions[0]
        words = tokenize(caption.text)
        drawn = np.zeros((64, 64), dtype=bool)
        for phrase in caption.phrases:
            _, size, color, shape = phrase.words(words)
            mask = color_mask(frame, color)  # colours are distinct within an image
            assert [tight_box(mask)] == phrase.boxes, (sample.sample_id, caption.text)
            assert phrase.category == shape and phrase.interval is None
            x0, y0, x1, y1 = phrase.boxes[0]
            fill[shape].append(mask.sum() / ((x1 - x0 + 1) * (y1 - y0 + 1)))
            extent = max(x1 - x0, y1 - y0) + 1
            assert (10 <= extent <= 13) if size == "small" else (18 <= extent <= 22), (size, extent)
            drawn |= mask
        # everything else is the flat grey background: nothing drawn that the caption does not mention
        rest = frame.numpy()[:, ~drawn]
        assert (rest == rest[:, :1]).all() and (rest[0] == rest[1]).all()
    # the shape word is the drawn shape: fill ratios of the tight box tell them apart
    assert min(fill["square"]) == 1.0
    assert 0.7 < np.mean(fill["circle"]) < 0.85
    assert 0.4 < np.mean(fill["triangle"]) < 0.62 and 0.4 < np.mean(fill["diamond"]) < 0.62


def test_noise_perturbs_background_by_its_std():
    clean, noisy = small_image(noise=0.0).sample("val", 1), small_image(noise=0.1).sample("val", 1)
    assert clean.captions == noisy.captions
    diff = noisy.pixels.float() - clean.pixels.float()
    assert 0.08 * 255 < diff.std() < 0.12 * 255


def test_objects_are_apart_and_inside(clean_images):
    for objects in clean_images.get_split("train").objects:
        for k, a in enumerate(objects):
            assert 0 <= a.box[0] <= a.box[2] < 64 and 0 <= a.box[1] <= a.box[3] < 64
            for b in objects[k + 1 :]:
                apart_x = a.box[2] + 2 < b.box[0] or b.box[2] + 2 < a.box[0]
                apart_y = a.box[3] + 2 < b.box[1] or b.box[3] + 2 < a.box[1]
                assert apart_x or apart_y


def test_object_positions_are_not_centre_biased():
    dm = ShapesImageDataModule(num_train=500, num_val=1, num_test=1, seed=7)
    centres, uniform_var = [], []
    for objects in dm.get_split("train").objects:
        for o in objects:
            x0, y0, x1, y1 = o.box
            centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
            # a centre uniform over the positions that keep the object inside
            uniform_var.append((((64 - (x1 - x0 + 1)) ** 2) / 12, ((64 - (y1 - y0 + 1)) ** 2) / 12))
    centres = np.array(centres)
    assert len(centres) > 800
    assert np.abs(centres.mean(0) - 31.5).max() < 2.0
    ratio = centres.std(0) / np.sqrt(np.mean(uniform_var, 0))
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio
    quadrants, _, _ = np.histogram2d(centres[:, 0], centres[:, 1], bins=2, range=[[-0.5, 63.5]] * 2)
    assert (np.abs(quadrants / quadrants.sum() - 0.25) < 0.05).all(), quadrants


# -- images: caption grammar -------------------------------------------------------------------------------------------
def test_image_captions_grammar_and_reading_order(clean_images):
    seen_counts = set()
    for i in range(len(clean_images.get_split("train"))):
        captions = clean_images.sample("train", i).captions
        assert len(captions) == 3
        n = len(captions[0].phrases)
        seen_counts.add(n)
        for caption in captions:
            words = tokenize(caption.text)
            assert len(caption.phrases) == n
            for k, phrase in enumerate(caption.phrases):
                a, size, color, shape = phrase.words(words)
                assert (a, size in SIZE_WORDS, color in PALETTE, shape == phrase.category) == ("a", True, True, True)
                assert phrase.start == 5 * k and phrase.end == 5 * k + 4  # "a size color shape" joined by "and"
                if k:
                    assert words[phrase.start - 1] == "and"
            assert len(words) == 5 * n - 1
        # other captions list the same objects in other orders, distinct while orders last
        assert len({c.text for c in captions}) == min(3, {1: 1, 2: 2, 3: 6}[n])
        assert all(sorted(p.boxes for p in c.phrases) == sorted(p.boxes for p in captions[0].phrases) for c in captions)
        # first caption: reading order = by band of thirds of the canvas (top first), then left to right
        keys = []
        for p in captions[0].phrases:
            x0, y0, x1, y1 = p.boxes[0]
            keys.append((int((y0 + y1) / 2 // (64 / 3)), (x0 + x1) / 2))
        assert keys == sorted(keys), captions[0].text
    assert seen_counts == {1, 2, 3}


def test_relations_describe_geometry():
    dm = small_image(num_train=80, min_objects=2, max_objects=2, relations=True)
    relations = set()
    for i in range(80):
        first, second, third = dm.sample("train", i).captions
        assert third == first  # two objects have two phrasings; they repeat
        for caption in (first, second):
            words = tokenize(caption.text)
            a, b = caption.phrases
            assert (a.start, a.end, b.end) == (0, 4, len(words))
            rel = " ".join(words[a.end : b.start])
            relations.add(rel)
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.boxes[0], b.boxes[0]
            dx, dy = (bx0 + bx1 - ax0 - ax1) / 2, (by0 + by1 - ay0 - ay1) / 2
            expected = ("above" if dy > 0 else "below") if abs(dy) >= abs(dx) else ("left of" if dx > 0 else "right of")
            assert rel == expected, (caption.text, a.boxes, b.boxes)
    assert relations == {"above", "below", "left of", "right of"}


# -- videos ------------------------------------------------------------------------------------------------------------
def test_video_intervals_and_frame_boxes_are_the_drawn_pixels(clean_videos):
    starts, counts = set(), set()
    for i in range(len(clean_videos.get_split("val"))):
        sample = clean_videos.sample("val", i)
        assert sample.pixels.shape == (26, 3, 32, 32) and sample.pixels.dtype == torch.uint8
        caption = sample.captions[0]
        words = tokenize(caption.text)
        previous_end = 0
        counts.add(len(caption.phrases))
        for phrase in caption.phrases:
            a, color, shape = phrase.words(words)
            assert (a, shape, phrase.boxes) == ("a", phrase.category, [])
            s, e = phrase.interval
            assert previous_end <= s and e - s >= 6 and e <= 26
            previous_end = e
            starts.add(s)
            assert sorted(phrase.frame_boxes) == list(range(s, e))
            for t in range(26):
                mask = color_mask(sample.pixels[t], color)
                if s <= t < e:
                    assert [tight_box(mask)] == phrase.frame_boxes[t], (sample.sample_id, t)
                else:
                    assert not mask.any(), f"{color} drawn at frame {t} outside [{s}, {e})"
            # the object moves the way the caption says, steadily and visibly
            direction = words[phrase.end + 1]
            boxes = np.array([phrase.frame_boxes[t][0] for t in range(s, e)])
            axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[direction]
            steps = np.diff(boxes[:, axis]) * sign
            assert (steps >= 0).all() and steps.sum() >= 5
            assert (boxes[:, 1 - axis] == boxes[0, 1 - axis]).all()
    assert counts == {1, 2}
    assert len(starts) > 8  # events start at many different frames, not always the same window


def test_video_caption_grammar(clean_videos):
    seen = set()
    for i in range(len(clean_videos.get_split("val"))):
        captions = clean_videos.sample("val", i).captions
        for caption, connector in zip(captions, (["then"], ["and", "then"], ["after", "that"]), strict=True):
            words = tokenize(caption.text)
            phrases = caption.phrases
            # "a red circle moves left [connector a blue square moves up]"
            assert [words[p.end] for p in phrases] == ["moves"] * len(phrases)
            assert all(words[p.end + 1] in ("left", "right", "up", "down") for p in phrases)
            assert phrases[0].start == 0 and phrases[-1].end + 2 == len(words)
            if len(phrases) == 2:
                assert words[phrases[0].end + 2 : phrases[1].start] == connector
            seen.add(len(phrases))
        if len(captions[0].phrases) == 1:
            assert len({c.text for c in captions}) == 1
    assert seen == {1, 2}


def test_video_size_words():
    dm = small_video(size_words=True, noise=0.0)
    seen = set()
    for i in range(12):
        caption = dm.sample("train", i).captions[0]
        words = tokenize(caption.text)
        for phrase in caption.phrases:
            _, size, _, _ = phrase.words(words)
            x0, y0, x1, y1 = next(iter(phrase.frame_boxes.values()))[0]
            extent = max(x1 - x0, y1 - y0) + 1
            assert (6 <= extent <= 8) if size == "small" else (11 <= extent <= 13), (size, extent)
            seen.add(size)
    assert seen == set(SIZE_WORDS)


# -- vocabulary, batches, loaders --------------------------------------------------------------------------------------
def test_vocab_is_built_from_train_captions():
    dm = small_image()
    vocab = dm.vocab  # built lazily
    words = {w for i in range(48) for c in dm.sample("train", i).captions for w in tokenize(c.text)}
    assert words <= set(vocab.itos) and set(vocab.itos[4:]) == words
    assert {"a", "and", "small", "big", "red", "circle", "diamond"} <= words
    video_words = set(small_video().vocab.itos)
    assert {"moves", "then", "left", "right", "up", "down"} <= video_words and "big" not in video_words


@pytest.mark.parametrize("make", [small_image, small_video])
def test_collate_shapes_ranges_and_tokens(make):
    dm = make()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert isinstance(batch, Batch) and len(batch) == dm.batch_size
    t = 26 if dm.is_video else 1
    size = 32 if dm.is_video else 64
    assert batch.pixels.shape == (dm.batch_size, t, 3, size, size) and batch.pixels.dtype == torch.float32
    assert batch.pixels.min() >= 0 and batch.pixels.max() <= 1 and batch.pixels.std() > 0.05
    assert batch.tokens.dtype == torch.long and (batch.tokens[:, 0] == dm.vocab.bos_id).all()
    for b in range(len(batch)):
        sample = dm.sample("val", b)
        assert batch.sample_ids[b] == sample.sample_id
        assert batch.captions[b] == sample.captions[0]  # evaluation uses the first caption
        assert batch.references[b] == [c.text for c in sample.captions]
        assert dm.vocab.decode_text(batch.tokens[b]) == sample.captions[0].text
        assert torch.allclose(batch.pixels[b] * 255, sample.pixels.float())


def test_train_captions_are_drawn_at_random_and_reproducibly():
    dm = small_image(min_objects=3, batch_size=48)

    def epoch() -> list[str]:
        return [" ".join(dm.vocab.decode(row)) for batch in dm.train_dataloader() for row in batch.tokens]

    L.seed_everything(1, verbose=False)
    first, second = epoch(), epoch()
    L.seed_everything(1, verbose=False)
    assert epoch() == first  # reproducible under seed_everything
    assert first != second  # shuffled, and captions re-drawn each epoch
    batch = next(iter(dm.train_dataloader()))
    chosen = [ref.index(cap.text) for ref, cap in zip(batch.references, batch.captions, strict=True)]
    assert set(chosen) == {0, 1, 2}


def test_dataloaders_iterate_every_sample():
    dm = small_image(num_train=20, num_val=7, num_test=5, batch_size=4, eval_batch_size=3)
    dm.setup(None)
    ids = {
        name: [i for b in loader for i in b.sample_ids]
        for name, loader in [
            ("train", dm.train_dataloader()),
            ("val", dm.val_dataloader()),
            ("test", dm.test_dataloader()),
        ]
    }
    assert sorted(ids["train"]) == [f"shapes_image/train/{i:06d}" for i in range(20)]
    assert ids["val"] == [f"shapes_image/val/{i:06d}" for i in range(7)]  # in order
    assert len(ids["test"]) == 5 and dm.test_dataloader().batch_size == 3
    assert dm.val_dataloader().persistent_workers is False


def test_dataloader_with_a_worker_process():
    dm = small_video(num_val=4, num_workers=1, batch_size=2)
    loader = dm.val_dataloader()
    assert loader.persistent_workers is True
    assert [i for b in loader for i in b.sample_ids] == [f"shapes_video/val/{i:06d}" for i in range(4)]


def test_sample_index_errors():
    dm = small_image(num_val=40)
    with pytest.raises(IndexError, match=r"^split 'val' has 40 samples; index 99 is out of range$"):
        dm.sample("val", 99)
    assert dm.sample("val", -1).sample_id == "shapes_image/val/000039"
    with pytest.raises(ValueError, match="split 'dev' is unknown"):
        dm.sample("dev", 0)


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (ShapesImageDataModule, {"num_val": 0}, r"num_val=0 must be at least 1"),
        (ShapesImageDataModule, {"batch_size": 0}, r"batch_size=0 must be at least 1"),
        (ShapesImageDataModule, {"eval_batch_size": -2}, r"eval_batch_size=-2 must be at least 1"),
        (ShapesImageDataModule, {"image_size": 16}, r"image_size=16 makes small objects .* use image_size >= 29"),
        (
            ShapesImageDataModule,
            {"image_size": 48, "max_objects": 6, "colors": list(PALETTE)},
            r"max_objects=6 .* image_size >= 56",
        ),
        (ShapesImageDataModule, {"max_objects": 5}, r"max_objects=5 exceeds the 4 colors"),
        (ShapesImageDataModule, {"min_objects": 3, "max_objects": 2}, r"min_objects=3 exceeds max_objects=2"),
        (ShapesImageDataModule, {"shapes": ["circle", "hexagon"]}, r"shapes=\['circle', 'hexagon'\] must be"),
        (ShapesImageDataModule, {"noise": -0.1}, r"noise=-0.1 .* must lie in \[0, 1\]"),
        (ShapesImageDataModule, {"num_workers": -1}, r"num_workers=-1"),
        (ShapesVideoDataModule, {"num_frames": 10}, r"num_frames=10 cannot hold max_events=2 .* num_frames >= 12"),
        (ShapesVideoDataModule, {"frame_size": 12}, r"frame_size=12 makes objects 3 px .* frame_size >= 18"),
        (ShapesVideoDataModule, {"min_event_frames": 1}, r"min_event_frames=1"),
        (ShapesVideoDataModule, {"seed": -1}, r"seed=-1"),
    ],
)
def test_bad_options_say_which_and_how_to_fix(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


@pytest.mark.parametrize(
    ("name", "cls"), [("shapes_image", ShapesImageDataModule), ("shapes_video", ShapesVideoDataModule)]
)
def test_yaml_lists_every_option_with_its_default(name, cls):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert cfg.pop("_target_") == f"{cls.__module__}.{cls.__name__}"
    defaults = {
        p.name: list(p.default) if isinstance(p.default, tuple) else p.default
        for p in inspect.signature(cls).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    }
    assert cfg == {**defaults, **LOADER_DEFAULTS}  # the loader options at the defaults of LoaderOptions
    from hydra.utils import instantiate

    dm = instantiate(OmegaConf.load(CONF / f"{name}.yaml"), num_train=4, num_val=2, num_test=2)
    assert isinstance(dm, cls) and dm.sample("val", 1).captions
    assert dm.hparams["num_train"] == 4  # saved into checkpoints with the datamodule
