"""The explainer registry: every built-in has a YAML and runs; duplicates, unknown names and plugins."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import capsal.explainers.registry as registry
from capsal.errors import UserError
from capsal.explainers import (
    Explainer,
    Saliency,
    available_explainers,
    build_explainer,
    get_explainer,
    register_explainer,
)
from capsal.models.s2vt import S2VT
from capsal.models.soft_attention import SoftAttention
from capsal.models.transformer import TransformerCaptioner

TINY = {
    "hidden_size": 12,
    "embed_size": 6,
    "backbone": {"_target_": "capsal.models.backbones.SmallCNN", "channels": [4]},
}
CONF = Path(__file__).parents[2] / "capsal" / "conf" / "explainer_options"


@pytest.fixture(scope="module")
def tiny():
    """An S2VT, a soft-attention model and a Transformer: each explainer explains the first it takes
    (``Explainer.refusal``: soft_attention needs attention weights, rollout and relevancy an attention trace)."""
    torch.manual_seed(0)
    models = [cls(["a", "red", "circle"], **TINY).eval() for cls in (S2VT, SoftAttention, TransformerCaptioner)]
    grid = models[0].features(torch.rand(2, 1, 3, 16, 16))
    return models, grid


@pytest.mark.parametrize("name", available_explainers())
def test_every_builtin_explainer_has_its_yaml_and_explains_a_tiny_model(name, tiny):
    models, grid = tiny
    model = next(model for model in models if get_explainer(name).refusal(model) is None)
    assert (CONF / f"{name}.yaml").is_file(), f"conf/explainer_options/{name}.yaml is missing"
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        node = compose(config_name="explain", overrides=[f"+explainer_options@yaml={name}", "ckpt_path=x"]).yaml
    explainer = build_explainer(name)
    assert isinstance(explainer, get_explainer(name))
    assert {k: getattr(explainer, k) for k in node} == dict(node), "the YAML's options are not the explainer's"
    saliency = explainer.explain(model, model.items(grid), grid=grid, tokens="a red circle")
    assert isinstance(saliency, Saliency)
    assert saliency.scores.shape == (2, 4, 64)  # 3 words + the eos slot, 8x8 items
    assert saliency.words == [["a", "red", "circle"]] * 2
    e = saliency.e[saliency.word_mask]
    assert torch.isfinite(e).all() and e.min() >= 0 and e.max() <= 1


def test_duplicate_names_are_rejected_and_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="already registered"):

        @register_explainer("caption_guided")
        class Impostor(Explainer):
            pass

    with pytest.raises(UserError, match="caption_guided") as error:
        get_explainer("no_such_method")
    assert "known explainers" in str(error.value)


def test_a_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    package = tmp_path / "my_saliency"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from capsal.explainers import Explainer

            class Constant(Explainer):
                def __init__(self, value=1.0):
                    self.value = value
            """
        )
    )
    (package / "conf" / "explainer_options").mkdir(parents=True)
    (package / "conf" / "explainer_options" / "constant.yaml").write_text("value: 3.0\n")
    dist = tmp_path / "my_saliency-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-saliency\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[capsal.explainers]\nconstant = my_saliency:Constant\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert any(ep.name == "constant" for ep in metadata.entry_points(group="capsal.explainers"))
    plugin = registry.build_explainer("constant", value=2.0)
    assert type(plugin).__module__ == "my_saliency" and plugin.value == 2.0
    assert registry.build_explainer("constant").value == 3.0  # the plugin's own conf/explainer_options/constant.yaml
    assert "constant" in registry.available_explainers()
    sys.modules.pop("my_saliency", None)


def test_options_are_checked_by_name_and_yaml_options_are_the_defaults(monkeypatch, tmp_path):
    with pytest.raises(UserError, match=r"caption_guided.*no option 'mdoe'.*mode"):
        build_explainer("caption_guided", mdoe="kl")
    (tmp_path / "caption_guided.yaml").write_text("mode: kl\n")
    monkeypatch.setattr(registry, "CONFIG_DIR", tmp_path)
    assert build_explainer("caption_guided").mode == "kl"
    assert build_explainer("caption_guided", mode="information_gain").mode == "information_gain"
    assert build_explainer("center").sigma == 0.25  # no YAML in that folder: the class defaults
