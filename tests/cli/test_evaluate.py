"""capsal-eval: the paper's tables from one command, on both synthetic datasets."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from tiny import compose_app

from capsal.cli.evaluate import evaluate
from capsal.datamodules import ShapesImageDataModule


def test_image_tables_for_every_default_explainer(image_checkpoint, tmp_path):
    results = evaluate(
        compose_app("eval", tmp_path, f"ckpt_path={image_checkpoint}", "max_samples=12", "caption_metrics=[bleu]")
    )
    localisation = results["localisation"]
    assert list(localisation) == ["caption_guided", "gradient", "uniform", "center", "random"]  # no attention in S2VT
    for values in localisation.values():
        for metric in ("pointing_game", "attention_correctness"):
            assert 0.0 <= values[metric]["avg"] <= 1.0
            assert values[metric]["skipped"] == 0
    # uniform and centre maps both point at the image centre: the same hits, and exactly the phrases whose box
    # holds the centre pixel (ties go to the centroid: (31.5, 31.5) rounds to pixel 32)
    dm = ShapesImageDataModule(num_train=64, num_val=16, num_test=16, batch_size=16)
    phrases = [p for i in range(12) for c in dm.sample("test", i).captions for p in c.phrases]
    expected = sum(any(x0 <= 32 <= x1 and y0 <= 32 <= y1 for x0, y0, x1, y1 in p.boxes) for p in phrases) / len(phrases)
    assert results["phrases"] == len(phrases)
    assert localisation["uniform"]["pointing_game"]["avg"] == pytest.approx(expected)
    assert localisation["center"]["pointing_game"]["avg"] == pytest.approx(expected)
    # uniform attention correctness is the mean box area share
    area = sum((p.boxes[0][2] - p.boxes[0][0] + 1) * (p.boxes[0][3] - p.boxes[0][1] + 1) / 64**2 for p in phrases)
    assert localisation["uniform"]["attention_correctness"]["avg"] == pytest.approx(area / len(phrases))
    tables = (tmp_path / "tables.md").read_text()
    assert "Table 1: pointing game" in tables and "Table 2: attention correctness" in tables
    assert "Avg per NP" in tables and "Table 3: captioning" in tables
    with (tmp_path / "pointing_game.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["explainer"] for r in rows] == list(localisation)
    assert {"circle", "square", "triangle", "diamond", "avg"} <= set(rows[0])
    assert json.loads((tmp_path / "results.json").read_text())["captioning"]["bleu1"] > 0
    # every table number with its 95% interval over samples, the same number the table shows, and paired differences
    intervals = json.loads((tmp_path / "results.json").read_text())["intervals"]
    for name, values in localisation.items():
        for metric in ("pointing_game", "attention_correctness"):
            interval = intervals[name][metric]["avg"]
            assert interval["estimate"] == pytest.approx(values[metric]["avg"])
            assert interval["low"] <= interval["estimate"] <= interval["high"]
            assert interval["low"] < interval["high"] or values[metric]["avg"] in (0.0, 1.0)
            if name != "caption_guided":
                difference = intervals[name][metric]["minus_caption_guided"]["estimate"]
                assert difference == pytest.approx(
                    values[metric]["avg"] - localisation["caption_guided"][metric]["avg"]
                )
    assert "95% intervals: bootstrap over samples" in tables


def test_sanity_check_separates_model_based_explainers_from_baselines(image_checkpoint, tmp_path):
    results = evaluate(
        compose_app(
            "eval",
            tmp_path,
            f"ckpt_path={image_checkpoint}",
            "max_samples=6",
            "caption_metrics=[]",
            "explainers=[caption_guided,center]",
            "sanity=true",
        )
    )
    sanity = results["sanity"]
    stages = list(sanity["center"])
    assert stages[0] == "output" and stages[-1].endswith("backbone")
    assert all(value == pytest.approx(1.0) for value in sanity["center"].values())
    assert sanity["caption_guided"][stages[-1]] < 0.9
    # each stage is measured on its own model, not all on the fully randomised one
    assert len({round(value, 6) for value in sanity["caption_guided"].values()}) > 1
    assert "Sanity check" in (tmp_path / "tables.md").read_text()


def test_video_tables_report_temporal_and_spatial_pointing(video_checkpoint, tmp_path):
    results = evaluate(
        compose_app(
            "eval",
            tmp_path,
            f"ckpt_path={video_checkpoint}",
            "max_samples=6",
            "caption_metrics=[]",
            "explainers=[caption_guided,random,center]",
        )
    )
    for values in results["localisation"].values():
        assert set(values) == {"temporal_pointing", "spatial_pointing"}
        assert 0.0 <= values["temporal_pointing"]["avg"] <= 1.0
    assert "Temporal pointing" in (tmp_path / "tables.md").read_text()


@pytest.mark.parametrize(
    ("consumers", "backbone_images"),
    # explained: one probe image (capsal-eval reads the grid's shape from one sample), then the six samples
    [(("explainers=[caption_guided]",), [1, 6]), (("explainers=[]", "caption_metrics=[]"), [])],
    ids=["explained_and_captioned", "only_counted"],
)
def test_the_backbone_sees_each_sample_once_whatever_its_caption_count(
    image_checkpoint, tmp_path, consumers, backbone_images
):
    """Every reference caption is a row of its own (three per shapes image); the backbone's grid of a sample is
    computed once and shared by its rows and its generated caption, and not at all when nothing reads it."""
    from capsal.models.backbones import SmallCNN

    images: list[int] = []

    def count(module, inputs, output):
        if isinstance(module, SmallCNN):
            images.append(inputs[0].shape[0])

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        results = evaluate(compose_app("eval", tmp_path, f"ckpt_path={image_checkpoint}", "max_samples=6", *consumers))
    finally:
        hook.remove()
    assert results["samples"] == 6 and results["captions"] == 18
    probe_and_passes = [images[0], sum(images[1:])] if images else []
    assert probe_and_passes == backbone_images


def test_mixed_precision_trainer_gives_the_float32_tables(image_checkpoint, tmp_path):
    """Under ``trainer.precision=bf16-mixed`` the backbone's grid comes out of Lightning's autocast in bfloat16;
    the explainers (precision 32 by default) still run in float32 and give the float32 run's hits."""
    overrides = (
        f"ckpt_path={image_checkpoint}",
        "max_samples=8",
        "caption_metrics=[]",
        "explainers=[caption_guided,gradient]",
    )
    mixed = evaluate(compose_app("eval", tmp_path / "mixed", *overrides, "trainer.precision=bf16-mixed"))
    full = evaluate(compose_app("eval", tmp_path / "full", *overrides))
    assert mixed["phrases"] == full["phrases"] > 0
    for name in ("caption_guided", "gradient"):
        assert mixed["localisation"][name]["pointing_game"]["avg"] == pytest.approx(
            full["localisation"][name]["pointing_game"]["avg"], abs=1.01 / full["phrases"]
        ), "more than one phrase's hit changed"
