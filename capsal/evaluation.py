"""Measuring saliency against ground truth (the paper's Tables 1-2, temporal pointing) and caption quality (Table 3).

One evaluator, shared by ``capsal-eval`` and the saliency callback: it takes ``Batch``es whose rows are (sample,
ground-truth caption) pairs, explains each caption with every explainer and scores the caption's phrases.
``capsal-eval`` runs it inside :class:`Evaluation`, a LightningModule tested by a ``Trainer``: the split streams
through a DataLoader (every sample on exactly one rank), metric states reduce through torchmetrics and captions,
predictions and per-phrase records are gathered across ranks at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from einops import rearrange

from capsal.datamodules.base import collate_samples
from capsal.devices import gather_dicts, gather_objects
from capsal.explainers.base import Explainer
from capsal.explainers.saliency import Saliency
from capsal.explorer import ExplorerMaps
from capsal.maxima import peak_frames, peak_locations
from capsal.metrics import (
    AttentionCorrectness,
    Faithfulness,
    PointingGame,
    TemporalPointingGame,
    attention_correctness,
    pointing_hits,
)
from capsal.metrics.faithfulness import Curves, faithfulness_curves, spatial_faithfulness_curves
from capsal.models.protocol import visual_grid
from capsal.text import Vocabulary, tokenize
from capsal.types import Batch, Caption, Phrase, Sample

DEFAULT_EXPLAINERS = (
    "caption_guided",
    "soft_attention",
    "rollout",
    "relevancy",
    "gradient",
    "gradcam",
    "integrated_gradients",
    "uniform",
    "center",
    "random",
)


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


class PairCollate:
    """DataLoader ``collate_fn``: samples -> one ``Batch`` row per (sample, ground-truth caption) pair, the rows of
    a sample next to each other, each row's ``references`` all of its sample's captions. A class, so DataLoader
    workers receive the vocabulary and not more."""

    def __init__(self, vocab: Vocabulary, all_captions: bool = True):
        self.vocab = vocab
        self.all_captions = all_captions

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        pairs = list(caption_pairs(samples, self.all_captions))
        batch = collate_samples(pairs, self.vocab)
        references = {s.sample_id: [c.text for c in s.captions] for s in samples}
        return dataclasses.replace(batch, references=[references[i] for i in batch.sample_ids])


def first_rows(batch: Batch) -> list[int]:
    """The first row of each sample in a batch of caption pairs (where its model caption is generated once)."""
    seen: set[str] = set()
    return [row for row, sample_id in enumerate(batch.sample_ids) if not (sample_id in seen or seen.add(sample_id))]


def grounded_phrases(captions: Sequence[Caption]) -> tuple[list[tuple[int, int, int]], list[Phrase]]:
    """``(sample, start, end)`` spans and the phrases themselves, for every phrase of every caption."""
    spans, phrases = [], []
    for b, caption in enumerate(captions):
        for phrase in caption.phrases:
            spans.append((b, phrase.start, phrase.end))
            phrases.append(phrase)
    return spans, phrases


def explain_batch(
    explainer: Explainer,
    model: Any,
    items: torch.Tensor,
    grid: torch.Tensor,
    tokens: Any,
    sample_ids: Sequence[str] | None = None,
) -> Saliency:
    """One explainer on one batch; ``explain`` sets the grad mode and seeding the explainer needs."""
    return explainer.explain(model, items, grid=grid, tokens=tokens, sample_ids=sample_ids)


def scored_maps(saliency: Saliency, spans, sizes: Sequence[tuple[int, int]]) -> torch.Tensor | list[torch.Tensor]:
    """Each phrase's map upsampled to its sample's scoring size ``sizes[b]`` (the original image, or its crop, where
    the datamodule recorded one): ``(P, H, W)`` when all sizes agree, else a list of ``(H_p, W_p)``."""
    values = saliency.phrase_maps(spans)
    if len(set(sizes)) == 1:
        return saliency.to_image_size(*sizes[0], values)
    return [saliency.to_image_size(*sizes[b], values[p]) for p, (b, _, _) in enumerate(spans)]


class LocalisationEvaluator:
    """Pointing game and attention correctness (images) or temporal + spatial pointing (videos), per explainer, and
    with ``faithfulness_steps`` deletion and insertion of each phrase's items (cells; frames for video) in K steps.

    Which of the two is decided by the model's item layout, read from the first explained batch.
    """

    def __init__(
        self,
        explainers: dict[str, Explainer],
        categories: Sequence[str],
        tolerance: float = 0.0,
        device: torch.device | str = "cpu",
        is_video: bool | None = None,
        keep_records: bool = False,
        faithfulness_steps: int | None = None,
        keep_maps: bool = False,
    ):
        self.explainers = explainers
        self.categories = list(categories)
        self.tolerance = tolerance
        self.device = device
        self.metrics: dict[str, dict[str, Any]] = {}
        self.keep_records = keep_records
        self.keep_maps = keep_maps  # each record also holds its phrase's grid map ("maps"), for the explorer
        self.faithfulness_steps = faithfulness_steps
        self.records: list[dict[str, Any]] = []  # one per (phrase, explainer), when keep_records
        self.timings: dict[str, list[tuple[float, int]]] = {name: [] for name in explainers}  # (seconds, captions)
        if is_video is not None:  # known up front: every rank has metrics to reduce, even one without batches
            self._ensure_metrics(is_video)

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
                        "attention_correctness": AttentionCorrectness(self.categories),
                    }
                for prefix in ("", "spatial_") if is_video else ("",):
                    if self.faithfulness_steps:
                        metrics[f"{prefix}faithfulness"] = Faithfulness(self.categories, steps=self.faithfulness_steps)
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
            start = time.perf_counter()
            saliency = explain_batch(explainer, model, items, grid, batch.tokens, batch.sample_ids)
            self.timings[name].append((time.perf_counter() - start, len(batch)))
            self._ensure_metrics(saliency.layout.is_video)
            results[name] = saliency
            # a phrase past the words the model explained (a sentence cut to its max_words) is skipped and counted
            explained = saliency.word_mask.sum(dim=1).tolist()
            fits = [end <= explained[row] for row, _, end in spans]
            kept = [k for k, fit in enumerate(fits) if fit]
            if kept:
                scored = [spans[k] for k in kept]
                curves = self._curves(model, items, grid, saliency, scored, batch) if self.faithfulness_steps else {}
                self._score(name, saliency, scored, [phrases[k] for k in kept], batch, curves)
            self._skip_cut(name, [(spans[k], phrases[k]) for k, fit in enumerate(fits) if not fit], batch)
        return results

    def _curves(self, model: Any, items, grid, saliency: Saliency, spans, batch: Batch) -> dict[str, Curves]:
        """Deletion and insertion of each phrase's items in the order of its map (Eq. 9's phrase map), keyed ``""``;
        for video with region maps also of the cells of its most salient frame, keyed ``"spatial_"``."""
        maps, ids, steps = saliency.phrase_maps(spans), batch.sample_ids, self.faithfulness_steps
        curves = {"": faithfulness_curves(model, items, saliency.tokens, spans, maps, ids, saliency.item_mask, steps)}
        regions = saliency.phrase_region_maps(spans) if saliency.layout.is_video else None
        if regions is not None:
            frames = peak_frames(maps)
            in_frame = regions[torch.arange(len(spans), device=regions.device), frames.to(regions.device)]
            curves["spatial_"] = spatial_faithfulness_curves(
                model, grid, saliency.tokens, spans, frames, in_frame, ids, saliency.item_mask, steps
            )
        return curves

    def _skip_cut(self, name: str, cut: list[tuple[tuple[int, int, int], Phrase]], batch: Batch) -> None:
        """Count phrases beyond the explained words as skipped in every metric (and record them, unscored)."""
        if not cut:
            return
        for metric in self.metrics[name].values():
            for group in metric.groups:
                metric._skip(group, len(cut))
        if self.keep_records:
            for (row, start, end), phrase in cut:
                record = _phrase_record(name, batch, row, start, end, phrase)
                record.update(hit=None, note="past the words the model takes (model.max_words): not scored")
                self.records.append(record)

    def _score(
        self, name: str, saliency: Saliency, spans, phrases: list[Phrase], batch: Batch, curves: dict[str, Curves]
    ) -> None:
        """Score the phrases; image maps at each caption's ``original_size`` when it has one, else at the batch's
        image size, against the boxes of that frame."""
        categories = [p.category for p in phrases]
        for prefix, measured in curves.items():
            self.metrics[name][f"{prefix}faithfulness"].update(measured, categories)
        first_record = len(self.records)
        height, width = batch.image_size
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
            if self.keep_records:
                self._record_video(name, spans, phrases, temporal, batch)
                self._record_curves(first_record, curves)
                self._record_maps(first_record, saliency, spans)
            return
        sizes = [caption.original_size or (height, width) for caption in batch.captions]
        maps = scored_maps(saliency, spans, sizes)
        boxes = [p.boxes if p.original_boxes is None else p.original_boxes for p in phrases]
        for key in ("pointing_game", "attention_correctness"):
            self.metrics[name][key].update(maps, boxes, categories)
        if self.keep_records:
            self._record_image(name, spans, phrases, maps, boxes, batch)
            self._record_curves(first_record, curves)
            self._record_maps(first_record, saliency, spans)

    def _record_maps(self, first: int, saliency: Saliency, spans) -> None:
        """With ``keep_maps``, the phrase records from ``first`` on get the Eq. 9 maps the metrics scored, at grid
        resolution (float16, small enough to gather): ``maps`` an :class:`~capsal.explorer.ExplorerMaps` of one
        phrase, ``spatial`` ``(T, h, w)`` and, for video, ``temporal`` ``(T,)``."""
        if not self.keep_maps:
            return
        h, w = saliency.layout.grid_size
        values = saliency.phrase_maps(spans).float().cpu()
        if saliency.layout.is_video:
            regions = saliency.phrase_region_maps(spans)
            spatial = None if regions is None else rearrange(regions.float().cpu(), "p t (h w) -> p t h w", h=h, w=w)
            temporal = values
        else:
            grid = saliency.layout.on_grid(values)
            spatial, temporal = rearrange(grid, "p (h w) -> p 1 h w", h=h, w=w), None
        for k, record in enumerate(self.records[first:]):
            record["maps"] = ExplorerMaps(
                None if spatial is None else spatial[k].numpy().astype(np.float16),
                None if temporal is None else temporal[k].numpy().astype(np.float16),
            )

    def _record_curves(self, first: int, curves: dict[str, Curves]) -> None:
        """The phrase records from ``first`` on (one per scored phrase, in order) get their deletion and insertion
        areas (``deletion_auc``, ``spatial_deletion_auc``...)."""
        for prefix, measured in curves.items():
            areas = zip(measured.deletion_auc.tolist(), measured.insertion_auc.tolist(), strict=True)
            for record, (deletion, insertion) in zip(self.records[first:], areas, strict=True):
                record.update({f"{prefix}deletion_auc": deletion, f"{prefix}insertion_auc": insertion})

    def _record_image(self, name, spans, phrases: list[Phrase], maps, boxes, batch: Batch) -> None:
        """Per phrase: where the map points, whether that is a hit, and the share of mass inside the boxes."""
        points = [peak_locations(m[None])[0].tolist() for m in maps]
        hits = pointing_hits(maps, boxes, self.tolerance).tolist()
        for k, ((row, start, end), phrase) in enumerate(zip(spans, phrases, strict=True)):
            boxed = bool(boxes[k])
            mass = float(attention_correctness(maps[k], boxes[k])) if boxed else None
            record = _phrase_record(name, batch, row, start, end, phrase)
            record.update(x=points[k][0], y=points[k][1], hit=hits[k] if boxed else None, mass_inside=mass)
            self.records.append(record)

    def _record_video(self, name, spans, phrases: list[Phrase], temporal: torch.Tensor, batch: Batch) -> None:
        """Per phrase: the most salient frame and whether it lies in the phrase's interval."""
        frames = peak_frames(temporal).tolist()
        for k, ((row, start, end), phrase) in enumerate(zip(spans, phrases, strict=True)):
            interval = phrase.interval
            hit = None if interval is None else interval[0] <= frames[k] < interval[1]
            record = _phrase_record(name, batch, row, start, end, phrase)
            record.update(frame=frames[k], hit=hit)
            self.records.append(record)

    def compute(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{explainer: {metric: {"avg"|category|...: value}}}`` (temporal pointing split in temporal/spatial)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, metrics in self.metrics.items():
            out[name] = {}
            for metric_name, metric in metrics.items():
                values = {key: float(value) for key, value in metric.compute().items()}
                if metric_name.endswith("faithfulness"):
                    prefix = metric_name.removesuffix("faithfulness")
                    for group in ("deletion", "insertion"):
                        out[name][prefix + group] = _group(values, group)
                elif metric_name == "temporal_pointing":
                    for group in ("temporal", "spatial"):
                        out[name][f"{group}_pointing"] = _group(values, group)
                else:
                    out[name][metric_name] = values
        return out

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """Each explainer's mean deletion and insertion curve (K+1 probabilities), when faithfulness is measured."""
        return {
            name: {
                metric_name.removesuffix("faithfulness") + group: curve
                for metric_name, metric in metrics.items()
                if metric_name.endswith("faithfulness")
                for group, curve in metric.mean_curves().items()
            }
            for name, metrics in self.metrics.items()
            if "faithfulness" in metrics
        }

    def reset(self) -> None:
        self.records = []
        self.timings = {name: [] for name in self.explainers}
        for metrics in self.metrics.values():
            for metric in metrics.values():
                metric.reset()


def _group(values: dict[str, float], group: str) -> dict[str, float]:
    """The ``<group>/<key>`` values of a metric that keeps several scores side by side, by ``<key>``."""
    return {key.split("/", 1)[1]: value for key, value in values.items() if key.startswith(group + "/")}


def _phrase_record(explainer: str, batch: Batch, row: int, start: int, end: int, phrase: Phrase) -> dict[str, Any]:
    words = tokenize(batch.captions[row].text)  # spans count tokenize's words (punctuation dropped)
    return {
        "sample_id": batch.sample_ids[row],
        "caption": batch.captions[row].text,
        "phrase": " ".join(words[start:end]),
        "span": [start, end],
        "category": phrase.category,
        "explainer": explainer,
    }


class Evaluation(L.LightningModule):
    """``capsal-eval`` as a LightningModule for ``Trainer.test``: every test batch (caption pairs of some samples)
    is explained and scored by the evaluator, and each sample is captioned once (its first row) for Table 3.

    ``rows_per_step`` caps the rows one explainer call sees (a sample of MSR-VTT brings 20 captions).
    """

    def __init__(
        self,
        model: Any,
        evaluator: LocalisationEvaluator | None,
        captioning: bool,
        rows_per_step: int = 32,
    ):
        super().__init__()
        self.model = model
        self.evaluator = evaluator
        self.captioning = captioning
        self.rows_per_step = rows_per_step
        self.predictions: dict[str, str] = {}
        self.references: dict[str, list[str]] = {}
        self.counts = {"samples": 0, "captions": 0, "phrases": 0}
        self.results: dict[str, Any] = {}

    def on_test_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.device = self.device
            for metrics in self.evaluator.metrics.values():
                for metric in metrics.values():
                    metric.to(self.device)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        firsts = first_rows(batch)
        self.counts["samples"] += len(firsts)
        self.counts["captions"] += len(batch)
        self.counts["phrases"] += sum(len(caption.phrases) for caption in batch.captions)
        if self.evaluator is None and not self.captioning:
            return  # a run that only counts (explainers=[] caption_metrics=[]) needs no grid
        samples = batch.select(firsts)
        with torch.no_grad():  # one backbone pass per sample, shared by its caption rows
            sample_grid = visual_grid(self.model, samples)
        if self.evaluator is not None:
            owner = {sample_id: k for k, sample_id in enumerate(samples.sample_ids)}
            row_sample = torch.tensor([owner[sample_id] for sample_id in batch.sample_ids], device=sample_grid.device)
            for start in range(0, len(batch), self.rows_per_step):
                rows = slice(start, start + self.rows_per_step)
                self.evaluator.update(self.model, batch.select(rows), grid=sample_grid[row_sample[rows]])
        if self.captioning and firsts:
            self._caption(samples, sample_grid)

    @torch.no_grad()
    def _caption(self, samples: Batch, grid: torch.Tensor) -> None:
        """The model's caption of each sample (one row per sample, ``grid`` its descriptors) and its references."""
        tokens = self.model.generate(self.model.items(grid))
        for sample_id, references, row in zip(samples.sample_ids, samples.references, tokens, strict=True):
            self.predictions[sample_id] = self.model.vocab.decode_text(row)
            self.references[sample_id] = references

    def on_test_epoch_end(self) -> None:
        """Reduce across ranks (collectives: every rank gets here) into ``self.results``."""
        counts = {key: sum(part[key] for part in gather_objects(self.counts)) for key in self.counts}
        self.results = {"counts": counts, "predictions": gather_dicts(self.predictions)}
        self.results["references"] = gather_dicts(self.references)
        if self.evaluator is not None:
            self.results["localisation"] = self.evaluator.compute()
            if self.evaluator.faithfulness_steps:
                self.results["faithfulness_curves"] = self.evaluator.curves()
            records = gather_objects(self.evaluator.records) if self.evaluator.keep_records else []
            self.results["records"] = [record for part in records for record in part]
            timings = gather_objects(self.evaluator.timings)
            self.results["timings"] = {name: [t for part in timings for t in part[name]] for name in timings[0]}


@torch.no_grad()
def generate_captions(model: Any, batches: Iterable[Batch]) -> dict[str, str]:
    """The model's caption for every sample of ``batches`` (on the model's device), keyed by sample id."""
    predictions: dict[str, str] = {}
    for batch in batches:
        tokens = model.generate(model.items(visual_grid(model, batch)))
        predictions.update({i: model.vocab.decode_text(row) for i, row in zip(batch.sample_ids, tokens, strict=True)})
    return predictions
