"""``explorer.html``: one self-contained page to point at a word and see its map over the full-size image (or scrub a
clip's frames), flipping between explainers; it works offline in any browser, with no server and no network.

One writer serves ``capsal-explain`` (one image or clip) and ``capsal-eval`` (every sample of a split, each phrase
with its hit or miss and its mass inside its boxes, filtered and sorted in the page). Everything is inlined: the
frames as JPEG data URIs, each map as base64 uint8 at grid resolution (upsampled on a canvas by the browser), a
256-entry colour table of :data:`capsal.viz.COLORMAP`, a few lines of vanilla JavaScript. A Content-Security-Policy
forbids every request, so the page cannot reach the network even by mistake.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange

from capsal.maxima import peak_frames, peak_locations
from capsal.types import Box, Sample
from capsal.viz import OPACITY, heat_colors

if TYPE_CHECKING:
    from capsal.explainers.saliency import Saliency

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
MAX_SIDE = 720  # frames larger than this (pixels, longer side) are shrunk to keep the file small
JPEG_QUALITY = 88
SAMPLES_PER_PAGE = (
    50  # an evaluation's explorer: at most this many samples per file (explorer.html, explorer-2.html...)
)
MAX_RUN = 8  # labels a selection in the page spans at most: a sentence of n labels brings about 7n run maps


@dataclass
class ExplorerMaps:
    """One explainer's maps at grid resolution, values in [0, 1], one row per label (word or phrase), then one per
    run of ``runs``.

    ``spatial`` ``(P, T, h, w)``: the map inside each frame (an image is one frame; None: a video explainer with no
    in-frame maps). ``temporal`` ``(P, T)``: a video's saliency over its frames (None for an image). ``runs``: label
    ranges ``[a, b)`` a reader may select in the page (shift-click or drag across the words), whose maps follow the
    labels' rows in this order."""

    spatial: np.ndarray | None
    temporal: np.ndarray | None = None
    runs: Sequence[tuple[int, int]] = ()


@dataclass
class ExplorerSample:
    """One image or clip of the page: ``frames`` uint8 ``(T, H, W, 3)``, ``labels`` its words or phrases,
    ``explainers`` their maps by name, ``boxes`` each label's ground-truth boxes in frame pixels (inclusive
    ``x0, y0, x1, y1``), drawn on every frame; a clip whose objects move gives ``frame_boxes`` instead, each label's
    boxes by frame index, drawn on their frame only. An evaluation adds per label its caption and category and, per
    explainer, the hit (None: not scored) and the mass inside the boxes, which the page filters and sorts by."""

    frames: np.ndarray
    labels: Sequence[str]
    explainers: Mapping[str, ExplorerMaps]
    boxes: Sequence[Sequence[Box]] | None = None
    title: str = ""
    sample_id: str = ""
    captions: Sequence[str] = ()
    categories: Sequence[str | None] | None = None
    hits: Mapping[str, Sequence[bool | None]] = field(default_factory=dict)
    mass: Mapping[str, Sequence[float | None]] = field(default_factory=dict)
    frame_boxes: Sequence[Mapping[int, Sequence[Box]]] | None = None


def saliency_maps(saliency: Saliency, row: int, spans: Sequence[tuple[int, int]]) -> ExplorerMaps:
    """Row ``row`` of ``saliency`` as the explorer draws it, at grid resolution: Eq. 9 of each label's word span
    ``(start, end)`` and, as ``runs``, of every run of 2 to :data:`MAX_RUN` labels that follow each other in the
    sentence (a phrase selected in the page is Eq. 9 of its words, as everywhere in capsal: their losses summed, then
    scaled)."""
    adjacent = [spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1)]
    runs = [
        (a, b)
        for a in range(len(spans))
        for b in range(a + 2, min(a + MAX_RUN, len(spans)) + 1)
        if all(adjacent[a : b - 1])
    ]
    words = [(row, start, end) for start, end in spans] + [(row, spans[a][0], spans[b - 1][1]) for a, b in runs]
    h, w = saliency.layout.grid_size
    values = saliency.phrase_maps(words).float().cpu()
    if not saliency.layout.is_video:  # tiles and a thumbnail (Idefics3) combine onto one grid
        grid = saliency.layout.on_grid(values)
        return ExplorerMaps(rearrange(grid, "p (h w) -> p 1 h w", h=h, w=w).numpy(), runs=runs)
    regions = saliency.phrase_region_maps(words)
    spatial = None if regions is None else rearrange(regions.float().cpu(), "p t (h w) -> p t h w", h=h, w=w)
    return ExplorerMaps(None if spatial is None else spatial.numpy(), values.numpy(), runs=runs)


def write_explorer(
    path: str | Path,
    frames: np.ndarray,
    labels: Sequence[str],
    explainers: Mapping[str, ExplorerMaps],
    boxes: Sequence[Sequence[Box]] | None = None,
    title: str = "",
) -> Path:
    """Write ``explorer.html`` for one image or clip: ``frames`` uint8 ``(T, H, W, 3)`` (an image: ``T = 1``),
    ``labels`` the words or phrases, ``explainers`` their maps by name (the first is shown first), ``boxes`` each
    label's ground-truth boxes in frame pixels (inclusive ``x0, y0, x1, y1``)."""
    return write_samples(path, [ExplorerSample(frames, labels, explainers, boxes, title)], title)


def write_samples(
    path: str | Path, samples: Sequence[ExplorerSample], title: str = "", pages: Sequence[str] = ()
) -> Path:
    """Write one page of ``samples`` (the first shown first); ``pages`` names the sibling files of the same
    evaluation, linked from the page."""
    if not samples:
        raise ValueError("the explorer needs at least one sample")
    data = {
        "title": title,
        "opacity": OPACITY,
        "lut": _b64(np.round(heat_colors(np.linspace(0.0, 1.0, 256)) * 255).astype(np.uint8)),
        "pages": list(pages),
        "table": any(sample.hits for sample in samples),
        "samples": [_sample(sample) for sample in samples],
    }
    page = PAGE.format(
        csp=escape(CSP),
        title=escape(title or "capsal explorer"),
        style=STYLE,
        data=json.dumps(data, separators=(",", ":")).replace("<", "\\u003c"),  # no "</script>" or "<!--" inside
        script=SCRIPT,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def page_name(index: int) -> str:
    """The file of page ``index`` (0-based) of an evaluation's explorer: ``explorer.html``, ``explorer-2.html``..."""
    return "explorer.html" if index == 0 else f"explorer-{index + 1}.html"


def write_pages(
    folder: str | Path, samples: Iterable[ExplorerSample], count: int, title: str = "", per_page: int = SAMPLES_PER_PAGE
) -> list[Path]:
    """Write ``count`` samples (consumed lazily, so one page's frames are in memory at a time) in files of at most
    ``per_page`` samples each, in the order given; returns the files."""
    names = [page_name(k) for k in range(max(1, -(-count // per_page)))]
    written = []
    for k, chunk in enumerate(_chunks(iter(samples), per_page)):
        written.append(write_samples(Path(folder) / names[k], chunk, title, names))
    return written


def evaluation_samples(samples: Iterable[Sample], records: Sequence[dict]) -> Iterator[ExplorerSample]:
    """The explorer's view of an evaluation: each sample of ``samples`` (the split, in its order) that has scored
    phrases, each phrase (a caption's span) with every explainer's map, hit and mass inside its boxes, taken from
    the evaluator's records (those with ``maps``: phrases cut at the model's word limit were not scored), and its
    ground-truth boxes (a clip's per frame). Every explainer records a sample's phrases in the same order; a caption
    given twice brings its phrases twice."""
    by_sample: dict[str, dict[int, dict]] = {}
    seen: dict[tuple[str, str], int] = {}  # the n-th record of a sample and explainer is the sample's n-th phrase
    for record in records:
        index = seen.setdefault((record["sample_id"], record["explainer"]), 0)
        seen[record["sample_id"], record["explainer"]] += 1
        if record.get("maps") is None:
            continue
        phrase = by_sample.setdefault(record["sample_id"], {}).setdefault(index, {"record": record, "maps": {}})
        phrase["maps"][record["explainer"]] = record
    names = list(dict.fromkeys(record["explainer"] for record in records if record.get("maps") is not None))
    for sample in samples:
        phrases = [p for p in by_sample.get(sample.sample_id, {}).values() if len(p["maps"]) == len(names)]
        if not phrases:
            continue
        firsts = [p["record"] for p in phrases]
        spans = {(c.text, p.start, p.end): p for c in sample.captions for p in c.phrases}
        found = [spans.get(_key(r)) for r in firsts]
        explainers = {}
        for name in names:
            maps = [p["maps"][name]["maps"] for p in phrases]
            spatial = None if maps[0].spatial is None else np.stack([m.spatial for m in maps]).astype(np.float32)
            temporal = None if maps[0].temporal is None else np.stack([m.temporal for m in maps]).astype(np.float32)
            explainers[name] = ExplorerMaps(spatial, temporal)
        video = explainers[names[0]].temporal is not None
        yield ExplorerSample(
            frames=rearrange(sample.pixels, "t c h w -> t h w c").numpy(),
            labels=[r["phrase"] for r in firsts],
            explainers=explainers,
            boxes=None if video else [list(p.boxes) if p else [] for p in found],
            frame_boxes=[dict(p.frame_boxes) if p else {} for p in found] if video else None,
            sample_id=sample.sample_id,
            captions=list(dict.fromkeys(r["caption"] for r in firsts)),
            categories=[r["category"] for r in firsts],
            hits={name: [p["maps"][name]["hit"] for p in phrases] for name in names},
            mass={name: [p["maps"][name].get("mass_inside") for p in phrases] for name in names},
        )


def scored_sample_count(records: Sequence[dict]) -> int:
    """How many samples :func:`evaluation_samples` yields from ``records`` (when every sample is in the split)."""
    return len({record["sample_id"] for record in records if record.get("maps") is not None})


def _key(record: dict) -> tuple:
    return (record["caption"], *record["span"])


def read_explorer(path: str | Path) -> dict:
    """The data a written ``explorer.html`` carries (its samples with their labels, frames, maps, hits...), for
    tools and tests that check it."""
    found = re.search(r'<script id="capsal-data" type="application/json">(.*?)</script>', Path(path).read_text(), re.S)
    if found is None:
        raise ValueError(f"{path} is not an explorer written by capsal: it has no capsal-data block")
    return json.loads(found.group(1))


def _chunks(items: Iterator[ExplorerSample], size: int) -> Iterator[list[ExplorerSample]]:
    chunk: list[ExplorerSample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sample(sample: ExplorerSample) -> dict:
    """One sample's part of the page data: frames shrunk to :data:`MAX_SIDE`, boxes with them, maps quantised."""
    if not sample.explainers:
        raise ValueError("the explorer needs at least one explainer's maps")
    frames = sample.frames
    height, width = frames.shape[1:3]
    scale = min(1.0, MAX_SIDE / max(height, width))
    count = len(sample.labels)
    boxes = sample.boxes
    return {
        "id": sample.sample_id,
        "title": sample.title,
        "labels": list(sample.labels),
        "captions": list(sample.captions),
        "categories": list(sample.categories) if sample.categories is not None else None,
        "frames": [_jpeg(frame, scale) for frame in frames],
        "size": [round(width * scale), round(height * scale)],
        "boxes": [[_scale_box(box, scale) for box in label] for label in boxes] if boxes else None,
        "frame_boxes": _frame_boxes(sample.frame_boxes, len(frames), scale) if sample.frame_boxes else None,
        "video": any(maps.temporal is not None for maps in sample.explainers.values()),
        "explainers": [_explainer(name, maps, count) for name, maps in sample.explainers.items()],
        "hits": {name: list(values) for name, values in sample.hits.items()},
        "mass": {
            name: [None if v is None else round(float(v), 4) for v in values] for name, values in sample.mass.items()
        },
    }


def _explainer(name: str, maps: ExplorerMaps, labels: int) -> dict:
    """One explainer's arrays for the page, with the peaks found by :mod:`capsal.maxima` (one rule everywhere)."""
    entry: dict = {"name": name, "grid": None, "spatial": None, "peaks": None, "temporal": None, "best": None}
    entry["runs"] = [[int(a), int(b)] for a, b in maps.runs]
    count = labels + len(maps.runs)
    for values in (maps.spatial, maps.temporal):
        if values is not None and len(values) != count:
            raise ValueError(f"{name}: {len(values)} maps for {labels} labels and {len(maps.runs)} runs")
    if maps.spatial is not None:
        spatial = torch.as_tensor(np.asarray(maps.spatial, dtype=np.float32))
        entry["grid"] = list(spatial.shape[-2:])
        peaks = peak_locations(rearrange(spatial, "p t h w -> (p t) h w"))
        entry["peaks"] = rearrange(peaks, "(p t) xy -> p t xy", p=count).tolist()
        entry["spatial"] = [_b64(_quantise(label)) for label in spatial.numpy()]
    if maps.temporal is not None:
        temporal = torch.as_tensor(np.asarray(maps.temporal, dtype=np.float32))
        entry["best"] = peak_frames(temporal).tolist()
        entry["temporal"] = [_b64(_quantise(label)) for label in temporal.numpy()]
    return entry


def _frame_boxes(labels: Sequence[Mapping[int, Sequence[Box]]], frames: int, scale: float) -> list[list[list]]:
    """Per label, per frame (every one of the clip's, in order) the boxes drawn on it, scaled with the frames."""
    return [[[_scale_box(box, scale) for box in label.get(t, ())] for t in range(frames)] for label in labels]


def _scale_box(box: Box, scale: float) -> list[int]:
    """An inclusive pixel box on a frame shrunk by ``scale``: its first and last pixels, not its corners, scaled."""
    x0, y0, x1, y1 = box
    return [round(x0 * scale), round(y0 * scale), round((x1 + 1) * scale) - 1, round((y1 + 1) * scale) - 1]


def _quantise(values: np.ndarray) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _jpeg(frame: np.ndarray, scale: float) -> str:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title><style>{style}</style></head><body>
<h1>{title}</h1>
<nav id="pages"></nav>
<div id="table" hidden><p class="controls">
<label>category <select id="category"><option value="">all</option></select></label>
<label>pointing <select id="hit"><option value="">all</option><option value="hit">hit</option>
<option value="miss">miss</option></select></label>
<label>sort <select id="sort"><option value="order">sample order</option>
<option value="mass-asc">mass in box, lowest first</option><option value="mass-desc">mass in box, highest first</option>
</select></label>
<span class="hint">&uarr; &darr; move through the samples; the explainer below is the one scored</span></p>
<div id="rows-box"><table id="rows"><thead><tr><th>sample</th><th>phrase</th><th>category</th><th>pointing</th>
<th>mass in box</th></tr></thead><tbody></tbody></table></div></div>
<p id="captions"></p>
<p id="words"></p>
<p class="controls"><label>explainer <select id="explainer"></select></label>
<label>opacity <input id="opacity" type="range" min="0" max="1" step="0.05"></label>
<span class="hint">hover or click a word<span id="span-hint">; shift-click or drag across words for their
phrase</span>; &larr; &rarr; move through the words</span></p>
<canvas id="view"></canvas>
<div id="video" hidden><canvas id="curve" height="48"></canvas>
<p class="controls"><label>frame <input id="frame" type="range" min="0" step="1" value="0"></label>
<output id="frame-number">0</output> <button id="jump" type="button">jump to the most salient frame</button></p></div>
<script id="capsal-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""

STYLE = (
    "body{font-family:sans-serif;margin:1.2em;color:#222}h1{font-size:1.2em}"
    "#words{font-size:1.3em;line-height:1.8}#captions{color:#555;margin:.2em 0}"
    ".word{cursor:pointer;padding:.1em .25em;border-radius:4px}.word:hover{background:#eee}"
    ".word.selected{background:#2a788e;color:#fff}"
    ".controls label{margin-right:1.2em}.hint{color:#777;font-size:.85em}"
    "#pages a{margin-right:.6em}#rows-box{max-height:14em;overflow-y:auto;border:1px solid #ddd}"
    "#rows{border-collapse:collapse;font-size:.9em;width:100%}#rows td,#rows th{padding:.15em .5em;text-align:left}"
    "#rows tbody tr{cursor:pointer}#rows tr.selected{background:#2a788e;color:#fff}.miss{color:#b3261e}"
    "canvas{display:block;max-width:100%;image-rendering:auto}"
    "#view{min-width:min(100%,480px)}#curve{margin-top:4px}"
)

# The page's whole behaviour: state (sample, word, explainer, frame), one draw() that paints the frame, the map
# (colour table and opacity rule of capsal.viz.blend), the peak (a white plus), the boxes and, for a clip, the
# temporal bar chart; for an evaluation, a table of phrases filtered and sorted, whose rows choose sample and word.
SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("capsal-data").textContent);
const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const lut = bytes(data.lut);
// span: the labels [a, b) selected together (shift-click or drag), whose map is Eq. 9 of their words; else null
const state = {sample: 0, word: 0, span: null, explainer: 0, frame: 0, opacity: data.opacity};
const names = data.samples[0].explainers.map((e) => e.name);
const view = document.getElementById("view");
const ctx = view.getContext("2d");
const small = document.createElement("canvas");
const prepared = [];

function prepare(s) {
  // a sample's frames as images and its maps as bytes, made when it is first shown
  if (!prepared[s]) {
    const sample = data.samples[s];
    const frames = sample.frames.map((src) => { const img = new Image(); img.src = src; return img; });
    const explainers = sample.explainers.map((e) => ({...e,
      spatial: e.spatial && e.spatial.map(bytes), temporal: e.temporal && e.temporal.map(bytes)}));
    prepared[s] = {frames, explainers, decoded: Promise.all(frames.map((img) => img.decode()))};
  }
  return prepared[s];
}
const sample = () => data.samples[state.sample];
const current = () => prepare(state.sample).explainers.find((e) => e.name === names[state.explainer]);
const runIndex = (e, [a, b]) => e.runs.findIndex((run) => run[0] === a && run[1] === b);
// the row of the explainer's maps shown: the word's, or the selected run's (after the labels' rows)
const row = (e) => (state.span ? sample().labels.length + runIndex(e, state.span) : state.word);
const chosen = (k) => (state.span ? state.span[0] <= k && k < state.span[1] : k === state.word);

function mapImage(e) {
  // the word's grid map in the current frame as RGBA: colour from the table, opacity rising with saliency
  const [h, w] = e.grid;
  const values = e.spatial[row(e)].subarray(state.frame * h * w, (state.frame + 1) * h * w);
  small.width = w; small.height = h;
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(w, h);
  values.forEach((v, i) => {
    pixels.data.set([lut[3 * v], lut[3 * v + 1], lut[3 * v + 2], Math.round(v * state.opacity)], 4 * i);
  });
  sctx.putImageData(pixels, 0, 0);
  return small;
}

function peak(e) {
  // the centre of the peak cell in canvas pixels, as capsal.maxima found it
  if (!e.peaks) return null;
  const [W, H] = sample().size;
  const [x, y] = e.peaks[row(e)][state.frame];
  const [h, w] = e.grid;
  return [(x + 0.5) * W / w, (y + 0.5) * H / h];
}

function boxes() {
  // the word's ground-truth boxes: those of the current frame where the clip has them per frame
  const s = sample();
  const labels = s.labels.map((_, k) => k).filter(chosen);
  const drawn = labels.flatMap((k) => (s.frame_boxes ? s.frame_boxes[k][state.frame] : (s.boxes || [])[k] || []));
  return drawn.filter((box, i) => drawn.findIndex((other) => String(other) === String(box)) === i);
}

function draw() {
  const e = current(), [W, H] = sample().size;
  if (view.width !== W || view.height !== H) { view.width = W; view.height = H; }
  ctx.drawImage(prepare(state.sample).frames[state.frame], 0, 0, W, H);
  if (e.spatial) {
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(mapImage(e), 0, 0, W, H);
    const [x, y] = peak(e);
    const arm = Math.max(4, Math.round(Math.min(W, H) / 30));
    for (const [color, width] of [["#000", 5], ["#fff", 2]]) {
      ctx.strokeStyle = color; ctx.lineWidth = width;
      ctx.beginPath(); ctx.moveTo(x - arm, y); ctx.lineTo(x + arm, y); ctx.moveTo(x, y - arm); ctx.lineTo(x, y + arm);
      ctx.stroke();
    }
  }
  for (const [x0, y0, x1, y1] of boxes()) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.strokeRect(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
  }
  if (sample().video) drawCurve(e);
  document.querySelectorAll(".word").forEach((el, k) => el.classList.toggle("selected", chosen(k)));
  document.querySelectorAll("#rows tbody tr").forEach((tr) => tr.classList.toggle("selected",
    Number(tr.dataset.sample) === state.sample && Number(tr.dataset.word) === state.word));
  const span = state.span ? state.span.join("-") : "";
  Object.assign(document.body.dataset, {sample: state.sample, word: state.word, span, explainer: e.name,
    frame: state.frame});
}

function drawCurve(e) {
  // the word's temporal saliency, a bar per frame: the current frame dark, the most salient one outlined
  const curve = document.getElementById("curve"), W = sample().size[0];
  curve.width = W;
  const c = curve.getContext("2d");
  const n = sample().frames.length, bar = W / n;
  c.clearRect(0, 0, W, curve.height);
  if (!e.temporal) return;
  e.temporal[row(e)].forEach((v, t) => {
    const height = Math.max(1, v / 255 * (curve.height - 4));
    c.fillStyle = t === state.frame ? "#21456b" : "#8ab";
    c.fillRect(t * bar + 1, curve.height - height, Math.max(1, bar - 2), height);
  });
  c.strokeStyle = "#e8a100"; c.lineWidth = 2;
  c.strokeRect(e.best[row(e)] * bar + 1, 1, Math.max(1, bar - 2), curve.height - 2);
}

function words() {
  // the sample's captions and its clickable words or phrases
  const s = sample();
  document.getElementById("captions").textContent = s.captions.join(" / ");
  const box = document.getElementById("words");
  box.replaceChildren();
  s.labels.forEach((label, k) => {
    const span = document.createElement("span");
    span.className = "word"; span.dataset.index = k;
    span.textContent = s.categories && s.categories[k] ? `${label} [${s.categories[k]}]` : label;
    span.addEventListener("mousedown", (event) => {
      event.preventDefault();  // no text selection while dragging across the words
      dragged = false;
      if (!event.shiftKey) drag = {from: k, moved: false};
    });
    span.addEventListener("mouseenter", () => {
      if (drag && k !== drag.from) {
        drag.moved = true; selectSpan(drag.from, k);
      } else if (!drag && !state.span) select(k);  // hovering shows a word, unless words are selected together
    });
    span.addEventListener("click", (event) => {
      if (event.shiftKey) selectSpan(state.word, k); else if (!dragged) select(k);
      dragged = false;
    });
    box.append(span, " ");
  });
  document.getElementById("span-hint").hidden = !current().runs.length;  // labels that are never selected together
  const video = document.getElementById("video");
  video.hidden = !s.video;
  document.getElementById("frame").max = s.frames.length - 1;
}

function show(s, k = 0) {
  // sample s with its word k; draws once its frames are decoded (the first time it is shown)
  state.sample = (s + data.samples.length) % data.samples.length;
  state.word = k; state.span = null; state.frame = 0;
  words();
  return prepare(state.sample).decoded.then(() => { if (sample().video) jump(); else draw(); });
}
function select(k) {
  state.span = null; state.word = (k + sample().labels.length) % sample().labels.length; draw();
}
function selectSpan(first, last) {
  // labels first..last (either order) together, where the page holds their run's map; else label last alone
  const span = [Math.min(first, last), Math.max(first, last) + 1];
  if (span[1] - span[0] < 2 || runIndex(current(), span) < 0) return select(last);
  state.word = first; state.span = span; draw();
}
let drag = null, dragged = false;  // a press on a word, and whether the last one moved across words
document.addEventListener("mouseup", () => { dragged = Boolean(drag && drag.moved); drag = null; });
function setExplainer(name) {
  state.explainer = Math.max(0, names.indexOf(name));
  document.getElementById("explainer").value = names[state.explainer];
  if (data.table) listRows();
  draw();
}
function setFrame(t) {
  state.frame = Math.min(sample().frames.length - 1, Math.max(0, t));
  document.getElementById("frame").value = state.frame;
  document.getElementById("frame-number").textContent = state.frame;
  draw();
}
function jump() { const e = current(); if (e.best) setFrame(e.best[row(e)]); else draw(); }

function rows() {
  // the table's phrases under the filters (category, the chosen explainer's hit or miss), in the chosen order
  const name = names[state.explainer], category = document.getElementById("category").value;
  const wanted = {"": null, hit: true, miss: false}[document.getElementById("hit").value];
  const found = [];
  data.samples.forEach((s, i) => s.labels.forEach((phrase, k) => {
    const hit = (s.hits[name] || [])[k], mass = (s.mass[name] || [])[k];
    if (category && (s.categories || [])[k] !== category) return;
    if (wanted !== null && hit !== wanted) return;
    found.push({sample: i, word: k, id: s.id, phrase, category: (s.categories || [])[k], hit, mass});
  }));
  const order = document.getElementById("sort").value;
  if (order !== "order") {
    const sign = order === "mass-asc" ? 1 : -1;
    const key = (r) => (r.mass === null || r.mass === undefined ? Infinity : sign * r.mass);
    found.sort((a, b) => key(a) - key(b));
  }
  return found;
}

function listRows() {
  const body = document.querySelector("#rows tbody");
  body.replaceChildren(...rows().map((r) => {
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, {sample: r.sample, word: r.word});
    const pointing = r.hit === true ? "hit" : r.hit === false ? "miss" : "";
    for (const text of [r.id, r.phrase, r.category || "", pointing, r.mass == null ? "" : r.mass.toFixed(3)]) {
      tr.insertCell().textContent = text;
    }
    tr.cells[3].className = pointing;
    tr.addEventListener("click", () => show(r.sample, r.word));
    return tr;
  }));
  draw();
}

const chooser = document.getElementById("explainer");
names.forEach((name) => chooser.add(new Option(name, name)));
chooser.disabled = names.length < 2;
chooser.addEventListener("change", () => setExplainer(chooser.value));
const opacity = document.getElementById("opacity");
opacity.value = state.opacity;
opacity.addEventListener("input", () => { state.opacity = Number(opacity.value); draw(); });
document.getElementById("frame").addEventListener("input", (event) => setFrame(Number(event.target.value)));
document.getElementById("jump").addEventListener("click", jump);
document.getElementById("curve").addEventListener("click", (event) => {
  setFrame(Math.floor(event.offsetX / event.target.clientWidth * sample().frames.length));
});
data.pages.forEach((name) => {
  const link = document.createElement("a");
  link.href = name; link.textContent = name;
  document.getElementById("pages").append(link);
});
if (data.table) {
  document.getElementById("table").hidden = false;
  const categories = new Set(data.samples.flatMap((s) => s.categories || []).filter((c) => c));
  const menu = document.getElementById("category");
  [...categories].sort().forEach((c) => menu.add(new Option(c, c)));
  for (const id of ["category", "hit", "sort"]) document.getElementById(id).addEventListener("change", listRows);
}
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (event.key === "ArrowRight") select(state.word + 1);
  if (event.key === "ArrowLeft") select(state.word - 1);
  if (event.key === "ArrowDown") { event.preventDefault(); show(state.sample + 1); }
  if (event.key === "ArrowUp") { event.preventDefault(); show(state.sample - 1); }
});
window.capsal = {state, select, selectSpan, show, setExplainer, setFrame, jump, rows, boxes,
  peak: () => peak(current()), map: () => Array.from(current().spatial[row(current())])};
show(0).then(() => {
  if (data.table) listRows();
  capsal.readyMs = performance.now();  // from the start of navigation to the first sample drawn
  document.body.dataset.ready = "1";
});
"""
