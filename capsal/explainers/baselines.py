"""Trivial baselines of the paper's tables: uniform, centre (a Gaussian at the image centre / middle frame), random."""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat

from capsal.explainers.base import Explainer, Sentence, prepare
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

    @torch.no_grad()
    def explain(
        self,
        model: Any,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        tokens: Sentence = None,
    ) -> Saliency:
        s = prepare(model, items, mask, grid, tokens)
        batch, n = s.word_mask.shape
        scores = self.scores(batch, n, s.layout, items.device).to(items.dtype)
        regions = self.regions(batch, n, s.layout, items.device) if s.layout.is_video and grid is not None else None
        return Saliency(
            s.words, s.word_mask, scores, s.mask, s.layout, region_scores=regions, tokens=s.tokens, explainer=self.name
        )

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        return repeat(self.item_map(layout, device), "m -> b n m", b=batch, n=n).clone()

    def regions(self, batch: int, n: int, layout: ItemLayout, device: torch.device) -> torch.Tensor:
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

    def __init__(self, sigma: float = 0.25):
        self.sigma = sigma

    def _grid_bump(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        h, w = layout.grid_size
        return (gaussian(h, self.sigma, device)[:, None] * gaussian(w, self.sigma, device)[None, :]).flatten()

    def item_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        if layout.is_video:
            return gaussian(layout.num_items, self.sigma, device)
        return self._grid_bump(layout, device)

    def region_map(self, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        return self._grid_bump(layout, device)


@register_explainer("random")
class Random(_ConstantMapExplainer):
    """Independent uniform random scores per sample, word and item, reproducible from ``seed``."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(batch, n, layout.num_items, generator=generator).to(device)

    def regions(self, batch: int, n: int, layout: ItemLayout, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        r = layout.grid_size[0] * layout.grid_size[1]
        return torch.rand(batch, n, layout.num_items, r, generator=generator).to(device)
