"""capsal-train: every model on every synthetic dataset, explained; learning, checkpoints, resume, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from capsal.checkpoints import load_captioner
from capsal.cli.train import train
from capsal.datamodules import ShapesImageDataModule
from capsal.errors import UserError
from capsal.explainers import available_explainers, build_explainer

MODELS = ["s2vt", "s2vt_meanpool", "soft_attention", "transformer"]
DATASETS = ["shapes_image", "shapes_video"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_trains_on_every_dataset_and_every_explainer_explains_it(tiny_train_cfg, model_name, dataset):
    summary = train(tiny_train_cfg(f"model={model_name}", f"datamodule={dataset}", "trainer.limit_train_batches=2"))
    assert summary["metrics"]["val/loss"] > 0 and summary["last_checkpoint"]
    model = load_captioner(summary["last_checkpoint"])
    frames, height, width = model.input_shape
    pixels = torch.rand(2, frames, 3, height, width)
    grid = model.features(pixels)
    items = model.items(grid)
    query = "a red circle"
    for name in available_explainers():
        explainer = build_explainer(name)
        refusal = explainer.refusal(model)
        if refusal is not None:
            with pytest.raises(UserError, match=re.escape(refusal)):
                explainer.explain(model, items, grid=grid, tokens=query)
            continue
        with torch.set_grad_enabled(explainer.needs_grad):
            saliency = explainer.explain(model, items, grid=grid, tokens=query)
        m = items.shape[1]
        assert saliency.scores.shape == (2, 4, m), name
        e = saliency.e[saliency.word_mask]
        assert torch.isfinite(e).all() and e.min() >= 0 and e.max() <= 1, name
        if dataset == "shapes_video" and name != "soft_attention" and not explainer.needs_attention_trace:
            assert saliency.region_scores is not None and saliency.region_scores.shape[:3] == (2, 4, m), name
        if name == "soft_attention":  # the model's own softmax weights, read out directly
            direct = model.attention(model.encode(items), saliency.tokens[:, :-1])
            torch.testing.assert_close(saliency.scores, direct)
            real = saliency.word_mask
            torch.testing.assert_close(saliency.scores[real].sum(-1), torch.ones(int(real.sum())))


def test_a_short_training_run_lowers_the_validation_loss(tiny_train_cfg):
    import lightning as L
    from hydra.utils import instantiate

    cfg = tiny_train_cfg(
        "datamodule.num_train=256", "trainer.max_epochs=4", "model.optimizer.lr=0.003", "callbacks=none"
    )
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    datamodule.setup("fit")
    L.seed_everything(0)
    untrained = instantiate(cfg.model, vocab=datamodule.vocab.to_list())
    before = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        untrained, datamodule=datamodule, verbose=False
    )[0]["val/loss"]
    after = train(cfg)["metrics"]["val/loss"]
    print(f"val/loss before {before:.3f}, after 4 short epochs {after:.3f}")
    assert after < 0.6 * before


def test_checkpoints_load_alone_and_training_resumes_from_them(image_checkpoint, tiny_train_cfg):
    model = load_captioner(image_checkpoint)
    datamodule = ShapesImageDataModule(num_train=64, num_val=16, num_test=16, batch_size=16)
    assert model.vocab == datamodule.vocab  # the vocabulary travels inside the checkpoint
    assert model.input_shape == (1, 64, 64) and model.datamodule_config["num_train"] == 64
    checkpoint = torch.load(image_checkpoint, weights_only=False)
    resumed = train(tiny_train_cfg(f"ckpt_path={image_checkpoint}", "trainer.max_epochs=2"))
    assert checkpoint["global_step"] == 4 and resumed["global_step"] == 8  # epoch 2 continued from epoch 1


def _sentence_logprob(model, items, tokens) -> torch.Tensor:
    logprobs = model.token_logprobs(model.encode(items), tokens[:, :-1])
    picked = logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
    return (picked * (tokens[:, 1:] != model.vocab.pad_id)).sum(-1)


@torch.no_grad()
def test_beam_search_finds_likelier_captions_than_greedy_on_a_trained_model(image_checkpoint):
    model = load_captioner(image_checkpoint)
    datamodule = ShapesImageDataModule(num_train=64, num_val=16, num_test=16, batch_size=16)
    pixels = torch.stack([datamodule.sample("val", i).pixels for i in range(16)]).float() / 255
    items = model.items(model.features(pixels))
    greedy = _sentence_logprob(model, items, model.generate(items, beam_size=1))
    beam = _sentence_logprob(model, items, model.generate(items, beam_size=4))
    assert (beam >= greedy - 1e-5).float().mean() >= 0.9
    assert beam.mean() >= greedy.mean()


def test_validation_computes_meteor_and_bleu_with_java(tiny_train_cfg):
    summary = train(tiny_train_cfg("model.caption_metrics=[bleu,meteor,cider]", "callbacks=none"))
    assert {"val/bleu4", "val/meteor", "val/cider"} <= set(summary["metrics"])
    assert 0 <= summary["metrics"]["val/meteor"] <= 1


def run_train(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "capsal.cli.train", "logger=csv", f"output_dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_unknown_config_keys_get_hydras_message_in_one_line_not_a_traceback(tmp_path):
    result = run_train(tmp_path, "model.no_such_option=3")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "capsal-train: error: Could not override 'model.no_such_option'. model.no_such_option is not an option"
    )
    near = run_train(tmp_path, "model.hiden_size=3")  # a typo: the nearest valid name
    assert near.returncode == 2 and near.stderr.strip().endswith("did you mean model.hidden_size?"), near.stderr


def test_bad_datamodule_options_get_one_line_and_exit_code_2(tmp_path):
    result = run_train(tmp_path, "datamodule.image_size=8")
    assert result.returncode == 2, result.stderr
    assert "image_size" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_last_checkpoint_holds_the_weights_training_ended_with(tiny_train_cfg):
    # 4 batches per epoch, 6 steps: training stops half-way through the second epoch, after the last validation
    summary = train(tiny_train_cfg("trainer.max_epochs=5", "trainer.max_steps=6"))
    assert summary["global_step"] == 6
    assert torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=False)["global_step"] == 6


@pytest.mark.parametrize(
    ("devices", "accelerator", "processes"),
    [(2, "cpu", 2), ("3", "cpu", 3), ([0, 1], "gpu", 2), ("0,1,", "gpu", 2), ("auto", "cpu", 1), (-1, "cpu", 1)],
)
def test_cpu_threads_auto_counts_the_processes_lightning_starts(devices, accelerator, processes):
    """cpu_threads=auto divides the idle cores by this count (the GPU forms of -1 and auto: tests/test_gpu.py)."""
    from capsal.devices import processes_per_machine

    assert processes_per_machine(devices, accelerator) == processes


def test_cpu_threads_auto_leaves_a_busy_core_alone(tiny_train_cfg):
    from capsal.devices import idle_cpus

    before = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert idle_cpus(sample_s=1.0) <= len(os.sched_getaffinity(0)) - 1
        train(tiny_train_cfg("cpu_threads=1", "trainer.max_steps=1"))
        assert torch.get_num_threads() == 1
        with pytest.raises(UserError, match="cpu_threads="):
            train(tiny_train_cfg("cpu_threads=many"))
    finally:
        busy.kill()
        torch.set_num_threads(before)
