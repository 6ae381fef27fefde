"""Eq. 13 measured: how one grid region inside a video frame should be fed alone (the README's study).

    .venv/bin/python benchmarks/eq13_study.py outputs/demo/video/latest/checkpoints/last.ckpt [--split test]

For a video checkpoint trained on grid means (``make demo-video``), prints the norms of the descriptors the model was
trained on (frame descriptors = grid means) next to those of single cells, then the temporal pointing and the spatial
pointing inside the most salient frame of ``caption_guided`` with each ``region_input`` (``pooled``, ``cell``,
``rescaled``) on the checkpoint's own datamodule, scored by the evaluator ``capsal-eval`` uses. Never run by the tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainer
from capsal.explainers.caption_guided import REGION_INPUTS, region_inputs


def descriptor_norms(grids: torch.Tensor) -> dict[str, float]:
    """Mean L2 norms over frames of ``(n, T, h, w, d)`` grids: the frame descriptor, a cell, the frame's strongest
    cell (where the object is), and the same two fed ``pooled``."""
    frame = grids.mean(dim=(2, 3)).norm(dim=-1)
    cells = grids.norm(dim=-1)
    pooled = region_inputs(grids, "pooled").norm(dim=-1)
    return {
        "frame descriptor (grid mean)": float(frame.mean()),
        "one cell": float(cells.mean()),
        "the frame's strongest cell": float(cells.amax(dim=(2, 3)).mean()),
        "one cell, pooled": float(pooled.mean()),
        "the frame's strongest cell, pooled": float(pooled.amax(dim=(2, 3)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_captioner(args.checkpoint)
    datamodule = checkpoint_datamodule(model)
    split = datamodule.get_split(args.split)
    samples = [split[i] for i in range(len(split))]
    grids = torch.stack([s.grid if s.grid is not None else model.features(s.pixels[None] / 255)[0] for s in samples])
    print(f"| descriptor ({args.split} split, {len(samples)} clips) | mean L2 norm |\n|---|---|")
    for name, value in descriptor_norms(grids.float()).items():
        print(f"| {name} | {value:.2f} |")
    explainers = {kind: build_explainer("caption_guided", region_input=kind) for kind in REGION_INPUTS}
    evaluator = LocalisationEvaluator(explainers, datamodule.categories, is_video=True)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches_of(caption_pairs(samples), model.vocab, args.batch_size):
            evaluator.update(model, batch)
    results = evaluator.compute()
    print("\n| region_input | temporal pointing | spatial pointing in that frame |\n|---|---|---|")
    for kind, metrics in results.items():
        temporal, spatial = metrics["temporal_pointing"]["avg"], metrics["spatial_pointing"]["avg"]
        print(f"| {kind} | {temporal:.3f} | {spatial:.3f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
