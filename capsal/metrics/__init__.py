"""Localisation, faithfulness and captioning metrics. Where a map peaks is decided by :mod:`capsal.maxima`."""

from capsal.metrics.attention_correctness import AttentionCorrectness, attention_correctness
from capsal.metrics.base import CategoryAccuracy
from capsal.metrics.faithfulness import Faithfulness
from capsal.metrics.pointing_game import PointingGame, pointing_hits
from capsal.metrics.temporal import TemporalPointingGame

__all__ = [
    "AttentionCorrectness",
    "CategoryAccuracy",
    "Faithfulness",
    "PointingGame",
    "TemporalPointingGame",
    "attention_correctness",
    "pointing_hits",
]
