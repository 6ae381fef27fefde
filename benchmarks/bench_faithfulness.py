"""What deletion and insertion cost per caption, against the caption-guided explanation of the same caption and
against their floor (the same teacher-forced inputs run as one unchunked batch).

    .venv/bin/python benchmarks/bench_faithfulness.py [--size demo|paper] [--repeats R] [--budget-mb MB]

``--size demo``: the image demo's soft-attention model (hidden 256, an 18-word vocabulary) over one 8x8 grid (m = 64
items); ``--size paper``: the paper's S2VT (2048-d descriptors projected to 1300, hidden 1000, embedding 300, a
10,000-word vocabulary) over 26 frames. Random weights and random maps: the cost depends on the shapes, not on what
the model learned or which items a map ranks first. The caption has 9 words and two 4-word phrases, as the demo's
"a big green circle and a small red square" (``capsal-eval``'s default: per phrase); per word is the same caption's
9 one-word spans; "8 captions" is a batch of 8 such samples (16 phrases), as ``capsal-eval`` scores them. Median of
``repeats`` runs after one warm-up, each row measured in the same process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from capsal.explainers import build_explainer
from capsal.explainers.base import Seeds
from capsal.metrics.faithfulness import STEPS, faithfulness_curves, removal_order, step_counts, step_keeps
from capsal.models.protocol import keep_items, target_logprobs
from capsal.models.s2vt import S2VT
from capsal.models.soft_attention import SoftAttention

DEMO_WORDS = "a big small red green blue yellow circle square triangle diamond and moves left right up down then"
CAPTION = "a big green circle and a small red square"
PHRASES = [(0, 0, 4), (0, 5, 9)]


def build(size: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model, the items of one sample and the caption's tokens."""
    torch.manual_seed(0)
    if size == "demo":
        model = SoftAttention(DEMO_WORDS.split(), hidden_size=256, embed_size=64, caption_metrics=[]).eval()
        items = torch.randn(1, 64, model.feature_size)
        return model, items, model.vocab.pad_batch([model.vocab.encode(CAPTION)])
    own = list(dict.fromkeys(CAPTION.split()))
    words = [*own, *(f"w{i}" for i in range(10_000 - 4 - len(own)))]  # + pad, bos, eos, unk = 10,000
    backbone = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 2048]}
    model = S2VT(
        words, hidden_size=1000, embed_size=300, input_projection_size=1300, backbone=backbone, caption_metrics=[]
    ).eval()
    return model, torch.randn(1, 26, 2048), model.vocab.pad_batch([model.vocab.encode(CAPTION)])


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def floor(model, items, tokens, spans, maps) -> None:
    """The same 2 P (K + 1) inputs as one unchunked batch: every input padded to all m items, the whole sentence."""
    rows = torch.tensor([row for row, _, _ in spans])
    mask = torch.ones(len(spans), items.shape[1], dtype=torch.bool)
    seeds = Seeds(0, ["s"] * len(spans), torch.Generator())
    order = removal_order(maps, mask, [seeds.generator(p, "floor") for p in range(len(spans))])
    counts = step_counts(mask.sum(1), STEPS)
    keeps = torch.cat([step_keeps(order, counts, mask, insertion).flatten(0, 1) for insertion in (False, True)])
    who = rows.repeat_interleave(STEPS + 1).repeat(2)
    kept, kept_mask, positions = keep_items(items[who], keeps)
    state = model.encode(kept, kept_mask, positions)
    target_logprobs(model, state, tokens[who, :-1], tokens[who, 1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("demo", "paper"), default="demo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-mb", type=float, default=256.0, help="memory budget of the chunked passes")
    args = parser.parse_args()
    model, items, tokens = build(args.size)
    words = [(0, w, w + 1) for w in range(len(CAPTION.split()))]
    explainer = build_explainer("caption_guided", memory_budget_mb=args.budget_mb)
    words_count = len(CAPTION.split())
    print(f"size={args.size}: m={items.shape[1]} items, {words_count} words, K={STEPS}, {args.repeats} repeats")
    print("| spans | inputs | faithfulness s | floor s | / floor | caption_guided s | / caption_guided |")
    print("|---|---|---|---|---|---|---|")
    batch = (items.repeat(8, 1, 1), tokens.repeat(8, 1), [f"s{i}" for i in range(8)])
    cases = {
        "1 caption, 2 phrases": ((items, tokens, ["s"]), PHRASES),
        "1 caption, 9 words": ((items, tokens, ["s"]), words),
        "8 captions, 16 phrases": (batch, [(row, a, b) for row in range(8) for _, a, b in PHRASES]),
    }
    for name, ((its, toks, ids), spans) in cases.items():
        maps = torch.rand(len(spans), items.shape[1], generator=torch.Generator().manual_seed(0))

        def faithfulness(its=its, toks=toks, ids=ids, spans=spans, maps=maps) -> None:
            faithfulness_curves(model, its, toks, spans, maps, ids, memory_budget_mb=args.budget_mb)

        ours = timed(faithfulness, args.repeats)
        base = timed(
            lambda its=its, toks=toks, spans=spans, maps=maps: floor(model, its, toks, spans, maps), args.repeats
        )
        inputs = 2 * len(spans) * (STEPS + 1)
        explain = timed(
            lambda its=its, toks=toks, ids=ids: explainer.explain(model, its, tokens=toks, sample_ids=ids), args.repeats
        )
        print(
            f"| {name} | {inputs} | {ours:.4f} | {base:.4f} | {ours / base:.2f} "
            f"| {explain:.4f} | {ours / explain:.2f} |"
        )


if __name__ == "__main__":
    main()
