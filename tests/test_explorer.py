"""``explorer.html`` in headless Chromium, driven through the DevTools protocol with the network switched off: no
request leaves the page, the word chosen decides the map drawn (its peak marked at the map's maximum cell), the
scrubber decides the frame, the switch decides the explainer."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import compose_app

from capsal import viz
from capsal.cli.explain import explain
from capsal.explorer import ExplorerMaps, read_explorer, write_explorer
from capsal.maxima import peak_location

H, W, GRID = 48, 64, (3, 4)
LABELS = ["a", "red", "circle"]
PEAKS = [(0, 0), (3, 2), (1, 1)]  # (x, y) cell of each word's maximum under the first explainer
GRADCAM_PEAKS = [(3, 0), (0, 2), (2, 0)]


def grid_maps(peaks, frames: int = 1) -> np.ndarray:
    """``(P, T, h, w)`` maps that fall off from each label's peak cell (shifted by one column per frame)."""
    ys, xs = np.mgrid[: GRID[0], : GRID[1]]
    maps = np.zeros((len(peaks), frames, *GRID))
    for k, (x, y) in enumerate(peaks):
        for t in range(frames):
            maps[k, t] = np.clip(1.0 - 0.45 * np.hypot(xs - (x + t) % GRID[1], ys - y), 0.0, 1.0)
    return maps


def photo(frames: int = 1) -> np.ndarray:
    """Mid-grey frames with a little texture, each a different shade, so a scrubbed frame is told apart."""
    rng = np.random.default_rng(0)
    base = np.stack([np.full((H, W, 3), 60 + 30 * t, np.float64) for t in range(frames)])
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def image_explorer(tmp_path) -> Path:
    explainers = {
        "caption_guided": ExplorerMaps(grid_maps(PEAKS)),
        "gradcam": ExplorerMaps(grid_maps(GRADCAM_PEAKS)),
    }
    boxes = [[], [[40, 28, 63, 47]], []]
    return write_explorer(tmp_path / "explorer.html", photo(), LABELS, explainers, boxes, "a red circle")


TEMPORAL = np.array([[0.1, 0.2, 1.0, 0.3, 0.0], [1.0, 0.5, 0.2, 0.1, 0.0], [0.0, 0.0, 0.2, 0.4, 1.0]])


@pytest.fixture
def video_explorer(tmp_path) -> Path:
    explainers = {
        "caption_guided": ExplorerMaps(grid_maps(PEAKS, frames=5), TEMPORAL),
        "temporal_only": ExplorerMaps(None, TEMPORAL[:, ::-1].copy()),  # an explainer with no map inside the frames
    }
    return write_explorer(tmp_path / "explorer.html", photo(frames=5), LABELS, explainers)


def test_the_page_is_one_offline_file(image_explorer):
    page = image_explorer.read_text()
    assert not re.search(r"https?://", page)  # no script, style, font or image from anywhere
    assert re.search(r"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src &#x27;none&#x27;", page)
    assert "src=" not in page.replace("img.src = src", "")  # nothing loaded by reference: frames are data URIs


def test_a_label_that_looks_like_markup_stays_text(tmp_path):
    label = "</script><!-- <b>"
    path = write_explorer(tmp_path / "x.html", photo(), [label], {"e": ExplorerMaps(grid_maps(PEAKS[:1]))})
    page = path.read_text()
    assert page.count("</script>") == 2 and "<!--" not in page  # the data and the code end where they should
    assert read_explorer(path)["samples"][0]["labels"] == [label]


def test_a_large_photo_is_shrunk_with_its_boxes(tmp_path):
    from capsal.explorer import MAX_SIDE

    big = np.zeros((1, 2 * MAX_SIDE, 3 * MAX_SIDE // 2, 3), np.uint8)
    maps = {"e": ExplorerMaps(grid_maps(PEAKS[:1]))}
    page = write_explorer(tmp_path / "x.html", big, ["a"], maps, [[(0, 0, 3 * MAX_SIDE // 2 - 1, 2 * MAX_SIDE - 1)]])
    data = read_explorer(page)["samples"][0]
    assert data["size"] == [3 * MAX_SIDE // 4, MAX_SIDE]  # the longer side at MAX_SIDE, the aspect ratio kept
    assert data["boxes"] == [
        [[0, 0, 3 * MAX_SIDE // 4 - 1, MAX_SIDE - 1]]
    ]  # the whole photo's box, still the whole photo
    assert Image.open(io.BytesIO(base64.b64decode(data["frames"][0].split(",")[1]))).size == tuple(data["size"])


def peak_pixel(x: int, y: int) -> tuple[int, int]:
    """The canvas pixel at the centre of grid cell ``(x, y)``."""
    return int((x + 0.5) * W / GRID[1]), int((y + 0.5) * H / GRID[0])


def expected_view(maps: np.ndarray) -> np.ndarray:
    """What the canvas should show for each ``(P, 1, h, w)`` grid map: the photo with the map upsampled over it by
    :func:`capsal.viz.blend`, the static figures' rule."""
    heat = F.interpolate(torch.as_tensor(maps[:, 0])[:, None].float(), size=(H, W), mode="bilinear")[:, 0].numpy()
    return np.stack([viz.to_uint8(viz.blend(photo()[0] / 255.0, h)).astype(int) for h in heat])


def closest(canvas: np.ndarray, views: np.ndarray) -> list[float]:
    """The median difference (0-255) between the canvas and each expected view: marker and boxes barely count."""
    return [float(np.median(np.abs(canvas - view).mean(-1))) for view in views]


@pytest.mark.timeout(120)
def test_choosing_a_word_shows_its_map_with_the_peak_marked(browser, image_explorer):
    browser.open(image_explorer)
    views = expected_view(grid_maps(PEAKS))
    for k in range(len(LABELS)):
        browser.evaluate(f"document.querySelectorAll('.word')[{k}].click()")
        assert browser.evaluate("document.querySelector('.word.selected').dataset.index") == str(k)
        shown = browser.canvas()
        differences = closest(shown, views)
        assert differences[k] < 6 and all(d > 10 for j, d in enumerate(differences) if j != k), differences
        cell_x, cell_y = PEAKS[k]
        assert browser.evaluate("capsal.peak()") == [(cell_x + 0.5) * W / GRID[1], (cell_y + 0.5) * H / GRID[0]]
        x, y = peak_pixel(cell_x, cell_y)
        assert (shown[y, x] >= 240).all(), f"no white marker at word {k}'s peak"
    assert (shown[47, 50] < 240).any()  # word 2 has no box
    browser.evaluate("document.querySelectorAll('.word')[1].dispatchEvent(new MouseEvent('mouseenter'))")
    assert (browser.canvas()[47, 50] >= 240).all()  # word 1's ground-truth box, outlined in white along its bottom

    browser.evaluate("const o = document.getElementById('opacity'); o.value = 0; o.dispatchEvent(new Event('input'))")
    assert closest(browser.canvas(), photo()[:1].astype(int))[0] < 5  # the slider at 0: the bare photo
    browser.evaluate(f"o.value = {viz.OPACITY}; o.dispatchEvent(new Event('input'))")
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight'}))")
    assert browser.evaluate("capsal.state.word") == 2
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowLeft'}))")
    assert browser.evaluate("capsal.state.word") == 1
    browser.evaluate("capsal.setExplainer('gradcam')")
    assert browser.evaluate("document.body.dataset.explainer") == "gradcam"
    assert browser.evaluate("document.querySelector('.word.selected').dataset.index") == "1"  # the same word
    differences = closest(browser.canvas(), expected_view(grid_maps(GRADCAM_PEAKS)))
    assert differences[1] < 6 and differences[0] > 10, differences  # gradcam's map of word 1
    assert browser.requests() == [image_explorer.as_uri()]  # the page itself, nothing else
    assert not browser.errors()


@pytest.mark.timeout(120)
def test_the_map_is_on_screen_as_drawn_in_a_laptop_sized_window(browser, image_explorer):
    """The canvas the other tests read is what a person sees: in a 1280 x 900 window the selected word's map shows
    whole, uncovered, at least 320 pixels wide and in the photo's proportions (a small photo is enlarged).
    ``CAPSAL_SCREENSHOTS=<folder>`` keeps the screenshot (docs/explorer.png is one)."""
    browser.open(image_explorer)
    browser.evaluate("document.querySelectorAll('.word')[1].click()")
    screen = browser.screenshot()
    box = browser.evaluate("(({x, y, width, height}) => [x, y, width, height])(view.getBoundingClientRect())")
    x, y, width, height = (round(v) for v in box)
    assert width >= 320 and abs(width / height - W / H) < 0.02, box
    assert x >= 0 and y >= 0 and x + width <= screen.shape[1] and y + height <= screen.shape[0], box
    on_screen = np.asarray(Image.fromarray(screen[y : y + height, x : x + width]).resize((W, H), Image.BOX)).astype(int)
    assert float(np.median(np.abs(on_screen - browser.canvas()).mean(-1))) < 4
    assert closest(on_screen, expected_view(grid_maps(PEAKS)))[1] < 6  # word 1's map, not another's
    if folder := os.environ.get("CAPSAL_SCREENSHOTS"):
        Image.fromarray(screen).save(Path(folder) / "explorer.png")


@pytest.mark.timeout(120)
def test_the_scrubber_moves_through_a_clips_frames_under_its_temporal_curve(browser, video_explorer):
    browser.open(video_explorer)
    assert browser.evaluate("capsal.state.frame") == 2  # opens on word 0's most salient frame
    curve = browser.canvas("curve")
    assert curve.std() > 10  # the bar chart is drawn
    before = browser.canvas()
    browser.evaluate("const s = document.getElementById('frame'); s.value = 4; s.dispatchEvent(new Event('input'))")
    assert browser.evaluate("document.body.dataset.frame") == "4"
    after = browser.canvas()
    x, y = peak_pixel(1, 2)  # word 0's map is 0 there in frames 2 and 4: each frame's own shade shows
    assert after[y, x].mean() - before[y, x].mean() == pytest.approx(60, abs=8)
    assert np.abs(browser.canvas("curve") - curve).mean() > 0.5  # the current frame's bar is highlighted
    browser.evaluate("capsal.select(2); document.getElementById('jump').click()")
    assert browser.evaluate("capsal.state.frame") == 4  # word 2's most salient frame
    browser.evaluate("capsal.setExplainer('temporal_only'); capsal.jump()")
    assert browser.evaluate("capsal.state.frame") == 0  # its word 2 peaks at frame 0
    assert closest(browser.canvas(), photo(frames=5)[:1].astype(int))[0] < 5  # the bare frame, no map over it
    assert browser.requests() == [video_explorer.as_uri()]
    assert not browser.errors()


@pytest.mark.timeout(300)
def test_capsal_explains_clip_explorer_scrubs_its_frames(browser, video_checkpoint, tmp_path):
    summary = explain(compose_app("explain", tmp_path, f"ckpt_path={video_checkpoint}", "sample=val:0"))
    page = Path(summary["explorer"])
    browser.open(page)
    assert browser.evaluate("document.querySelectorAll('.word').length") == len(summary["panels"])
    first = summary["panels"][0]["best_frame"]
    assert browser.evaluate("capsal.state.frame") == first  # the page and the summary agree on the peak frame
    before = browser.canvas()
    browser.evaluate(f"capsal.setFrame({(first + 4) % summary['frames']})")
    assert np.abs(browser.canvas() - before).mean() > 2  # another frame of the clip
    assert browser.requests() == [page.as_uri()]
    assert not browser.errors()


def hand_phrase_map(losses: np.ndarray, start: int, end: int) -> np.ndarray:
    """Eq. 9 by hand from ``saliency.npz``: the words' losses summed and negated, scaled to [0, 1] over the cells."""
    values = -losses[start:end].sum(0)
    return (values - values.min()) / (values.max() - values.min())


@pytest.mark.timeout(300)
def test_dragging_or_shift_clicking_across_words_shows_their_phrase_map(browser, image_checkpoint, tmp_path):
    query = "query='a red square and a blue circle'"
    summary = explain(compose_app("explain", tmp_path, f"ckpt_path={image_checkpoint}", "sample=val:0", query))
    arrays = np.load(tmp_path / "saliency.npz")
    losses, (h, w) = arrays["losses"].astype(np.float64), summary["grid"]
    page = Path(summary["explorer"])
    browser.open(page)

    def word(k: int, event: str, **options) -> None:
        init = ", ".join(f"{key}: {str(value).lower()}" for key, value in {"bubbles": True, **options}.items())
        browser.evaluate(
            f"document.querySelectorAll('.word')[{k}].dispatchEvent(new MouseEvent('{event}', {{{init}}}))"
        )

    def click(k: int, **options) -> None:
        for event in ("mousedown", "mouseup", "click"):  # as a mouse sends them
            word(k, event, **options)

    def shown() -> np.ndarray:
        return np.array(browser.evaluate("capsal.map()")) / 255.0

    assert shown() == pytest.approx(hand_phrase_map(losses, 0, 1), abs=1 / 255)  # one word: its own map
    assert not browser.evaluate("document.getElementById('span-hint').hidden")  # the page says how to select
    single = browser.canvas()
    word(1, "mousedown")  # press on "red", drag across "square" to "and", let go
    for k in (2, 3):
        word(k, "mouseenter")
    browser.evaluate("document.dispatchEvent(new MouseEvent('mouseup'))")
    assert browser.evaluate("document.body.dataset.span") == "1-4"
    selected = browser.evaluate("[...document.querySelectorAll('.word.selected')].map((el) => el.dataset.index)")
    assert selected == ["1", "2", "3"]
    expected = hand_phrase_map(losses, 1, 4)
    assert shown() == pytest.approx(expected, abs=1 / 255)
    assert not np.allclose(expected, sum(hand_phrase_map(losses, k, k + 1) for k in (1, 2, 3)) / 3, atol=0.05)
    x, y = peak_location(torch.as_tensor(expected.reshape(h, w)))  # the marker at the phrase map's own peak cell
    size = read_explorer(page)["samples"][0]["size"]
    assert browser.evaluate("capsal.peak()") == [(x + 0.5) * size[0] / w, (y + 0.5) * size[1] / h]
    assert np.abs(browser.canvas() - single).mean() > 1
    word(5, "mouseenter")  # hovering another word keeps the selection
    assert browser.evaluate("document.body.dataset.span") == "1-4"

    click(4)  # a click shows one word again; shift-click on another selects from it
    assert browser.evaluate("[document.body.dataset.span, capsal.state.word]") == ["", 4]
    click(6, shiftKey=True)
    assert browser.evaluate("document.body.dataset.span") == "4-7"
    assert shown() == pytest.approx(hand_phrase_map(losses, 4, 7), abs=1 / 255)
    browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowLeft'}))")
    assert browser.evaluate("[document.body.dataset.span, capsal.state.word]") == ["", 3]
    assert browser.requests() == [page.as_uri()]
    assert not browser.errors()
