"""Every command line the README, the pages under docs/ (and the Makefile) document composes: Hydra accepts each of its
overrides."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).parents[2]
APPS = {"capsal-train": "train", "capsal-eval": "eval", "capsal-explain": "explain", "capsal-extract": "extract"}
# placeholders a reader replaces, with real-looking values
PLACEHOLDERS = {
    "<ckpt>": "outputs/train/2026-01-01_00-00-00/checkpoints/last.ckpt",
    "$(DEMO_DIR)": "outputs/demo",
    "$(BIN)/": ".venv/bin/",
    # the Makefile's demo recipe: $(1) is image or video, $$run the run folder, the *_ARGS empty by default
    "$(1)": "image",
    '"$$run': '"outputs/demo/image/run',
    "$(DEMO_ARGS)": "",
    "$(DEMO_EVAL_ARGS)": "",
    # the video demo's first steps: $$abs is the run folder's absolute path
    '"$$abs': '"/home/user/outputs/demo/video/run',
    "$(DEMO_VIDEO_DATA)": "datamodule.frame_size=64",
    "$(DEMO_BACKBONE_ARGS)": "",
    "$(DEMO_EXTRACT_ARGS)": "",
    "$(2)": "",
    "$(3)": "",
    "$(4)": "last",  # the checkpoint the demo evaluates (the video demo: best)
}


def _commands(source: str, lines: list[tuple[int, str]]) -> list[tuple[str, str, list[str]]]:
    """``(where, line as written, argv)`` of every capsal command among ``lines`` (continuations joined)."""
    found, pending, start = [], "", 0
    for number, line in lines:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        written, pending = pending + line, ""
        for old, new in PLACEHOLDERS.items():
            written = written.replace(old, new)
        written = re.sub(r"<([A-Za-z_]+)>", r"\1", written)  # <run> -> run
        for command in written.split("&&"):  # a recipe line may chain several commands
            if not re.search(r"capsal-\w+", command):  # e.g. a shell step of the recipe
                continue
            argv = shlex.split(command, comments=True)
            for i, word in enumerate(argv):
                if Path(word).name in APPS:
                    found.append((f"{source}:{start}", command.strip(), argv[i:]))
                    break
    return found


def _markdown_commands(path: Path) -> list[tuple[str, str, list[str]]]:
    """The capsal commands of every shell block (```bash, sh, shell, console) of one Markdown file."""
    source = path.relative_to(ROOT).as_posix()
    commands, block = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if block is None and re.fullmatch(r"```(bash|sh|shell|console)\s*", line):
            block = []
        elif block is not None and line.startswith("```"):
            commands += _commands(source, block)
            block = None
        elif block is not None:
            block.append((number, line))
    return commands


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """The README's and the Makefile's commands."""
    commands = _markdown_commands(ROOT / "README.md")
    makefile = _joined((ROOT / "Makefile").read_text().splitlines())
    commands += _commands("Makefile", [(n, line) for n, line in makefile if re.search(r"capsal-\w+ ", line)])
    return commands


DOCS = sorted((ROOT / "docs").rglob("*.md"))


def docs_commands() -> list[tuple[str, str, list[str]]]:
    """The commands of every page under docs/."""
    return [command for page in DOCS for command in _markdown_commands(page)]


def _joined(lines: list[str]) -> list[tuple[int, str]]:
    """``(first line number, text)`` of every logical line: backslash continuations joined, each part stripped."""
    joined, pending, start = [], "", 0
    for number, line in enumerate(lines, start=1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.strip()[:-1] + " "
            continue
        joined.append((start, pending + line.strip()))
        pending = ""
    return joined


README_COMMANDS = documented_commands()
DOCS_COMMANDS = docs_commands()
COMMANDS = README_COMMANDS + DOCS_COMMANDS


def missing_values(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys still ``???`` (read without resolving interpolations such as ``${hydra:runtime.output_dir}``)."""
    found = []
    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, key):
            found += missing_values(child, f"{prefix}{key}.")
    return found


def test_the_readme_documents_every_command_and_the_overrides_users_ask_about():
    apps = {Path(argv[0]).name for _, _, argv in README_COMMANDS}
    assert apps == set(APPS), f"commands found in README.md/Makefile: {sorted(apps)}"
    lines = [written for _, written, _ in README_COMMANDS]
    assert any("capsal-eval" in w and "datamodule=flickr30k_entities datamodule.root=" in w for w in lines)
    assert any("explainer_options.caption_guided.mode=kl" in w for w in lines)
    assert any(where.startswith("Makefile") for where, _, _ in README_COMMANDS)


def test_the_docs_pages_commands_are_collected():
    """The pages under docs/ hold commands of every app, so the composition test below covers them too."""
    assert DOCS, "no Markdown pages under docs/"
    pages = {where.split(":")[0] for where, _, _ in DOCS_COMMANDS}
    assert {"docs/datasets.md", "docs/demo.md", "docs/evaluation.md"} <= pages, sorted(pages)
    assert {Path(argv[0]).name for _, _, argv in DOCS_COMMANDS} == set(APPS)


def _case(where: str, written: str, argv: list[str]):
    return pytest.param(where, written, argv, id=where)


@pytest.fixture
def readme_plugin_installed():
    """The README's plugin (``occlusion``) as its commands see it once installed: its options are config keys, as
    ``register_plugin_options`` stores them; afterwards the node is empty again (no plugin in this process)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    yaml = ROOT / "tests" / "plugins" / "my_saliency" / "my_saliency" / "conf" / "explainer_options" / "occlusion.yaml"
    store = ConfigStore.instance()
    store.store(group="explainer_plugins", name="registered", node={"occlusion": OmegaConf.load(yaml)})
    yield
    store.store(group="explainer_plugins", name="registered", node={})


@pytest.mark.parametrize(("where", "written", "argv"), [_case(*command) for command in COMMANDS])
def test_a_documented_command_composes(where, written, argv, readme_plugin_installed):
    overrides = [arg for arg in argv[1:] if not arg.startswith("hydra.")]  # compose cannot take hydra.* overrides
    try:
        with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
            cfg = compose(config_name=APPS[Path(argv[0]).name], overrides=overrides)
    except Exception as error:  # any rejection is the failure, reported with the documented line
        pytest.fail(f"{where}: `{written}` does not compose: {type(error).__name__}: {error}")
    missing = missing_values(cfg)
    assert not missing, f"{where}: `{written}` leaves mandatory values unset: {missing}"


def test_datamodule_is_the_checkpoints_own_unless_a_group_option_is_named():
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        for app in ("eval", "explain"):
            assert compose(config_name=app, overrides=["ckpt_path=m.ckpt"]).get("datamodule") is None
            named = compose(app, ["ckpt_path=m.ckpt", "datamodule=flickr30k_entities", "datamodule.root=/data/f30k"])
            assert named.datamodule.root == "/data/f30k"
            assert named.datamodule._target_.endswith("Flickr30kEntitiesDataModule")
