"""Backbone feature caches: extract descriptor grids once, train captioners from them.

``extract_split`` runs a frozen backbone over one split of a datamodule (batched, on the GPU when there is one, with
a progress bar) and writes ``<features_dir>/<split>/``::

    manifest.json        settings, sample ids, grid and pixel shapes, and the shards completed so far
    shard_00000.npy      float16 array (n, T, h, w, d): the grids of samples [0, n), n = shard_size
    shard_00001.npy      samples [n, 2n) ...

A shard is written to a temporary file and renamed, then the manifest is rewritten the same way, so a killed
extraction leaves only whole shards; running it again skips the completed ones. The manifest records the backbone
config (``_target_``, name, weights, crop, input size), the datamodule's class and data options (everything but
loader options such as batch_size and num_workers), the split, shard size and seed (the random init of a backbone
with ``weights: null``), plus the capsal version and dataset root for information. Extracting into a cache made
with different settings is refused with a ``UserError`` naming the first setting that differs; the version and root
are not compared (a moved dataset keeps its cache: the sample ids are checked instead).

``CachedFeatures`` wraps a split so each item is a ``FeatureSample`` with the cached grid (shards memory-mapped on
read), the split's captions, and as ``pixels`` a zero placeholder of the extracted pixel shape (no memory);
``CaptionDataModule(features_dir=...)`` applies it to every split, and collation fills ``Batch.grid``, which the
models use instead of running their backbone. Train with ``model.backbone`` set to the extraction backbone, so the
model's grids at explanation time (raw inputs) match what it was trained on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from capsal import __version__
from capsal.devices import resolve_device
from capsal.errors import UserError
from capsal.types import Caption, Sample

FORMAT = 1
MANIFEST = "manifest.json"
# datamodule options that do not change the samples' pixels (the root is checked through the sample ids instead)
NOT_COMPARED = frozenset(
    {"batch_size", "eval_batch_size", "num_workers", "min_vocab_count", "features_dir", "check_videos", "root"}
)


@dataclass
class FeatureSample(Sample):
    """A sample whose visual input is a cached descriptor grid ``(T, h, w, d)``; ``pixels`` then only has the shape
    of the pixels the grid came from (a zero, stride-0 placeholder, see ``CachedFeatures._placeholder``)."""

    grid: torch.Tensor | None = None


# -- settings ------------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def backbone_settings(config: dict | DictConfig, backbone: torch.nn.Module | None = None) -> dict[str, Any]:
    """The backbone config, with the values the built module resolved (input size, crop, weights) filled in."""
    settings = dict(_plain(config))
    if backbone is not None:
        for key in ("name", "weights", "crop", "input_size"):
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
    """A manifest's settings as this capsal compares them: caches made before ``protocol`` existed framed whole
    images, so their datamodule reads as ``protocol="full"`` (and a ``center_crop`` datamodule refuses them)."""
    datamodule = {"protocol": "full", **settings.get("datamodule", {})}
    return {**settings, "datamodule": datamodule}


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


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
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


# -- extraction ----------------------------------------------------------------------------------------------------
def _as_list(samples: list[Sample]) -> list[Sample]:
    return samples


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
) -> Path:
    """Cache the backbone grids of ``split`` under ``features_dir/split`` (resuming a partial cache); its path.

    ``batch_size`` samples are loaded at a time and their frames go through the backbone ``frames_per_pass`` at a
    time. ``on_shard(index)`` is called after each shard is written.
    """
    from tqdm.auto import tqdm

    for name, value in {"batch_size": batch_size, "frames_per_pass": frames_per_pass, "shard_size": shard_size}.items():
        if value < 1:
            raise UserError(f"{name}={value} must be at least 1")
    cached_from = getattr(datamodule, "features_dir", None)
    datamodule.features_dir = None  # extraction reads (and checks) the media files even if the module points at a cache
    try:
        dataset = datamodule.build_split(split)
    finally:
        datamodule.features_dir = cached_from
    count = len(dataset)
    if count == 0:
        raise UserError(f"split {split!r} of {type(datamodule).__name__} is empty; nothing to extract")
    target = resolve_device(device)
    torch.manual_seed(seed)  # a backbone with random weights gets the same ones on every (resumed) run
    model = instantiate(backbone)
    model.requires_grad_(False)
    model.eval()
    model.to(target)
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
    ids = dataset_ids(dataset)
    root = getattr(datamodule, "root", None)
    manifest = {
        "format": FORMAT,
        "settings": settings,
        "num_samples": count,
        "expected_ids": ids,
        "grid_shape": None,
        "pixel_shape": None,
        "shards": [],
        "complete": False,
        "capsal_version": __version__,
        "dataset_root": str(Path(root).resolve()) if root is not None else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if (out / MANIFEST).exists():
        manifest = _resume(read_manifest(out), settings, count, ids, out)
    done = {s["index"] for s in manifest["shards"]}
    num_shards = (count + shard_size - 1) // shard_size
    bar = tqdm(
        total=count,
        initial=sum(s["count"] for s in manifest["shards"]),
        desc=f"extract {split}",
        unit="sample",
        disable=not progress,
    )
    try:
        for index in range(num_shards):
            if index in done:
                continue
            indices = list(range(index * shard_size, min(count, (index + 1) * shard_size)))
            grids, shard_ids, pixel_shape = _run_shard(
                model, dataset, indices, batch_size, frames_per_pass, num_workers, target, bar
            )
            manifest["pixel_shape"] = manifest.get("pixel_shape") or pixel_shape
            shape = list(grids.shape[1:])
            if manifest["grid_shape"] is None:
                manifest["grid_shape"] = shape
            elif manifest["grid_shape"] != shape:
                raise UserError(
                    f"samples of split {split!r} give grids of shape {shape} and {manifest['grid_shape']}; every "
                    f"sample must have the same frame count and size (set image_size/frame_size/num_frames)"
                )
            name = f"shard_{index:05d}.npy"
            tmp = out / f"{name}.tmp"
            with open(tmp, "wb") as handle:
                np.save(handle, grids)
            os.replace(tmp, out / name)
            manifest["shards"].append({"index": index, "file": name, "start": indices[0], "ids": shard_ids})
            manifest["shards"][-1]["count"] = len(indices)
            manifest["shards"].sort(key=lambda s: s["index"])
            manifest["complete"] = len(manifest["shards"]) == num_shards
            _write_json(out / MANIFEST, manifest)
            if on_shard is not None:
                on_shard(index)
    finally:
        bar.close()
    if not manifest["complete"]:  # every shard was already there
        manifest["complete"] = True
        _write_json(out / MANIFEST, manifest)
    return out


def _resume(manifest: dict, settings: dict, count: int, ids: list[str] | None, out: Path) -> dict:
    """The manifest of an existing cache, checked against this run; shards whose file vanished are redone."""
    difference = first_difference(recorded_settings(manifest["settings"]), settings)
    if difference is not None:
        key, old, new = difference
        raise UserError(
            f"feature cache {out} was made with {key}={old!r} but this run has {key}={new!r}; extract into another "
            f"features_dir or delete {out}"
        )
    if not _same_samples(manifest, count, ids):
        raise UserError(
            f"feature cache {out} lists other samples ({manifest['num_samples']}) than the dataset has now ({count}); "
            f"extract into another features_dir or delete {out}"
        )
    manifest["shards"] = [s for s in manifest["shards"] if (out / s["file"]).is_file()]
    return manifest


def _same_samples(manifest: dict, count: int, ids: list[str] | None) -> bool:
    if manifest["num_samples"] != count:
        return False
    return ids is None or manifest.get("expected_ids") is None or manifest["expected_ids"] == ids


@torch.no_grad()
def _run_shard(
    model, dataset, indices: list[int], batch_size: int, frames_per_pass: int, num_workers: int, device, bar
) -> tuple[np.ndarray, list[str], list[int]]:
    """The float16 grids ``(n, T, h, w, d)`` of samples ``indices``, their ids and the ``(T, 3, H, W)`` pixel shape."""
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_list)
    grids: list[np.ndarray] = []
    ids: list[str] = []
    for samples in loader:
        shapes = {tuple(s.pixels.shape) for s in samples}
        if len(shapes) > 1:
            raise UserError(
                f"samples {samples[0].sample_id} ... {samples[-1].sample_id} have different pixel sizes "
                f"{sorted(shapes)}; set datamodule.image_size (or frame_size) so every sample has the same size"
            )
        pixels = torch.stack([s.pixels for s in samples]).to(device)
        frames = rearrange(pixels, "b t c h w -> (b t) c h w")
        parts = [
            model(frames[i : i + frames_per_pass].to(torch.float32) / 255.0)
            for i in range(0, frames.shape[0], frames_per_pass)
        ]
        grid = rearrange(torch.cat(parts), "(b t) d h w -> b t h w d", b=len(samples))
        grids.append(grid.to(torch.float16).cpu().numpy())
        ids += [s.sample_id for s in samples]
        bar.update(len(samples))
    return np.concatenate(grids), ids, list(pixels.shape[1:])


# -- reading -------------------------------------------------------------------------------------------------------
class CachedFeatures(Dataset):
    """A split whose items carry cached grids (``FeatureSample``, float16 ``(T, h, w, d)``) and the base captions."""

    def __init__(self, directory: str | os.PathLike, manifest: dict, base: Sequence):
        self.directory = Path(directory)
        self.manifest = manifest
        self.base = base
        self.shard_size = int(manifest["settings"]["shard_size"])
        self.shards = sorted(manifest["shards"], key=lambda s: s["index"])
        base_ids = dataset_ids(base)
        self._base_index = {sid: i for i, sid in enumerate(base_ids)} if base_ids is not None else None
        self._arrays: dict[int, np.ndarray] = {}

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
        return int(self.manifest["num_samples"])

    @property
    def sample_ids(self) -> list[str]:
        return [sid for shard in self.shards for sid in shard["ids"]]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["grid_shape"])

    def _array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            self._arrays[shard] = np.load(self.directory / self.shards[shard]["file"], mmap_mode="r")
        return self._arrays[shard]

    def _captions(self, sample_id: str, index: int) -> list[Caption]:
        base_index = self._base_index.get(sample_id, index) if self._base_index is not None else index
        if hasattr(self.base, "captions_at"):
            return self.base.captions_at(base_index)
        if isinstance(getattr(self.base, "captions", None), list):
            return self.base.captions[base_index]
        return self.base[base_index].captions

    def __getitem__(self, index: int) -> FeatureSample:
        if index < 0:
            index += len(self)
        shard, offset = divmod(index, self.shard_size)
        grid = torch.from_numpy(np.array(self._array(shard)[offset]))
        sample_id = self.shards[shard]["ids"][offset]
        return FeatureSample(self._placeholder(), self._captions(sample_id, index), sample_id, grid=grid)

    def _placeholder(self) -> torch.Tensor:
        """Zeros of the pixel shape ``(T, 3, H, W)`` the grids were extracted from, as a stride-0 view (no memory):
        code that asks a sample for its input size still gets it, but there are no pixels to show."""
        shape = self.manifest.get("pixel_shape") or [0]
        return torch.zeros((), dtype=torch.uint8).expand(*shape)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in each DataLoader worker
        return state
