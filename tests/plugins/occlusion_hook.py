# my_saliency/occlusion.py
import torch

from capsal.constraints import PositiveInt
from capsal.explainers import Explainer, Saliency, Sentences


class Occlusion(Explainer):
    """Saliency of item i = drop of the word's log-probability when items i .. i + window - 1 are left out."""

    def __init__(self, window: PositiveInt = 1):  # the type is the option's schema: a whole number >= 1
        self.window = window

    def _attribute(self, model, items, grid, sentences: Sentences) -> Saliency:
        # explain() has already put the model in eval mode, turned gradients off (needs_grad is False) and resolved
        # the sentence (the model's own caption when none is given), the item mask and the layout
        mask, tokens = sentences.mask, sentences.tokens
        targets = tokens[:, 1:, None]

        def logprobs(kept: torch.Tensor) -> torch.Tensor:  # (B, n): log p(y_t) with only the kept items
            return model.token_logprobs(model.encode(items, kept), tokens[:, :-1]).gather(-1, targets)[..., 0]

        full = logprobs(mask)
        drops = []
        for i in range(items.shape[1]):
            kept = mask.clone()
            kept[:, i : i + self.window] = False
            drops.append(full - logprobs(kept))
        scores = torch.stack(drops, dim=-1)  # (B, n, m), higher = more salient
        return sentences.saliency(scores, explainer=self.name)
