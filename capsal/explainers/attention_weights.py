"""The soft-attention model's own attention weights ``alpha_ti`` (paper Eq. 5), as a ``Saliency``."""

from __future__ import annotations

from typing import Any

import torch

from capsal.errors import UserError
from capsal.explainers.base import Explainer, Sentence, eval_mode, prepare
from capsal.explainers.precision import autocast, normalize_precision
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import has_attention, widened


@register_explainer("soft_attention")
class SoftAttentionWeights(Explainer):
    """Reads ``model.attention(state, tokens)`` under teacher forcing: ``scores`` are the softmax weights (float32;
    ``precision``: the model calls' autocast, :mod:`capsal.explainers.precision`)."""

    def __init__(self, beam_size: int = 1, precision: int | str = 32):
        self.beam_size = beam_size
        self.precision = precision
        normalize_precision(precision)  # a wrong name stops here, not at the first batch

    @torch.no_grad()
    def explain(
        self,
        model: Any,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        tokens: Sentence = None,
    ) -> Saliency:
        if not has_attention(model):
            raise UserError(
                f"explainer soft_attention needs a model with attention weights (model=soft_attention); "
                f"{type(model).__name__} has none: use explainer=caption_guided"
            )
        with eval_mode(model), autocast(self.precision, items.device, model):
            s = prepare(model, items, mask, grid, tokens, self.beam_size)
            weights = widened(model.attention(model.encode(items, s.mask), s.tokens[:, :-1]))
        return s.saliency(weights, explainer=self.name)
