"""Gradient x input: a standard gradient baseline for the word's log-probability."""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from capsal.constraints import PositiveInt
from capsal.explainers.base import Explainer, Sentences
from capsal.explainers.precision import Precision, normalize_precision
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import widened


class ModelPassExplainer(Explainer):
    """An explainer whose options are the ``beam_size`` of the model's own caption and the model calls'
    ``precision`` (:mod:`capsal.explainers.precision`)."""

    def __init__(self, beam_size: PositiveInt = 1, precision: Precision = 32):
        self.beam_size = beam_size
        self.precision = precision
        normalize_precision(precision)  # a wrong name stops here, not at the first batch


class BackpropExplainer(ModelPassExplainer):
    """What every explainer that back-propagates a word's log-probability shares: gradients on (``needs_grad``;
    inside Lightning validation that needs ``Trainer(inference_mode=False)``), the ``beam_size`` of the model's own
    caption and the forward pass's ``precision`` (the backward follows it)."""

    needs_grad = True
    contrastive = True


@register_explainer("gradient")
class GradientTimesInput(BackpropExplainer):
    """``score[t, i] = <d log p(y_t) / d v_i, v_i>``; for video also per region of the grid the frames pool.

    ``needs_grad``: ``explain`` turns gradients on around it, so it runs inside Lightning validation, which computes
    under ``no_grad``. Lightning's default inference mode makes the batch's tensors unusable for autograd:
    validate/test with ``Trainer(inference_mode=False)`` to use this explainer.

    ``precision`` (``32``, ``bf16-mixed``, ``16-mixed``): the forward pass's autocast (the backward follows it);
    the gradients are taken with respect to the float32 inputs, so scores are float32.
    """

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        # cuDNN's RNN backward refuses eval mode (dropout off); PyTorch's own kernels take it, same numbers
        with torch.backends.cudnn.flags(enabled=False):
            scores, regions = self._attributions(model, items, grid, sentences)
        return sentences.saliency(scores, region_scores=regions, explainer=self.name)

    @staticmethod
    def _attributions(model, items, grid, sentences: Sentences):
        use_grid = sentences.layout.is_video and grid is not None
        source = (grid if use_grid else items).detach().clone().requires_grad_(True)
        inputs = model.items(source) if use_grid else source
        targets = sentences.explained(model, inputs, sentences.mask)  # (B, n)
        per_word = []
        for t in range(targets.shape[1]):
            (gradient,) = torch.autograd.grad(targets[:, t].sum(), source, retain_graph=t + 1 < targets.shape[1])
            per_word.append((widened(gradient) * source).sum(-1).detach())
        attributions = torch.stack(per_word, dim=1)  # (B, n, m) or (B, n, T, h, w)
        if not use_grid:
            return attributions, None
        regions = rearrange(attributions, "b n t h w -> b n t (h w)")
        return regions.sum(-1), regions
