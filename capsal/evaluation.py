"""Measuring saliency against ground truth (the paper's Tables 1-2, temporal pointing) and caption quality (Table 3).

One evaluator, shared by ``capsal-eval`` and the saliency callback: it takes ``Batch``es whose rows are (sample,
ground-truth caption) pairs, explains each caption with every explainer and scores the caption's phrases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from capsal.datamodules.base import collate_samples
from capsal.explainers.base import Explainer
from capsal.explainers.saliency import Saliency
from capsal.metrics import AttentionCorrectness, PointingGame, TemporalPointingGame
from capsal.models.protocol import visual_grid
from capsal.text import Vocabulary
from capsal.types import Batch, Caption, Phrase, Sample

DEFAULT_EXPLAINERS = ("caption_guided", "soft_attention", "gradient", "uniform", "center", "random")


def caption_pairs(samples: Iterable[Sample], all_captions: bool = True) -> Iterator[Sample]:
    """Each sample once per ground-truth caption (or only its first), holding just that caption."""
    for sample in samples:
        for caption in sample.captions if all_captions else sample.captions[:1]:
            yield dataclasses.replace(sample, captions=[caption])


def batches_of(samples: Iterable[Sample], vocab: Vocabulary, batch_size: int) -> Iterator[Batch]:
    """``samples`` collated into batches of ``batch_size`` (the last one shorter), each caption a row."""
    chunk: list[Sample] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield collate_samples(chunk, vocab)
            chunk = []
    if chunk:
        yield collate_samples(chunk, vocab)


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


def scored_maps(saliency: Saliency, spans, sizes: Sequence[tuple[int, int]]) -> torch.Tensor | list[torch.Tensor]:
    """Each phrase's map upsampled to its sample's scoring size ``sizes[b]`` (the original image, or its crop, where
    the datamodule recorded one): ``(P, H, W)`` when all sizes agree, else a list of ``(H_p, W_p)``."""
    values = saliency.phrase_maps(spans)
    if len(set(sizes)) == 1:
        return saliency.to_image_size(*sizes[0], values)
    return [saliency.to_image_size(*sizes[b], values[p]) for p, (b, _, _) in enumerate(spans)]


class LocalisationEvaluator:
    """Pointing game and attention correctness (images) or temporal + spatial pointing (videos), per explainer.

    Which of the two is decided by the model's item layout, read from the first explained batch.
    """

    def __init__(
        self,
        explainers: dict[str, Explainer],
        categories: Sequence[str],
        tolerance: float = 0.0,
        center_crop: bool = False,
        device: torch.device | str = "cpu",
    ):
        self.explainers = explainers
        self.categories = list(categories)
        self.tolerance = tolerance
        self.center_crop = center_crop
        self.device = device
        self.metrics: dict[str, dict[str, Any]] = {}

    def _ensure_metrics(self, is_video: bool) -> None:
        if self.metrics:
            return
        with torch.inference_mode(False):  # metric states must outlive a Lightning validation's inference mode
            for name in self.explainers:
                if is_video:
                    metrics = {"temporal_pointing": TemporalPointingGame(self.categories, tolerance=self.tolerance)}
                else:
                    metrics = {
                        "pointing_game": PointingGame(self.categories, tolerance=self.tolerance),
                        "attention_correctness": AttentionCorrectness(self.categories, center_crop=self.center_crop),
                    }
                self.metrics[name] = {key: metric.to(self.device) for key, metric in metrics.items()}

    def update(self, model: Any, batch: Batch, grid: torch.Tensor | None = None) -> dict[str, Saliency]:
        """Explain the batch's captions with every explainer and score their phrases; returns the saliencies.

        ``batch`` lives on the model's device; ``grid`` is its descriptor grid when the caller already has it.
        """
        with torch.no_grad():
            grid = visual_grid(model, batch) if grid is None else grid
            items = model.items(grid)
        spans, phrases = grounded_phrases(batch.captions)
        results = {}
        for name, explainer in self.explainers.items():
            saliency = explain_batch(explainer, model, items, grid, batch.tokens)
            self._ensure_metrics(saliency.layout.is_video)
            results[name] = saliency
            if spans:
                originals = [caption.original_size for caption in batch.captions]
                self._score(name, saliency, spans, phrases, batch.image_size, originals)
        return results

    def _score(
        self,
        name: str,
        saliency: Saliency,
        spans,
        phrases: list[Phrase],
        size: tuple[int, int],
        originals: Sequence[tuple[int, int] | None] = (),
    ) -> None:
        """Score the phrases; image maps at each caption's ``original_size`` when it has one, else at ``size``."""
        categories = [p.category for p in phrases]
        height, width = size
        if saliency.layout.is_video:
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
        sizes = [original or (height, width) for original in originals] or [(height, width)] * (spans[-1][0] + 1)
        maps = scored_maps(saliency, spans, sizes)
        boxes = [p.boxes if p.original_boxes is None else p.original_boxes for p in phrases]
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
def generate_captions(model: Any, batches: Iterable[Batch]) -> dict[str, str]:
    """The model's caption for every sample of ``batches`` (on the model's device), keyed by sample id."""
    predictions: dict[str, str] = {}
    for batch in batches:
        tokens = model.generate(model.items(visual_grid(model, batch)))
        predictions.update({i: model.vocab.decode_text(row) for i, row in zip(batch.sample_ids, tokens, strict=True)})
    return predictions
