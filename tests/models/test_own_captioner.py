"""A user's own captioner (the README's plain ``nn.Module``) goes through everything capsal measures with: the
evaluator behind ``capsal-eval`` (on cached grids) and the saliency callback (wrapped in a thin LightningModule)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from einops import rearrange
from tiny import readme_captioner_class

from capsal.callbacks import SaliencyCallback
from capsal.datamodules import ShapesImageDataModule
from capsal.datamodules.features import FeatureSample
from capsal.evaluation import LocalisationEvaluator, batches_of, caption_pairs
from capsal.explainers import build_explainers
from capsal.types import Caption, Phrase


def test_the_readme_captioner_goes_through_the_evaluator_on_cached_grids():
    torch.manual_seed(0)
    model = readme_captioner_class()(["a", "red", "circle", "square"]).eval()
    # cached 3x3 grids of 16-d descriptors, as capsal-extract writes them, for 32x32 images that are not at hand
    grids = torch.randn(4, 1, 3, 3, 16)
    placeholder = torch.zeros((), dtype=torch.uint8).expand(1, 3, 32, 32)
    phrase = Phrase(1, 3, "circle", boxes=[(0.0, 0.0, 10.0, 10.0)])
    samples = [
        FeatureSample(placeholder, [Caption("a red circle", [phrase])], f"s{i}", grid=g) for i, g in enumerate(grids)
    ]
    explainers = build_explainers(["caption_guided", "uniform"])
    evaluator = LocalisationEvaluator(explainers, ["circle"], faithfulness_steps=4)
    for batch in batches_of(caption_pairs(samples), model.vocab, 2):
        saliencies = evaluator.update(model, batch)
    results = evaluator.compute()
    assert saliencies["caption_guided"].scores.shape == (2, 4, 9)  # 3 words + eos over 9 cells
    for name in explainers:
        assert results[name]["pointing_game"]["skipped"] == 0
        assert results[name]["pointing_game"]["circle"] == results[name]["pointing_game"]["avg"]
    # the map's maximum of the uniform baseline is the image centre (16, 16): outside the box, a miss everywhere
    assert results["uniform"]["pointing_game"]["avg"] == 0.0
    # deletion and insertion run on it too: nothing removed is everything inserted
    curves = evaluator.curves()["caption_guided"]
    assert curves["deletion"][0] == pytest.approx(curves["insertion"][-1])
    assert results["caption_guided"]["deletion"]["skipped"] == 0


class Wrapped(L.LightningModule):
    """A thin LightningModule around the README's captioner: pixels -> a 3x3 grid by pooling and a projection."""

    def __init__(self, words: list[str]):
        super().__init__()
        self.captioner = readme_captioner_class()(words)
        self.vocab = self.captioner.vocab
        self.project = torch.nn.Linear(3, 16)

    def features(self, pixels):
        pooled = torch.nn.functional.adaptive_avg_pool2d(rearrange(pixels, "b t c h w -> (b t) c h w"), 3)
        return self.project(rearrange(pooled, "(b t) c h w -> b t h w c", b=pixels.shape[0]))

    def items(self, grid):
        return self.captioner.items(grid)

    def encode(self, items, mask=None, positions=None):
        return self.captioner.encode(items, mask, positions)

    def token_logprobs(self, state, tokens):
        return self.captioner.token_logprobs(state, tokens)

    def generate(self, items, mask=None, beam_size=1, max_len=8):
        return self.captioner.generate(items, mask, beam_size, max_len)

    def training_step(self, batch, batch_idx):
        logprobs = self.token_logprobs(self.encode(self.items(self.features(batch.pixels))), batch.tokens[:, :-1])
        return torch.nn.functional.nll_loss(
            rearrange(logprobs, "b n v -> (b n) v"), batch.tokens[:, 1:].flatten(), ignore_index=self.vocab.pad_id
        )

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_the_readme_captioner_goes_through_the_saliency_callback(tmp_path):
    datamodule = ShapesImageDataModule(num_train=32, num_val=8, num_test=8, batch_size=8)
    datamodule.setup("fit")
    model = Wrapped(datamodule.vocab.to_list())
    callback = SaliencyCallback(num_samples=2, gallery_dir=str(tmp_path / "gallery"))
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    assert 0.0 <= float(trainer.callback_metrics["val/pointing_game/caption_guided"]) <= 1.0
    (record,) = json.loads((tmp_path / "gallery" / "gallery.json").read_text())["epochs"]
    assert len(record["figures"]) == 4  # 2 samples x (prediction, reference)
    assert all((tmp_path / "gallery" / figure["png"]).is_file() for figure in record["figures"])
