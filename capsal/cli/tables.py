"""What ``capsal-eval`` writes: the tables (Markdown on screen and in ``tables.md``, one CSV each), the leaderboard,
``results.json`` and ``phrases.csv``; every number with its 95% interval where it has one."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsal.metrics.intervals import LEVEL, RESAMPLES, Interval, per_sample, record_intervals, sample_bootstrap

# results.json's layout; 2: each table number's 95% interval beside it (``<key>_low``, ``<key>_high``), the paired
# differences under ``paired_differences``, the bootstrap's settings under ``bootstrap``, sanity steps named by the
# stage randomised last (``sanity_steps`` lists every stage of each); 1 (no ``schema_version``): a separate
# ``intervals`` section, sanity steps named by every stage joined with ``+``
SCHEMA_VERSION = 2
REFERENCE = "caption_guided"  # the explainer every other is compared with, on the same resampled samples

TABLE_TITLES = {
    "pointing_game": "Table 1: pointing game",
    "attention_correctness": "Table 2: attention correctness",
    "temporal_pointing": "Temporal pointing game (most salient frame inside the phrase's interval)",
    "spatial_pointing": "Spatial pointing inside the most salient frame",
    "deletion": "Deletion: area under the phrase's probability as its most salient items go (lower is better)",
    "insertion": "Insertion: area under the phrase's probability as its most salient items come (higher is better)",
    "spatial_deletion": "Deletion inside the most salient frame: its cells go, most salient first (lower is better)",
    "spatial_insertion": "Insertion inside the most salient frame: that frame alone, its cells come (higher is better)",
}


# the leaderboard's columns: (results' localisation metric, column name), the first present of each group
LEADERBOARD_METRICS = (
    (("pointing_game", "pointing game"), ("temporal_pointing", "temporal pointing")),
    (("attention_correctness", "attention correctness"), ("spatial_pointing", "spatial pointing")),
    (("deletion", "deletion (lower is better)"),),
    (("insertion", "insertion (higher is better)"),),
)
SANITY_COLUMN = "sanity: correlation, all randomised (lower is better)"
MS_COLUMN = "ms per caption"


def leaderboard(
    localisation: dict[str, dict[str, dict[str, float]]],
    timings: dict[str, list[tuple[float, int]]],
    sanity: tuple[dict[str, torch.Tensor], list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """One row per explainer: each table's average (with its interval), the sanity check's rank correlation after
    every stage is randomised (``sanity``: per-phrase correlations and each phrase's sample; interval over samples)
    and the milliseconds one caption takes to explain (interval over the evaluation's batches)."""
    rows: dict[str, dict[str, float]] = {}
    for name, metrics in localisation.items():
        row: dict[str, float] = {}
        for group in LEADERBOARD_METRICS:
            for metric, column in group:
                if metric in metrics:
                    values = metrics[metric]
                    row.update({column + end: values[f"avg{end}"] for end in ("", *_BOUNDS) if f"avg{end}" in values})
                    break
        if sanity is not None and name in sanity[0]:
            row.update(_ratio_cells(SANITY_COLUMN, *per_sample(sanity[0][name].numpy(), sanity[1])))
        seconds, captions = np.array(timings.get(name, []), dtype=np.float64).reshape(-1, 2).T
        if captions.sum() > 0:
            row.update(_ratio_cells(MS_COLUMN, 1000 * seconds, captions))
        rows[name] = row
    return rows


def _ratio_cells(column: str, sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """``column`` and its interval from per-unit sums and counts (samples, or batches for timings)."""
    interval = sample_bootstrap(sums, counts)
    return _with_bounds({column: interval.estimate}, {column: interval})


def write_phrase_records(records: list[dict[str, Any]], path: Path) -> None:
    """One row per (phrase, explainer): where the map points and whether it hit, so failures can be looked at."""
    if not records:
        return
    columns = list(dict.fromkeys(key for record in records for key in record))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


def interval_results(
    localisation: dict[str, dict[str, dict[str, float]]], records: list[dict[str, Any]], categories: list[str]
) -> dict[str, Any]:
    """Put each table number's 95% interval beside it in ``localisation`` (``<key>_low``, ``<key>_high``, in place,
    so the CSV columns and results.json keys follow the number they bound); return the bootstrap's settings and the
    paired differences from ``REFERENCE`` in the same layout (``{explainer: {metric: value, metric_low, ...}}``)."""
    intervals = record_intervals(records, categories, reference=REFERENCE)
    differences: dict[str, dict[str, float]] = {}
    for name, by_metric in intervals.items():
        for metric, by_key in by_metric.items():
            values = localisation.get(name, {}).get(metric)
            if values is not None:
                bounds = {key: interval for key, interval in by_key.items() if key in values}
                localisation[name][metric] = _with_bounds(values, bounds)
            difference = by_key.get(f"minus_{REFERENCE}")
            if difference is not None:
                mine = differences.setdefault(name, {})
                mine.update(_with_bounds({metric: difference.estimate}, {metric: difference}))
    settings = {"over": "samples", "resamples": RESAMPLES, "level": LEVEL, "seed": 0, "reference": REFERENCE}
    return {"bootstrap": settings, "paired_differences": differences}


def _with_bounds(values: dict[str, float], bounds: dict[str, Interval]) -> dict[str, float]:
    """``values`` with ``<key>_low`` and ``<key>_high`` right after each key that has an interval."""
    out: dict[str, float] = {}
    for key, value in values.items():
        out[key] = value
        if key in bounds:
            out[f"{key}_low"], out[f"{key}_high"] = bounds[key].low, bounds[key].high
    return out


_BOUNDS = ("_low", "_high")


def bounded_columns(rows: dict[str, dict[str, float]], columns: list[str]) -> list[str]:
    """The CSV columns: each of ``columns`` followed by its ``_low`` and ``_high`` where some row has them."""
    out = []
    for column in columns:
        out.append(column)
        if any(f"{column}_low" in values for values in rows.values()):
            out += [f"{column}_low", f"{column}_high"]
    return out


def markdown_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A Markdown table, one row per entry of ``rows``; a number with ``<column>_low``/``_high`` beside it shows its
    interval in the cell (``0.881 [0.850, 0.910]``)."""
    header = ["explainer", *columns]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows.items():
        lines.append("| " + " | ".join([name, *[_cell(values, c) for c in columns]]) + " |")
    return "\n".join(lines)


def _cell(values: dict[str, float], column: str) -> str:
    value = values.get(column, float("nan"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if f"{column}_low" in values:
        return str(Interval(value, values[f"{column}_low"], values[f"{column}_high"]))
    return f"{value:.3f}"


def write_results(results: dict[str, Any], categories: list[str], output_dir: Path) -> str:
    """Markdown on screen and in ``tables.md``; one CSV per table; everything in ``results.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    localisation = results["localisation"]
    blocks = []
    if results.get("leaderboard"):
        board = results["leaderboard"]
        columns = [c for c in dict.fromkeys(c for row in board.values() for c in row) if not c.endswith(_BOUNDS)]
        blocks.append(markdown_table("Leaderboard: every explainer, Avg per NP", board, columns))
        (output_dir / "leaderboard.md").write_text(blocks[-1] + "\n")
        _write_csv(output_dir / "leaderboard.csv", board, columns)
    metric_names = next(iter(localisation.values())).keys() if localisation else []
    for metric in metric_names:
        rows = {name: values[metric] for name, values in localisation.items()}
        present = [c for c in [*categories, "other"] if any(not math.isnan(r.get(c, math.nan)) for r in rows.values())]
        columns = [*present, "avg"]
        blocks.append(
            markdown_table(TABLE_TITLES.get(metric, metric), rows, columns).replace("| avg |", "| Avg per NP |")
        )
        _write_csv(output_dir / f"{metric}.csv", rows, [*columns, "skipped"])
    if "bootstrap" in results:
        blocks.append(_brackets_note(results["bootstrap"]))
    differences = results.get("paired_differences")
    if differences:
        names = [m for m in dict.fromkeys(m for by in differences.values() for m in by) if not m.endswith(_BOUNDS)]
        title = f"Paired difference: explainer minus {results['bootstrap']['reference']} (Avg per NP, same samples)"
        blocks.append(markdown_table(title, differences, names))
        _write_csv(output_dir / "paired_differences.csv", differences, names)
    if "captioning" in results:
        names = list(results["captioning"])
        blocks.append(markdown_table("Table 3: captioning", {"model": results["captioning"]}, names))
        _write_csv(output_dir / "captioning.csv", {"model": results["captioning"]}, names)
    if "sanity" in results:
        stages = list(next(iter(results["sanity"].values())).keys())  # "up to <stage>", one per cumulative step
        blocks.append(
            markdown_table("Sanity check: rank correlation with the original maps", results["sanity"], stages)
        )
        _write_csv(output_dir / "sanity.csv", results["sanity"], stages)
    text = "\n\n".join(blocks)
    (output_dir / "tables.md").write_text(text + "\n")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(text)
    print(
        f"\ncapsal-eval: {results['phrases']} phrases in {results['captions']} captions of {results['samples']} "
        f"samples; tables in {output_dir}"
    )
    return text


def _brackets_note(bootstrap: dict[str, Any]) -> str:
    """Says what the brackets in the tables are."""
    return (
        f"Brackets: {bootstrap['level']:.0%} interval, bootstrap over {bootstrap['over']} (images or clips, with all "
        f"their phrases), {bootstrap['resamples']:,} resamples, seed {bootstrap['seed']}."
    )


def _write_csv(path: Path, rows: dict[str, dict[str, float]], columns: list[str]) -> None:
    """One row per explainer; each column with an interval followed by its ``_low`` and ``_high`` columns."""
    columns = bounded_columns(rows, columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["explainer", *columns])
        for name, values in rows.items():
            writer.writerow([name, *[values.get(c, "") for c in columns]])
