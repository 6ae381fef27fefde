"""The explainers' ``precision`` option: Lightning's names, autocast around the model calls, float32 results."""

from __future__ import annotations

import pytest
import torch

from capsal.errors import UserError
from capsal.explainers import build_explainer
from capsal.explainers.precision import autocast, normalize_precision
from capsal.models.s2vt import S2VT

WORDS = ["a", "red", "circle", "square", "and", "left"]


@pytest.fixture(scope="module")
def video():
    torch.manual_seed(0)
    model = S2VT(WORDS, hidden_size=32, embed_size=16, caption_metrics=[]).eval()
    grid = torch.randn(2, 3, 4, 4, model.feature_size)
    return model, grid, model.items(grid)


@pytest.mark.parametrize(("given", "name"), [(32, "32"), ("32", "32"), ("32-true", "32"), ("bf16-mixed", "bf16-mixed")])
def test_lightning_names(given, name):
    assert normalize_precision(given) == name
    assert normalize_precision("16-mixed") == "16-mixed"


@pytest.mark.parametrize("bad", ["fp16", "bf16", 16, True, 32.0])
def test_other_names_are_one_line_errors(bad):
    with pytest.raises(UserError, match="precision must be one of 32, 32-true, bf16-mixed, 16-mixed"):
        build_explainer("caption_guided", precision=bad)


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_bf16_returns_float32_close_to_float32(video, name, bf16_kernels):
    model, grid, items = video
    full = build_explainer(name).explain(model, items, grid=grid, tokens="a red circle")
    mixed = build_explainer(name, precision="bf16-mixed").explain(model, items, grid=grid, tokens="a red circle")
    for field in ("scores", "losses", "region_scores", "region_losses"):
        a, b = getattr(full, field), getattr(mixed, field)
        assert (a is None) == (b is None)
        if b is not None:
            assert b.dtype == torch.float32, field
            assert torch.allclose(a, b, rtol=0.05, atol=0.05), field


def test_float16_on_cpu_is_refused_in_one_line(video):
    model, grid, items = video
    explainer = build_explainer("caption_guided", precision="16-mixed")  # the name is fine; the device is not
    with pytest.raises(UserError, match=r"16-mixed needs a GPU.*bf16-mixed"):
        explainer.explain(model, items, grid=grid, tokens="a red circle")


def test_32_switches_a_surrounding_autocast_off(video):
    model, grid, items = video
    reference = build_explainer("caption_guided").explain(model, items, grid=grid, tokens="a red circle")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast(32, "cpu"):
            assert not torch.is_autocast_enabled("cpu")
        inside = build_explainer("caption_guided").explain(model, items, grid=grid, tokens="a red circle")
        assert torch.is_autocast_enabled("cpu")
    assert torch.equal(inside.losses, reference.losses)


def test_every_yaml_with_a_model_call_has_the_option():
    from capsal.explainers.registry import explainer_config

    for name in ("caption_guided", "gradient", "soft_attention"):
        assert explainer_config(name)["precision"] == 32
