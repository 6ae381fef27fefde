"""What every capsal captioner owes the protocol: teacher forcing equals step decoding (with masked items) and
well-formed greedy and beam generation. One test per property, run over every model."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_captioners

from capsal import check_protocol

MODELS = tiny_captioners()
TOKENS = torch.tensor([[1, 4, 5, 6, 2], [1, 5, 5, 2, 0], [1, 6, 2, 0, 0]])


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def padded_items(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Three samples with 5, 3 and 1 real items, padded with noise."""
    items = torch.randn(3, 5, model.feature_size)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    return items, mask


def test_implements_the_protocol(model):
    assert check_protocol(model) == []


def test_teacher_forcing_equals_step_by_step_decoding(model):
    items, mask = padded_items(model)
    state = model.encode(items, mask)
    forced = model.token_logprobs(state, TOKENS)
    assert forced.shape == (3, 5, len(model.vocab))
    cache = model.init_decoder(state)
    for t in range(TOKENS.shape[1]):
        step, cache = model.decode_step(state, cache, TOKENS[:, : t + 1])
        torch.testing.assert_close(step, forced[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generation_starts_with_bos_and_pads_after_eos(model, beam_size):
    items, mask = padded_items(model)
    tokens = model.generate(items, mask, beam_size=beam_size, max_len=6)
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 7
    assert (tokens[:, 0] == model.vocab.bos_id).all()
    assert not (tokens[:, 1:] == model.vocab.bos_id).any()  # bos and pad are never generated as words
    for row in tokens.tolist():
        if model.vocab.eos_id in row:
            assert set(row[row.index(model.vocab.eos_id) + 1 :]) <= {model.vocab.pad_id}
        else:
            assert model.vocab.pad_id not in row


def test_every_layer_with_weights_is_a_sanity_stage_stated_output_first(model):
    """The sanity check randomises what the model states, not the order in which ``__init__`` assigned layers: a new
    layer the model forgets to state fails here."""
    stated = [name for name, _ in model.randomisation_stages()]
    with_weights = {name for name, child in model.named_children() if any(True for _ in child.parameters())}
    assert set(stated) == with_weights
    assert stated[0] == "output" and stated[-1] == "backbone"


def test_the_item_layout_is_the_models_and_items_follow_it(model):
    image = model.item_layout((1, 4, 4))
    video = model.item_layout((6, 4, 4))
    assert (image.is_video, image.num_items, video.is_video, video.num_items) == (False, 16, True, 6)
    grid = torch.randn(2, 6, 4, 4, model.feature_size)
    assert model.items(grid).shape == (2, 6, model.feature_size)
    assert model.items(grid[:, :1]).shape == (2, 16, model.feature_size)
