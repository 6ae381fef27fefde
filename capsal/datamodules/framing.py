"""How images are framed, from training and extraction to scoring: the ``protocol`` option and its crop geometry.

``full`` resizes the whole image and scores maps at the original size against the original boxes. ``center_crop``
is Liu et al.'s protocol (the one the paper follows for Table 2): the central square of the image (side: its short
side) is what the model sees, maps are scored on that square, and boxes are moved into it and clipped.

The geometry lives here, with the datamodules that frame the images, so pixels (``center_square``) and boxes
(``crop_boxes``) are cut by the same ``center_crop_region``; the metrics only ever see framed data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from capsal.datamodules.media import Size
from capsal.errors import UserError
from capsal.types import Box

Protocol = Literal["full", "center_crop"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of ``PROTOCOLS``, else the one-line error a user sees."""
    if protocol not in PROTOCOLS:
        raise UserError(f"datamodule.protocol={protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}.")
    return protocol


def center_crop_region(height: int, width: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the central square of an ``height x width`` image, its side the short side.

    Offsets are rounded as torchvision's ``center_crop`` rounds them, so the crop matches a resize-free CenterCrop.
    """
    side = max(1, min(height, width))
    return round((height - side) / 2.0), round((width - side) / 2.0), side


def crop_boxes(boxes: Sequence[Box], top: int, left: int, side: int) -> list[Box]:
    """Inclusive pixel boxes moved into a ``side x side`` crop at ``(top, left)`` and clipped to it; boxes entirely
    outside the crop are dropped (a phrase left without boxes is skipped by the metrics)."""
    out: list[Box] = []
    last = side - 1
    for x0, y0, x1, y1 in boxes:
        x0, x1, y0, y1 = x0 - left, x1 - left, y0 - top, y1 - top
        if x1 < 0 or y1 < 0 or x0 > last or y0 > last:
            continue
        out.append((max(x0, 0), max(y0, 0), min(x1, last), min(y1, last)))
    return out


def center_square(pixels: torch.Tensor, size: Size = None) -> torch.Tensor:
    """The central square of uint8 ``(T, 3, H, W)`` pixels (``center_crop_region``), resized to ``size`` when given.

    The resize is bilinear with antialiasing (as PIL's), so a square read this way matches a square image read at
    that size.
    """
    top, left, side = center_crop_region(*pixels.shape[-2:])
    square = pixels[..., top : top + side, left : left + side]
    if size is None:
        return square.contiguous()
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(square.shape[-2:]) == hw:
        return square.contiguous()
    resized = F.interpolate(square.float(), size=hw, mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)
