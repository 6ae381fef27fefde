"""What padding and "no item" mean under the protocol, for every model capsal explains: padded items (mask False)
change nothing, a row with no item at all is the decoder from the words alone (finite, the same alone or padded),
and :func:`keep_items` removes items exactly as running each row's kept items alone does. The faithfulness metrics'
deletion and insertion rely on all three."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from einops import repeat
from tiny import HF_CASES, HF_FAMILIES, readme_captioner_class, save_tiny_hf, tiny_captioners
from torch import nn

from capsal.errors import UserError
from capsal.models.protocol import check_no_item, has_attention, keep_items

OWN = tiny_captioners()
HF = [f"{family}/{keep}" for family, keep in HF_CASES]
PROMPT = {"blip": "a picture of"}
TOLERANCE = {"atol": 1e-6, "rtol": 0.0}  # a row alone is a different batch size: matrix kernels may round apart


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_padding")
    return {family: save_tiny_hf(root / family, family) for family in HF_FAMILIES}


# no attention weights to read (has_attention): capsal's own without, GIT, BLIP-2, LLaVA, PaliGemma, Idefics3 and
# Qwen2-VL (image tokens are a prefix)
WITHOUT_ATTENTION = (
    "s2vt",
    "s2vt_meanpool",
    "transformer",
    "git/input",
    "git/prefix",
    "blip2/input",
    "blip2/encoder_output",
    "qwen2_vl/input",
    "qwen2_vl/prefix",
    *(f"{family}/{keep}" for family in ("llava", "paligemma") for keep in ("input", "prefix")),
    "idefics3/input",
    "idefics3/prefix",
)


@pytest.fixture(params=[*OWN, *HF])
def case(request) -> tuple[nn.Module, torch.Tensor]:
    """A tiny random model in eval mode and three teacher-forced token rows of its vocabulary."""
    return build_case(request)


@pytest.fixture(params=[name for name in [*OWN, *HF] if name not in WITHOUT_ATTENTION])
def attention_case(request) -> tuple[nn.Module, torch.Tensor]:
    """As ``case``, for the models that expose attention weights."""
    return build_case(request)


def build_case(request) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if request.param in OWN:
        return OWN[request.param]().eval(), torch.tensor([[1, 4, 5, 6], [1, 5, 5, 2], [1, 6, 2, 0]])
    from capsal.models.hf import HFCaptioner

    family, keep = request.param.split("/")
    folder = request.getfixturevalue("hf_folders")[family]
    model = HFCaptioner(str(folder), keep=keep, prompt=PROMPT.get(family)).eval()
    return model, torch.tensor([model.vocab.encode("a big yellow triangle")[:-1]] * 3)


def logprobs(model, items, tokens, mask=None, positions=None) -> torch.Tensor:
    with torch.no_grad():
        return model.token_logprobs(model.encode(items, mask, positions), tokens)


def test_padded_items_change_no_log_probability(case):
    """Padding after the real items, a hole, and a row of padding only: new values and positions of the padded
    items leave every log-probability exactly as it was."""
    model, tokens = case
    items = torch.randn(3, 5, model.feature_size)
    mask = torch.tensor([[True] * 5, [True, False, True, False, False], [False] * 5])
    positions = repeat(torch.arange(5), "m -> b m", b=3)
    before = logprobs(model, items, tokens, mask, positions)
    other = torch.where(mask[..., None], items, 10 * torch.randn_like(items))
    moved = positions.masked_fill(~mask, 4)
    after = logprobs(model, other, tokens, mask, moved)
    assert torch.isfinite(before).all()
    assert torch.equal(before, after)


def test_a_row_with_no_item_is_finite_and_the_same_alone_and_at_any_padding_width(case):
    model, tokens = case
    rows = []
    for width in (1, 4):
        items = torch.randn(2, width, model.feature_size)
        mask = torch.tensor([[True] * width, [False] * width])
        rows.append(logprobs(model, items, tokens[:2], mask)[1])
    alone = logprobs(model, torch.randn(1, 1, model.feature_size), tokens[1:2], torch.tensor([[False]]))[0]
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(rows[0], alone, **TOLERANCE)
    torch.testing.assert_close(rows[1], alone, **TOLERANCE)
    torch.testing.assert_close(check_no_item(model, torch.randn(1, 3, model.feature_size), tokens[1:2])[0], alone)


def test_keep_items_gives_each_row_what_its_kept_items_give_alone(case):
    """Deletion and insertion: a random keep mask (one row keeps every item, one none) through :func:`keep_items`
    equals, row by row, that row's kept items alone at their original positions, without padding."""
    model, tokens = case
    generator = torch.Generator().manual_seed(3)
    items = torch.randn(3, 6, model.feature_size, generator=generator)
    keep = torch.rand(3, 6, generator=generator) < 0.5
    keep[0], keep[2] = True, False
    keep[1, :2] = torch.tensor([False, True])  # at least one item kept, not the first
    kept, mask, positions = keep_items(items, keep)
    batched = logprobs(model, kept, tokens, mask, positions)
    for b in range(3):
        index = keep[b].nonzero()[:, 0]
        if len(index):
            alone = logprobs(model, items[b, index][None], tokens[b : b + 1], None, index[None])
        else:
            alone = logprobs(model, torch.zeros(1, 1, model.feature_size), tokens[b : b + 1], torch.tensor([[False]]))
        torch.testing.assert_close(batched[b], alone[0], **TOLERANCE)


def test_attention_on_padded_items_and_with_no_item_is_exactly_zero(attention_case):
    model, tokens = attention_case
    assert has_attention(model)
    items = torch.randn(3, 4, model.feature_size)
    mask = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    with torch.no_grad():
        weights = model.attention(model.encode(items, mask), tokens)
    assert torch.isfinite(weights).all()
    assert (weights.masked_select(~mask[:, None, :].expand_as(weights)) == 0).all()


def test_keep_items_gathers_kept_items_first_at_their_positions_and_pads_with_zeros():
    items = torch.arange(1.0, 9.0).reshape(2, 4, 1)
    keep = torch.tensor([[False, True, False, True], [False, False, False, False]])
    kept, mask, positions = keep_items(items, keep)
    assert kept[..., 0].tolist() == [[2.0, 4.0], [0.0, 0.0]]
    assert mask.tolist() == [[True, True], [False, False]]
    assert positions.tolist() == [[1, 3], [0, 0]] and positions.dtype == torch.long
    kept, mask, positions = keep_items(items, torch.zeros(2, 4, dtype=torch.bool))
    assert kept.shape == (2, 1, 1) and not mask.any() and (kept == 0).all()  # one column: shapes stay valid
    kept, mask, positions = keep_items(items, torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(kept, items) and mask.all() and positions.tolist() == [[0, 1, 2, 3]] * 2


def test_keep_items_refuses_a_keep_mask_of_another_shape():
    with pytest.raises(ValueError, match=r"keep must have shape \(2, 4\)"):
        keep_items(torch.zeros(2, 4, 3), torch.ones(2, 3, dtype=torch.bool))


class AttendsOverMaskedOnly(nn.Module):
    """A broken captioner: softmax over the real items with -inf on the rest, NaN when no item is real."""

    def __init__(self):
        super().__init__()
        self.vocab = None
        self.output = nn.Linear(4, 5)

    def encode(self, items, mask=None, positions=None):
        mask = torch.ones(items.shape[:2], dtype=torch.bool) if mask is None else mask
        weights = torch.softmax(items.sum(-1).masked_fill(~mask, float("-inf")), dim=-1)
        return torch.einsum("bm,bmd->bd", weights, items)

    def token_logprobs(self, state, tokens):
        return torch.log_softmax(self.output(state), dim=-1)[:, None].expand(-1, tokens.shape[1], -1)


def test_a_model_without_a_defined_no_item_is_refused_in_one_line():
    with pytest.raises(UserError) as error:
        check_no_item(AttendsOverMaskedOnly(), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("AttendsOverMaskedOnly cannot take a row with no item (encode with mask all False)")
    assert "NaN" in message and "docs/design.md" in message


def test_a_model_that_raises_on_no_item_is_refused_with_its_error():
    class Raises(AttendsOverMaskedOnly):
        def encode(self, items, mask=None, positions=None):
            raise RuntimeError("cannot pack an empty sequence\nmore detail")

    with pytest.raises(UserError, match=r"^Raises cannot .* it raised RuntimeError: cannot pack an empty sequence;"):
        check_no_item(Raises(), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long))


def test_the_readme_captioner_conforms_and_one_that_reads_masked_items_is_refused():
    """The README's plain ``nn.Module`` packs its real items (no item: the zero state); the same model reading
    whatever the mask says is padding gives another answer for the same empty row, which the check sees."""
    torch.manual_seed(0)
    readme = readme_captioner_class()
    model = readme(["a", "red", "circle"]).eval()
    tokens = torch.tensor([[1, 4, 5, 6]])
    assert torch.isfinite(check_no_item(model, torch.randn(1, 3, 16), tokens)).all()

    class ReadsPadding(readme):
        def encode(self, items, mask=None, positions=None):
            return self.encoder(items)[1]

    with pytest.raises(UserError, match="change with the values of the masked item"):
        check_no_item(ReadsPadding(["a", "red", "circle"]).eval(), torch.randn(1, 3, 16), tokens)
