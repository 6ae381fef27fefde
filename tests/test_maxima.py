"""The one rule for the maximum of a map or a temporal vector: ties go to the centroid of the tied positions, rounded
half up."""

from __future__ import annotations

import pytest
import torch

from capsal.maxima import peak_frame, peak_frames, peak_location, peak_locations


def peak_map(height: int, width: int, *points: tuple[int, int]) -> torch.Tensor:
    saliency = torch.zeros(height, width)
    for x, y in points:
        saliency[y, x] = 1.0
    return saliency


def test_a_single_peak_is_itself():
    assert peak_location(peak_map(20, 30, (7, 4))) == (7, 4)
    assert peak_frame(torch.eye(6)[4]) == 4


@pytest.mark.parametrize(
    ("shape", "centre"),
    [((5, 7), (3, 2)), ((4, 6), (3, 2)), ((1, 1), (0, 0)), ((8, 8), (4, 4))],  # (2.5, 1.5) and (3.5, 3.5) round up
)
def test_a_constant_map_points_at_its_centre(shape, centre):
    assert peak_location(torch.full(shape, 0.3)) == centre
    assert peak_location(torch.zeros(shape)) == centre


def test_two_tied_pixels_point_at_their_midpoint_rounded_half_up():
    assert peak_location(peak_map(20, 30, (2, 10), (8, 10))) == (5, 10)
    assert peak_location(peak_map(20, 30, (2, 10), (5, 10))) == (4, 10)  # 3.5 -> 4
    assert peak_location(peak_map(20, 30, (3, 1), (4, 2))) == (4, 2)  # (3.5, 1.5) -> (4, 2)
    ring = torch.zeros(9, 9)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = 2.0  # centre-symmetric
    assert peak_location(ring) == (4, 4)


@pytest.mark.parametrize(("frames", "middle"), [(8, 4), (5, 2), (1, 0), (2, 1)])
def test_a_uniform_temporal_vector_points_at_the_middle_frame(frames, middle):
    assert peak_frame(torch.full((frames,), 1.0 / frames)) == middle
    assert peak_frames(torch.ones(3, frames)).tolist() == [middle] * 3


def test_tied_frames_point_at_their_rounded_centroid():
    assert peak_frame(torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])) == 3  # 2.5 -> 3
    assert peak_frame(torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])) == 2


def test_batched_and_single_agree_and_types():
    torch.manual_seed(0)
    maps = torch.rand(6, 7, 9)
    maps[2] = 1.0
    points = peak_locations(maps)
    assert points.dtype == torch.long and points.shape == (6, 2)
    assert [peak_location(m) for m in maps] == [tuple(p) for p in points.tolist()]
    assert all(type(v) is int for v in peak_location(maps[0]))
    temporal = torch.rand(4, 10, dtype=torch.float64)
    frames = peak_frames(temporal)
    assert frames.dtype == torch.long and frames.shape == (4,)
    assert frames.tolist() == temporal.argmax(1).tolist()  # no ties: plain argmax
    assert [peak_frame(t) for t in temporal] == frames.tolist()
    assert type(peak_frame(temporal[0])) is int


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        peak_location(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="NaN"):
        peak_frame(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        peak_location(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(P, H, W\)"):
        peak_locations(torch.ones(3, 0, 4))
    with pytest.raises(ValueError, match=r"\(P, T\)"):
        peak_frames(torch.ones(5))
    with pytest.raises(ValueError, match=r"\(T,\)"):
        peak_frame(torch.ones(2, 5))
