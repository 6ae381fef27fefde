"""``capsal-eval``: the paper's tables (pointing game, attention correctness, captioning; temporal pointing for
video) for one checkpoint on a dataset with ground truth, plus an optional model-randomisation sanity check."""

from __future__ import annotations

import logging
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
from capsal.cli.tables import SCHEMA_VERSION, interval_results, leaderboard, write_phrase_records, write_results
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
from capsal.explainers import build_explainers, get_explainer
from capsal.explorer import evaluation_samples, scored_sample_count, write_pages
from capsal.metrics.captioning import caption_scores
from capsal.models.protocol import item_layout, visual_grid
from capsal.sanity import phrase_sample_ids, randomisation_steps, sanity_check

log = logging.getLogger("capsal")


def choose_explainers(cfg: DictConfig, model) -> dict[str, Any]:
    """``explainers=`` (null: every built-in the model supports; ``[]``: none, captioning only), each with
    ``explainer_options.<name>``."""
    if cfg.explainers is None:
        names = [name for name in DEFAULT_EXPLAINERS if get_explainer(name).refusal(model) is None]
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
        explainers,
        categories,
        cfg.tolerance,
        is_video=layout.is_video,
        keep_records=True,
        faithfulness_steps=steps,
        keep_maps=bool(cfg.explorer),
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
        last_step: dict[str, torch.Tensor] = {}
        results["sanity"] = sanity_check(model, explainers, sanity_batches, cfg.progress, last_step)
        results["sanity_steps"] = randomisation_steps(model)
    records = module.results.get("records", [])
    if records and cfg.explorer:
        write_evaluation_explorer(loader.dataset, records, Path(cfg.output_dir), f"{model_source(cfg)}, {cfg.split}")
    for record in records:
        record.pop("maps", None)  # the grid maps go to the explorer only, not to phrases.csv
    if records:
        results.update(interval_results(results["localisation"], records, evaluator.categories))
    if evaluator is not None:
        sanity = (last_step, phrase_sample_ids(sanity_batches)) if cfg.sanity else None
        results["leaderboard"] = leaderboard(results["localisation"], module.results["timings"], sanity)
    write_results(results, list(getattr(datamodule, "categories", None) or []), Path(cfg.output_dir))
    write_phrase_records(records, Path(cfg.output_dir) / "phrases.csv")
    return results


def write_evaluation_explorer(dataset, records: list[dict[str, Any]], output_dir: Path, title: str) -> list[Path]:
    """``explorer.html`` (and ``explorer-2.html``... past :data:`capsal.explorer.SAMPLES_PER_PAGE` samples) of the
    gathered records, the split's samples read once more for their frames; on global rank zero only."""
    samples = (dataset[i] for i in range(len(dataset)))
    pages = write_pages(output_dir, evaluation_samples(samples, records), scored_sample_count(records), title)
    log.info("capsal-eval: explorer %s (%d pages; open it in any browser, offline)", pages[0], len(pages))
    return pages


main = command("capsal-eval", "eval", evaluate)


if __name__ == "__main__":
    main()
