"""Saliency really localises: a small captioner trained briefly points at the objects it names."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from capsal.datamodules import ShapesImageDataModule
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainer
from capsal.models.s2vt import S2VT


@pytest.mark.slow
def test_caption_guided_maxima_fall_on_the_named_object_far_more_often_than_random_points():
    L.seed_everything(0)
    datamodule = ShapesImageDataModule(
        num_train=2000, num_val=48, num_test=48, min_objects=1, max_objects=1, captions_per_image=1, batch_size=32
    )
    datamodule.setup("fit")
    model = S2VT(
        datamodule.vocab,
        hidden_size=128,
        embed_size=32,
        backbone={"_target_": "capsal.models.backbones.SmallCNN", "channels": [16, 32, 64]},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3},
        caption_metrics=[],
    )
    trainer = L.Trainer(
        max_steps=250,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=datamodule)
    model.eval()
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
