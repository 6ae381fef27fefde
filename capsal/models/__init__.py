"""Captioners implementing the encoder-decoder protocol."""

from capsal.models.base import CaptioningModule
from capsal.models.protocol import EncoderDecoder, check_protocol, has_attention
from capsal.models.s2vt import S2VT
from capsal.models.soft_attention import SoftAttention
from capsal.models.transformer import TransformerCaptioner

__all__ = [
    "S2VT",
    "CaptioningModule",
    "EncoderDecoder",
    "SoftAttention",
    "TransformerCaptioner",
    "check_protocol",
    "has_attention",
]
