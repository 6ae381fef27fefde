"""Pictures of saliency: per-word overlays (paper Fig. 3/4) and video strips with salient frames (Fig. 5)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from capsal.types import Box

COLORMAP = "jet"  # red = high, blue = low, as in the paper's figures


def to_numpy_image(pixels: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` uint8 or float in [0, 1] -> ``(H, W, 3)`` float in [0, 1]."""
    image = pixels.detach().cpu().float()
    if pixels.dtype == torch.uint8:
        image = image / 255.0
    return rearrange(image, "c h w -> h w c").clamp(0, 1).numpy()


def peak(heat: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the maximum; ties go to the centroid of the tied positions."""
    ys, xs = np.nonzero(heat >= heat.max())
    return float(xs.mean()), float(ys.mean())


def draw_overlay(ax, image: np.ndarray, heat: np.ndarray, title: str = "", boxes: Sequence[Box] = ()) -> None:
    """The image, the heatmap over it, the maximum marked with a star and ground-truth boxes in white."""
    ax.imshow(image, interpolation="nearest")
    ax.imshow(heat, cmap=COLORMAP, alpha=0.5, vmin=0.0, vmax=1.0, interpolation="bilinear")
    x, y = peak(heat)
    ax.plot([x], [y], marker="*", markersize=14, color="white", markeredgecolor="black")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="white", lw=1.5))
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def overlay_figure(
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    labels: Sequence[str],
    sentence: str = "",
    boxes: Sequence[Sequence[Box]] | None = None,
    columns: int = 6,
):
    """The image then one overlay per word or phrase, the sentence underneath."""
    panels = len(heats) + 1
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("input", fontsize=10)
    axes[0].axis("off")
    for k, (heat, label) in enumerate(zip(heats, labels, strict=True)):
        draw_overlay(axes[k + 1], image, heat, label, boxes[k] if boxes else ())
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(sentence, y=0.02, va="bottom", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def video_figure(
    frames: np.ndarray,
    temporal: np.ndarray,
    words: Sequence[str],
    spatial: np.ndarray | None = None,
    sentence: str = "",
):
    """Fig. 5: per word, temporal saliency over frames as a grey strip (darker = more salient); below, each
    word's most salient frame with its spatial overlay (when ``spatial`` ``(n, T, H, W)`` is given)."""
    n, num_frames = temporal.shape
    show_frames = spatial is not None
    height = 0.35 * n + 1.0 + (2.4 if show_frames else 0.0)
    fig = Figure(figsize=(max(8.0, 1.8 * n), height))
    top = fig.add_axes((0.12, 1 - (0.35 * n + 0.6) / height, 0.85, (0.35 * n) / height))
    top.imshow(1.0 - temporal, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    top.set_yticks(range(n), list(words))
    top.set_xticks(range(0, num_frames, max(1, num_frames // 13)))
    top.set_xlabel("frame")
    if show_frames:
        best = temporal.argmax(1)
        width = 1.0 / n
        for k in range(n):
            ax = fig.add_axes((k * width + 0.01, 0.05, width - 0.02, 2.0 / height))
            draw_overlay(ax, frames[best[k]], spatial[k, best[k]], f"{words[k]} @ {best[k]}")
    fig.suptitle(sentence, fontsize=11)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
