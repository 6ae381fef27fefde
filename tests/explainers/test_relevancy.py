"""The rollout and relevancy explainers against the rules applied by hand, layer by layer, on attention maps this
test reads by its own means: capsal's Transformer run step by step with attention written out here, and a Hugging
Face ViT-GPT2 run through its own ``forward(output_attentions=True)``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny import HF_ATTENDING, HF_CASES, save_tiny_hf

from capsal.errors import UserError
from capsal.explainers import build_explainer, get_explainer
from capsal.explainers.relevancy import normalised
from capsal.models import S2VT, TransformerCaptioner
from capsal.models.hf import HFCaptioner

WORDS = ["a", "red", "circle"]
BACKBONE = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4]}
EXPLAINERS = ("rollout", "relevancy")
PROMPT = {"blip": "a picture of"}


@pytest.fixture(scope="module")
def transformer() -> TransformerCaptioner:
    torch.manual_seed(0)
    model = TransformerCaptioner(
        WORDS,
        hidden_size=8,
        num_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=2,
        feedforward_size=16,
        dropout=0.0,
        backbone=BACKBONE,
    )
    return model.eval().double()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_relevancy")
    return {family: save_tiny_hf(root / family, family) for family in HF_ATTENDING}


def hf_model(folder: Path, family: str, keep: str) -> HFCaptioner:
    return HFCaptioner(str(folder), keep=keep, prompt=PROMPT.get(family)).eval().double()


# ---- the rules, written out with plain matmuls ---------------------------------------------------------------------
def by_hand(encoder, decoder, cross, logprobs, targets, method: str, foil=None) -> torch.Tensor:
    """``(B, n, S)``: row t is word t's relevance (one backward per word) or rollout, from ``(B, H, q, k)`` maps;
    ``foil``: targets whose log-probabilities are subtracted (a contrastive map)."""
    if method == "rollout":
        return torch.stack([rollout_by_hand(encoder, decoder, cross, b) for b in range(logprobs.shape[0])])
    picked = logprobs.gather(-1, targets[..., None])[..., 0]
    if foil is not None:
        picked = picked - logprobs.gather(-1, foil[..., None])[..., 0]
    maps = [*encoder, *decoder, *cross]
    rows = []
    for t in range(picked.shape[1]):
        grads = torch.autograd.grad(picked[:, t].sum(), maps, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(a) if g is None else g for a, g in zip(maps, grads, strict=True)]
        cams = [(g * a.detach()).clamp(min=0).mean(dim=1) for a, g in zip(maps, grads, strict=True)]
        e, d = len(encoder), len(decoder)
        per_row = [chefer_by_hand(cams[:e], cams[e : e + d], cams[e + d :], b)[t] for b in range(picked.shape[0])]
        rows.append(torch.stack(per_row))
    return torch.stack(rows, dim=1)


def normalise_by_hand(r: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(r.shape[0], dtype=r.dtype)
    hat = r - eye
    sums = hat.sum(dim=1, keepdim=True)
    return torch.where(sums == 0, torch.zeros_like(hat), hat / sums) + eye


def chefer_by_hand(encoder, decoder, cross, b: int) -> torch.Tensor:
    s, n = cross[0].shape[-1], cross[0].shape[-2]
    r_ii, r_tt = torch.eye(s, dtype=cross[0].dtype), torch.eye(n, dtype=cross[0].dtype)
    r_ti = torch.zeros(n, s, dtype=cross[0].dtype)
    for a in encoder:
        r_ii = r_ii + a[b] @ r_ii
    for a, c in zip(decoder, cross, strict=True):
        r_tt = r_tt + a[b] @ r_tt
        r_ti = r_ti + a[b] @ r_ti
        r_ti = r_ti + normalise_by_hand(r_tt).T @ c[b] @ normalise_by_hand(r_ii)
    return r_ti


def rollout_by_hand(encoder, decoder, cross, b: int) -> torch.Tensor:
    def rolled(maps, size):
        joint = torch.eye(size, dtype=cross[0].dtype)
        for a in maps:
            mean = a[b].detach().mean(dim=0) + torch.eye(size, dtype=a.dtype)
            joint = (mean / mean.sum(dim=1, keepdim=True)) @ joint
        return joint

    last = cross[-1][b].detach().mean(dim=0)
    return rolled(decoder, last.shape[0]) @ last @ rolled(encoder, last.shape[1])


# ---- capsal's Transformer, step by step -------------------------------------------------------------------------
def attend(mha: torch.nn.MultiheadAttention, x: torch.Tensor, memory: torch.Tensor, causal: bool):
    """Multi-head attention written out: ``(output, weights (B, H, q, k))``."""
    heads, width = mha.num_heads, mha.embed_dim
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)

    q, k, v = split(x @ wq.T + bq), split(memory @ wk.T + bk), split(memory @ wv.T + bv)
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    weights = scores.softmax(dim=-1)
    context = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], width)
    return context @ mha.out_proj.weight.T + mha.out_proj.bias, weights


def feed_forward(layer, x):
    return layer.linear2(layer.activation(layer.linear1(x)))


def transformer_by_hand(model: TransformerCaptioner, items: torch.Tensor, tokens: torch.Tensor):
    """The encoder and decoder (norm first, no dropout) step by step: maps and ``(B, n, V)`` log-probabilities."""
    encoder, decoder, cross = [], [], []
    x = model.item_projection(items) + model.item_positions(torch.arange(items.shape[1]))
    for layer in model.encoder.layers:
        h = layer.norm1(x)
        out, a = attend(layer.self_attn, h, h, causal=False)
        encoder.append(a)
        x = x + out
        x = x + feed_forward(layer, layer.norm2(x))
    memory = model.encoder.norm(x)
    y = model.word_projection(model.embedding(tokens)) + model.word_positions(torch.arange(tokens.shape[1]))
    for layer in model.decoder.layers:
        h = layer.norm1(y)
        out, a = attend(layer.self_attn, h, h, causal=True)
        decoder.append(a)
        y = y + out
        out, a = attend(layer.multihead_attn, layer.norm2(y), memory, causal=False)
        cross.append(a)
        y = y + out
        y = y + feed_forward(layer, layer.norm3(y))
    logprobs = model.output(model.decoder.norm(y)).log_softmax(dim=-1)
    return encoder, decoder, cross, logprobs


@pytest.mark.parametrize("method", EXPLAINERS)
def test_the_transformers_maps_are_the_rules_applied_by_hand(transformer, method):
    torch.manual_seed(1)
    items = torch.rand(2, 6, transformer.feature_size, dtype=torch.float64)
    saliency = build_explainer(method).explain(transformer, items, tokens="a red circle")
    tokens = saliency.tokens
    with torch.enable_grad():
        encoder, decoder, cross, logprobs = transformer_by_hand(transformer, items, tokens[:, :-1])
        torch.testing.assert_close(
            logprobs, transformer.token_logprobs(transformer.encode(items), tokens[:, :-1]), atol=1e-10, rtol=0
        )
        expected = by_hand(encoder, decoder, cross, logprobs, tokens[:, 1:], method)
    assert saliency.words == [WORDS] * 2
    torch.testing.assert_close(saliency.scores, expected.detach(), atol=1e-10, rtol=1e-8)
    assert saliency.scores[saliency.word_mask].abs().sum() > 0


def test_a_contrastive_relevancy_weights_the_maps_by_the_gradient_of_the_difference(transformer):
    """ "red rather than circle" after "a": the gradients are those of log p(red) - log p(circle)."""
    torch.manual_seed(2)
    items = torch.rand(2, 6, transformer.feature_size, dtype=torch.float64)
    saliency = build_explainer("relevancy").explain(
        transformer, items, tokens="a red circle", contrast="a circle circle"
    )
    tokens = saliency.tokens
    foil = tokens[:, 1:].clone()
    foil[:, 1] = transformer.vocab.stoi["circle"]
    with torch.enable_grad():
        encoder, decoder, cross, logprobs = transformer_by_hand(transformer, items, tokens[:, :-1])
        expected = by_hand(encoder, decoder, cross, logprobs, tokens[:, 1:], "relevancy", foil)
    torch.testing.assert_close(saliency.scores, expected.detach(), atol=1e-10, rtol=1e-8)
    plain = build_explainer("relevancy").explain(transformer, items, tokens="a red circle")
    assert not torch.allclose(saliency.scores[:, 1], plain.scores[:, 1])


def test_the_transformers_trace_is_its_own_pass(transformer):
    """The trace's log-probabilities are ``token_logprobs``' (the maps are read from the model's own layers)."""
    torch.manual_seed(2)
    items = torch.rand(3, 5, transformer.feature_size, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [False] * 5])
    tokens = torch.tensor([[1, 4, 5, 6], [1, 5, 4, 2], [1, 4, 2, 0]])
    trace = transformer.attention_trace(items, mask, tokens)
    expected = transformer.token_logprobs(transformer.encode(items, mask), tokens)
    torch.testing.assert_close(trace.logprobs, expected, atol=1e-6, rtol=0)
    assert [a.shape for a in trace.encoder] == [(3, 2, 5, 5)] * 2
    assert [a.shape for a in trace.decoder] == [(3, 2, 4, 4)] * 2 and [a.shape for a in trace.cross] == [
        (3, 2, 4, 5)
    ] * 2
    assert trace.item[1].tolist() == [0, 1, 2, -1, -1] and trace.item[2].tolist() == [-1] * 5
    for method in EXPLAINERS:  # padded items score 0; a row with no item has an all-zero map
        saliency = build_explainer(method).explain(transformer, items, mask, tokens="a red circle")
        assert saliency.scores[1, :, 3:].abs().sum() == 0 and saliency.scores[2].abs().sum() == 0
        assert torch.isfinite(saliency.scores).all()


# ---- a Hugging Face ViT-GPT2 through its own forward ----------------------------------------------------------------
@pytest.mark.parametrize("method", EXPLAINERS)
def test_a_vit_gpt2s_maps_are_the_rules_applied_by_hand(hf_folders, method):
    """keep=input with every patch: the encoder sequence is the class token and the 16 patches, as the model's own
    ``forward`` runs it; the map is over the patches (the class token's column left out)."""
    model = hf_model(hf_folders["vit_gpt2"], "vit_gpt2", "input")
    pixels = torch.rand(2, 1, 3, 40, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    items = model.items(model.features(pixels))
    saliency = build_explainer(method).explain(model, items, tokens="a big yellow triangle")
    tokens = saliency.tokens
    model.hf.set_attn_implementation("eager")
    with torch.enable_grad():
        out = model.hf(
            pixel_values=model.pixel_values(pixels[:, 0]), decoder_input_ids=tokens[:, :-1], output_attentions=True
        )
        logprobs = out.logits.log_softmax(dim=-1)
        expected = by_hand(
            list(out.encoder_attentions),
            list(out.decoder_attentions),
            list(out.cross_attentions),
            logprobs,
            tokens[:, 1:],
            method,
        )
    torch.testing.assert_close(logprobs, model.token_logprobs(model.encode(items), tokens[:, :-1]), atol=1e-6, rtol=0)
    per_token = expected.detach()[:, :, 1:]  # the class token is no item
    words = torch.zeros_like(per_token)  # a word's subword tokens summed, as every explainer reports
    for b, row in enumerate(tokens.tolist()):
        owners = model.vocab.words_of(row)[1][1:]
        for column, owner in enumerate(owners):
            if owner >= 0:
                words[b, owner] += per_token[b, column]
    real = saliency.word_mask
    assert real.sum(dim=1).tolist() == [4, 4]
    torch.testing.assert_close(saliency.scores[real], words[real], atol=1e-8, rtol=1e-6)
    assert saliency.scores[real].abs().sum() > 0


@pytest.mark.parametrize(("family", "keep"), [case for case in HF_CASES if case[0] in HF_ATTENDING])
def test_a_hugging_face_trace_is_its_own_pass_over_the_patches(hf_folders, family, keep):
    model = hf_model(hf_folders[family], family, keep)
    items = model.items(model.features(torch.rand(2, 1, 3, 32, 32, dtype=torch.float64)))
    tokens = model.generate(items)[:, :-1]
    trace = model.attention_trace(items, None, tokens)
    torch.testing.assert_close(trace.logprobs, model.token_logprobs(model.encode(items), tokens), atol=1e-6, rtol=0)
    prefix = {"input": 2 if family == "deit_bert" else 1}.get(keep, 0)  # class (and distillation) tokens
    # Florence-2's keep=prefix: its encoder reads the task prompt after the image tokens
    prompt = int((model.family.task_ids != model.hf.config.image_token_id).sum()) if keep == "prefix" else 0
    assert trace.item[0].tolist() == [-1] * prefix + list(range(16)) + [-1] * prompt and trace.count == 16
    assert len(trace.encoder) == (0 if keep == "encoder_output" else 2) and len(trace.decoder) == len(trace.cross) == 2
    assert trace.cross[0].shape == (2, 4, tokens.shape[1], prefix + 16 + prompt)


@pytest.mark.parametrize("method", EXPLAINERS)
def test_a_model_without_an_attention_trace_is_refused_in_one_line(method):
    model = S2VT(WORDS, hidden_size=12, embed_size=6, backbone=BACKBONE).eval()
    with pytest.raises(UserError) as error:
        build_explainer(method).explain(model, torch.rand(1, 4, model.feature_size), tokens="a red")
    message = str(error.value)
    assert "\n" not in message and "S2VT" in message and "model=transformer" in message and "BLIP" in message
    assert get_explainer(method).needs_attention_trace and get_explainer(method).refusal(model) == message


def test_the_normalisation_keeps_a_row_that_drew_on_nothing():
    r = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]])
    torch.testing.assert_close(normalised(r), torch.tensor([[[1.0, 0.0], [1 / 3, 5 / 3]]]))


@pytest.mark.parametrize("method", EXPLAINERS)
def test_under_bf16_the_rules_run_in_float32_and_video_frames_are_the_items(method):
    torch.manual_seed(4)
    model = TransformerCaptioner(WORDS, hidden_size=8, num_heads=2, dropout=0.0, backbone=BACKBONE).eval()
    grid = model.features(torch.rand(2, 3, 3, 16, 16))  # 3 frames
    saliency = build_explainer(method, precision="bf16-mixed").explain(model, model.items(grid), grid=grid)
    assert saliency.scores.dtype == torch.float32 and saliency.scores.shape[-1] == 3
    assert saliency.region_scores is None and torch.isfinite(saliency.scores).all()
