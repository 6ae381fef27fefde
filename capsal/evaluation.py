"""Measuring saliency against ground truth (the paper's Tables 1-2, temporal pointing) and caption quality (Table 3).

Plain functions and one evaluator class, shared by ``capsal-eval`` and the saliency callback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from capsal.explainers.base import Explainer
from capsal.explainers.saliency import Saliency
from capsal.metrics import AttentionCorrectness, PointingGame, TemporalPointingGame
from capsal.types import Caption, Phrase, Sample

DEFAULT_EXPLAINERS = ("caption_guided", "soft_attention", "gradient", "uniform", "center", "random")


@dataclass
class CaptionedInput:
    """A batch of (sample, one of its captions) pairs: ground-truth captions become the queries."""

    pixels: torch.Tensor  # float (B, T, 3, H, W) in [0, 1] (zeros of the right shape for cached features)
    captions: list[Caption]
    sample_ids: list[str]
    grid: torch.Tensor | None = None  # cached descriptor grids (B, T, h, w, d), when the samples carry them

    @torch.no_grad()
    def visual_grid(self, model: Any) -> torch.Tensor:
        """The descriptor grid on the model's device: the cached one, else the backbone's."""
        if self.grid is not None:
            return self.grid.to(model.device)
        return model.features(self.pixels.to(model.device))


def caption_pairs(samples: Iterable[Sample], all_captions: bool = True) -> Iterator[tuple[Sample, Caption]]:
    for sample in samples:
        for caption in sample.captions if all_captions else sample.captions[:1]:
            yield sample, caption


def batched_pairs(pairs: Iterable[tuple[Sample, Caption]], batch_size: int) -> Iterator[CaptionedInput]:
    chunk: list[tuple[Sample, Caption]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == batch_size:
            yield _collate_pairs(chunk)
            chunk = []
    if chunk:
        yield _collate_pairs(chunk)


def _collate_pairs(chunk: Sequence[tuple[Sample, Caption]]) -> CaptionedInput:
    samples = [sample for sample, _ in chunk]
    pixels = torch.stack([sample.pixels for sample in samples]).float() / 255.0
    grid = stacked_grids(samples)
    return CaptionedInput(pixels, [caption for _, caption in chunk], [s.sample_id for s in samples], grid)


def stacked_grids(samples: Sequence[Sample]) -> torch.Tensor | None:
    """The cached grids of samples read from a feature cache, else None."""
    grids = [getattr(sample, "grid", None) for sample in samples]
    return torch.stack(grids).float() if all(g is not None for g in grids) else None


def visual_grid(model: Any, samples: Sequence[Sample]) -> torch.Tensor:
    """Descriptor grids of samples on the model's device: cached when they carry them, else from the backbone."""
    cached = stacked_grids(samples)
    if cached is not None:
        return cached.to(model.device)
    pixels = torch.stack([s.pixels for s in samples]).float().div(255.0).to(model.device)
    return model.features(pixels)


def grounded_phrases(captions: Sequence[Caption]) -> tuple[list[tuple[int, int, int]], list[Phrase]]:
    """``(sample, start, end)`` spans and the phrases themselves, for every phrase of every caption."""
    spans, phrases = [], []
    for b, caption in enumerate(captions):
        for phrase in caption.phrases:
            spans.append((b, phrase.start, phrase.end))
            phrases.append(phrase)
    return spans, phrases


def explain_batch(explainer: Explainer, model: Any, items: torch.Tensor, grid: torch.Tensor, tokens: Any) -> Saliency:
    """One explainer on one batch, under the grad mode it needs."""
    with torch.set_grad_enabled(explainer.needs_grad):
        return explainer.explain(model, items, grid=grid, tokens=tokens)


class LocalisationEvaluator:
    """Pointing game and attention correctness (images) or temporal + spatial pointing (videos), per explainer."""

    def __init__(
        self,
        explainers: dict[str, Explainer],
        categories: Sequence[str],
        video: bool,
        tolerance: float = 0.0,
        center_crop: bool = False,
        device: torch.device | str = "cpu",
    ):
        self.explainers = explainers
        self.video = video
        self.metrics: dict[str, dict[str, Any]] = {}
        for name in explainers:
            if video:
                self.metrics[name] = {"temporal_pointing": TemporalPointingGame(categories, tolerance=tolerance)}
            else:
                self.metrics[name] = {
                    "pointing_game": PointingGame(categories, tolerance=tolerance),
                    "attention_correctness": AttentionCorrectness(categories, center_crop=center_crop),
                }
            for metric in self.metrics[name].values():
                metric.to(device)

    def update(self, model: Any, batch: CaptionedInput, grid: torch.Tensor | None = None) -> dict[str, Saliency]:
        """Explain the batch's captions with every explainer and score their phrases; returns the saliencies."""
        grid = batch.visual_grid(model) if grid is None else grid
        with torch.no_grad():
            items = model.items(grid)
        tokens = [caption.text for caption in batch.captions]
        spans, phrases = grounded_phrases(batch.captions)
        results = {}
        for name, explainer in self.explainers.items():
            saliency = explain_batch(explainer, model, items, grid, tokens)
            results[name] = saliency
            if spans:
                self._score(name, saliency, spans, phrases, batch.pixels.shape[-2:])
        return results

    def _score(self, name: str, saliency: Saliency, spans, phrases: list[Phrase], size) -> None:
        categories = [p.category for p in phrases]
        height, width = int(size[0]), int(size[1])
        if self.video:
            temporal = saliency.phrase_maps(spans)
            regions = saliency.phrase_region_maps(spans)
            spatial = None if regions is None else saliency.to_image_size(height, width, regions)
            self.metrics[name]["temporal_pointing"].update(
                temporal,
                [p.interval for p in phrases],
                categories,
                spatial=spatial,
                frame_boxes=[p.frame_boxes for p in phrases] if spatial is not None else None,
            )
            return
        maps = saliency.to_image_size(height, width, saliency.phrase_maps(spans))
        boxes = [p.boxes for p in phrases]
        for metric in self.metrics[name].values():
            metric.update(maps, boxes, categories)

    def compute(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{explainer: {metric: {"avg"|category|...: value}}}`` (temporal pointing split in temporal/spatial)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, metrics in self.metrics.items():
            out[name] = {}
            for metric_name, metric in metrics.items():
                values = {key: float(value) for key, value in metric.compute().items()}
                if metric_name == "temporal_pointing":
                    for group in ("temporal", "spatial"):
                        out[name][f"{group}_pointing"] = {
                            key.split("/", 1)[1]: value for key, value in values.items() if key.startswith(group + "/")
                        }
                else:
                    out[name][metric_name] = values
        return out

    def reset(self) -> None:
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.reset()


@torch.no_grad()
def generate_captions(model: Any, samples: Sequence[Sample], batch_size: int = 32) -> dict[str, str]:
    """The model's caption for every sample, keyed by sample id."""
    predictions: dict[str, str] = {}
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        tokens = model.generate(model.items(visual_grid(model, chunk)))
        predictions.update({s.sample_id: model.vocab.decode_text(row) for s, row in zip(chunk, tokens, strict=True)})
    return predictions


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties broken by position)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return x.argsort(-1).argsort(-1).to(torch.float64)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    denominator = (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp(min=1e-12)
    return (ra * rb).sum(-1) / denominator
