"""Flickr30k Entities, COCO Captions, MSVD and MSR-VTT datamodules on miniature copies in the published layouts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from capsal.datamodules.coco import CocoCaptionsDataModule
from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule, parse_sentence, scale_box
from capsal.datamodules.msrvtt import MSRVTTDataModule
from capsal.datamodules.msvd import MSVDDataModule
from capsal.errors import UserError
from capsal.text import tokenize


def write_image(path: Path, size_wh: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size_wh, color).save(path, quality=95)


def write_video(path: Path, level: int, frames: int = 6, codec: str = "mpeg4") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width, stream.pix_fmt = 16, 24, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 24, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def grey(video: torch.Tensor) -> int:
    return round(float(video.float().mean()))


# -- Flickr30k Entities ------------------------------------------------------------------------------------------------
# Sentences/<id>.txt and Annotations/<id>.xml as the official release writes them (tab-indented XML, 1-based boxes).
F30K_SENTENCES = {
    "1000092795": [
        "[/EN#1/people Two young guys] with [/EN#2/bodyparts shaggy hair] look at [/EN#3/bodyparts their hands] "
        "while hanging out in [/EN#8/scene the yard] .",
        "[/EN#1/people Two young , White males] are outside near [/EN#4/scene many bushes] .",
        "[/EN#6/people A man] in [/EN#7/clothing a [red] shirt] standing in [/EN#9/scene a garden] "
        "with [/EN#0/notvisual nothing] .",
        "[/EN#6729/vehicles/scene the subway] is near [/EN#10/other a bench] .",
        "[/EN#1/people Two friends] enjoy time spent together .",
    ],
    "10002456": ["[/EN#20/animals A dog] runs ."],
    "1000268201": ["[/EN#30/people A child] in [/EN#31/clothing a pink dress] climbs [/EN#32/other the stairs] ."],
    "1003163366": ["[/EN#40/people A man] sleeps on [/EN#41/other a bench] ."],
    "1001465944": ["[/EN#50/people A woman] walks ."],  # its image is missing
}
F30K_OBJECTS = {  # id -> (width, height, [(names, box or None, scene, nobndbox)])
    "1000092795": (
        40,
        30,
        [
            (["1"], (1, 1, 10, 20), 0, 0),
            (["1"], (21, 5, 40, 30), 0, 0),
            (["1", "6"], (11, 2, 20, 12), 0, 0),
            (["2"], (3, 3, 6, 6), 0, 0),
            (["3"], (5, 10, 8, 14), 0, 0),
            (["7"], (12, 6, 18, 15), 0, 0),
            (["6729"], (1, 1, 40, 30), 0, 0),
            (["8"], None, 1, 0),
            (["4"], None, 1, 0),
            (["9"], None, 1, 0),
            (["10"], None, 0, 1),
        ],
    ),
    "10002456": (30, 30, [(["20"], (2, 3, 12, 13), 0, 0)]),
    "1000268201": (30, 45, [(["30"], (1, 1, 15, 30), 0, 0), (["31"], (2, 10, 14, 28), 0, 0), (["32"], None, 0, 1)]),
    "1003163366": (32, 32, [(["40"], (1, 1, 32, 32), 0, 0), (["41"], (4, 4, 30, 20), 0, 0)]),
    "1001465944": (20, 20, [(["50"], (1, 1, 5, 5), 0, 0)]),
}
F30K_COLORS = {"1000092795": (250, 0, 0), "10002456": (0, 250, 0), "1000268201": (0, 0, 250), "1003163366": (90,) * 3}
F30K_SPLITS = {
    "train": ["1000092795", "10002456", "1001465944"],
    "val": ["1000268201", "1002674143"],  # 1002674143 has no Sentences/Annotations file
    "test": ["1003163366"],
}


def annotation_xml(image_id: str, width: int, height: int, objects) -> str:
    lines = ["<annotation>", f"\t<filename>{image_id}.jpg</filename>", "\t<size>"]
    lines += [f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>", "\t</size>"]
    for names, box, scene, nobndbox in objects:
        lines.append("\t<object>")
        lines += [f"\t\t<name>{name}</name>" for name in names]
        if box is None:
            lines += [f"\t\t<scene>{scene}</scene>", f"\t\t<nobndbox>{nobndbox}</nobndbox>"]
        else:
            lines.append("\t\t<bndbox>")
            lines += [f"\t\t\t<{tag}>{v}</{tag}>" for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)]
            lines.append("\t\t</bndbox>")
        lines.append("\t</object>")
    return "\n".join([*lines, "</annotation>", ""])


@pytest.fixture
def flickr_root(tmp_path) -> Path:
    root = tmp_path / "flickr30k_entities"
    for folder in ("Sentences", "Annotations", "flickr30k-images"):
        (root / folder).mkdir(parents=True)
    for image_id, lines in F30K_SENTENCES.items():
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        width, height, objects = F30K_OBJECTS[image_id]
        (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, width, height, objects))
        if image_id in F30K_COLORS:
            write_image(root / "flickr30k-images" / f"{image_id}.jpg", (width, height), F30K_COLORS[image_id])
    for split, ids in F30K_SPLITS.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_flickr_markup_parsing_spans_categories_and_entities():
    caption, entities = parse_sentence(F30K_SENTENCES["1000092795"][2])
    words = tokenize(caption.text)
    assert caption.text == "A man in a red shirt standing in a garden with nothing ."
    spans = [(p.start, p.end, p.category, words[p.start : p.end]) for p in caption.phrases]
    assert spans == [
        (0, 2, "people", ["a", "man"]),
        (3, 6, "clothing", ["a", "red", "shirt"]),  # brackets inside a phrase are dropped, the words kept
        (8, 10, "scene", ["a", "garden"]),
        (11, 12, "notvisual", ["nothing"]),
    ]
    assert entities == ["6", "7", "9", "0"]
    caption, entities = parse_sentence("[/EN#6729/vehicles/scene the subway] is near [/EN#10/other a bench] .")
    assert [(p.category, p.start, p.end) for p in caption.phrases] == [("vehicles", 0, 2), ("other", 4, 6)]
    nested, ids = parse_sentence("A [/EN#1/people man [/EN#5/clothing with a hat]] runs")
    assert nested.text == "A man with a hat runs" and ids == ["1", "5"]
    assert [(p.start, p.end) for p in nested.phrases] == [(1, 5), (2, 5)]


def test_flickr_datamodule_captions_phrases_boxes_and_splits(flickr_root, caplog):
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm = Flickr30kEntitiesDataModule(root=str(flickr_root), image_size=None, batch_size=2)
        train, val, test = (dm.get_split(s) for s in ("train", "val", "test"))
    assert [len(train), len(val), len(test)] == [2, 1, 1]
    assert dm.categories[:2] == ("people", "clothing") and len(dm.categories) == 8 and "notvisual" not in dm.categories
    assert train.sample_ids == ["1000092795", "10002456"] and val.sample_ids == ["1000268201"]
    assert test.sample_ids == ["1003163366"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("train" in w and "1001465944.jpg" in w and "skipped 1 of 3" in w for w in warnings)
    assert any("val" in w and "1002674143.txt" in w for w in warnings)

    sample = train[0]
    assert sample.pixels.shape == (1, 3, 30, 40) and sample.pixels.dtype == torch.uint8
    means = sample.pixels[0].float().mean((1, 2)).tolist()
    assert all(abs(v - c) < 8 for v, c in zip(means, (250, 0, 0), strict=True))
    assert len(sample.captions) == 5
    first = sample.captions[0]
    assert first.text.startswith("Two young guys with shaggy hair")
    people = first.phrases[0]
    assert (people.start, people.end, people.category) == (0, 3, "people")
    # the union of the chain's boxes: two objects of its own and one shared with chain 6; 1-based -> 0-based
    assert people.boxes == [(0, 0, 9, 19), (20, 4, 39, 29), (10, 1, 19, 11)]
    assert first.phrases[1].boxes == [(2, 2, 5, 5)]
    assert first.phrases[3].category == "scene" and first.phrases[3].boxes == []  # scene flag: no box
    man, shirt, garden, nothing = sample.captions[2].phrases
    assert man.boxes == [(10, 1, 19, 11)] and shirt.boxes == [(11, 5, 17, 14)]
    assert garden.boxes == [] and nothing.category == "notvisual" and nothing.boxes == []
    subway, bench = sample.captions[3].phrases
    assert subway.category == "vehicles" and subway.boxes == [(0, 0, 39, 29)]
    assert bench.boxes == []  # nobndbox
    assert val[0].captions[0].phrases[2].boxes == []


def test_flickr_boxes_follow_the_resized_pixels(flickr_root):
    dm = Flickr30kEntitiesDataModule(root=str(flickr_root), image_size=20, batch_size=2, min_vocab_count=1)
    sample = dm.get_split("train")[0]
    assert sample.pixels.shape == (1, 3, 20, 20)
    sx, sy = 20 / 40, 20 / 30
    people = sample.captions[0].phrases[0]
    assert people.boxes[0] == pytest.approx((0, 0, 10 * sx - 1, 20 * sy - 1))
    assert people.boxes[0] == pytest.approx(scale_box((0, 0, 9, 19), sx, sy))
    assert sample.captions[3].phrases[0].boxes[0] == pytest.approx((0, 0, 19, 19))  # the whole image stays whole
    dm.setup("fit")
    assert {"guys", "dog", "shirt"} <= set(dm.vocab.stoi)
    batch = next(iter(dm.val_dataloader()))
    assert batch.pixels.shape == (1, 1, 3, 20, 20) and batch.references[0][0].startswith("A child in")
    batch = next(iter(dm.train_dataloader()))
    assert batch.pixels.shape == (2, 1, 3, 20, 20) and sorted(batch.sample_ids) == ["1000092795", "10002456"]


def test_flickr_layout_errors_name_the_path(tmp_path, flickr_root):
    with pytest.raises(UserError, match=r"nowhere.*flickr30k-images.*README"):
        Flickr30kEntitiesDataModule(root=str(tmp_path / "nowhere"))
    (flickr_root / "test.txt").unlink()
    dm = Flickr30kEntitiesDataModule(root=str(flickr_root))
    with pytest.raises(UserError, match=r"test\.txt is missing"):
        dm.get_split("test")


# -- COCO Captions -----------------------------------------------------------------------------------------------------
def coco_json(folder: str, ids: list[int], captions_per_image: int = 2) -> dict:
    images = [
        {"license": 1, "file_name": f"COCO_{folder}_{i:012d}.jpg", "height": 12, "width": 16, "id": i} for i in ids
    ]
    annotations = []
    for i in ids:
        for k in reversed(range(captions_per_image)):  # annotation order in the file is not caption order
            annotations.append({"image_id": i, "id": 1000 * i + k, "caption": f"picture {i} caption {k}"})
    return {"info": {"year": 2014}, "images": images, "licenses": [], "annotations": annotations}


@pytest.fixture
def coco_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    train_ids, val_ids = [9, 25, 30], [42, 73, 74, 133, 136]
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps(coco_json("train2014", train_ids)))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(coco_json("val2014", val_ids)))
    for folder, ids in (("train2014", train_ids[:2]), ("val2014", val_ids)):  # train image 30 is missing
        for i in ids:
            write_image(root / folder / f"COCO_{folder}_{i:012d}.jpg", (16, 12), (i, i, i))
    return root


def test_coco_splits_captions_and_missing_images(coco_root, caplog):
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm = CocoCaptionsDataModule(root=str(coco_root), image_size=8, seed=3)
        train = dm.get_split("train")
    assert train.sample_ids == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    assert any("COCO_train2014_000000000030.jpg" in r.getMessage() for r in caplog.records)
    sample = train[1]
    assert sample.pixels.shape == (1, 3, 8, 8) and abs(float(sample.pixels.float().mean()) - 25) < 4
    assert [c.text for c in sample.captions] == ["picture 25 caption 0", "picture 25 caption 1"]
    assert all(c.phrases == [] for c in sample.captions)
    val, test = dm.get_split("val").sample_ids, dm.get_split("test").sample_ids
    assert len(val) == 3 and len(test) == 2 and not set(val) & set(test)
    assert sorted(val + test) == [f"COCO_val2014_{i:012d}" for i in (42, 73, 74, 133, 136)]
    again = CocoCaptionsDataModule(root=str(coco_root), seed=3)
    assert again.get_split("val").sample_ids == val  # the seeded rule is deterministic
    other = [CocoCaptionsDataModule(root=str(coco_root), seed=s).get_split("val").sample_ids for s in range(8)]
    assert len({tuple(v) for v in other}) > 1  # and depends on the seed


def test_coco_uses_the_karpathy_split_file_when_present(coco_root):
    def entry(folder, i, split):
        name = f"COCO_{folder}_{i:012d}.jpg"
        sentences = [{"tokens": ["k"], "raw": f"karpathy {i} {k}", "imgid": i, "sentid": k} for k in range(2)]
        return {"filepath": folder, "filename": name, "split": split, "sentences": sentences, "cocoid": i}

    images = [entry("val2014", 133, "restval"), entry("train2014", 9, "train"), entry("val2014", 42, "val")]
    images += [entry("val2014", 73, "test"), entry("val2014", 74, "test")]
    (coco_root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    dm = CocoCaptionsDataModule(root=str(coco_root))
    assert dm.get_split("train").sample_ids == ["COCO_train2014_000000000009", "COCO_val2014_000000000133"]
    assert dm.get_split("val").sample_ids == ["COCO_val2014_000000000042"]
    assert len(dm.get_split("test")) == 2
    assert dm.get_split("val")[0].captions[1].text == "karpathy 42 1"
    plain = CocoCaptionsDataModule(root=str(coco_root), karpathy_split=False)
    assert len(plain.get_split("train")) == 2


# -- MSVD --------------------------------------------------------------------------------------------------------------
MSVD_CLIPS = ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "-8y1Q0rA3n8_108_115", "-AwoiGR6c8M_10_14"]
MSVD_CLIPS += ["-Cv5LsqKUXc_71_75", "-DKuLTvQ9x0_0_10"]


@pytest.fixture
def msvd_root(tmp_path) -> Path:
    root = tmp_path / "msvd"
    lines = ["# Microsoft Research Video Description Corpus (English descriptions)", "#", ""]
    for c, clip in enumerate(MSVD_CLIPS):
        lines += [f"{clip} a clip number {c} is shown", f"{clip} someone films clip {c}"]
        if clip == MSVD_CLIPS[1]:
            (root / "YouTubeClips").mkdir(parents=True, exist_ok=True)
            (root / "YouTubeClips" / f"{clip}.avi").touch()  # zero-length
        elif clip == MSVD_CLIPS[5]:
            (root / "YouTubeClips" / f"{clip}.avi").write_bytes(np.random.default_rng(1).bytes(3000))  # corrupt
        else:
            write_video(root / "YouTubeClips" / f"{clip}.avi", 30 + 40 * c)
    (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    return root


def test_msvd_proportional_split_skips_and_reports_bad_clips(msvd_root, caplog):
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm = MSVDDataModule(root=str(msvd_root), num_frames=4, frame_size=8, batch_size=2)
        dm.setup(None)
    # 6 clips sorted by id: 3 train, 1 val, 2 test (proportional to 1200:100:670); bad clips leave their own split
    assert dm.get_split("train").sample_ids == [MSVD_CLIPS[0], MSVD_CLIPS[2]]
    assert dm.get_split("val").sample_ids == [MSVD_CLIPS[3]]
    assert dm.get_split("test").sample_ids == [MSVD_CLIPS[4]]
    (summary,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]  # one line per setup
    assert summary.startswith("msvd train/val/test (train 1, test 1): skipped 2 of 6 video files")
    assert f"{MSVD_CLIPS[1]}.avi" in summary and f"{MSVD_CLIPS[5]}.avi" in summary
    sample = dm.get_split("train")[1]
    assert sample.pixels.shape == (4, 3, 8, 8) and abs(grey(sample.pixels) - 110) <= 3
    assert [c.text for c in sample.captions] == ["a clip number 2 is shown", "someone films clip 2"]
    assert {"clip", "films", "shown"} <= set(dm.vocab.stoi) and "#" not in dm.vocab.stoi
    batch = next(iter(dm.train_dataloader()))
    assert batch.pixels.shape == (2, 4, 3, 8, 8)


def test_msvd_youtube_mapping_orders_the_split(msvd_root):
    order = [5, 4, 3, 2, 0, 1]  # vid1 is MSVD_CLIPS[5] ...
    mapping = [f"{MSVD_CLIPS[c]} vid{n + 1}" for n, c in enumerate(order)]
    (msvd_root / "youtube_mapping.txt").write_text("\n".join(mapping) + "\n")
    dm = MSVDDataModule(root=str(msvd_root), num_frames=2, frame_size=8)
    assert dm.get_split("train").sample_ids == [MSVD_CLIPS[4], MSVD_CLIPS[3]]  # MSVD_CLIPS[5] is corrupt
    assert dm.get_split("val").sample_ids == [MSVD_CLIPS[2]]
    assert dm.get_split("test").sample_ids == [MSVD_CLIPS[0]]


def test_msvd_without_youtube_mapping_warns_once_that_its_split_is_not_the_standard_one(msvd_root, caplog):
    with caplog.at_level(logging.WARNING, logger="capsal"):
        MSVDDataModule(root=str(msvd_root), num_frames=2, frame_size=8).setup(None)  # builds all three splits
    (warning,) = [r.getMessage() for r in caplog.records if "youtube_mapping.txt" in r.getMessage()]
    assert "NOT the standard 1200/100/670 split" in warning and "vid1..vid1970" in warning
    caplog.clear()
    (msvd_root / "youtube_mapping.txt").write_text("\n".join(f"{c} vid{n + 1}" for n, c in enumerate(MSVD_CLIPS)))
    with caplog.at_level(logging.WARNING, logger="capsal"):
        MSVDDataModule(root=str(msvd_root), num_frames=2, frame_size=8).setup(None)
    assert not [r for r in caplog.records if "youtube_mapping.txt" in r.getMessage()]


def test_msvd_missing_descriptions_is_a_user_error(tmp_path):
    (tmp_path / "YouTubeClips").mkdir()
    with pytest.raises(UserError, match=r"AllVideoDescriptions\.txt is missing.*README section 'Datasets > MSVD'"):
        MSVDDataModule(root=str(tmp_path))


# -- MSR-VTT -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def msrvtt_root(tmp_path) -> Path:
    root = tmp_path / "msrvtt"
    splits = {"video0": "train", "video2": "train", "video10": "train", "video3": "validate", "video7": "test"}
    splits["video8"] = "test"

    def info(ids):
        videos = [
            {"category": 1, "video_id": v, "start time": 0.0, "end time": 1.0, "split": splits[v], "id": int(v[5:])}
            for v in ids
        ]
        sentences = []
        for v in ids:
            for k in (1, 0):
                sentences.append({"caption": f"{v} sentence {k}", "video_id": v, "sen_id": 100 * int(v[5:]) + k})
        return {"info": {"year": 2016}, "videos": videos, "sentences": sentences}

    root.mkdir()
    trainval = ["video0", "video2", "video10", "video3"]
    (root / "train_val_videodatainfo.json").write_text(json.dumps(info(trainval)))
    (root / "test_videodatainfo.json").write_text(json.dumps(info(["video7", "video8"])))
    for v in [*trainval, "video7"]:
        write_video(root / "videos" / f"{v}.mp4", 20 + 10 * int(v[5:]), codec="libx264")
    (root / "videos" / "video8.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # broken mp4
    return root


def test_msrvtt_splits_captions_and_corrupt_clip(msrvtt_root, caplog):
    with caplog.at_level(logging.WARNING, logger="capsal"):
        dm = MSRVTTDataModule(root=str(msrvtt_root), num_frames=3, frame_size=8)
        train, val, test = (dm.get_split(s) for s in ("train", "val", "test"))
    assert train.sample_ids == ["video0", "video2", "video10"]  # numeric order
    assert val.sample_ids == ["video3"] and test.sample_ids == ["video7"]
    assert any("video8.mp4" in r.getMessage() and "skipped 1 of 2" in r.getMessage() for r in caplog.records)
    sample = train[2]
    assert sample.pixels.shape == (3, 3, 8, 8) and abs(grey(sample.pixels) - 120) <= 3
    assert [c.text for c in sample.captions] == ["video10 sentence 0", "video10 sentence 1"]  # by sen_id


def test_msrvtt_missing_test_info_only_fails_the_test_split(msrvtt_root):
    (msrvtt_root / "test_videodatainfo.json").unlink()
    dm = MSRVTTDataModule(root=str(msrvtt_root), num_frames=2, frame_size=8)
    assert len(dm.get_split("train")) == 3
    with pytest.raises(UserError, match="no test video"):
        dm.get_split("test")


# -- Hydra configs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "fixture", "cls"),
    [
        ("flickr30k_entities", "flickr_root", Flickr30kEntitiesDataModule),
        ("coco_captions", "coco_root", CocoCaptionsDataModule),
        ("msvd", "msvd_root", MSVDDataModule),
        ("msrvtt", "msrvtt_root", MSRVTTDataModule),
    ],
)
def test_datamodule_configs_build_the_datamodules(compose_train, request, name, fixture, cls):
    root = request.getfixturevalue(fixture)
    cfg = compose_train(f"datamodule={name}", f"datamodule.root={root}", "datamodule.num_workers=0")
    dm = instantiate(cfg.datamodule)
    assert isinstance(dm, cls) and dm.root == root and dm.features_dir is None
    assert dm.hparams["root"] == str(root)
    if cls.is_video:
        assert (dm.num_frames, dm.frame_size) == (26, 299)
