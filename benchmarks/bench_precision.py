"""Speed of the caption-guided explainer in bf16-mixed (or 16-mixed) against float32, runs interleaved.

    .venv/bin/python benchmarks/bench_precision.py [--device cuda] [--video] [--repeats 15]

The demo-size S2VT and inputs of ``bench_explain.py`` (a 16-word sentence over m = 64 items, or with --video 26
frames x 64 regions). The two precisions alternate run by run, so a busy machine slows both alike; medians.
"""

from __future__ import annotations

import argparse
import time

import torch

from capsal.explainers import build_explainer
from capsal.models.s2vt import S2VT

WORDS = ["a", "big", "small", "red", "green", "blue", "yellow", "circle", "square", "triangle", "diamond", "and"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--video", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--mixed", default=None, help="bf16-mixed (default) or 16-mixed (GPU only)")
    args = parser.parse_args()
    device = torch.device(args.device)
    mixed = args.mixed or "bf16-mixed"
    torch.manual_seed(0)
    model = S2VT(WORDS, hidden_size=256, embed_size=64, caption_metrics=[]).to(device).eval()
    grid = torch.randn(1, 26 if args.video else 1, 8, 8, model.feature_size, device=device)
    items = model.items(grid)
    tokens = torch.tensor([model.vocab.encode(" ".join((WORDS * 2)[:16]))], device=device)
    explainers = {p: build_explainer("caption_guided", memory_budget_mb=1024, precision=p) for p in ("32", mixed)}
    times: dict[str, list[float]] = {p: [] for p in explainers}
    for repeat in range(args.repeats + 1):
        for precision, explainer in explainers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            explainer.explain(model, items, grid=grid, tokens=tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:  # the first round warms up
                times[precision].append(time.perf_counter() - start)
    median = {p: sorted(t)[len(t) // 2] for p, t in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    case = "video 26 frames x 64 regions" if args.video else "image 8x8 grid"
    print(f"{name}, {case}, median of {args.repeats} interleaved runs\n")
    print("| precision | seconds | / float32 |")
    print("|---|---|---|")
    for precision, seconds in median.items():
        print(f"| {precision} | {seconds:.4f} | {seconds / median['32']:.2f} |")


if __name__ == "__main__":
    main()
