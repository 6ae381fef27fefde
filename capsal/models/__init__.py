"""Captioners implementing the encoder-decoder protocol.

The names load lazily (PEP 562): ``import capsal.models.protocol`` stays free of Lightning and the model code, while
``from capsal.models import S2VT`` imports ``capsal.models.s2vt`` on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capsal.models.base import CaptioningModule
    from capsal.models.protocol import EncoderDecoder, check_protocol, has_attention
    from capsal.models.s2vt import S2VT
    from capsal.models.soft_attention import SoftAttention
    from capsal.models.transformer import TransformerCaptioner

# public name -> the submodule defining it
_SUBMODULES = {
    "S2VT": "s2vt",
    "CaptioningModule": "base",
    "EncoderDecoder": "protocol",
    "SoftAttention": "soft_attention",
    "TransformerCaptioner": "transformer",
    "check_protocol": "protocol",
    "has_attention": "protocol",
}

__all__ = [
    "S2VT",
    "CaptioningModule",
    "EncoderDecoder",
    "SoftAttention",
    "TransformerCaptioner",
    "check_protocol",
    "has_attention",
]


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULES.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
