"""The encoder-decoder protocol: the one contract between models and explainers, metrics and callbacks."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from capsal.text import Vocabulary


@runtime_checkable
class EncoderDecoder(Protocol):
    """What every explainer relies on. Shapes: B batch, T frames, m items, d channels, n steps, V vocabulary.

    - ``features(pixels)``: ``(B, T, 3, H, W)`` float in [0, 1] -> descriptor grid ``(B, T, h, w, d)``.
    - ``items(grid)``: images (``T = 1``): the grid read row-major, ``m = h*w``; videos: the mean of each frame's
      grid, ``m = T``.
    - ``encode(items, mask=None, positions=None)``: ``(B, m, d)`` -> an opaque state; ``mask`` is True for real
      items, ``positions`` (``(B, m)`` long) gives each item's original index for models with positional embeddings.
    - ``token_logprobs(state, tokens)``: teacher forcing, ``tokens`` ``(B, n)`` start with bos; returns
      ``(B, n, V)`` log-probabilities, row t being the distribution of token t+1.
    - ``generate(items, mask=None, beam_size=1, max_len=None)``: ``(B, L)`` tokens starting with bos, ending with
      eos (unless ``max_len`` was reached), right-padded with pad.
    - ``vocab``: the :class:`~capsal.text.Vocabulary`.
    Optional: ``attention(state, tokens) -> (B, n, m)`` for models with soft attention.
    """

    vocab: Vocabulary

    def features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def items(self, grid: torch.Tensor) -> torch.Tensor: ...

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> Any: ...

    def token_logprobs(self, state: Any, tokens: torch.Tensor) -> torch.Tensor: ...

    def generate(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, beam_size: int = 1, max_len: int | None = None
    ) -> torch.Tensor: ...


_REQUIRED_METHODS = ("features", "items", "encode", "token_logprobs", "generate")


def check_protocol(model: object) -> list[str]:
    """What ``model`` lacks to be explained; an empty list means it implements the protocol.

    >>> check_protocol(object())[0]
    'missing method features(pixels) -> grid'
    """
    signatures = {
        "features": "features(pixels) -> grid",
        "items": "items(grid) -> items",
        "encode": "encode(items, mask=None, positions=None) -> state",
        "token_logprobs": "token_logprobs(state, tokens) -> (B, n, V) log-probabilities",
        "generate": "generate(items, mask=None, beam_size=1, max_len=None) -> tokens",
    }
    problems = [
        f"missing method {signatures[name]}" for name in _REQUIRED_METHODS if not callable(getattr(model, name, None))
    ]
    vocab = getattr(model, "vocab", None)
    if not isinstance(vocab, Vocabulary):
        problems.append("missing attribute vocab (a capsal.text.Vocabulary)")
    return problems


def has_attention(model: object) -> bool:
    """Whether the model exposes its own soft-attention weights."""
    return callable(getattr(model, "attention", None))
