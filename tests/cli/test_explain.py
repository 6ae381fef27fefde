"""capsal-explain end to end: figures, arrays, JSON, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import open_dict
from PIL import Image

from capsal.cli.explain import explain


def explain_cfg(tmp_path, *overrides):
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        cfg = compose(config_name="explain", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
    return cfg


def assert_picture(path, min_size=(200, 150)):
    """A real PNG of a sensible size that is not blank."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] >= min_size[0] and image.shape[0] >= min_size[1]
    assert image.std() > 10, "the figure is blank"


def test_explain_a_dataset_sample_with_its_reference_phrases(image_checkpoint, tmp_path):
    summary = explain(explain_cfg(tmp_path, f"ckpt_path={image_checkpoint}", "sample=val:1", "reference=true"))
    assert_picture(tmp_path / "saliency.png")
    arrays = np.load(tmp_path / "saliency.npz")
    words = summary["sentence"].split()
    assert arrays["scores"].shape[1] == 64 and arrays["maps"].shape[1:] == (64, 64)
    assert [p["text"] for p in summary["panels"]] == [" ".join(words[s:e]) for s, e in arrays["spans"]]
    assert all(len(p["text"].split()) >= 3 for p in summary["panels"])  # noun phrases: "a big red circle"
    for panel, heat in zip(summary["panels"], arrays["maps"], strict=True):
        x, y = panel["max_xy"]
        assert heat[round(y), round(x)] == pytest.approx(heat.max(), abs=1e-5)


def test_explain_an_image_file_of_another_size_with_a_query(image_checkpoint, tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    summary = explain(explain_cfg(out, f"ckpt_path={image_checkpoint}", f"input={path}", "query='a red circle'"))
    assert summary["sentence"] == "a red circle"
    assert np.load(out / "saliency.npz")["maps"].shape == (3, 90, 150)  # one map per word at the input's size
    assert_picture(out / "saliency.png")


def test_explain_a_video_sample_gives_temporal_and_spatial_maps(video_checkpoint, tmp_path):
    summary = explain(explain_cfg(tmp_path, f"ckpt_path={video_checkpoint}", "sample=val:0"))
    arrays = np.load(tmp_path / "saliency.npz")
    n = len(summary["sentence"].split())
    assert summary["kind"] == "video" and arrays["temporal"].shape == (n, 8)
    assert arrays["spatial"].shape == (n, 8, 32, 32)
    assert all(0 <= p["best_frame"] < 8 for p in summary["panels"])
    assert_picture(tmp_path / "saliency.png")


def run_cli(*args, cwd):
    """capsal-explain in a subprocess, its Hydra run directory under ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "capsal.cli.explain", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query=' '"], "the query is empty"),
        (["query='zebra giraffe'"], "every word of the query"),
    ],
)
def test_bad_queries_get_one_line_and_exit_code_2(image_checkpoint, tmp_path, args, message):
    result = run_cli(f"ckpt_path={image_checkpoint}", "sample=val:0", f"output_dir={tmp_path}", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_query_longer_than_the_generation_limit_is_explained(image_checkpoint, tmp_path):
    """Teacher forcing has no length limit: a 30-word query (the model generates at most 20) is explained."""
    query = " ".join(["a red circle"] * 10)
    result = run_cli(
        f"ckpt_path={image_checkpoint}", "sample=val:0", f"output_dir={tmp_path}", f"query='{query}'", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sentence"] == query and len(summary["panels"]) == 30


def test_bad_files_get_one_line_and_exit_code_2(tmp_path, image_checkpoint):
    not_capsal = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_capsal)
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"not an image at all")
    cases = [
        ([f"ckpt_path={not_capsal}", "sample=val:0"], "not a capsal checkpoint"),
        ([f"ckpt_path={tmp_path / 'missing.ckpt'}", "sample=val:0"], "does not exist"),
        ([f"ckpt_path={image_checkpoint}", f"input={garbage}"], str(garbage)),
        ([f"ckpt_path={image_checkpoint}", "sample=val:999"], "out of range"),
    ]
    for args, message in cases:
        result = run_cli(*args, f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_unknown_query_words_are_reported_and_explained_as_unk(image_checkpoint, tmp_path, caplog):
    summary = explain(explain_cfg(tmp_path, f"ckpt_path={image_checkpoint}", "sample=val:0", "query='a red zebra'"))
    assert summary["unknown_words"] == ["zebra"]
    assert summary["sentence"] == "a red <unk>"
    assert "zebra" in caplog.text
