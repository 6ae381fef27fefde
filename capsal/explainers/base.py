"""What every explainer shares: one ``explain`` method and turning a sentence (or none) into tokens."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from capsal.errors import UserError
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import fit_sentences, layout_of_items
from capsal.text import Vocabulary, tokenize
from capsal.types import ItemLayout

log = logging.getLogger("capsal")

Sentence = str | list[str] | torch.Tensor | None


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Evaluation mode inside the block (dropout off, batch-norm statistics frozen: the same maps on every call);
    afterwards the model's and every submodule's own train/eval flag is what it was before, even after an error.

    Every built-in explainer runs its whole ``explain`` (captioning included) inside it; plugins should too.
    A model that is no ``nn.Module`` (no ``modules()``) is left as it is."""
    modules = model.modules() if callable(getattr(model, "modules", None)) else []
    modes = [(m, m.training) for m in modules]
    if modes:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Explainer:
    """Base class. Subclasses implement :meth:`explain` and are registered with ``@register_explainer``.

    ``explain`` should run inside :func:`eval_mode` (``with eval_mode(model): ...``) so that a model left in training
    mode gives deterministic maps and comes back in the mode it had.

    ``needs_grad``: the explainer back-propagates (inside Lightning validation it turns gradients on locally,
    which needs ``Trainer(inference_mode=False)``).
    """

    name = "explainer"
    needs_grad = False
    # ``explain`` takes ``sample_ids=`` (one per row) to draw reproducible per-sample randomness
    seeded_per_sample = False

    def explain(
        self,
        model: Any,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        tokens: Sentence = None,
    ) -> Saliency:
        """Per-word saliency of ``tokens`` (the model's own caption when None) over the ``(B, m, d)`` items."""
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def encode_query(vocab: Vocabulary, text: str) -> list[int]:
    """Token ids of a query sentence; unknown words are reported by name and become unk.

    Any length: explaining a sentence teacher-forces it, so the model's generation limit does not apply."""
    words = tokenize(text)
    if not words:
        raise UserError(f"the query {text!r} has no words; give a sentence such as 'a red circle'")
    unknown = vocab.unknown_words(text)
    if len(unknown) == len(words):
        raise UserError(f"every word of the query {text!r} is unknown to the model's vocabulary; use its words")
    if unknown:
        log.warning("query words not in the vocabulary, explained as <unk>: %s", ", ".join(unknown))
    return vocab.encode(text)


def resolve_tokens(
    model: Any, items: torch.Tensor, mask: torch.Tensor | None, tokens: Sentence, beam_size: int | None = None
) -> torch.Tensor:
    """``(B, L)`` bos ... eos tokens: the model's caption (None), a query string (for every sample), one string
    per sample, or given ids (``(L,)`` is used for every sample)."""
    batch = items.shape[0]
    vocab: Vocabulary = model.vocab
    if tokens is None:
        with torch.no_grad():
            kwargs = {"beam_size": beam_size} if beam_size else {}
            return model.generate(items, mask, **kwargs)
    if isinstance(tokens, str):
        tokens = [tokens] * batch
    if isinstance(tokens, list):
        if len(tokens) != batch:
            raise ValueError(f"got {len(tokens)} sentences for {batch} samples")
        ids = [encode_query(vocab, text) for text in tokens]
        return vocab.pad_batch(ids).to(items.device)
    tokens = tokens.to(items.device)
    if tokens.dim() == 1:
        tokens = tokens.expand(batch, -1)
    return tokens


def word_table(vocab: Vocabulary, tokens: torch.Tensor) -> tuple[list[list[str]], torch.Tensor]:
    """Words of each token row (after bos, before eos) and the ``(B, n)`` word mask, n = tokens' length - 1."""
    words = [vocab.decode(row) for row in tokens.tolist()]
    width = tokens.shape[1] - 1
    mask = torch.zeros(tokens.shape[0], width, dtype=torch.bool, device=tokens.device)
    for row, sentence in enumerate(words):
        mask[row, : len(sentence)] = True
    return words, mask


@dataclass
class Sentences:
    """What every explainer needs before it starts: the item mask, the tokens, their words and the item layout."""

    mask: torch.Tensor
    tokens: torch.Tensor
    words: list[list[str]]
    word_mask: torch.Tensor
    layout: ItemLayout


def prepare(
    model: Any,
    items: torch.Tensor,
    mask: torch.Tensor | None,
    grid: torch.Tensor | None,
    tokens: Sentence,
    beam_size: int | None = None,
) -> Sentences:
    """Resolve the mask, the sentence (the model's caption when ``tokens`` is None) and the layout in one go.

    A sentence longer than the model takes (``max_sentence_tokens()``) is cut to its first words before anything
    is explained (:func:`~capsal.models.protocol.fit_sentences`, a warning says so): ``words`` and every score
    column cover the same kept words."""
    mask = default_mask(items, mask)
    tokens = fit_sentences(model, resolve_tokens(model, items, mask, tokens, beam_size))
    words, word_mask = word_table(model.vocab, tokens)
    return Sentences(mask, tokens, words, word_mask, layout_of_items(model, items, grid))


def default_mask(items: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
    return mask.to(device=items.device, dtype=torch.bool)
