"""A plugin end to end: the README's ``Occlusion`` example, as the package ``tests/plugins/my_saliency``, found
through its entry point and built with its own option YAML by ``capsal-eval``, ``capsal-train`` (the saliency
callback) and ``capsal-explain``, each run as a subprocess the way a user runs them after ``pip install`` of it.

Nothing is installed: the package and a hand-written ``my_saliency-0.1.dist-info`` (its ``METADATA`` and the
``entry_points.txt`` pip would write from its ``pyproject.toml``) go to a temporary folder on the subprocesses'
``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from tiny import TINY_OVERRIDES

PACKAGE = Path(__file__).parent / "my_saliency"
ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
WINDOW_2 = "Occlusion(window=2)"


def entry_points() -> dict[str, str]:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["capsal.explainers"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a subprocess that sees the plugin as if it were pip-installed."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(PACKAGE / "my_saliency", site / "my_saliency", ignore=shutil.ignore_patterns("__pycache__"))
    dist = site / "my_saliency-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-saliency\nVersion: 0.1\n")
    lines = [f"{name} = {target}" for name, target in entry_points().items()]
    (dist / "entry_points.txt").write_text("[capsal.explainers]\n" + "\n".join(lines) + "\n")
    python_path = [str(site), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}


def run(module: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def test_the_readme_example_is_this_package():
    """The README's plugin code (the template's hook), entry point and option YAML are the files tested, word for
    word (the package's own class is the same explainer written the older way, overriding ``explain``)."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert (PACKAGE.parent / "occlusion_hook.py").read_text() in blocks
    yaml = (PACKAGE / "my_saliency" / "conf" / "explainer_options" / "occlusion.yaml").read_text()
    assert f"```yaml\n{yaml}```" in README
    assert entry_points() == {"occlusion": "my_saliency.occlusion:Occlusion"}
    assert '[project.entry-points."capsal.explainers"]\nocclusion = "my_saliency.occlusion:Occlusion"' in README


def test_capsal_eval_scores_the_plugin_with_its_command_line_option(plugin_env, image_checkpoint, tmp_path):
    result = run(
        "capsal.cli.evaluate",
        f"ckpt_path={image_checkpoint}",
        "explainers=[caption_guided,occlusion]",
        "explainer_options.occlusion.window=2",
        "max_samples=4",
        "caption_metrics=[]",
        "progress=false",
        f"output_dir={tmp_path / 'eval'}",
        env=plugin_env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["explainers"]["occlusion"] == WINDOW_2
    assert results["explainers"]["caption_guided"].startswith("CaptionGuided(")
    assert "occlusion" in (tmp_path / "eval" / "tables.md").read_text()


def test_capsal_train_draws_the_plugin_in_its_gallery(plugin_env, tmp_path):
    result = run(
        "capsal.cli.train",
        *TINY_OVERRIDES,
        "datamodule.num_val=4",
        "callbacks.saliency.num_samples=1",
        "callbacks.saliency.explainers=[caption_guided,occlusion]",
        "callbacks.saliency.explainer_options.occlusion.window=2",
        f"output_dir={tmp_path / 'train'}",
        env=plugin_env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads((tmp_path / "train" / "gallery" / "gallery.json").read_text())["epochs"][-1]
    assert last["explainers"]["occlusion"] == WINDOW_2
    assert all("occlusion" in figure["explainers"] for figure in last["figures"])


def test_capsal_explain_uses_the_plugin_its_yaml_and_its_option(plugin_env, image_checkpoint, tmp_path):
    common = [f"ckpt_path={image_checkpoint}", "sample=val:0", "explainer=occlusion"]
    runs = {"yaml": ([], "Occlusion(window=1)"), "option": (["explainer_options.occlusion.window=2"], WINDOW_2)}
    for name, (extra, expected) in runs.items():
        out = tmp_path / name
        result = run("capsal.cli.explain", *common, *extra, f"output_dir={out}", env=plugin_env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["explainer"] == "occlusion" and summary["explainer_options"] == expected
        assert (out / "saliency.png").stat().st_size > 10_000
    # a misspelt plugin option (the plugin's options are keys, as a built-in's): one line with the nearest name
    typo = "explainer_options.occlusion.windw=2"
    result = run("capsal.cli.explain", *common, typo, "output_dir=x", env=plugin_env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsal-explain: error: "), result.stderr
    assert "did you mean explainer_options.occlusion.window?" in lines[0]
