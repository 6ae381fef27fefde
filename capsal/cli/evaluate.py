"""``capsal-eval``: the paper's tables (pointing game, attention correctness, captioning; temporal pointing for
video) for one checkpoint on a dataset with ground truth, plus an optional model-randomisation sanity check."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.datamodules.base import removed_crop_key
from capsal.devices import resolve_device
from capsal.errors import UserError, exit_on_user_error
from capsal.evaluation import DEFAULT_EXPLAINERS, LocalisationEvaluator, batches_of, caption_pairs, generate_captions
from capsal.explainers import build_explainers
from capsal.metrics.captioning import caption_scores
from capsal.models.protocol import has_attention
from capsal.sanity import sanity_check

TABLE_TITLES = {
    "pointing_game": "Table 1: pointing game",
    "attention_correctness": "Table 2: attention correctness",
    "temporal_pointing": "Temporal pointing game (most salient frame inside the phrase's interval)",
    "spatial_pointing": "Spatial pointing inside the most salient frame",
}


def choose_explainers(cfg: DictConfig, model) -> dict[str, Any]:
    """``explainers=`` (default: every built-in the model supports), each with ``explainer_options.<name>``."""
    names = list(cfg.explainers) if cfg.explainers else list(DEFAULT_EXPLAINERS)
    if not cfg.explainers and not has_attention(model):
        names.remove("soft_attention")
    return build_explainers(names, OmegaConf.to_container(cfg.explainer_options, resolve=True))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``capsal-eval`` as ``cfg`` says; returns every number it wrote."""
    device = resolve_device(cfg.device)
    model = load_captioner(cfg.ckpt_path, device)
    explainers = choose_explainers(cfg, model)
    datamodule = checkpoint_datamodule(model, cfg.datamodule)
    split = datamodule.get_split(cfg.split)
    count = len(split) if cfg.max_samples is None else min(len(split), int(cfg.max_samples))
    samples = [split[i] for i in range(count)]
    if not samples:
        raise UserError(f"split {cfg.split!r} is empty; choose another split=")
    categories = list(getattr(datamodule, "categories", None) or [])
    evaluator = LocalisationEvaluator(explainers, categories, cfg.tolerance, removed_crop_key(cfg.center_crop), device)
    pairs = list(caption_pairs(samples, cfg.all_captions))
    batch_size = int(cfg.batch_size)
    batches = (batch.to(device) for batch in batches_of(pairs, model.vocab, batch_size))
    total = math.ceil(len(pairs) / batch_size)
    for batch in tqdm(batches, total=total, desc="capsal-eval", disable=not cfg.progress, unit="batch"):
        evaluator.update(model, batch)
    results: dict[str, Any] = {"localisation": evaluator.compute(), "split": cfg.split, "samples": count}
    results["phrases"] = sum(len(pair.captions[0].phrases) for pair in pairs)
    results["explainers"] = {name: repr(explainer) for name, explainer in explainers.items()}
    if cfg.caption_metrics:
        predictions = generate_captions(model, (b.to(device) for b in batches_of(samples, model.vocab, batch_size)))
        references = {s.sample_id: [c.text for c in s.captions] for s in samples}
        results["captioning"] = caption_scores(predictions, references, cfg.caption_metrics)
    if cfg.sanity:
        sanity_batches = [b.to(device) for b in batches_of(pairs[: int(cfg.sanity_samples)], model.vocab, batch_size)]
        results["sanity"] = sanity_check(model, explainers, sanity_batches, progress=cfg.progress)
    write_results(results, categories, Path(cfg.output_dir))
    return results


def markdown_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    header = ["explainer", *columns]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows.items():
        cells = [_fmt(values.get(c, float("nan"))) for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


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
    print(f"\ncapsal-eval: {results['phrases']} phrases in {results['samples']} samples; tables in {output_dir}")
    return text


def _write_csv(path: Path, rows: dict[str, dict[str, float]], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["explainer", *columns])
        for name, values in rows.items():
            writer.writerow([name, *[values.get(c, "") for c in columns]])


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    with exit_on_user_error("capsal-eval"):
        evaluate(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
