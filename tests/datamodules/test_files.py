"""Datasets over files (``capsal.datamodules.files``): unreadable files are skipped and reported, split sizes."""

from __future__ import annotations

import logging

import pytest
from datasets_on_disk import write_grey_video, write_half_corrupt_video
from torch.utils.data import DataLoader

from capsal.datamodules.files import MediaRecord, VideoDataset, drop_unreadable, split_counts
from capsal.datamodules.media import VideoDecodeError
from capsal.errors import UserError
from capsal.types import Caption


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
