"""Grad-CAM (Selvaraju et al., ICCV 2017) for each word of a caption.

The activations: for images, the last encoder layer's patch tokens where the model hands them out (the protocol's
optional ``encoder_tokens``: Hugging Face ViT encoders, in both ``keep`` modes), else the items (the cells of the
backbone's last feature map for capsal's models); the descriptor grid inside each frame for video. Per word, the
gradient of its log-probability with respect to them, averaged over the cells (of each frame), gives one weight per
channel; the map is ``ReLU(sum_c weight_c A_c)`` per cell. A video frame's score is the sum of its cells' maps.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange, reduce

from capsal.errors import UserError
from capsal.explainers.base import Sentences
from capsal.explainers.gradient import BackpropExplainer
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import on_items, widened


@register_explainer("gradcam")
class GradCAM(BackpropExplainer):
    """Grad-CAM per word (module doc); options and grad mode as every back-propagating explainer's."""

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        use_grid = sentences.layout.is_video and grid is not None
        if not use_grid and callable(getattr(model, "encoder_tokens", None)):
            return self._on_encoder_tokens(model, items, sentences)
        source = (grid if use_grid else items).detach().clone().requires_grad_(True)
        inputs = model.items(source) if use_grid else source
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's RNN backward refuses eval mode
            targets = sentences.explained(model, inputs, sentences.mask)  # (B, n)
            maps = []
            for t in range(targets.shape[1]):
                keep = t + 1 < targets.shape[1]
                (gradient,) = torch.autograd.grad(targets[:, t].sum(), source, retain_graph=keep)
                maps.append(self._cam(widened(gradient), widened(source.detach()), sentences.mask, use_grid))
        cams = torch.stack(maps, dim=1)  # (B, n, m) or (B, n, T, h*w)
        if not use_grid:
            return sentences.saliency(cams, explainer=self.name)
        return sentences.saliency(cams.sum(-1), region_scores=cams, explainer=self.name)

    def _on_encoder_tokens(self, model: Any, items: torch.Tensor, sentences: Sentences) -> Saliency:
        """Grad-CAM over the encoder's output tokens, each token's map given to its item (prefix tokens left out)."""
        if sentences.foil is not None and sentences.foil.spliced is not None:
            raise UserError(
                "gradcam weighs the encoder tokens of the sentence's own pass: give foil words of one token where the "
                "word is one token (or use gradient or caption_guided for this foil)"
            )
        state = model.encode(items, sentences.mask)
        tokens, item = model.encoder_tokens(state)
        targets = sentences.word_logprobs(model.token_logprobs(state, sentences.tokens[:, :-1]))
        real = item >= 0
        maps = []
        for t in range(targets.shape[1]):
            keep = t + 1 < targets.shape[1]
            (gradient,) = torch.autograd.grad(targets[:, t].sum(), tokens, retain_graph=keep)
            maps.append(self._cam(widened(gradient), widened(tokens.detach()), real, per_frame=False))
        cams = on_items(torch.stack(maps, dim=1), item, items.shape[1])  # (B, n, m)
        return sentences.saliency(cams, explainer=self.name)

    @staticmethod
    def _cam(gradient: torch.Tensor, activations: torch.Tensor, mask: torch.Tensor, per_frame: bool) -> torch.Tensor:
        """``ReLU(sum_c weight_c A_c)`` with ``weight_c`` the gradient's mean over the real items ``(B, m)``, or over
        each frame's cells ``(B, T, h*w)``."""
        if per_frame:
            weights = reduce(gradient, "b t h w d -> b t 1 1 d", "mean")
            return rearrange((weights * activations).sum(-1).relu(), "b t h w -> b t (h w)")
        real = mask.to(gradient.dtype)[..., None]
        weights = (gradient * real).sum(1, keepdim=True) / real.sum(1, keepdim=True).clamp(min=1.0)
        return ((weights * activations).sum(-1).relu() * mask).to(gradient.dtype)
