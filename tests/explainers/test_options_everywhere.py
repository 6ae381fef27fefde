"""One way to build an explainer: an option set in ``conf/explainer_options/<name>.yaml`` or on the command line
takes effect in ``capsal-explain``, ``capsal-eval`` and the saliency callback alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tiny import TINY_OVERRIDES, compose_app

from capsal.cli.evaluate import evaluate
from capsal.cli.explain import explain
from capsal.cli.train import train

CONF = Path(__file__).parents[2] / "capsal" / "conf"
KL = "CaptionGuided(mode='kl'"


def run_explain(conf, checkpoint, out, *overrides) -> str:
    summary = explain(compose_app("explain", out, f"ckpt_path={checkpoint}", "sample=val:0", *overrides, conf=conf))
    return summary["explainer_options"]


def run_eval(conf, checkpoint, out, *overrides) -> str:
    args = [f"ckpt_path={checkpoint}", "explainers=[caption_guided]", "max_samples=4", "caption_metrics=[]"]
    evaluate(compose_app("eval", out, *args, *overrides, conf=conf))
    return json.loads((out / "results.json").read_text())["explainers"]["caption_guided"]


def run_callback(conf, _checkpoint, out, *overrides) -> str:
    args = [*TINY_OVERRIDES, "datamodule.num_val=4", "callbacks.saliency.num_samples=1"]
    cfg = compose_app("train", out, *args, *[f"callbacks.saliency.{o}" for o in overrides], conf=conf)
    OmegaConf.resolve(cfg)
    train(cfg)
    (record,) = json.loads((out / "gallery" / "gallery.json").read_text())["epochs"]
    return record["explainers"]["caption_guided"]


COMMANDS = {"capsal-explain": run_explain, "capsal-eval": run_eval, "callback": run_callback}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_line_option_takes_effect(command, image_checkpoint, tmp_path):
    used = COMMANDS[command](CONF, image_checkpoint, tmp_path, "explainer_options.caption_guided.mode=kl")
    assert used.startswith(KL), used


@pytest.mark.parametrize("command", COMMANDS)
def test_an_option_written_in_the_explainer_yaml_takes_effect(command, image_checkpoint, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    yaml = conf / "explainer_options" / "caption_guided.yaml"
    yaml.write_text(yaml.read_text().replace("mode: information_gain", "mode: kl"))
    assert COMMANDS[command](CONF, image_checkpoint, tmp_path / "before").startswith("CaptionGuided(mode='information")
    used = COMMANDS[command](conf, image_checkpoint, tmp_path / "after")
    assert used.startswith(KL), used
