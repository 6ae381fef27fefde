"""Speed and memory of the batched caption-guided explainer against its floor, a naive loop and Captum's
FeatureAblation.

    .venv/bin/python benchmarks/bench_explain.py [--device cuda] [--video] [--size demo|paper] [--words 16 40]
        [--budget-mb 256] [--naive-items K] [--captum-words K] [--repeats R]

Image case: one image of m = 64 items (an 8x8 grid). Video case (--video): 26 frames x 64 regions (r*m + m = 1690
single-item inputs). ``--size demo``: a demo-size S2VT (hidden 256) over an 18-word vocabulary; ``--size paper``:
the paper's S2VT (2048-d descriptors projected to 1300, hidden 1000, embedding 300) over a synthetic vocabulary of
10,000 words. Random weights: timing does not depend on what the model learned.

Per sentence length: the explainer's first call (a fresh explainer: it probes the pass's memory cost) and its median
time once the cost is known (an evaluation probes once per sentence length); the floor (one teacher-forced pass of
the same batch of single-item inputs, target log-probabilities only, unchunked); the naive loop (one call per item
and word, the definition; with ``--naive-items K`` only K items are timed and the time is scaled to all, marked
"extrapolated"); Captum FeatureAblation (image only) with its default configuration, one ``attribute`` call per word
and at its best, ``perturbations_per_eval=m`` (``--captum-words K``: K words timed, scaled to all, marked); the
peak memory of a first call under the budget it ran with, measured apart from the explainer's own probes (CUDA:
``max_memory_allocated``; CPU on Linux: the growth of the process's peak resident size, ``VmHWM`` reset just before
the call); captions explained per second (steady state).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from capsal.explainers import build_explainer
from capsal.models.protocol import target_logprobs
from capsal.models.s2vt import S2VT

DEMO_WORDS = "a big small red green blue yellow circle square triangle diamond and moves left right up down then"


def build_model(size: str, device: torch.device) -> S2VT:
    if size == "demo":
        return S2VT(DEMO_WORDS.split(), hidden_size=256, embed_size=64, caption_metrics=[]).to(device).eval()
    words = [f"w{i}" for i in range(10_000 - 4)]  # + pad, bos, eos, unk = 10,000
    backbone = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 2048]}  # 2048-d descriptors
    model = S2VT(
        words, hidden_size=1000, embed_size=300, input_projection_size=1300, backbone=backbone, caption_metrics=[]
    )
    return model.to(device).eval()


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warm_up: bool = True) -> float:
    """Median seconds of ``repeats`` runs (after one warm-up unless ``warm_up`` is False)."""
    if warm_up:
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
    parser.add_argument("--size", choices=("demo", "paper"), default="demo")
    parser.add_argument("--words", type=int, nargs="+", default=[16], help="sentence lengths (words, eos added)")
    parser.add_argument("--budget-mb", type=float, default=1024.0, help="the explainer's memory_budget_mb")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-items", type=int, default=None, help="time the naive loop on K items, extrapolate")
    parser.add_argument("--captum-words", type=int, default=None, help="time Captum's default on K words, extrapolate")
    parser.add_argument("--skip-slow", action="store_true", help="skip the naive loop and Captum")
    parser.add_argument("--precision", default="32", help="the explainer's precision: 32, bf16-mixed or 16-mixed")
    parser.add_argument("--peak-of", type=int, default=None, help=argparse.SUPPRESS)  # measured_peak's subprocess
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.size, device)
    d = model.feature_size
    grid = torch.randn(1, 26 if args.video else 1, 8, 8, d, device=device)
    items = model.items(grid)
    if args.peak_of is not None:
        return print_peak_growth(model, grid, sentence_tokens(model, args.peak_of, device), args)
    m = items.shape[1]
    singles = (grid.flatten(1, 3) if args.video else items).transpose(0, 1)  # every single-item input
    all_singles = torch.cat([items.transpose(0, 1), singles]) if args.video else singles
    batch = all_singles.shape[0]
    explainer = build_explainer("caption_guided", memory_budget_mb=args.budget_mb, precision=args.precision)
    print(
        f"device {device}, size {args.size} (V = {len(model.vocab)}, d = {d}), "
        f"{'video 26 frames x 64 regions' if args.video else 'image 8x8 grid'}, {batch} single-item inputs, "
        f"memory_budget_mb {args.budget_mb:g}, median of {args.repeats}\n"
    )
    print(
        "| words | first call s | explainer s | floor s | explainer/floor | naive/explainer | Captum default/explainer "
        "| Captum best/explainer | peak MB (budget) | chunk | captions/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n_words in args.words:
        tokens = sentence_tokens(model, n_words, device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]

        @torch.no_grad()
        def explainer_run(tokens=tokens):
            return explainer.explain(model, items, grid=grid, tokens=tokens)

        def fresh_run(tokens=tokens):  # a new explainer: no cost known, it probes
            fresh = build_explainer("caption_guided", memory_budget_mb=args.budget_mb, precision=args.precision)
            return torch.no_grad()(fresh.explain)(model, items, grid=grid, tokens=tokens)

        @torch.no_grad()
        def floor_run(inputs=inputs, targets=targets):  # one teacher-forced pass of the same batch
            state = model.encode(all_singles)
            return target_logprobs(model, state, inputs.expand(batch, -1), targets.expand(batch, -1))

        t_explainer = timed(explainer_run, device, args.repeats)
        t_first = timed(fresh_run, device, 1, warm_up=False)
        t_floor = timed(floor_run, device, args.repeats)
        peak = measured_peak(fresh_run, device) if device.type == "cuda" else subprocess_peak(n_words)
        chunk = explainer.last_chunking["chunk"]
        naive = captum_default = captum_best = "-"
        if not args.skip_slow:
            k = min(args.naive_items or batch, batch)
            t_naive = timed(naive_run(model, all_singles[:k], inputs), device, 1, warm_up=False) * batch / k
            naive = f"{t_naive / t_explainer:.1f}" + (f" (extrapolated from {k} items)" if k < batch else "")
            if not args.video:
                words = targets.shape[1]
                k = min(args.captum_words or words, words)
                subset = f" (extrapolated from {k} words)" if k < words else ""
                t_default = timed(captum_run(model, items, inputs, targets, 1, k), device, 1, False) * words / k
                captum_default = f"{t_default / t_explainer:.1f}{subset}"
                t_best = timed(captum_run(model, items, inputs, targets, m, k), device, 1, False) * words / k
                captum_best = f"{t_best / t_explainer:.1f}{subset}"
        print(
            f"| {n_words} | {t_first:.3f} | {t_explainer:.3f} | {t_floor:.3f} | {t_explainer / t_floor:.2f} | "
            f"{naive} | "
            f"{captum_default} | {captum_best} | {peak / 2**20:.0f} ({args.budget_mb:g}) | {chunk} | "
            f"{1 / t_explainer:.2f} |"
        )


def sentence_tokens(model: S2VT, n_words: int, device: torch.device) -> torch.Tensor:
    """A sentence of ``n_words`` vocabulary words (bos ... eos), ``(1, n_words + 2)``."""
    vocab_words = model.vocab.to_list()[4:]
    sentence = " ".join((vocab_words * (n_words // len(vocab_words) + 1))[:n_words])
    return torch.tensor([model.vocab.encode(sentence)], device=device)


def measured_peak(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes ``fn()`` added on CUDA (``max_memory_allocated``)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() - base


def subprocess_peak(n_words: int) -> float:
    """Peak bytes of a fresh explainer's call on CPU, measured apart from the explainer in a new process of this
    script (same arguments): :func:`script_peak`."""
    return script_peak(__file__, [*sys.argv[1:], "--peak-of", str(n_words)])


def script_peak(script: str, argv: list[str]) -> float:
    """Bytes: the last line of ``script argv`` (MiB, :func:`peak_growth`) run in a new process. glibc is told to map
    every block >= 64 KiB on its own, so freed blocks leave the resident size and it follows the live memory."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, script, *argv], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1]) * 2**20


def print_peak_growth(model: S2VT, grid: torch.Tensor, tokens: torch.Tensor, args) -> None:
    """In the subprocess: warm the runtime up on a two-item input, explain with a fresh explainer, print the peak's
    growth in MiB (:func:`peak_growth`)."""
    options = {"memory_budget_mb": args.budget_mb, "precision": args.precision}
    two = grid[:, :, :1, :2].flatten(1, 3)
    growth = peak_growth(
        lambda: build_explainer("caption_guided", **options).explain(model, two, tokens=tokens),
        lambda: build_explainer("caption_guided", **options).explain(
            model, model.items(grid), grid=grid, tokens=tokens
        ),
    )
    print(growth)


def peak_growth(warm_up: Callable[[], object], run: Callable[[], object]) -> float:
    """MiB the process's peak resident size grows by during ``run()`` (no gradients), after ``warm_up()`` and the
    peak (``VmHWM``) reset to the current resident size just before the call."""
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("measuring the CPU peak needs Linux /proc (clear_refs, VmHWM)")
    with torch.no_grad():
        warm_up()
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        before = proc_status_kib("VmRSS:")
        run()
    return (proc_status_kib("VmHWM:") - before) / 1024


def proc_status_kib(key: str) -> int:
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith(key))


def naive_run(model, singles, inputs, start: int = 0) -> Callable[[], object]:
    """One call per item and word: the definition, literally (the words' positions from ``start``: after a prefix
    the model needs whole, as an image-text-to-text model's image tokens)."""

    @torch.no_grad()
    def run():
        for i in range(singles.shape[0]):
            state = model.encode(singles[i : i + 1])
            for t in range(start, inputs.shape[1]):
                model.token_logprobs(state, inputs[:, : t + 1])

    return run


def captum_run(model, items, inputs, targets, per_eval: int, words: int) -> Callable[[], object]:
    """FeatureAblation occluding one item (all its channels) at a time, one ``attribute`` call per word (the first
    ``words``), ``per_eval`` occlusions per forward pass."""
    from captum.attr import FeatureAblation

    def word_logprobs(x: torch.Tensor) -> torch.Tensor:
        return target_logprobs(model, model.encode(x), inputs.expand(x.shape[0], -1), targets.expand(x.shape[0], -1))

    ablation = FeatureAblation(word_logprobs)
    feature_mask = torch.arange(items.shape[1], device=items.device)[None, :, None].expand_as(items)

    @torch.no_grad()
    def run():
        return [
            ablation.attribute(items, target=t, feature_mask=feature_mask, perturbations_per_eval=per_eval)
            for t in range(words)
        ]

    return run


if __name__ == "__main__":
    main()
