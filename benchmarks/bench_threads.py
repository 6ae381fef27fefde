"""Seconds per S2VT training step on video frame descriptors with 1 and 2 torch threads (why make demo-video runs
with one: on a busy 2-core machine two threads per process fight for the cores).

    .venv/bin/python benchmarks/bench_threads.py [--steps 10]

Each thread count runs in a fresh process (torch fixes its thread pool once); the model is the video demo's S2VT
(hidden 256) on random ``(32, 26, 8, 8, 64)`` grids, as the demo's cache gives them. Print the load average beside
the numbers: they depend on what else runs. Never run by the tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORDS = ["a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "diamond", "moves", "left", "right"]


def time_steps(steps: int) -> float:
    import torch

    from capsal.models.s2vt import S2VT

    torch.manual_seed(0)
    model = S2VT(WORDS, hidden_size=256, embed_size=64, caption_metrics=[])
    model.backbone = torch.nn.Identity()  # the grids are given, as from a cache
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    grid = torch.rand(32, 26, 8, 8, model.feature_size)
    tokens = torch.randint(3, len(model.vocab), (32, 12))
    tokens[:, 0] = model.vocab.bos_id
    for step in range(steps + 1):
        if step == 1:  # the first step warms up
            start = time.perf_counter()
        loss = model.caption_loss(model.items(grid), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        print(f"{time_steps(args.steps):.3f}")
        return
    print(f"load average {os.getloadavg()[0]:.1f}")
    for threads in (1, 2):
        command = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(threads)]
        seconds = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"{threads} thread(s): {seconds} s per training step")


if __name__ == "__main__":
    main()
