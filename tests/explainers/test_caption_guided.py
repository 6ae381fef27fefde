"""The maths of caption-guided saliency (paper Eq. 6-9, 13) on tiny models, in float64."""

from __future__ import annotations

import pytest
import torch

from capsal.explainers import build_explainer
from capsal.explainers.saliency import scale_per_word
from capsal.models.s2vt import S2VT

WORDS = ["a", "red", "blue", "circle", "square", "and"]
TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "dropout": 0.0,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 5]},
}


def tiny_model(encoder: str = "lstm") -> S2VT:
    torch.manual_seed(0)
    return S2VT(WORDS, encoder=encoder, **TINY).double().eval()


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def items(model):
    torch.manual_seed(1)
    return torch.randn(2, 6, model.feature_size, dtype=torch.float64)


QUERIES = ["a red circle and a blue square", "a blue square"]


@torch.no_grad()
def naive_losses(model, items, tokens, mode):
    """Definition, one item and one word at a time: Loss[b, t, i]."""
    batch, m = items.shape[:2]
    n = tokens.shape[1] - 1
    out = torch.zeros(batch, n, m, dtype=torch.float64)
    for b in range(batch):
        full = model.token_logprobs(model.encode(items[b : b + 1]), tokens[b : b + 1, :-1])[0]
        for i in range(m):
            state = model.encode(items[b : b + 1, i : i + 1], None, torch.tensor([[i]]))
            for t in range(n):
                logq = model.token_logprobs(state, tokens[b : b + 1, : t + 1])[0, t]
                if mode == "information_gain":
                    out[b, t, i] = -logq[tokens[b, t + 1]]
                else:
                    p = full[t].exp()
                    out[b, t, i] = sum(float(p[k] * (full[t, k] - logq[k])) for k in range(p.shape[0]))
    return out


@pytest.mark.parametrize("mode", ["information_gain", "kl"])
def test_batched_losses_equal_the_definition_item_by_item_and_word_by_word(model, items, mode):
    saliency = build_explainer("caption_guided", mode=mode).explain(model, items, tokens=QUERIES)
    expected = naive_losses(model, items, saliency.tokens, mode)
    mask = saliency.word_mask
    torch.testing.assert_close(saliency.losses[mask], expected[mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(saliency.scores, -saliency.losses)
    assert saliency.words == [q.split() for q in QUERIES]


def test_chunking_under_a_tiny_memory_budget_changes_nothing(model, items):
    big = build_explainer("caption_guided").explain(model, items, tokens=QUERIES)
    small = build_explainer("caption_guided", memory_budget_mb=1e-4).explain(model, items, tokens=QUERIES)
    torch.testing.assert_close(small.losses, big.losses)


def test_e_lies_in_unit_interval_and_alpha_sums_to_one_per_real_word(model, items):
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERIES)
    e, alpha, mask = saliency.e, saliency.alpha, saliency.word_mask
    assert e.min() >= 0 and e.max() <= 1
    assert torch.allclose(e[mask].amax(-1), torch.ones(1, dtype=e.dtype))  # scaled per word: max 1, min 0
    assert torch.allclose(e[mask].amin(-1), torch.zeros(1, dtype=e.dtype))
    torch.testing.assert_close(alpha[mask].sum(-1), torch.ones(int(mask.sum()), dtype=alpha.dtype))
    assert (alpha[~mask] == 0).all()
    # Eq. 8: e is -loss scaled linearly, so the most salient item has the lowest loss
    assert torch.equal(e[mask].argmax(-1), saliency.losses[mask].argmin(-1))


def test_phrase_saliency_sums_word_losses_before_scaling(model, items):
    saliency = build_explainer("caption_guided").explain(model, items, tokens=QUERIES)
    phrase = saliency.phrase(0, 3)  # "a red circle" / "a blue square"
    expected = scale_per_word(-saliency.losses[:, 0:3].sum(1), saliency.item_mask)
    torch.testing.assert_close(phrase, expected)
    assert not torch.allclose(phrase, saliency.e[:, 0:3].mean(1))  # not an average of scaled maps
    with pytest.raises(ValueError, match="outside"):
        saliency.phrase(2, 99)


@torch.no_grad()
def test_the_empty_zero_point_is_the_gain_over_no_item_scaled_by_its_maximum(model, items):
    """zero_point=empty: e = max(0, Loss(none) - Loss(i)) / its maximum, for words and for a phrase (sums of losses),
    with Loss(none) from a row whose one item is masked; a word no item helps is 0 everywhere."""
    saliency = build_explainer("caption_guided", zero_point="empty").explain(model, items, tokens=QUERIES)
    tokens = saliency.tokens
    state = model.encode(torch.zeros_like(items[:, :1]), torch.zeros(2, 1, dtype=torch.bool))
    none = -model.token_logprobs(state, tokens[:, :-1]).gather(-1, tokens[:, 1:, None])[..., 0]  # (B, n)
    losses = naive_losses(model, items, tokens, "information_gain")
    for b, words in enumerate(saliency.words):
        for t in range(len(words)):
            gain = (none[b, t] - losses[b, t]).clamp(min=0)
            expected = gain / gain.max() if gain.max() > 0 else torch.zeros_like(gain)
            torch.testing.assert_close(saliency.e[b, t], expected, atol=1e-6, rtol=0)
    gain = (none[:, 0:3].sum(1, keepdim=True) - losses[:, 0:3].sum(1)).clamp(min=0)
    high = gain.amax(1, keepdim=True)
    expected = torch.where(high > 0, gain / high.clamp(min=1e-300), 0.0)
    torch.testing.assert_close(saliency.phrase(0, 3), expected, atol=1e-6, rtol=0)
    paper = build_explainer("caption_guided").explain(model, items, tokens=QUERIES)
    assert not torch.allclose(paper.e, saliency.e)  # the option reaches the maps


def test_with_a_mean_pool_encoder_permuting_items_permutes_saliency(items):
    model = tiny_model("mean")
    explainer = build_explainer("caption_guided")
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    original = explainer.explain(model, items, tokens=QUERIES)
    permuted = explainer.explain(model, items[:, order], tokens=QUERIES)
    torch.testing.assert_close(permuted.losses, original.losses[:, :, order])


def test_explaining_the_own_caption_equals_explaining_it_as_a_query(model, items):
    with torch.no_grad():  # an untrained model may stop at once: make it talk
        model.output[-1].bias[model.vocab.eos_id] = -10.0
    explainer = build_explainer("caption_guided")
    own = explainer.explain(model, items)
    captions = [" ".join(words) for words in own.words]
    assert all(captions)
    as_query = explainer.explain(model, items, tokens=captions)
    assert as_query.words == own.words
    n = own.word_mask.sum(1).max()
    torch.testing.assert_close(as_query.losses[:, :n], own.losses[:, :n])
    torch.testing.assert_close(explainer.explain(model, items, tokens=own.tokens).losses, own.losses)


def region_loss(model, saliency, region: torch.Tensor, frame: int) -> torch.Tensor:
    """Loss of word 1 of the explained sentence with ``region`` ``(d,)`` alone as the input, at ``frame``."""
    state = model.encode(region[None, None], None, torch.tensor([[frame]]))
    logq = model.token_logprobs(state, saliency.tokens[:, :-1])
    return -logq[0, 1, saliency.tokens[0, 2]]


def test_video_regions_are_single_grid_features_fed_as_region_input_says(model):
    torch.manual_seed(2)
    grid = torch.randn(1, 4, 2, 3, model.feature_size, dtype=torch.float64)
    items = model.items(grid)
    explained = {
        kind: build_explainer("caption_guided", region_input=kind).explain(
            model, items, grid=grid, tokens="a red circle"
        )
        for kind in ("pooled", "cell", "rescaled")
    }
    saliency = explained["pooled"]
    assert saliency.layout.is_video and saliency.layout.grid_size == (2, 3)
    assert saliency.region_losses.shape == (1, 4, 4, 6)  # words+eos slot, frames, regions
    cell = grid[0, 2, 1, 0]  # region (frame 2, row 1, col 0): the grid feature f_2(1, 0)
    frame_norm = items[0, 2].norm()
    expected = {"pooled": cell / 6, "cell": cell, "rescaled": cell * frame_norm / cell.norm()}
    for kind, region in expected.items():
        torch.testing.assert_close(explained[kind].region_losses[0, 1, 2, 3], region_loss(model, saliency, region, 2))
    # pooled: a region is the frame descriptor (grid mean) of its frame with every other cell zeroed
    alone = torch.zeros_like(grid)
    alone[0, 2, 1, 0] = cell
    temporal = build_explainer("caption_guided").explain(model, model.items(alone), tokens=saliency.tokens)
    torch.testing.assert_close(saliency.region_losses[0, :, 2, 3], temporal.losses[0, :, 2])
    # cell and rescaled: a frame whose every region equals its mean gives each region the frame's temporal saliency
    flat = items[:, :, None, None, :].expand(1, 4, 2, 3, model.feature_size).contiguous()
    for kind in ("cell", "rescaled"):
        same = build_explainer("caption_guided", region_input=kind).explain(model, items, grid=flat, tokens="a red")
        torch.testing.assert_close(same.region_losses, same.losses[..., None].expand_as(same.region_losses))
    assert saliency.to_image_size(30, 45).shape == (1, 4, 4, 30, 45)


def test_an_unknown_region_input_is_one_line_naming_the_choices():
    from capsal.errors import UserError

    with pytest.raises(UserError, match="region_input must be one of pooled, cell, rescaled, got 'mean'"):
        build_explainer("caption_guided", region_input="mean")


def test_spatial_maps_put_grid_values_at_receptive_field_centres(model):
    from capsal.maxima import peak_location

    for seed in range(4):
        torch.manual_seed(seed)
        grid = torch.randn(1, 1, 4, 4, model.feature_size, dtype=torch.float64)
        explainer = build_explainer("caption_guided")
        saliency = explainer.explain(model, model.items(grid), grid=grid, tokens="a red circle")
        assert not saliency.layout.is_video and saliency.layout.grid_size == (4, 4)
        image = saliency.to_image_size(64, 64)
        assert image.shape == (1, 4, 64, 64)
        for word in range(3):
            e = saliency.e[0, word].reshape(4, 4)
            row, col = divmod(int(e.argmax()), 4)
            x, y = peak_location(image[0, word])
            assert col * 16 <= x < col * 16 + 16 and row * 16 <= y < row * 16 + 16  # lands in the salient cell
            # pixels sit 1/32 of a cell from the centre: at most 1 - (31/32)**2 of the value bleeds to neighbours
            assert image[0, word].max() >= e.max() - 0.0625
