"""``capsal-eval``: the paper's tables (pointing game, attention correctness, captioning; temporal pointing for
video) for one checkpoint on a dataset with ground truth, plus an optional model-randomisation sanity check."""

from __future__ import annotations

import csv
import json
import logging
import math
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from capsal.checkpoints import checkpoint_datamodule, load_model, model_source
from capsal.cli.command import command
from capsal.cli.settings import EvalSettings
from capsal.config_schema import check_config
from capsal.cpu_bf16 import bf16_fallback
from capsal.datamodules.base import ShardedSampler, collate_samples
from capsal.devices import model_device
from capsal.errors import UserError
from capsal.evaluation import (
    DEFAULT_EXPLAINERS,
    Evaluation,
    LocalisationEvaluator,
    PairCollate,
    batches_of,
    caption_pairs,
)
from capsal.explainers import build_explainers
from capsal.metrics.captioning import caption_scores
from capsal.metrics.intervals import LEVEL, RESAMPLES, Interval, record_intervals
from capsal.models.protocol import has_attention, item_layout, visual_grid
from capsal.sanity import randomisation_steps, sanity_check

log = logging.getLogger("capsal")

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
}


def choose_explainers(cfg: DictConfig, model) -> dict[str, Any]:
    """``explainers=`` (null: every built-in the model supports; ``[]``: none, captioning only), each with
    ``explainer_options.<name>``."""
    if cfg.explainers is None:
        names = [name for name in DEFAULT_EXPLAINERS if name != "soft_attention" or has_attention(model)]
    else:
        names = list(cfg.explainers)
    return build_explainers(names, OmegaConf.to_container(cfg.explainer_options, resolve=True))


def test_loader(cfg: DictConfig, datamodule, model) -> DataLoader:
    """The split as (sample, caption) pair batches: ``batch_size`` samples per batch, each on exactly one rank."""
    split = datamodule.get_split(cfg.split)
    count = len(split) if cfg.max_samples is None else min(len(split), int(cfg.max_samples))
    if count == 0:
        raise UserError(f"split {cfg.split!r} is empty; choose another split=")
    data = Subset(split, range(count))
    return DataLoader(
        data,
        batch_size=int(cfg.batch_size),
        sampler=ShardedSampler(data),
        num_workers=int(getattr(datamodule, "num_workers", 0)),
        collate_fn=PairCollate(model.vocab, cfg.all_captions),
    )


def localisation_evaluator(cfg, datamodule, model, explainers, loader) -> LocalisationEvaluator | None:
    """The evaluator, or None (with one log line) when there is nothing to localise."""
    categories = list(getattr(datamodule, "categories", None) or [])
    if not explainers:
        return None
    if not categories:
        log.info("capsal-eval: %s has no phrases with ground truth; localisation skipped", type(datamodule).__name__)
        return None
    probe = collate_samples([loader.dataset[0]], model.vocab)
    with torch.no_grad():
        layout = item_layout(model, tuple(visual_grid(model, probe.to(model_device(model))).shape[1:4]))
    steps = int(cfg.faithfulness_steps) if cfg.faithfulness else None
    return LocalisationEvaluator(
        explainers, categories, cfg.tolerance, is_video=layout.is_video, keep_records=True, faithfulness_steps=steps
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``capsal-eval`` as ``cfg`` says; returns every number it wrote."""
    check_config(cfg, EvalSettings)
    model = load_model(cfg)
    explainers = choose_explainers(cfg, model)
    datamodule = checkpoint_datamodule(model, cfg.get("datamodule"))
    loader = test_loader(cfg, datamodule, model)
    evaluator = localisation_evaluator(cfg, datamodule, model, explainers, loader)
    module = Evaluation(model, evaluator, bool(cfg.caption_metrics), int(cfg.rows_per_step))
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=False,  # gradient explainers need autograd
        enable_progress_bar=bool(cfg.progress),
        num_sanity_val_steps=0,
    )
    with bf16_fallback(model, trainer.precision, trainer.strategy.root_device):
        trainer.test(module, dataloaders=loader, verbose=False)
    counts = module.results["counts"]
    results: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "checkpoint": model_source(cfg), "split": cfg.split}
    results.update(samples=counts["samples"], phrases=counts["phrases"])
    results["captions"] = counts["captions"]
    results["localisation"] = module.results.get("localisation", {})
    if "faithfulness_curves" in module.results:
        results["faithfulness_curves"] = module.results["faithfulness_curves"]
    results["explainers"] = {name: repr(explainer) for name, explainer in explainers.items()}
    if cfg.caption_metrics:
        predictions, references = module.results["predictions"], module.results["references"]
        results["captioning"] = caption_scores(predictions, references, cfg.caption_metrics)
    if not trainer.is_global_zero:
        return results
    if cfg.sanity and evaluator is not None:
        samples = (loader.dataset[i] for i in range(len(loader.dataset)))
        pairs = list(islice(caption_pairs(samples, cfg.all_captions), int(cfg.sanity_samples)))
        sanity_batches = [b.to(model_device(model)) for b in batches_of(pairs, model.vocab, int(cfg.batch_size))]
        results["sanity"] = sanity_check(model, explainers, sanity_batches, progress=cfg.progress)
        results["sanity_steps"] = randomisation_steps(model)
    records = module.results.get("records", [])
    if records:
        results.update(interval_results(results["localisation"], records, evaluator.categories))
    write_results(results, list(getattr(datamodule, "categories", None) or []), Path(cfg.output_dir))
    write_phrase_records(records, Path(cfg.output_dir) / "phrases.csv")
    return results


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


main = command("capsal-eval", "eval", evaluate)


if __name__ == "__main__":
    main()
