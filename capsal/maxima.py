"""The one rule for where a saliency map or vector peaks, used by every metric, figure and summary.

The maximum is the centroid of all positions that attain it, rounded half up (``floor(c + 0.5)``): a single peak is
itself, and a constant or centre-symmetric map points at its centre rather than wherever ``argmax`` happens to stop.
So the pointing game scores, the figures mark and ``capsal-explain`` reports the same pixel and the same frame.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import Tensor


def peak_locations(maps: Tensor) -> Tensor:
    """``(P, H, W)`` maps -> ``(P, 2)`` long ``(x, y)`` points of maximum saliency (ties: rounded centroid)."""
    if maps.ndim != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"saliency maps must be (P, H, W) with H, W > 0, got shape {tuple(maps.shape)}")
    if torch.isnan(maps).any():
        raise ValueError("saliency maps contain NaN; fix the explainer output before scoring it")
    height = maps.shape[1]
    flat = rearrange(maps, "p h w -> p (h w)")
    peak = rearrange(flat == flat.amax(dim=1, keepdim=True), "p (h w) -> p h w", h=height).long()
    n = reduce(peak, "p h w -> p", "sum").double()
    xs = torch.arange(maps.shape[2], device=maps.device)
    ys = torch.arange(height, device=maps.device)
    cx = (reduce(peak, "p h w -> p w", "sum") * xs).sum(1).double() / n
    cy = (reduce(peak, "p h w -> p h", "sum") * ys).sum(1).double() / n
    return torch.floor(torch.stack([cx, cy], dim=1) + 0.5).long()


def peak_location(saliency: Tensor) -> tuple[int, int]:
    """``(x, y)`` of the maximum of one ``(H, W)`` map (ties: rounded centroid), e.g. to mark it in a figure."""
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map must be (H, W), got shape {tuple(saliency.shape)}")
    x, y = peak_locations(saliency[None])[0].tolist()
    return int(x), int(y)


def peak_frames(saliency: Tensor) -> Tensor:
    """``(P, T)`` temporal saliency -> ``(P,)`` long most salient frame (ties: rounded centroid of the tied frames)."""
    if saliency.ndim != 2:
        raise ValueError(f"temporal saliency must be (P, T), got shape {tuple(saliency.shape)}")
    return peak_locations(rearrange(saliency, "p t -> p 1 t"))[:, 0]


def peak_frame(saliency: Tensor) -> int:
    """Most salient frame of one ``(T,)`` vector (ties: rounded centroid), e.g. to show it in a video figure."""
    if saliency.ndim != 1:
        raise ValueError(f"temporal saliency must be (T,), got shape {tuple(saliency.shape)}")
    return int(peak_frames(saliency[None])[0])
