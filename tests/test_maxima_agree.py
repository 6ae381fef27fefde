"""The figure, capsal-explain's JSON summary and the metrics agree on the maximum: a flat (``uniform``) saliency map
points at the centre pixel and a flat temporal saliency at the middle frame, everywhere (see ``capsal.maxima``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from capsal import viz
from capsal.cli import explain as explain_cli
from capsal.explainers import build_explainer
from capsal.maxima import peak_frame, peak_location
from capsal.metrics import PointingGame, TemporalPointingGame
from capsal.models.s2vt import S2VT

WORDS = ["a", "red", "circle"]
SENTENCE = "a red circle"


def tiny_model() -> S2VT:
    torch.manual_seed(0)
    return S2VT(WORDS, hidden_size=8, embed_size=4).eval()


def uniform_saliency(model: S2VT, frames: int, grid_size: int = 2):
    """The ``uniform`` explainer on a random grid of ``frames`` frames: every item (and region) equally salient."""
    grid = torch.randn(1, frames, grid_size, grid_size, model.feature_size)
    saliency = build_explainer("uniform").explain(model, model.items(grid), grid=grid, tokens=SENTENCE)
    assert saliency.layout.is_video == (frames > 1)
    return saliency


def word_spans(saliency) -> list[tuple[int, int, str]]:
    return [(k, k + 1, word) for k, word in enumerate(saliency.words[0])]


@pytest.fixture
def figures(monkeypatch):
    """The pages and layout of the figure capsal-explain saves (they are written to disk too)."""
    drawn: list = []
    draw = explain_cli.panel_figures

    def keep(*args, **kwargs):
        drawn.append(draw(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(explain_cli, "panel_figures", keep)
    return drawn


def star_position(ax) -> tuple[float, float]:
    (star,) = [line for line in ax.get_lines() if line.get_marker() == "*"]
    xs, ys = star.get_data()
    return float(xs[0]), float(ys[0])


def marker_centre(page: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
    """The centre of the white plus drawn inside a panel's pixel box, in panel pixels."""
    left, top, right, bottom = box
    ys, xs = np.nonzero((page[top:bottom, left:right] == 255).all(axis=-1))
    return (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2


# Image sizes are power-of-two multiples of the 2 x 2 grid: bilinear upsampling of a constant is then exactly constant
# (at other scales float rounding leaves 1-ulp bumps, and those are the maximum).
@pytest.mark.parametrize(
    ("height", "width", "centre"), [(8, 16, (8, 4)), (4, 4, (2, 2)), (16, 8, (4, 8)), (2, 2, (1, 1))]
)
def test_image_summary_figure_and_pointing_game_agree_on_the_centre(tmp_path, figures, height, width, centre):
    saliency = uniform_saliency(tiny_model(), frames=1)
    pixels = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
    spans = word_spans(saliency)
    summary = explain_cli._write_image(
        {"uniform": saliency}, explain_cli.ExplainInput(pixels, "test"), spans, None, tmp_path
    )
    maps = saliency.to_image_size(height, width, torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans]))
    assert torch.all(maps == maps[0, 0, 0])  # a constant map: every pixel ties

    # the JSON summary
    assert [tuple(panel["max_xy"]) for panel in summary["panels"]] == [centre] * len(spans)
    # the figure capsal-explain saved: per panel a white plus on the centre pixel, scaled to the panel's size
    ((pages, layout),) = figures
    cell_h, cell_w = layout.cell_hw
    x, y = centre
    expected = ((x + 0.5) * cell_w / width - 0.5, (y + 0.5) * cell_h / height - 0.5)
    for panel in layout.panels:
        assert marker_centre(pages[panel.page], panel.box) == pytest.approx(expected, abs=0.5)
    # viz.draw_overlay on its own, with the numpy heat
    ax = Figure().subplots()
    viz.draw_overlay(ax, viz.to_numpy_image(pixels[0]), maps[0].numpy())
    assert star_position(ax) == centre
    # the metric: a box holding only the centre pixel is a hit, one next to it a miss
    assert peak_location(maps[0]) == centre
    x, y = centre
    metric = PointingGame(["thing"])
    metric.update(maps[:2], [[(x, y, x, y)], [(x - 1, y, x - 1, y)]], ["thing", "thing"])
    assert metric.compute()["thing"].item() == 0.5
    hit = PointingGame(["thing"])
    hit.update(maps, [[(x, y, x, y)]] * len(spans), ["thing"] * len(spans))
    assert hit.compute()["avg"].item() == 1.0


@pytest.mark.parametrize(("frames", "middle"), [(8, 4), (5, 2)])
def test_video_summary_figure_and_temporal_pointing_agree_on_the_middle_frame(tmp_path, monkeypatch, frames, middle):
    shown_panels: list[viz.VideoPanel] = []
    draw = explain_cli.video_panel

    def keep(*args, **kwargs) -> viz.VideoPanel:
        shown_panels.append(draw(*args, **kwargs))
        return shown_panels[-1]

    monkeypatch.setattr(explain_cli, "video_panel", keep)
    height, width = 8, 16
    saliency = uniform_saliency(tiny_model(), frames=frames)
    pixels = torch.randint(0, 256, (frames, 3, height, width), dtype=torch.uint8)
    spans = word_spans(saliency)
    summary = explain_cli._write_video({"uniform": saliency}, explain_cli.ExplainInput(pixels, "test"), spans, tmp_path)
    temporal = torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans])  # (P, T)
    assert torch.all(temporal == temporal[0, 0])  # every frame ties
    regions = torch.stack([saliency.phrase_regions(s, e)[0] for s, e, _ in spans])  # (P, T, r)
    spatial = saliency.to_image_size(height, width, regions)  # (P, T, H, W), constant
    centre = (8, 4)  # (15 / 2, 7 / 2) rounded half up

    # the JSON summary
    assert [panel["best_frame"] for panel in summary["panels"]] == [middle] * len(spans)
    assert [tuple(panel["max_xy"]) for panel in summary["panels"]] == [centre] * len(spans)
    # the figure capsal-explain saved (Fig. 5): the frame shown under each word, and its marked maximum
    panel = shown_panels[-1]
    assert panel.frames == [middle] * len(spans)
    assert panel.points == [centre] * len(spans)
    # viz.video_panel on its own, with a constant numpy (P, T) array
    images = list(torch.rand(frames, height, width, 3).numpy())
    constant = torch.full((2, frames), 0.25).numpy()
    alone = viz.video_panel(images, constant, ["x", "y"], torch.ones(2, height, width).numpy())
    assert alone.frames == [middle, middle] and alone.points == [centre, centre]

    # the metric scores the middle frame: an interval holding only it is a hit, the frames either side are misses
    assert peak_frame(temporal[0]) == middle
    n = len(spans)
    metric = TemporalPointingGame(["thing"])
    metric.update(temporal, [(middle, middle + 1)] * n, ["thing"] * n, spatial, [{middle: [(*centre, *centre)]}] * n)
    metric.update(temporal[:1], [(0, middle)], ["thing"])
    metric.update(temporal[:1], [(middle + 1, frames + 1)], ["thing"])
    result = metric.compute()
    assert result["temporal/thing"].item() == pytest.approx(n / (n + 2))
    assert result["spatial/thing"].item() == 1.0  # in the middle frame, the centre pixel
