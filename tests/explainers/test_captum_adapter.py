"""The captum explainer (capsal.explainers.captum_adapter) against Captum itself: per word, its maps equal Captum's
methods run by hand on the test's own forward function (image items, video grids, subword tokens of a Hugging Face
captioner), integrated_gradients is captum with its method fixed, and what Captum cannot run stops in one line."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny import TINY, WORDS, compose_train, save_tiny_hf

from capsal.cli.settings import ExplainSettings
from capsal.config_schema import check_config
from capsal.errors import UserError
from capsal.explainers import build_explainer
from capsal.explainers.base import word_rows
from capsal.models import S2VT, SoftAttention

SENTENCES = ["a red circle", "a blue square and"]


def by_hand(method_class, model, source, tokens, video: bool = False, **options) -> torch.Tensor:
    """Captum's ``method_class`` on the test's own forward, one word column at a time, summed over the features:
    ``(B, n, m)`` or, for a grid, ``(B, n, T, h, w)``."""

    def logprobs(x: torch.Tensor) -> torch.Tensor:
        copies = x.shape[0] // tokens.shape[0]  # Integrated Gradients stacks its steps along the batch
        repeated = tokens.repeat(copies, 1)
        state = model.encode(model.items(x) if video else x)
        return model.token_logprobs(state, repeated[:, :-1]).gather(-1, repeated[:, 1:, None])[..., 0]

    method = method_class(logprobs)
    columns = range(tokens.shape[1] - 1)
    per_feature = [method.attribute(source, target=t, **options) for t in columns]
    # perturbations: every feature of a perturbed item carries its change (the mean); gradients: each its own (the sum)
    reduced = [a.mean(-1) if method_class is not IntegratedGradients else a.sum(-1) for a in per_feature]
    return torch.stack(reduced, dim=1)


@pytest.fixture(scope="module")
def image_model():
    torch.manual_seed(0)
    model = SoftAttention(WORDS, **TINY).double().eval()
    items = torch.randn(2, 6, model.feature_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, items


def test_integrated_gradients_equals_captums_own_word_by_word(image_model):
    model, items = image_model
    saliency = build_explainer("captum", options={"n_steps": 8}).explain(model, items, tokens=SENTENCES)
    expected = by_hand(IntegratedGradients, model, items, saliency.tokens, n_steps=8)
    mask = saliency.word_mask
    assert saliency.words == [s.split() for s in SENTENCES]
    torch.testing.assert_close(saliency.scores[mask], expected[mask], atol=1e-10, rtol=0)
    assert expected[mask].abs().amin(-1).gt(0).all()  # every word's map has values to compare


def test_occlusion_replaces_one_whole_item_as_captums_own_does(image_model):
    model, items = image_model
    saliency = build_explainer("captum", method="Occlusion").explain(model, items, tokens=SENTENCES)
    expected = by_hand(Occlusion, model, items, saliency.tokens, sliding_window_shapes=(1, items.shape[-1]))
    mask = saliency.word_mask
    assert expected.dtype == torch.float32  # Captum's perturbation methods divide in float32, float64 inputs or not
    torch.testing.assert_close(saliency.scores[mask], expected[mask].double(), atol=1e-10, rtol=0)
    # the score is the change of the word's log-probability when the item is zeroed
    zeroed = items.clone()
    zeroed[:, 2] = 0
    tokens = saliency.tokens
    full, without = (
        model.token_logprobs(model.encode(x), tokens[:, :-1]).gather(-1, tokens[:, 1:, None])[..., 0]
        for x in (items, zeroed)
    )
    drop = full - without
    torch.testing.assert_close(saliency.scores[:, :, 2][mask], drop[mask], atol=1e-5, rtol=1e-5)


def test_a_given_window_and_feature_groups_of_whole_items(image_model):
    model, items = image_model
    d = items.shape[-1]
    window = build_explainer("captum", method="Occlusion", options={"sliding_window_shapes": [2, d], "strides": [2, d]})
    pairs = window.explain(model, items, tokens=SENTENCES)
    expected = by_hand(Occlusion, model, items, pairs.tokens, sliding_window_shapes=(2, d), strides=(2, d))
    torch.testing.assert_close(pairs.scores[pairs.word_mask], expected[pairs.word_mask].double(), atol=1e-10, rtol=0)
    ablation = build_explainer("captum", method="FeatureAblation").explain(model, items, tokens=SENTENCES)
    occlusion = build_explainer("captum", method="Occlusion").explain(model, items, tokens=SENTENCES)
    torch.testing.assert_close(ablation.scores, occlusion.scores, atol=1e-6, rtol=0)  # float32 inside Captum


def test_integrated_gradients_is_captum_with_its_method_fixed(image_model):
    model, items = image_model
    named = build_explainer("integrated_gradients").explain(model, items, tokens=SENTENCES)
    general = build_explainer("captum", method="IntegratedGradients", options={"n_steps": 16})
    torch.testing.assert_close(named.scores, general.explain(model, items, tokens=SENTENCES).scores, atol=0, rtol=0)
    assert named.explainer == "integrated_gradients"
    with pytest.raises(UserError, match="explainer 'integrated_gradients' has no option 'method'"):
        build_explainer("integrated_gradients", method="Occlusion")


def test_padded_items_get_no_score_and_change_nothing_real(image_model):
    model, items = image_model
    mask = torch.ones(items.shape[:2], dtype=torch.bool)
    mask[1, 4:] = False
    for method in ("IntegratedGradients", "Occlusion"):
        saliency = build_explainer("captum", method=method).explain(model, items, mask=mask, tokens=SENTENCES)
        assert saliency.scores[1, :, 4:].eq(0).all()
        alone = build_explainer("captum", method=method).explain(model, items[1:, :4], tokens=SENTENCES[1])
        real = saliency.word_mask[1]
        torch.testing.assert_close(saliency.scores[1, real, :4], alone.scores[0, real], atol=1e-10, rtol=0)


def test_video_regions_equal_captums_own_on_the_grid_and_sum_to_the_frames():
    torch.manual_seed(0)
    model = S2VT(WORDS, **TINY).double().eval()
    grid = torch.randn(2, 4, 2, 3, model.feature_size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    saliency = build_explainer("captum", options={"n_steps": 4}).explain(
        model, model.items(grid), grid=grid, tokens="a red circle"
    )
    expected = by_hand(IntegratedGradients, model, grid, saliency.tokens, video=True, n_steps=4).flatten(3)
    mask = saliency.word_mask
    assert saliency.region_scores.shape == (2, 4, 4, 6)
    torch.testing.assert_close(saliency.region_scores[mask], expected[mask], atol=1e-10, rtol=0)
    torch.testing.assert_close(saliency.scores, saliency.region_scores.sum(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("Integrated", "'Integrated' is no captum.attr method capsal can run; known: .*IntegratedGradients"),
        ("LayerGradCam", "LayerGradCam attributes a layer's activations .* use a method without a layer"),
        ("NoiseTunnel", "NoiseTunnel wraps another method: give that method and options.nt_type"),
    ],
)
def test_a_method_capsal_cannot_run_is_one_line(method, expected):
    with pytest.raises(UserError, match=expected) as raised:
        build_explainer("captum", method=method)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("model_class", "method", "module"),
    [
        (S2VT, "DeepLift", r"encoder \(LSTM\)"),
        (SoftAttention, "DeepLiftShap", r"decoder \(LSTMCell\)"),
        (S2VT, "LRP", r"encoder \(LSTM\)"),
    ],
)
def test_a_module_the_method_has_no_rule_for_is_named_in_one_line(model_class, method, module):
    """Captum runs DeepLift through an LSTM without a word (its sigmoid and tanh are no modules, so the gradient
    stands in for DeepLift's rules); LRP raises a TypeError naming only the module's class."""
    torch.manual_seed(0)
    model = model_class(WORDS, **TINY).eval()
    items = torch.randn(2, 5, model.feature_size)
    with pytest.raises(UserError, match=f"captum method {method} .*{module}") as raised:
        build_explainer("captum", method=method).explain(model, items, tokens="a red circle")
    assert "\n" not in str(raised.value)


def test_an_option_the_method_does_not_take_is_named():
    with pytest.raises(UserError, match=r"options.n_steps=8 is not an option of Occlusion.attribute; .*strides"):
        build_explainer("captum", method="Occlusion", options={"n_steps": 8})
    with pytest.raises(UserError, match=r"options.nt_samples=4 .*need nt_type"):
        build_explainer("captum", options={"nt_samples": 4})
    with pytest.raises(UserError, match=r"sliding_window_shapes=\[1\] has 1 sizes; .*give 2"):
        explainer = build_explainer("captum", method="Occlusion", options={"sliding_window_shapes": [1]})
        explainer.explain(SoftAttention(WORDS, **TINY).eval(), torch.randn(1, 3, 5), tokens="a red")


@pytest.fixture
def explain_config(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        return compose(config_name="explain", overrides=["ckpt_path=x.ckpt", "explainer=captum"])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("method", "Nope", "explainer_options.captum.method='Nope' is not allowed: 'Nope' is no captum.attr method"),
        ("options", {"nsteps": 3}, "explainer_options.captum.options.nsteps=3 is not allowed: extra inputs"),
        ("options", {"n_steps": 0}, "explainer_options.captum.options.n_steps=0 is not allowed: input should be great"),
        ("options", {"n_steps": 8, "method": "simpson"}, "explainer_options.captum.options.method='simpson' is not"),
        ("options", {"sliding_window_shapes": [1, 4]}, "options.sliding_window_shapes=[1, 4] is not an option of"),
    ],
)
def test_the_config_check_refuses_a_wrong_option_in_one_line(explain_config, key, value, expected):
    check_config(explain_config, ExplainSettings)  # the shipped options pass
    bad = copy.deepcopy(explain_config)
    OmegaConf.update(bad, f"explainer_options.captum.{key}", value, merge=False)
    with pytest.raises(UserError) as raised:
        check_config(bad, ExplainSettings)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_unknown_and_subword_words_get_one_row_each_their_tokens_summed(tmp_path):
    """A Hugging Face tokenizer splits yellow and triangle in two: each word's row is its tokens' columns summed."""
    folder = save_tiny_hf(tmp_path / "vit_gpt2", "vit_gpt2")
    cfg = compose_train("model=hf_captioner", f"model.name_or_path={folder}", "model.keep=encoder_output")
    model = instantiate(cfg.model).eval().double()
    items = model.items(model.features(torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))))
    saliency = build_explainer("captum", options={"n_steps": 4}).explain(model, items, tokens="a big yellow triangle")
    assert saliency.words == [["a", "big", "yellow", "triangle"]] * 2
    per_token = by_hand(IntegratedGradients, model, items, saliency.tokens, n_steps=4)
    expected = torch.zeros_like(per_token)
    for b, row in enumerate(saliency.tokens.tolist()):
        for column, owner in enumerate(word_rows(model.vocab.words_of(row)[1][1:], per_token.shape[1])):
            expected[b, owner] += per_token[b, column]
    torch.testing.assert_close(saliency.scores[:, :4], expected[:, :4], atol=1e-10, rtol=0)


def test_a_query_word_unknown_to_the_vocabulary_is_explained_as_unk(image_model, caplog):
    model, items = image_model
    saliency = build_explainer("captum", options={"n_steps": 4}).explain(model, items, tokens="a green circle")
    assert "green" in caplog.text
    expected = by_hand(IntegratedGradients, model, items, saliency.tokens, n_steps=4)
    assert saliency.words[0] == ["a", "<unk>", "circle"]
    torch.testing.assert_close(saliency.scores[:, :3], expected[:, :3], atol=1e-10, rtol=0)
