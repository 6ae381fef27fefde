"""The datamodule base every captioning dataset (synthetic shapes, Flickr30k Entities, MSVD...) builds on.

A subclass only says how to build one split (``build_split``); the base caches splits, builds the vocabulary from the
training captions, collates ``Sample``s into a ``Batch`` and makes the dataloaders, so every dataset feeds models,
explainers and metrics the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import TypedDict, Unpack

from capsal.constraints import NonNegativeInt, PositiveInt, Seed
from capsal.datamodules.features import CachedFeatures
from capsal.datamodules.framing import Protocol, check_protocol
from capsal.devices import rank_and_world
from capsal.errors import UserError
from capsal.text import Vocabulary
from capsal.types import Batch, Caption, Sample

SPLITS = ("train", "val", "test")  # the split order; SPLITS.index(split) numbers a split wherever one needs a code
CaptionChoice = Literal["random", "first"]


class LoaderOptions(TypedDict, total=False):
    """The options every datamodule takes besides its own: how samples are batched and loaded, where cached
    features are read from, and the seed of whatever the dataset draws at random.

    A datamodule declares them as ``**loader: Unpack[LoaderOptions]`` and hands them on to ``CaptionDataModule``;
    configs keep them flat (``datamodule.batch_size=...``). Each dataset's yaml states its values; the defaults of an
    option left out are ``LOADER_DEFAULTS``.
    """

    batch_size: PositiveInt  # training samples per batch
    eval_batch_size: PositiveInt | None  # validation and test samples per batch (None: batch_size)
    num_workers: NonNegativeInt  # DataLoader worker processes (0: load in the main process)
    min_vocab_count: PositiveInt  # training-caption words seen fewer times become <unk>
    seed: Seed  # what the dataset draws at random (synthetic samples, a seeded split)
    features_dir: str | None  # a capsal-extract cache: batches carry its backbone grids instead of pixels


LOADER_DEFAULTS: LoaderOptions = {
    "batch_size": 64,
    "eval_batch_size": None,
    "num_workers": 0,
    "min_vocab_count": 1,
    "seed": 0,
    "features_dir": None,
}


def loader_options(owner: type, given: dict[str, Any]) -> LoaderOptions:
    """``given`` with ``LOADER_DEFAULTS`` filled in; a name that is no loader option is a ``TypeError``, as Python
    raises for an unknown keyword argument."""
    unknown = [name for name in given if name not in LOADER_DEFAULTS]
    if unknown:
        raise TypeError(f"{owner.__name__}.__init__() got an unexpected keyword argument {unknown[0]!r}")
    return {**LOADER_DEFAULTS, **given}  # type: ignore[typeddict-item]


class ShardedSampler(DistributedSampler):
    """Evaluation order for one rank: samples ``rank, rank + world, ...``, each sample on exactly one rank.

    ``DistributedSampler`` pads the split with repeated samples so every rank gets as many; scores would then count
    those samples twice. Being a ``DistributedSampler``, Lightning keeps it instead of wrapping it; the rank is
    read when iterating, so it can be built before the process group exists.
    """

    def __init__(self, dataset: Sequence) -> None:
        self.dataset = dataset
        self.shuffle = False

    @property
    def num_replicas(self) -> int:
        return rank_and_world()[1]

    @property
    def rank(self) -> int:
        return rank_and_world()[0]

    def _indices(self) -> range:
        rank, world = rank_and_world()
        return range(rank, len(self.dataset), world)

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not change between epochs."""


def check_positive(**options: int) -> None:
    """Raise the one-sentence ``ValueError`` a user sees for an option that must be >= 1."""
    for name, value in options.items():
        if value < 1:
            raise UserError(f"{name}={value} must be at least 1; set {name} to a positive integer.")


def collate_samples(samples: Sequence[Sample], vocab: Vocabulary, caption_choice: CaptionChoice = "first") -> Batch:
    """Stack ``samples`` into a ``Batch``, encoding one caption per sample.

    ``caption_choice="random"`` draws the caption from torch's global generator, so it changes every epoch (caption
    augmentation) yet is reproducible under ``lightning.seed_everything`` (DataLoader workers are seeded from it too);
    ``"first"`` keeps evaluation deterministic. A module-level function, not a method, so worker processes receive the
    vocabulary but not the whole datamodule.
    """
    if not samples:
        raise UserError("cannot collate an empty list of samples")
    if caption_choice not in ("random", "first"):
        raise UserError(f"caption_choice={caption_choice!r} must be 'random' or 'first'")
    grids = [getattr(s, "grid", None) for s in samples]
    cached = grids[0] is not None
    if any((g is not None) != cached for g in grids):
        raise UserError("a batch mixes samples with cached features and samples with pixels; use one source")
    inputs = grids if cached else [s.pixels for s in samples]
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) > 1:
        what = "(T, h, w, d) feature grid" if cached else "(T, 3, H, W) size"
        raise UserError(
            f"samples of one batch must share their {what}, got {sorted(shapes)}; resize them in the dataset"
        )
    chosen: list[Caption] = []
    for sample in samples:
        if not sample.captions:
            raise UserError(f"sample {sample.sample_id!r} has no caption")
        index = int(torch.randint(len(sample.captions), ())) if caption_choice == "random" else 0
        chosen.append(sample.captions[index])
    pixels = None if cached else torch.stack(inputs).to(torch.float32) / 255.0
    grid = torch.stack(inputs).to(torch.float32) if cached else None
    pixel_shape = _cached_pixel_shape(samples[0]) if cached else None  # with pixels, Batch reads their shape
    tokens = vocab.pad_batch([vocab.encode(c.text) for c in chosen])
    return Batch(
        tokens=tokens,
        captions=chosen,
        references=[[c.text for c in s.captions] for s in samples],
        sample_ids=[s.sample_id for s in samples],
        pixels=pixels,
        grid=grid,
        pixel_shape=pixel_shape,
    )


def _cached_pixel_shape(sample: Sample) -> tuple[int, int, int] | None:
    """``(T, H, W)`` a cached sample's grid came from: its ``pixel_shape``; its pixels are not loaded for this (a
    ``FeatureSample`` made by hand without ``pixel_shape`` gives the shape of the pixels it holds)."""
    if getattr(sample, "pixel_shape", None) is not None or getattr(sample, "load_pixels", None) is not None:
        return getattr(sample, "pixel_shape", None)
    return _placeholder_shape(sample.pixels)


def _placeholder_shape(pixels: torch.Tensor) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of a cached sample's placeholder pixels ``(T, 3, H, W)``; None when the cache did not record it."""
    if pixels.dim() != 4:
        return None
    frames, _, height, width = pixels.shape
    return int(frames), int(height), int(width)


class CaptionDataModule(L.LightningDataModule):
    """Base of all captioning datamodules: cached splits, a train-built vocabulary and ``Batch`` collation.

    Subclasses implement ``build_split`` and set ``is_video`` when their samples are clips; those whose samples are
    expensive to load (decoding files) should also override ``caption_texts`` so building the vocabulary reads only
    text.

    ``loader``: the ``LoaderOptions``. With ``features_dir``, a cache written by ``capsal-extract`` (see
    ``capsal.datamodules.features``), each split yields ``FeatureSample``s whose batches carry ``Batch.grid`` instead
    of pixels.

    ``protocol`` (one of ``PROTOCOLS``, see ``capsal.datamodules.framing``) frames images for training, extraction and
    scoring alike; datasets whose images are square (or that have none) leave it at ``full``. Caches record it, so a
    cache is only read with its own.

    Every option, the subclass's included, is saved as a hyper-parameter (loader options with their defaults filled
    in), so checkpoints and feature caches record what data was used.
    """

    is_video: bool = False  # samples are clips (T frames) rather than images (T = 1)
    # phrase categories in the order the localisation tables show them (empty: captioning-only data)
    categories: tuple[str, ...] = ()

    def __init__(self, protocol: Protocol = "full", **loader: Unpack[LoaderOptions]):
        super().__init__()
        options = loader_options(type(self), loader)
        self.save_hyperparameters(logger=False)  # every constructor's options in the class chain
        self.hparams.update({k: v for k, v in options.items() if k not in self.hparams})  # defaults too
        check_positive(batch_size=options["batch_size"], min_vocab_count=options["min_vocab_count"])
        eval_batch_size = options["eval_batch_size"]
        if eval_batch_size is not None:
            check_positive(eval_batch_size=eval_batch_size)
        if options["num_workers"] < 0:
            raise UserError(f"num_workers={options['num_workers']} must be 0 (load in the main process) or more.")
        self.batch_size = int(options["batch_size"])
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(options["num_workers"])
        self.min_vocab_count = int(options["min_vocab_count"])
        self.seed = int(options["seed"])
        self.features_dir = str(options["features_dir"]) if options["features_dir"] else None
        self.protocol: Protocol = check_protocol(protocol)  # type: ignore[assignment]
        self._splits: dict[str, Sequence[Sample]] = {}
        self._vocab: Vocabulary | None = None

    # -- what subclasses provide ---------------------------------------------------------------------------------
    def build_split(self, split: str) -> Sequence[Sample]:
        """Return the samples of ``split`` ("train", "val" or "test") as a list or map-style Dataset."""
        raise NotImplementedError

    def caption_texts(self, split: str) -> list[str]:
        """Every caption text of ``split``; loads each sample, so override it where that is slow."""
        data = self.get_split(split)
        return [c.text for i in range(len(data)) for c in data[i].captions]

    # -- splits and vocabulary -----------------------------------------------------------------------------------
    def get_split(self, split: str) -> Sequence[Sample]:
        """The samples of ``split``, built once and cached."""
        if split not in SPLITS:
            raise UserError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}.")
        if split not in self._splits:
            data = self.build_split(split)
            if self.features_dir is not None:
                data = CachedFeatures.open(self.features_dir, split, data, self)
            self._splits[split] = data
        return self._splits[split]

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (all when ``stage`` is None) and the vocabulary from the train split."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}.get(stage, SPLITS)
        for split in needed:
            self.get_split(split)
        if self._vocab is None:
            self._vocab = Vocabulary.build(self.caption_texts("train"), min_count=self.min_vocab_count)

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary of the training captions (built on first use)."""
        if self._vocab is None:
            self.setup(None)
        assert self._vocab is not None
        return self._vocab

    @vocab.setter
    def vocab(self, vocab: Vocabulary) -> None:
        """Encode with another vocabulary, e.g. the one stored in a checkpoint being explained."""
        self._vocab = vocab

    def sample(self, split: str, index: int) -> Sample:
        """One sample, for ``capsal-explain sample=<split>:<index>``."""
        data = self.get_split(split)
        if not -len(data) <= index < len(data):
            raise IndexError(f"split {split!r} has {len(data)} samples; index {index} is out of range")
        return data[index % len(data)]

    # -- batches ---------------------------------------------------------------------------------------------------
    def collate(self, samples: Sequence[Sample], caption_choice: CaptionChoice = "first") -> Batch:
        """A ``Batch`` of ``samples`` encoded with this datamodule's vocabulary (see ``collate_samples``)."""
        return collate_samples(samples, self.vocab, caption_choice)

    def _loader(self, split: str, shuffle: bool, batch_size: int, caption_choice: CaptionChoice) -> DataLoader:
        data = self.get_split(split)
        return DataLoader(
            data,  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else ShardedSampler(data),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=functools.partial(collate_samples, vocab=self.vocab, caption_choice=caption_choice),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size, "random")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size, "first")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size, "first")
