"""Both ways of writing a plugin, in process: the current one (``tests/plugins/occlusion_hook.py``, implementing
``_attribute``) and the earlier one that overrides ``explain`` (``my_saliency``, kept as it was written), which still
works with one ``DeprecationWarning`` for its class."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch

import capsal.explainers.registry as registry
from capsal.errors import UserError
from capsal.evaluation import explain_batch
from capsal.explainers import Explainer, Saliency, build_explainer, register_explainer
from capsal.models.s2vt import S2VT

HERE = Path(__file__).parent
TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "dropout": 0.5,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4]},
}
DEPRECATION = "overrides Explainer.explain"


def fresh_import(module: str, path: Path, monkeypatch) -> tuple[object, list[warnings.WarningMessage]]:
    """``module`` imported anew from ``path`` (so its classes are defined now), and the warnings that raised."""
    monkeypatch.syspath_prepend(str(path))
    for name in [name for name in sys.modules if name.split(".")[0] == module.split(".")[0]]:
        monkeypatch.delitem(sys.modules, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = importlib.import_module(module)
    return loaded, [w for w in caught if issubclass(w.category, DeprecationWarning) and DEPRECATION in str(w.message)]


@pytest.fixture
def registered(monkeypatch):
    """A registry of its own for the test: plugins registered here are gone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", True)
    return register_explainer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = S2VT(["a", "red", "circle", "big"], **TINY).train()  # explain puts it in eval mode
    with torch.no_grad():
        grid = model.features(torch.rand(2, 1, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    return model, grid, model.items(grid)


def test_a_plugin_implementing_attribute_is_built_by_the_registry_and_explains(registered, tiny, monkeypatch):
    module, deprecations = fresh_import("occlusion_hook", HERE, monkeypatch)
    assert deprecations == []
    registered("occlusion")(module.Occlusion)
    explainer = build_explainer("occlusion", window=2)
    assert type(explainer).explain is Explainer.explain and repr(explainer) == "Occlusion(window=2)"
    model, grid, items = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.enable_grad():  # explain turns gradients off for it all the same
            own = explainer.explain(model, items, grid=grid)
        query = explain_batch(explainer, model, items, grid, "a red circle", ["s0", "s1"])
    assert model.training, "explain gave the model back in the mode it had"
    for saliency in (own, query):
        assert isinstance(saliency, Saliency) and saliency.explainer == "occlusion"
        assert saliency.scores.shape[::2] == (2, items.shape[1]) and not saliency.scores.requires_grad
    assert query.words == [["a", "red", "circle"]] * 2
    with pytest.raises(UserError, match="explainer 'occlusion' has no option 'windw'; its options: window"):
        build_explainer("occlusion", windw=2)


def test_a_plugin_overriding_explain_still_works_with_one_deprecation_warning(registered, tiny, monkeypatch):
    old, deprecations = fresh_import("my_saliency.occlusion", HERE / "my_saliency", monkeypatch)
    assert len(deprecations) == 1 and "_attribute" in str(deprecations[0].message)
    assert deprecations[0].filename.endswith("occlusion.py")  # points at the plugin's class, not at capsal
    new, _ = fresh_import("occlusion_hook", HERE, monkeypatch)
    registered("occlusion")(old.Occlusion)
    registered("occlusion_hook")(new.Occlusion)
    model, grid, items = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = build_explainer("occlusion", window=2)
        # the callers' way: sample ids always passed, which this explain does not take
        old_maps = explain_batch(explainer, model, items, grid, "a red circle", ["s0", "s1"])
        again = explainer.explain(model, items, grid=grid, tokens="a red circle")
    assert not [w for w in caught if DEPRECATION in str(w.message)], "one warning per class, not per call"
    new_maps = build_explainer("occlusion_hook", window=2).explain(model, items, grid=grid, tokens="a red circle")
    assert old_maps.words == new_maps.words == [["a", "red", "circle"]] * 2
    assert torch.equal(old_maps.scores, new_maps.scores) and torch.equal(again.scores, old_maps.scores)


def test_an_explain_override_gets_the_grad_mode_and_the_sample_ids_it_takes():
    seen = []

    with pytest.warns(DeprecationWarning, match=DEPRECATION):

        class Legacy(Explainer):
            needs_grad = True

            def explain(self, model, items, mask=None, grid=None, tokens=None, sample_ids=None):
                seen.append((torch.is_grad_enabled(), sample_ids))
                return "done"

    with torch.no_grad():
        assert Legacy().explain(None, torch.zeros(1, 2, 3), tokens="a", sample_ids=["x"]) == "done"
        Legacy().explain(None, torch.zeros(1, 2, 3))
    assert seen == [(True, ["x"]), (True, None)]

    with pytest.warns(DeprecationWarning, match=DEPRECATION):

        class Subclass(Legacy):  # overrides again: warned for, and wrapped, once more
            needs_grad = False

            def explain(self, model, items, mask=None, grid=None, tokens=None, **kwargs):
                seen.append((torch.is_grad_enabled(), kwargs))
                return super().explain(model, items, mask, grid, tokens, **kwargs)

    with torch.enable_grad():
        Subclass().explain(None, torch.zeros(1, 2, 3), sample_ids=["y"])
    assert seen[2:] == [(False, {"sample_ids": ["y"]}), (False, ["y"])]  # the instance says: no gradients
