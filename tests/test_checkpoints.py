"""Checkpoints keep loading across capsal versions: ``tests/data/s2vt_v0.1.0.ckpt`` was saved by capsal 0.1.0
(before the item layout, batch and explainer refactor) together with what it produced then."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.explainers import build_explainer

DATA = Path(__file__).parent / "data"


def test_a_checkpoint_saved_by_capsal_0_1_0_loads_and_explains_as_it_did():
    model = load_captioner(DATA / "s2vt_v0.1.0.ckpt")
    then = json.loads((DATA / "s2vt_v0.1.0.json").read_text())
    pixels = torch.rand(*then["pixels_shape"], generator=torch.Generator().manual_seed(then["pixels_seed"]))
    with torch.no_grad():
        grid = model.features(pixels)
        items = model.items(grid)
        captions = [model.vocab.decode_text(row) for row in model.generate(items)]
    saliency = build_explainer("caption_guided").explain(model, items, grid=grid, tokens="a small blue square")
    assert captions == then["captions"]
    torch.testing.assert_close(saliency.losses[0], torch.tensor(then["losses"]), atol=1e-5, rtol=1e-5)
    assert model.input_shape == (1, 64, 64)
    assert type(checkpoint_datamodule(model)).__name__ == "ShapesImageDataModule"
