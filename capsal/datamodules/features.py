"""Backbone feature caches: extract descriptor grids once, train captioners from them.

``extract_split`` runs a frozen backbone over one split of a datamodule (batched, on the GPU when there is one, with
a progress bar) and writes ``<features_dir>/<split>/``::

    manifest.json        settings, sample ids, grid and pixel shapes, and the shards completed so far
    shard_00000.npy      float16 array (n, T, h, w, d): the grids of samples [0, n), n = shard_size
    shard_00001.npy      samples [n, 2n) ... (less those that failed to load, listed in the manifest)
    thumbs_00000.npy     uint8 (n, T, 3, h', w'): thumbnails (long side <= 128 px) of shard 0's samples

A shard is written to a temporary file and renamed (``write_shard``), then the manifest (``Manifest``, its shards
``ShardRecord``s) is rewritten the same way, so a killed extraction leaves only whole shards; running it again skips
the completed ones. The manifest records the backbone
config (``_target_``, name, weights, input size), the datamodule's class and data options (everything but
loader options such as batch_size and num_workers), the split, shard size and seed (the random init of a backbone
with ``weights: null``), plus the capsal version and dataset root for information. Extracting into a cache made
with different settings is refused with a ``UserError`` naming the first setting that differs; the version and root
are not compared (a moved dataset keeps its cache: the sample ids are checked instead).

``CachedFeatures`` wraps a split so each item is a ``FeatureSample`` with the cached grid (shards memory-mapped on
read), the split's captions and ``pixel_shape`` (the extracted ``(T, H, W)``). Its ``pixels`` are loaded only when
something reads them (a gallery, ``capsal-explain sample=``): the source dataset's pixels when its files still load,
else the stored thumbnail scaled back to the extracted size, never black. ``CaptionDataModule(features_dir=...)``
applies it to every split; collation fills ``Batch.grid`` and ``Batch.pixel_shape`` and never reads pixels, so
training batches carry no pixels and the models use the grid instead of running their backbone. ``capsal-train``
refuses a ``model.backbone`` other than the extraction backbone (``check_model_backbone``), so the model's grids at
explanation time (raw inputs) match what it was trained on.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from capsal import __version__
from capsal.devices import resolve_device
from capsal.errors import UserError
from capsal.removed import current_backbone_config
from capsal.types import Caption, Sample

log = logging.getLogger("capsal")

FORMAT = 1
MANIFEST = "manifest.json"
THUMBNAIL_SIZE = 128  # long side of the thumbnails stored beside the shards
# datamodule options that do not change the samples' pixels (the root is checked through the sample ids instead)
NOT_COMPARED = frozenset(
    {"batch_size", "eval_batch_size", "num_workers", "min_vocab_count", "features_dir", "check_videos", "root"}
)


@dataclass
class FeatureSample(Sample):
    """A sample whose visual input is a cached descriptor grid ``(T, h, w, d)``.

    ``pixel_shape`` is ``(T, H, W)`` of the pixels the grid came from (what collation puts in ``Batch.pixel_shape``).
    ``pixels`` are loaded on first access only, through ``load_pixels`` (``CachedFeatures.display_pixels``): the
    source's pixels when its files still load, else the cache's thumbnail scaled back to ``pixel_shape``. Training
    never reads them (collation uses ``grid`` and ``pixel_shape``); galleries and ``capsal-explain sample=`` do.
    """

    grid: torch.Tensor | None = None
    pixel_shape: tuple[int, int, int] | None = None
    load_pixels: Callable[[], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property  # type: ignore[override]
    def pixels(self) -> torch.Tensor:
        if self._pixels is None and self.load_pixels is not None:
            self._pixels = self.load_pixels()
        return self._pixels

    @pixels.setter
    def pixels(self, value: torch.Tensor | None) -> None:
        self._pixels = value


# -- settings ------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):  # DictConfig and ListConfig (a datamodule given lists by Hydra)
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def backbone_settings(config: dict | DictConfig, backbone: torch.nn.Module | None = None) -> dict[str, Any]:
    """The backbone config, with the values the built module resolved (input size, weights) filled in."""
    settings = dict(_plain(config))
    if backbone is not None:
        for key in ("name", "weights", "input_size"):
            if hasattr(backbone, key):
                settings[key] = _plain(getattr(backbone, key))
        settings["out_channels"] = int(getattr(backbone, "out_channels", 0))
    return settings


def dataset_settings(datamodule, dataset: Sequence | None = None) -> dict[str, Any]:
    """The datamodule class and the options that change its samples (not loader options, not the root folder).

    The seed is left out for splits that list their sample ids (files on disk): it can only change which samples a
    split holds, and the ids are checked.
    """
    cls = type(datamodule)
    skip = NOT_COMPARED | ({"seed"} if dataset is not None and dataset_ids(dataset) is not None else set())
    options = {k: _plain(v) for k, v in dict(getattr(datamodule, "hparams", {})).items() if k not in skip}
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **options}


def recorded_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A manifest's settings as this capsal compares them, so caches made before ``protocol`` existed stay usable.

    Those caches framed whole images: their datamodule reads as ``protocol="full"`` (and a ``center_crop`` datamodule
    refuses them), and the backbone ``crop`` they record as ``"resize"`` (or null), the whole-image framing, is
    dropped. Any other recorded crop framed the images differently, so it is kept and the cache compares unequal.
    """
    datamodule = {"protocol": "full", **settings.get("datamodule", {})}
    backbone = current_backbone_config(settings.get("backbone", {}))
    return {**settings, "datamodule": datamodule, "backbone": backbone}


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first dotted key whose value differs between two settings dicts (missing keys read as None)."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) != new_flat.get(key):
            return key, old_flat.get(key), new_flat.get(key)
    return None


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a cache's split as stored (a dict), checked to be of this capsal's format."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise UserError(f"no feature cache at {path.parent} ({MANIFEST} missing); run capsal-extract first") from error
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({error}); delete {path.parent} and extract again") from error
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} has cache format {manifest.get('format')}, this capsal reads {FORMAT}; re-extract")
    return manifest


def dataset_ids(dataset: Sequence) -> list[str] | None:
    """The sample ids of a split when it knows them without loading samples."""
    ids = getattr(dataset, "sample_ids", None)
    return list(ids) if ids is not None else None


# -- the manifest --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ShardRecord:
    """One completed shard of a manifest: samples ``[start, start + count)`` of the split, less ``skipped``.

    ``ids`` are the samples whose grids ``file`` holds, in order; ``skipped`` lists ``[sample id, file]`` of those
    that failed to load; ``thumbnails`` is None in caches written before thumbnails were stored.
    """

    index: int
    file: str
    start: int
    ids: list[str]
    count: int
    thumbnails: str | None = None
    skipped: list[list[str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardRecord:
        return cls(
            index=int(data["index"]),
            file=str(data["file"]),
            start=int(data["start"]),
            ids=list(data["ids"]),
            count=int(data.get("count", len(data["ids"]))),
            thumbnails=data.get("thumbnails"),
            skipped=[list(pair) for pair in data.get("skipped", [])],
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Manifest:
    """What ``manifest.json`` holds (see the module doc); ``to_json``/``from_json`` keep the file's format, so caches
    written before this class existed load, and keys this capsal does not know are written back unchanged."""

    settings: dict[str, Any]
    num_samples: int
    expected_ids: list[str] | None = None
    grid_shape: list[int] | None = None  # (T, h, w, d), set by the first shard with a sample
    pixel_shape: list[int] | None = None  # (T, 3, H, W) of the extracted pixels
    shards: list[ShardRecord] = field(default_factory=list)
    complete: bool = False
    capsal_version: str = __version__
    dataset_root: str | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    dropped: list[str] = field(default_factory=list)  # files left out of the split before extraction
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)  # keys of the file this class does not know

    _ORDER = (  # the order of the keys in the file
        "format",
        "settings",
        "num_samples",
        "expected_ids",
        "grid_shape",
        "pixel_shape",
        "shards",
        "complete",
        "capsal_version",
        "dataset_root",
        "created",
        "dropped",
    )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {k: data[k] for k in cls._ORDER if k in data}
        known["shards"] = [ShardRecord.from_json(s) for s in known.get("shards", [])]
        return cls(**known, extra={k: v for k, v in data.items() if k not in cls._ORDER})

    def to_json(self) -> dict[str, Any]:
        data = {key: getattr(self, key) for key in self._ORDER}
        data["shards"] = [shard.to_json() for shard in self.shards]
        return {**data, **self.extra}

    @classmethod
    def read(cls, directory: str | os.PathLike) -> Manifest:
        return cls.from_json(read_manifest(directory))

    def write(self, directory: Path) -> None:
        """Replace ``directory/manifest.json`` atomically (a temporary file renamed over it)."""
        tmp = directory / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, directory / MANIFEST)

    def check_resumable(self, settings: dict[str, Any], count: int, ids: list[str] | None, out: Path) -> None:
        """Refuse (one ``UserError`` line) to extend a cache made with other settings or over other samples; shards
        whose file vanished are forgotten, so they are extracted again."""
        difference = first_difference(recorded_settings(self.settings), settings)
        if difference is not None:
            key, old, new = difference
            raise UserError(
                f"feature cache {out} was made with {key}={old!r} but this run has {key}={new!r}; extract into "
                f"another features_dir or delete {out}"
            )
        same = self.num_samples == count and (ids is None or self.expected_ids is None or self.expected_ids == ids)
        if not same:
            raise UserError(
                f"feature cache {out} lists other samples ({self.num_samples}) than the dataset has now ({count}); "
                f"extract into another features_dir or delete {out}"
            )
        self.shards = [s for s in self.shards if (out / s.file).is_file()]

    def record_shapes(self, grid_shape: list[int] | None, pixel_shape: list[int] | None, split: str) -> None:
        """Note a shard's grid and pixel shapes (None: none of its samples loaded); every shard must agree."""
        self.pixel_shape = self.pixel_shape or pixel_shape
        if grid_shape is None:
            return
        if self.grid_shape is None:
            self.grid_shape = grid_shape
        elif self.grid_shape != grid_shape:
            raise UserError(
                f"samples of split {split!r} give grids of shape {grid_shape} and {self.grid_shape}; every "
                f"sample must have the same frame count and size (set image_size/frame_size/num_frames)"
            )

    def add_shard(self, shard: ShardRecord, num_shards: int) -> None:
        self.shards = sorted([*self.shards, shard], key=lambda s: s.index)
        self.complete = len(self.shards) == num_shards

    @property
    def samples_done(self) -> int:
        return sum(s.count for s in self.shards)


def skipped_files(manifest: dict) -> list[str]:
    """Every file of a cache's split left out: dropped before extraction, or failing to decode during it."""
    failed = [path for shard in manifest["shards"] for _, path in shard.get("skipped", [])]
    return list(manifest.get("dropped", [])) + failed


# -- extraction ----------------------------------------------------------------------------------------------------
def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def write_shard(out: Path, index: int, grids: np.ndarray, thumbs: np.ndarray) -> tuple[str, str]:
    """Write shard ``index``'s grids and thumbnails under ``out``; the file names ``(grids, thumbnails)``.

    Each file is written to a temporary name and renamed, thumbnails first: a grids file on disk marks a whole shard,
    so a killed extraction leaves only whole shards.
    """
    name, thumbs_name = f"shard_{index:05d}.npy", f"thumbs_{index:05d}.npy"
    _save_atomically(out / thumbs_name, thumbs)
    _save_atomically(out / name, grids)
    return name, thumbs_name


def _as_list(samples: list[Sample]) -> list[Sample]:
    return samples


def _source_split(datamodule, split: str):
    """The split's samples read from the media files, even when the datamodule points at a cache."""
    cached_from = getattr(datamodule, "features_dir", None)
    datamodule.features_dir = None
    try:
        dataset = datamodule.build_split(split)
    finally:
        datamodule.features_dir = cached_from
    if hasattr(dataset, "warn_failures"):
        dataset.warn_failures = False  # clips failing to decode are listed in the manifest and summed up by the caller
    if len(dataset) == 0:
        raise UserError(f"split {split!r} of {type(datamodule).__name__} is empty; nothing to extract")
    return dataset


def _frozen_backbone(backbone: dict | DictConfig, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # a backbone with random weights gets the same ones on every (resumed) run
    model = instantiate(backbone)
    model.requires_grad_(False)
    model.eval()
    return model.to(device)


def _open_manifest(out: Path, settings: dict[str, Any], dataset, datamodule, dropped: list[str]) -> Manifest:
    """The manifest of a partial cache in ``out`` to resume (checked against this run), else a new one."""
    count, ids = len(dataset), dataset_ids(dataset)
    if (out / MANIFEST).exists():
        manifest = Manifest.read(out)
        manifest.check_resumable(settings, count, ids, out)
    else:
        root = getattr(datamodule, "root", None)
        manifest = Manifest(
            settings=settings,
            num_samples=count,
            expected_ids=ids,
            dataset_root=str(Path(root).resolve()) if root is not None else None,
        )
    manifest.dropped = dropped
    return manifest


def extract_split(
    datamodule,
    split: str,
    backbone: dict | DictConfig,
    features_dir: str | os.PathLike,
    *,
    batch_size: int = 16,
    frames_per_pass: int = 128,
    shard_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = "auto",
    seed: int = 0,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    thumbnail_size: int = THUMBNAIL_SIZE,
) -> Path:
    """Cache the backbone grids of ``split`` under ``features_dir/split`` (resuming a partial cache); its path.

    ``batch_size`` samples are loaded at a time and their frames go through the backbone ``frames_per_pass`` at a
    time. ``on_shard(index)`` is called after each shard is written. Beside each shard go uint8 thumbnails of its
    samples (``thumbs_*.npy``, long side at most ``thumbnail_size``), what galleries show once the source files are
    gone. A sample that fails to load (a clip corrupt halfway) is skipped, not replaced: the manifest lists it under
    its shard's ``skipped`` (``skipped_files(manifest)``: those plus the files dropped before extraction).
    """
    from tqdm.auto import tqdm

    for name, value in {"batch_size": batch_size, "frames_per_pass": frames_per_pass, "shard_size": shard_size}.items():
        if value < 1:
            raise UserError(f"{name}={value} must be at least 1")
    dataset = _source_split(datamodule, split)
    dropped = [str(p) for p in getattr(datamodule, "skipped", {}).get(split, [])]
    target = resolve_device(device)
    model = _frozen_backbone(backbone, target, seed)
    settings = {
        "backbone": backbone_settings(backbone, model),
        "datamodule": dataset_settings(datamodule, dataset),
        "split": split,
        "shard_size": int(shard_size),
        "seed": int(seed),
        "dtype": "float16",
    }
    out = Path(features_dir).expanduser() / split
    out.mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(out, settings, dataset, datamodule, dropped)
    count = len(dataset)
    done = {s.index for s in manifest.shards}
    num_shards = (count + shard_size - 1) // shard_size
    bar = tqdm(total=count, initial=manifest.samples_done, desc=f"extract {split}", unit="sample", disable=not progress)
    try:
        for index in range(num_shards):
            if index in done:
                continue
            indices = list(range(index * shard_size, min(count, (index + 1) * shard_size)))
            grids, thumbs, shard_ids, pixel_shape = _run_shard(
                model, dataset, indices, batch_size, frames_per_pass, num_workers, target, bar, thumbnail_size
            )
            manifest.record_shapes(list(grids.shape[1:]) if shard_ids else None, pixel_shape, split)
            name, thumbs_name = write_shard(out, index, grids, thumbs)
            shard = ShardRecord(
                index=index,
                file=name,
                start=indices[0],
                ids=shard_ids,
                count=len(indices),
                thumbnails=thumbs_name,
                skipped=_skipped(dataset, indices, shard_ids),
            )
            manifest.add_shard(shard, num_shards)
            manifest.write(out)
            if on_shard is not None:
                on_shard(index)
    finally:
        bar.close()
    if not manifest.complete:  # every shard was already there
        manifest.complete = True
        manifest.write(out)
    return out


def _skipped(dataset, indices: list[int], cached_ids: list[str]) -> list[list[str]]:
    """``[sample id, file]`` of the samples of ``indices`` that did not load (the dataset skipped them)."""
    ids = dataset_ids(dataset)
    if ids is None:
        return []
    cached = set(cached_ids)
    records = getattr(dataset, "records", None)
    return [[ids[i], str(records[i].path) if records is not None else ids[i]] for i in indices if ids[i] not in cached]


@torch.no_grad()
def _run_shard(
    model,
    dataset,
    indices: list[int],
    batch_size: int,
    frames_per_pass: int,
    num_workers: int,
    device,
    bar,
    thumbnail_size: int = THUMBNAIL_SIZE,
) -> tuple[np.ndarray, np.ndarray, list[str], list[int] | None]:
    """The float16 grids ``(n, T, h, w, d)`` and uint8 thumbnails ``(n, T, 3, h', w')`` of the samples of ``indices``
    that load, their ids and the ``(T, 3, H, W)`` pixel shape (None when none loaded)."""
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list)
    batches = iter(loader)
    grids: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    ids: list[str] = []
    pixel_shape: list[int] | None = None
    thumb_hw: tuple[int, int] | None = None
    for start in range(0, len(indices), batch_size):
        samples = next(batches)
        bar.update(min(batch_size, len(indices) - start))
        if not samples:
            continue
        shapes = {tuple(s.pixels.shape) for s in samples}
        if len(shapes) > 1:
            raise UserError(
                f"samples {samples[0].sample_id} ... {samples[-1].sample_id} have different pixel sizes "
                f"{sorted(shapes)}; set datamodule.image_size (or frame_size) so every sample has the same size"
            )
        pixels = torch.stack([s.pixels for s in samples]).to(device)
        pixel_shape = pixel_shape or list(pixels.shape[1:])
        frames = rearrange(pixels, "b t c h w -> (b t) c h w")
        parts = [
            model(frames[i : i + frames_per_pass].to(torch.float32) / 255.0)
            for i in range(0, frames.shape[0], frames_per_pass)
        ]
        grid = rearrange(torch.cat(parts), "(b t) d h w -> b t h w d", b=len(samples))
        grids.append(grid.to(torch.float16).cpu().numpy())
        thumb_hw = thumb_hw or thumbnail_shape(pixels.shape[-2:], thumbnail_size)
        thumb = resize_frames(frames, thumb_hw)
        thumbs.append(rearrange(thumb, "(b t) c h w -> b t c h w", b=len(samples)).cpu().numpy())
        ids += [s.sample_id for s in samples]
    if not grids:
        return np.zeros((0,), np.float16), np.zeros((0,), np.uint8), [], None
    return np.concatenate(grids), np.concatenate(thumbs), ids, pixel_shape


def thumbnail_shape(hw: Sequence[int], long_side: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    """``(h, w)`` of a thumbnail of an ``hw`` frame: the same aspect, the long side at most ``long_side``."""
    height, width = int(hw[0]), int(hw[1])
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_frames(frames: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """uint8 frames ``(N, 3, H, W)`` resized (antialiased bilinear) to ``hw``, uint8."""
    hw = (int(hw[0]), int(hw[1]))
    if tuple(frames.shape[-2:]) == hw:
        return frames.to(torch.uint8)
    scaled = F.interpolate(frames.to(torch.float32), size=hw, mode="bilinear", align_corners=False, antialias=True)
    return scaled.round().clamp(0, 255).to(torch.uint8)


# -- reading -------------------------------------------------------------------------------------------------------
class CachedFeatures(Dataset):
    """A split whose items carry cached grids (``FeatureSample``, float16 ``(T, h, w, d)``) and the base captions."""

    def __init__(self, directory: str | os.PathLike, manifest: dict, base: Sequence):
        self.directory = Path(directory)
        self.manifest = manifest
        self.base = base
        self.shards = sorted(manifest["shards"], key=lambda s: s["index"])
        # position of each shard's first cached sample (a shard holds fewer than shard_size when samples were skipped)
        self._starts = list(itertools.accumulate((len(s["ids"]) for s in self.shards), initial=0))
        base_ids = dataset_ids(base)
        self._base_index = {sid: i for i, sid in enumerate(base_ids)} if base_ids is not None else None
        self._arrays: dict[tuple[str, int], np.ndarray] = {}
        self._warned_black = False

    @classmethod
    def open(cls, features_dir: str | os.PathLike, split: str, base: Sequence, datamodule=None) -> CachedFeatures:
        """The cache of ``split`` under ``features_dir``, checked to be complete and to match ``datamodule``."""
        directory = Path(features_dir).expanduser() / split
        manifest = read_manifest(directory)
        total = (manifest["num_samples"] + manifest["settings"]["shard_size"] - 1) // manifest["settings"]["shard_size"]
        if not manifest.get("complete"):
            raise UserError(
                f"feature cache {directory} is incomplete ({len(manifest['shards'])} of {total} shards); run "
                f"capsal-extract again with the same settings to finish it"
            )
        if datamodule is not None:
            recorded = recorded_settings(manifest["settings"])["datamodule"]
            difference = first_difference(recorded, dataset_settings(datamodule, base))
            if difference is not None:
                key, old, new = difference
                raise UserError(
                    f"feature cache {directory} was extracted with datamodule.{key}={old!r} but the datamodule has "
                    f"{new!r}; set it back or extract again"
                )
        ids = dataset_ids(base)
        if ids is None and manifest["num_samples"] != len(base):
            raise UserError(
                f"feature cache {directory} holds {manifest['num_samples']} samples but split {split!r} has "
                f"{len(base)}; extract again"
            )
        known = set(ids or [])
        unknown = [sid for shard in manifest["shards"] for sid in shard["ids"] if ids is not None and sid not in known]
        if unknown:
            raise UserError(
                f"feature cache {directory} holds samples that split {split!r} lacks ({len(unknown)}, e.g. "
                f"{unknown[0]!r}); point datamodule.root at the dataset it was extracted from or extract again"
            )
        return cls(directory, manifest, base)

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def sample_ids(self) -> list[str]:
        return [sid for shard in self.shards for sid in shard["ids"]]

    @property
    def skipped_files(self) -> list[str]:
        """The files of the split left out of the cache (see ``skipped_files``)."""
        return skipped_files(self.manifest)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["grid_shape"])

    @property
    def pixel_shape(self) -> tuple[int, int, int] | None:
        """``(T, H, W)`` of the pixels the grids came from (None for a cache that did not record it)."""
        shape = self.manifest.get("pixel_shape")
        return (int(shape[0]), int(shape[2]), int(shape[3])) if shape and len(shape) == 4 else None

    def _array(self, shard: int, key: str = "file") -> np.ndarray | None:
        if (key, shard) not in self._arrays:
            name = self.shards[shard].get(key)
            if name is None or not (self.directory / name).is_file():
                return None
            self._arrays[key, shard] = np.load(self.directory / name, mmap_mode="r")
        return self._arrays[key, shard]

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a cached split of {len(self)} samples")
        index %= len(self)
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def _base_position(self, sample_id: str, index: int) -> int:
        return self._base_index.get(sample_id, index) if self._base_index is not None else index

    def _captions(self, sample_id: str, index: int) -> list[Caption]:
        base_index = self._base_position(sample_id, index)
        if hasattr(self.base, "captions_at"):
            return self.base.captions_at(base_index)
        if isinstance(getattr(self.base, "captions", None), list):
            return self.base.captions[base_index]
        return self.base[base_index].captions

    def __getitem__(self, index: int) -> FeatureSample:
        shard, offset = self._locate(index)
        array = self._array(shard)
        assert array is not None, f"shard {self.shards[shard]['file']} of {self.directory} vanished"
        grid = torch.from_numpy(np.array(array[offset]))
        sample_id = self.shards[shard]["ids"][offset]
        position = self._starts[shard] + offset
        return FeatureSample(
            None,
            self._captions(sample_id, position),
            sample_id,
            grid=grid,
            pixel_shape=self.pixel_shape,
            load_pixels=functools.partial(self.display_pixels, position),
        )

    def display_pixels(self, index: int) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` pixels of sample ``index`` to show: the source's when its files still load (and have
        the extracted shape), else the stored thumbnail scaled back to the extracted size."""
        shard, offset = self._locate(index)
        sample_id = self.shards[shard]["ids"][offset]
        shape = self.manifest.get("pixel_shape")
        source = self._source_pixels(sample_id, self._starts[shard] + offset)
        if source is not None and (shape is None or list(source.shape) == list(shape)):
            return source
        thumbs = self._array(shard, "thumbnails")
        if thumbs is not None and len(thumbs) > offset:
            thumb = torch.from_numpy(np.array(thumbs[offset]))
            return resize_frames(thumb, shape[-2:]) if shape else thumb
        if not self._warned_black:
            self._warned_black = True
            log.warning(
                f"feature cache {self.directory} has no thumbnails (made by an older capsal) and the source files are "
                f"gone, so samples show as black; re-extract it to store thumbnails"
            )
        return self._placeholder()

    def _source_pixels(self, sample_id: str, index: int) -> torch.Tensor | None:
        """The source dataset's pixels of ``sample_id``, or None when its files no longer load."""
        from capsal.datamodules.media import MediaReadError

        position = self._base_position(sample_id, index)
        if not 0 <= position < len(self.base):
            return None
        try:
            sample = self.base.load(position) if hasattr(self.base, "load") else self.base[position]
        except MediaReadError:
            return None
        return sample.pixels if sample.sample_id == sample_id else None

    def _placeholder(self) -> torch.Tensor:
        """Zeros of the pixel shape ``(T, 3, H, W)`` the grids were extracted from, as a stride-0 view (no memory)."""
        shape = self.manifest.get("pixel_shape") or [0]
        return torch.zeros((), dtype=torch.uint8).expand(*shape)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in each DataLoader worker
        return state


# -- the model that trains from a cache ----------------------------------------------------------------------------
NOT_FEATURE_SETTINGS = frozenset({"frozen", "out_channels"})  # backbone options that do not change the cached grids


def _with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A backbone's settings with the constructor defaults it left out filled in (so omitting one is no difference)."""
    import inspect

    from hydra.utils import get_class

    try:
        params = inspect.signature(get_class(str(settings.get("_target_"))).__init__).parameters
    except Exception:  # an unknown target: compare what is written
        return dict(settings)
    defaults = {k: _plain(p.default) for k, p in params.items() if k != "self" and p.default is not p.empty}
    return {**defaults, **{k: v for k, v in settings.items() if v is not None or k not in defaults}}


def check_model_backbone(cache: CachedFeatures, backbone: dict | DictConfig | None, model: torch.nn.Module) -> None:
    """Refuse (one ``UserError`` line) a model whose backbone is not the one ``cache`` was extracted with.

    The rule: every backbone setting that shapes the grids (``_target_``, name, weights, input size and the
    constructor's other options, defaults filled in; not ``frozen``) must equal the manifest's, and the model's feature
    size must equal the cache's channel count. Otherwise the model would train on one backbone's grids and explain
    raw inputs through another.
    """
    cached = _with_defaults(recorded_settings(cache.manifest["settings"])["backbone"])
    module = getattr(model, "backbone", None)
    ours = _with_defaults(backbone_settings(backbone or {}, module if isinstance(module, torch.nn.Module) else None))
    keys = [k for k in sorted(set(cached) | set(ours)) if k not in NOT_FEATURE_SETTINGS]
    difference = first_difference({k: cached.get(k) for k in keys}, {k: ours.get(k) for k in keys})
    if difference is not None:
        key, old, new = difference
        raise UserError(
            f"feature cache {cache.directory} was extracted with backbone.{key}={old!r} but the model has "
            f"model.backbone.{key}={new!r}; set model.backbone.{key}={old!r} (the model must use the extraction "
            f"backbone) or extract again"
        )
    channels = (cache.manifest.get("grid_shape") or [None])[-1]
    size = getattr(model, "feature_size", None)
    if channels is not None and size is not None and int(size) != int(channels):
        raise UserError(
            f"the model's feature size is {size} but feature cache {cache.directory} holds {channels}-channel grids; "
            f"set model.backbone to the extraction backbone"
        )
