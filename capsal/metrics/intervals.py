"""95% bootstrap intervals for the table numbers, resampling samples (images or clips), not phrases.

A table number is a mean over phrases (``Avg per NP``), but the phrases of one image are not independent: they share
the image, its caption and the model's reading of it. Resampling phrases would treat them as independent and give
intervals that are too narrow; resampling whole samples (each with all its phrases) keeps that dependence. Each
resample draws the samples with replacement and recomputes the ratio (sum of the phrases' scores over their count);
the interval is the resamples' percentiles. A paired comparison of two explainers draws the same samples for both,
so what the samples share cancels out of the difference.

Why not ``torchmetrics.wrappers.BootStrapper``: it resamples the rows of each ``update`` call as they arrive, so it
can resample neither whole samples whose phrases span batches nor two explainers on the same draw.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from capsal.metrics.base import OTHER

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _draws(samples: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, samples)`` indices of the samples each resample draws (the same for every explainer)."""
    if samples < 1:
        raise ValueError("a bootstrap interval needs at least one sample")
    return np.random.default_rng(seed).integers(0, samples, size=(resamples, samples))


def _interval(estimate: float, resampled: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high))


def _ratios(sums: np.ndarray, counts: np.ndarray, draws: np.ndarray) -> np.ndarray:
    drawn = counts[draws].sum(axis=1)
    return sums[draws].sum(axis=1) / np.maximum(drawn, 1)  # a resample of phrase-less samples only scores 0


def sample_bootstrap(
    sums: ArrayLike, counts: ArrayLike, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """The mean over phrases and its interval, from each sample's sum of phrase scores and its number of phrases."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    estimate = sums.sum() / max(counts.sum(), 1.0)
    return _interval(estimate, _ratios(sums, counts, _draws(len(sums), resamples, seed)), level)


def paired_difference(
    sums_a: ArrayLike,
    sums_b: ArrayLike,
    counts: ArrayLike,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Mean of explainer a minus mean of explainer b over the same phrases, with its paired interval (the same
    resampled samples for both)."""
    sums_a, sums_b = np.asarray(sums_a, dtype=np.float64), np.asarray(sums_b, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    draws = _draws(len(counts), resamples, seed)
    estimate = (sums_a.sum() - sums_b.sum()) / max(counts.sum(), 1.0)
    return _interval(estimate, _ratios(sums_a, counts, draws) - _ratios(sums_b, counts, draws), level)


def per_sample(values: ArrayLike, sample_of: ArrayLike, samples: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-phrase values and the sample each belongs to -> each sample's (sum, count), in the order of ``samples``
    (every sample of the evaluation, so that explainers line up), or of first appearance."""
    sample_of = list(np.asarray(sample_of).tolist())
    order = {sample: i for i, sample in enumerate(dict.fromkeys(samples if samples is not None else sample_of))}
    index = np.array([order[sample] for sample in sample_of], dtype=np.int64)
    sums = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=len(order))
    return sums, np.bincount(index, minlength=len(order)).astype(np.float64)


def record_intervals(
    records: list[dict],
    categories: Collection[str] | None = None,
    reference: str = "caption_guided",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Interval]]]:
    """``{explainer: {metric: {"avg"|<category>: Interval, "minus_<reference>": Interval}}}`` from ``capsal-eval``'s
    per-phrase records: pointing game (``hit``) and attention correctness (``mass_inside``) for images, temporal
    pointing for video, deletion and insertion areas where they were measured, each over all phrases and per
    category, a category not in ``categories`` counted in ``"other"`` as the metrics count it; the paired difference
    of the average against ``reference`` where both scored the same phrases.

    Each number resamples the samples that have a scored phrase in it, in sorted order: the draws do not depend on
    the order the records arrived in, so records gathered from DDP ranks give one process's intervals."""
    fields = {"temporal_pointing": "hit"}
    if not any("frame" in record for record in records):
        fields = {"pointing_game": "hit", "attention_correctness": "mass_inside"}
    for prefix in ("", "spatial_"):
        if any(f"{prefix}deletion_auc" in record for record in records):
            fields.update({f"{prefix}{g}": f"{prefix}{g}_auc" for g in ("deletion", "insertion")})
    out: dict[str, dict[str, dict[str, Interval]]] = {}
    for metric, field in fields.items():
        scored = [r for r in records if r.get(field) is not None]
        groups: dict[str, list[dict]] = {"avg": scored}
        for r in scored:
            category = r["category"] if categories is None or r["category"] in categories else OTHER
            groups.setdefault(category, []).append(r)
        for key, group in groups.items():
            samples = sorted({r["sample_id"] for r in group}, key=str)
            by_explainer = {}
            for name in dict.fromkeys(r["explainer"] for r in group):
                mine = [r for r in group if r["explainer"] == name]
                by_explainer[name] = per_sample(
                    [float(r[field]) for r in mine], [r["sample_id"] for r in mine], samples
                )
            for name, (sums, counts) in by_explainer.items():
                entry = out.setdefault(name, {}).setdefault(metric, {})
                entry[key] = sample_bootstrap(sums, counts, resamples, seed)
                paired = key == "avg" and name != reference and reference in by_explainer
                if paired and np.array_equal(counts, by_explainer[reference][1]):
                    entry[f"minus_{reference}"] = paired_difference(
                        sums, by_explainer[reference][0], counts, resamples, seed
                    )
    return out
