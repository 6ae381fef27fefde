"""Localisation metrics: hand-computed pointing game, attention correctness and temporal pointing cases, and a
cross-check of the pointing game against a plain NumPy implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capsal.maxima import peak_location
from capsal.metrics import (
    AttentionCorrectness,
    PointingGame,
    TemporalPointingGame,
    attention_correctness,
    pointing_hits,
)
from capsal.metrics.base import points_in_boxes

CATS = ["people", "animals", "scene"]


def peak_map(height: int, width: int, *points: tuple[int, int]) -> torch.Tensor:
    saliency = torch.zeros(height, width)
    for x, y in points:
        saliency[y, x] = 1.0
    return saliency


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()}


# ---------------------------------------------------------------- pointing game (the maximum: tests/test_maxima.py)


def test_boxes_are_inclusive_up_to_the_image_edge():
    height, width = 20, 30
    corner = peak_map(height, width, (width - 1, height - 1))
    assert pointing_hits([corner], [[(20, 10, width - 1, height - 1)]]).tolist() == [True]
    assert pointing_hits([corner], [[(20, 10, width - 2, height - 1)]]).tolist() == [False]
    assert pointing_hits([corner], [[(20, 10, width - 1, height - 2)]]).tolist() == [False]
    origin = peak_map(height, width, (0, 0))
    assert pointing_hits([origin], [[(0, 0, 0, 0)]]).tolist() == [True]  # a one-pixel box


def test_any_of_several_boxes_counts_and_ties_use_the_centroid():
    two_peaks = peak_map(20, 30, (4, 10), (16, 10))  # centroid (10, 10)
    boxes = [
        [(0, 0, 2, 2), (8, 8, 12, 12)],  # second box holds the centroid -> hit
        [(2, 8, 6, 12), (14, 8, 18, 12)],  # each box holds one peak but not the centroid -> miss
        [(10, 10, 10, 10)],  # exactly the centroid -> hit
    ]
    hits = pointing_hits(torch.stack([two_peaks] * 3), boxes)
    assert hits.tolist() == [True, False, True]


def test_tolerance_is_euclidean_distance_to_the_box():
    straight = peak_map(40, 40, (30, 5))  # 10 px right of the box (x1 = 20)
    diagonal = peak_map(40, 40, (28, 16))  # dx = 8, dy = 6 below/right of the corner (20, 10): distance 10
    box = [(10, 0, 20, 10)]
    cases = [(0, [False, False]), (10, [False, False]), (10.01, [True, True]), (15, [True, True])]
    for tolerance, expected in cases:  # strictly closer than the tolerance (TorchRay's rule): 10 px away misses at 10
        assert pointing_hits([straight, diagonal], [box, box], tolerance).tolist() == expected, tolerance
    metric = PointingGame(CATS, tolerance=15)
    metric.update([straight], [box], ["people"])
    assert float(metric.compute()["avg"]) == 1.0
    strict = PointingGame(CATS)
    strict.update([straight], [box], ["people"])
    assert float(strict.compute()["avg"]) == 0.0


def test_a_point_exactly_tolerance_away_misses_and_box_edges_always_hit():
    point = torch.tensor([[50, 20]])
    at_15 = [(10, 0, 35, 30)]  # x1 = 35: the point is exactly 15 px to its right
    at_14_9 = [(10, 0, 35.1, 30)]  # 14.9 px
    assert points_in_boxes(point, [at_15], tolerance=15).tolist() == [False]
    assert points_in_boxes(point, [at_14_9], tolerance=15).tolist() == [True]
    metric = PointingGame(CATS, tolerance=15)
    metric.update([peak_map(40, 60, (50, 20))] * 2, [at_15, at_14_9], ["people", "animals"])
    result = as_floats(metric.compute())
    assert (result["people"], result["animals"], result["avg"]) == (0.0, 1.0, 0.5)
    on_edge = peak_map(40, 60, (35, 30))  # the bottom-right corner pixel of the box itself
    assert pointing_hits([on_edge], [at_15], tolerance=0).tolist() == [True]
    assert pointing_hits([on_edge], [at_15], tolerance=15).tolist() == [True]
    assert pointing_hits([peak_map(40, 60, (36, 30))], [at_15], tolerance=0).tolist() == [False]  # 1 px outside


def test_per_category_and_average_accumulate_over_updates_and_skip_phrases_without_boxes():
    metric = PointingGame(CATS)
    hit, miss = [(0, 0, 4, 4)], [(10, 10, 14, 14)]
    saliency = peak_map(16, 16, (2, 2))
    metric.update(torch.stack([saliency] * 3), [hit, miss, []], ["people", "people", "animals"])
    metric.update([saliency, saliency, saliency], [hit, hit, miss], ["animals", "people", "bicycles"])
    metric.update([saliency], [[]], ["scene"])
    result = as_floats(metric.compute())
    assert set(result) == {"avg", "people", "animals", "scene", "other", "skipped"}
    assert result["people"] == pytest.approx(2 / 3)
    assert result["animals"] == 1.0
    assert result["other"] == 0.0  # "bicycles" is not a listed category
    assert math.isnan(result["scene"])  # its only phrase had no boxes
    assert result["avg"] == pytest.approx(3 / 5)  # per phrase, not the mean of categories
    assert result["skipped"] == 2
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(metric.compute()["avg"]))


def test_unknown_categories_can_raise_and_listed_other_absorbs_them():
    metric = PointingGame(CATS, unknown="raise")
    assert metric.categories == tuple(CATS)
    with pytest.raises(ValueError, match="unknown phrase category 'bicycles'"):
        metric.update([torch.zeros(4, 4)], [[(0, 0, 1, 1)]], ["bicycles"])
    assert float(metric.compute()["skipped"]) == 0  # a rejected batch leaves no trace
    flickr = PointingGame(["people", "other"])
    flickr.update([peak_map(8, 8, (1, 1))], [[(0, 0, 2, 2)]], ["bicycles"])
    assert flickr.categories == ("people", "other")
    assert float(flickr.compute()["other"]) == 1.0
    with pytest.raises(ValueError, match="clash"):
        PointingGame(["avg"])


def test_maps_of_different_sizes_and_bad_inputs():
    metric = PointingGame(CATS)
    metric.update(
        [peak_map(10, 20, (19, 9)), peak_map(30, 5, (0, 29))], [[(15, 5, 19, 9)], [(0, 0, 4, 28)]], ["people"] * 2
    )
    assert as_floats(metric.compute())["people"] == 0.5
    with pytest.raises(ValueError, match="one per phrase"):
        metric.update(torch.zeros(2, 4, 4), [[(0, 0, 1, 1)]], ["people"])
    with pytest.raises(ValueError, match="x0 <= x1"):
        metric.update(torch.zeros(1, 4, 4), [[(3, 0, 1, 1)]], ["people"])


# ---------------------------------------------------------------- attention correctness


def test_uniform_map_scores_the_union_area_ratio():
    height, width = 20, 30
    boxes = [(0, 0, 9, 9), (5, 5, 14, 14), (25, 15, width - 1, height - 1)]  # first two overlap by 5x5
    union = 100 + 100 - 25 + 5 * 5
    score = attention_correctness(torch.full((height, width), 0.7), boxes)
    assert float(score) == pytest.approx(union / (height * width), abs=1e-12)
    assert float(attention_correctness(torch.zeros(height, width), boxes)) == pytest.approx(union / 600)


def test_mass_inside_the_boxes_scores_one_and_negative_maps_are_shifted_or_clamped():
    saliency = torch.zeros(10, 10)
    saliency[2:5, 3:7] = torch.rand(3, 4) + 0.1
    assert float(attention_correctness(saliency, [(3, 2, 6, 4)])) == pytest.approx(1.0)
    assert float(attention_correctness(saliency, [(3, 2, 4, 4)])) < 1.0
    signed = torch.full((2, 2), -1.0)
    signed[0, 0] = 1.0  # shifted: [[2, 0], [0, 0]] -> all mass on (0, 0)
    assert float(attention_correctness(signed, [(0, 0, 0, 0)])) == pytest.approx(1.0)
    signed[1, 1] = 0.0  # shifted: [[2, 0], [0, 1]]
    assert float(attention_correctness(signed, [(0, 0, 0, 0)])) == pytest.approx(2 / 3)
    assert float(attention_correctness(signed, [(0, 0, 0, 0)], negative="clamp")) == pytest.approx(1.0)
    positive = torch.tensor([[3.0, 1.0], [1.0, 1.0]])  # already non-negative: used as is, not shifted
    assert float(attention_correctness(positive, [(0, 0, 0, 0)])) == pytest.approx(0.5)


def test_attention_correctness_metric_aggregates_and_skips():
    metric = AttentionCorrectness(CATS)
    uniform = torch.ones(10, 10)
    metric.update(torch.stack([uniform, uniform, uniform]), [[(0, 0, 4, 9)], [(0, 0, 9, 9)], []], CATS)
    result = as_floats(metric.compute())
    assert result["people"] == pytest.approx(0.5)
    assert result["animals"] == pytest.approx(1.0)
    assert math.isnan(result["scene"])
    assert result["avg"] == pytest.approx(0.75)
    assert result["skipped"] == 1
    with pytest.raises(ValueError, match="NaN or inf"):
        metric.update([torch.full((3, 3), float("inf"))], [[(0, 0, 1, 1)]], ["people"])


def test_attention_correctness_scores_the_whole_map_it_is_given():
    """The metric never crops: the datamodule's protocol frames images and boxes (see datamodules/test_protocol.py)."""
    saliency = torch.ones(10, 20)
    saliency[:, :5] = 100.0
    metric = AttentionCorrectness(CATS)
    metric.update([saliency], [[(0, 0, 9, 9)]], ["people"])
    assert float(metric.compute()["people"]) == pytest.approx((50 * 100 + 50) / (50 * 100 + 150))


# ---------------------------------------------------------------- temporal pointing game


def test_temporal_pointing_ties_and_half_open_intervals():
    metric = TemporalPointingGame(CATS)
    one_hot = torch.eye(8)
    metric.update(
        one_hot[[2, 5, 4, 3, 0]],
        [(2, 5), (2, 5), (4, 5), None, (0, 1)],
        ["people", "people", "animals", "scene", "scene"],
    )
    ties = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # tie between frames 1 and 3 -> frame 2
    metric.update([ties, ties], [(2, 3), (0, 2)], ["animals", "animals"])
    result = as_floats(metric.compute())
    assert result["temporal/people"] == 0.5  # frame 5 is the excluded end of [2, 5)
    assert result["temporal/animals"] == pytest.approx(2 / 3)
    assert result["temporal/scene"] == 1.0
    assert result["temporal/avg"] == pytest.approx(4 / 6)
    assert result["temporal/skipped"] == 1
    assert math.isnan(result["spatial/avg"])  # no spatial maps given


def test_spatial_pointing_in_the_most_salient_frame():
    frames, height, width = 4, 12, 16
    temporal = torch.tensor([[0.1, 0.9, 0.2, 0.0]] * 4)  # frame 1 for every phrase
    spatial = torch.zeros(4, frames, height, width)
    spatial[:, 1, 3, 4] = 1.0  # peak at (x=4, y=3) in frame 1
    spatial[:, 2, 10, 14] = 5.0  # a higher peak in another frame must not matter
    inside, outside = [(2, 2, 6, 6)], [(10, 8, 15, 11)]
    frame_boxes = [{1: inside, 2: outside}, {1: outside, 2: inside}, {2: inside, 3: inside}, {}]
    metric = TemporalPointingGame(CATS)
    metric.update(temporal, [(1, 2), (0, 4), (2, 4), None], ["people"] * 4, spatial, frame_boxes)
    result = as_floats(metric.compute())
    assert result["temporal/people"] == pytest.approx(2 / 3)
    assert result["spatial/people"] == pytest.approx(1 / 3)  # hit, wrong box, no boxes in frame 1 (miss)
    assert result["spatial/skipped"] == 1  # the phrase without any frame boxes
    assert result["temporal/skipped"] == 1
    listed = TemporalPointingGame(CATS)
    listed.update(list(temporal), [(1, 2), (0, 4), (2, 4), None], ["people"] * 4, list(spatial), frame_boxes)
    assert as_floats(listed.compute()) == pytest.approx(result, nan_ok=True)
    with pytest.raises(ValueError, match="both or neither"):
        metric.update(temporal, [None] * 4, ["people"] * 4, spatial)
    with pytest.raises(ValueError, match="half-open"):
        metric.update(temporal[:1], [(3, 3)], ["people"])


# ---------------------------------------------------------------- cross-check against plain NumPy


def reference_point(saliency: np.ndarray) -> tuple[int, int]:
    height, width = saliency.shape
    best = saliency.max()
    xs, ys = [], []
    for y in range(height):
        for x in range(width):
            if saliency[y, x] == best:
                xs.append(x)
                ys.append(y)
    return math.floor(sum(xs) / len(xs) + 0.5), math.floor(sum(ys) / len(ys) + 0.5)


def reference_hit(point: tuple[int, int], boxes: list, tolerance: float) -> bool:
    x, y = point
    for x0, y0, x1, y1 in boxes:
        dx = max(x0 - x, 0, x - x1)
        dy = max(y0 - y, 0, y - y1)
        if (dx, dy) == (0, 0) or math.hypot(dx, dy) < tolerance:
            return True
    return False


def random_phrases(seed: int, n: int) -> tuple[list[np.ndarray], list[list], list[str]]:
    rng = np.random.default_rng(seed)
    maps, boxes, categories = [], [], []
    for i in range(n):
        height, width = rng.integers(4, 40, size=2)
        if i % 3 == 0:  # few levels: many ties
            saliency = rng.integers(0, 3, size=(height, width)).astype(np.float32)
        elif i % 3 == 1:
            saliency = np.round(rng.random((height, width)), 1).astype(np.float32)
        else:
            saliency = rng.random((height, width), dtype=np.float32)
        phrase_boxes = []
        for _ in range(rng.integers(0, 4)):
            x0, x1 = sorted(rng.integers(0, width, size=2))
            y0, y1 = sorted(rng.integers(0, height, size=2))
            phrase_boxes.append((int(x0), int(y0), int(x1), int(y1)))
        maps.append(saliency)
        boxes.append(phrase_boxes)
        categories.append(CATS[int(rng.integers(0, len(CATS)))])
    return maps, boxes, categories


@pytest.mark.parametrize("tolerance", [0, 15])
def test_pointing_game_matches_a_plain_numpy_implementation(tolerance):
    maps, boxes, categories = random_phrases(seed=0, n=200)
    expected = [reference_hit(reference_point(m), b, tolerance) for m, b in zip(maps, boxes, strict=True)]
    tensors = [torch.from_numpy(m) for m in maps]
    hits = pointing_hits(tensors, boxes, tolerance).tolist()
    assert [peak_location(t) for t in tensors] == [reference_point(m) for m in maps]
    assert hits == [e and bool(b) for e, b in zip(expected, boxes, strict=True)]
    assert 0 < sum(hits) < len(hits)

    metric = PointingGame(CATS, tolerance=tolerance)
    for start in range(0, 200, 64):
        metric.update(tensors[start : start + 64], boxes[start : start + 64], categories[start : start + 64])
    result = as_floats(metric.compute())
    scored = [(e, c) for e, b, c in zip(expected, boxes, categories, strict=True) if b]
    assert result["skipped"] == 200 - len(scored)
    assert result["avg"] == pytest.approx(sum(e for e, _ in scored) / len(scored), abs=1e-12)
    for category in CATS:
        own = [e for e, c in scored if c == category]
        assert result[category] == pytest.approx(sum(own) / len(own), abs=1e-12)
