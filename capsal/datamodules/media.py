"""Reading image and video files: ``read_image`` and ``decode_video`` give uint8 ``(T, 3, H, W)`` RGB tensors.

``decode_video(path, num_frames, size)`` returns ``num_frames`` frames spread evenly over the whole clip. It reads the
file twice: a cheap demux pass collects the packet timestamps (no decoding), then a decoding pass keeps, for each of
the ``num_frames`` target times ``t_0 + (k + 1/2) * D / num_frames`` (``D`` the clip duration, ``k = 0..num_frames-1``:
the centres of equal time segments), the frame on screen at that time, stopping as soon as the last target is served.
Sampling by time is exact for variable frame rates; on a constant frame rate it picks frame ``floor((k + 1/2) * N /
num_frames)`` of ``N``. A clip with fewer frames than asked repeats frames evenly (3 frames asked for 6 give frames
0, 0, 1, 1, 2, 2) and a log line says so; a clip without a decodable frame raises ``VideoDecodeError``. Streams
without timestamps fall back to the decoded frame count. Any container and codec FFmpeg reads works (mp4, avi, mkv,
webm...; h264, mpeg4, vp9...).

``read_image(path, size)`` reads any PIL format as RGB (EXIF orientation is not applied: annotation boxes refer to the
stored pixels): palette, grey, CMYK and alpha pictures are converted, 16-bit ones scaled to 8 bits (value / 257, not
clipped), and an animated GIF/PNG/WebP is read as its first frame. Images over ``MAX_IMAGE_PIXELS`` (PIL's default
decompression-bomb limit) are refused from their header, before any pixel is decoded, whatever PIL's own setting.

Corrupt, unreadable, missing or zero-length files raise ``VideoDecodeError``/``ImageReadError`` (``UserError``s) with
one line naming the file. The file datasets (``capsal.datamodules.files``) catch them so one bad file does not stop
a run.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from capsal.errors import UserError

log = logging.getLogger("capsal")
Size = int | tuple[int, int] | Sequence[int] | None
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS: about 0.25 GiB of 24-bit pixels


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
def _too_large(path, pixels: str) -> ImageReadError:
    return ImageReadError(
        f"image {path} is {pixels}, over the {MAX_IMAGE_PIXELS} pixels capsal decodes (a decompression-bomb guard); "
        f"resize it or remove it"
    )


@contextmanager
def _open_image(path: str | os.PathLike) -> Iterator:
    """``PIL.Image.open`` with one-line ``ImageReadError``s and the decompression-bomb guard (header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError as error:
        raise ImageReadError(f"image {path} does not exist; check the dataset root and layout") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, f"{found.group(1)} pixels" if found else "too large") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image {path} ({error}); re-download the file or remove it") from error
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_large(path, f"{width}x{height} pixels")
        yield image


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding the pixels."""
    with _open_image(path) as image:
        return image.size


def _rgb(image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a PIL image's first frame; 16- and 32-bit integer greys are scaled, not clipped."""
    from PIL import Image

    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG/TIFF) and I (32-bit ints holding 16-bit data)
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike, size: Size = None) -> torch.Tensor:
    """An image file as uint8 ``(1, 3, H, W)`` RGB; ``size`` (an int for a square, or ``(H, W)``) resizes bilinearly.

    Any mode PIL reads is converted (see the module doc); animated files give their first frame."""
    from PIL import Image

    path = Path(path)
    hw = _hw(size)
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(f"image {path} is empty (0 bytes); re-download the file or remove it")
    try:
        with _open_image(path) as image:
            array = _rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {path} ({error}); re-download the file or remove it") from error
    if hw is not None and array.shape[:2] != hw:
        array = np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), Image.BILINEAR))
    return torch.from_numpy(array.transpose(2, 0, 1).copy())[None]  # a writable copy (PIL's arrays are read-only)


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
    if count < num_frames:
        log.info("video %s has %d frames, fewer than the %d asked for: frames repeated evenly", path, count, num_frames)
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
