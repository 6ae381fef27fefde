"""The gallery's sentences as explorer samples, from the figures' own explained words (no second explanation)."""

from __future__ import annotations

import torch
from tiny import TINY

from capsal.callbacks.gallery import explain_gallery
from capsal.datamodules import ShapesImageDataModule
from capsal.datamodules.base import collate_samples
from capsal.explainers import build_explainers
from capsal.explorer import read_explorer, write_samples
from capsal.models.protocol import visual_grid
from capsal.models.s2vt import S2VT


def test_a_caption_without_words_is_left_out_and_the_reference_kept(tmp_path, monkeypatch):
    datamodule = ShapesImageDataModule(num_train=8, num_val=2, num_test=2, batch_size=2)
    datamodule.setup("fit")
    model = S2VT(datamodule.vocab, **TINY).eval()
    vocab = model.vocab
    samples = [datamodule.get_split("val")[k] for k in range(2)]
    monkeypatch.setattr(model, "generate", lambda items: torch.tensor([[vocab.bos_id, vocab.eos_id]] * len(items)))
    batch = collate_samples(samples, vocab)
    with torch.no_grad():
        grid = visual_grid(model, batch)
        items = model.items(grid)
    figures = explain_gallery(model, build_explainers(["caption_guided"], {}), samples, items, grid, max_words=30)
    assert [f.kind for f in figures] == ["prediction", "reference"] * 2
    assert all(f.sentence == "(empty caption)" and f.explorer is None for f in figures if f.kind == "prediction")
    kept = [f.explorer for f in figures if f.kind == "reference"]
    assert [list(e.labels) for e in kept] == [sample.captions[0].text.split() for sample in samples]
    page = read_explorer(write_samples(tmp_path / "explorer.html", kept))
    assert [s["id"] for s in page["samples"]] == [f"{sample.sample_id} (reference)" for sample in samples]
