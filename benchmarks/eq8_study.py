"""Eq. 8's zero point measured: the paper's min-max over the items against the evidence gained over no item at all
(``caption_guided`` with ``zero_point=min`` and ``zero_point=empty``; the study in docs/studies/eq8-zero-point.md).

    .venv/bin/python benchmarks/eq8_study.py outputs/demo/image/latest/checkpoints/last.ckpt [--figure docs/eq8.png]
    .venv/bin/python benchmarks/eq8_study.py outputs/demo/video/latest/checkpoints/best.ckpt

On the checkpoint's own datamodule and split (every reference caption a query, as ``capsal-eval``), both zero points
scored by the evaluator ``capsal-eval`` uses: pointing game and attention correctness (images) or temporal and spatial
pointing (video), deletion and insertion (16 steps), each with its 95% interval over samples, and the paired
difference ``empty - min`` on the same samples. ``--figure``: the first test image's phrases under both. Never run by
the tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from capsal import viz
from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs, grounded_phrases
from capsal.explainers import build_explainer
from capsal.metrics.intervals import record_intervals
from capsal.models.protocol import item_layout, visual_grid

ZERO_POINTS = ("min", "empty")


def figure(model, explainers, sample, path: str) -> None:
    """The sample's first caption: each phrase's map under each zero point (one row per zero point)."""
    batch = next(batches_of(caption_pairs([sample], all_captions=False), model.vocab, 1))
    with torch.no_grad():
        grid = visual_grid(model, batch)
    spans, phrases = grounded_phrases(batch.captions)
    image = viz.to_numpy_image(sample.pixels[0])
    heats, labels, boxes = [], [], []
    for kind, explainer in explainers.items():
        saliency = explainer.explain(model, model.items(grid), grid=grid, tokens=batch.tokens)
        maps = saliency.to_image_size(*image.shape[:2], saliency.phrase_maps(spans))
        for (_, start, end), phrase, heat in zip(spans, phrases, maps, strict=True):
            heats.append(heat.float().numpy())
            labels.append(f"{kind}: {' '.join(saliency.words[0][start:end])}")
            boxes.append(phrase.boxes)
    fig = viz.overlay_figure(image, heats, labels, batch.captions[0].text, boxes, columns=len(spans) + 1)
    viz.save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--figure", default=None, help="write the first sample's phrase maps here (images)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_captioner(args.checkpoint)
    datamodule = checkpoint_datamodule(model)
    split = datamodule.get_split(args.split)
    samples = [split[i] for i in range(len(split))]
    explainers = {kind: build_explainer("caption_guided", zero_point=kind) for kind in ZERO_POINTS}
    with torch.no_grad():
        probe = visual_grid(model, next(batches_of(samples[:1], model.vocab, 1)))
    video = item_layout(model, tuple(probe.shape[1:4])).is_video
    evaluator = LocalisationEvaluator(
        explainers, datamodule.categories, is_video=video, keep_records=True, faithfulness_steps=16
    )
    start = time.perf_counter()
    for batch in batches_of(caption_pairs(samples), model.vocab, args.batch_size):
        evaluator.update(model, batch)
    results = evaluator.compute()
    intervals = record_intervals(evaluator.records, datamodule.categories, reference="min")
    metrics = [m for m in next(iter(results.values())) if m in next(iter(intervals.values()))]
    print(f"{len(samples)} samples, {len(evaluator.records) // len(explainers)} phrases")
    print("| zero_point | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics))
    for kind in ZERO_POINTS:
        print(f"| {kind} | " + " | ".join(str(intervals[kind][m]["avg"]) for m in metrics) + " |")
    print("| empty - min | " + " | ".join(str(intervals["empty"][m]["minus_min"]) for m in metrics) + " |")
    if "spatial_pointing" in results["min"]:
        print(
            "spatial pointing (no interval): "
            + ", ".join(f"{kind} {results[kind]['spatial_pointing']['avg']:.3f}" for kind in ZERO_POINTS)
        )
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.figure:
        figure(model, explainers, samples[0], args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
