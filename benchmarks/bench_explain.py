"""Speed of the batched caption-guided explainer against its floor, naive loops and Captum's FeatureAblation.

    .venv/bin/pip install -e ".[bench]"        # captum, for the comparison only
    .venv/bin/python benchmarks/bench_explain.py [--device cuda] [--video]

Image case: a 16-word sentence over m = 64 items (an 8x8 grid). Video case (--video): 26 frames x 64 regions
(r*m + m = 1690 single-item inputs). The model is a demo-size S2VT (hidden 256) with random weights: timing does
not depend on what it learned.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from capsal.explainers import build_explainer
from capsal.models.s2vt import S2VT

WORDS = [
    "a",
    "big",
    "small",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "diamond",
    "and",
    "moves",
    "left",
    "right",
    "up",
    "down",
    "then",
]


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--video", action="store_true", help="26 frames x 8x8 regions instead of one 8x8 image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32", help="the explainer's precision: 32, bf16-mixed or 16-mixed")
    parser.add_argument("--skip-slow", action="store_true", help="skip the per-item-per-word loop and Captum")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = S2VT(WORDS, hidden_size=256, embed_size=64, caption_metrics=[]).to(device).eval()
    d = model.feature_size
    sentence = " ".join((WORDS * 2)[:16])
    explainer = build_explainer("caption_guided", memory_budget_mb=1024, precision=args.precision)
    if args.video:
        grid = torch.randn(1, 26, 8, 8, d, device=device)
        items = model.items(grid)
    else:
        grid = torch.randn(1, 1, 8, 8, d, device=device)
        items = model.items(grid)
    tokens = torch.tensor([model.vocab.encode(sentence)], device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    m = items.shape[1]
    singles = (grid.flatten(1, 3) if args.video else items).transpose(0, 1)  # every single-item input
    batch = singles.shape[0] + (m if args.video else 0)
    all_singles = torch.cat([items.transpose(0, 1), singles]) if args.video else singles

    @torch.no_grad()
    def explainer_run():
        return explainer.explain(model, items, grid=grid, tokens=tokens)

    @torch.no_grad()
    def floor_run():  # one teacher-forced forward of the same batch of single-item inputs
        return model.token_logprobs(model.encode(all_singles), inputs.expand(batch, -1))

    @torch.no_grad()
    def per_item_run():  # one call per item, all words from it
        for i in range(all_singles.shape[0]):
            model.token_logprobs(model.encode(all_singles[i : i + 1]), inputs)

    @torch.no_grad()
    def per_item_word_run():  # one call per item and word: the definition, literally
        for i in range(all_singles.shape[0]):
            state = model.encode(all_singles[i : i + 1])
            for t in range(inputs.shape[1]):
                model.token_logprobs(state, inputs[:, : t + 1])

    rows = [("caption_guided explainer (batched)", timed(explainer_run, device, args.repeats))]
    rows.append(("floor: one teacher-forced pass of the same batch", timed(floor_run, device, args.repeats)))
    rows.append(("naive: one call per item", timed(per_item_run, device, max(1, args.repeats // 2))))
    if not args.skip_slow:
        rows.append(("naive: one call per item and word", timed(per_item_word_run, device, 1)))
        rows.append(
            (
                "Captum FeatureAblation, one item at a time, every word",
                timed(captum_run(model, items, inputs, targets), device, 1),
            )
        )
    explainer_time = rows[0][1]
    print(
        f"device {device}, {'video 26 frames x 64 regions' if args.video else 'image 8x8 grid'}, "
        f"{batch} single-item inputs, {targets.shape[1] - 1} words + eos, precision {args.precision}\n"
    )
    print("| method | seconds | / explainer |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.4f} | {seconds / explainer_time:.2f} |")


def captum_run(model, items, inputs, targets) -> Callable[[], object]:
    """FeatureAblation occluding one item (all its channels) at a time, once per word of the sentence."""
    from captum.attr import FeatureAblation

    def word_logprobs(x: torch.Tensor) -> torch.Tensor:
        logprobs = model.token_logprobs(model.encode(x), inputs.expand(x.shape[0], -1))
        return logprobs.gather(-1, targets.expand(x.shape[0], -1)[..., None])[..., 0]  # (B, n)

    ablation = FeatureAblation(word_logprobs)
    feature_mask = torch.arange(items.shape[1], device=items.device)[None, :, None].expand_as(items)

    @torch.no_grad()
    def run():
        return [ablation.attribute(items, target=t, feature_mask=feature_mask) for t in range(targets.shape[1])]

    return run


if __name__ == "__main__":
    main()
