"""The README's code examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from capsal.explainers.saliency import Saliency
from capsal.models.s2vt import S2VT

README = (Path(__file__).parents[2] / "README.md").read_text()


def python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    matches = [b for b in blocks if containing in b]
    assert len(matches) == 1, f"expected one README python block with {containing!r}"
    return matches[0]


def test_the_own_captioner_example_runs_and_is_explained():
    namespace: dict = {}
    exec(python_block("class MyCaptioner"), namespace)
    saliency = namespace["saliency"]
    assert isinstance(saliency, Saliency) and saliency.words == [["a", "red", "circle"]]
    assert saliency.scores.shape == (1, 4, 9)


def test_the_plugin_example_explains_a_capsal_model():
    namespace: dict = {}
    exec(python_block("class Occlusion"), namespace)
    torch.manual_seed(0)
    model = S2VT(["a", "red", "circle"], hidden_size=8, embed_size=4).eval()
    items = torch.randn(2, 5, model.feature_size)
    saliency = namespace["Occlusion"]().explain(model, items, tokens="a red circle")
    assert saliency.scores.shape == (2, 4, 5) and torch.isfinite(saliency.scores).all()
    assert saliency.e[saliency.word_mask].max() == 1


def test_the_save_pretrained_example_makes_a_folder_capsal_loads_offline(tmp_path):
    from tiny import save_tiny_hf

    from capsal.models.hf import HFCaptioner

    source = save_tiny_hf(tmp_path / "hub", "vit_gpt2")  # stands in for the hub id
    block = python_block("save_pretrained(folder)")
    block = block.replace('"nlpconnect/vit-gpt2-image-captioning"', repr(str(source)))
    exec(block.replace('"/models/vit-gpt2"', repr(str(tmp_path / "saved"))), {})
    model = HFCaptioner(str(tmp_path / "saved"))
    assert model.vocab.decode(model.vocab.encode("a yellow triangle")) == ["a", "yellow", "triangle"]
