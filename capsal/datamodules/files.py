"""Datasets and the datamodule base over media files on disk (Flickr30k Entities, COCO, MSVD, MSR-VTT).

A dataset on disk is a list of ``MediaRecord``s (sample id, file, captions). Files that are missing, empty or that
FFmpeg cannot open are dropped when a split is built; ``FileDataModule.setup`` ends with one warning line counting
and naming every file skipped (a split built outside ``setup`` reports its own line). A file that still fails while
being read (``capsal.datamodules.media``, e.g. a clip whose second half is corrupt) is skipped and counted, never
replaced by another sample: ``dataset[i]`` raises the one-line ``MediaReadError``, and batched loading
(``DataLoader``, through ``MediaDataset.__getitems__``) leaves the sample out of its batch, warning once per file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from typing_extensions import Unpack

from capsal.constraints import PositiveInt
from capsal.datamodules.base import CaptionDataModule, LoaderOptions, check_positive
from capsal.datamodules.framing import Protocol, center_square, check_protocol
from capsal.datamodules.media import MediaReadError, Size, decode_video, probe_video, read_image
from capsal.errors import UserError
from capsal.text import tokenize
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

    def keep_captions(self, indices: Sequence[int]) -> MediaRecord:
        """This record with only the captions at ``indices`` (subclasses keep their per-caption data aligned)."""
        return replace(self, captions=[self.captions[i] for i in indices])


def drop_wordless(records: Sequence[MediaRecord]) -> tuple[list[MediaRecord], list[tuple[str, str]]]:
    """``records`` without their captions that have no word after ``tokenize`` (e.g. "... !!" or empty), and without
    the records left with no caption; plus ``(sample id, caption)`` of every caption dropped."""
    kept: list[MediaRecord] = []
    dropped: list[tuple[str, str]] = []
    for record in records:
        worded = [i for i, caption in enumerate(record.captions) if tokenize(caption.text)]
        if len(worded) < len(record.captions):
            dropped += [(record.sample_id, c.text) for i, c in enumerate(record.captions) if i not in set(worded)]
            record = record.keep_captions(worded)
        if record.captions:
            kept.append(record)
    return kept, dropped


def file_problem(path: Path, is_video: bool, probe: bool = True) -> str | None:
    """Why ``path`` cannot be used (missing, empty, unreadable header), or None. Videos are opened when ``probe``."""
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes)"
    if is_video and probe:
        return probe_video(path)
    return None


def split_unreadable(
    records: Sequence[MediaRecord], is_video: bool, probe: bool = True
) -> tuple[list[MediaRecord], list[Path]]:
    """The records whose files can be used, and the files of the others."""
    kept: list[MediaRecord] = []
    bad: list[Path] = []
    for record in records:
        if file_problem(record.path, is_video, probe):
            bad.append(record.path)
        else:
            kept.append(record)
    return kept, bad


def drop_unreadable(
    records: Sequence[MediaRecord], is_video: bool, name: str, split: str, probe: bool = True
) -> list[MediaRecord]:
    """The records whose files can be used; the others are reported in one warning line."""
    kept, bad = split_unreadable(records, is_video, probe)
    report_skipped(name, split, bad, len(records), "video" if is_video else "image")
    return kept


def skipped_line(what: str, paths: Sequence[str | Path], total: int | None = None, kind: str = "video") -> str:
    """``"<what>: skipped N [of M] <kind> files ...: first paths ... and K more"``, the one summary line."""
    names = ", ".join(str(p) for p in paths[:REPORT_NAMES])
    more = f" ... and {len(paths) - REPORT_NAMES} more" if len(paths) > REPORT_NAMES else ""
    of = f" of {total}" if total is not None else ""
    return (
        f"{what}: skipped {len(paths)}{of} {kind} files that are missing, empty or unreadable (or fail to decode): "
        f"{names}{more}"
    )


def report_skipped(name: str, split: str, paths: Sequence[Path], total: int, kind: str = "video") -> None:
    """One warning line: how many ``kind`` files ("video", "image", "annotation") of a split were skipped, and which."""
    if paths:
        log.warning(skipped_line(f"{name} {split}", paths, total, kind))


class MediaDataset(Dataset):
    """Samples backed by one media file each; subclasses implement ``load_pixels``.

    A sample whose file fails to load is skipped, never replaced by another one: ``dataset[i]`` raises its one-line
    ``MediaReadError``, while a batch (``__getitems__``, what ``DataLoader`` calls) leaves it out, so one corrupt file
    among thousands never stops training or extraction. Each bad file is listed in ``failed`` (path -> reason) and,
    when ``warn_failures``, reported in one warning line the first time (per process).
    """

    def __init__(self, records: Sequence[MediaRecord], name: str, split: str):
        self.records = list(records)
        self.name, self.split = name, split
        self.failed: dict[str, str] = {}
        self.warn_failures = True
        self._warned: set[str] = set()

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
        try:
            return self.load(index)
        except MediaReadError as error:
            self.failed.setdefault(str(self.records[index].path), str(error))
            raise

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """The samples of ``indices`` that load (maybe none); the others are skipped (``failed``), not replaced."""
        samples: list[Sample] = []
        for index in indices:
            try:
                samples.append(self[index])
            except MediaReadError as error:
                path = str(self.records[index].path)
                if self.warn_failures and path not in self._warned:
                    self._warned.add(path)
                    log.warning(
                        f"{self.name} {self.split}: skipped {path} ({error}); {len(self.failed)} file(s) skipped so "
                        f"far, none replaced"
                    )
        return samples


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

    def __init__(self, root: str | os.PathLike, protocol: Protocol = "full", **loader: Unpack[LoaderOptions]):
        super().__init__(protocol=protocol, **loader)
        self.root = Path(str(root)).expanduser()
        self.skipped: dict[str, list[Path]] = {}  # split -> files dropped when it was built
        self.wordless: dict[str, list[tuple[str, str]]] = {}  # split -> (sample id, caption) without a word, dropped
        self._split_sizes: dict[str, int] = {}  # split -> records before dropping
        self._reported: set[str] = set()
        self._in_setup = False
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
        records, self.wordless[split] = drop_wordless(records)
        if self.features_dir is not None:
            return list(records)
        kept, bad = split_unreadable(records, self.is_video, probe)
        self.skipped[split] = bad
        self._split_sizes[split] = len(records)
        return kept

    def get_split(self, split: str):
        data = super().get_split(split)
        if not self._in_setup:
            self.report_skipped([split])
        return data

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (see ``CaptionDataModule.setup``), then one warning line for every file skipped."""
        self._in_setup = True
        try:
            super().setup(stage)
        finally:
            self._in_setup = False
        self.report_skipped(list(self._splits))

    def skipped_files(self, split: str) -> list[str]:
        """The files of ``split`` left out: dropped when it was built, or (from a cache) skipped at extraction."""
        dropped = [str(p) for p in self.skipped.get(split, [])]
        data = self._splits.get(split)
        return list(dict.fromkeys(dropped + list(getattr(data, "skipped_files", []))))  # a cache repeats some

    def report_skipped(self, splits: Sequence[str]) -> None:
        """One warning line for the not yet reported files skipped in ``splits`` (nothing when none was)."""
        splits = [s for s in splits if s not in self._reported and s in self._splits]
        self._reported.update(splits)
        wordless = [(split, pair) for split in splits for pair in self.wordless.get(split, [])]
        if wordless:
            counts = ", ".join(f"{s} {n}" for s in splits if (n := len(self.wordless.get(s, []))))
            examples = ", ".join(f"{sample_id}: {text!r}" for _, (sample_id, text) in wordless[:3])
            log.warning(
                f"{self.name} {'/'.join(splits)}: skipped {len(wordless)} captions ({counts}) with no word after "
                f"tokenization, e.g. {examples}"
            )
        paths = [p for split in splits for p in self.skipped_files(split)]
        if not paths:
            return
        kind = "video" if self.is_video else "image"
        counts = ", ".join(f"{split} {len(self.skipped_files(split))}" for split in splits if self.skipped_files(split))
        sizes = [self._split_sizes.get(split) for split in splits]
        total = sum(n for n in sizes if n is not None) if None not in sizes else None
        log.warning(skipped_line(f"{self.name} {'/'.join(splits)} ({counts})", paths, total, kind))

    def media_split(self, split: str) -> MediaDataset:
        """The split as a ``MediaDataset`` (unwrapping cached features)."""
        data = self.get_split(split)
        return getattr(data, "base", data)  # type: ignore[return-value]

    def caption_texts(self, split: str) -> list[str]:
        return [c.text for record in self.media_split(split).records for c in record.captions]


class VideoFileDataModule(FileDataModule):
    """Base of the video datasets on disk: each clip decoded to ``num_frames`` evenly spaced frames of ``frame_size``
    px. Subclasses say what ``root`` must hold (``check_layout``) and which clips a split has (``split_records``);
    with ``check_videos`` every file is probed when its split is built, so a broken clip is dropped and reported."""

    is_video = True

    def __init__(
        self,
        root: str,
        num_frames: PositiveInt = 26,
        frame_size: PositiveInt = 299,
        check_videos: bool = True,
        **loader: Unpack[LoaderOptions],
    ):
        super().__init__(root, **loader)
        check_positive(num_frames=num_frames, frame_size=frame_size)
        self.num_frames, self.frame_size, self.check_videos = int(num_frames), int(frame_size), bool(check_videos)
        self.check_layout()

    def check_layout(self) -> None:
        """One line naming what ``root`` lacks (see ``require``), before anything is read."""
        raise NotImplementedError

    def split_records(self, split: str) -> list[MediaRecord]:
        """The records of ``split`` before files are checked."""
        raise NotImplementedError

    def build_split(self, split: str) -> VideoDataset:
        records = self.usable(self.split_records(split), split, self.check_videos)
        return VideoDataset(records, self.name, split, self.num_frames, self.frame_size)
