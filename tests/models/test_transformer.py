"""Transformer captioner: the protocol, teacher forcing vs step decoding, item positions, padding, a real fit."""

from __future__ import annotations

import pytest
import torch

from capsal import check_protocol
from capsal.models import TransformerCaptioner, has_attention

WORDS = ["a", "red", "circle"]
TINY = {
    "hidden_size": 16,
    "embed_size": 8,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "dropout": 0.0,
    "max_items": 12,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 8]},
}
TOKENS = torch.tensor([[1, 4, 5, 6, 2], [1, 5, 5, 2, 0], [1, 6, 2, 0, 0]])


def _model(**kwargs) -> TransformerCaptioner:
    torch.manual_seed(0)
    return TransformerCaptioner(WORDS, **{**TINY, **kwargs}).eval()


def test_transformer_implements_the_protocol():
    model = _model()
    assert check_protocol(model) == []
    assert not has_attention(model)


def test_a_single_item_keeps_its_place_through_positions():
    model = _model()
    items = torch.randn(2, 5, model.feature_size)
    tokens = TOKENS[:2]
    full = model.token_logprobs(model.encode(items), tokens)
    default = model.encode(items[:, 2:3])
    at_zero = model.encode(items[:, 2:3], positions=torch.zeros(2, 1, dtype=torch.long))
    at_two = model.encode(items[:, 2:3], positions=torch.full((2, 1), 2))
    torch.testing.assert_close(model.token_logprobs(default, tokens), model.token_logprobs(at_zero, tokens))
    assert not torch.allclose(model.token_logprobs(at_two, tokens), model.token_logprobs(at_zero, tokens), atol=1e-4)
    # items are a set keyed by position: shuffling items and positions together changes nothing
    order = torch.tensor([3, 0, 4, 2, 1])
    shuffled = model.encode(items[:, order], positions=order.expand(2, -1))
    torch.testing.assert_close(model.token_logprobs(shuffled, tokens), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.token_logprobs(model.encode(items[:, order]), tokens), full, atol=1e-4)


def test_padded_items_do_not_change_the_output():
    model = _model()
    items = torch.randn(2, 3, model.feature_size)
    padded = torch.cat([items, 10 * torch.randn(2, 4, model.feature_size)], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4] * 2)
    expected = model.token_logprobs(model.encode(items), TOKENS[:2])
    torch.testing.assert_close(model.token_logprobs(model.encode(padded, mask), TOKENS[:2]), expected)
    assert not torch.allclose(model.token_logprobs(model.encode(padded), TOKENS[:2]), expected, atol=1e-4)


def test_positions_beyond_the_table_are_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match=r"item positions must lie in \[0, 12\)"):
        model.encode(torch.randn(1, 1, model.feature_size), positions=torch.tensor([[12]]))
    with pytest.raises(ValueError, match="max_items"):
        model.encode(torch.randn(1, 13, model.feature_size))
    with pytest.raises(ValueError, match="divisible"):
        _model(hidden_size=10, num_heads=4)
