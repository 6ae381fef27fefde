"""What every explainer shares: one ``explain`` method, turning a sentence (or none) into tokens, and turning
per-token values into per-word rows (:meth:`Sentences.saliency`)."""

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
from capsal.text import Tokenizer, tokenize
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


def encode_query(vocab: Tokenizer, text: str) -> list[int]:
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
    vocab: Tokenizer = model.vocab
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


def word_rows(owners: list[int], width: int) -> list[int]:
    """The ``Saliency`` row of each of ``width`` target columns, given the word each column's token belongs to
    (``owners``, -1 for none): word w's tokens go to row w; the columns of no word (prompt, eos, pad) take the rows
    after the words, in order. One token per word keeps every column in its place."""
    owners = (list(owners) + [-1] * width)[:width]
    spare = iter(range(max(owners, default=-1) + 1, width))
    return [owner if owner >= 0 else next(spare) for owner in owners]


def word_table(vocab: Tokenizer, tokens: torch.Tensor) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """Words of each token row, the ``(B, n)`` word mask and the ``(B, n)`` row of each target column (the token
    after it) in the per-word result (:func:`word_rows`), n = tokens' length - 1."""
    width = tokens.shape[1] - 1
    words, rows = [], []
    for row in tokens.tolist():
        sentence, owners = vocab.words_of(row)
        words.append(sentence)
        rows.append(word_rows(owners[1:], width))
    mask = torch.zeros(tokens.shape[0], width, dtype=torch.bool, device=tokens.device)
    for row, sentence in enumerate(words):
        mask[row, : len(sentence)] = True
    return words, mask, torch.tensor(rows, dtype=torch.long, device=tokens.device).reshape(-1, width)


@dataclass
class Sentences:
    """What every explainer needs before it starts: the item mask, the tokens, their words, the row of each token's
    values in the per-word result and the item layout."""

    mask: torch.Tensor
    tokens: torch.Tensor
    words: list[list[str]]
    word_mask: torch.Tensor
    layout: ItemLayout
    rows: torch.Tensor | None = None  # (B, n) long; None: every token is its own word

    def per_word(self, values: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, n, ...)`` values per target token -> per word: a word's tokens summed (the rule of Eq. 9 for
        phrases), the other columns after the words. Unchanged when every token is one word."""
        if values is None or self.rows is None:
            return values
        if torch.equal(self.rows, torch.arange(self.rows.shape[1], device=self.rows.device).expand_as(self.rows)):
            return values
        index = self.rows.reshape(*self.rows.shape, *([1] * (values.dim() - 2))).expand_as(values)
        return torch.zeros_like(values).scatter_add_(1, index, values)

    def saliency(
        self,
        scores: torch.Tensor,
        losses: torch.Tensor | None = None,
        region_scores: torch.Tensor | None = None,
        region_losses: torch.Tensor | None = None,
        explainer: str = "",
    ) -> Saliency:
        """The per-word :class:`Saliency` of per-token values ``(B, n, m[, r])``."""
        return Saliency(
            words=self.words,
            word_mask=self.word_mask,
            scores=self.per_word(scores),
            item_mask=self.mask,
            layout=self.layout,
            losses=self.per_word(losses),
            region_scores=self.per_word(region_scores),
            region_losses=self.per_word(region_losses),
            tokens=self.tokens,
            explainer=explainer,
        )


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
    words, word_mask, rows = word_table(model.vocab, tokens)
    return Sentences(mask, tokens, words, word_mask, layout_of_items(model, items, grid), rows)


def default_mask(items: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
    return mask.to(device=items.device, dtype=torch.bool)
