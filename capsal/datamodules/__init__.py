"""Datamodules: every dataset yields ``capsal.types.Sample``s and collates them into ``capsal.types.Batch``es."""

from capsal.datamodules.base import CaptionDataModule, collate_samples
from capsal.datamodules.shapes import (
    ShapesImageDataModule,
    ShapesImageDataset,
    ShapesVideoDataModule,
    ShapesVideoDataset,
)

__all__ = [
    "CaptionDataModule",
    "ShapesImageDataModule",
    "ShapesImageDataset",
    "ShapesVideoDataModule",
    "ShapesVideoDataset",
    "collate_samples",
]
