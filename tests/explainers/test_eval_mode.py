"""Deterministic explanations: every built-in explainer runs the model in eval mode and gives it back as it was."""

from __future__ import annotations

import pytest
import torch

from capsal.errors import UserError
from capsal.explainers import build_explainer
from capsal.explainers.base import eval_mode
from capsal.models.s2vt import S2VT
from capsal.models.soft_attention import SoftAttention

BUILTINS = ["caption_guided", "gradient", "uniform", "center", "random", "soft_attention"]
WORDS = ["a", "red", "circle", "big", "square"]
TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "dropout": 0.5,  # large: any forward pass in train mode would change every map
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4]},
}


def modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def left_training(cls) -> torch.nn.Module:
    """A model left in training mode, except one submodule the caller had put in eval mode (mixed modes)."""
    torch.manual_seed(0)
    model = cls(WORDS, **TINY).train()
    model.output[1].eval()  # the output Linear; its Dropout stays in training mode
    return model


@pytest.mark.parametrize("frames", [1, 3], ids=["image", "video"])
@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("sentence", [None, "a big red circle"], ids=["own_caption", "query"])
def test_a_model_left_in_training_mode_gives_the_same_maps_twice_and_keeps_its_modes(name, frames, sentence):
    model = left_training(SoftAttention if name == "soft_attention" else S2VT)
    before = modes(model)
    assert before[""] is True and before["output.1"] is False and before["output.0"] is True
    with torch.no_grad():
        grid = model.features(torch.rand(2, frames, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    items = model.items(grid)
    runs = []
    for _ in range(2):
        explainer = build_explainer(name)
        runs.append(explainer.explain(model, items, grid=grid, tokens=sentence, sample_ids=["s0", "s1"]))
        assert modes(model) == before, f"{name} changed the model's train/eval modes"
    first, second = runs
    assert first.words == second.words
    assert torch.equal(first.scores, second.scores), f"{name} gave different maps on two calls"
    if first.region_scores is not None:
        assert torch.equal(first.region_scores, second.region_scores)


def test_the_maps_are_those_of_the_model_in_eval_mode():
    """Left in training mode or put in eval mode by the caller: the same caption-guided maps."""
    model = left_training(S2VT)
    grid = model.features(torch.rand(1, 1, 3, 16, 16, generator=torch.Generator().manual_seed(2))).detach()
    explainer = build_explainer("caption_guided")
    from_training = explainer.explain(model, model.items(grid), grid=grid)
    model.eval()
    from_eval = explainer.explain(model, model.items(grid), grid=grid)
    assert from_training.words == from_eval.words
    assert torch.equal(from_training.scores, from_eval.scores)


def test_modes_come_back_after_a_bad_query():
    model = left_training(S2VT)
    before = modes(model)
    grid = model.features(torch.rand(1, 1, 3, 16, 16)).detach()
    with pytest.raises(UserError, match="every word of the query"):
        build_explainer("caption_guided").explain(model, model.items(grid), grid=grid, tokens="zebra giraffe")
    assert modes(model) == before


def test_eval_mode_leaves_objects_that_are_no_module_alone():
    class Plain:
        training = True

    plain = Plain()
    with eval_mode(plain):
        assert plain.training
    assert plain.training
