"""The static figures keep the photo readable: the overlay's opacity rises with saliency, so a map of 0 leaves the
image's pixels as they are, and a long caption's panels wrap into rows and pages that keep each panel readable."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from capsal import viz
from capsal.maxima import peak_location


def half_salient(height: int = 40, width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A textured photo and a map that is 0 on the left half and rises to 1 on the right."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, (height, width, 3))
    heat = np.zeros((height, width))
    heat[:, width // 2 :] = np.linspace(0.2, 1.0, width - width // 2)
    return image, heat


def test_a_gallery_cell_shows_the_image_unchanged_where_the_map_is_zero():
    image, heat = half_salient()
    cell = viz.to_uint8(viz.overlay_cell(image, heat, shape=image.shape[:2]))
    left = slice(0, image.shape[1] // 2)
    assert np.abs(cell[:, left].astype(int) - viz.to_uint8(image)[:, left]).max() <= 1
    right = slice(image.shape[1] // 2, None)
    assert np.abs(cell[:, right].astype(int) - viz.to_uint8(image)[:, right]).mean() > 20  # the map shows there


def test_a_figure_panel_shows_the_image_unchanged_where_the_map_is_zero():
    image, heat = half_salient()
    ax = Figure().subplots()
    viz.draw_overlay(ax, image, heat)
    (drawn,) = ax.get_images()
    pixels = np.asarray(drawn.get_array())
    left = slice(0, image.shape[1] // 2)
    np.testing.assert_allclose(pixels[:, left], image[:, left], atol=1 / 255)
    # the most salient column is mostly the colormap's top colour, yet the photo still shows through
    top = viz.heat_colors(np.ones(1))[0]
    last = pixels[:, -1]
    assert np.abs(last - top).mean() < np.abs(image[:, -1] - top).mean()
    assert np.corrcoef(last[:, 0], image[:, -1, 0])[0, 1] > 0.5


READABLE = 160  # pixels: the long side under which a panel's word and map are hard to read


def words_of(count: int) -> list[str]:
    vocabulary = ["a", "man", "in", "red", "jacket", "stands", "next", "to", "a", "large", "brown", "dog"]
    return [vocabulary[k % len(vocabulary)] for k in range(count)]


def long_figure(count: int, explainers=("caption_guided",), height: int = 48, width: int = 64):
    """A caption of ``count`` words over a ``height x width`` photo, one map per word (its peak moving along)."""
    rng = np.random.default_rng(1)
    image = rng.uniform(0.0, 1.0, (height, width, 3))
    ys, xs = np.mgrid[0:height, 0:width]
    heats = [np.exp(-((xs - k % width) ** 2 + (ys - k % height) ** 2) / 50.0) for k in range(count)]
    words = words_of(count)
    pages, layout = viz.panel_figures(image, {name: heats for name in explainers}, words, " ".join(words))
    return image, heats, words, pages, layout


def test_a_40_word_caption_wraps_into_rows_of_readable_panels():
    image, heats, words, pages, layout = long_figure(40, ("caption_guided", "gradient"))
    columns = layout.columns
    assert 1 < columns < 40
    # every panel keeps the image's aspect at a readable size, inside its page, and no two panels overlap
    for panel in layout.panels:
        left, top, right, bottom = panel.box
        assert max(right - left, bottom - top) >= READABLE
        assert (right - left) * 48 == pytest.approx((bottom - top) * 64, abs=64)
        width, height = layout.sizes[panel.page]
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
    for a, b in itertools.combinations([p.box for p in layout.panels if p.page == 0], 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # each explainer: ceil(words / columns) rows of at most `columns` panels, every word once, in sentence order
    for block in (0, 1):
        rows = [row for row in layout.rows if row.block == block]
        assert len(rows) == math.ceil(40 / columns)
        assert all(row.stop - row.first <= columns for row in rows)
        assert [p.label for p in layout.panels if p.block == block] == words
    assert [row.block for row in layout.rows] == sorted(row.block for row in layout.rows)  # blocks stay together
    # the sentence is wrapped on top, not cut
    assert " ".join(layout.sentence) == " ".join(words)
    # the PNG holds, in each panel's box, that word's map over the photo
    page = pages[0]
    assert (page.shape[1], page.shape[0]) == layout.sizes[0]
    for panel in layout.panels[::7]:
        left, top, right, bottom = panel.box
        heat = heats[panel.index]
        peak = peak_location(torch.as_tensor(heat))
        cell = viz.to_uint8(viz.overlay_cell(image, heat, layout.cell_hw, peak))
        np.testing.assert_array_equal(page[top:bottom, left:right], cell)


def test_a_panel_shows_the_image_unchanged_where_the_map_is_zero():
    image, heat = half_salient(40, 60)
    pages, layout = viz.panel_figures(image, {"caption_guided": [heat]}, ["circle"], "a circle")
    left, top, right, bottom = layout.panels[0].box
    drawn = pages[0][top:bottom, left:right].astype(int)
    photo = viz.to_uint8(viz.resize(image, bottom - top, right - left, "nearest"))
    half = (right - left) // 2 - 2  # the map is 0 left of the middle; the peak's marker lies right of it
    assert np.abs(drawn[:, :half] - photo[:, :half]).max() <= 1
    assert np.abs(drawn[:, half + 4 :] - photo[:, half + 4 :]).mean() > 20


@pytest.mark.parametrize("shape", [(48, 64), (64, 36)])
def test_a_200_word_caption_stays_within_the_page_bound(shape):
    _, _, words, pages, layout = long_figure(200, ("caption_guided", "gradient"), *shape)
    # the documented bound (docs/commands.md): at most 1600 x 3500 pixels per PNG, 16 rows of panels per page
    assert all(page.shape[1] <= 1600 and page.shape[0] <= 3500 for page in pages)
    rows = 2 * math.ceil(200 / layout.columns)
    assert len(layout.rows) == rows and len(pages) == math.ceil(rows / 16)
    assert [(p.shape[1], p.shape[0]) for p in pages] == layout.sizes
    for block in (0, 1):  # every word of every explainer is on some page, at a readable size
        assert [p.label for p in layout.panels if p.block == block] == words
    assert all(max(p.box[2] - p.box[0], p.box[3] - p.box[1]) >= READABLE for p in layout.panels)
    assert " ".join(layout.sentence) == " ".join(words)  # 200 words still fit on top, wrapped
    assert len(layout.sentence) <= viz.SENTENCE_LINES


def test_figure_pages_are_named_saliency_then_saliency_2(tmp_path):
    assert viz.page_paths(tmp_path / "saliency.png", 3) == [
        tmp_path / "saliency.png",
        tmp_path / "saliency-2.png",
        tmp_path / "saliency-3.png",
    ]


def text_lines(header: np.ndarray) -> int:
    """How many lines of dark text an image strip holds: runs of pixel rows with a dark pixel."""
    inked = (header.min(axis=(1, 2)) < 100).astype(int)
    return int(np.count_nonzero(np.diff(inked, prepend=0) == 1))


def test_a_video_figure_wraps_a_long_sentence_over_its_panels():
    panel = np.full((60, viz.VIDEO_WIDTH, 3), 255, np.uint8)  # a blank Fig. 5 panel
    short = viz.stack_panels([panel], "a red circle moves up", viz.SENTENCE_LINES)
    long = viz.stack_panels([panel], " ".join(words_of(60)), viz.SENTENCE_LINES)
    assert text_lines(short[: short.shape[0] - 60]) == 1
    lines = text_lines(long[: long.shape[0] - 60])
    assert lines >= 3  # 60 words in 600 pixels: every word shown, not cut after two lines
    assert long.shape[0] - 60 >= lines * viz.LINE
