"""Trivial baselines of the paper's tables: uniform, centre (a Gaussian at the image centre / middle frame), random."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from einops import repeat

from capsal.explainers.base import Explainer, Sentence, eval_mode, prepare
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
        sample_ids: Sequence[str] | None = None,
    ) -> Saliency:
        """``sample_ids`` (one per row) make seeded maps reproducible per sample, whatever batch it comes in."""
        with eval_mode(model):  # the sentence may be the model's own caption
            s = prepare(model, items, mask, grid, tokens)
        batch, n = s.word_mask.shape
        sentences = [" ".join(words) for words in s.words]
        keys = None if sample_ids is None else [f"{i}/{text}" for i, text in zip(sample_ids, sentences, strict=True)]
        scores = self.scores(batch, n, s.layout, items.device, keys).to(items.dtype)
        video = s.layout.is_video and grid is not None
        regions = self.regions(batch, n, s.layout, items.device, keys) if video else None
        return s.saliency(scores, region_scores=regions, explainer=self.name)

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device, keys=None) -> torch.Tensor:
        return repeat(self.item_map(layout, device), "m -> b n m", b=batch, n=n).clone()

    def regions(self, batch: int, n: int, layout: ItemLayout, device: torch.device, keys=None) -> torch.Tensor:
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
    """Independent uniform random scores per sample, word and item.

    Given sample ids (``capsal-eval`` and the callback pass them), each (sample, sentence) draws from its own
    generator seeded by ``seed`` and the sample's id: the same maps in any batch, on any number of processes, and
    independent across samples. Without ids, one generator seeded once by ``seed`` advances from call to call.
    """

    seeded_per_sample = True

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def _draw(self, shape: tuple[int, ...], keys, stream: str) -> torch.Tensor:
        if keys is None:
            return torch.rand(*shape, generator=self._generator)
        rows = []
        for key in keys:  # word by word, so a word's values do not depend on the padded sentence length
            generator = torch.Generator().manual_seed(_seed(self.seed, key, stream))
            rows.append(torch.stack([torch.rand(*shape[2:], generator=generator) for _ in range(shape[1])]))
        return torch.stack(rows)

    def scores(self, batch: int, n: int, layout: ItemLayout, device: torch.device, keys=None) -> torch.Tensor:
        return self._draw((batch, n, layout.num_items), keys, "items").to(device)

    def regions(self, batch: int, n: int, layout: ItemLayout, device: torch.device, keys=None) -> torch.Tensor:
        r = layout.grid_size[0] * layout.grid_size[1]
        return self._draw((batch, n, layout.num_items, r), keys, "regions").to(device)


def _seed(seed: int, key: str, stream: str) -> int:
    """A 63-bit generator seed from the explainer's seed, a sample's key and the stream (items or regions)."""
    digest = hashlib.sha256(f"{seed}/{stream}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
