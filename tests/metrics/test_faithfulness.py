"""Deletion and insertion (capsal.metrics.faithfulness) against their definition, one step and one forward at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from tiny import TINY, WORDS, compose_train, save_tiny_hf
from torch import nn

from capsal.explainers.base import resolve_tokens
from capsal.metrics.faithfulness import Curves, Faithfulness, area, faithfulness_curves, spatial_faithfulness_curves
from capsal.models import S2VT, SoftAttention, TransformerCaptioner
from capsal.text import Vocabulary

MODELS = {
    "video: s2vt over frames": lambda: S2VT(WORDS, **TINY),
    "image: soft attention over cells": lambda: SoftAttention(WORDS, **TINY),
    "image: transformer over cells": lambda: TransformerCaptioner(WORDS, **TINY),
}


@torch.no_grad()
def one_at_a_time(model, items, tokens, span, order, steps):
    """The definition: for each step, the kept items alone (their original positions, no padding; nothing kept is a
    row whose one item is masked), one forward, the span's probability per word (geometric mean) in NumPy."""
    row, start, end = span
    m = items.shape[1]
    owners = model.vocab.words_of(tokens[row].tolist())[1][1:]  # the word of each target column
    columns = [t for t, owner in enumerate(owners) if start <= owner < end]
    curves = {}
    for name, insertion in (("deletion", False), ("insertion", True)):
        values, fractions = [], []
        for k in range(steps + 1):
            moved = int(np.floor(k * m / steps + 0.5))
            chosen = set(order[:moved].tolist())
            kept = [i for i in range(m) if (i in chosen) == insertion]
            if kept:
                state = model.encode(items[row : row + 1, kept], None, torch.tensor([kept]))
            else:
                state = model.encode(torch.zeros_like(items[row : row + 1, :1]), torch.tensor([[False]]), None)
            logprobs = model.token_logprobs(state, tokens[row : row + 1, :-1])[0].numpy()
            targets = tokens[row, 1:].numpy()
            values.append(np.exp(sum(logprobs[t, targets[t]] for t in columns) / (end - start)))  # per word
            fractions.append(moved / m)
        curves[name] = (np.array(values), np.trapezoid(values, fractions))
    return curves


def hf_model(keep: str, folder) -> tuple[nn.Module, torch.Tensor]:
    """A tiny ViT-GPT2 through ``model=hf_captioner`` (``keep`` mode) in float64, and the items of two images."""
    cfg = compose_train("model=hf_captioner", f"model.name_or_path={folder}", f"model.keep={keep}")
    model = instantiate(cfg.model).double().eval()
    pixels = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        return model, model.items(model.features(pixels))


@pytest.mark.parametrize(
    "name", [*MODELS, "hugging face vit-gpt2, keep=input", "hugging face vit-gpt2, keep=encoder_output"]
)
def test_curves_and_areas_equal_the_definition_in_float64(name, tmp_path):
    torch.manual_seed(0)
    if name in MODELS:
        model = MODELS[name]().double().eval()
        items = torch.randn(2, 7, model.feature_size, dtype=torch.float64)
    else:
        model, items = hf_model(name.rpartition("=")[2], save_tiny_hf(tmp_path / "hf", "vit_gpt2"))
    tokens = resolve_tokens(model, items, None, ["a red circle", "a blue square"])
    spans = [(0, 1, 2), (0, 0, 3), (1, 2, 3)]  # one word, a whole caption, a word of the second row
    maps = torch.rand(len(spans), items.shape[1], dtype=torch.float64)  # no ties: one order
    curves = faithfulness_curves(model, items, tokens, spans, maps, ["s0", "s1"], steps=5)
    for p, span in enumerate(spans):
        order = np.argsort(-maps[p].numpy(), kind="stable")
        expected = one_at_a_time(model, items, tokens, span, order, steps=5)
        for name in ("deletion", "insertion"):
            ours = getattr(curves, name)[p].numpy()
            np.testing.assert_allclose(ours, expected[name][0], rtol=0, atol=1e-9, equal_nan=False)
        assert abs(float(curves.deletion_auc[p]) - expected["deletion"][1]) < 1e-9
        assert abs(float(curves.insertion_auc[p]) - expected["insertion"][1]) < 1e-9


def test_the_area_of_a_hand_made_curve_is_its_trapezoid_sum():
    # (1 + 0.5) / 2 * 0.25 + (0.5 + 0.5) / 2 * 0.25 + (0.5 + 0) / 2 * 0.5 = 0.1875 + 0.125 + 0.125
    curve = torch.tensor([[1.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    fractions = torch.tensor([[0.0, 0.25, 0.5, 1.0]], dtype=torch.float64)
    assert float(area(curve, fractions)[0]) == pytest.approx(0.4375, abs=1e-15)


class OneItemWord(nn.Module):
    """A captioner whose word "red" is likely exactly when item ``KEY`` is among its inputs (at its position)."""

    KEY = 5

    def __init__(self):
        super().__init__()
        self.vocab = Vocabulary(WORDS)

    def features(self, pixels):
        raise NotImplementedError

    def items(self, grid):
        raise NotImplementedError

    def encode(self, items, mask=None, positions=None):
        mask = torch.ones(items.shape[:2], dtype=torch.bool) if mask is None else mask
        positions = torch.arange(items.shape[1]).expand(items.shape[:2]) if positions is None else positions
        return ((positions == self.KEY) & mask).any(1).double()

    def token_logprobs(self, state, tokens):
        logits = torch.zeros(*tokens.shape, len(self.vocab), dtype=torch.float64)
        logits[..., self.vocab.stoi["red"]] = 6.0 * state[:, None] - 3.0
        return logits.log_softmax(-1)

    def generate(self, items, mask=None, beam_size=1, max_len=None):
        raise NotImplementedError


def test_the_map_that_ranks_the_words_item_first_beats_random_and_uniform_maps():
    """Fails if the order is ignored: the key item is late in raster order. Over 20 samples, since a random order
    puts the key item first one time in eight."""
    model, rows = OneItemWord(), 20
    items = torch.zeros(rows, 8, 3, dtype=torch.float64)
    tokens = model.vocab.pad_batch([model.vocab.encode("a red circle")] * rows)
    oracle = torch.zeros(rows, 8, dtype=torch.float64)
    oracle[:, OneItemWord.KEY] = 1.0
    maps = {
        "oracle": oracle,
        "uniform": torch.ones(rows, 8),
        "random": torch.rand(rows, 8, generator=torch.Generator().manual_seed(0)),
    }
    ids, spans = [f"sample{i}" for i in range(rows)], [(row, 1, 2) for row in range(rows)]
    scores = {}
    for name, values in maps.items():
        curves = faithfulness_curves(model, items, tokens, spans, values, ids, steps=8)
        scores[name] = (float(curves.deletion_auc.mean()), float(curves.insertion_auc.mean()))
    for other in ("uniform", "random"):
        assert scores["oracle"][0] < scores[other][0], scores
        assert scores["oracle"][1] > scores[other][1], scores


def test_a_flat_map_is_ordered_by_a_permutation_seeded_per_sample():
    """Ties are not broken by the raster order, and the same sample gets the same order in any batch."""
    model = OneItemWord()
    items = torch.zeros(3, 8, 3, dtype=torch.float64)
    tokens = model.vocab.pad_batch([model.vocab.encode("a red circle")] * 3)
    flat = torch.ones(3, 8)
    spans = [(row, 1, 2) for row in range(3)]
    together = faithfulness_curves(model, items, tokens, spans, flat, ["x", "y", "z"], steps=8)
    alone = faithfulness_curves(model, items[2:], tokens[2:], [(0, 1, 2)], flat[2:], ["z"], steps=8)
    assert torch.equal(together.deletion[2], alone.deletion[0])
    # raster order would put the key item (index 5) sixth for every sample: the seeded orders differ by sample
    assert len({tuple(c.tolist()) for c in together.deletion}) > 1


def test_the_metric_averages_areas_per_category_and_keeps_the_mean_curves():
    metric = Faithfulness(["people", "animals"], steps=2)
    fractions = torch.tensor([[0.0, 0.5, 1.0]] * 2, dtype=torch.float64)
    curves = Curves(
        deletion=torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64),
        insertion=torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
        fractions=fractions,
    )
    metric.update(curves, ["people", "animals"])
    result = metric.compute()
    assert float(result["deletion/people"]) == pytest.approx(0.25)
    assert float(result["deletion/animals"]) == pytest.approx(0.75)
    assert float(result["deletion/avg"]) == pytest.approx(0.5)
    assert float(result["insertion/avg"]) == pytest.approx(0.5)
    assert metric.mean_curves()["deletion"] == pytest.approx([1.0, 0.5, 0.0])


@torch.no_grad()
def test_spatial_curves_inside_the_most_salient_frame_equal_the_definition_in_float64():
    """Video, inside a frame: removed cells are zeroed in that frame's grid before ``items`` pools it; deletion keeps
    the other frames (and drops the frame once it has no cell), insertion gives the frame alone with its cells."""
    torch.manual_seed(0)
    model = S2VT(WORDS, **TINY).double().eval()
    grid = torch.randn(2, 5, 2, 3, model.feature_size, dtype=torch.float64)  # 5 frames of 2 x 3 cells
    tokens = resolve_tokens(model, model.items(grid), None, ["a red circle", "a blue square"])
    spans, frames = [(0, 1, 3), (1, 2, 3)], torch.tensor([3, 0])
    regions = torch.rand(2, 6, dtype=torch.float64)
    curves = spatial_faithfulness_curves(model, grid, tokens, spans, frames, regions, ["s0", "s1"], steps=3)
    for p, (row, start, end) in enumerate(spans):
        order = np.argsort(-regions[p].numpy(), kind="stable")
        for name, insertion in (("deletion", False), ("insertion", True)):
            expected, fractions = [], []
            for k in range(4):
                moved = int(np.floor(k * 6 / 3 + 0.5))
                chosen = set(order[:moved].tolist())
                cells = torch.tensor([(i in chosen) == insertion for i in range(6)], dtype=torch.float64)
                framed = grid[row : row + 1].clone()
                framed[0, frames[p]] *= cells.reshape(2, 3, 1)
                items = model.items(framed)
                kept = [int(frames[p])] if insertion else [t for t in range(5) if t != frames[p]]
                if cells.any() and not insertion:
                    kept = list(range(5))
                if not cells.any() and insertion:
                    kept = []
                if kept:
                    state = model.encode(items[:, kept], None, torch.tensor([kept]))
                else:
                    state = model.encode(torch.zeros_like(items[:, :1]), torch.tensor([[False]]), None)
                logprobs = model.token_logprobs(state, tokens[row : row + 1, :-1])[0]
                owners = model.vocab.words_of(tokens[row].tolist())[1][1:]
                total = sum(float(logprobs[t, tokens[row, t + 1]]) for t, o in enumerate(owners) if start <= o < end)
                expected.append(np.exp(total / (end - start)))
                fractions.append(moved / 6)
            ours = getattr(curves, name)[p].numpy()
            np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9, equal_nan=False)
            assert abs(float(getattr(curves, f"{name}_auc")[p]) - np.trapezoid(expected, fractions)) < 1e-9
