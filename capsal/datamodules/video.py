"""Reading image and video files, and the file-backed datasets the datamodules on disk share.

``decode_video(path, num_frames, size)`` returns ``num_frames`` frames spread evenly over the whole clip. It reads the
file twice: a cheap demux pass collects the packet timestamps (no decoding), then a decoding pass keeps, for each of
the ``num_frames`` target times ``t_0 + (k + 1/2) * D / num_frames`` (``D`` the clip duration, ``k = 0..num_frames-1``:
the centres of equal time segments), the frame on screen at that time, stopping as soon as the last target is served.
Sampling by time is exact for variable frame rates; on a constant frame rate it picks frame ``floor((k + 1/2) * N /
num_frames)`` of ``N``. A clip with fewer frames than asked repeats frames evenly (3 frames asked for 6 give frames
0, 0, 1, 1, 2, 2). Streams without timestamps fall back to the decoded frame count. Any container and codec FFmpeg
reads works (mp4, avi, mkv, webm...; h264, mpeg4, vp9...).

``read_image(path, size)`` reads any PIL format as RGB (EXIF orientation is not applied: annotation boxes refer to the
stored pixels).

Corrupt, unreadable, missing or zero-length files raise ``VideoDecodeError``/``ImageReadError`` (``UserError``s) with
one line naming the file. The datasets below do not let one bad file stop a run: files that are missing, empty or
that FFmpeg cannot open are dropped when a split is built and reported in one warning line; a file that still fails
while decoding is replaced by the next readable sample and reported once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from capsal.datamodules.base import CaptionDataModule
from capsal.errors import UserError
from capsal.types import Caption, Sample

log = logging.getLogger("capsal")

Size = int | tuple[int, int] | Sequence[int] | None
REPORT_NAMES = 10  # file names listed in a skipped-files warning before "... and N more"


class MediaReadError(UserError):
    """An image or video file that cannot be read."""


class VideoDecodeError(MediaReadError):
    """A video file that is missing, empty, corrupt or has no decodable frames."""


class ImageReadError(MediaReadError):
    """An image file that is missing, empty or not an image PIL can read."""


def _hw(size: Size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = tuple(int(s) for s in size)
        if len(pair) != 2:
            raise UserError(f"size={list(size)} must be one integer or [height, width]")
    if min(pair) < 1:
        raise UserError(f"size={size} must be positive")
    return pair  # type: ignore[return-value]


# -- images ------------------------------------------------------------------------------------------------------------
def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as error:
        raise ImageReadError(f"image {path} does not exist; check the dataset root and layout") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path} ({error}); re-download the file or remove it") from error


def read_image(path: str | os.PathLike, size: Size = None) -> torch.Tensor:
    """An image file as uint8 ``(1, 3, H, W)`` RGB; ``size`` (an int for a square, or ``(H, W)``) resizes bilinearly."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    hw = _hw(size)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(f"image {path} is empty (0 bytes); re-download the file or remove it")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if hw is not None and image.size != (hw[1], hw[0]):
                image = image.resize((hw[1], hw[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError as error:
        raise ImageReadError(f"image {path} does not exist; check the dataset root and layout") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path} ({error}); re-download the file or remove it") from error
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


# -- videos ------------------------------------------------------------------------------------------------------------
def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError)


def _open_video(path: Path):
    """An open PyAV container and its first video stream; raises ``VideoDecodeError`` for unreadable files."""
    import av

    if not path.exists():
        raise VideoDecodeError(f"video {path} does not exist; check the dataset root and layout")
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(f"video {path} is empty (0 bytes); re-download the file or remove it")
    try:
        container = av.open(str(path))
    except _av_errors() as error:
        raise VideoDecodeError(f"cannot open video {path} ({error}); re-download the file or remove it") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"file {path} has no video stream; re-download the file or remove it")
    return container, container.streams.video[0]


def probe_video(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as a video (missing, empty, not a container FFmpeg opens, no video stream), or
    None when its header looks fine. Cheap: reads the header only."""
    try:
        container, _ = _open_video(Path(path))
    except VideoDecodeError as error:
        return str(error)
    container.close()
    return None


def _packet_times(path: Path) -> tuple[list[int] | None, int]:
    """Sorted presentation timestamps of the video packets (None when some lack one) and the packet count."""
    container, stream = _open_video(path)
    try:
        times: list[int | None] = [p.pts for p in container.demux(stream) if p.size]
    except _av_errors() as error:
        raise VideoDecodeError(f"cannot read video {path} ({error}); re-download the file or remove it") from error
    finally:
        container.close()
    if not times:
        raise VideoDecodeError(f"video {path} has no frames; re-download the file or remove it")
    if any(t is None for t in times) or len(set(times)) < len(times):  # missing or repeated: count frames instead
        return None, len(times)
    return sorted(t for t in times if t is not None), len(times)


def sample_times(times: Sequence[float], num_frames: int) -> list[float]:
    """The ``num_frames`` target times (centres of equal segments) of frames starting at sorted ``times``; the last
    frame lasts as long as the gap before it."""
    last = times[-1] - times[-2] if len(times) > 1 else 1
    start, end = times[0], times[-1] + max(last, 1)
    return [start + (k + 0.5) * (end - start) / num_frames for k in range(num_frames)]


def decode_video(path: str | os.PathLike, num_frames: int = 26, size: Size = None) -> torch.Tensor:
    """``num_frames`` frames sampled evenly over the whole clip, uint8 ``(T, 3, H, W)`` RGB (see the module doc).

    ``size``: None keeps the stored frame size, an int resizes to a square, ``(H, W)`` to that size.
    """
    path = Path(path)
    if num_frames < 1:
        raise UserError(f"num_frames={num_frames} must be at least 1")
    hw = _hw(size)
    times, count = _packet_times(path)
    axis: list[float] = list(times) if times is not None else list(range(count))
    targets = sample_times(axis, num_frames)
    chosen: list[np.ndarray] = []
    last: list = [None, None]  # the frame converted last and its array: repeated frames are converted once

    def as_array(frame) -> np.ndarray:
        if last[0] is not frame:
            kwargs = {"width": hw[1], "height": hw[0]} if hw is not None else {}
            last[:] = [frame, frame.to_ndarray(format="rgb24", **kwargs)]
        return last[1]

    container, stream = _open_video(path)
    stream.thread_type = "AUTO"
    previous = None
    try:
        for index, frame in enumerate(container.decode(stream)):
            if frame.pts is not None and times is not None:
                when: float = frame.pts
            else:
                when = axis[min(index, len(axis) - 1)]
            while len(chosen) < num_frames and when > targets[len(chosen)]:
                chosen.append(as_array(previous if previous is not None else frame))
            if len(chosen) == num_frames:
                break
            previous = frame
    except _av_errors() as error:
        raise VideoDecodeError(f"cannot decode video {path} ({error}); re-download the file or remove it") from error
    finally:
        container.close()
    if len(chosen) < num_frames:
        if previous is None:
            raise VideoDecodeError(f"video {path} has no decodable frames; re-download the file or remove it")
        chosen += [as_array(previous)] * (num_frames - len(chosen))
    if hw is None and len({a.shape for a in chosen}) > 1:  # the stream changed resolution: use the first size
        first = chosen[0].shape[:2]
        chosen = [_resize_array(a, first) for a in chosen]
    video = np.stack(chosen).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(video))


def _resize_array(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if array.shape[:2] == hw:
        return array
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), Image.BILINEAR))


# -- datasets of files -------------------------------------------------------------------------------------------------
@dataclass
class MediaRecord:
    """One sample on disk: its id, media file, captions (text and phrases) and an optional annotation file."""

    sample_id: str
    path: Path
    captions: list[Caption]
    annotation: Path | None = None


def file_problem(path: Path, kind: str, probe: bool = True) -> str | None:
    """Why ``path`` cannot be used (missing, empty, unreadable header), or None. Videos are opened when ``probe``."""
    if not path.is_file():
        return f"{path} is missing"
    if path.stat().st_size == 0:
        return f"{path} is empty (0 bytes)"
    if kind == "video" and probe:
        return probe_video(path)
    return None


def drop_unreadable(
    records: Sequence[MediaRecord], kind: str, name: str, split: str, probe: bool = True
) -> list[MediaRecord]:
    """The records whose files can be used; the others are reported in one warning line."""
    kept: list[MediaRecord] = []
    bad: list[Path] = []
    for record in records:
        if file_problem(record.path, kind, probe):
            bad.append(record.path)
        else:
            kept.append(record)
    report_skipped(name, split, bad, len(records), kind)
    return kept


def report_skipped(name: str, split: str, paths: Sequence[Path], total: int, kind: str = "video") -> None:
    """One warning line: how many files of a split were skipped, and which."""
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

    kind = "image"

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


class ImageDataset(MediaDataset):
    """Images resized to ``image_size`` (None: stored size)."""

    kind = "image"

    def __init__(self, records: Sequence[MediaRecord], name: str, split: str, image_size: Size = None):
        super().__init__(records, name, split)
        self.image_size = image_size

    def load_pixels(self, record: MediaRecord) -> torch.Tensor:
        return read_image(record.path, self.image_size)


class VideoDataset(MediaDataset):
    """Clips decoded to ``num_frames`` evenly spaced frames of ``frame_size``."""

    kind = "video"

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

    Subclasses set ``name``, ``layout`` (the expected files, for error messages) and ``readme`` (the README section);
    their splits are ``MediaDataset``s, so the vocabulary is built from the records' text without loading pixels.
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
    ):
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            min_vocab_count=min_vocab_count,
            seed=seed,
            eval_batch_size=eval_batch_size,
            features_dir=features_dir,
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
        kind = "video" if self.item_kind == "video" else "image"
        return drop_unreadable(records, kind, self.name, split, probe)

    def media_split(self, split: str) -> MediaDataset:
        """The split as a ``MediaDataset`` (unwrapping cached features)."""
        data = self.get_split(split)
        return getattr(data, "base", data)  # type: ignore[return-value]

    def caption_texts(self, split: str) -> list[str]:
        return [c.text for record in self.media_split(split).records for c in record.captions]
