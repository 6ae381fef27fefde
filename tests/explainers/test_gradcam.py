"""Grad-CAM per word (capsal.explainers.gradcam) against its definition: in closed form on a model linear in its
items, and word by word with its own forward and backward on tiny captioners, image and video."""

from __future__ import annotations

import torch
from einops import rearrange
from tiny import TINY, WORDS, save_tiny_hf
from torch import nn

from capsal.explainers import build_explainer
from capsal.models import S2VT, SoftAttention
from capsal.models.hf import HFCaptioner
from capsal.text import Vocabulary


class LinearWord(nn.Module):
    """``logit(red) = sum_i <w, v_i>`` at every step, every other logit 0: d log p(red) / d v_i = (1 - p(red)) w."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.vocab = Vocabulary(WORDS)
        self.w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:d]

    def features(self, pixels):
        raise NotImplementedError

    def items(self, grid):
        return rearrange(grid, "b t h w d -> b (t h w) d")

    def encode(self, items, mask=None, positions=None):
        return (items @ self.w).sum(1)  # (B,)

    def token_logprobs(self, state, tokens):
        logits = torch.zeros(*tokens.shape, len(self.vocab), dtype=torch.float64)
        logits[..., self.vocab.stoi["red"]] = state[:, None]
        return logits.log_softmax(-1)

    def generate(self, items, mask=None, beam_size=1, max_len=None):
        raise NotImplementedError


def test_gradcam_equals_its_closed_form_on_a_model_linear_in_its_items():
    model = LinearWord()
    items = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    saliency = build_explainer("gradcam").explain(model, items, tokens="a red circle")
    # p(red) = e^s / (e^s + V - 1) with s = sum_i <w, v_i>: the weights are (1 - p) w, the same for every item
    logit = items @ model.w  # (B, m)
    s = logit.sum(1)
    p = s.exp() / (s.exp() + len(model.vocab) - 1)
    expected = ((1 - p)[:, None] * logit).relu()  # (B, m)
    word = saliency.words[0].index("red")
    torch.testing.assert_close(saliency.scores[:, word], expected, atol=1e-12, rtol=0)


def by_hand(model, source, tokens, video: bool) -> torch.Tensor:
    """Each word on its own: a fresh forward, the gradient of that word's log-probability, the mean weights, ReLU."""
    maps = []
    for t in range(tokens.shape[1] - 1):
        leaf = source.detach().clone().requires_grad_(True)
        inputs = model.items(leaf) if video else leaf
        logprobs = model.token_logprobs(model.encode(inputs), tokens[:, :-1])
        (gradient,) = torch.autograd.grad(logprobs[:, t].gather(-1, tokens[:, t + 1, None]).sum(), leaf)
        if video:
            weights = gradient.mean(dim=(2, 3), keepdim=True)
            maps.append(rearrange((weights * source).sum(-1).relu(), "b t h w -> b t (h w)"))
        else:
            maps.append((gradient.mean(1, keepdim=True) * source).sum(-1).relu())
    return torch.stack(maps, 1)


def test_gradcam_equals_a_word_by_word_computation_on_an_image_captioner():
    torch.manual_seed(0)
    model = SoftAttention(WORDS, **TINY).double().eval()
    items = torch.randn(2, 6, model.feature_size, dtype=torch.float64)
    saliency = build_explainer("gradcam").explain(model, items, tokens=["a red circle", "a blue square and"])
    expected = by_hand(model, items, saliency.tokens, video=False)
    mask = saliency.word_mask
    torch.testing.assert_close(saliency.scores[mask], expected[mask], atol=1e-10, rtol=0)


def test_gradcam_inside_video_frames_equals_a_word_by_word_computation():
    torch.manual_seed(0)
    model = S2VT(WORDS, **TINY).double().eval()
    grid = torch.randn(2, 4, 2, 3, model.feature_size, dtype=torch.float64)
    saliency = build_explainer("gradcam").explain(model, model.items(grid), grid=grid, tokens="a red circle")
    expected = by_hand(model, grid, saliency.tokens, video=True)
    mask = saliency.word_mask
    torch.testing.assert_close(saliency.region_scores[mask], expected[mask], atol=1e-10, rtol=0)
    torch.testing.assert_close(saliency.scores[mask], expected[mask].sum(-1), atol=1e-10, rtol=0)


def test_gradcam_of_a_vit_gpt2_weighs_the_last_encoder_layers_patch_tokens(tmp_path):
    """By hand through transformers' own forward: the encoder's output is a leaf, the decoder reads it (the model's
    ``forward(encoder_outputs=...)``: with the class token for ``keep=input``, the patch tokens alone for
    ``keep=encoder_output``, as each mode's decoder reads them), and each word's gradient weights the patch tokens."""
    folder = save_tiny_hf(tmp_path / "vit_gpt2", "vit_gpt2")
    pixels = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for keep, read in (("input", slice(0, None)), ("encoder_output", slice(1, None))):
        model = HFCaptioner(str(folder), keep=keep).eval().double()
        items = model.items(model.features(pixels.double()))
        saliency = build_explainer("gradcam").explain(model, items, tokens="a red circle")
        values = model.pixel_values(pixels[:, 0])
        hidden = model.hf.encoder(pixel_values=values).last_hidden_state[:, read].detach().requires_grad_(True)
        logits = model.hf(encoder_outputs=(hidden,), decoder_input_ids=saliency.tokens[:, :-1]).logits
        picked = logits.log_softmax(-1).gather(-1, saliency.tokens[:, 1:, None])[..., 0]
        patches = hidden[0, -16:].detach()  # the 4 x 4 patch tokens (the class token is no item)
        words = []
        for t in range(3):  # one token per word in "a red circle"
            (gradient,) = torch.autograd.grad(picked[0, t], hidden, retain_graph=True)
            words.append((gradient[0, -16:].mean(0) * patches).sum(-1).relu())
        torch.testing.assert_close(saliency.scores[0, :3], torch.stack(words), atol=1e-10, rtol=0)
        assert saliency.scores[0, :3].amax(-1).gt(0).all()  # every word's map has values to compare
