"""Saliency really localises: a small captioner trained briefly points at the objects it names."""

from __future__ import annotations

import pytest
import torch

from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainer


@pytest.mark.slow
def test_caption_guided_maxima_fall_on_the_named_object_far_more_often_than_random_points(localising_image_model):
    model, datamodule = localising_image_model
    explainers = {name: build_explainer(name) for name in ("caption_guided", "random")}
    evaluator = LocalisationEvaluator(explainers, datamodule.categories)
    samples = [datamodule.sample("test", i) for i in range(48)]
    with torch.no_grad():
        for batch in batches_of(caption_pairs(samples), model.vocab, 16):
            evaluator.update(model, batch)
    results = evaluator.compute()
    guided = results["caption_guided"]["pointing_game"]["avg"]
    chance = results["random"]["pointing_game"]["avg"]
    print(f"pointing game on 48 held-out images: caption_guided {guided:.3f}, random points {chance:.3f}")
    assert guided >= chance + 0.3
