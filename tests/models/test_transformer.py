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


LONG_QUERY = " ".join((WORDS * 34)[:100])  # 100 words
# the truncation warning comes once per process per (model class, capacity): each test uses its own max_words


def test_a_sentence_longer_than_the_word_positions_is_explained_truncated(caplog):
    from capsal.explainers import build_explainer

    assert len(LONG_QUERY.split()) == 100
    model = _model(max_words=16, max_len=10)
    assert model.max_sentence_tokens() == 16
    items = torch.randn(2, 9, model.feature_size)
    with caplog.at_level("WARNING", logger="capsal"):
        saliency = build_explainer("caption_guided").explain(model, items, tokens=LONG_QUERY)
    assert saliency.words == [LONG_QUERY.split()[:16]] * 2
    assert saliency.scores.shape == (2, 16, 9) and torch.isfinite(saliency.scores).all()
    assert saliency.word_mask.all()
    assert "2 sentence(s) longer than TransformerCaptioner takes" in caplog.text and "truncated" in caplog.text
    # the other explainers see the same kept words
    for name in ("gradient", "uniform"):
        other = build_explainer(name).explain(model, items, tokens=LONG_QUERY)
        assert other.words == saliency.words and other.scores.shape == (2, 16, 9)


def test_token_logprobs_beyond_the_word_positions_returns_the_kept_steps():
    model = _model(max_words=20, max_len=10)
    tokens = torch.randint(4, 7, (2, 40))
    logprobs = model.token_logprobs(model.encode(torch.randn(2, 3, model.feature_size)), tokens)
    assert logprobs.shape == (2, 20, len(model.vocab)) and torch.isfinite(logprobs).all()
    assert model.generate(torch.randn(2, 3, model.feature_size), max_len=100).shape[1] <= 21


def test_s2vt_has_no_capacity_and_explains_every_word():
    from capsal.explainers import build_explainer
    from capsal.models.s2vt import S2VT

    torch.manual_seed(0)
    model = S2VT(WORDS, hidden_size=8, embed_size=4).eval()
    saliency = build_explainer("caption_guided").explain(
        model, torch.randn(1, 4, model.feature_size), tokens=LONG_QUERY
    )
    assert saliency.words == [LONG_QUERY.split()] and int(saliency.word_mask.sum()) == 100
    assert saliency.scores.shape == (1, 101, 4)  # every word, then the eos step


def test_training_on_a_caption_longer_than_the_model_takes_truncates_it(caplog):
    import lightning as L

    from capsal.models.protocol import truncated_sentences
    from capsal.types import Batch

    torch.manual_seed(0)
    model = TransformerCaptioner(WORDS, **{**TINY, "max_words": 12, "max_len": 8, "caption_metrics": []})
    long_row = model.vocab.encode(LONG_QUERY)  # bos + 100 words + eos
    tokens = model.vocab.pad_batch([long_row, model.vocab.encode("a red circle")])
    batch = Batch(tokens, [], [[LONG_QUERY], ["a red circle"]], ["long", "short"], grid=torch.randn(2, 1, 2, 2, 8))
    before = truncated_sentences()
    trainer = L.Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    with caplog.at_level("WARNING", logger="capsal"):
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert truncated_sentences() - before == 2  # the long caption, once per step
    assert "1 sentence(s) longer than TransformerCaptioner takes (max_sentence_tokens=12" in caplog.text
