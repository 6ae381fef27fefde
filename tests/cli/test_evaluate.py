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
    # S2VT has neither attention weights nor attention maps: soft_attention, rollout and relevancy are left out
    expected = ["caption_guided", "gradient", "gradcam", "integrated_gradients", "uniform", "center", "random"]
    assert list(localisation) == expected
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
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["captioning"]["bleu1"] > 0 and saved["schema_version"] == 2
    # every table number with its 95% interval over samples beside it, bracketing it, in the CSV as in results.json
    for metric in ("pointing_game", "attention_correctness"):
        with (tmp_path / f"{metric}.csv").open() as handle:
            header, *lines = list(csv.reader(handle))
        rows = [dict(zip(header, line, strict=True)) for line in lines]
        for category in ("circle", "square", "triangle", "diamond", "avg"):
            assert header[header.index(category) + 1 : header.index(category) + 3] == [
                f"{category}_low",
                f"{category}_high",
            ]
        for row in rows:
            values = saved["localisation"][row["explainer"]][metric]
            for column in ("circle", "avg"):
                low, value, high = (float(row[column + end]) for end in ("_low", "", "_high"))
                assert (low, value, high) == pytest.approx(
                    (values[f"{column}_low"], values[column], values[f"{column}_high"])
                )
                assert low <= value <= high
                assert low < high or value in (0.0, 1.0)
    guided = saved["localisation"]["caption_guided"]["pointing_game"]
    cell = f"{guided['avg']:.3f} [{guided['avg_low']:.3f}, {guided['avg_high']:.3f}]"
    table1 = tables.split("Table 1")[1].split("Table 2")[0]
    row = next(line for line in table1.splitlines() if line.startswith("| caption_guided |"))
    assert row.endswith(f"| {cell} |")  # Avg per NP, the last column, shows its interval
    # a category's interval resamples only the images with a phrase of it: fewer phrases, a wider interval
    widths = {key: guided[f"{key}_high"] - guided[f"{key}_low"] for key in ("circle", "square", "triangle", "avg")}
    assert max(widths.values()) > widths["avg"]
    # paired differences from caption_guided: its own table and CSV, the difference of the two table numbers
    differences = saved["paired_differences"]
    assert set(differences) == set(localisation) - {"caption_guided"}
    for name, by_metric in differences.items():
        for metric in ("pointing_game", "attention_correctness"):
            assert by_metric[metric] == pytest.approx(
                localisation[name][metric]["avg"] - localisation["caption_guided"][metric]["avg"]
            )
            assert by_metric[f"{metric}_low"] <= by_metric[metric] <= by_metric[f"{metric}_high"]
    uniform = differences["uniform"]["pointing_game"]
    assert f"{uniform:.3f} [" in tables.split("Paired difference")[1]
    with (tmp_path / "paired_differences.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["explainer", "pointing_game", "pointing_game_low", "pointing_game_high"]
    # deletion and insertion (16 steps) of every phrase: nothing removed is everything inserted, and the reverse
    for name, curves in saved["faithfulness_curves"].items():
        assert len(curves["deletion"]) == len(curves["insertion"]) == 17
        assert curves["deletion"][0] == pytest.approx(curves["insertion"][-1])
        assert curves["deletion"][-1] == pytest.approx(curves["insertion"][0])
        assert 0.0 <= localisation[name]["deletion"]["avg_low"] <= localisation[name]["deletion"]["avg"]
    assert "Deletion" in tables and "Insertion" in tables
    assert saved["bootstrap"] == {
        "over": "samples",
        "resamples": 1000,
        "level": 0.95,
        "seed": 0,
        "reference": "caption_guided",
    }


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
    assert stages[0] == "up to output" and stages[-1] == "up to backbone"  # named by the stage randomised last
    assert results["sanity_steps"]["up to decoder"] == ["output", "decoder"]
    assert results["sanity_steps"][stages[-1]][-1] == "backbone" and len(results["sanity_steps"]) == len(stages)
    assert all(value == pytest.approx(1.0) for value in sanity["center"].values())
    assert sanity["caption_guided"][stages[-1]] < 0.9
    # each stage is measured on its own model, not all on the fully randomised one
    assert len({round(value, 6) for value in sanity["caption_guided"].values()}) > 1
    assert "Sanity check" in (tmp_path / "tables.md").read_text()
    with (tmp_path / "sanity.csv").open() as handle:
        assert next(csv.reader(handle)) == ["explainer", *stages]
    # the leaderboard: printed first, written beside the tables; each number with its interval
    board = results["leaderboard"]
    column = "sanity: correlation, all randomised (lower is better)"
    assert board["center"][column] == pytest.approx(1.0) and board["center"][f"{column}_low"] == pytest.approx(1.0)
    assert board["caption_guided"][column] == pytest.approx(sanity["caption_guided"][stages[-1]])
    for name in ("caption_guided", "center"):
        assert board[name]["pointing game"] == results["localisation"][name]["pointing_game"]["avg"]
        assert board[name]["deletion (lower is better)"] == results["localisation"][name]["deletion"]["avg"]
        assert board[name]["ms per caption_low"] <= board[name]["ms per caption"] <= board[name]["ms per caption_high"]
    leaderboard_md = (tmp_path / "leaderboard.md").read_text()
    assert (tmp_path / "tables.md").read_text().startswith(leaderboard_md.strip())
    with (tmp_path / "leaderboard.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["explainer", "pointing game", "pointing game_low", "pointing game_high"]


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
        assert set(values) == {"temporal_pointing", "spatial_pointing"} | {
            f"{where}{kind}" for where in ("", "spatial_") for kind in ("deletion", "insertion")
        }
        assert 0.0 <= values["temporal_pointing"]["avg"] <= 1.0
    tables = (tmp_path / "tables.md").read_text()
    assert "Temporal pointing" in tables
    # temporal pointing has its intervals (from the per-phrase records); spatial pointing is not recorded per phrase
    guided = results["localisation"]["caption_guided"]
    assert (
        guided["temporal_pointing"]["avg_low"]
        <= guided["temporal_pointing"]["avg"]
        <= guided["temporal_pointing"]["avg_high"]
    )
    assert "avg_low" not in guided["spatial_pointing"]
    assert set(results["paired_differences"]) == {"random", "center"}
    # deletion and insertion of frames, and of the cells inside each phrase's most salient frame, with intervals
    for metric in ("deletion", "spatial_deletion", "spatial_insertion"):
        assert guided[metric]["avg_low"] <= guided[metric]["avg"] <= guided[metric]["avg_high"]
    assert set(results["leaderboard"]["caption_guided"]) >= {
        "temporal pointing",
        "spatial pointing",
        "deletion (lower is better)",
    }
    assert f"{guided['temporal_pointing']['avg']:.3f} [{guided['temporal_pointing']['avg_low']:.3f}," in tables


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
