"""Datasets and the datamodule base over media files on disk (Flickr30k Entities, COCO, MSVD, MSR-VTT).

A dataset on disk is a list of ``MediaRecord``s (sample id, file, captions). Files that are missing, empty or that
FFmpeg cannot open are dropped when a split is built and reported in one warning line; a file that still fails while
being read (``capsal.datamodules.media``) is replaced by the next readable sample and reported once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from capsal.datamodules.base import CaptionDataModule, Protocol, check_protocol
from capsal.datamodules.media import MediaReadError, Size, decode_video, probe_video, read_image
from capsal.errors import UserError
from capsal.metrics.attention_correctness import center_crop_region
from capsal.types import Caption, Sample

log = logging.getLogger("capsal")

REPORT_NAMES = 10  # file names listed in a skipped-files warning before "... and N more"


@dataclass
class MediaRecord:
    """One sample on disk: its id, media file, captions (text and phrases) and an optional annotation file."""

    sample_id: str
    path: Path
    captions: list[Caption]
    annotation: Path | None = None


def file_problem(path: Path, is_video: bool, probe: bool = True) -> str | None:
    """Why ``path`` cannot be used (missing, empty, unreadable header), or None. Videos are opened when ``probe``."""
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes)"
    if is_video and probe:
        return probe_video(path)
    return None


def drop_unreadable(
    records: Sequence[MediaRecord], is_video: bool, name: str, split: str, probe: bool = True
) -> list[MediaRecord]:
    """The records whose files can be used; the others are reported in one warning line."""
    kept: list[MediaRecord] = []
    bad: list[Path] = []
    for record in records:
        if file_problem(record.path, is_video, probe):
            bad.append(record.path)
        else:
            kept.append(record)
    report_skipped(name, split, bad, len(records), "video" if is_video else "image")
    return kept


def report_skipped(name: str, split: str, paths: Sequence[Path], total: int, kind: str = "video") -> None:
    """One warning line: how many ``kind`` files ("video", "image", "annotation") of a split were skipped, and which."""
    if not paths:
        return
    names = ", ".join(str(p) for p in paths[:REPORT_NAMES])
    more = f" ... and {len(paths) - REPORT_NAMES} more" if len(paths) > REPORT_NAMES else ""
    log.warning(
        f"{name} {split}: skipped {len(paths)} of {total} {kind} files that are missing, empty or unreadable: "
        f"{names}{more}"
    )


class MediaDataset(Dataset):
    """Samples backed by one media file each; subclasses implement ``load_pixels``.

    A sample whose file fails to load is replaced by the next one that loads (each bad file is reported once, and
    listed in ``failed``), so one corrupt file among thousands never stops training or extraction.
    """

    def __init__(self, records: Sequence[MediaRecord], name: str, split: str):
        self.records = list(records)
        self.name, self.split = name, split
        self.failed: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self.records]

    def captions_at(self, index: int) -> list[Caption]:
        """The captions of sample ``index`` without loading its pixels."""
        return self.records[index].captions

    def load_pixels(self, record: MediaRecord) -> torch.Tensor:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        """Sample ``index``, raising ``MediaReadError`` when its file cannot be read."""
        record = self.records[index]
        return Sample(self.load_pixels(record), self.captions_at(index), record.sample_id)

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        for offset in range(len(self)):
            current = (index + offset) % len(self)
            try:
                return self.load(current)
            except MediaReadError as error:
                path = str(self.records[current].path)
                if path not in self.failed:
                    self.failed[path] = str(error)
                    log.warning(f"{self.name} {self.split}: {error}; using the next sample instead")
        raise MediaReadError(f"no file of {self.name} split {self.split} could be read; check the dataset files")


def center_square(pixels: torch.Tensor, size: Size = None) -> torch.Tensor:
    """The central square of uint8 ``(T, 3, H, W)`` pixels (side: the short side), resized to ``size`` when given.

    The crop is ``center_crop_region``'s, the one boxes are clipped to; the resize is bilinear with antialiasing
    (as PIL's), so a square read this way matches a square image read at that size.
    """
    top, left, side = center_crop_region(*pixels.shape[-2:])
    square = pixels[..., top : top + side, left : left + side]
    if size is None:
        return square.contiguous()
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(square.shape[-2:]) == hw:
        return square.contiguous()
    resized = F.interpolate(square.float(), size=hw, mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


class ImageDataset(MediaDataset):
    """Images resized to ``image_size`` (None: stored size); under ``protocol="center_crop"`` their central square."""

    def __init__(
        self,
        records: Sequence[MediaRecord],
        name: str,
        split: str,
        image_size: Size = None,
        protocol: Protocol = "full",
    ):
        super().__init__(records, name, split)
        self.image_size = image_size
        self.protocol: Protocol = check_protocol(protocol)  # type: ignore[assignment]

    def load_pixels(self, record: MediaRecord) -> torch.Tensor:
        if self.protocol == "center_crop":
            return center_square(read_image(record.path), self.image_size)
        return read_image(record.path, self.image_size)


class VideoDataset(MediaDataset):
    """Clips decoded to ``num_frames`` evenly spaced frames of ``frame_size``."""

    def __init__(
        self, records: Sequence[MediaRecord], name: str, split: str, num_frames: int = 26, frame_size: Size = 299
    ):
        super().__init__(records, name, split)
        self.num_frames, self.frame_size = num_frames, frame_size

    def load_pixels(self, record: MediaRecord) -> torch.Tensor:
        return decode_video(record.path, self.num_frames, self.frame_size)


def split_counts(total: int, standard: Sequence[int]) -> tuple[int, ...]:
    """Split sizes: the ``standard`` counts when ``total`` reaches their sum, else proportional ones (every split but
    the first gets at least one sample; the first takes the rest)."""
    if total >= sum(standard):
        return tuple(standard)
    if total < len(standard):
        raise UserError(f"{total} samples cannot fill {len(standard)} splits; the dataset needs at least that many")
    rest = [max(1, round(total * n / sum(standard))) for n in standard[1:]]
    return (total - sum(rest), *rest)


class FileDataModule(CaptionDataModule):
    """Base of the datamodules that read a dataset from ``root`` on disk.

    Subclasses set ``is_video``, ``name``, ``layout`` (the expected files, for error messages) and ``readme`` (the
    README section); their splits are ``MediaDataset``s (``VideoDataset`` when ``is_video``, else ``ImageDataset``),
    so the vocabulary is built from the records' text without loading pixels.
    """

    name = "dataset"
    layout = ""
    readme = "Datasets"

    def __init__(
        self,
        root: str | os.PathLike,
        features_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        min_vocab_count: int = 1,
        seed: int = 0,
        eval_batch_size: int | None = None,
        protocol: Protocol = "full",
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            min_vocab_count=min_vocab_count,
            seed=seed,
            eval_batch_size=eval_batch_size,
            features_dir=features_dir,
            protocol=protocol,
        )
        self.root = Path(str(root)).expanduser()
        if not self.root.is_dir():
            raise UserError(
                f"{self.name} root {self.root} is not a directory; set datamodule.root to a folder holding "
                f"{self.layout} (README section '{self.readme}')"
            )

    def require(self, relative: str | os.PathLike, kind: str = "file", media: bool = False) -> Path:
        """``root / relative``, or a one-line ``UserError`` naming it and the expected layout when it is missing.

        ``media`` folders (images, videos) are not required when training from a feature cache.
        """
        path = self.root / relative
        if media and self.features_dir is not None:
            return path
        exists = path.is_dir() if kind == "folder" else path.is_file()
        if not exists:
            raise UserError(
                f"{self.name}: {kind} {path} is missing; datamodule.root must hold {self.layout} "
                f"(README section '{self.readme}')"
            )
        return path

    def usable(self, records: Sequence[MediaRecord], split: str, probe: bool = True) -> list[MediaRecord]:
        """``records`` without those whose file is missing, empty or unreadable (reported in one warning line).

        With ``features_dir`` set no media file is read, so none is checked: training from a cache works on a machine
        that only has the annotations and the cache.
        """
        if self.features_dir is not None:
            return list(records)
        return drop_unreadable(records, self.is_video, self.name, split, probe)

    def media_split(self, split: str) -> MediaDataset:
        """The split as a ``MediaDataset`` (unwrapping cached features)."""
        data = self.get_split(split)
        return getattr(data, "base", data)  # type: ignore[return-value]

    def caption_texts(self, split: str) -> list[str]:
        return [c.text for record in self.media_split(split).records for c in record.captions]
