"""The encoder-decoder protocol: the one contract between models and explainers, metrics, callbacks and evaluation.

Besides the protocol itself this module holds the few rules every consumer of a model shares, each with a default
for models that do not state it: the item layout (:func:`item_layout`), the descriptor grid of a batch
(:func:`visual_grid`) and the sanity check's randomisation stages (:func:`randomisation_stages`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from einops import repeat

from capsal.devices import model_dtype
from capsal.errors import UserError
from capsal.text import Tokenizer
from capsal.types import ItemLayout

if TYPE_CHECKING:
    from capsal.types import Batch

log = logging.getLogger("capsal")


@runtime_checkable
class EncoderDecoder(Protocol):
    """What every explainer relies on. Shapes: B batch, T frames, m items, d channels, n steps, V vocabulary.

    - ``features(pixels)``: ``(B, T, 3, H, W)`` float in [0, 1] -> descriptor grid ``(B, T, h, w, d)``.
    - ``items(grid)``: images (``T = 1``): the grid read row-major, ``m = h*w``; videos: the mean of each frame's
      grid, ``m = T``.
    - ``encode(items, mask=None, positions=None)``: ``(B, m, d)`` -> an opaque state; ``mask`` is True for real
      items, ``positions`` (``(B, m)`` long) gives each item's original index for models with positional embeddings.
      Items where ``mask`` is False are padding and change nothing: no log-probability moves when their values (or
      positions) change. A row whose mask is all False is "no item": the model's prediction with nothing to look
      at, the decoder from the words alone; it must come out finite and equal to that row run alone
      (:func:`keep_items` removes items this way, :func:`check_no_item` refuses a model that cannot).
    - ``token_logprobs(state, tokens)``: teacher forcing, ``tokens`` ``(B, n)`` start with bos; returns
      ``(B, n, V)`` log-probabilities, row t being the distribution of token t+1. No length limit: explaining a
      given sentence needs no generation.
    - ``generate(items, mask=None, beam_size=1, max_len=None)``: ``(B, L)`` tokens starting with bos, ending with
      eos (unless the model's own generation limit, or ``max_len``, was reached), right-padded with pad.
    - ``vocab``: a :class:`~capsal.text.Tokenizer`: capsal's word-level :class:`~capsal.text.Vocabulary`, or a
      pretrained model's subword tokenizer (:class:`capsal.models.hf.PretrainedTokenizer`). Explainers work on
      tokens and report per word: a word's token values are summed (the rule of Eq. 9).

    Optional, each with a default here: ``attention(state, tokens) -> (B, n, m)`` for models with soft attention
    (:func:`has_attention`); ``item_layout(grid_shape) -> ItemLayout`` for ``grid_shape = (T, h, w)`` (default:
    one frame is an image grid, several are a video, :func:`item_layout`); ``randomisation_stages() -> [(name,
    module), ...]`` output first, for the sanity check (default: the top-level children with parameters, in
    reverse order of assignment, :func:`randomisation_stages`); ``max_sentence_tokens() -> int | None``: the most
    teacher-forced tokens (bos included) ``token_logprobs`` takes, for models with a real capacity such as learned
    word positions (default: None, any length; longer sentences are cut to it by :func:`fit_sentences`);
    ``target_logprobs(state, tokens, targets) -> (B, n)``: ``token_logprobs(state, tokens)`` read at ``targets``
    ``(B, n)`` only (default: exactly that, :func:`target_logprobs`). A model that has the logits can take the
    log-sum-exp in place and never hold the ``(B, n, V)`` log-probabilities next to them, or, stepping, never
    hold ``(B, n, V)`` at all (:func:`logprobs_at`); ``attention_trace(items, mask, tokens) -> AttentionTrace``:
    every attention map of one teacher-forced pass, for the rollout and relevancy explainers
    (:func:`has_attention_trace`, :class:`AttentionTrace`).
    """

    vocab: Tokenizer

    def features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def items(self, grid: torch.Tensor) -> torch.Tensor: ...

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> Any: ...

    def token_logprobs(self, state: Any, tokens: torch.Tensor) -> torch.Tensor: ...

    def generate(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, beam_size: int = 1, max_len: int | None = None
    ) -> torch.Tensor: ...


SIGNATURES = {
    "features": "features(pixels) -> grid",
    "items": "items(grid) -> items",
    "encode": "encode(items, mask=None, positions=None) -> state",
    "token_logprobs": "token_logprobs(state, tokens) -> (B, n, V) log-probabilities",
    "generate": "generate(items, mask=None, beam_size=1, max_len=None) -> tokens",
}
OPTIONAL = {
    "attention": "attention(state, tokens) -> (B, n, m) (soft-attention weights)",
    "item_layout": "item_layout((T, h, w)) -> ItemLayout (default: T == 1 is an image grid, else video frames)",
    "randomisation_stages": "randomisation_stages() -> [(name, module)] output first (default: children reversed)",
    "max_sentence_tokens": "max_sentence_tokens() -> int | None (default: None, sentences of any length)",
    "target_logprobs": "target_logprobs(state, tokens, targets) -> (B, n) (default: token_logprobs at targets)",
    "attention_trace": "attention_trace(items, mask, tokens) -> AttentionTrace (every attention map of one pass)",
    "encoder_tokens": "encoder_tokens(state) -> (tokens (B, S, D), item (B, S)): the last encoder layer's tokens",
}


def check_protocol(model: object) -> list[str]:
    """What ``model`` lacks to be explained; an empty list means it implements the protocol.

    >>> check_protocol(object())[0]
    'missing method features(pixels) -> grid'
    """
    problems = [f"missing method {SIGNATURES[name]}" for name in SIGNATURES if not callable(getattr(model, name, None))]
    if not isinstance(getattr(model, "vocab", None), Tokenizer):
        problems.append("missing attribute vocab (a capsal.text.Tokenizer, such as capsal.text.Vocabulary)")
    for name in OPTIONAL:
        value = getattr(model, name, None)
        if value is not None and not callable(value):
            problems.append(f"optional {OPTIONAL[name]} must be a method, got {type(value).__name__}")
    return problems


def has_attention(model: object) -> bool:
    """Whether the model exposes its own soft-attention weights."""
    return callable(getattr(model, "attention", None))


def has_attention_trace(model: object) -> bool:
    """Whether the model hands out every attention map of a pass (``attention_trace``), as Transformers can."""
    return callable(getattr(model, "attention_trace", None))


@dataclass
class AttentionTrace:
    """Every attention map of ONE teacher-forced pass of an encoder-decoder Transformer, each ``(B, heads, q, k)``
    and part of the autograd graph of ``logprobs`` (so relevancy can take their gradients), in the order the layers
    run. The encoder sequence (S columns) is what the cross-attention reads; ``item`` says which item each of its
    columns is.

    - ``encoder``: the encoder's self-attention maps ``(B, H, S, S)``, first layer first (none when the encoder ran
      outside the pass, e.g. a Hugging Face ``keep=encoder_output`` adapter: its items are the encoder's outputs);
    - ``decoder``: the decoder's self-attention maps ``(B, H, n, n)``, one per decoder layer;
    - ``cross``: the decoder's cross-attention maps ``(B, H, n, S)``, one per decoder layer;
    - ``logprobs``: ``(B, n, V)``, what ``token_logprobs(encode(items, mask), tokens)`` gives;
    - ``item``: ``(B, S)`` long, the item index of each encoder column, -1 for none (a class token, padding);
    - ``count``: the number of items ``m``."""

    encoder: list[torch.Tensor]
    decoder: list[torch.Tensor]
    cross: list[torch.Tensor]
    logprobs: torch.Tensor
    item: torch.Tensor
    count: int

    def on_items(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, n, S)`` values over the encoder columns -> ``(B, n, m)`` over the items (:func:`on_items`)."""
        return on_items(values, self.item, self.count)


def on_items(values: torch.Tensor, item: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, n, S)`` values over a sequence whose column j is item ``item[b, j]`` (-1: none, left out) -> ``(B, n,
    count)``, the values of the columns of each item summed."""
    out = values.new_zeros(values.shape[0], values.shape[1], count)
    index = item.clamp(min=0)[:, None, :].expand_as(values)
    return out.scatter_add_(2, index, values * (item >= 0)[:, None, :].to(values.dtype))


def default_item_layout(grid_shape: tuple[int, int, int]) -> ItemLayout:
    """One frame: the image's cells are the items; several frames: the frames are (each over ``h x w`` regions)."""
    frames, h, w = (int(v) for v in grid_shape)
    return ItemLayout(frames > 1, (h, w), frames if frames > 1 else h * w)


def item_layout(model: object, grid_shape: tuple[int, int, int]) -> ItemLayout:
    """The model's item layout for grids of ``(T, h, w)``: its own ``item_layout`` when it has one, else the
    default (one frame is an image grid, several frames a video)."""
    own = getattr(model, "item_layout", None)
    return own(tuple(grid_shape)) if callable(own) else default_item_layout(tuple(grid_shape))


def layout_of_items(model: object, items: torch.Tensor, grid: torch.Tensor | None) -> ItemLayout:
    """The layout of ``items`` explained with (or without) their ``grid``.

    Without a grid only ``m`` is known: a square ``m`` is read as an image grid, anything else as frames.
    """
    if grid is not None:
        return item_layout(model, tuple(grid.shape[1:4]))
    m = items.shape[1]
    side = math.isqrt(m)
    return ItemLayout(False, (side, side), m) if side * side == m else ItemLayout(True, (1, 1), m)


def visual_grid(model: Any, batch: Batch) -> torch.Tensor:
    """The descriptor grid of a batch: the cached one when the batch carries it, else ``model.features`` of its
    pixels. Works where the batch's tensors are; move the batch to the model's device first.

    The grid comes in the model's parameter dtype: a backbone run under a surrounding autocast (Lightning's
    ``precision=16-mixed`` step) returns half precision, which a float32 explainer's calls could not take."""
    grid = batch.grid if batch.grid is not None else model.features(batch.pixels)
    dtype = model_dtype(model)
    return grid if dtype is None or not grid.is_floating_point() else grid.to(dtype)


def randomisation_stages(model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The sanity check's stages, output first: the model's own ``randomisation_stages()`` when it has one, else
    its top-level children with parameters in reverse order of assignment (stated in a log line, since reordering
    attributes in ``__init__`` would reorder them)."""
    own = getattr(model, "randomisation_stages", None)
    if callable(own):
        return list(own())
    stages = [(name, child) for name, child in model.named_children() if any(True for _ in child.parameters())][::-1]
    log.info("sanity check stages of %s (children reversed): %s", type(model).__name__, [n for n, _ in stages])
    return stages


def max_sentence_tokens(model: object) -> int | None:
    """The most teacher-forced tokens (bos included) the model takes: its own ``max_sentence_tokens()`` when it
    states one, else None (any length)."""
    own = getattr(model, "max_sentence_tokens", None)
    capacity = own() if callable(own) else None
    return None if capacity is None else int(capacity)


_truncated: dict[tuple[str, int], int] = {}  # sentences cut so far in this process, per (model class, capacity)


def truncated_sentences() -> int:
    """How many sentences this process has cut to a model's capacity so far (training and explaining)."""
    return sum(_truncated.values())


def cut_tokens(model: Any, tokens: torch.Tensor, keep: int, capacity: int) -> torch.Tensor:
    """The first ``keep`` columns of ``(B, L)`` token rows; rows that lose a real token are counted, and the first
    time a model class with this capacity loses any in this process, a warning says so."""
    if tokens.shape[1] <= keep:
        return tokens
    cut = int((tokens[:, keep:] != model.vocab.pad_id).any(dim=1).sum())
    if cut:
        key = (type(model).__name__, capacity)
        if key not in _truncated:
            log.warning(
                "%d sentence(s) longer than %s takes (max_sentence_tokens=%d: bos + %d words) were truncated to "
                "their first %d words; later ones are counted in capsal.models.protocol.truncated_sentences()",
                cut,
                key[0],
                capacity,
                capacity - 1,
                keep - 1,
            )
        _truncated[key] = _truncated.get(key, 0) + cut
        log.debug("%d sentence(s) truncated to %s's capacity so far", _truncated[key], key[0])
    return tokens[:, :keep]


def fit_sentences(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Sentence rows ``(B, L)`` (bos ... eos, padded) cut so their teacher-forced inputs ``tokens[:, :-1]`` fit the
    model's :func:`max_sentence_tokens`: a longer row keeps bos and its first ``capacity`` words (no eos), so every
    explainer's words and loss columns cover exactly the kept words. Unchanged for models of any length."""
    capacity = max_sentence_tokens(model)
    return tokens if capacity is None else cut_tokens(model, tokens, capacity + 1, capacity)


def sentence_targets(targets: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``(B, n)`` True for the teacher-forced targets a caption consists of: every target up to and including the
    row's first eos (what follows is padding, whatever its id: GPT-2 pads with eos)."""
    ended = (targets == eos_id).long().cumsum(dim=1)
    return (ended == 0) | ((ended == 1) & (targets == eos_id))


def target_logprobs(model: Any, state: Any, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log q(y_{t+1} = targets[:, t])`` ``(B, n)`` under teacher forcing of ``tokens`` ``(B, n)``: the model's own
    ``target_logprobs`` when it has one (it may save memory), else ``token_logprobs`` gathered at ``targets``."""
    own = getattr(model, "target_logprobs", None)
    if callable(own):
        return own(state, tokens, targets)
    logprobs = model.token_logprobs(state, tokens)
    return logprobs.gather(-1, targets[:, : logprobs.shape[1], None])[..., 0]


def widened(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float32 when they are half precision (autocast), else as they are (float32, float64)."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def logprobs_at(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` read at ``targets`` (``logits`` ``(..., V)``, ``targets`` ``(...)``) without a second
    ``(..., V)`` tensor: without gradients the log-sum-exp is taken in place, CONSUMING ``logits`` (they are
    overwritten), so the peak is the logits alone instead of logits + log-probabilities. Half-precision logits
    (autocast) are widened to float32 first."""
    logits = widened(logits)
    picked = logits.gather(-1, targets[..., None])[..., 0]
    if torch.is_grad_enabled() and logits.requires_grad:
        return picked - torch.logsumexp(logits, dim=-1)
    top = logits.amax(dim=-1, keepdim=True)
    top = top.masked_fill(~torch.isfinite(top), 0.0)
    total = logits.sub_(top).exp_().sum(dim=-1)
    return picked - (total.log() + top[..., 0])


def keep_items(items: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one way to remove items from a model's input (the faithfulness metrics' deletion and insertion, as the
    caption-guided explainer feeds one item at its original position): ``keep`` ``(B, m)`` bool says which items
    each row keeps. Returns ``(kept_items, mask, positions)``: each row's kept items gathered to the front in their
    original order, padded at the end (zeros, mask False, position 0) to the most kept in the batch, at least one
    column, so a row that keeps nothing is a valid "no item" row; ``positions`` (long) are their original indices.

    >>> kept, mask, positions = keep_items(torch.arange(3.0)[None, :, None], torch.tensor([[False, True, True]]))
    >>> kept[..., 0].tolist(), mask.tolist(), positions.tolist()
    ([[1.0, 2.0]], [[True, True]], [[1, 2]])
    """
    keep = keep.to(device=items.device, dtype=torch.bool)
    if keep.shape != items.shape[:2]:
        raise ValueError(f"keep must have shape {tuple(items.shape[:2])} (batch, items), got {tuple(keep.shape)}")
    if items.shape[1] == 0:  # nothing to keep: one padding column
        items, keep = items.new_zeros(items.shape[0], 1, *items.shape[2:]), keep.new_zeros(keep.shape[0], 1)
    width = max(int(keep.sum(dim=1).max()) if keep.numel() else 0, 1)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]  # kept first, in order
    mask = keep.gather(1, order)
    gathered = items.gather(1, repeat(order, "b k -> b k d", d=items.shape[-1]))
    kept = torch.where(mask[..., None], gathered, torch.zeros((), dtype=items.dtype, device=items.device))
    return kept, mask, order.masked_fill(~mask, 0)


def check_no_item(model: Any, items: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, n, V)`` log-probabilities of teacher forcing ``tokens`` ``(B, n)`` with no item at all (one column of
    ``items``' width, mask all False), or one line saying the model has no defined "no item": it raised, gave
    non-finite values, or read the masked item's values. Run it before asking a model for rows without items."""
    batch = tokens.shape[0]
    mask = torch.zeros(batch, 1, dtype=torch.bool, device=items.device)
    positions = torch.zeros(batch, 1, dtype=torch.long, device=items.device)
    padding = items.new_zeros(batch, 1, items.shape[-1])
    asked = "a row with no item (encode with mask all False)"
    fix = "make encode treat an all-False mask row as no input (see the protocol in docs/design.md)"
    try:
        logprobs = model.token_logprobs(model.encode(padding, mask, positions), tokens)
        other = model.token_logprobs(model.encode(padding + 1, mask, positions), tokens)
    except Exception as error:  # any failure means the model cannot be asked this
        message = str(error).splitlines()[0] if str(error) else ""
        raise UserError(
            f"{type(model).__name__} cannot take {asked}: it raised {type(error).__name__}: {message}; {fix}"
        ) from error
    if not bool(torch.isfinite(logprobs).all()):
        raise UserError(
            f"{type(model).__name__} cannot take {asked}: its log-probabilities came back NaN or infinite; {fix}"
        )
    if not torch.equal(logprobs, other):
        raise UserError(
            f"{type(model).__name__} cannot take {asked}: its log-probabilities change with the values "
            f"of the masked item; {fix}"
        )
    return logprobs
