"""Datasets over files (``capsal.datamodules.files``): unreadable files are skipped and reported, split sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
from torch.utils.data import DataLoader

from capsal.datamodules.files import MediaRecord, VideoDataset, drop_unreadable, split_counts
from capsal.datamodules.media import VideoDecodeError, decode_video, probe_video
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


def write_half_corrupt_video(path: Path, frames: int = 12) -> Path:
    """An mp4 whose header (moved to the front) opens fine but whose second half is zeros: decoding fails midway."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))
    assert probe_video(path) is None  # the header is fine: the cheap checks keep it
    with pytest.raises(VideoDecodeError, match="cannot decode video"):  # it fails while decoding
        decode_video(path, 4, 8)
    return path


def test_a_clip_failing_mid_decode_is_skipped_and_counted_never_replaced(tmp_path, caplog):
    good = write_grey_video(tmp_path / "good.avi")
    bad = write_half_corrupt_video(tmp_path / "bad.mp4")
    records = [MediaRecord(p.stem, p, [Caption(p.stem)]) for p in (bad, good)]
    assert len(drop_unreadable(records, True, "demo", "train", probe=True)) == 2
    dataset = VideoDataset(records, "demo", "train", num_frames=2, frame_size=8)
    with pytest.raises(VideoDecodeError, match=f"cannot decode video {bad}"):
        dataset[0]  # asked for by index, the bad clip is an error, not another clip
    assert dataset[1].sample_id == "good"
    with caplog.at_level(logging.WARNING, logger="capsal"):
        batches = [[s.sample_id for s in batch] for batch in DataLoader(dataset, batch_size=2, collate_fn=list)]
        again = [[s.sample_id for s in batch] for batch in DataLoader(dataset, batch_size=2, collate_fn=list)]
    assert batches == again == [["good"]]  # the batch is one sample short: nothing stands in for the bad clip
    assert list(dataset.failed) == [str(bad)]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"demo train: skipped {bad}" in warning and "1 file(s) skipped so far, none replaced" in warning


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
