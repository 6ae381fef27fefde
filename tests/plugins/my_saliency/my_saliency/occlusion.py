# my_saliency/occlusion.py
import torch

from capsal.explainers import Explainer, Saliency
from capsal.explainers.base import eval_mode, prepare


class Occlusion(Explainer):
    """Saliency of item i = drop of the word's log-probability when items i .. i + window - 1 are left out."""

    needs_grad = False

    def __init__(self, window: int = 1):
        self.window = window

    @torch.no_grad()
    def explain(self, model, items, mask=None, grid=None, tokens=None) -> Saliency:
        with eval_mode(model):  # deterministic (no dropout); the model's train/eval modes are restored after
            s = prepare(model, items, mask, grid, tokens)  # tokens=None: the model's own caption
            mask, tokens = s.mask, s.tokens
            targets = tokens[:, 1:, None]
            full = model.token_logprobs(model.encode(items, mask), tokens[:, :-1]).gather(-1, targets)[..., 0]
            drops = []
            for i in range(items.shape[1]):
                kept = mask.clone()
                kept[:, i : i + self.window] = False
                logp = model.token_logprobs(model.encode(items, kept), tokens[:, :-1]).gather(-1, targets)[..., 0]
                drops.append(full - logp)
        scores = torch.stack(drops, dim=-1)  # (B, n, m), higher = more salient
        return Saliency(s.words, s.word_mask, scores, mask, s.layout, tokens=tokens, explainer=self.name)
