"""``capsal-eval``'s explorer: every scored phrase of the split with each explainer's map, hit and mass inside its
box, equal to ``phrases.csv``; in Chromium (network off) the filters and the sort show what the CSV says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from tiny import compose_app

from capsal.cli.evaluate import evaluate
from capsal.explorer import ExplorerMaps, ExplorerSample, read_explorer, write_pages

EXPLAINERS = "explainers=[caption_guided,gradcam,center]"


@pytest.fixture(scope="module")
def evaluated(image_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval_explorer")
    overrides = [f"ckpt_path={image_checkpoint}", "max_samples=6", "caption_metrics=[]", EXPLAINERS, "progress=false"]
    evaluate(compose_app("eval", folder, *overrides, "faithfulness=false"))
    return folder


def csv_rows(folder: Path) -> list[dict]:
    with (folder / "phrases.csv").open() as handle:
        return [row for row in csv.DictReader(handle) if row["hit"] != ""]


def page_rows(folder: Path) -> list[dict]:
    """(sample, caption, phrase, explainer, hit, mass) of every phrase of the explorer, in the CSV's columns."""
    rows = []
    for sample in read_explorer(folder / "explorer.html")["samples"]:
        for name, hits in sample["hits"].items():
            for k, label in enumerate(sample["labels"]):
                row = {"sample_id": sample["id"], "phrase": label, "category": sample["categories"][k]}
                rows.append(row | {"explainer": name, "hit": str(hits[k]), "mass_inside": sample["mass"][name][k]})
    return rows


def key(row: dict) -> tuple:
    return (row["sample_id"], row["phrase"], row["category"], row["explainer"], row["hit"])


def test_the_explorer_holds_every_scored_phrase_as_phrases_csv_has_it(evaluated):
    expected, shown = csv_rows(evaluated), page_rows(evaluated)
    assert sorted(map(key, shown)) == sorted(map(key, expected))
    masses = sorted((key(row), float(row["mass_inside"])) for row in expected)
    assert [m for _, m in sorted((key(row), row["mass_inside"]) for row in shown)] == pytest.approx(
        [m for _, m in masses], abs=1e-4
    )
    data = read_explorer(evaluated / "explorer.html")
    assert len(data["samples"]) == 6 and data["pages"] == ["explorer.html"]
    sample = data["samples"][0]
    assert [e["name"] for e in sample["explainers"]] == ["caption_guided", "gradcam", "center"]
    assert sample["boxes"] and all(boxes for boxes in sample["boxes"])  # every scored phrase has its box drawn
    assert "maps" not in (evaluated / "phrases.csv").read_text().splitlines()[0]


def test_explorer_false_writes_none(image_checkpoint, tmp_path):
    overrides = [f"ckpt_path={image_checkpoint}", "max_samples=2", "caption_metrics=[]", "explainers=[center]"]
    evaluate(compose_app("eval", tmp_path, *overrides, "faithfulness=false", "explorer=false"))
    assert (tmp_path / "phrases.csv").exists() and not (tmp_path / "explorer.html").exists()


def test_a_split_past_the_page_size_goes_on_in_further_pages(tmp_path):
    frames = np.zeros((1, 8, 8, 3), np.uint8)
    maps = {"center": ExplorerMaps(np.ones((1, 1, 2, 2)))}
    samples = (ExplorerSample(frames, ["a"], maps, sample_id=str(k), hits={"center": [True]}) for k in range(10))
    pages = write_pages(tmp_path, samples, 10, per_page=4)
    assert [p.name for p in pages] == ["explorer.html", "explorer-2.html", "explorer-3.html"]
    contents = [read_explorer(p) for p in pages]
    assert [[s["id"] for s in c["samples"]] for c in contents] == [
        ["0", "1", "2", "3"],
        ["4", "5", "6", "7"],
        ["8", "9"],
    ]
    assert all(c["pages"] == [p.name for p in pages] for c in contents)  # each page links to all of them


@pytest.mark.timeout(300)
def test_filter_sort_and_select_in_the_browser(browser, evaluated):
    page = evaluated / "explorer.html"
    browser.open(page)
    expected = csv_rows(evaluated)
    assert browser.evaluate("document.getElementById('span-hint').hidden")  # phrases are not selected together
    browser.evaluate("capsal.setExplainer('gradcam')")
    browser.evaluate("const h = document.getElementById('hit'); h.value = 'miss'; h.dispatchEvent(new Event('change'))")
    shown = browser.evaluate(
        "[...document.querySelectorAll('#rows tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent))"
    )
    missed = [r for r in expected if r["explainer"] == "gradcam" and r["hit"] == "False"]
    assert sorted((r[0], r[1]) for r in shown) == sorted((r["sample_id"], r["phrase"]) for r in missed)
    assert missed and all(r[3] == "miss" for r in shown)

    browser.evaluate("h.value = ''; h.dispatchEvent(new Event('change'))")
    browser.evaluate(
        "const o = document.getElementById('sort'); o.value = 'mass-asc'; o.dispatchEvent(new Event('change'))"
    )
    masses = browser.evaluate(
        "[...document.querySelectorAll('#rows tbody tr')].map((tr) => Number(tr.cells[4].textContent))"
    )
    gradcam = sorted(float(r["mass_inside"]) for r in expected if r["explainer"] == "gradcam")
    assert masses == pytest.approx(gradcam, abs=1e-3) and len(masses) > 3

    first, last = browser.evaluate(
        "[...document.querySelectorAll('#rows tbody tr')].map((tr) => [tr.dataset.sample, tr.dataset.word])"
    )[:: len(masses) - 1]
    canvases = []
    for sample, word in (first, last):
        browser.evaluate(
            f'document.querySelector(\'#rows tbody tr[data-sample="{sample}"][data-word="{word}"]\').click()'
        )
        browser.evaluate("new Promise((done) => setTimeout(done, 200))")
        assert browser.evaluate("[document.body.dataset.sample, document.body.dataset.word]") == [sample, word]
        canvases.append(browser.canvas())
    assert np.abs(canvases[0] - canvases[1]).mean() > 2  # another phrase, another map drawn
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowDown'}))")
    assert browser.evaluate("capsal.state.sample") == (int(last[0]) + 1) % 6
    assert browser.requests() == [page.as_uri()]
    assert not browser.errors()


CLIP_FRAMES = 26


@pytest.fixture(scope="module")
def evaluated_clips(video_checkpoint, tmp_path_factory) -> Path:
    """capsal-eval's explorer of 26-frame clips (the checkpoint trained on 8-frame ones: S2VT reads any length)."""
    folder = tmp_path_factory.mktemp("eval_explorer_video")
    clips = ["datamodule=shapes_video", f"datamodule.num_frames={CLIP_FRAMES}", "datamodule.frame_size=32"]
    overrides = [f"ckpt_path={video_checkpoint}", "max_samples=2", "caption_metrics=[]", "progress=false", *clips]
    evaluate(compose_app("eval", folder, *overrides, "explainers=[caption_guided]", "faithfulness=false"))
    return folder


def clip_phrases(folder: Path) -> list:
    """The scored phrases of the evaluated clips from the dataset itself, in the order capsal-eval records them."""
    from capsal.datamodules.shapes import ShapesVideoDataModule

    split = ShapesVideoDataModule(num_frames=CLIP_FRAMES, frame_size=32).get_split("test")
    ids = [row["sample_id"] for row in csv_rows(folder)]
    return [(split[k].sample_id, [p for c in split[k].captions for p in c.phrases]) for k in range(len(split)) if
            split[k].sample_id in ids]  # fmt: skip


def test_a_clip_page_holds_its_frames_curves_and_boxes_per_frame(evaluated_clips):
    data = read_explorer(evaluated_clips / "explorer.html")
    expected = clip_phrases(evaluated_clips)
    assert [s["id"] for s in data["samples"]] == [sample_id for sample_id, _ in expected]
    for sample, (_, phrases) in zip(data["samples"], expected, strict=True):
        assert sample["video"] and len(sample["frames"]) == CLIP_FRAMES and sample["boxes"] is None
        (entry,) = sample["explainers"]
        assert len(entry["temporal"]) == len(phrases) and len(entry["best"]) == len(phrases)
        assert sample["frame_boxes"] == [
            [[list(box) for box in p.frame_boxes.get(t, [])] for t in range(CLIP_FRAMES)] for p in phrases
        ]
        assert all(any(frames) for frames in sample["frame_boxes"])  # every phrase's object is on some frames


@pytest.mark.timeout(300)
def test_scrubbing_a_clip_moves_the_drawn_box_with_the_object(browser, evaluated_clips):
    page = evaluated_clips / "explorer.html"
    browser.open(page)
    _, phrases = clip_phrases(evaluated_clips)[0]
    # the phrase and two frames of its event between which its object moved farthest
    k, t0, t1 = max(
        ((k, a, b) for k, p in enumerate(phrases) for a in p.frame_boxes for b in p.frame_boxes),
        key=lambda c: abs(np.subtract(phrases[c[0]].frame_boxes[c[1]][0], phrases[c[0]].frame_boxes[c[2]][0])).max(),
    )
    browser.evaluate(f"capsal.select({k})")
    drawn = {}
    for t in (t0, t1):
        scrubber = "document.getElementById('frame')"  # the range input a user drags
        browser.evaluate(f"{scrubber}.value = {t}; {scrubber}.dispatchEvent(new Event('input'))")
        assert browser.evaluate("[capsal.state.frame, Number(document.body.dataset.frame)]") == [t, t]
        assert browser.evaluate("capsal.boxes()") == [list(phrases[k].frame_boxes[t][0])]
        drawn[t] = browser.canvas()
    white = {t: np.all(canvas == 255, axis=-1) for t, canvas in drawn.items()}

    def outline(t: int) -> np.ndarray:
        """The pixels of the box's left and right columns on frame t (the 2-pixel white stroke covers them)."""
        x0, y0, x1, y1 = phrases[k].frame_boxes[t][0]
        mask = np.zeros_like(white[t])
        mask[y0 : y1 + 1, [x0, x1]] = True
        return mask

    for t, other in ((t0, t1), (t1, t0)):
        assert white[t][outline(t)].all()  # the frame's own box is drawn
        assert white[t][outline(other) & ~outline(t)].mean() < 0.5  # not the box of the other frame
    assert np.abs(drawn[t0] - drawn[t1]).mean() > 2  # another frame of the clip
    assert browser.requests() == [page.as_uri()]
    assert not browser.errors()
