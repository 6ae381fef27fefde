"""Gallery figures for the saliency callback: a fixed set of validation samples, each explained for the model's own
caption (``prediction``) and its ground-truth caption (``reference``) by every explainer in one batched call each.

Everything here is plain computation on one batch (no Lightning): :func:`explain_gallery` returns one
:class:`GalleryFigure` per (sample, sentence) with the rendered mosaic, the video strip, the per-word table rows and
the same words' grid maps as one sample of the epoch's ``explorer.html`` (:mod:`capsal.explorer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsal import viz
from capsal.evaluation import explain_batch
from capsal.explainers.base import Explainer
from capsal.explainers.saliency import Saliency
from capsal.explorer import ExplorerSample, saliency_maps
from capsal.maxima import peak_frames, peak_locations
from capsal.metrics.base import points_in_boxes
from capsal.types import Box, Caption, Phrase, Sample

KINDS = ("prediction", "reference")
TABLE_COLUMNS = [
    "epoch",
    "step",
    "sample",
    "sample_id",
    "sentence",
    "word_index",
    "word",
    "explainer",
    "overlay",
    "max_x",
    "max_y",
    "frame",
    "hit",
]


@dataclass
class WordResult:
    """One word of one sentence under one explainer: the overlay cell and where its maximum is.

    ``x, y``: the maximum in original image pixels (in the most salient frame for video, None when the explainer has
    no spatial maps there); ``frame``: the most salient frame (video); ``hit``: the maximum lies in the boxes of the
    ground-truth phrase containing the word (images) or the most salient frame in its interval (video), None without
    ground truth.
    """

    explainer: str
    word_index: int
    word: str
    cell: np.ndarray  # uint8 (h, w, 3)
    x: int | None
    y: int | None
    frame: int | None
    hit: bool | None


@dataclass
class GalleryFigure:
    sample: int  # position in the callback's fixed sample list
    sample_id: str
    kind: str  # "prediction" or "reference"
    sentence: str
    words: list[str]  # the words shown (at most max_words)
    image: np.ndarray  # uint8 (H, W, 3) mosaic: one row per explainer
    strip: np.ndarray | None = None  # video: word x frame temporal saliency, one panel per explainer
    results: list[WordResult] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # where "image" and "strip" were saved as PNG
    explorer: ExplorerSample | None = None  # the words shown with their grid maps, for explorer.html (None: no words)


def _phrase_of(caption: Caption | None, word: int) -> Phrase | None:
    if caption is None:
        return None
    return next((p for p in caption.phrases if p.start <= word < p.end), None)


def sentence_tokens(model: Any, items: torch.Tensor, captions: Sequence[Caption], kinds: Sequence[str]) -> torch.Tensor:
    """``(K*B, L)`` bos ... eos tokens: for each kind in order, the model's captions or the reference captions."""
    vocab = model.vocab
    rows: list[list[int]] = []
    for kind in kinds:
        if kind == "prediction":
            generated = model.generate(items)
            rows += [[t for t in row if t != vocab.pad_id] for row in generated.tolist()]
        else:
            rows += [vocab.encode(caption.text) for caption in captions]
    return vocab.pad_batch(rows).to(items.device)


@torch.no_grad()
def _maps(saliency: Saliency, words: int, height: int, width: int):
    """Per row and word: spatial maps at image size (or None), the most salient frame (video) and the maxima."""
    if not saliency.layout.is_video:
        maps = saliency.to_image_size(height, width, saliency.e[:, :words]).float()  # (R, n, H, W)
        points = peak_locations(maps.flatten(0, 1)).view(*maps.shape[:2], 2)
        return maps.cpu().numpy(), None, points.cpu().numpy(), None
    temporal = saliency.e[:, :words].float()  # (R, n, T)
    frames = peak_frames(temporal.flatten(0, 1)).view(temporal.shape[:2])
    region_e = saliency.region_e
    if region_e is None:
        return None, temporal.cpu().numpy(), None, frames.cpu().numpy()
    index = frames[..., None, None].expand(-1, -1, 1, region_e.shape[-1])
    best = region_e[:, :words].gather(2, index)[:, :, 0]  # (R, n, r): the region maps of each word's best frame
    maps = saliency.to_image_size(height, width, best).float()
    points = peak_locations(maps.flatten(0, 1)).view(*maps.shape[:2], 2)
    return maps.cpu().numpy(), temporal.cpu().numpy(), points.cpu().numpy(), frames.cpu().numpy()


def _hit(phrase: Phrase | None, point, frame: int | None, video: bool, tolerance: float) -> bool | None:
    if phrase is None:
        return None
    if video:
        if phrase.interval is None or frame is None:
            return None
        return bool(phrase.interval[0] <= frame < phrase.interval[1])
    if not phrase.boxes or point is None:
        return None
    points = torch.tensor([[int(point[0]), int(point[1])]])
    return bool(points_in_boxes(points, [list(phrase.boxes)], tolerance)[0])


def _boxes(phrase: Phrase | None, frame: int | None, video: bool) -> list[Box]:
    if phrase is None:
        return []
    if video:
        return list(phrase.frame_boxes.get(int(frame), [])) if frame is not None else []
    return list(phrase.boxes)


def explain_gallery(
    model: Any,
    explainers: dict[str, Explainer],
    samples: Sequence[Sample],
    items: torch.Tensor,
    grid: torch.Tensor,
    kinds: Sequence[str] = KINDS,
    max_words: int = 12,
    tolerance: float = 0.0,
    explorer: bool = True,
) -> list[GalleryFigure]:
    """Explain ``samples`` (their ``items``/``grid`` on the model's device) for each sentence kind with every explainer
    (one call per explainer for all samples and sentences) and render one figure per (sample, kind); ``explorer``:
    also each sentence's explorer sample (its maps for every selectable run of words), else None."""
    batch = len(samples)
    captions = [sample.captions[0] for sample in samples]
    tokens = sentence_tokens(model, items, captions, kinds)
    repeat = len(kinds)
    items_all = items.repeat(repeat, *([1] * (items.dim() - 1)))
    grid_all = grid.repeat(repeat, *([1] * (grid.dim() - 1)))
    ids = [sample.sample_id for sample in samples] * repeat
    saliencies = {name: explain_batch(e, model, items_all, grid_all, tokens, ids) for name, e in explainers.items()}
    first = next(iter(saliencies.values()))
    video = first.layout.is_video
    frames_np = [np.stack([viz.to_numpy_image(f) for f in sample.pixels]) for sample in samples]  # (T, H, W, 3)
    height, width = frames_np[0].shape[1:3]
    shape = viz.cell_shape(height, width)
    words_shown = min(max_words, first.word_mask.shape[1])
    computed = {name: _maps(s, words_shown, height, width) for name, s in saliencies.items()}

    figures: list[GalleryFigure] = []
    for b, sample in enumerate(samples):
        rows_of_sample = [k * batch + b for k in range(repeat)]
        columns = 1 + max(min(len(first.words[r]), max_words) for r in rows_of_sample)
        for k, kind in enumerate(kinds):
            row = k * batch + b
            all_words = first.words[row]
            words = all_words[:max_words]
            truth = captions[b] if kind == "reference" else None
            sentence = " ".join(all_words) if all_words else "(empty caption)"
            shown = sentence + (f" [+{len(all_words) - len(words)} more words]" if len(all_words) > len(words) else "")
            rows = [
                _word_row(name, computed[name], row, words, truth, frames_np[b], shape, video, tolerance)
                for name in saliencies
            ]
            results = [result for _, result_row in rows for result in result_row]
            if video:
                image = viz.stack_panels([panel for panel, _ in rows], f"{kind}: {shown}")
            else:
                every_box = [box for p in truth.phrases for box in p.boxes] if truth else []
                first_cell = viz.overlay_cell(frames_np[b][0], None, shape, boxes=every_box)
                cells = [[first_cell, *(r.cell / 255.0 for r in result_row)] for _, result_row in rows]
                titles = [["input", *(r.word for r in result_row)] for _, result_row in rows]
                colors = [["black", *(viz.HIT_COLORS[r.hit] for r in result_row)] for _, result_row in rows]
                image = viz.mosaic_figure(cells, titles, list(saliencies), f"{kind}: {shown}", columns, colors)
            page = (
                _explorer_sample(saliencies, row, frames_np[b], list(words), truth, results, video)
                if explorer
                else None
            )
            if page is not None:
                page.sample_id, page.captions = f"{sample.sample_id} ({kind})", [f"{kind}: {sentence}"]
            figures.append(
                GalleryFigure(b, sample.sample_id, kind, sentence, list(words), image, None, results, explorer=page)
            )
    return figures


def _explorer_sample(
    saliencies: dict[str, Saliency], row: int, frames: np.ndarray, words: list[str], truth, results, video: bool
) -> ExplorerSample | None:
    """One sentence of the gallery as the explorer shows it: the words drawn in the figure with each explainer's
    maps at grid resolution (a clip: its temporal curve and, where the explainer has them, the maps inside every
    frame) and those of every run of words a reader may select, each word's hit as the figure colours it and its
    phrase's boxes (a clip: per frame). None for an empty caption: the page has no word to point at."""
    n = len(words)
    if n == 0:
        return None
    explainers = {name: saliency_maps(s, row, [(t, t + 1) for t in range(n)]) for name, s in saliencies.items()}
    phrases = [_phrase_of(truth, t) for t in range(n)]
    return ExplorerSample(
        frames=viz.to_uint8(frames),
        labels=words,
        explainers=explainers,
        boxes=None if video else [_boxes(p, None, False) for p in phrases],
        frame_boxes=[dict(p.frame_boxes) if p else {} for p in phrases] if video else None,
        hits={name: [r.hit for r in results if r.explainer == name] for name in saliencies},
    )


def _word_row(name: str, computed, row: int, words, truth, frames: np.ndarray, shape, video: bool, tolerance: float):
    """One explainer's results for the words of one sentence: per word the overlay cell (on the video word's most
    salient frame) and where its maximum is; for video also the Fig. 5 panel (strip and frames), else None."""
    maps, temporal, points, best = computed
    results = []
    for t, word in enumerate(words):
        frame = int(best[row, t]) if best is not None else None
        point = tuple(int(v) for v in points[row, t]) if points is not None else None
        phrase = _phrase_of(truth, t)
        hit = _hit(phrase, point, frame, video, tolerance)
        heat = maps[row, t] if maps is not None else None
        cell = viz.overlay_cell(frames[frame if video else 0], heat, shape, point, _boxes(phrase, frame, video))
        x, y = point if point else (None, None)
        results.append(WordResult(name, t, word, viz.to_uint8(cell), x, y, frame, hit))
    if not video:
        return None, results
    boxes = [_boxes(_phrase_of(truth, t), int(best[row, t]), True) for t in range(len(words))]
    panel = viz.video_panel(
        list(frames),
        temporal[row, : len(words)],
        list(words),
        None if maps is None else maps[row, : len(words)],
        boxes,
        [r.hit for r in results],
        title=name,
    )
    return panel.image, results
