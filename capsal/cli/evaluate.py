"""``capsal-eval``: the paper's tables (pointing game, attention correctness, captioning; temporal pointing for
video) for one checkpoint on a dataset with ground truth, plus an optional model-randomisation sanity check."""

from __future__ import annotations

import csv
import dataclasses
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
from capsal.metrics.intervals import record_intervals
from capsal.models.protocol import has_attention, item_layout, visual_grid
from capsal.sanity import sanity_check

log = logging.getLogger("capsal")

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
    results: dict[str, Any] = {"checkpoint": model_source(cfg), "split": cfg.split}
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
    records = module.results.get("records", [])
    if records:
        intervals = record_intervals(records)
        results["intervals"] = {
            name: {
                metric: {key: dataclasses.asdict(value) for key, value in entry.items()} for metric, entry in by.items()
            }
            for name, by in intervals.items()
        }
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


def markdown_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    header = ["explainer", *columns]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows.items():
        cells = [_fmt(values.get(c, float("nan"))) for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def interval_table(intervals: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """Markdown: each explainer's Avg per NP with its 95% interval, and its paired difference from caption_guided."""
    metrics = list(dict.fromkeys(metric for by in intervals.values() for metric in by))

    def cell(value: dict[str, float] | None) -> str:
        return "-" if value is None else f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"

    header = [f"{m.replace('_', ' ')} {what}" for m in metrics for what in ("avg", "- caption_guided")]
    lines = [
        "### 95% intervals: bootstrap over samples (1,000 resamples), paired against caption_guided",
        "",
        "| explainer | " + " | ".join(header) + " |",
        "|---" * (len(header) + 1) + "|",
    ]
    for name, by in intervals.items():
        cells = [cell(by.get(m, {}).get(k)) for m in metrics for k in ("avg", "minus_caption_guided")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    if results.get("intervals"):
        blocks.append(interval_table(results["intervals"]))
    if "captioning" in results:
        names = list(results["captioning"])
        blocks.append(markdown_table("Table 3: captioning", {"model": results["captioning"]}, names))
        _write_csv(output_dir / "captioning.csv", {"model": results["captioning"]}, names)
    if "sanity" in results:
        stages = list(next(iter(results["sanity"].values())).keys())
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


def _write_csv(path: Path, rows: dict[str, dict[str, float]], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["explainer", *columns])
        for name, values in rows.items():
            writer.writerow([name, *[values.get(c, "") for c in columns]])


main = command("capsal-eval", "eval", evaluate)


if __name__ == "__main__":
    main()
