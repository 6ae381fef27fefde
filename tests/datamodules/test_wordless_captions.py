"""Captions with no word after tokenization ("... !!", "") are skipped and counted in one line, in every reader."""

from __future__ import annotations

import json
import logging

import pytest
from datasets_on_disk import write_flickr30k_entities, write_grey_video, write_msrvtt
from PIL import Image

from capsal.datamodules.coco import CocoCaptionsDataModule
from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule
from capsal.datamodules.msrvtt import MSRVTTDataModule
from capsal.datamodules.msvd import MSVDDataModule
from capsal.text import tokenize


def wordless_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "with no word after tokenization" in r.getMessage()]


def check(dm, caplog, expected: dict[str, int]) -> None:
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm.setup(None)
        for split in ("train", "val", "test"):
            data = dm.media_split(split)
            for record in data.records:
                assert record.captions and all(tokenize(c.text) for c in record.captions)
        batch = next(iter(dm.train_dataloader()))  # trains: every caption encodes to words
        assert all(tokenize(c.text) for c in batch.captions)
    (line,) = wordless_lines(caplog)  # one line for the whole setup
    total = sum(expected.values())
    counts = ", ".join(f"{s} {n}" for s, n in expected.items() if n)
    assert f": skipped {total} captions ({counts}) with no word after tokenization" in line


def test_flickr30k_entities(tmp_path, caplog):
    copy = write_flickr30k_entities(tmp_path / "f30k", counts=(2, 1, 1))
    dm = Flickr30kEntitiesDataModule(root=str(copy.root), image_size=32, batch_size=2)
    check(dm, caplog, copy.wordless)
    sample = dm.get_split("train")[0]
    assert len(sample.captions) == 5 and sample.captions[2].text.startswith("Someone holds")
    assert [p.category for p in sample.captions[2].phrases] == ["people", "other", "notvisual"]  # entities aligned
    assert sample.captions[2].phrases[0].boxes  # chain 1's boxes, not the wordless line's


def test_msrvtt(tmp_path, caplog):
    copy = write_msrvtt(tmp_path / "msrvtt", counts=(3, 1, 1), captions=8)
    dm = MSRVTTDataModule(root=str(copy.root), num_frames=2, frame_size=16, batch_size=2)
    check(dm, caplog, copy.wordless)
    assert len(dm.get_split("test")[0].captions) == 7


def test_msvd(tmp_path, caplog):
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    lines = []
    for c in range(6):
        write_grey_video(root / "YouTubeClips" / f"clip{c}.avi", level=40 * c + 20)
        lines += [f"clip{c} a clip number {c}", f"clip{c} ... !!", f"clip{c} --"]
    lines.append("clip5 !!")
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    dm = MSVDDataModule(root=str(root), num_frames=2, frame_size=16, batch_size=2)
    check(dm, caplog, {"train": 6, "val": 2, "test": 5})  # 3 train, 1 val, 2 test clips; clip5 has one more


def test_coco_and_a_sample_left_without_captions(tmp_path, caplog):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for folder, ids in (("train2014", [1, 2, 3]), ("val2014", [4, 5, 6, 7])):
        images, annotations = [], []
        for i in ids:
            name = f"COCO_{folder}_{i:012d}.jpg"
            (root / folder).mkdir(exist_ok=True)
            Image.new("RGB", (16, 12), (30 * i, 20, 20)).save(root / folder / name)
            images.append({"file_name": name, "height": 12, "width": 16, "id": i})
            texts = ["", "?!"] if i == 3 else [f"picture {i}", "..."]  # image 3: no caption left
            annotations += [{"image_id": i, "id": 10 * i + k, "caption": t} for k, t in enumerate(texts)]
        data = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{folder[:-4]}2014.json").write_text(json.dumps(data))
    dm = CocoCaptionsDataModule(root=str(root), image_size=8, batch_size=2)
    check(dm, caplog, {"train": 4, "val": 2, "test": 2})
    assert dm.get_split("train").sample_ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]


@pytest.mark.parametrize("text", ["", "... !!", " - ", "?"])
def test_the_rule_is_tokenize(text):
    assert tokenize(text) == []
