"""Contrastive maps, "why this word rather than that one": ``explain(..., contrast=foil)`` explains
``log p(word) - log p(foil word)`` in the sentence's own context, for every explainer that scores a word's
log-probability; against two explanations subtracted, and on a trained model with a red and a blue object."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY, WORDS

from capsal.datamodules import ShapesImageDataModule
from capsal.errors import UserError
from capsal.explainers import build_explainer
from capsal.metrics.pointing_game import pointing_hits
from capsal.models import S2VT, SoftAttention
from capsal.models.protocol import visual_grid


@pytest.fixture
def model():
    torch.manual_seed(0)
    return SoftAttention(WORDS, **TINY).double().eval()


@pytest.mark.parametrize("name", ["caption_guided", "integrated_gradients"])
def test_a_contrast_is_the_two_explanations_subtracted_where_the_words_differ(model, name):
    """caption_guided: word 1 is ``log q_i(red) - log q_i(blue)`` item by item ("red" and "blue" follow the same "a");
    Integrated Gradients is linear in the function it attributes, so its contrast is the two attributions'
    difference."""
    items = torch.randn(2, 6, model.feature_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    explainer = build_explainer(name)
    fact = explainer.explain(model, items, tokens="a red circle")
    foil = explainer.explain(model, items, tokens="a blue circle")
    contrast = explainer.explain(model, items, tokens="a red circle", contrast="a blue circle")
    torch.testing.assert_close(contrast.scores[:, 1], fact.scores[:, 1] - foil.scores[:, 1], atol=1e-10, rtol=0)
    # the words both sentences share have no contrast; the figure's labels get the foil words
    assert contrast.scores[:, [0, 2]].abs().max() == 0
    assert contrast.foil_words == [["a", "blue", "circle"]] * 2
    assert contrast.words == fact.words


def test_contrastive_caption_guided_inside_video_frames_is_the_subtraction_too():
    torch.manual_seed(0)
    model = S2VT(WORDS, **TINY).double().eval()
    grid = torch.randn(2, 4, 2, 3, model.feature_size, dtype=torch.float64)
    explainer = build_explainer("caption_guided")
    run = lambda sentence, **kw: explainer.explain(model, model.items(grid), grid=grid, tokens=sentence, **kw)  # noqa: E731
    fact, foil = run("a red square"), run("a blue square")
    contrast = run("a red square", contrast="a blue square")
    expected = fact.region_losses[:, 1] - foil.region_losses[:, 1]
    torch.testing.assert_close(contrast.region_losses[:, 1], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["gradient", "gradcam"])
def test_contrastive_gradients_are_the_gradients_of_the_difference(model, name):
    items = torch.randn(2, 6, model.feature_size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    explainer = build_explainer(name)
    contrast = explainer.explain(model, items, tokens="a red circle", contrast="a blue circle")
    # by hand: the gradient of log p(red | a) - log p(blue | a) with respect to the items
    leaf = items.clone().requires_grad_(True)
    tokens = contrast.tokens
    logprobs = model.token_logprobs(model.encode(leaf), tokens[:, :-1])[:, 1]
    red, blue = model.vocab.stoi["red"], model.vocab.stoi["blue"]
    (gradient,) = torch.autograd.grad((logprobs[:, red] - logprobs[:, blue]).sum(), leaf)
    if name == "gradient":
        expected = (gradient * items).sum(-1)
    else:
        expected = (gradient.mean(1, keepdim=True) * items).sum(-1).relu()
    torch.testing.assert_close(contrast.scores[:, 1], expected, atol=1e-10, rtol=0)


def test_a_foil_of_another_length_or_for_an_explainer_without_log_probabilities_is_one_line(model):
    items = torch.randn(1, 6, model.feature_size, dtype=torch.float64)
    with pytest.raises(UserError, match=r"has 2 words.*has 3"):
        build_explainer("caption_guided").explain(model, items, tokens="a red circle", contrast="a blue")
    for name in ("uniform", "soft_attention"):
        with pytest.raises(UserError, match=f"explainer {name} does not score"):
            build_explainer(name).explain(model, items, tokens="a red circle", contrast="a blue circle")
    with pytest.raises(UserError, match="mode=information_gain"):
        build_explainer("caption_guided", mode="kl").explain(model, items, tokens="a red", contrast="a blue")


@pytest.mark.slow
def test_red_rather_than_blue_peaks_on_the_red_object_and_blue_rather_than_red_on_the_blue_one(
    localising_soft_attention_model,
):
    """The model trained on one object per image is shown a red and a blue object of the same shape; asked why
    "red" rather than "blue", its map peaks on the red one, and the other way round. The plain map of the same
    sentence is printed beside it."""
    model, _ = localising_soft_attention_model
    pairs = ShapesImageDataModule(
        num_train=1, num_val=1, num_test=24, min_objects=2, max_objects=2, colors=("red", "blue"), shapes=("circle",)
    )
    pairs.setup("test")
    explainer = build_explainer("caption_guided")
    hits = {"red": [], "blue": [], "plain red": []}
    for index in range(24):
        sample = pairs.sample("test", index)
        items = model.items(visual_grid(model, pairs.collate([sample])))
        objects = {obj.color: obj for obj in pairs.get_split("test").objects[index]}
        height, width = sample.pixels.shape[-2:]
        for color, other in (("red", "blue"), ("blue", "red")):
            query = f"a {color} circle"
            saliency = explainer.explain(model, items, tokens=query, contrast=f"a {other} circle")
            peak = saliency.to_image_size(height, width)[0, 1]
            hits[color].append(bool(pointing_hits(peak[None], [[objects[color].box]])[0]))
            if color == "red":
                plain = explainer.explain(model, items, tokens=query).to_image_size(height, width)[0, 1]
                hits["plain red"].append(bool(pointing_hits(plain[None], [[objects[color].box]])[0]))
    shares = {key: sum(values) / len(values) for key, values in hits.items()}
    print("share of 24 images whose map peaks on the object of the colour:", shares)
    assert shares["red"] >= 0.75 and shares["blue"] >= 0.75
