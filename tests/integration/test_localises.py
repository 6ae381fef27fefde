"""Saliency really localises: a small captioner trained briefly points at the objects it names."""

from __future__ import annotations

import pytest
import torch

from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainer


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["localising_image_model", "localising_soft_attention_model"])
def test_caption_guided_maxima_fall_on_the_named_object_far_more_often_than_random_points(trained, request):
    """S2VT (the paper's model) and soft attention (the model ``make demo`` trains); the soft-attention model's
    weights are not read: each grid cell is given to the model alone (Eq. 7)."""
    model, datamodule = request.getfixturevalue(trained)
    explainers = {name: build_explainer(name) for name in ("caption_guided", "random")}
    evaluator = LocalisationEvaluator(explainers, datamodule.categories)
    samples = [datamodule.sample("test", i) for i in range(48)]
    with torch.no_grad():
        for batch in batches_of(caption_pairs(samples), model.vocab, 16):
            evaluator.update(model, batch)
    results = evaluator.compute()
    guided = results["caption_guided"]["pointing_game"]["avg"]
    chance = results["random"]["pointing_game"]["avg"]
    name = type(model).__name__
    print(f"{name}, pointing game on 48 held-out images: caption_guided {guided:.3f}, random points {chance:.3f}")
    assert guided >= chance + 0.3
