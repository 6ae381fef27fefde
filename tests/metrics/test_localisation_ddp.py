"""The localisation metrics reduce exactly under DDP: two gloo processes on CPU, each updating with half of the
phrases, must compute what one process computes on all of them; and the bootstrap intervals, resampled on rank zero
from the per-phrase records ``capsal-eval`` gathers, equal one process's."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_intervals import phrase_records

from capsal.cli.tables import interval_results
from capsal.datamodules.base import ShardedSampler
from capsal.evaluation import Evaluation, LocalisationEvaluator
from capsal.metrics import AttentionCorrectness, PointingGame, TemporalPointingGame

CATS = ["people", "animals", "scene"]
NUM_PHRASES = 61  # odd: the ranks get different numbers of phrases
FRAMES = 6


def make_phrases(seed: int = 0) -> list[dict[str, Any]]:
    """Fixed random image and video phrases: maps of different sizes, ties, unknown categories, missing boxes."""
    gen = torch.Generator().manual_seed(seed)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high, (1,), generator=gen))

    def box(width: int, height: int) -> tuple[int, int, int, int]:
        x0, x1 = sorted([randint(0, width), randint(0, width)])
        y0, y1 = sorted([randint(0, height), randint(0, height)])
        return x0, y0, x1, y1

    phrases = []
    for i in range(NUM_PHRASES):
        height, width = randint(8, 24), randint(8, 24)
        saliency = (
            torch.randint(0, 4, (height, width), generator=gen).float()
            if i % 2
            else torch.rand(height, width, generator=gen)
        )
        temporal = torch.randint(0, 3, (FRAMES,), generator=gen).float()
        start = randint(0, FRAMES)
        frame_boxes = {f: [box(width, height)] for f in range(FRAMES) if randint(0, 3) > 0}
        phrases.append(
            {
                "map": saliency - 0.5 * (i % 5 == 0),  # some signed maps
                "boxes": [box(width, height) for _ in range(randint(0, 3))],
                "category": [*CATS, "bicycles"][randint(0, 4)],
                "temporal": temporal,
                "interval": None if i % 7 == 0 else (start, randint(start + 1, FRAMES + 1)),
                "spatial": torch.rand(FRAMES, height, width, generator=gen),
                "frame_boxes": frame_boxes,
            }
        )
    return phrases


def build_metrics() -> dict[str, Any]:
    return {
        "pointing": PointingGame(CATS, tolerance=3),
        "attention": AttentionCorrectness(CATS),
        "temporal": TemporalPointingGame(CATS),
    }


def update_metrics(metrics: dict[str, Any], phrases: list[dict[str, Any]]) -> None:
    for start in range(0, len(phrases), 8):  # several updates per rank
        chunk = phrases[start : start + 8]
        maps, boxes, categories = [p["map"] for p in chunk], [p["boxes"] for p in chunk], [p["category"] for p in chunk]
        metrics["pointing"].update(maps, boxes, categories)
        metrics["attention"].update(maps, boxes, categories)
        metrics["temporal"].update(
            torch.stack([p["temporal"] for p in chunk]),
            [p["interval"] for p in chunk],
            categories,
            [p["spatial"] for p in chunk],
            [p["frame_boxes"] for p in chunk],
        )


def compute_all(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        f"{name}:{key}": float(value) for name, metric in metrics.items() for key, value in metric.compute().items()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, port: int, expected: dict[str, float]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        metrics = build_metrics()
        update_metrics(metrics, make_phrases()[rank::2])
        got = compute_all(metrics)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), (rank, key, got[key], value)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_compute_the_single_process_result():
    metrics = build_metrics()
    update_metrics(metrics, make_phrases())
    expected = compute_all(metrics)
    # the data exercise what the reduction has to get right: skips, several categories, both outcomes
    assert expected["pointing:skipped"] > 0 and expected["temporal:temporal/skipped"] > 0
    assert 0 < expected["pointing:avg"] < 1 and 0 < expected["temporal:spatial/avg"] < 1
    assert 0 < expected["attention:avg"] < 1 and not math.isnan(expected["pointing:other"])
    mp.spawn(_worker, args=(free_port(), expected), nprocs=2, join=True)


def _sample_order(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each sample, samples in the split's order (as one process scores them)."""
    by_sample: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_sample.setdefault(record["sample_id"], []).append(record)
    return list(by_sample.values())


def _intervals_worker(rank: int, port: int, records: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        samples = _sample_order(records)
        evaluator = LocalisationEvaluator({}, ["dog", "cat"], is_video=False, keep_records=True)
        # this rank's samples as capsal-eval's sampler deals them (0, 2, 4, ... and 1, 3, 5, ...)
        evaluator.records = [record for i in ShardedSampler(samples) for record in samples[i]]
        module = Evaluation(torch.nn.Identity(), evaluator, captioning=False)
        module.on_test_epoch_end()  # gathers every rank's records, as after Trainer.test
        gathered = module.results["records"]
        assert gathered != records and len(gathered) == len(records)  # another order than one process's
        assert _intervals(gathered) == expected, rank  # exactly: every bound and paired difference
    finally:
        dist.destroy_process_group()


def _intervals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What capsal-eval adds to its results from the records: the tables' bounds and the paired differences."""
    keys = ("avg", "dog", "cat", "other", "skipped")  # table numbers to sit beside (they do not enter the intervals)
    metrics = ("pointing_game", "attention_correctness")
    table = {name: {m: dict.fromkeys(keys, 0.5) for m in metrics} for name in ("caption_guided", "random")}
    return interval_results(table, records, ["dog", "cat"]) | {"localisation": table}


@pytest.mark.timeout(120)
def test_intervals_from_records_gathered_on_two_gloo_ranks_equal_one_process_s():
    records = phrase_records(np.random.default_rng(2), samples=25)  # odd: the ranks get 13 and 12 samples
    expected = _intervals(records)
    bounds = expected["localisation"]["caption_guided"]["attention_correctness"]
    assert bounds["dog_low"] < bounds["dog_high"] and "other_low" in bounds  # intervals to compare, per category
    assert set(expected["paired_differences"]["random"]) >= {"pointing_game", "pointing_game_low"}
    mp.spawn(_intervals_worker, args=(free_port(), records, expected), nprocs=2, join=True)
