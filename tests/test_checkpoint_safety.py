"""Loading a checkpoint never runs code from it (issue 24): a pickle payload, a model class that is not a captioner,
and stored configs whose ``_target_`` writes files each stop ``capsal-explain``, ``capsal-eval`` and ``capsal-train
ckpt_path=`` (resume) with one line and exit code 2, and nothing is written, truncated or created.

The malicious files are the compatibility checkpoint ``tests/data/s2vt_v0.1.0.ckpt`` with one thing changed. Every
file goes through every app in process (the app's plain function inside ``exit_on_user_error``); one subprocess per
app shows the real command's stderr and exit code. Old checkpoints (the compatibility one, and one holding the
OmegaConf lists capsal saved before 2026-11-25) still load and explain as before, and a captioner registered through
the ``capsal.captioners`` entry points loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli.test_explain import run_cli
from cli.test_train import run_train
from omegaconf import ListConfig, OmegaConf
from tiny import TINY_OVERRIDES, compose_app, save_tiny_hf

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.cli.evaluate import evaluate
from capsal.cli.explain import explain
from capsal.cli.train import train
from capsal.errors import UserError, exit_on_user_error
from capsal.explainers import build_explainer
from capsal.safe_load import check_targets

BASE = Path(__file__).parent / "data" / "s2vt_v0.1.0.ckpt"
KEPT = "the user's own file\n"


class WritesAFile:
    """A pickle payload: unpickling it calls ``Path.write_text(path, "pwned")``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.write_text, (self.path, "pwned")


@dataclass
class Corpus:
    victims: Path  # holds keep.txt only, before and after every run
    site: Path  # on the path: evil_captioner.py, whose import writes victims/imported
    files: dict[str, Path]


def edited(root: Path, name: str, change: Callable[[dict], object]) -> Path:
    checkpoint = torch.load(BASE, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, root / name)
    return root / name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("malicious")
    victims, site = root / "victims", root / "site"
    victims.mkdir()
    site.mkdir()
    (victims / "keep.txt").write_text(KEPT)
    (site / "evil_captioner.py").write_text(
        f"open({str(victims / 'imported')!r}, 'w').close()\n\nclass Captioner:\n    load_from_checkpoint = print\n"
    )
    targets = {
        "open": {"_target_": "builtins.open", "file": str(victims / "keep.txt"), "mode": "w"},
        "numpy_save": {"_target_": "numpy.save", "file": str(victims / "saved.npy"), "arr": [1, 2, 3]},
        "os_system": {"_target_": "os.system", "command": f"touch {victims / 'pwned'}"},
    }
    changes: dict[str, Callable[[dict], object]] = {
        "pickle_payload": lambda c: c["capsal"].update(note=WritesAFile(victims / "keep.txt")),
        "model_class_os_path": lambda c: c["capsal"].update(model_class="os.path"),
        "model_class_importable": lambda c: c["capsal"].update(model_class="evil_captioner.Captioner"),
        # a target inside an allowed one, and a partial one
        "datamodule_nested": lambda c: c["capsal"]["datamodule"].update(_args_=[targets["open"]]),
        "optimizer_partial": lambda c: c["hyper_parameters"].update(
            optimizer={**targets["os_system"], "_partial_": True}
        ),
    }
    for name, target in targets.items():
        changes[f"datamodule_{name}"] = lambda c, t=target: c["capsal"].update(datamodule=t)
        changes[f"backbone_{name}"] = lambda c, t=target: c["hyper_parameters"].update(backbone=t)
    files = {name: edited(root, f"{name}.ckpt", change) for name, change in changes.items()}
    # capsal's own backbone class, reading a checkpoint whose stored backbone is builtins.open
    inner = {"_target_": "capsal.models.backbones.CheckpointBackbone", "checkpoint": str(files["backbone_open"])}
    files["backbone_checkpoint"] = edited(root, "outer.ckpt", lambda c: c["hyper_parameters"].update(backbone=inner))
    return Corpus(victims, site, files)


def assert_untouched(corpus: Corpus) -> None:
    assert sorted(p.name for p in corpus.victims.iterdir()) == ["keep.txt"]
    assert (corpus.victims / "keep.txt").read_text() == KEPT


def test_a_backbone_checkpoint_that_names_itself_is_one_line(tmp_path, capsys):
    from capsal.models.backbones import CheckpointBackbone

    path = tmp_path / "loop.ckpt"
    loop = {"_target_": "capsal.models.backbones.CheckpointBackbone", "checkpoint": str(path)}
    edited(tmp_path, "loop.ckpt", lambda checkpoint: checkpoint["hyper_parameters"].update(backbone=loop))
    with pytest.raises(SystemExit) as stop, exit_on_user_error("capsal-train"):
        CheckpointBackbone(str(path))  # the nested one raises inside Hydra's instantiate: seen through its wrapper
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert "loop.ckpt has itself as its backbone's checkpoint" in lines[0]


def test_the_payloads_are_real(corpus, tmp_path):
    """What the tests below refuse would run if loaded as before: the pickle payload writes its file."""
    proof = tmp_path / "proof.txt"
    torch.save({"note": WritesAFile(proof)}, tmp_path / "payload.ckpt")
    torch.load(tmp_path / "payload.ckpt", weights_only=False)
    assert proof.read_text() == "pwned"
    assert_untouched(corpus)


APPS = {
    "explain": (explain, ["sample=val:0"]),
    "eval": (evaluate, ["max_samples=2", "caption_metrics=[]", "progress=false"]),
    "train": (train, TINY_OVERRIDES),
}
# resuming builds the model from the command line's config: the stored backbone's checkpoint is never read
NOT_RESUMED = {"backbone_checkpoint"}
EXPECTED = {
    "pickle_payload": "this checkpoint holds Python objects that capsal does not load: builtins.getattr, pathlib.Path",
    "model_class_os_path": "names model class os.path, which is neither one of capsal's captioners",
    "model_class_importable": "names model class evil_captioner.Captioner, which is neither",
    "datamodule_nested": "(its datamodule) asks to build builtins.open",
    "optimizer_partial": "(its hyper-parameters) asks to build os.system",
    "datamodule_open": "(its datamodule) asks to build builtins.open",
    "backbone_open": "(its hyper-parameters) asks to build builtins.open",
    "datamodule_numpy_save": "(its datamodule) asks to build numpy.save",
    "backbone_numpy_save": "(its hyper-parameters) asks to build numpy.save",
    "datamodule_os_system": "(its datamodule) asks to build os.system",
    "backbone_os_system": "(its hyper-parameters) asks to build os.system",
    "backbone_checkpoint": "backbone checkpoint",
}


def app_config(app: str, checkpoint: Path, out: Path):
    function, overrides = APPS[app]
    cfg = compose_app("eval" if app == "eval" else app, out, f"ckpt_path={checkpoint}", *overrides)
    OmegaConf.resolve(cfg)
    return function, cfg


# every app with every file, but resuming with a backbone's checkpoint: resuming never reads that file
CASES = [(app, name) for name in EXPECTED for app in APPS if not (app == "train" and name in NOT_RESUMED)]


@pytest.mark.parametrize(("app", "name"), CASES)
def test_a_malicious_checkpoint_stops_every_app_with_one_line(corpus, tmp_path, capsys, monkeypatch, app, name):
    monkeypatch.syspath_prepend(str(corpus.site))  # evil_captioner is importable: it must not be imported
    function, cfg = app_config(app, corpus.files[name], tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop, exit_on_user_error(f"capsal-{app}"):
        function(cfg)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"capsal-{app}: error: ") and EXPECTED[name] in lines[0], lines
    assert str(corpus.files[name]) in lines[0] or name == "backbone_checkpoint"
    assert "evil_captioner" not in sys.modules
    assert_untouched(corpus)


def run_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``capsal-eval`` console script (tests/cli has no capsal-eval helper for a failing run)."""
    command = [str(Path(sys.executable).with_name("capsal-eval")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=cwd)


@pytest.mark.slow
def test_the_commands_exit_2_with_one_line_and_write_nothing(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(corpus.site), os.environ.get("PYTHONPATH")])))
    runs = {
        "explain": ("pickle_payload", lambda ckpt: run_cli(f"ckpt_path={ckpt}", "sample=val:0", cwd=tmp_path)),
        "eval": ("datamodule_open", lambda ckpt: run_eval(f"ckpt_path={ckpt}", "progress=false", cwd=tmp_path)),
        "train": ("model_class_importable", lambda ckpt: run_train(tmp_path, f"ckpt_path={ckpt}", *TINY_OVERRIDES)),
    }
    for app, (name, run) in runs.items():
        result = run(corpus.files[name])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (app, result.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith(f"capsal-{app}: error: ") and EXPECTED[name] in lines[0], lines
        assert_untouched(corpus)


# ---- what still loads ------------------------------------------------------------------------------------------


def explained(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's caption and caption-guided scores for a fixed random image."""
    pixels = torch.rand(1, 1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = model.features(pixels)
        items = model.items(grid)
        captions = model.generate(items)
    return captions, build_explainer("caption_guided").explain(model, items, grid=grid).scores


@pytest.fixture(scope="module")
def as_before() -> tuple[torch.Tensor, torch.Tensor]:
    """What the compatibility checkpoint explains (its captions and losses match capsal 0.1.0's: test_checkpoints)."""
    return explained(load_captioner(BASE))


def test_a_checkpoint_holding_omegaconf_lists_loads_and_explains_as_the_plain_one(tmp_path, as_before):
    """capsal before 2026-11-25 saved its datamodules' list options as ListConfig: allowlisted, read as before."""
    old = edited(
        tmp_path,
        "listconfig.ckpt",
        lambda c: c.update(datamodule_hyper_parameters={"shapes": ListConfig(["circle", "square"])}),
    )
    with zipfile.ZipFile(old) as archive:  # the file pickles ListConfig (capsal allowlists it for this process)
        assert b"ListConfig" in archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    for got, expected in zip(explained(load_captioner(old)), as_before, strict=True):
        assert torch.equal(got, expected)


def test_a_captioner_is_loaded_only_once_registered(tmp_path, monkeypatch, as_before):
    """A captioner of one's own (here a subclass of S2VT in a user's package) loads once its package registers it
    under ``capsal.captioners``; its stored datamodule may name a class registered under ``capsal.datamodules``."""
    package = tmp_path / "site" / "my_captioners"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from capsal.datamodules.shapes import ShapesImageDataModule\nfrom capsal.models.s2vt import S2VT\n\n\n"
        "class Mine(S2VT):\n    pass\n\n\nclass MyData(ShapesImageDataModule):\n    pass\n"
    )
    datamodule = {"_target_": "my_captioners.MyData", "num_val": 4}
    path = edited(tmp_path, "mine.ckpt", lambda c: c["capsal"].update(model_class="my_captioners.Mine"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "my_captioners", raising=False)
    with pytest.raises(UserError, match=r"register a class of your own under the entry-point group capsal\.captioners"):
        load_captioner(path)
    with pytest.raises(UserError, match=r"asks to build my_captioners\.MyData"):
        check_targets(datamodule, "stored")
    dist = tmp_path / "site" / "my_captioners-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-captioners\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[capsal.captioners]\nmine = my_captioners:Mine\n\n[capsal.datamodules]\nmy_data = my_captioners:MyData\n"
    )
    model = load_captioner(path)
    assert type(model).__qualname__ == "Mine"
    for got, expected in zip(explained(model), as_before, strict=True):
        assert torch.equal(got, expected)
    model.datamodule_config = datamodule
    assert type(checkpoint_datamodule(model)).__name__ == "MyData"
    monkeypatch.delitem(sys.modules, "my_captioners")


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("capsal.models.backbones.SmallCNN", True),
        ("torch.optim.AdamW", True),
        ("torch.optim.lr_scheduler.StepLR", True),
        ("capsal.viz.save_png", False),  # capsal's, but a function that writes a file
        ("capsal.checkpoints.Path", False),  # a class reached through capsal, defined elsewhere
        ("torch.optim.Optimizer.zero_grad", False),
        ("torch.save", False),
        ("subprocess.Popen", False),
    ],
)
def test_stored_targets_are_capsal_classes_optimizers_and_schedulers(target, allowed):
    config = {"_target_": "capsal.models.backbones.SmallCNN", "channels": [{"x": {"_target_": target}}]}
    if allowed:
        check_targets(config, "stored")
    else:
        with pytest.raises(UserError, match=f"stored asks to build {re.escape(target)}, which capsal does not build"):
            check_targets(config, "stored")


def test_capsal_saves_plain_containers_whatever_it_was_given(tmp_path):
    from capsal.models.s2vt import S2VT

    backbone = {"_target_": "capsal.models.backbones.SmallCNN", "channels": ListConfig([4, 4, 4])}
    model = S2VT(["a", "red", "circle"], backbone=backbone, hidden_size=8, embed_size=4)
    checkpoint = {"hyper_parameters": dict(model.hparams), "datamodule_hyper_parameters": {"root": tmp_path}}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "plain.ckpt") == []
    assert checkpoint["hyper_parameters"]["backbone"]["channels"] == [4, 4, 4]
    assert checkpoint["datamodule_hyper_parameters"]["root"] == str(tmp_path)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A tiny ViT-GPT2 captioner's capsal checkpoint (its save_pretrained files as bytes, weights in the state dict),
    and the model it was saved from."""
    from capsal.models.hf import HFCaptioner

    root = tmp_path_factory.mktemp("hf_safety")
    model = HFCaptioner(str(save_tiny_hf(root / "vit_gpt2", "vit_gpt2")), caption_metrics=[]).eval()
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, root / "hf.ckpt")
    return root / "hf.ckpt", model


def test_a_fine_tuned_hugging_face_checkpoint_loads_weights_only_and_generates_the_same(hf_checkpoint):
    path, model = hf_checkpoint
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    pixels = torch.rand(1, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reloaded = load_captioner(path)
    with torch.no_grad():
        expected = model.generate(model.items(model.features(pixels)))
        assert torch.equal(reloaded.generate(reloaded.items(reloaded.features(pixels))), expected)


@pytest.mark.parametrize("name", ["../escaped.json", "/tmp/capsal-escaped.json", "script.py"])
def test_a_hugging_face_file_name_cannot_write_outside_its_folder(hf_checkpoint, tmp_path, name):
    path, _ = hf_checkpoint
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["capsal"]["pretrained_files"][name] = b"{}"
    torch.save(checkpoint, tmp_path / "named.ckpt")
    with pytest.raises(UserError, match="carries a Hugging Face file named"):
        load_captioner(tmp_path / "named.ckpt")
    assert not Path("/tmp/capsal-escaped.json").exists() and not (Path(tempfile.gettempdir()) / "escaped.json").exists()
