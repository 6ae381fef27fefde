"""The one ``explain``: every built-in only implements ``_attribute``, and ``explain`` alone decides eval mode, grad
mode, precision, the sentence and per-sample seeding, whatever grad mode the caller is in."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch

from capsal.errors import UserError
from capsal.explainers import Explainer, available_explainers, build_explainer, get_explainer
from capsal.explainers.base import Sentences
from capsal.explainers.precision import PRECISIONS
from capsal.models.s2vt import S2VT

TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "dropout": 0.5,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4]},
}
CALLERS = {
    "no_grad": torch.no_grad,
    "enable_grad": torch.enable_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = S2VT(["a", "red", "circle", "big"], **TINY).train()
    with torch.no_grad():
        grid = model.features(torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    return model, grid


class Recorder(Explainer):
    """Records what ``explain`` set up before calling the hook."""

    def __init__(self, needs_grad: bool = False, precision=None, beam_size=None, seed=None):
        self.needs_grad = needs_grad
        self.draws_randomness = seed is not None
        self.precision, self.beam_size, self.seed = precision, beam_size, seed
        self.seen: dict = {}

    def _attribute(self, model, items, grid, sentences: Sentences):
        self.seen = {
            "grad": torch.is_grad_enabled(),
            "inference": torch.is_inference_mode_enabled(),
            "training": model.training,
            "autocast": torch.is_autocast_enabled("cpu"),
            "seeds": sentences.seeds,
            "grid": grid,
        }
        return sentences.saliency(torch.zeros(*sentences.word_mask.shape, items.shape[1]), explainer=self.name)


@pytest.mark.parametrize("name", available_explainers())
def test_every_builtin_implements_the_hook_and_types_its_options(name):
    cls = get_explainer(name)
    assert cls.explain is Explainer.explain, f"{name} overrides explain"
    assert cls._attribute is not Explainer._attribute
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    for parameter in list(inspect.signature(cls.__init__).parameters)[1:]:
        assert parameter in hints, f"{name}.{parameter} has no type"
    if "precision" in hints:
        assert typing.get_args(hints["precision"]) == PRECISIONS


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("needs_grad", [False, True])
def test_explain_decides_the_grad_mode_whatever_the_caller_set(caller, needs_grad, tiny):
    model, grid = tiny
    explainer = Recorder(needs_grad=needs_grad)
    with CALLERS[caller]():
        explainer.explain(model, model.items(grid), grid=grid, tokens="a red")
    assert explainer.seen["grad"] is needs_grad
    # inference mode is left off only where autograd needs it: a forward-only explainer keeps the caller's
    assert explainer.seen["inference"] is (caller == "inference_mode" and not needs_grad)
    assert explainer.seen["training"] is False and model.training and explainer.seen["grid"] is grid


def test_precision_and_seeds_only_for_explainers_that_declare_them(tiny):
    model, grid = tiny
    items = model.items(grid)
    plain, mixed, seeded = Recorder(), Recorder(precision="bf16-mixed"), Recorder(seed=3)
    for explainer in (plain, mixed, seeded):
        explainer.explain(model, items, tokens="a red", sample_ids=["x", "y"])
    assert not plain.seen["autocast"] and mixed.seen["autocast"] and not seeded.seen["autocast"]
    assert plain.seen["seeds"] is None and mixed.seen["seeds"] is None
    assert seeded.seen["seeds"].seed == 3 and seeded.seen["seeds"].keys == ["x/a red", "y/a red"]
    seeded.explain(model, items, tokens="a red")
    assert seeded.seen["seeds"].keys is None  # no ids: the explainer's one generator
    with pytest.raises(ValueError, match="got 1 sample ids for 2 samples"):
        seeded.explain(model, items, tokens="a red", sample_ids=["x"])


def test_the_gradient_explainer_gives_the_same_maps_under_any_caller_grad_mode(tiny):
    model, grid = tiny
    maps = {}
    for caller, mode in CALLERS.items():
        with mode():
            items = model.items(grid)
            saliency = build_explainer("gradient").explain(model, items, grid=grid, tokens="a red circle")
        maps[caller] = saliency.region_scores
    assert all(torch.equal(maps["no_grad"], other) for other in maps.values())
    assert maps["no_grad"].abs().sum() > 0


def test_sample_ids_seed_only_the_random_explainer(tiny):
    model, grid = tiny
    items = model.items(grid)
    for name in available_explainers():
        if get_explainer(name).refusal(model) is not None:
            continue
        with_ids = build_explainer(name).explain(model, items, grid=grid, tokens="a red", sample_ids=["x", "y"])
        without = build_explainer(name).explain(model, items, grid=grid, tokens="a red")
        assert torch.equal(with_ids.scores, without.scores) is (name != "random"), name
    together = build_explainer("random").explain(model, items, grid=grid, tokens="a red", sample_ids=["x", "y"])
    alone = build_explainer("random").explain(model, items[1:], grid=grid[1:], tokens="a red", sample_ids=["y"])
    assert torch.equal(together.scores[1:], alone.scores) and torch.equal(
        together.region_scores[1:], alone.region_scores
    )


def test_an_explainer_without_options_names_none_when_given_one():
    with pytest.raises(UserError, match="explainer 'uniform' has no option 'sigma'; its options: none"):
        build_explainer("uniform", sigma=0.5)
