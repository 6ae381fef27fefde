"""The config check, generated from the signatures: every key of every shipped config has a typed parameter behind
it, every constrained parameter refuses a violating value with one line naming the key, the bad values the former
rule table tried (``tests/data/bad_config_values.json``) are still refused, and real command lines exit 2."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import typing
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from capsal.cli.settings import EvalSettings, ExplainSettings, ExtractSettings, TrainSettings
from capsal.config_schema import HYDRA_KEYS, _adapter, check_config, parameters, show
from capsal.errors import MissingJavaError, UserError
from capsal.explainers import get_explainer

ROOT = Path(__file__).parents[1]
CONF = ROOT / "capsal" / "conf"
SETTINGS = {"train": TrainSettings, "eval": EvalSettings, "explain": ExplainSettings, "extract": ExtractSettings}
# the mandatory ??? values, so every app composes
BASE = {"train": [], "eval": ["ckpt_path=x.ckpt"], "explain": ["ckpt_path=x.ckpt"], "extract": ["features_dir=f"]}
APP_GROUPS = {
    "train": ["model", "model/backbone", "datamodule", "trainer", "logger", "callbacks", "experiment"],
    "eval": ["datamodule", "trainer"],
    "explain": ["datamodule"],
    "extract": ["datamodule", "backbone"],
}
# values a constrained parameter may refuse; the generated test tries the first ones each annotation refuses
PROBES: list[Any] = [
    "not-a-valid-value",
    2.5,
    True,
    0,
    -1,
    0.0,
    -1.0,
    2**32,
    1.5,
    [],
    ["not-a-valid-value"],
    [0],
    {"a": 1},
]
NO_GPU = "No supported gpu backend found"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@cache
def composed() -> dict[tuple[str, tuple[str, ...]], DictConfig]:
    """Every app with its defaults, and with each option of each of its groups in turn."""
    configs = {}
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        for app, groups in APP_GROUPS.items():
            for variant in [()] + [(f"{g}={o}",) for g in groups for o in group_options(g)]:
                configs[(app, variant)] = compose(config_name=app, overrides=[*BASE[app], *variant])
    return configs


def positions(cfg: DictConfig, app: str) -> list[tuple[str, Any, dict]]:
    """``(key prefix, target, {key: parameter})`` of every configured thing: the settings, each node with a
    ``_target_`` (nested ones too) and each explainer's options."""
    found = [("", SETTINGS[app], {f.name: f for f in dataclasses.fields(SETTINGS[app])})]

    def walk(node: DictConfig, prefix: str) -> None:
        for name in node:
            child = node._get_node(name)
            if isinstance(child, DictConfig) and not child._is_none():
                if "_target_" in child:
                    target = get_object(str(child._target_))
                    found.append((f"{prefix}{name}.", target, parameters(target)[0]))
                elif str(name) == "explainer_options":
                    for explainer in child:
                        target = get_explainer(str(explainer))
                        found.append((f"{prefix}{name}.{explainer}.", target, parameters(target)[0]))
                    continue
                walk(child, f"{prefix}{name}.")

    walk(cfg, "")
    return found


def _annotation(target: Any, name: str, parameter: Any) -> Any:
    if dataclasses.is_dataclass(target):
        return typing.get_type_hints(target, include_extras=True)[name]
    return parameter.annotation


def _refused(annotation: Any) -> list[Any]:
    refused = []
    for value in PROBES:
        try:
            _adapter(annotation).validate_python(value)
        except ValidationError:
            refused.append(value)
    return refused


@pytest.fixture(autouse=True)
def _java_present(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")


def test_every_group_option_is_composed():
    groups = {g for gs in APP_GROUPS.values() for g in gs} | {"explainer_options"}
    on_disk = {str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert on_disk == groups


def test_every_key_of_every_config_has_a_typed_parameter_behind_it():
    untyped = set()
    for (app, _), cfg in composed().items():
        for prefix, target, known in positions(cfg, app):
            node = OmegaConf.select(cfg, prefix.rstrip(".")) if prefix else cfg
            for name in node:
                if str(name) in HYDRA_KEYS or str(name) == "hydra" or isinstance(node._get_node(name), DictConfig):
                    continue
                parameter = known.get(str(name))
                if parameter is None or _annotation(target, str(name), parameter) in (Any, inspect.Parameter.empty):
                    untyped.add(f"{app}: {prefix}{name} ({getattr(target, '__qualname__', target)})")
    assert not untyped, sorted(untyped)


@pytest.mark.parametrize("app", sorted(APP_GROUPS))
def test_the_shipped_configs_pass(app):
    for (name, variant), cfg in composed().items():
        if name != app:
            continue
        try:
            check_config(cfg, SETTINGS[app])
        except UserError as error:  # trainer=gpu on a machine without one: Lightning's own line
            assert variant == ("trainer=gpu",) and NO_GPU in str(error), (variant, str(error))


def _one_line_naming(cfg: DictConfig, app: str, key: str, value: Any) -> str | None:
    """None when the value is refused with one line starting ``key=``, else what happened."""
    bad = copy.deepcopy(cfg)
    OmegaConf.update(bad, key, value, merge=False)
    try:
        check_config(bad, SETTINGS[app])
    except UserError as error:
        message = str(error)
        return None if "\n" not in message and message.startswith(f"{key}=") else f"{key}={show(value)}: {message!r}"
    return f"{key}={show(value)} passed"


def test_every_constrained_parameter_refuses_a_violating_value_in_one_line():
    failures, tried = [], 0
    for (app, variant), cfg in composed().items():
        if variant not in ((), ("model=transformer",), ("model=soft_attention",), ("datamodule=shapes_video",)):
            continue  # the other variants hold the same classes (every class is covered by the next test)
        for prefix, target, known in positions(cfg, app):
            node = OmegaConf.select(cfg, prefix.rstrip(".")) if prefix else cfg
            for name, parameter in known.items():
                if name not in node or isinstance(node._get_node(name), DictConfig):
                    continue
                for value in _refused(_annotation(target, name, parameter))[:3]:
                    tried += 1
                    failure = _one_line_naming(cfg, app, f"{prefix}{name}", value)
                    if failure:
                        failures.append(f"{app} {variant}: {failure}")
    assert tried > 300 and not failures, "\n".join(failures)


def test_every_configured_class_has_its_parameters_checked():
    classes = {target for (app, _), cfg in composed().items() for _, target, _ in positions(cfg, app)}
    names = {getattr(c, "__qualname__", str(c)) for c in classes}
    for expected in ("S2VT", "SoftAttention", "TransformerCaptioner", "HFCaptioner", "SmallCNN",
                     "TorchvisionBackbone", "CheckpointBackbone", "ShapesImageDataModule", "MSVDDataModule",
                     "SaliencyCallback", "Trainer", "CaptionGuided"):  # fmt: skip
        assert any(name.endswith(expected) for name in names), (expected, sorted(names))


def test_the_bad_values_the_rule_table_tried_are_still_refused():
    cases = json.loads((ROOT / "tests" / "data" / "bad_config_values.json").read_text())
    assert len(cases) > 1500
    failures = []
    for case in cases:
        cfg = composed()[(case["app"], tuple(case["overrides"]))]
        if OmegaConf.select(cfg, case["key"], default="<absent>") == "<absent>":
            continue  # a removed key (center_crop, backbone.crop): the command line test below
        failure = _one_line_naming(cfg, case["app"], case["key"], case["value"])
        if failure:
            failures.append(f"{case['app']} {case['overrides']}: {failure}")
    assert not failures, "\n".join(failures)


def test_the_example_values_say_what_is_allowed():
    cfg = composed()[("train", ())]
    for key, value, expected in [
        ("model.encoder", "gru", "model.encoder='gru' is not allowed: input should be 'lstm' or 'mean'"),
        ("model.hidden_size", -3, "model.hidden_size=-3 is not allowed: input should be greater than or equal to 1"),
        ("model.caption_metrics", ["bleu", "nonsense"], "'nonsense' is not one of: bleu, meteor"),
        ("callbacks.saliency.explainers", ["caption_guided", "nope"], "'nope' is not one of: caption_guided"),
        ("datamodule.max_objects", 0, "datamodule.max_objects=0 is not allowed: input should be greater than or"),
        ("model.optimizer.lr", 0, "model.optimizer.lr=0 is not allowed: input should be greater than 0"),
        ("trainer.max_steps", -5, "trainer.max_steps=-5 is not allowed: `max_steps` must be a non-negative"),
    ]:
        bad = copy.deepcopy(cfg)
        OmegaConf.update(bad, key, value, merge=False)
        with pytest.raises(UserError) as raised:
            check_config(bad, TrainSettings)
        assert expected in str(raised.value)


def test_options_wrong_together_are_caught_before_the_model_is_built():
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        heads = compose(config_name="train", overrides=["model=transformer", "model.num_heads=3"])
        words = compose(config_name="train", overrides=["model=transformer", "model.max_words=5"])
        counts = compose(config_name="train", overrides=["datamodule.min_objects=3", "datamodule.max_objects=2"])
    for cfg, key in ((heads, "model.num_heads"), (words, "model.max_words"), (counts, "datamodule.max_objects")):
        with pytest.raises(UserError, match=key):
            check_config(cfg, TrainSettings)


def test_captioning_metrics_without_java_stop_before_training(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    train = composed()[("train", ())]
    with pytest.raises(MissingJavaError, match=r"model\.caption_metrics=\[.*meteor.*needs Java"):
        check_config(train, TrainSettings)
    with pytest.raises(MissingJavaError, match=r"^caption_metrics="):
        check_config(composed()[("eval", ())], EvalSettings)
    quiet = copy.deepcopy(train)
    OmegaConf.update(quiet, "model.caption_metrics", [], merge=False)
    check_config(quiet, TrainSettings)  # no metrics, no Java needed


# ---- real command lines -------------------------------------------------------------------------------------------
COMMANDS = [
    ("train", ["model.encoder=gru"], "model.encoder='gru' is not allowed: input should be 'lstm' or 'mean'"),
    ("train", ["model.hidden_size=-3"], "model.hidden_size=-3 is not allowed"),
    ("train", ["model.caption_metrics=[bleu,nonsense]"], "'nonsense' is not one of"),
    ("train", ["callbacks.saliency.tolerance=-1"], "callbacks.saliency.tolerance=-1"),
    ("train", ["model.hiden_size=3"], "model.hiden_size is not an option; did you mean model.hidden_size?"),
    ("train", ["model=tranformer"], "Could not find 'model/tranformer'; available: hf_captioner, s2vt"),
    ("evaluate", ["ckpt_path=missing.ckpt", "tolerance=-1"], "tolerance=-1 is not allowed"),
    ("evaluate", ["ckpt_path=missing.ckpt", "center_crop=true"], "center_crop= was removed: the datamodule frames"),
    ("extract", ["features_dir=f", "backbone.crop=center"], "backbone.crop= was removed: the datamodule frames"),
    ("train", ["+no_java=1"], "needs Java"),
]


def test_command_lines_with_a_bad_value_exit_2_with_one_line_and_train_nothing(tmp_path):
    runs = []
    for index, (module, overrides, _) in enumerate(COMMANDS):
        run_dir = tmp_path / f"run{index}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
        args = [a for a in overrides if a != "+no_java=1"]
        if "+no_java=1" in overrides:
            env["PATH"] = str(tmp_path / "empty-path")  # java (and everything else) out of reach
        command = [sys.executable, "-m", f"capsal.cli.{module}", *args, f"hydra.run.dir={run_dir}"]
        runs.append((subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True), run_dir))  # fmt: skip
    for (module, overrides, expected), (process, run_dir) in zip(COMMANDS, runs, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        program = {"train": "capsal-train", "evaluate": "capsal-eval", "extract": "capsal-extract"}[module]
        lines = stderr.strip().splitlines()
        assert process.returncode == 2, (overrides, stderr)
        assert len(lines) == 1 and lines[0].startswith(f"{program}: error: ") and expected in lines[0], stderr
        assert "Traceback" not in stdout + stderr
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "wandb").exists()
