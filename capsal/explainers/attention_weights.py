"""The soft-attention model's own attention weights ``alpha_ti`` (paper Eq. 5), as a ``Saliency``."""

from __future__ import annotations

from typing import Any

import torch

from capsal.explainers.base import Sentences
from capsal.explainers.gradient import ModelPassExplainer
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import has_attention, widened


@register_explainer("soft_attention")
class SoftAttentionWeights(ModelPassExplainer):
    """Reads ``model.attention(state, tokens)`` under teacher forcing: ``scores`` are the softmax weights (float32;
    ``precision``: the model calls' autocast, :mod:`capsal.explainers.precision`)."""

    @classmethod
    def refusal(cls, model: Any) -> str | None:
        if has_attention(model):
            return None
        return (
            f"explainer soft_attention needs a model with attention weights (model=soft_attention); "
            f"{type(model).__name__} has none: use explainer=caption_guided"
        )

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        weights = widened(model.attention(model.encode(items, sentences.mask), sentences.tokens[:, :-1]))
        return sentences.saliency(weights, explainer=self.name)
