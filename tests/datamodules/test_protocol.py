"""The image protocol (``datamodule.protocol``: full or center_crop) from the datamodule to the scored metrics and
the cache manifest, on a Flickr30k Entities miniature with non-square images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image
from test_real_datasets import annotation_xml

from capsal.datamodules.coco import CocoCaptionsDataModule
from capsal.datamodules.features import extract_split, read_manifest
from capsal.datamodules.flickr30k_entities import Flickr30kEntitiesDataModule, scale_box
from capsal.datamodules.framing import center_crop_region, center_square, crop_boxes
from capsal.errors import UserError
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainer
from capsal.models.s2vt import S2VT

TINY_CNN = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 4]}
# id -> (width, height, sentence, objects): a landscape and a portrait image; XML boxes are 1-based inclusive
IMAGES = {
    "1": (
        40,
        30,
        "[/EN#1/people A man] near [/EN#2/other a post] .",
        [(["1"], (1, 1, 10, 20)), (["2"], (1, 1, 4, 30))],
    ),
    "2": (
        20,
        36,
        "[/EN#3/people A child] under [/EN#4/scene the sky] .",
        [(["3"], (3, 10, 12, 30)), (["4"], (1, 1, 20, 5))],
    ),
}


def striped(width: int, height: int) -> Image.Image:
    """Column x has red level 5 * x and row y green level 5 * y, so a crop shows which pixels it kept."""
    xs = torch.arange(width).mul(5).expand(height, width)
    ys = torch.arange(height).mul(5)[:, None].expand(height, width)
    return Image.fromarray(torch.stack([xs, ys, torch.zeros_like(xs)], -1).to(torch.uint8).numpy())


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "f30k"
    for folder in ("Sentences", "Annotations", "flickr30k-images"):
        (root / folder).mkdir(parents=True)
    for image_id, (width, height, sentence, objects) in IMAGES.items():
        (root / "Sentences" / f"{image_id}.txt").write_text(sentence + "\n")
        xml = annotation_xml(image_id, width, height, [(names, box, 0, 0) for names, box in objects])
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        striped(width, height).save(root / "flickr30k-images" / f"{image_id}.jpg", format="PNG")  # lossless pixels
    for split in ("train", "val", "test"):
        (root / f"{split}.txt").write_text("1\n2\n")
    return root


def test_full_keeps_original_sizes_and_boxes_next_to_the_resized_pixels(root):
    dm = Flickr30kEntitiesDataModule(root=str(root), image_size=16)
    assert dm.protocol == "full"
    landscape, portrait = dm.get_split("test")[0], dm.get_split("test")[1]
    assert landscape.pixels.shape == portrait.pixels.shape == (1, 3, 16, 16)
    assert landscape.captions[0].original_size == (30, 40) and portrait.captions[0].original_size == (36, 20)
    man, post = landscape.captions[0].phrases
    assert man.original_boxes == [(0, 0, 9, 19)] and post.original_boxes == [(0, 0, 3, 29)]
    assert man.boxes == [scale_box((0, 0, 9, 19), 16 / 40, 16 / 30)]  # figures draw on the resized pixels
    child, sky = portrait.captions[0].phrases
    assert child.original_boxes == [(2, 9, 11, 29)] and sky.original_boxes == [(0, 0, 19, 4)]


def test_center_crop_keeps_the_central_square_and_clips_the_boxes(root):
    dm = Flickr30kEntitiesDataModule(root=str(root), image_size=None, batch_size=1, protocol="center_crop")
    landscape, portrait = dm.get_split("test")[0], dm.get_split("test")[1]
    # 40x30: the 30x30 square from column 5; 20x36: the 20x20 square from row 8
    assert landscape.pixels.shape == (1, 3, 30, 30) and portrait.pixels.shape == (1, 3, 20, 20)
    assert landscape.pixels[0, 0, 0, :].tolist() == [5 * x for x in range(5, 35)]  # red = 5 * original column
    assert portrait.pixels[0, 1, :, 0].tolist() == [5 * y for y in range(8, 28)]  # green = 5 * original row
    assert landscape.captions[0].original_size == (30, 30) and portrait.captions[0].original_size == (20, 20)
    man, post = landscape.captions[0].phrases
    assert man.original_boxes == man.boxes == [(0, 0, 4, 19)]  # (0, 0, 9, 19) moved 5 left, clipped at 0
    assert post.original_boxes == post.boxes == []  # (0, 0, 3, 29) lies left of the crop
    child, sky = portrait.captions[0].phrases
    assert child.original_boxes == [(2, 1, 11, 19)]  # (2, 9, 11, 29) moved 8 up, clipped at row 19
    assert sky.original_boxes == []  # rows 0..4 lie above the crop

    resized = Flickr30kEntitiesDataModule(root=str(root), image_size=16, protocol="center_crop").get_split("test")[0]
    assert resized.pixels.shape == (1, 3, 16, 16) and resized.captions[0].original_size == (30, 30)
    assert resized.captions[0].phrases[0].boxes == [scale_box((0, 0, 4, 19), 16 / 30, 16 / 30)]
    assert int(resized.pixels[0, 0, 0, 0]) > 25  # the left 5 columns (red < 25) are gone


def test_coco_center_crop_squares_the_images(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    images = [{"file_name": "a.jpg", "height": 12, "width": 20, "id": 1}]
    annotations = [{"image_id": 1, "id": 1, "caption": "stripes"}]
    for split in ("train", "val"):
        (root / "annotations" / f"captions_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
        (root / f"{split}2014").mkdir()
        striped(20, 12).save(root / f"{split}2014" / "a.jpg", format="PNG")
    crop = CocoCaptionsDataModule(root=str(root), image_size=None, protocol="center_crop").get_split("train")[0]
    assert crop.pixels.shape == (1, 3, 12, 12) and crop.pixels[0, 0, 0, :].tolist() == [5 * x for x in range(4, 16)]
    full = CocoCaptionsDataModule(root=str(root), image_size=None).get_split("train")[0]
    assert full.pixels.shape == (1, 3, 12, 20)
    with pytest.raises(UserError, match=r"^datamodule\.protocol='square' is unknown; use one of full, center_crop"):
        CocoCaptionsDataModule(root=str(root), protocol="square")


@pytest.mark.parametrize("protocol", ["full", "center_crop"])
def test_maps_are_scored_at_each_images_original_size_or_crop(root, protocol):
    """A uniform map's attention correctness is (box area) / (image area) in the frame it is scored in."""
    dm = Flickr30kEntitiesDataModule(root=str(root), image_size=16, batch_size=2, protocol=protocol)
    model = S2VT(dm.vocab, hidden_size=8, embed_size=8, backbone=TINY_CNN, caption_metrics=[]).eval()
    evaluator = LocalisationEvaluator({"uniform": build_explainer("uniform")}, dm.categories)
    samples = [dm.get_split("test")[i] for i in range(2)]
    for batch in batches_of(caption_pairs(samples), model.vocab, 2):  # one batch: both images, different sizes
        evaluator.update(model, batch)
    scores = evaluator.compute()["uniform"]["attention_correctness"]
    if protocol == "full":  # man 10x20 of 40x30, post 4x30 of 40x30, child 10x21 of 20x36, sky 20x5 of 20x36
        expected = {"people": (200 / 1200 + 210 / 720) / 2, "other": 120 / 1200, "scene": 100 / 720, "skipped": 0}
    else:  # man 5x20 of the 30x30 crop, child 10x19 of the 20x20 crop; post and sky fall outside their crops
        expected = {"people": (100 / 900 + 190 / 400) / 2, "skipped": 2}
    assert {k: scores[k] for k in expected} == pytest.approx(expected)


def test_a_cache_is_only_read_with_its_own_protocol(root, tmp_path):
    cache = tmp_path / "cache"
    extract_split(Flickr30kEntitiesDataModule(root=str(root), image_size=16), "val", TINY_CNN, cache, progress=False)
    assert read_manifest(cache / "val")["settings"]["datamodule"]["protocol"] == "full"
    cropped = Flickr30kEntitiesDataModule(root=str(root), image_size=16, protocol="center_crop")
    with pytest.raises(UserError, match=r"datamodule\.protocol='full' but this run has datamodule\.protocol='center_"):
        extract_split(cropped, "val", TINY_CNN, cache, progress=False)
    reader = Flickr30kEntitiesDataModule(root=str(root), image_size=16, protocol="center_crop", features_dir=str(cache))
    with pytest.raises(UserError, match=r"^[^\n]*datamodule\.protocol='full' but the datamodule has 'center_crop'"):
        reader.get_split("val")
    manifest = json.loads((cache / "val" / "manifest.json").read_text())
    del manifest["settings"]["datamodule"]["protocol"]  # a cache from before the protocol: whole images
    (cache / "val" / "manifest.json").write_text(json.dumps(manifest))
    full = Flickr30kEntitiesDataModule(root=str(root), image_size=16, features_dir=str(cache))
    assert full.get_split("val")[1].captions[0].original_size == (36, 20)
    with pytest.raises(UserError, match=r"datamodule\.protocol='full' but the datamodule has 'center_crop'"):
        reader.get_split("val")


def test_the_crop_geometry_cuts_pixels_and_boxes_alike():
    assert center_crop_region(10, 20) == (0, 5, 10)  # landscape: columns 5..14
    assert center_crop_region(20, 10) == (5, 0, 10)  # portrait: rows 5..14
    assert center_crop_region(7, 7) == (0, 0, 7)
    boxes = [(0, 0, 9, 9), (0, 0, 3, 9), (16, 0, 19, 9), (12, 0, 14, 4)]
    # moved into the crop and clipped; those entirely left or right of it dropped
    assert crop_boxes(boxes, *center_crop_region(10, 20)) == [(0, 0, 4, 9), (7, 0, 9, 4)]
    pixels = torch.arange(10 * 20, dtype=torch.uint8).reshape(1, 1, 10, 20).expand(1, 3, 10, 20)
    square = center_square(pixels)
    assert square.shape == (1, 3, 10, 10) and square[0, 0, 0].tolist() == list(range(5, 15))
    assert center_square(pixels, 4).shape == (1, 3, 4, 4) and center_square(pixels, (6, 8)).shape == (1, 3, 6, 8)


def test_the_extract_config_takes_the_protocol():
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        cfg = compose(config_name="extract", overrides=["datamodule.protocol=center_crop", "features_dir=x"])
    assert cfg.datamodule.protocol == "center_crop"
