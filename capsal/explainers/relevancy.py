"""Attention rollout and Chefer relevancy for each word of a caption, over the items an encoder-decoder Transformer
reads, from every attention map of one teacher-forced pass (``model.attention_trace``,
:class:`~capsal.models.protocol.AttentionTrace`). The rules are pure functions of the maps (:func:`relevance`,
:func:`rollout`), so a test can follow them by hand.

Notation: ``A`` ``(B, H, q, k)`` one attention map, ``S`` the encoder sequence (the columns the cross-attention
reads: the items, plus a class token for a Hugging Face ``keep=input`` encoder), ``n`` the teacher-forced tokens.
Matrices: ``R_ii`` ``(S, S)`` the encoder tokens' relevance on each other, ``R_tt`` ``(n, n)`` the text tokens',
``R_ti`` ``(n, S)`` the text tokens' on the encoder tokens. Word t's map is row t of ``R_ti`` over the item columns.

``relevancy`` (Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021; equation numbers as the paper's repository, hila-chefer/
Transformer-MM-Explainability, ``DETR/modules/ExplanationGenerator.py``, labels its rules), per word t, with the
gradients ``G`` of its log-probability (one backward per word):

- Eq. 5: ``Ā = mean_h (G ⊙ A)^+`` (negative contributions removed per head, then the mean over heads);
- start ``R_ii = I``, ``R_tt = I``, ``R_ti = 0``;
- Eq. 6, encoder self-attention, layer by layer: ``R_ii += Ā R_ii``;
- Eqs. 6-7, each decoder layer's self-attention: ``R_tt += Ā R_tt`` and ``R_ti += Ā R_ti``; then its
  cross-attention (Eq. 10): ``R_ti += R̄_ttᵀ Ā R̄_ii``, with the normalisation of Eqs. 8-9: ``R̂ = R - I``, each
  row of ``R̂`` divided by its sum, ``R̄ = R̂ + I``. A row of ``R̂`` that sums to 0 (a token that drew on nothing)
  stays 0 (the repository sets the NaN its division gives to 0, over the whole product).

With a causal decoder the transpose of Eq. 10 mixes nothing from later words into word t: word t's gradients vanish
on the maps' rows of later queries, and ``R_tt`` is lower triangular, so only ``R̄_tt[t, t]`` meets a non-zero row.

``rollout`` (no gradients): attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL
2020) joined through the cross-attention as in Chefer et al.'s encoder-decoder rollout baseline (the repository's
``generate_rollout`` for DETR): with ``Ā = mean_h A`` and ``Â = (Ā + I) / rowsum`` (for a softmax map, ``0.5 Ā +
0.5 I``: the residual connection),

- ``R_ii = Â_L ... Â_1`` over the encoder's self-attention layers, ``R_tt`` likewise over the decoder's;
- ``R_ti = R_tt Ā_cross R_ii`` with ``Ā_cross`` the LAST decoder layer's cross-attention.

The baseline multiplies by ``R_ttᵀ`` (its queries attend to each other freely); here the rows are words read by a
causal decoder, and row t of ``R_tt`` is what word t draws from the words before it, so ``R_tt`` itself is used:
with the transpose, word t's map would be the later words' attention.

Scores are float32 (float64 for a float64 model): the maps are widened and the rules run outside the model calls'
autocast; a class token's column is left out of the map, which covers the
``m`` items every other explainer scores. Videos: the items are frames; no in-frame regions.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import reduce

from capsal.errors import UserError
from capsal.explainers.base import Sentences
from capsal.explainers.gradient import BackpropExplainer, ModelPassExplainer
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import AttentionTrace, widened


def head_mean(attention: torch.Tensor) -> torch.Tensor:
    """``(B, H, q, k)`` -> ``(B, q, k)``: the mean over heads (rollout's ``Ā``)."""
    return reduce(widened(attention), "b h q k -> b q k", "mean")


def gradient_weighted(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``mean_h (G ⊙ A)^+``, ``(B, H, q, k)`` -> ``(B, q, k)``."""
    return reduce((widened(gradient) * widened(attention)).clamp(min=0), "b h q k -> b q k", "mean")


def identity(like: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size, size)`` identities in ``like``'s dtype and device."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    return eye.expand(like.shape[0], size, size).clone()


def normalised(relevance: torch.Tensor) -> torch.Tensor:
    """Eqs. 8-9: ``R̄ = R̂ / rowsum(R̂) + I`` with ``R̂ = R - I``; a row of ``R̂`` summing to 0 stays 0."""
    eye = identity(relevance, relevance.shape[-1])
    hat = relevance - eye
    total = hat.sum(dim=-1, keepdim=True)
    return torch.where(total != 0, hat / torch.where(total != 0, total, 1.0), 0.0) + eye


def relevance(encoder: list[torch.Tensor], decoder: list[torch.Tensor], cross: list[torch.Tensor]) -> torch.Tensor:
    """``R_ti`` ``(B, n, S)`` from the head-reduced maps ``Ā`` (Eq. 5) of the encoder's self-attention ``(B, S,
    S)``, the decoder's self-attention ``(B, n, n)`` and cross-attention ``(B, n, S)``, layer by layer (Eqs. 6-10,
    module doc)."""
    r_ii = identity(cross[0], cross[0].shape[-1])
    for a in encoder:
        r_ii = r_ii + a @ r_ii
    r_tt = identity(cross[0], cross[0].shape[-2])
    r_ti = torch.zeros_like(cross[0])
    for a_self, a_cross in zip(decoder, cross, strict=True):
        r_tt, r_ti = r_tt + a_self @ r_tt, r_ti + a_self @ r_ti
        r_ti = r_ti + normalised(r_tt).mT @ a_cross @ normalised(r_ii)
    return r_ti


def residual(attention: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema's ``(Ā + I) / rowsum``: the residual connection's share of a self-attention layer."""
    joint = attention + identity(attention, attention.shape[-1])
    return joint / joint.sum(dim=-1, keepdim=True)


def rolled_out(maps: list[torch.Tensor], size: int, like: torch.Tensor) -> torch.Tensor:
    """``Â_L ... Â_1`` ``(B, size, size)`` of head-mean self-attention maps (the identity for none)."""
    joint = identity(like, size)
    for a in maps:
        joint = residual(a) @ joint
    return joint


def rollout(encoder: list[torch.Tensor], decoder: list[torch.Tensor], cross: list[torch.Tensor]) -> torch.Tensor:
    """``R_ti = R_tt Ā_cross R_ii`` ``(B, n, S)`` from head-mean maps (module doc)."""
    last = cross[-1]
    return rolled_out(decoder, last.shape[-2], last) @ last @ rolled_out(encoder, last.shape[-1], last)


def _trace(model: Any, items: torch.Tensor, sentences: Sentences) -> AttentionTrace:
    """The model's attention trace of the teacher-forced sentence."""
    return model.attention_trace(items, sentences.mask, sentences.tokens[:, :-1])


def _unmixed(items: torch.Tensor) -> torch.autocast:
    """The rules' matrix products in the maps' float32 (or float64), outside the model calls' autocast."""
    return torch.autocast(items.device.type, enabled=False)


def _on_items(trace: AttentionTrace, values: torch.Tensor, sentences: Sentences) -> torch.Tensor:
    """``(B, n, S)`` -> ``(B, n, m)`` over the present items, detached."""
    return (trace.on_items(values.detach()) * sentences.mask[:, None, :]).to(values.dtype)


@register_explainer("rollout")
class Rollout(ModelPassExplainer):
    """Attention rollout per word (module doc), forward only; ``beam_size``: the model's own caption's beam;
    ``precision``: the pass's autocast (the maps are widened to float32)."""

    needs_attention_trace = True

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        trace = _trace(model, items, sentences)
        with _unmixed(items):
            joint = rollout(*([head_mean(a) for a in maps] for maps in (trace.encoder, trace.decoder, trace.cross)))
        return sentences.saliency(_on_items(trace, joint, sentences), explainer=self.name)


@register_explainer("relevancy")
class Relevancy(BackpropExplainer):
    """Chefer et al.'s relevancy per word (module doc): one backward per word; options and grad mode as every
    back-propagating explainer's."""

    needs_attention_trace = True

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        if sentences.foil is not None and sentences.foil.spliced is not None:
            raise UserError(
                "relevancy reads the foil word's log-probability from the sentence's own pass: give foil words of "
                "one token where the word is one token (or use caption_guided, gradient or captum for this foil)"
            )
        trace = _trace(model, items, sentences)
        targets = sentences.word_logprobs(widened(trace.logprobs))
        groups = (trace.encoder, trace.decoder, trace.cross)
        maps = [a for group in groups for a in group]
        rows = []
        for t in range(targets.shape[1]):
            keep = t + 1 < targets.shape[1]
            gradients = torch.autograd.grad(targets[:, t].sum(), maps, retain_graph=keep, allow_unused=True)
            with _unmixed(items):
                weighted = iter(
                    gradient_weighted(a.detach(), torch.zeros_like(a) if g is None else g)
                    for a, g in zip(maps, gradients, strict=True)
                )
                encoder, decoder, cross = ([next(weighted) for _ in group] for group in groups)
                rows.append(relevance(encoder, decoder, cross)[:, t])
        return sentences.saliency(_on_items(trace, torch.stack(rows, dim=1), sentences), explainer=self.name)
