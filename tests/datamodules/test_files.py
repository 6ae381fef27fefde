"""Datasets over files (``capsal.datamodules.files``): unreadable files are skipped and reported, split sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from capsal.datamodules.files import MediaRecord, VideoDataset, drop_unreadable, split_counts
from capsal.errors import UserError
from capsal.types import Caption


def write_grey_video(path: Path, frames: int = 4, level: int = 200, size: tuple[int, int] = (16, 24)) -> Path:
    """A short mpeg4 clip of uniform grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_clip_failing_to_decode_is_replaced_by_the_next_and_reported_once(tmp_path, caplog):
    good = write_grey_video(tmp_path / "good.avi")
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 100)
    records = [MediaRecord(p.stem, p, [Caption(p.stem)]) for p in (bad, good)]
    dataset = VideoDataset(records, "demo", "train", num_frames=2, frame_size=8)
    with caplog.at_level(logging.WARNING, logger="capsal"):
        first, again = dataset[0], dataset[0]
    assert first.sample_id == again.sample_id == "good" and first.pixels.shape == (2, 3, 8, 8)
    assert list(dataset.failed) == [str(bad)]
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(("is_video", "kind"), [(True, "video"), (False, "image")])
def test_unusable_files_are_dropped_in_one_warning(tmp_path, caplog, is_video, kind):
    good = write_grey_video(tmp_path / "good.avi")
    empty, garbage = tmp_path / "empty.avi", tmp_path / "garbage.avi"
    empty.touch()
    garbage.write_bytes(b"\x00" * 100)
    paths = (good, empty, garbage, tmp_path / "absent.avi")
    records = [MediaRecord(p.stem, p, [Caption(p.stem)]) for p in paths]
    with caplog.at_level(logging.WARNING, logger="capsal"):
        kept = drop_unreadable(records, is_video, "demo", "val", probe=True)
    # only videos are opened: as an "image" the garbage file passes the cheap checks
    assert [r.sample_id for r in kept] == (["good"] if is_video else ["good", "garbage"])
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"demo val: skipped {4 - len(kept)} of 4 {kind} files" in message and str(empty) in message


def test_split_counts_standard_and_proportional():
    assert split_counts(1970, (1200, 100, 670)) == (1200, 100, 670)
    assert split_counts(2000, (1200, 100, 670)) == (1200, 100, 670)
    assert split_counts(6, (1200, 100, 670)) == (3, 1, 2)
    assert split_counts(197, (1200, 100, 670)) == (120, 10, 67)
    with pytest.raises(UserError):
        split_counts(2, (1200, 100, 670))
