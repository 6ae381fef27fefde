"""Trivial baselines of the paper's tables: uniform, centre (a Gaussian at the image centre / middle frame), random."""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat

from capsal.constraints import PositiveFloat, Seed
from capsal.explainers.base import Explainer, Seeds, Sentences
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.types import ItemLayout


class _ConstantMapExplainer(Explainer):
    """A map that ignores the model: only the sentence's words (for the layout of the result) come from it."""

    def item_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        """Scores of the m items, ``(m,)``."""
        raise NotImplementedError

    def region_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        """Scores of the r regions inside a frame, ``(r,)``."""
        return torch.zeros(layout.grid_size[0] * layout.grid_size[1], device=device)

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        batch, n = sentences.word_mask.shape
        layout, seeds = sentences.layout, sentences.seeds
        scores = self.scores(batch, n, layout, items.device, seeds).to(items.dtype)
        video = layout.is_video and grid is not None
        regions = self.regions(batch, n, layout, items.device, seeds) if video else None
        return sentences.saliency(scores, region_scores=regions, explainer=self.name)

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device, seeds: Seeds | None) -> torch.Tensor:
        return repeat(self.item_map(layout, device), "m -> b n m", b=batch, n=n).clone()

    def regions(
        self, batch: int, n: int, layout: ItemLayout, device: torch.device, seeds: Seeds | None
    ) -> torch.Tensor:
        return repeat(self.region_map(layout, device), "r -> b n m r", b=batch, n=n, m=layout.num_items).clone()


@register_explainer("uniform")
class Uniform(_ConstantMapExplainer):
    """Every item equally salient (the "Baseline*" of the paper's Table 2)."""

    def item_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        return torch.zeros(layout.num_items, device=device)


def gaussian(length: int, sigma: float, device: torch.device) -> torch.Tensor:
    """A 1-D Gaussian bump at the centre of ``length`` cells (cell centres at k + 0.5)."""
    positions = torch.arange(length, device=device, dtype=torch.float32) + 0.5
    return torch.exp(-(((positions - length / 2) / max(sigma * length, 1e-6)) ** 2) / 2)


@register_explainer("center")
class Center(_ConstantMapExplainer):
    """A Gaussian at the image centre (images) or the middle frame (videos); ``sigma`` is relative to the size."""

    def __init__(self, sigma: PositiveFloat = 0.25):
        self.sigma = sigma

    def _grid_bump(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        h, w = layout.grid_size
        return (gaussian(h, self.sigma, device)[:, None] * gaussian(w, self.sigma, device)[None, :]).flatten()

    def item_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        if layout.is_video:
            return gaussian(layout.num_items, self.sigma, device)
        return layout.from_grid(self._grid_bump(layout, device))

    def region_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        return self._grid_bump(layout, device)


@register_explainer("random")
class Random(_ConstantMapExplainer):
    """Independent uniform random scores per sample, word and item.

    Given sample ids (``capsal-eval`` and the callback pass them), each (sample, sentence) draws from its own
    generators seeded by ``seed`` and the sample's id: the same maps in any batch, on any number of processes, and
    independent across samples. Without ids, one generator seeded once by ``seed`` advances from call to call
    (:class:`~capsal.explainers.base.Seeds`).
    """

    draws_randomness = True

    def __init__(self, seed: Seed = 0):
        self.seed = seed

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device, seeds: Seeds | None) -> torch.Tensor:
        return seeds.rand((batch, n, layout.num_items), "items").to(device)

    def regions(
        self, batch: int, n: int, layout: ItemLayout, device: torch.device, seeds: Seeds | None
    ) -> torch.Tensor:
        r = layout.grid_size[0] * layout.grid_size[1]
        return seeds.rand((batch, n, layout.num_items, r), "regions").to(device)
