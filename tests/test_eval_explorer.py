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
