"""The config validation pass, generated from the configs: every leaf of every composed config has a rule in
``capsal.config_checks.RULES`` (or is exempt, with a reason), and every wrong-typed or out-of-range value of each
leaf is answered with one ``UserError`` line naming the key, before any data is read."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from capsal.config_checks import RULES, Exempt, check_config, leaves, show
from capsal.errors import MissingJavaError, UserError

CONF = Path(__file__).parents[1] / "capsal" / "conf"
ROOT = Path(__file__).parents[1]
# the mandatory ??? values, so every app composes
BASE = {"train": [], "eval": ["ckpt_path=x.ckpt"], "explain": ["ckpt_path=x.ckpt"], "extract": ["features_dir=f"]}
# the config groups each app composes (explainer_options/*: every file through builtin, checked below)
APP_GROUPS = {
    "train": ["model", "model/backbone", "datamodule", "trainer", "logger", "callbacks", "experiment"],
    "eval": ["datamodule", "trainer"],
    "explain": ["datamodule"],
    "extract": ["datamodule", "backbone"],
}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@cache
def composed() -> dict[tuple[str, tuple[str, ...]], DictConfig]:
    """Every app with its defaults, and with each option of each of its groups in turn."""
    configs = {}
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        for app, groups in APP_GROUPS.items():
            variants = [()] + [(f"{g}={o}",) for g in groups for o in group_options(g)]
            for variant in variants:
                configs[(app, variant)] = compose(config_name=app, overrides=[*BASE[app], *variant])
    return configs


@cache
def distinct_leaves() -> list[tuple[str, DictConfig, str, str | None]]:
    """(app, config, key, target) once per (app, key, target): the leaves the generated test tries."""
    seen, found = set(), []
    for (app, _), cfg in composed().items():
        for leaf in leaves(cfg):
            if (app, leaf.key, leaf.target) not in seen:
                seen.add((app, leaf.key, leaf.target))
                found.append((app, cfg, leaf.key, leaf.target))
    return found


@pytest.fixture(autouse=True)
def _java_present(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")


def test_every_group_option_is_composed():
    groups = {g for gs in APP_GROUPS.values() for g in gs} | {"explainer_options"}
    on_disk = {str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert on_disk == groups


def test_every_explainer_options_file_reaches_the_configs():
    cfg = composed()[("eval", ())]
    for path in (CONF / "explainer_options").glob("*.yaml"):
        if path.stem == "builtin":
            continue
        for key in OmegaConf.load(path):
            assert f"explainer_options.{path.stem}.{key}" in {leaf.key for leaf in leaves(cfg)}


def test_every_leaf_has_a_rule_and_every_exemption_a_reason():
    missing = sorted({f"{app}: {key}" for app, _, key, _ in distinct_leaves() if _rule(key, _target(app, key)) is None})
    assert not missing, f"config leaves without a rule in capsal.config_checks.RULES: {missing}"
    for row in RULES:
        if isinstance(row.rule, Exempt):
            assert row.rule.reason, row.pattern


def _rule(key, target):
    from capsal.config_checks import rule_for

    return rule_for(key, target)


def _target(app, key):
    for (a, _), cfg in composed().items():
        if a == app:
            for leaf in leaves(cfg):
                if leaf.key == key:
                    return leaf.target
    return None


@pytest.mark.parametrize("app", sorted(APP_GROUPS))
def test_the_shipped_configs_pass(app):
    for (name, _), cfg in composed().items():
        if name == app:
            check_config(cfg)  # every default and every group option is allowed


def bad_cases() -> list[tuple[str, DictConfig, str, object]]:
    cases = []
    for app, cfg, key, target in distinct_leaves():
        rule = _rule(key, target)
        for value in rule.bad_values() if rule is not None else []:
            cases.append((app, cfg, key, value))
    return cases


def test_every_bad_value_of_every_leaf_is_one_line_naming_the_key():
    cases = bad_cases()
    assert len(cases) > 300
    failures = []
    copies: dict[tuple[int, str], DictConfig] = {}
    for app, cfg, key, value in cases:
        bad = copies.setdefault((id(cfg), key), copy.deepcopy(cfg))
        OmegaConf.update(bad, key, value, merge=False)
        try:
            check_config(bad)
        except UserError as error:
            message = str(error)
            if "\n" in message or not message.startswith(f"{key}="):
                failures.append(f"{app}: {key}={show(value)}: {message!r}")
            continue
        failures.append(f"{app}: {key}={show(value)} passed")
    assert not failures, "\n".join(failures)


def test_the_example_values_say_what_is_allowed():
    cfg = composed()[("train", ())]
    for key, value, expected in [
        ("model.encoder", "gru", "model.encoder='gru' is not allowed; use one of: lstm, mean"),
        ("model.hidden_size", -3, "model.hidden_size=-3 is not allowed; use an integer >= 1"),
        ("model.caption_metrics", ["bleu", "nonsense"], "names 'nonsense', which is not allowed; use a list of: bleu"),
        ("callbacks.saliency.explainers", ["caption_guided", "nope"], "names 'nope'"),
        ("datamodule.max_objects", 0, "datamodule.max_objects=0 is not allowed; use an integer >= 1"),
    ]:
        bad = copy.deepcopy(cfg)
        OmegaConf.update(bad, key, value, merge=False)
        with pytest.raises(UserError) as raised:
            check_config(bad)
        assert expected in str(raised.value)


def test_options_wrong_together_are_caught_before_the_model_is_built():
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        heads = compose(config_name="train", overrides=["model=transformer", "model.num_heads=3"])
        words = compose(config_name="train", overrides=["model=transformer", "model.max_words=5"])
        counts = compose(config_name="train", overrides=["datamodule.min_objects=3", "datamodule.max_objects=2"])
    for cfg, key in ((heads, "model.num_heads"), (words, "model.max_words"), (counts, "datamodule.max_objects")):
        with pytest.raises(UserError, match=key):
            check_config(cfg)


def test_captioning_metrics_without_java_stop_before_training(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    train = composed()[("train", ())]
    with pytest.raises(MissingJavaError, match=r"model\.caption_metrics=\[.*meteor.*needs Java"):
        check_config(train)
    with pytest.raises(MissingJavaError, match=r"^caption_metrics="):
        check_config(composed()[("eval", ())])
    quiet = copy.deepcopy(train)
    OmegaConf.update(quiet, "model.caption_metrics", [], merge=False)
    check_config(quiet)  # no metrics, no Java needed


# ---- real command lines -------------------------------------------------------------------------------------------
COMMANDS = [
    ("capsal.cli.train", ["model.encoder=gru"], "model.encoder='gru' is not allowed; use one of: lstm, mean"),
    ("capsal.cli.train", ["model.hidden_size=-3"], "model.hidden_size=-3 is not allowed"),
    ("capsal.cli.train", ["model.caption_metrics=[bleu,nonsense]"], "names 'nonsense'"),
    ("capsal.cli.train", ["callbacks.saliency.tolerance=-1"], "callbacks.saliency.tolerance=-1"),
    ("capsal.cli.evaluate", ["ckpt_path=missing.ckpt", "tolerance=-1"], "tolerance=-1 is not allowed"),
    ("capsal.cli.train", ["+no_java=1"], "needs Java"),
]


def test_command_lines_with_a_bad_value_exit_2_with_one_line_and_train_nothing(tmp_path):
    runs = []
    for index, (module, overrides, _) in enumerate(COMMANDS):
        run_dir = tmp_path / f"run{index}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
        args = [a for a in overrides if a != "+no_java=1"]
        if "+no_java=1" in overrides:
            env["PATH"] = str(tmp_path / "empty-path")  # java (and everything else) out of reach
        command = [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"]
        runs.append(
            (
                subprocess.Popen(
                    command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
                run_dir,
            )
        )
    for (module, overrides, expected), (process, run_dir) in zip(COMMANDS, runs, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        program = "capsal-train" if module.endswith("train") else "capsal-eval"
        lines = stderr.strip().splitlines()
        assert process.returncode == 2, (overrides, stderr)
        assert len(lines) == 1 and lines[0].startswith(f"{program}: error: ") and expected in lines[0], stderr
        assert "Traceback" not in stdout + stderr
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "wandb").exists()
