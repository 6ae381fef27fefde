"""Soft attention: the protocol, teacher forcing vs step decoding, attention weights, the regulariser, a real fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from capsal import check_protocol
from capsal.cli.train import train
from capsal.models import SoftAttention, has_attention

WORDS = ["a", "red", "circle"]
TINY = {
    "hidden_size": 16,
    "embed_size": 8,
    "attention_size": 12,
    "dropout": 0.0,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 8]},
}
TOKENS = torch.tensor([[1, 4, 5, 6, 2], [1, 5, 5, 2, 0], [1, 6, 2, 0, 0]])


def _model(**kwargs) -> SoftAttention:
    torch.manual_seed(0)
    return SoftAttention(WORDS, **{**TINY, **kwargs}).eval()


def _padded_items(model: SoftAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Three samples with 5, 3 and 1 real items, padded with noise."""
    items = torch.randn(3, 5, model.feature_size)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    return items, mask


def test_soft_attention_implements_the_protocol_with_attention():
    model = _model()
    assert check_protocol(model) == []
    assert has_attention(model)


def test_attention_sums_to_one_over_real_items_and_padded_items_change_nothing():
    model = _model()
    items, mask = _padded_items(model)
    alpha = model.attention(model.encode(items, mask), TOKENS)
    assert alpha.shape == (3, 5, 5)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 5))
    assert (alpha[~mask[:, None, :].expand_as(alpha)] == 0).all()
    assert (alpha[mask[:, None, :].expand_as(alpha)] > 0).all()
    # sample 1 with its 3 real items alone gives the same weights and words
    alone = model.encode(items[1:2, :3])
    torch.testing.assert_close(model.attention(alone, TOKENS[1:2]), alpha[1:2, :, :3])
    torch.testing.assert_close(
        model.token_logprobs(alone, TOKENS[1:2]), model.token_logprobs(model.encode(items, mask), TOKENS)[1:2]
    )


def test_attention_is_eq_5_read_from_the_parameters():
    """Recompute ``e_ti = w^T tanh(W_a h_{t-1} + U_a v_i + b_a)`` and the softmax by hand for steps 0 and 1."""
    model = _model()
    items, mask = _padded_items(model)
    state = model.encode(items, mask)
    alpha = model.attention(state, TOKENS)
    logprobs = model.token_logprobs(state, TOKENS)
    U_a, b_a = model.attention_items.weight, model.attention_items.bias
    W_a, w = model.attention_hidden.weight, model.attention_score.weight[0]
    v = model.item_projection(items)

    def by_hand(h: torch.Tensor) -> torch.Tensor:
        e = torch.tanh((h @ W_a.T)[:, None, :] + v @ U_a.T + b_a) @ w
        e = e.masked_fill(~mask, float("-inf"))
        return torch.softmax(e, dim=-1)

    mean = (v * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # initial state from the mean of real items
    h0, c0 = torch.tanh(model.initial_state(mean)).chunk(2, dim=-1)
    alpha0 = by_hand(h0)
    torch.testing.assert_close(alpha[:, 0], alpha0)
    z0 = torch.einsum("bm,bmd->bd", alpha0, v)
    h1, _ = model.decoder(torch.cat([model.embedding(TOKENS[:, 0]), z0], dim=-1), (h0, c0))
    torch.testing.assert_close(logprobs[:, 0], torch.log_softmax(model.output(torch.cat([h1, z0], -1)), -1))
    torch.testing.assert_close(alpha[:, 1], by_hand(h1))


def test_doubly_stochastic_term_is_added_to_the_training_loss_only():
    items, mask = _padded_items(_model())
    plain, regularised = _model(), _model(doubly_stochastic=0.5)
    state = plain.encode(items, mask)
    nll = F.nll_loss(plain.token_logprobs(state, TOKENS[:, :-1]).flatten(0, 1), TOKENS[:, 1:].flatten(), ignore_index=0)
    alpha = plain.attention(state, TOKENS[:, :-1])
    steps = (TOKENS[:, 1:] != 0).float()
    coverage = (alpha * steps[..., None]).sum(1)  # sum_t alpha_ti over real steps
    penalty = (((1 - coverage) ** 2) * mask).sum(-1).mean()
    assert float(penalty.detach()) > 0
    with torch.no_grad():
        torch.testing.assert_close(regularised.caption_loss(items, TOKENS, mask), nll)  # eval: plain NLL
        regularised.train()
        plain.train()
        torch.testing.assert_close(plain.caption_loss(items, TOKENS, mask), nll)
        torch.testing.assert_close(regularised.caption_loss(items, TOKENS, mask), nll + 0.5 * penalty)


# half the tiny training split keeps the fits fast; tiny clips have 8 frames: two 6-frame events do not fit
FIT_OVERRIDES = {
    "shapes_image": ["datamodule.num_train=32"],
    "shapes_video": ["datamodule.num_train=32", "datamodule.min_event_frames=3"],
}


@pytest.mark.parametrize("datamodule", ["shapes_image", "shapes_video"])
def test_soft_attention_fits_through_the_config(tiny_train_cfg, datamodule):
    extra = FIT_OVERRIDES[datamodule]
    cfg = tiny_train_cfg("model=soft_attention", f"datamodule={datamodule}", "model.doubly_stochastic=0.1", *extra)
    summary = train(cfg)
    assert "val/loss" in summary["metrics"] and summary["metrics"]["val/loss"] > 0
    checkpoint = Path(summary["last_checkpoint"])
    assert checkpoint.exists()
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["doubly_stochastic"] == 0.1 and hparams["vocab"]
    assert len(summary["examples"]) == 2
