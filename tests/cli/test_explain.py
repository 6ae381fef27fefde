"""capsal-explain end to end: figures, arrays, JSON, and one clear line for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from tiny import compose_app

from capsal.cli.explain import explain
from capsal.errors import UserError
from capsal.explorer import read_explorer


def assert_picture(path, min_size=(200, 150)):
    """A real PNG of a sensible size that is not blank."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] >= min_size[0] and image.shape[0] >= min_size[1]
    assert image.std() > 10, "the figure is blank"


def test_explain_a_dataset_sample_with_its_reference_phrases(image_checkpoint, tmp_path):
    summary = explain(
        compose_app("explain", tmp_path, f"ckpt_path={image_checkpoint}", "sample=val:1", "reference=true")
    )
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
    summary = explain(
        compose_app("explain", out, f"ckpt_path={image_checkpoint}", f"input={path}", "query='a red circle'")
    )
    assert summary["sentence"] == "a red circle"
    assert np.load(out / "saliency.npz")["maps"].shape == (3, 90, 150)  # one map per word at the input's size
    assert_picture(out / "saliency.png")


def test_a_contrastive_explanation_labels_the_words_that_differ(image_checkpoint, tmp_path):
    args = (f"ckpt_path={image_checkpoint}", "sample=val:0", "query='a red circle'", "contrast='a blue circle'")
    summary = explain(compose_app("explain", tmp_path, *args))
    assert summary["contrast"] == "a blue circle"
    assert [panel["text"] for panel in summary["panels"]] == ["a", "red rather than blue", "circle"]
    assert_picture(tmp_path / "saliency.png")


def test_a_200_word_query_wraps_its_panels_into_rows_and_pages(image_checkpoint, tmp_path):
    from capsal import viz

    query = " ".join((["a", "big", "red", "circle", "and", "a", "small", "blue", "square", "and"] * 20)[:200])
    words = query.split()
    args = (f"ckpt_path={image_checkpoint}", "sample=val:0", f"query='{query}'")
    summary = explain(compose_app("explain", tmp_path, *args))
    assert summary["sentence"] == query and len(summary["panels"]) == 200
    layout = viz.panel_layout(words, ["caption_guided"], (64, 64), query)
    pages = viz.page_paths(tmp_path / "saliency.png", len(layout.sizes))
    assert len(pages) > 1 and [Path(p) for p in summary["figures"]] == pages
    assert [Image.open(page).size for page in pages] == layout.sizes
    assert all(width <= 1600 and height <= 3500 for width, height in layout.sizes)
    for page in pages:
        assert_picture(page)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_several_explainers_share_one_figure_one_explorer_and_the_arrays(
    image_checkpoint, video_checkpoint, kind, tmp_path
):
    from capsal import viz

    checkpoint = image_checkpoint if kind == "image" else video_checkpoint
    args = (f"ckpt_path={checkpoint}", "sample=val:0", "explainers=[caption_guided,uniform]")
    summary = explain(compose_app("explain", tmp_path, *args))
    single = explain(compose_app("explain", tmp_path / "single", f"ckpt_path={checkpoint}", "sample=val:0"))
    assert summary["explainers"] == ["caption_guided", "uniform"] and summary["explainer"] == "caption_guided"
    assert summary["sentence"] == single["sentence"]  # the model's caption, explained by both
    assert summary["panels"] == single["panels"]  # the summary's maxima: the first explainer's
    arrays, alone = np.load(tmp_path / "saliency.npz"), np.load(tmp_path / "single" / "saliency.npz")
    maps = "maps" if kind == "image" else "temporal"
    np.testing.assert_allclose(arrays[maps], alone[maps], atol=1e-6)  # the first explainer under the usual name
    uniform = arrays[f"{maps}_uniform"]  # the second under its name: flat, every item as salient
    assert uniform.shape == arrays[maps].shape and np.ptp(uniform, axis=tuple(range(1, uniform.ndim))).max() < 1e-6
    page = explorer_data(tmp_path, summary)["samples"][0]
    assert [e["name"] for e in page["explainers"]] == ["caption_guided", "uniform"]
    figure = Image.open(tmp_path / "saliency.png")
    words = summary["sentence"].split()
    if kind == "image":  # a block of rows per explainer
        layout = viz.panel_layout(words, summary["explainers"], (64, 64), summary["sentence"])
        rows = -(-len(words) // layout.columns)  # ceil
        assert figure.size == layout.sizes[0] and [r.block for r in layout.rows] == [0] * rows + [1] * rows
    else:  # a Fig. 5 panel per explainer, stacked
        added = figure.height - Image.open(tmp_path / "single" / "saliency.png").height
        assert added >= len(words) * viz.STRIP_ROW + viz.FRAME_CELL  # the second explainer's strip and frames


def test_explain_a_video_sample_gives_temporal_and_spatial_maps(video_checkpoint, tmp_path):
    summary = explain(compose_app("explain", tmp_path, f"ckpt_path={video_checkpoint}", "sample=val:0"))
    arrays = np.load(tmp_path / "saliency.npz")
    n = len(summary["sentence"].split())
    assert summary["kind"] == "video" and arrays["temporal"].shape == (n, 8)
    assert arrays["regions"].shape == (n, 8, 4, 4)  # the grid-level spatial saliency in every frame
    assert arrays["spatial"].shape == (n, 32, 32)  # each word's map in its most salient frame, at the frame's size
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
        (["query='a red circle'", "contrast='a blue'"], "the contrast sentence 'a blue' has 2 words"),
        (["explainer=uniform", "contrast='a blue circle'"], "explainer uniform does not score"),
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
    summary = explain(
        compose_app("explain", tmp_path, f"ckpt_path={image_checkpoint}", "sample=val:0", "query='a red zebra'")
    )
    assert summary["unknown_words"] == ["zebra"]
    assert summary["sentence"] == "a red <unk>"
    assert "zebra" in caplog.text


# ---- every documented option combination, in process ------------------------------------------------------------

FRAMES = 8  # the tiny video model's clips (tests/tiny.py)


def write_clip(path: Path, frames: int = 12, size=(40, 48)) -> Path:
    """A small real MPEG-4 clip: a red square sliding right over black."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            image = np.zeros((*size, 3), np.uint8)
            image[5:20, 4 + 2 * k : 16 + 2 * k] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    photo = folder / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(photo)
    return {"image": photo, "video": write_clip(folder / "clip.mp4")}


@pytest.fixture(scope="module")
def soft_attention_checkpoint(tmp_path_factory):
    """A tiny soft-attention model (the only kind the soft_attention explainer reads), trained like conftest's."""
    from tiny import train_tiny

    return train_tiny(tmp_path_factory.mktemp("soft_attention_ckpt"), "model=soft_attention")


CASES = {
    # README: capsal-explain ckpt_path=<ckpt> input=photo.jpg query="a red circle"
    "input+query": lambda kind, media: [f"input={media[kind]}", "query='a red circle'"],
    # README: capsal-explain ckpt_path=<ckpt> sample=val:3 reference=true
    "sample+reference": lambda kind, media: ["sample=val:0", "reference=true"],
    # README: capsal-explain ckpt_path=<ckpt> input=clip.mp4 explainer=gradient phrases=[[0,3]]
    "input+phrases": lambda kind, media: [f"input={media[kind]}", "phrases=[[0,2]]"],
    # the model's own caption of a dataset sample, every word a panel
    "sample": lambda kind, media: ["sample=val:1"],
    # a query and a phrase of it, on a dataset sample
    "sample+query+phrases": lambda kind, media: ["sample=val:0", "query='a red circle'", "phrases=[[1,3]]"],
}


def check_outputs(out: Path, summary: dict, kind: str, explainer: str, case: str) -> None:
    """What a user opens: a non-blank figure, arrays of the right shapes, a summary that says what was explained."""
    assert_picture(out / "saliency.png")
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    words = summary["sentence"].split()
    assert words, "an explained sentence has words"
    assert summary["explainer"] == explainer
    assert summary["explainer_options"].endswith(")") and "(" in summary["explainer_options"]
    arrays = np.load(out / "saliency.npz")
    spans = arrays["spans"].tolist()
    assert [p["span"] for p in summary["panels"]] == spans
    assert [p["text"] for p in summary["panels"]] == [" ".join(words[s:e]) for s, e in spans]
    assert list(arrays["words"]) == words
    if "query" in case:
        assert summary["sentence"] == "a red circle" and summary["unknown_words"] == []
    if "phrases" in case:
        assert spans == ([[1, 3]] if case.startswith("sample") else [[0, 2]])
    elif case in ("sample", "input+query"):
        assert spans == [[k, k + 1] for k in range(len(words))]  # every word is a panel
    from_file = case.startswith("input")
    if kind == "image":
        height, width = (90, 150) if from_file else (64, 64)
        assert summary["kind"] == "image" and summary["grid"] == [8, 8]
        assert arrays["scores"].shape[0] >= len(words) and arrays["scores"].shape[1] == 64
        assert arrays["maps"].shape == (len(spans), height, width)
        assert np.isfinite(arrays["maps"]).all()
        for panel, heat in zip(summary["panels"], arrays["maps"], strict=True):
            x, y = panel["max_xy"]
            assert heat[round(y), round(x)] == pytest.approx(heat.max(), abs=1e-5)
    else:
        height, width = (40, 48) if from_file else (32, 32)
        assert summary["kind"] == "video" and summary["frames"] == FRAMES
        assert arrays["temporal"].shape == (len(spans), FRAMES)
        assert arrays["regions"].shape == (len(spans), FRAMES, 4, 4)
        assert arrays["spatial"].shape == (len(spans), height, width)
        assert all(0 <= p["best_frame"] < FRAMES for p in summary["panels"])
    (page,) = explorer_data(out, summary)["samples"]  # capsal-explain's page holds its one sample
    assert page["labels"] == [p["text"] for p in summary["panels"]]
    assert [e["name"] for e in page["explainers"]] == [explainer]  # the one asked for
    assert page["size"] == [width, height] and len(page["frames"]) == (1 if kind == "image" else FRAMES)
    assert page["video"] == (kind == "video")


def explorer_data(out: Path, summary: dict) -> dict:
    """The data inlined in the ``explorer.html`` that the summary points at, after checking the page is offline."""
    assert summary["explorer"] == str(out / "explorer.html")
    page = (out / "explorer.html").read_text()
    assert "Content-Security-Policy" in page and not re.search(r"https?://", page)
    return read_explorer(out / "explorer.html")


# caption_guided with every option combination on both kinds of input; each other explainer with two of them
MATRIX = [(kind, "caption_guided", case) for kind in ("image", "video") for case in CASES] + [
    ("image", "gradient", "input+phrases"),
    ("video", "gradient", "input+phrases"),  # the README's line
    ("image", "uniform", "input+query"),
    ("video", "uniform", "sample+reference"),
    ("image", "center", "sample"),
    ("video", "center", "sample+query+phrases"),
    ("image", "random", "sample+query+phrases"),
    ("video", "random", "input+query"),
]


@pytest.mark.parametrize(("kind", "explainer", "case"), MATRIX)
def test_every_option_combination_writes_its_figure_arrays_and_summary(
    kind, explainer, case, media, image_checkpoint, video_checkpoint, tmp_path
):
    checkpoint = image_checkpoint if kind == "image" else video_checkpoint
    args = [f"ckpt_path={checkpoint}", f"explainer={explainer}", *CASES[case](kind, media)]
    summary = explain(compose_app("explain", tmp_path, *args))
    check_outputs(tmp_path, summary, kind, explainer, case)
    if case == "sample+reference":
        assert summary["input"].startswith("val:0")
        if kind == "image":  # the reference's noun phrases, each with a ground-truth box in the figure and explorer
            assert all(len(p["text"].split()) >= 3 for p in summary["panels"])
            assert all(explorer_data(tmp_path, summary)["samples"][0]["boxes"])


@pytest.mark.parametrize("kind", ["image", "video"])
def test_kl_mode_of_caption_guided_is_the_one_explained(kind, media, image_checkpoint, video_checkpoint, tmp_path):
    checkpoint = image_checkpoint if kind == "image" else video_checkpoint
    args = [f"ckpt_path={checkpoint}", f"input={media[kind]}", "explainer_options.caption_guided.mode=kl"]
    summary = explain(compose_app("explain", tmp_path, *args))
    assert "mode='kl'" in summary["explainer_options"]
    check_outputs(tmp_path, summary, kind, "caption_guided", "input")


@pytest.mark.parametrize("case", ["input+query", "sample+reference", "input+phrases"])
def test_soft_attention_explains_a_soft_attention_model(case, media, soft_attention_checkpoint, tmp_path):
    args = [f"ckpt_path={soft_attention_checkpoint}", "explainer=soft_attention", *CASES[case]("image", media)]
    summary = explain(compose_app("explain", tmp_path, *args))
    check_outputs(tmp_path, summary, "image", "soft_attention", case)
    weights = np.load(tmp_path / "saliency.npz")["scores"][: len(summary["sentence"].split())]
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)  # attention weights over the 64 items


# ---- bad input: one line, in process for every variant, one subprocess per kind of error for the exit code ------


@pytest.fixture(scope="module")
def mute_checkpoint(image_checkpoint, tmp_path_factory) -> Path:
    """The tiny image model with its output bias set so that <eos> always wins: its own caption is empty."""
    checkpoint = torch.load(image_checkpoint, map_location="cpu", weights_only=False)
    eos = 2  # Vocabulary.eos_id
    checkpoint["state_dict"]["output.1.bias"][eos] = 1e4
    path = tmp_path_factory.mktemp("mute") / "mute.ckpt"
    torch.save(checkpoint, path)
    return path


def test_an_empty_caption_is_one_line_pointing_to_query(mute_checkpoint, media, tmp_path):
    for args in (["sample=val:0"], [f"input={media['image']}"], ["sample=val:0", "explainer=gradient"]):
        with pytest.raises(UserError, match="the model produced no words") as error:
            explain(compose_app("explain", tmp_path, f"ckpt_path={mute_checkpoint}", *args))
        assert "query=" in str(error.value) and "\n" not in str(error.value)
    result = run_cli(f"ckpt_path={mute_checkpoint}", "sample=val:0", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("capsal-explain: error: the model produced no words for val:0")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "saliency.png").exists()
    # the way out the message names works
    summary = explain(
        compose_app("explain", tmp_path, f"ckpt_path={mute_checkpoint}", "sample=val:0", "query='a red circle'")
    )
    assert summary["sentence"] == "a red circle"


# a malformed span is refused with the rest of the config, before anything loads
BAD_PHRASES = [
    ("phrases=[[0]]", "phrases=[[0]] is not allowed: list should have at least 2 items"),
    ("phrases=[[0,1,2]]", "phrases=[[0, 1, 2]] is not allowed: list should have at most 2 items"),
    ("phrases=[[a,b]]", "phrases=[['a', 'b']] is not allowed: input should be a valid integer"),
    ("phrases=[[0,2.5]]", "phrases=[[0, 2.5]] is not allowed: input should be a valid integer"),
    ("phrases=[[true,2]]", "phrases=[[true, 2]] is not allowed: input should be a valid integer"),
    ("phrases=[3]", "phrases=[3] is not allowed: input should be a valid list"),
    ("phrases=5", "phrases=5 is not allowed: input should be a valid list"),
    ("phrases='0,2'", "phrases='0,2' is not allowed: input should be a valid list"),
    (
        "phrases=[[2,1]]",
        "phrases=[[2, 1]] is not allowed: the span [2, 1] is empty; give [start, end] with start < end",
    ),
    ("phrases=[[1,1]]", "phrases=[[1, 1]] is not allowed: the span [1, 1] is empty"),
    ("phrases=[[-1,2]]", "phrases=[[-1, 2]] is not allowed: input should be greater than or equal to 0"),
    ("phrases=[[0,4]]", "is not inside the sentence's 3 words"),  # 4 = the padded width (eos slot): not a word
    ("phrases=[[0,2],[2,9]]", "is not inside the sentence's 3 words"),
]


@pytest.mark.parametrize(("override", "message"), BAD_PHRASES)
def test_bad_phrase_spans_are_one_line(override, message, image_checkpoint, tmp_path):
    args = [f"ckpt_path={image_checkpoint}", "sample=val:0", "query='a red circle'", override]
    with pytest.raises(UserError, match=re.escape(message)) as error:
        explain(compose_app("explain", tmp_path, *args))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "saliency.png").exists()


def test_spans_are_checked_against_the_own_captions_real_words(image_checkpoint, tmp_path):
    """The model's own caption: a span up to its last word works, one more word (its eos slot) is refused."""
    args = [f"ckpt_path={image_checkpoint}", "sample=val:0"]
    n = len(explain(compose_app("explain", tmp_path / "a", *args))["sentence"].split())
    summary = explain(compose_app("explain", tmp_path / "b", *args, f"phrases=[[0,{n}]]"))
    assert [p["span"] for p in summary["panels"]] == [[0, n]]
    with pytest.raises(UserError, match=f"is not inside the sentence's {n} words"):
        explain(compose_app("explain", tmp_path / "c", *args, f"phrases=[[0,{n + 1}]]"))


OTHER_BAD = [
    (["sample=val:0", "query=[a,b]"], "query=['a', 'b'] is not allowed: input should be a valid string"),
    (["sample=val:0", "query=''"], "the query is empty"),
    (["sample=val:0", "explainer=soft_attention"], "needs a model with attention weights"),
    (
        ["sample=val:0", "explainer=occlusion_typo"],
        "'occlusion_typo' is not one of: caption",
    ),
    (["sample=val:0", "explainer_options.caption_guided.mode=nope"], "mode='nope' is not allowed"),
    (["sample=val"], "sample='val' is not allowed: give <split>:<index>, e.g. val:3"),
    (["sample=bogus:0"], "split 'bogus' is unknown"),
    (["sample=val:999"], "out of range"),
    ([], "give exactly one of input="),
    (["input=IMAGE", "reference=true"], "reference=true needs sample="),
    (["input=FOLDER"], "is a folder"),
    (["input=MISSING"], "does not exist"),
]


@pytest.mark.parametrize(("args", "message"), OTHER_BAD)
def test_other_bad_input_is_one_line(args, message, image_checkpoint, media, tmp_path):
    paths = {"IMAGE": media["image"], "FOLDER": tmp_path, "MISSING": tmp_path / "missing.jpg"}
    args = [next((a.replace(k, str(v)) for k, v in paths.items() if a.endswith(k)), a) for a in args]
    with pytest.raises(UserError, match=re.escape(message)) as error:
        explain(compose_app("explain", tmp_path / "out", f"ckpt_path={image_checkpoint}", *args))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["phrases=[[0,2.5]]"], "phrases=[[0, 2.5]] is not allowed"),
        (["query='a red'", "phrases=[[0,3]]"], "phrase span [0, 3) is not inside the sentence's 2 words"),
        (["query=[a,b]"], "query=['a', 'b'] is not allowed: input should be a valid string"),
        (["explainer=soft_attention"], "needs a model with attention weights"),
        (["input=FOLDER"], "is a folder"),
        (["explainer_options.caption_guided.mode=nope"], "mode='nope' is not allowed"),
    ],
)
def test_each_kind_of_bad_input_exits_2_with_one_line(args, message, image_checkpoint, tmp_path):
    args = [a.replace("FOLDER", str(tmp_path)) for a in args]
    if not any(a.startswith("input=") for a in args):
        args.append("sample=val:0")
    result = run_cli(f"ckpt_path={image_checkpoint}", f"output_dir={tmp_path / 'out'}", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0], "more than one line"
    assert result.stderr.startswith("capsal-explain: error: ") and message in result.stderr


def test_a_video_of_any_size_and_length_gives_the_fig5_figure(video_checkpoint, tmp_path, caplog):
    from capsal import viz

    clips = {
        "short_large.mp4": write_clip(tmp_path / "short_large.mp4", frames=3, size=(360, 480)),  # < the model's 8
        "long.mp4": write_clip(tmp_path / "long.mp4", frames=40, size=(96, 128)),
    }
    for name, clip in clips.items():
        out = tmp_path / f"out_{clip.stem}"
        with caplog.at_level("INFO", logger="capsal"):
            summary = explain(compose_app("explain", out, f"ckpt_path={video_checkpoint}", f"input={clip}"))
        assert summary["kind"] == "video" and summary["frames"] == FRAMES
        figure = Image.open(out / "saliency.png")
        assert figure.width == viz.VIDEO_WIDTH and figure.height > viz.FRAME_CELL  # strip, then frames
        assert_picture(out / "saliency.png")
        height, width = (360, 480) if name.startswith("short") else (96, 128)
        assert np.load(out / "saliency.npz")["spatial"].shape == (len(summary["panels"]), height, width)
    assert f"video {clips['short_large.mp4']} has 3 frames, fewer than the {FRAMES} asked for" in caplog.text


def test_a_video_without_a_decodable_frame_exits_2_in_one_line(video_checkpoint, tmp_path):
    empty = tmp_path / "no_frames.mp4"
    with av.open(str(empty), "w") as container:  # a video stream, not one frame in it
        stream = container.add_stream("mpeg4", rate=8)
        stream.height, stream.width = 32, 32
        stream.pix_fmt = "yuv420p"
    result = run_cli(f"ckpt_path={video_checkpoint}", f"input={empty}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(empty) in result.stderr
    assert result.stderr.startswith("capsal-explain: error: ")
