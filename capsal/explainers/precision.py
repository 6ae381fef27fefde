"""The precision an explainer runs its model calls in, named as Lightning names precisions.

``32`` (also ``"32"`` and ``"32-true"``): float32, and any autocast around the explainer (a Lightning step under
``trainer.precision=16-mixed``) is switched off for the explainer's own calls, so the option alone decides.
``bf16-mixed`` / ``16-mixed``: the model calls run under ``torch.autocast(<the items' device type>, bfloat16 /
float16)``. Whatever the precision, explainers return losses and scores in float32.

``16-mixed`` is refused on the CPU with one line: CPU float16 autocast does not run every layer (oneDNN has no float16
LSTM, so S2VT fails deep inside torch); ``bf16-mixed`` is the CPU's mixed precision. On a CPU without bf16 recurrent
kernels the model's recurrent layers run in float32 inside it (:mod:`capsal.cpu_bf16`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from capsal.cpu_bf16 import bf16_fallback
from capsal.errors import UserError

# the ``precision`` option's type: the values it accepts (YAML's 32 is an integer)
Precision = Literal[32, "32", "32-true", "bf16-mixed", "16-mixed"]
PRECISIONS = get_args(Precision)
_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def normalize_precision(precision: int | str) -> str:
    """``"32"``, ``"bf16-mixed"`` or ``"16-mixed"``; anything else is a :class:`UserError` naming the choices."""
    if isinstance(precision, bool) or not any(precision == p and type(precision) is type(p) for p in PRECISIONS):
        raise UserError(
            f"explainer precision must be one of {', '.join(str(p) for p in PRECISIONS[1:])}, got {precision!r} "
            "(explainer_options.caption_guided.precision=bf16-mixed, for example)"
        )
    return "32" if str(precision) in ("32", "32-true") else str(precision)


@contextlib.contextmanager
def autocast(precision: int | str, device: torch.device | str, model: torch.nn.Module | None = None) -> Iterator[None]:
    """The model calls' context on ``device``: float32 (any surrounding autocast off) or mixed precision; ``model``'s
    recurrent layers stay float32 where the CPU has no bf16 kernels for them (pass it, or they may fail there)."""
    precision = normalize_precision(precision)
    device_type = torch.device(device).type
    if precision == "32":
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                yield
        else:
            yield
        return
    if precision == "16-mixed" and device_type == "cpu":
        raise UserError(
            "explainer precision 16-mixed needs a GPU: CPU float16 autocast cannot run every layer "
            "(oneDNN has no float16 LSTM); use precision=bf16-mixed on the CPU"
        )
    fallback = bf16_fallback(model, precision, device) if model is not None else contextlib.nullcontext()
    with torch.autocast(device_type=device_type, dtype=_DTYPES[precision]), fallback:
        yield
