"""What every explainer shares: the one ``explain`` template (eval mode, grad mode, precision, seeding, the sentence)
around a subclass's ``_attribute``, turning a sentence (or none) into tokens, and turning per-token values into
per-word rows (:meth:`Sentences.saliency`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from capsal.errors import UserError
from capsal.explainers.contrast import Foil, foil_of
from capsal.explainers.precision import autocast
from capsal.explainers.registry import available_explainers, get_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import fit_sentences, has_attention_trace, layout_of_items
from capsal.text import Tokenizer, tokenize
from capsal.types import ItemLayout

log = logging.getLogger("capsal")

Sentence = str | list[str] | torch.Tensor | None


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Evaluation mode inside the block (dropout off, batch-norm statistics frozen: the same maps on every call);
    afterwards the model's and every submodule's own train/eval flag is what it was before, even after an error.

    ``Explainer.explain`` runs every explainer's whole work (captioning included) inside it.
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
    """Base class of every explainer; register a subclass with ``@register_explainer("name")``.

    :meth:`explain` is the one entry point and is not overridden: it runs the model in eval mode, under the grad mode
    and precision the explainer needs, resolves the sentence, mask and layout (:func:`prepare`) and seeds the
    explainer's randomness per sample, then calls :meth:`_attribute`, the one method a subclass implements. So every
    caller (``capsal-explain``, ``capsal-eval``, the saliency callback) calls ``explain`` the same way and every
    explainer gets the same plumbing.

    What a subclass declares, and the template reads:

    - ``needs_grad = True``: ``_attribute`` back-propagates; it runs with gradients on (outside inference mode),
      otherwise under ``no_grad``. Inside a Lightning validation this needs ``Trainer(inference_mode=False)``.
    - ``draws_randomness = True``: ``_attribute`` draws random values from ``sentences.seeds`` (:class:`Seeds`), seeded
      by the explainer's ``seed`` option and each row's sample id, so a sample gets the same map in any batch.
    - a ``precision`` option (attribute): the model calls run under :func:`~capsal.explainers.precision.autocast`.
    - a ``beam_size`` option (attribute): the beam used to generate the model's own caption.
    - ``contrastive = True``: ``_attribute`` scores each word through :meth:`Sentences.word_logprobs`, so it can
      explain ``log p(word) - log p(foil word)`` when ``explain`` is given a ``contrast`` sentence.
    - ``needs_attention_trace = True``: ``_attribute`` reads ``model.attention_trace`` (every attention map of a
      Transformer); :meth:`refusal` names the models that have it. A subclass with other needs overrides
      :meth:`refusal`: ``explain`` refuses a model in its one line, and ``capsal-eval``'s default explainers skip it.

    A subclass written for earlier versions that overrides ``explain`` itself still works (with one
    ``DeprecationWarning`` per class): it is called with the grad mode the explainer needs, and with ``sample_ids``
    only when its signature takes them.
    """

    name = "explainer"
    needs_grad = False
    draws_randomness = False
    contrastive = False
    needs_attention_trace = False

    def __init__(self) -> None:
        """No options. A subclass's constructor parameters are its options, each annotated with the type that states
        its constraint (:mod:`capsal.constraints`, ``Literal`` for choices): configs are validated against them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "explain" in cls.__dict__:
            warnings.warn(
                f"{cls.__module__}.{cls.__qualname__} overrides Explainer.explain; implement "
                "_attribute(self, model, items, grid, sentences) instead and let explain do eval mode, grad mode, "
                "precision, seeding and prepare(...) (overriding explain will stop working in a later version)",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.explain = _legacy_explain(cls.__dict__["explain"])

    def explain(
        self,
        model: Any,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        tokens: Sentence = None,
        sample_ids: Sequence[str] | None = None,
        contrast: Sentence = None,
    ) -> Saliency:
        """Per-word saliency of ``tokens`` (the model's own caption when None) over the ``(B, m, d)`` items.

        ``mask``: ``(B, m)`` items present (all when None); ``grid``: the ``(B, T, h, w, d)`` descriptor grid the items
        pool (video: per-region maps); ``sample_ids``: one per row, for explainers that draw randomness (ignored by
        the others, so callers pass them whenever they have them); ``contrast``: a foil sentence with as many words
        (one string, one per sample, or token ids): each word is explained as ``log p(word) - log p(foil word)``
        in the sentence's own context, "why this word rather than that one" (:mod:`capsal.explainers.contrast`)."""
        self.check_contrast(contrast)
        reason = self.refusal(model)
        if reason is not None:
            raise UserError(reason)
        with eval_mode(model), self._grad_mode(), self._precision(items.device, model):
            sentences = prepare(model, items, mask, grid, tokens, getattr(self, "beam_size", None), contrast)
            if self.draws_randomness:
                sentences.seeds = self._seeds(sentences, sample_ids)
            return self._attribute(model, items, grid, sentences)

    @classmethod
    def refusal(cls, model: Any) -> str | None:
        """Why this explainer cannot explain ``model``, in one line naming the models it can, or None when it can:
        the one place that says which models an explainer takes."""
        if cls.needs_attention_trace and not has_attention_trace(model):
            return (
                f"explainer {cls.name} needs every attention map of a Transformer captioner (model=transformer, or "
                f"model=hf_captioner with a VisionEncoderDecoder such as ViT-GPT2, or BLIP); {type(model).__name__} "
                f"has none: use explainer=caption_guided"
            )
        return None

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        """The explainer's own work: the :class:`Saliency` of ``sentences`` (``sentences.saliency(scores, ...)``)
        over ``items`` (``grid``: their descriptor grid, or None). It runs in eval mode, under the grad mode and
        precision the explainer declares; ``sentences`` holds the resolved mask, tokens, words and layout."""
        raise NotImplementedError(f"{type(self).__qualname__} implements no _attribute")

    def check_contrast(self, contrast: Sentence) -> None:
        """One line when a foil is given to an explainer that scores no word's log-probability."""
        if contrast is not None and not self.contrastive:
            able = [name for name in available_explainers() if get_explainer(name).contrastive]
            raise UserError(
                f"explainer {self.name} does not score a word's log-probability, so it has no contrastive map; "
                f"use contrast= with {', '.join(able)}"
            )

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        """Gradients on for explainers that back-propagate (also inside a caller's ``inference_mode``), off for the
        rest (no autograd graph is kept for a forward-only explainer)."""
        if not self.needs_grad:
            return torch.no_grad()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        return stack

    def _precision(self, device: torch.device, model: Any) -> contextlib.AbstractContextManager:
        """The model calls' autocast for explainers with a ``precision`` option; nothing changed for the others."""
        precision = getattr(self, "precision", None)
        return contextlib.nullcontext() if precision is None else autocast(precision, device, model)

    def _seeds(self, sentences: Sentences, sample_ids: Sequence[str] | None) -> Seeds:
        """Per-row randomness: row b's key is its sample id and sentence; without ids, the explainer's one generator
        (seeded once by ``seed``, advancing from call to call)."""
        if sample_ids is not None and len(sample_ids) != len(sentences.words):
            raise ValueError(f"got {len(sample_ids)} sample ids for {len(sentences.words)} samples")
        keys = None
        if sample_ids is not None:
            keys = [f"{i}/{' '.join(words)}" for i, words in zip(sample_ids, sentences.words, strict=True)]
        if getattr(self, "_generator", None) is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return Seeds(self.seed, keys, self._generator)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def _legacy_explain(explain: Callable[..., Saliency]) -> Callable[..., Saliency]:
    """An ``explain`` override of an earlier-style subclass, called as callers call the template: under the grad
    mode the explainer needs, with ``sample_ids`` only when the override takes them."""
    parameters = inspect.signature(explain).parameters.values()
    takes_ids = any(p.name == "sample_ids" or p.kind is p.VAR_KEYWORD for p in parameters)

    @functools.wraps(explain)
    def wrapper(
        self: Explainer, model: Any, items: torch.Tensor, *args: Any, sample_ids=None, contrast=None, **kwargs: Any
    ):
        self.check_contrast(contrast)
        if takes_ids and sample_ids is not None:
            kwargs["sample_ids"] = sample_ids
        with self._grad_mode():
            return explain(self, model, items, *args, **kwargs)

    return wrapper


@dataclass
class Seeds:
    """Where an explainer that draws randomness draws it from (``sentences.seeds``).

    With sample ids, each row draws from its own generators, seeded by the explainer's ``seed``, the row's key (its
    sample id and sentence) and a stream name: the same values whatever batch or process the sample is explained in,
    and independent across samples and streams. Without ids, every draw comes from the explainer's one ``shared``
    generator."""

    seed: int
    keys: list[str] | None
    shared: torch.Generator

    def generator(self, row: int, stream: str) -> torch.Generator:
        """Row ``row``'s generator for ``stream`` (a fresh one per call), or the shared one without ids."""
        if self.keys is None:
            return self.shared
        return torch.Generator().manual_seed(_stream_seed(self.seed, self.keys[row], stream))

    def rand(self, shape: tuple[int, ...], stream: str) -> torch.Tensor:
        """Uniform ``[0, 1)`` values of ``shape = (B, n, ...)`` on the CPU: per row and word from the row's generator
        (so a word's values do not depend on the padded sentence length), or all at once from the shared one."""
        if self.keys is None:
            return torch.rand(*shape, generator=self.shared)
        rows = []
        for row in range(shape[0]):
            generator = self.generator(row, stream)
            rows.append(torch.stack([torch.rand(*shape[2:], generator=generator) for _ in range(shape[1])]))
        return torch.stack(rows)


def _stream_seed(seed: int, key: str, stream: str) -> int:
    """A 63-bit generator seed from the explainer's seed, a sample's key and the stream."""
    digest = hashlib.sha256(f"{seed}/{stream}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
    seeds: Seeds | None = None  # set by ``Explainer.explain`` for explainers that draw randomness
    foil: Foil | None = None  # the contrast sentence (:mod:`capsal.explainers.contrast`); None: no contrast

    def explained(
        self,
        model: Any,
        inputs: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What an explainer that scores log-probabilities explains, ``(N, n)`` per target column, for ``inputs``
        ``(N, m', d)`` (``rows``: the sentence of each input row, when they are not the batch's own rows, as the
        caption-guided explainer's single items): ``log p(y_t)``, or with a foil ``log p(y_t) - log p(foil_t)``
        (:mod:`capsal.explainers.contrast`)."""
        rows = torch.arange(inputs.shape[0], device=inputs.device) if rows is None else rows
        logprobs = model.token_logprobs(model.encode(inputs, mask, positions), self.tokens[rows, :-1])
        explained = self.word_logprobs(logprobs, rows)
        spliced = (
            None
            if self.foil is None
            else self.foil.spliced_logprobs(model, inputs, mask, positions, rows, explained.shape[1])
        )
        return explained if spliced is None else explained - spliced

    def word_logprobs(self, logprobs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`explained` from given teacher-forced ``(N, n, V)`` log-probabilities, for explainers that run the
        model themselves: ``log p(y_t)``, minus a foil word's that takes the word's place (a spliced foil word, see
        :mod:`capsal.explainers.contrast`, needs :meth:`explained`)."""
        width = logprobs.shape[1]
        targets = self.tokens[:, 1 : width + 1] if rows is None else self.tokens[rows, 1 : width + 1]
        picked = logprobs.gather(-1, targets[..., None])[..., 0]
        return picked if self.foil is None else picked - self.foil.gathered(logprobs, rows)

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
        zero: torch.Tensor | None = None,
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
            zero=self.per_word(zero),
            foil_words=None if self.foil is None else self.foil.words,
        )


def prepare(
    model: Any,
    items: torch.Tensor,
    mask: torch.Tensor | None,
    grid: torch.Tensor | None,
    tokens: Sentence,
    beam_size: int | None = None,
    contrast: Sentence = None,
) -> Sentences:
    """Resolve the mask, the sentence (the model's caption when ``tokens`` is None), the foil and the layout in one
    go.

    A sentence longer than the model takes (``max_sentence_tokens()``) is cut to its first words before anything
    is explained (:func:`~capsal.models.protocol.fit_sentences`, a warning says so): ``words`` and every score
    column cover the same kept words."""
    mask = default_mask(items, mask)
    tokens = fit_sentences(model, resolve_tokens(model, items, mask, tokens, beam_size))
    words, word_mask, rows = word_table(model.vocab, tokens)
    sentences = Sentences(mask, tokens, words, word_mask, layout_of_items(model, items, grid), rows)
    if contrast is not None:
        sentences.foil = foil_of(
            model.vocab, tokens, fit_sentences(model, resolve_tokens(model, items, mask, contrast))
        )
    return sentences


def default_mask(items: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
    return mask.to(device=items.device, dtype=torch.bool)
