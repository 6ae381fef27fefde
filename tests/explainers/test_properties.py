"""Properties every deterministic explainer keeps on every model, checked with hypothesis over random batches.

Tiny random models in float64 (dropout 0, eval mode) are explained on random batches: batch sizes, item counts,
masks with holes, sentence lengths and extra padding are drawn. The properties:

- a sample explained alone equals the same sample inside a batch of others (chunked passes included);
- extra pad tokens, or extra masked items, change nothing for the real words and items;
- a hole in the mask equals removing the item (models without item positions; for the Transformer at the
  protocol level, where ``positions`` keep the remaining items' places);
- caption-guided's loss of item i is the teacher-forced loss of the full input masked to item i alone;
- ``Saliency.phrase`` is the span's losses summed, negated and min-max scaled over the real items, by hand;
- the mean-pool S2VT's maps are permutation-equivariant.

Only real words (``word_mask``) and real items (``item_mask``) are compared: scores of padding are undefined.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import torch_threads

from capsal.explainers import build_explainer
from capsal.models import S2VT, SoftAttention, TransformerCaptioner
from capsal.text import Vocabulary

WORDS = ["a", "red", "circle", "blue", "square", "big"]
TINY = {
    "hidden_size": 16,
    "embed_size": 8,
    "dropout": 0.0,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4, 8]},
}
BUILDERS = {
    "s2vt": lambda: S2VT(WORDS, encoder="lstm", **TINY),
    "s2vt_meanpool": lambda: S2VT(WORDS, encoder="mean", **TINY),
    "soft_attention": lambda: SoftAttention(WORDS, **TINY),
    "transformer": lambda: TransformerCaptioner(WORDS, **TINY),
}
POSITION_FREE = ("s2vt", "s2vt_meanpool", "soft_attention")
# (registry name, options): every deterministic explainer; memory budgets small enough to force chunked passes
# whose chunks cross sample boundaries (about 1 to 3 single-item inputs per chunk for these sizes)
EXPLAINERS = {
    "caption_guided": ("caption_guided", {"mode": "information_gain", "memory_budget_mb": 0.004}),
    "caption_guided_kl": ("caption_guided", {"mode": "kl", "memory_budget_mb": 0.002}),
    "gradient": ("gradient", {}),
    "soft_attention": ("soft_attention", {}),
    "uniform": ("uniform", {}),
    "center": ("center", {}),
}
PAIRS = [(m, e) for m in BUILDERS for e in EXPLAINERS if e != "soft_attention" or m == "soft_attention"]
MODEL_FREE = ("uniform", "center")
VOCAB = Vocabulary(WORDS)
ATOL = 1e-6
PROPERTY = settings(
    max_examples=15, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

_models: dict[str, torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 passes run ~10x faster on one intra-op thread than on a shared two-core machine's default."""
    with torch_threads(1):
        yield


def tiny_model(name: str) -> torch.nn.Module:
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = BUILDERS[name]().double().eval()
    return _models[name]


def explainer_for(key: str):
    name, options = EXPLAINERS[key]
    return build_explainer(name, **options)


@st.composite
def batches(draw, max_batch: int = 4, max_items: int = 6, max_words: int = 5):
    """A padded batch: ``items`` (B, m, d) float64, ``mask`` with holes (at least one real item per sample),
    ``tokens`` bos..eos right-padded plus 0-2 extra pad columns, and each sample's own token length."""
    batch = draw(st.integers(1, max_batch))
    m = draw(st.integers(1, max_items))
    mask = []
    for _ in range(batch):
        row = draw(st.lists(st.booleans(), min_size=m, max_size=m))
        row[draw(st.integers(0, m - 1))] = True
        mask.append(row)
    sentences = [draw(st.lists(st.integers(4, len(VOCAB) - 1), min_size=1, max_size=max_words)) for _ in range(batch)]
    extra = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2**16))
    items = torch.randn(batch, m, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tokens = VOCAB.pad_batch([[VOCAB.bos_id, *s, VOCAB.eos_id] for s in sentences])
    tokens = torch.cat([tokens, torch.zeros(batch, extra, dtype=torch.long)], dim=1)
    return {
        "items": items,
        "mask": torch.tensor(mask),
        "tokens": tokens,
        "lengths": [len(s) + 2 for s in sentences],
        "words": [len(s) for s in sentences],
    }


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def real_part(saliency, row: int, words: int, items: torch.Tensor | list[int]):
    """Scores, e and losses (where present) of sample ``row``: its real words x the given item indices."""
    parts = [saliency.scores, saliency.e] + ([saliency.losses] if saliency.losses is not None else [])
    return [p[row, :words][:, items] for p in parts]


def assert_same(a_parts, b_parts) -> None:
    assert len(a_parts) == len(b_parts)
    for a, b in zip(a_parts, b_parts, strict=True):
        assert_close(a, b)


# -- (a) a sample alone equals the sample inside a batch -----------------------------------------------------------
@pytest.mark.parametrize(("model_name", "explainer_key"), PAIRS)
@PROPERTY
@given(data=batches())
def test_a_sample_alone_equals_the_sample_in_a_batch(model_name, explainer_key, data):
    model, explainer = tiny_model(model_name), explainer_for(explainer_key)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    together = explainer.explain(model, items, mask, tokens=tokens)
    for b, (length, words) in enumerate(zip(data["lengths"], data["words"], strict=True)):
        alone = explainer.explain(model, items[b : b + 1], mask[b : b + 1], tokens=tokens[b : b + 1, :length])
        assert alone.words[0] == together.words[b]
        real = mask[b].nonzero()[:, 0]
        assert_same(real_part(alone, 0, words, real), real_part(together, b, words, real))


# -- (b) pad tokens and masked items change nothing real -----------------------------------------------------------
@pytest.mark.parametrize(("model_name", "explainer_key"), PAIRS)
@PROPERTY
@given(data=batches(), pad_words=st.integers(1, 4), pad_items=st.integers(1, 3))
def test_pad_tokens_and_masked_items_change_nothing_real(model_name, explainer_key, data, pad_words, pad_items):
    """Appended masked items: the center baseline is excluded, its map is drawn over the layout the item count
    gives (no grid here), which extra items change by design."""
    model, explainer = tiny_model(model_name), explainer_for(explainer_key)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    batch, m = mask.shape
    plain = explainer.explain(model, items, mask, tokens=tokens)
    padded_tokens = torch.cat([tokens, torch.zeros(batch, pad_words, dtype=torch.long)], dim=1)
    more_words = explainer.explain(model, items, mask, tokens=padded_tokens)
    for b, words in enumerate(data["words"]):
        real = mask[b].nonzero()[:, 0]
        assert more_words.words[b] == plain.words[b]
        assert_same(real_part(more_words, b, words, real), real_part(plain, b, words, real))
    if explainer_key == "center":
        return
    noise = torch.randn(batch, pad_items, items.shape[2], generator=torch.Generator().manual_seed(m), dtype=items.dtype)
    more_items = explainer.explain(
        model,
        torch.cat([items, 1e3 * noise], dim=1),
        torch.cat([mask, torch.zeros(batch, pad_items, dtype=torch.bool)], dim=1),
        tokens=tokens,
    )
    for b, words in enumerate(data["words"]):
        real = mask[b].nonzero()[:, 0]
        assert_same(real_part(more_items, b, words, real), real_part(plain, b, words, real))


# -- (c) a hole equals removing the item ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_name", "explainer_key"), [(m, e) for m, e in PAIRS if m in POSITION_FREE and e != "center"]
)
@PROPERTY
@given(data=batches(max_batch=1, max_items=7))
def test_a_hole_in_the_mask_equals_removing_the_item(model_name, explainer_key, data):
    """Models without item positions. (center is excluded: with no grid its map follows the item count.)"""
    model, explainer = tiny_model(model_name), explainer_for(explainer_key)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    real = mask[0].nonzero()[:, 0]
    holed = explainer.explain(model, items, mask, tokens=tokens)
    removed = explainer.explain(model, items[:, real], None, tokens=tokens)
    words = data["words"][0]
    assert_same(real_part(removed, 0, words, list(range(len(real)))), real_part(holed, 0, words, real))


@pytest.mark.parametrize("model_name", list(BUILDERS))
@PROPERTY
@given(data=batches(max_items=7))
def test_encoding_with_a_hole_equals_the_remaining_items_at_their_positions(model_name, data):
    """The protocol level, for every model: ``encode(items, mask)`` with holes gives the same word distributions as
    ``encode(kept items, None, positions=their original indices)``. For the Transformer this is what keeps
    caption-guided's one-item inputs "where they were"; the S2VT and soft-attention models ignore positions."""
    model = tiny_model(model_name)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    with torch.no_grad():
        holed = model.token_logprobs(model.encode(items, mask), tokens[:, :-1])
        for b in range(items.shape[0]):
            kept = mask[b].nonzero()[:, 0]
            alone = model.token_logprobs(model.encode(items[b : b + 1, kept], None, kept[None]), tokens[b : b + 1, :-1])
            steps = data["lengths"][b] - 1
            assert_close(alone[0, :steps], holed[b, :steps])


@pytest.mark.parametrize("model_name", list(BUILDERS))
@pytest.mark.parametrize("mode", ["information_gain", "kl"])
@PROPERTY
@given(data=batches(max_batch=3, max_items=5))
def test_caption_guided_loss_is_the_full_input_masked_to_one_item(model_name, mode, data):
    """Eq. 6/7 by hand: ``Loss(t, i)`` is the teacher-forced loss of the whole item set with every item but i
    masked, against (kl) the distribution of the real items."""
    model = tiny_model(model_name)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    explainer = build_explainer("caption_guided", mode=mode, memory_budget_mb=0.003)
    losses = explainer.explain(model, items, mask, tokens=tokens).losses
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        full = model.token_logprobs(model.encode(items, mask), inputs)
        for i in range(items.shape[1]):
            only = torch.zeros_like(mask)
            only[:, i] = True
            logq = model.token_logprobs(model.encode(items, only), inputs)
            if mode == "information_gain":
                expected = -logq.gather(-1, targets[..., None])[..., 0]
            else:
                expected = (full.exp() * (full - logq)).sum(-1)
            for b, words in enumerate(data["words"]):
                if mask[b, i]:
                    assert_close(losses[b, :words, i], expected[b, :words])


# -- (d) phrase = the span's losses summed, negated, min-max scaled over the real items, by hand -------------------
def phrase_by_hand(values: np.ndarray, real: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    low, high = values[real].min(), values[real].max()
    out[real] = 1.0 if high == low else (values[real] - low) / (high - low)
    return out


@pytest.mark.parametrize("explainer_key", ["caption_guided", "caption_guided_kl", "gradient", "uniform", "center"])
@pytest.mark.parametrize("model_name", list(BUILDERS))
@PROPERTY
@given(data=batches(), cut=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_phrase_is_the_spans_summed_losses_scaled_by_hand(model_name, explainer_key, data, cut):
    model, explainer = tiny_model(model_name), explainer_for(explainer_key)
    saliency = explainer.explain(model, data["items"], data["mask"], tokens=data["tokens"])
    shortest = min(data["words"])
    start = min(int(cut[0] * shortest), shortest - 1)
    end = start + 1 + min(int(cut[1] * (shortest - start)), shortest - start - 1)
    maps = saliency.phrase(start, end).numpy()
    spans = [(b, 0, words) for b, words in enumerate(data["words"])]  # each sample's whole sentence
    whole = saliency.phrase_maps(spans).numpy()
    source = -saliency.losses.numpy() if saliency.losses is not None else saliency.scores.numpy()
    for b, words in enumerate(data["words"]):
        real = data["mask"][b].numpy()
        np.testing.assert_allclose(maps[b], phrase_by_hand(source[b, start:end].sum(0), real), atol=ATOL)
        np.testing.assert_allclose(whole[b], phrase_by_hand(source[b, :words].sum(0), real), atol=ATOL)
        assert maps[b][real].max() == pytest.approx(1.0) and maps[b][~real].max(initial=0.0) == 0.0


# -- (e) mean-pool S2VT is permutation-equivariant -----------------------------------------------------------------
@pytest.mark.parametrize("explainer_key", ["caption_guided", "caption_guided_kl", "gradient"])
@PROPERTY
@given(data=batches(), order_seed=st.integers(0, 2**16))
def test_mean_pool_s2vt_maps_are_permutation_equivariant(explainer_key, data, order_seed):
    model, explainer = tiny_model("s2vt_meanpool"), explainer_for(explainer_key)
    items, mask, tokens = data["items"], data["mask"], data["tokens"]
    order = torch.randperm(items.shape[1], generator=torch.Generator().manual_seed(order_seed))
    plain = explainer.explain(model, items, mask, tokens=tokens)
    permuted = explainer.explain(model, items[:, order], mask[:, order], tokens=tokens)
    for b, words in enumerate(data["words"]):
        real = mask[b][order].nonzero()[:, 0]  # positions in the permuted batch; order[real] in the plain one
        assert_same(real_part(permuted, b, words, real), real_part(plain, b, words, order[real]))
