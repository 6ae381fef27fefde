"""Pictures of saliency: per-word overlays (paper Fig. 3/4) and video figures (Fig. 5): per word a grey temporal
strip over the frames and its most salient frame with the spatial map over it."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from capsal.maxima import peak_frame, peak_location
from capsal.types import Box

COLORMAP = "viridis"  # perceptually uniform: yellow = high, dark blue = low; the explorer inlines the same table
OPACITY = 0.75  # the overlay's opacity where saliency is 1; it falls linearly to 0 where saliency is 0


def to_numpy_image(pixels: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` uint8 or float in [0, 1] -> ``(H, W, 3)`` float in [0, 1]."""
    image = pixels.detach().cpu().float()
    if pixels.dtype == torch.uint8:
        image = image / 255.0
    return rearrange(image, "c h w -> h w c").clamp(0, 1).numpy()


def draw_overlay(ax, image: np.ndarray, heat: np.ndarray, title: str = "", boxes: Sequence[Box] = ()) -> None:
    """The image, the heatmap over it, the maximum (:func:`capsal.maxima.peak_location`) marked with a star and
    ground-truth boxes in white."""
    ax.imshow(blend(image, heat), interpolation="nearest")
    x, y = peak_location(torch.as_tensor(heat))
    ax.plot([x], [y], marker="*", markersize=14, color="white", markeredgecolor="black")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="white", lw=1.5))
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def overlay_figure(
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    labels: Sequence[str],
    sentence: str = "",
    boxes: Sequence[Sequence[Box]] | None = None,
    columns: int = 6,
):
    """The image then one overlay per word or phrase, the sentence underneath."""
    panels = len(heats) + 1
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(2.4 * columns, 2.5 * rows + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("input", fontsize=10)
    axes[0].axis("off")
    for k, (heat, label) in enumerate(zip(heats, labels, strict=True)):
        draw_overlay(axes[k + 1], image, heat, label, boxes[k] if boxes else ())
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(sentence, y=0.02, va="bottom", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# ---- galleries: per-word overlay mosaics drawn as arrays (one matplotlib pass for the text) -------------------------
CELL = 128  # pixels of the longer side of one gallery cell
LEFT = 118  # row labels (explainer names)
HEADER = 18  # cell titles (the word) above each row of cells
GAP = 4
FOOTER = 44  # two lines of sentence under the mosaic
DPI = 100
HIT_COLORS = {True: "#1a7f37", False: "#cf222e", None: "black"}


def cell_shape(height: int, width: int, cell: int = CELL) -> tuple[int, int]:
    """``(h, w)`` of a gallery cell for an image of ``height x width``: the longer side is ``cell`` pixels."""
    scale = cell / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def mosaic_size(rows: int, columns: int, cell_hw: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` in pixels of :func:`mosaic_figure` with ``rows x columns`` cells of ``cell_hw``."""
    cell_h, cell_w = cell_hw
    return LEFT + columns * (cell_w + GAP) + GAP, rows * (HEADER + cell_h + GAP) + FOOTER


def resize(array: np.ndarray, height: int, width: int, mode: str = "bilinear") -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` float array resized to ``height x width`` (``"bilinear"`` or ``"nearest"``)."""
    if array.shape[:2] == (height, width):
        return array
    tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
    planar = tensor[None, None] if tensor.dim() == 2 else rearrange(tensor, "h w c -> 1 c h w")
    shrink = height < array.shape[0] or width < array.shape[1]
    kwargs = {"align_corners": False, "antialias": shrink} if mode == "bilinear" else {}
    out = torch.nn.functional.interpolate(planar, size=(height, width), mode=mode, **kwargs)[0]
    return (out[0] if tensor.dim() == 2 else rearrange(out, "c h w -> h w c")).numpy()


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` colours of :data:`COLORMAP` (yellow = high)."""
    from matplotlib import colormaps

    return colormaps[COLORMAP](np.clip(heat, 0.0, 1.0))[..., :3]


def blend(image: np.ndarray, heat: np.ndarray, opacity: float = OPACITY) -> np.ndarray:
    """The heatmap over the image with an opacity that rises with saliency (``opacity * heat``), so the image shows
    unchanged where saliency is 0 and stays visible where it is low; ``image`` ``(H, W, 3)`` and ``heat`` ``(H, W)``
    in [0, 1]. The explorer (:mod:`capsal.explorer`) draws its maps by the same rule."""
    weight = opacity * np.clip(heat, 0.0, 1.0)[..., None]
    return (1.0 - weight) * image + weight * heat_colors(heat)


def _rectangle(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, color, width: int = 1) -> None:
    """Outline of the inclusive pixel box ``(x0, y0, x1, y1)``, ``width`` pixels thick, clipped to the canvas."""
    h, w = canvas.shape[:2]
    x0, x1 = sorted((max(0, min(x0, w - 1)), max(0, min(x1, w - 1))))
    y0, y1 = sorted((max(0, min(y0, h - 1)), max(0, min(y1, h - 1))))
    canvas[y0 : y0 + width, x0 : x1 + 1] = color
    canvas[max(y0, y1 - width + 1) : y1 + 1, x0 : x1 + 1] = color
    canvas[y0 : y1 + 1, x0 : x0 + width] = color
    canvas[y0 : y1 + 1, max(x0, x1 - width + 1) : x1 + 1] = color


def _marker(canvas: np.ndarray, x: float, y: float, arm: int) -> None:
    """A white plus with a black outline centred on pixel ``(x, y)`` (the maximum)."""
    h, w = canvas.shape[:2]
    cx, cy = round(x), round(y)
    for color, grow in (((0.0, 0.0, 0.0), 1), ((1.0, 1.0, 1.0), 0)):
        ys = slice(max(0, cy - arm - grow), min(h, cy + arm + grow + 1))
        xs = slice(max(0, cx - arm - grow), min(w, cx + arm + grow + 1))
        canvas[ys, max(0, cx - grow) : min(w, cx + grow + 1)] = color
        canvas[max(0, cy - grow) : min(h, cy + grow + 1), xs] = color


def overlay_cell(
    image: np.ndarray,
    heat: np.ndarray | None = None,
    shape: tuple[int, int] | None = None,
    point: tuple[float, float] | None = None,
    boxes: Sequence[Box] = (),
    opacity: float = OPACITY,
) -> np.ndarray:
    """One gallery cell, ``(h, w, 3)`` float: the image (``(H, W, 3)`` in [0, 1]) with the heatmap (``(H, W)`` in
    [0, 1], same size) blended over it (:func:`blend`), ground-truth ``boxes`` in white and the maximum ``point``
    marked, all in the image's pixel coordinates; resized to ``shape`` (default :func:`cell_shape`)."""
    height, width = image.shape[:2]
    cell_h, cell_w = shape or cell_shape(height, width)
    canvas = resize(image, cell_h, cell_w, "nearest" if cell_h >= height else "bilinear").copy()
    if heat is not None:
        canvas = blend(canvas, resize(heat, cell_h, cell_w), opacity)
    sx, sy = cell_w / width, cell_h / height
    thick = max(1, round(min(sx, sy) / 2))
    for x0, y0, x1, y1 in boxes:
        _rectangle(canvas, int(x0 * sx), int(y0 * sy), int((x1 + 1) * sx) - 1, int((y1 + 1) * sy) - 1, 1.0, thick)
    if point is not None:
        _marker(canvas, (point[0] + 0.5) * sx - 0.5, (point[1] + 0.5) * sy - 0.5, max(3, min(cell_h, cell_w) // 20))
    return np.clip(canvas, 0.0, 1.0)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a matplotlib figure to an ``(H, W, 3)`` uint8 array (no pyplot, no window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _fit_text(text: str, width_px: float, lines: int = 2, fontsize: float = 10) -> str:
    """``text`` wrapped to ``width_px`` at ``fontsize`` points (DejaVu Sans), cut with "[...]" after ``lines``."""
    import textwrap

    chars = max(8, int(width_px / (0.72 * fontsize * DPI / 100)))
    wrapped = textwrap.wrap(text, chars) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], textwrap.shorten(" ".join(wrapped[lines - 1 :]), chars)]
    return "\n".join(wrapped)


@functools.lru_cache(maxsize=8)
def _font(size: int, bold: bool = False):
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels, for PIL."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size)


def _wrap(draw, text: str, font, width: float, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of at most ``width`` pixels; what does not fit ends in "..."."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words or (out and draw.textlength(out[-1], font=font) > width):
        last = out[-1] if out else ""
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        out[-1:] = [last.rstrip() + "..."]
    return out or [""]


def mosaic_figure(
    cells: Sequence[Sequence[np.ndarray]],
    titles: Sequence[Sequence[str]],
    row_labels: Sequence[str],
    sentence: str = "",
    columns: int | None = None,
    title_colors: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """A gallery figure as an ``(H, W, 3)`` uint8 array of :func:`mosaic_size`: one row of equally sized cells per
    explainer (``row_labels`` on the left), each cell titled (``titles``, coloured by ``title_colors``), the sentence
    underneath in up to two lines. ``columns`` (default: the longest row) fixes the width, so the figures of one
    sample line up. Drawn with numpy and PIL (a few milliseconds; a matplotlib figure takes ~0.1 s)."""
    from PIL import Image, ImageDraw

    rows = len(cells)
    columns = columns or max((len(r) for r in cells), default=1)
    cell_h, cell_w = next((c.shape[:2] for r in cells for c in r), (CELL, CELL))
    width, height = mosaic_size(rows, columns, (cell_h, cell_w))
    canvas = np.ones((height, width, 3))
    for r, row in enumerate(cells):
        top = r * (HEADER + cell_h + GAP) + HEADER
        for c, cell in enumerate(row[:columns]):
            left = LEFT + GAP + c * (cell_w + GAP)
            canvas[top : top + cell_h, left : left + cell_w] = cell
    image = Image.fromarray(to_uint8(canvas))
    draw = ImageDraw.Draw(image)
    label_font, title_font, sentence_font = _font(12, bold=True), _font(11), _font(14)
    for r, label in enumerate(row_labels):
        top = r * (HEADER + cell_h + GAP) + HEADER
        (text,) = _wrap(draw, label, label_font, LEFT - 2 * GAP, 1)
        draw.text((GAP, top + cell_h / 2), text, fill="black", font=label_font, anchor="lm")
        for c, title in enumerate(titles[r][:columns]):
            left = LEFT + GAP + c * (cell_w + GAP)
            (text,) = _wrap(draw, title, title_font, cell_w, 1)
            color = title_colors[r][c] if title_colors else "black"
            draw.text((left + cell_w / 2, top - 3), text, fill=color, font=title_font, anchor="md")
    text = "\n".join(_wrap(draw, sentence, sentence_font, width - 2 * GAP, 2))
    draw.multiline_text((GAP, height - FOOTER / 2), text, fill="black", font=sentence_font, anchor="lm", spacing=2)
    return np.asarray(image).copy()


# ---- capsal-explain's figure: word panels wrapped into rows, explainer blocks, pages ---------------------------------
PANEL = 180  # pixels of the longer side of every capsal-explain panel, whatever the sentence's length
FIGURE_WIDTH = 1600  # a figure is at most this wide: a row holds as many panels as fit
PAGE_ROWS = 16  # rows of panels per PNG; a longer explanation continues in saliency-2.png, saliency-3.png, ...
SENTENCE_LINES = 12  # the sentence on top wraps into at most this many lines (all of it is in summary.json)
LINE = 18  # pixels per line of the sentence


@dataclass(frozen=True)
class PanelBox:
    """Where one word's (or phrase's) panel of one explainer lies: ``page`` (0 = saliency.png) and its image's pixel
    box ``(x0, y0, x1, y1)``, end exclusive."""

    block: int
    index: int
    label: str
    page: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class PanelRow:
    """One row of panels: explainer ``block``, panels ``first`` to ``stop`` (exclusive), on ``page`` at ``top``."""

    block: int
    first: int
    stop: int
    page: int
    top: int


@dataclass
class PanelLayout:
    """The layout of :func:`panel_figures`, computed before any pixel is drawn (tests read it)."""

    columns: int  # panels per row
    cell_hw: tuple[int, int]
    sizes: list[tuple[int, int]]  # (width, height) of each page
    header: int  # pixels above the first row of every page: the input and the sentence
    sentence: list[str]  # the sentence's lines
    rows: list[PanelRow]
    panels: list[PanelBox]


def panel_columns(cell_w: int, max_width: int = FIGURE_WIDTH) -> int:
    """How many panels of ``cell_w`` pixels one row holds in a figure at most ``max_width`` wide."""
    return max(1, (max_width - LEFT - GAP) // (cell_w + GAP))


def panel_layout(
    labels: Sequence[str],
    blocks: Sequence[str],
    image_hw: tuple[int, int],
    sentence: str = "",
    panel: int = PANEL,
    max_width: int = FIGURE_WIDTH,
    page_rows: int = PAGE_ROWS,
) -> PanelLayout:
    """Where :func:`panel_figures` draws each panel: every panel is ``panel`` pixels on its long side (the image's
    aspect kept); each explainer's panels, in sentence order, wrap into rows of :func:`panel_columns`; the blocks
    follow one another, and every ``page_rows`` rows start a new page, each page headed by the input and the sentence
    (wrapped, at most :data:`SENTENCE_LINES` lines). So a page is at most ``max_width`` wide and ``header + page_rows``
    rows high, whatever the sentence's length."""
    from PIL import Image, ImageDraw

    cell_h, cell_w = cell_shape(*image_hw, panel)
    columns = panel_columns(cell_w, max_width)
    shown = max(1, min(columns, len(labels)))
    width = max(LEFT + GAP + shown * (cell_w + GAP), LEFT + 2 * GAP + cell_w + 360)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(draw, sentence, _font(14), width - LEFT - cell_w - 3 * GAP, SENTENCE_LINES) if sentence else []
    header = max(HEADER + cell_h, len(lines) * LINE) + 2 * GAP
    row_h = HEADER + cell_h + GAP
    rows, panels = [], []
    spans = [(b, k, min(k + columns, len(labels))) for b in range(len(blocks)) for k in range(0, len(labels), columns)]
    for n, (block, first, stop) in enumerate(spans):
        page, top = n // page_rows, header + (n % page_rows) * row_h
        rows.append(PanelRow(block, first, stop, page, top))
        for k in range(first, stop):
            left = LEFT + GAP + (k - first) * (cell_w + GAP)
            box = (left, top + HEADER, left + cell_w, top + HEADER + cell_h)
            panels.append(PanelBox(block, k, labels[k], page, box))
    pages = max(1, math.ceil(len(spans) / page_rows))
    sizes = [(width, header + min(page_rows, len(spans) - p * page_rows) * row_h + GAP) for p in range(pages)]
    return PanelLayout(columns, (cell_h, cell_w), sizes, header, lines, rows, panels)


def panel_figures(
    image: np.ndarray,
    heats: Mapping[str, Sequence[np.ndarray]],
    labels: Sequence[str],
    sentence: str = "",
    boxes: Sequence[Sequence[Box]] | None = None,
    unit: str = "words",
) -> tuple[list[np.ndarray], PanelLayout]:
    """capsal-explain's figure, one uint8 ``(H, W, 3)`` array per page (:func:`panel_layout`): per explainer (the
    keys of ``heats``, each ``(H, W)`` maps in [0, 1] at the image's size, one per label) a block of rows, each row
    labelled with the explainer and its first and last ``unit``; per panel the map over the image (:func:`blend`),
    its maximum marked and the label's ground-truth ``boxes`` in white, the label above it. Every page starts with the
    input and the sentence, wrapped."""
    from PIL import Image, ImageDraw

    names = list(heats)
    layout = panel_layout(labels, names, image.shape[:2], sentence)
    (cell_h, cell_w), x0 = layout.cell_hw, LEFT + GAP
    canvases = [np.ones((h, w, 3)) for w, h in layout.sizes]
    for canvas in canvases:
        canvas[HEADER + GAP : HEADER + GAP + cell_h, x0 : x0 + cell_w] = overlay_cell(image, None, layout.cell_hw)
    for p in layout.panels:
        heat = heats[names[p.block]][p.index]
        point = peak_location(torch.as_tensor(heat))
        cell = overlay_cell(image, heat, layout.cell_hw, point, boxes[p.index] if boxes else ())
        left, top, right, bottom = p.box
        canvases[p.page][top:bottom, left:right] = cell
    pages = [Image.fromarray(to_uint8(canvas)) for canvas in canvases]
    draws = [ImageDraw.Draw(page) for page in pages]
    label_font, title_font, sentence_font, small = _font(12, bold=True), _font(13), _font(14), _font(11)
    for k, draw in enumerate(draws):
        page = f" ({k + 1}/{len(pages)})" if len(pages) > 1 else ""
        draw.text((GAP, GAP + HEADER + cell_h / 2), f"input{page}", fill="black", font=label_font, anchor="lm")
        draw.text((x0 + cell_w / 2, GAP + HEADER - 3), "input", fill="black", font=title_font, anchor="md")
        for line, text in enumerate(layout.sentence):
            draw.text((x0 + cell_w + 2 * GAP, GAP + line * LINE), text, fill="black", font=sentence_font)
    for row in layout.rows:
        draw, middle = draws[row.page], row.top + HEADER + cell_h / 2
        if row.first == 0:  # a rule above each explainer's block
            draw.line([(GAP, row.top), (layout.sizes[row.page][0] - GAP, row.top)], fill="#bbbbbb", width=1)
        (name,) = _wrap(draw, names[row.block], label_font, LEFT - 2 * GAP, 1)
        draw.text((GAP, middle - 2), name, fill="black", font=label_font, anchor="ld")
        span = f"{unit} {row.first + 1}-{row.stop}" if row.stop - row.first > 1 else f"{unit[:-1]} {row.stop}"
        draw.text((GAP, middle + 2), span, fill="black", font=small, anchor="la")
    for p in layout.panels:
        (text,) = _wrap(draws[p.page], p.label, title_font, cell_w, 1)
        draws[p.page].text(((p.box[0] + p.box[2]) / 2, p.box[1] - 3), text, fill="black", font=title_font, anchor="md")
    return [np.asarray(page).copy() for page in pages], layout


def page_paths(path: str | Path, pages: int) -> list[Path]:
    """``saliency.png``, then ``saliency-2.png``, ``saliency-3.png``... for the further pages of one figure."""
    path = Path(path)
    return [path] + [path.with_name(f"{path.stem}-{k}{path.suffix}") for k in range(2, pages + 1)]


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as a PNG (parent folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)  # fast; the figures are mostly flat colour
    return path


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gallery_html(epochs: Sequence[dict], title: str = "capsal saliency gallery") -> str:
    """A self-contained HTML page (relative image paths, inline CSS, no scripts) showing gallery figures.

    ``epochs``: records ``{"epoch", "step", "metrics": {name: value}, "figures": [{"sample", "sample_id", "kind",
    "sentence", "png", "strip" (or None)}], "explorer" (optional)}``, shown newest epoch first, one card per
    sample; ``explorer``, the epoch's interactive page, is linked under the epoch's heading.
    """
    from html import escape

    css = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}"
        "h2{border-bottom:1px solid #ccc;padding-bottom:.2em}"
        ".samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:14px}"
        ".sample{border:1px solid #ddd;border-radius:6px;padding:8px}"
        "figure{margin:0 0 10px 0}img{max-width:100%;height:auto;display:block}"
        "figcaption{font-size:.9em;margin-top:3px}.kind{font-weight:bold}"
        "table.metrics{border-collapse:collapse;margin-bottom:1em}"
        "table.metrics td,table.metrics th{border:1px solid #ccc;padding:2px 8px;font-size:.9em}"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{css}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    for record in sorted(epochs, key=lambda r: r["epoch"], reverse=True):
        parts.append(f'<section class="epoch" id="epoch-{record["epoch"]}">')
        parts.append(f"<h2>Epoch {record['epoch']} (step {record['step']})</h2>")
        if record.get("explorer"):
            parts.append(
                f'<p><a class="explorer" href="{escape(record["explorer"])}">explorer</a>: point at a word to see '
                "its map (offline, in this browser)</p>"
            )
        metrics = record.get("metrics") or {}
        if metrics:
            parts.append('<table class="metrics"><tr><th>metric</th><th>value</th></tr>')
            parts += [f"<tr><td>{escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items())]
            parts.append("</table>")
        parts.append('<div class="samples">')
        by_sample: dict[int, list[dict]] = {}
        for figure in record["figures"]:
            by_sample.setdefault(figure["sample"], []).append(figure)
        for sample, figures in sorted(by_sample.items()):
            parts.append(f'<div class="sample"><h3>sample {sample}: {escape(str(figures[0]["sample_id"]))}</h3>')
            for figure in figures:
                sentence = escape(figure["sentence"])
                for key in ("png", "strip"):
                    if figure.get(key):
                        alt = f"{figure['kind']} {'saliency' if key == 'png' else 'temporal strip'}: {sentence}"
                        parts.append(
                            f'<figure><img src="{escape(figure[key])}" alt="{alt}">'
                            f'<figcaption><span class="kind">{escape(figure["kind"])}</span>: {sentence}'
                            "</figcaption></figure>"
                        )
            parts.append("</div>")
        parts.append("</div></section>")
    if not epochs:
        parts.append("<p>No validation epoch has been explained yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- video figures (paper Fig. 5), drawn as arrays ------------------------------------------------------------------
WORD_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
STRIP_LABEL = 110  # pixels for the word labels left of the strip
STRIP_ROW = 18  # pixels per word row of the strip
FRAME_CELL = 112  # long side of each most-salient-frame cell
VIDEO_WIDTH = 600  # the figure's width: the HTML gallery's column, so it shows at its own size


@dataclass
class VideoPanel:
    """What a video panel shows for each word (or phrase): the frame under it and the point marked there."""

    labels: list[str]
    frames: list[int]  # the most salient frame of each label
    points: list[tuple[int, int] | None]  # the maximum of its spatial map in that frame, frame pixels (None: no map)
    image: np.ndarray  # uint8 (H, W, 3)


def video_panel(
    frames: Sequence[np.ndarray] | Mapping[int, np.ndarray],
    temporal: np.ndarray,
    labels: Sequence[str],
    maps: np.ndarray | None = None,
    boxes: Sequence[Sequence[Box]] | None = None,
    hits: Sequence[bool | None] | None = None,
    title: str = "",
    width: int = VIDEO_WIDTH,
) -> VideoPanel:
    """Fig. 5 for one sentence under one explainer, as an ``(H, W, 3)`` uint8 array of ``width`` pixels.

    On top, per label (a word or a phrase) its temporal saliency ``temporal`` ``(n, T)`` in [0, 1] as grey levels over
    the frames (darker = more salient), the most salient frame (:func:`capsal.maxima.peak_frame`) outlined in the
    label's colour. Below, per label that frame (``frames[t]``: ``(H, W, 3)`` in [0, 1]; only the shown ones are read)
    with its spatial map ``maps[k]`` (``(H, W)`` in [0, 1], the label's map in that frame) over it, the maximum marked,
    ground-truth ``boxes[k]`` in white, framed in the label's colour and titled "label @ frame" (with a tick or cross
    when ``hits[k]`` is known). Drawn with numpy and PIL."""
    from PIL import Image, ImageDraw

    n, length = temporal.shape
    best = [peak_frame(torch.as_tensor(row)) for row in temporal]
    points = [peak_location(torch.as_tensor(maps[k])) if maps is not None else None for k in range(n)]
    cell_w = max(4, (width - STRIP_LABEL - 2 * GAP) // max(1, length))
    frame_h, frame_w = cell_shape(*frames[best[0]].shape[:2], FRAME_CELL) if n else (FRAME_CELL, FRAME_CELL)
    per_row = max(1, (width - GAP) // (frame_w + GAP))
    title_h, axis_h, caption_h = (22 if title else 0), 18, 18
    strip_top = title_h + GAP
    frames_top = strip_top + n * STRIP_ROW + axis_h + GAP
    rows = math.ceil(n / per_row)
    height = frames_top + rows * (caption_h + frame_h + 2 * GAP) + GAP
    canvas = np.ones((height, width, 3))
    colors = [_rgb(WORD_COLORS[k % len(WORD_COLORS)]) for k in range(n)]
    for k in range(n):
        top = strip_top + k * STRIP_ROW
        grey = np.repeat(1.0 - np.clip(temporal[k], 0.0, 1.0), cell_w)
        canvas[top + 1 : top + STRIP_ROW - 1, STRIP_LABEL : STRIP_LABEL + grey.size] = grey[None, :, None]
        left = STRIP_LABEL + best[k] * cell_w
        _rectangle(canvas, left, top, left + cell_w - 1, top + STRIP_ROW - 1, colors[k], 2)
    cells = []
    for k in range(n):
        cell = overlay_cell(
            frames[best[k]], None if maps is None else maps[k], (frame_h, frame_w), points[k], boxes[k] if boxes else ()
        )
        _rectangle(cell, 0, 0, frame_w - 1, frame_h - 1, colors[k], 3)
        top = frames_top + (k // per_row) * (caption_h + frame_h + 2 * GAP) + caption_h
        left = GAP + (k % per_row) * (frame_w + GAP)
        canvas[top : top + frame_h, left : left + frame_w] = cell
        cells.append((left, top))
    image = Image.fromarray(to_uint8(canvas))
    draw = ImageDraw.Draw(image)
    label_font, small, title_font = _font(12, bold=True), _font(10), _font(13, bold=True)
    if title:
        (text,) = _wrap(draw, title, title_font, width - 2 * GAP, 1)
        draw.text((GAP, title_h / 2 + 2), text, fill="black", font=title_font, anchor="lm")
    for k, label in enumerate(labels):
        (text,) = _wrap(draw, label, label_font, STRIP_LABEL - 2 * GAP, 1)
        middle = strip_top + k * STRIP_ROW + STRIP_ROW / 2
        draw.text((STRIP_LABEL - GAP, middle), text, fill=colors_hex(k), font=label_font, anchor="rm")
    axis_y = strip_top + n * STRIP_ROW + 2
    for t in range(0, length, 5 if length > 10 else 1):
        draw.text((STRIP_LABEL + (t + 0.5) * cell_w, axis_y), str(t), fill="black", font=small, anchor="mt")
    draw.text((STRIP_LABEL - GAP, axis_y), "frame", fill="black", font=small, anchor="rt")
    for k, (left, top) in enumerate(cells):
        mark = {True: " \u2713", False: " \u2717"}.get(hits[k] if hits else None, "")
        (text,) = _wrap(draw, f"{labels[k]} @ {best[k]}{mark}", label_font, frame_w, 1)
        draw.text((left + frame_w / 2, top - 3), text, fill=colors_hex(k), font=label_font, anchor="md")
    return VideoPanel(list(labels), best, points, np.asarray(image).copy())


def colors_hex(k: int) -> str:
    return WORD_COLORS[k % len(WORD_COLORS)]


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(float(c) for c in to_rgb(color))  # type: ignore[return-value]


def stack_panels(panels: Sequence[np.ndarray], title: str = "", lines: int = 2) -> np.ndarray:
    """Panels of one width stacked top to bottom under a title wrapped into up to ``lines`` lines, as one uint8
    array."""
    from PIL import Image, ImageDraw

    width = max(p.shape[1] for p in panels)
    wrapped = _wrap(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, _font(14), width - 2 * GAP, lines)
    header = max(FOOTER, len(wrapped) * LINE + 2 * GAP) if title else 0
    height = header + sum(p.shape[0] for p in panels)
    canvas = np.full((height, width, 3), 255, np.uint8)
    top = header
    for panel in panels:
        canvas[top : top + panel.shape[0], : panel.shape[1]] = panel
        top += panel.shape[0]
    if not title:
        return canvas
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    text = "\n".join(wrapped)
    draw.multiline_text((GAP, header / 2), text, fill="black", font=_font(14), anchor="lm", spacing=2)
    return np.asarray(image).copy()
