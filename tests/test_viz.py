"""The static figures keep the photo readable: the overlay's opacity rises with saliency, so a map of 0 leaves the
image's pixels as they are."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from capsal import viz


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
