"""Greedy and beam-search decoding for any model with ``init_decoder`` and ``decode_step``.

Decoder states and caches are (nested tuples/dicts of) batch-first tensors, so beams are formed by
repeating and re-indexing dimension 0 without knowing the architecture.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from einops import rearrange

from capsal.text import Vocabulary


class StepDecoder(Protocol):
    vocab: Vocabulary

    def init_decoder(self, state: Any) -> Any: ...

    def decode_step(self, state: Any, cache: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]: ...


def select_batch(tree: Any, index: torch.Tensor) -> Any:
    """Index dimension 0 of every tensor in a nested tuple/list/dict."""
    if isinstance(tree, torch.Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {key: select_batch(value, index) for key, value in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(select_batch(value, index) for value in tree)
    return tree


def _never_generated(logprobs: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """pad and bos are not words: a decoder never emits them."""
    logprobs = logprobs.clone()
    logprobs[:, [vocab.pad_id, vocab.bos_id]] = float("-inf")
    return logprobs


def greedy_decode(model: StepDecoder, state: Any, batch_size: int, max_len: int, device: torch.device) -> torch.Tensor:
    vocab = model.vocab
    tokens = torch.full((batch_size, 1), vocab.bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    cache = model.init_decoder(state)
    for _ in range(max_len):
        logprobs, cache = model.decode_step(state, cache, tokens)
        next_token = _never_generated(logprobs, vocab).argmax(-1).masked_fill(done, vocab.pad_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == vocab.eos_id
        if bool(done.all()):
            break
    return tokens


def beam_decode(
    model: StepDecoder,
    state: Any,
    batch_size: int,
    beam_size: int,
    max_len: int,
    device: torch.device,
    length_penalty: float = 0.0,
) -> torch.Tensor:
    """Beam search; finished beams carry on with pad at no cost. Scores are divided by ``length**length_penalty``."""
    vocab = model.vocab
    k = beam_size
    flat = torch.arange(batch_size, device=device).repeat_interleave(k)
    state = select_batch(state, flat)
    cache = model.init_decoder(state)
    tokens = torch.full((batch_size * k, 1), vocab.bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    scores = rearrange(scores, "b k -> (b k)")
    done = torch.zeros(batch_size * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size * k, device=device)
    for _ in range(max_len):
        logprobs, cache = model.decode_step(state, cache, tokens)
        logprobs = _never_generated(logprobs, vocab)
        vocab_size = logprobs.shape[-1]
        finished_row = torch.full_like(logprobs[0], float("-inf"))
        finished_row[vocab.pad_id] = 0.0
        logprobs = torch.where(done[:, None], finished_row, logprobs)
        candidates = rearrange(scores[:, None] + logprobs, "(b k) v -> b (k v)", k=k)
        top_scores, top_index = candidates.topk(k, dim=-1)
        parent = top_index // vocab_size + torch.arange(batch_size, device=device)[:, None] * k
        parent = rearrange(parent, "b k -> (b k)")
        next_token = rearrange(top_index % vocab_size, "b k -> (b k)")
        scores = rearrange(top_scores, "b k -> (b k)")
        tokens = torch.cat([tokens[parent], next_token[:, None]], dim=1)
        cache = select_batch(cache, parent)
        done = done[parent]
        lengths = lengths[parent] + (~done).float()
        done = done | (next_token == vocab.eos_id)
        if bool(done.all()):
            break
    normalised = scores / lengths.clamp(min=1.0) ** length_penalty
    best = rearrange(normalised, "(b k) -> b k", k=k).argmax(-1) + torch.arange(batch_size, device=device) * k
    return trim_padding(tokens[best], vocab.pad_id)


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop trailing columns that are pad in every row."""
    keep = (tokens != pad_id).any(0).nonzero()
    return tokens[:, : int(keep.max()) + 1] if keep.numel() else tokens
