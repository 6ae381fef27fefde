"""Where a Hugging Face captioner's caption-guided floor spends its time (encode: tower + projector, against the
language model), the floor's own peak memory, then explainer and floor timed alternately in one process.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_hf_parts.py [--model smolvlm] [--rounds 2] [--keep prefix input]

The model, the image and the sentence are ``bench_hf.py``'s (``bench_hf.setup``); the floor is one teacher-forced pass
of the m single-item inputs; the peak is ``bench_explain.peak_growth`` (a fresh process's peak resident size).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_explain import peak_growth
from bench_hf import setup

from capsal.explainers import build_explainer
from capsal.models.protocol import target_logprobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smolvlm")
    parser.add_argument("--keep", nargs="+", default=["prefix", "input"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--words", type=int, default=8)
    parser.add_argument("--budget-mb", type=float, default=256.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    for keep in args.keep:
        parts(keep, args)


@torch.no_grad()
def parts(keep: str, args: argparse.Namespace) -> None:
    """One ``keep`` mode: encode and language-model seconds, the floor's peak, then ``args.rounds`` alternations."""
    model, pixels, tokens = setup(keep, args, torch.device("cpu"))
    items = model.items(model.features(pixels))
    m = items.shape[1]
    singles, positions = items.transpose(0, 1), torch.arange(m)[:, None]
    inputs, targets = tokens[:, :-1].expand(m, -1), tokens[:, 1:].expand(m, -1)

    def encode():
        return model.encode(singles, None, positions)

    def floor():
        return target_logprobs(model, encode(), inputs, targets)

    state = encode()
    target_logprobs(model, state, inputs, targets)  # warm-up
    start = time.perf_counter()
    state = encode()
    encoded = time.perf_counter()
    target_logprobs(model, state, inputs, targets)
    done = time.perf_counter()
    print(f"{keep}: encode {encoded - start:.2f} s, language model {done - encoded:.2f} s", flush=True)
    print(f"{keep}: floor peak growth {peak_growth(lambda: None, floor):.0f} MiB", flush=True)
    explainer = build_explainer("caption_guided", memory_budget_mb=args.budget_mb)
    explainer.explain(model, items, tokens=tokens)  # its probes, once per model and sentence length
    for k in range(args.rounds):
        start = time.perf_counter()
        explainer.explain(model, items, tokens=tokens)
        explained = time.perf_counter()
        floor()
        done = time.perf_counter()
        ratio = (explained - start) / (done - explained)
        print(f"{keep} round {k}: explainer {explained - start:.2f} s, floor {done - explained:.2f} s, {ratio:.2f}")


if __name__ == "__main__":
    main()
