"""capsal-eval under Lightning: two gloo processes with an uneven number of samples give exactly the one-process
numbers (every caption scored once), the random baseline draws per sample, a per-phrase file sits beside the tables,
and ``explainers=[]`` is captioning only."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import compose_app

from capsal.cli.evaluate import evaluate
from capsal.explainers import build_explainer
from capsal.models.s2vt import S2VT

EXPLAINERS = "explainers=[caption_guided,uniform,random]"


def run_eval(checkpoint: Path, out: Path, *overrides: str) -> dict:
    """capsal-eval as a user runs it (a subprocess: Lightning launches the DDP ranks itself)."""
    args = [f"ckpt_path={checkpoint}", f"output_dir={out}", f"hydra.run.dir={out}", "progress=false", *overrides]
    result = subprocess.run(
        [sys.executable, "-m", "capsal.cli.evaluate", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=out.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def flat(tables: dict, prefix: str = "") -> dict[str, float]:
    """``{"explainer/metric/key": value}`` of nested result tables."""
    out: dict[str, float] = {}
    for key, value in tables.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


# phrases.csv's columns computed from float32 forward passes over other batch and chunk compositions in the two runs
FORWARD_PASS_COLUMNS = ("mass_inside", "deletion_auc", "insertion_auc")


def phrase_rows(out: Path) -> tuple[list[tuple], list[tuple[float, ...]]]:
    """The per-phrase rows, sorted: their exact columns (sample, phrase, explainer, peak, hit) and, apart, the
    columns of :data:`FORWARD_PASS_COLUMNS` as numbers, to compare within float32 rounding (see the tables'
    comparison: on an AVX-512 Xeon a deletion AUC differed in its ninth digit between the two runs)."""
    with (out / "phrases.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    exact = [tuple(v for k, v in row.items() if k not in FORWARD_PASS_COLUMNS) for row in rows]
    close = [tuple(float(row[k]) if row.get(k) else float("nan") for k in FORWARD_PASS_COLUMNS) for row in rows]
    order = sorted(range(len(rows)), key=exact.__getitem__)
    return [exact[k] for k in order], [close[k] for k in order]


@pytest.mark.slow
def test_two_processes_with_uneven_samples_match_one_process(image_checkpoint, tmp_path):
    common = ["max_samples=7", "batch_size=1", EXPLAINERS, "caption_metrics=[bleu]"]
    one = run_eval(image_checkpoint, tmp_path / "one", *common, "trainer=cpu")
    two = run_eval(image_checkpoint, tmp_path / "two", *common, "trainer=ddp", "trainer.accelerator=cpu")
    assert one["samples"] == two["samples"] == 7  # ranks got 4 and 3 samples: none padded in twice
    assert one["captions"] == two["captions"] and one["phrases"] == two["phrases"] > 0
    # every phrase scored once on one rank: the same hits; masses are float32 forward passes over other chunk
    # compositions, scaled to [0, 1] per map (Eq. 8, which magnifies float32 rounding where a map's range is small)
    # and summed over ranks in another order. One sample per batch, so the backbone sees the same inputs in both runs:
    # with two (samples 0+1 in one process, 0+2 on rank zero) a near-flat map's peak moved by a pixel on a Xeon with
    # AMX, and the rows below differed
    pointing = {key: value for key, value in flat(one["localisation"]).items() if "pointing_game" in key}
    assert {key: flat(two["localisation"])[key] for key in pointing} == pytest.approx(pointing, abs=0, nan_ok=True)
    assert flat(two["localisation"]) == pytest.approx(flat(one["localisation"]), rel=1e-4, nan_ok=True)
    # the 95% intervals (in the comparisons above: "<key>_low", "<key>_high") are resampled on rank zero from the
    # gathered per-phrase records: one process's, the pointing game's and its paired differences exactly
    assert "caption_guided/pointing_game/avg_low" in pointing
    differences = {key: value for key, value in flat(one["paired_differences"]).items() if "pointing_game" in key}
    assert {key: flat(two["paired_differences"])[key] for key in differences} == differences
    assert two["captioning"] == one["captioning"]
    (exact_two, close_two), (exact_one, close_one) = phrase_rows(tmp_path / "two"), phrase_rows(tmp_path / "one")
    assert exact_two == exact_one
    two_values, one_values = torch.tensor(close_two, dtype=torch.float64), torch.tensor(close_one, dtype=torch.float64)
    assert torch.allclose(two_values, one_values, rtol=1e-5, atol=0, equal_nan=True)


def test_the_phrase_file_holds_every_scored_phrase_and_agrees_with_the_tables(image_checkpoint, tmp_path):
    results = evaluate(compose_app("eval", tmp_path, f"ckpt_path={image_checkpoint}", "max_samples=6", EXPLAINERS))
    with (tmp_path / "phrases.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for name in ("caption_guided", "uniform", "random"):
        mine = [row for row in rows if row["explainer"] == name]
        assert len(mine) == results["phrases"]
        hits = [row["hit"] == "True" for row in mine]
        assert sum(hits) / len(hits) == pytest.approx(results["localisation"][name]["pointing_game"]["avg"])
        masses = [float(row["mass_inside"]) for row in mine]
        assert sum(masses) / len(masses) == pytest.approx(results["localisation"][name]["attention_correctness"]["avg"])
    start, end = json.loads(rows[0]["span"])
    assert rows[0]["phrase"] == " ".join(rows[0]["caption"].split()[start:end])


def test_no_explainers_is_captioning_only(image_checkpoint, tmp_path, caplog):
    results = evaluate(compose_app("eval", tmp_path, f"ckpt_path={image_checkpoint}", "max_samples=4", "explainers=[]"))
    assert results["localisation"] == {} and set(results["captioning"]) >= {"bleu4", "meteor"}
    assert not (tmp_path / "phrases.csv").exists()
    assert "Table 3: captioning" in (tmp_path / "tables.md").read_text()


def test_the_random_baseline_is_reproducible_per_sample_and_independent_across_samples():
    torch.manual_seed(0)
    model = S2VT(["a", "red", "circle"], hidden_size=8, embed_size=4).eval()
    items = torch.randn(3, 5, model.feature_size)
    explainer = build_explainer("random")
    sentences = ["a red circle", "a red circle red circle", "a circle"]
    together = explainer.explain(model, items, tokens=sentences, sample_ids=["x", "y", "z"]).scores
    alone = explainer.explain(model, items[2:], tokens=sentences[2:], sample_ids=["z"]).scores
    # the same sample, in another batch (padded to another length): the same map
    torch.testing.assert_close(alone[0], together[2, : alone.shape[1]])
    assert not torch.equal(together[0], together[1])  # another sample: another map
    first = explainer.explain(model, items, tokens="a red circle").scores
    second = explainer.explain(model, items, tokens="a red circle").scores
    assert not torch.equal(first, second)  # without ids, calls do not repeat each other's maps
