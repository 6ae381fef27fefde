"""Captioners implementing the encoder-decoder protocol."""

from capsal.models.base import CaptioningModule
from capsal.models.protocol import EncoderDecoder, check_protocol, has_attention
from capsal.models.s2vt import S2VT

__all__ = ["S2VT", "CaptioningModule", "EncoderDecoder", "check_protocol", "has_attention"]
