"""The soft-attention model's own attention weights ``alpha_ti`` (paper Eq. 5), as a ``Saliency``."""

from __future__ import annotations

from typing import Any

import torch

from capsal.constraints import PositiveInt
from capsal.errors import UserError
from capsal.explainers.base import Explainer, Sentences
from capsal.explainers.precision import Precision, normalize_precision
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import has_attention, widened


@register_explainer("soft_attention")
class SoftAttentionWeights(Explainer):
    """Reads ``model.attention(state, tokens)`` under teacher forcing: ``scores`` are the softmax weights (float32;
    ``precision``: the model calls' autocast, :mod:`capsal.explainers.precision`)."""

    def __init__(self, beam_size: PositiveInt = 1, precision: Precision = 32):
        self.beam_size = beam_size
        self.precision = precision
        normalize_precision(precision)  # a wrong name stops here, not at the first batch

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        if not has_attention(model):
            raise UserError(
                f"explainer soft_attention needs a model with attention weights (model=soft_attention); "
                f"{type(model).__name__} has none: use explainer=caption_guided"
            )
        weights = widened(model.attention(model.encode(items, sentences.mask), sentences.tokens[:, :-1]))
        return sentences.saliency(weights, explainer=self.name)
