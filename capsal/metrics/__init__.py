"""Localisation and captioning metrics."""

from capsal.metrics.attention_correctness import AttentionCorrectness, attention_correctness
from capsal.metrics.base import CategoryAccuracy
from capsal.metrics.pointing_game import (
    PointingGame,
    pointing_hits,
    pointing_location,
    pointing_locations,
)
from capsal.metrics.temporal import TemporalPointingGame, pointing_frame, pointing_frames

__all__ = [
    "AttentionCorrectness",
    "CategoryAccuracy",
    "PointingGame",
    "TemporalPointingGame",
    "attention_correctness",
    "pointing_frame",
    "pointing_frames",
    "pointing_hits",
    "pointing_location",
    "pointing_locations",
]
