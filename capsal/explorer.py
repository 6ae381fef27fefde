"""``explorer.html``: one self-contained page to point at a word and see its map over the full-size image (or scrub a
clip's frames), flipping between explainers; it works offline in any browser, with no server and no network.

Everything is inlined: the frames as JPEG data URIs, each map as base64 uint8 at grid resolution (upsampled on a
canvas by the browser), a 256-entry colour table of :data:`capsal.viz.COLORMAP`, a few lines of vanilla JavaScript.
A Content-Security-Policy forbids every request, so the page cannot reach the network even by mistake.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from capsal.maxima import peak_frames, peak_locations
from capsal.types import Box
from capsal.viz import OPACITY, heat_colors

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
MAX_SIDE = 720  # frames larger than this (pixels, longer side) are shrunk to keep the file small
JPEG_QUALITY = 88


@dataclass
class ExplorerMaps:
    """One explainer's maps at grid resolution, values in [0, 1], one row per label (word or phrase).

    ``spatial`` ``(P, T, h, w)``: the map inside each frame (an image is one frame; None: a video explainer with no
    in-frame maps). ``temporal`` ``(P, T)``: a video's saliency over its frames (None for an image)."""

    spatial: np.ndarray | None
    temporal: np.ndarray | None = None


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
    if not explainers:
        raise ValueError("the explorer needs at least one explainer's maps")
    height, width = frames.shape[1:3]
    scale = min(1.0, MAX_SIDE / max(height, width))
    data = {
        "title": title,
        "labels": list(labels),
        "frames": [_jpeg(frame, scale) for frame in frames],
        "size": [round(width * scale), round(height * scale)],
        "boxes": [[_scale_box(box, scale) for box in label] for label in boxes] if boxes else None,
        "video": any(maps.temporal is not None for maps in explainers.values()),
        "opacity": OPACITY,
        "lut": _b64(np.round(heat_colors(np.linspace(0.0, 1.0, 256)) * 255).astype(np.uint8)),
        "explainers": [_explainer(name, maps, len(labels)) for name, maps in explainers.items()],
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


def read_explorer(path: str | Path) -> dict:
    """The data a written ``explorer.html`` carries (labels, frames, maps, ...), for tools and tests that check it."""
    import re

    found = re.search(r'<script id="capsal-data" type="application/json">(.*?)</script>', Path(path).read_text(), re.S)
    if found is None:
        raise ValueError(f"{path} is not an explorer written by capsal: it has no capsal-data block")
    return json.loads(found.group(1))


def _explainer(name: str, maps: ExplorerMaps, count: int) -> dict:
    """One explainer's arrays for the page, with the peaks found by :mod:`capsal.maxima` (one rule everywhere)."""
    entry: dict = {"name": name, "grid": None, "spatial": None, "peaks": None, "temporal": None, "best": None}
    if maps.spatial is not None:
        spatial = torch.as_tensor(np.asarray(maps.spatial, dtype=np.float32))
        if spatial.shape[0] != count:
            raise ValueError(f"{name}: {spatial.shape[0]} maps for {count} labels")
        entry["grid"] = list(spatial.shape[-2:])
        peaks = peak_locations(rearrange(spatial, "p t h w -> (p t) h w"))
        entry["peaks"] = rearrange(peaks, "(p t) xy -> p t xy", p=count).tolist()
        entry["spatial"] = [_b64(_quantise(label)) for label in spatial.numpy()]
    if maps.temporal is not None:
        temporal = torch.as_tensor(np.asarray(maps.temporal, dtype=np.float32))
        entry["best"] = peak_frames(temporal).tolist()
        entry["temporal"] = [_b64(_quantise(label)) for label in temporal.numpy()]
    return entry


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
<p id="words"></p>
<p class="controls"><label>explainer <select id="explainer"></select></label>
<label>opacity <input id="opacity" type="range" min="0" max="1" step="0.05"></label>
<span class="hint">hover or click a word; &larr; &rarr; move through the words</span></p>
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
    "#words{font-size:1.3em;line-height:1.8}"
    ".word{cursor:pointer;padding:.1em .25em;border-radius:4px}.word:hover{background:#eee}"
    ".word.selected{background:#2a788e;color:#fff}"
    ".controls label{margin-right:1.2em}.hint{color:#777;font-size:.85em}"
    "canvas{display:block;max-width:100%;image-rendering:auto}"
    "#view{min-width:min(100%,480px)}#curve{margin-top:4px}"
)

# The page's whole behaviour: state (word, explainer, frame), one draw() that paints the frame, the map (colour table
# and opacity rule of capsal.viz.blend), the peak (a white plus), the boxes and, for a clip, the temporal bar chart.
SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("capsal-data").textContent);
const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const lut = bytes(data.lut);
const state = {word: 0, explainer: 0, frame: 0, opacity: data.opacity};
const [W, H] = data.size;
const view = document.getElementById("view");
view.width = W; view.height = H;
const ctx = view.getContext("2d");
const frames = data.frames.map((src) => { const img = new Image(); img.src = src; return img; });
const explainers = data.explainers.map((e) => ({...e,
  spatial: e.spatial && e.spatial.map(bytes), temporal: e.temporal && e.temporal.map(bytes)}));
const small = document.createElement("canvas");

function mapImage(e) {
  // the word's grid map in the current frame as RGBA: colour from the table, opacity rising with saliency
  const [h, w] = e.grid;
  const values = e.spatial[state.word].subarray(state.frame * h * w, (state.frame + 1) * h * w);
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
  const [x, y] = e.peaks[state.word][state.frame];
  const [h, w] = e.grid;
  return [(x + 0.5) * W / w, (y + 0.5) * H / h];
}

function draw() {
  const e = explainers[state.explainer];
  ctx.drawImage(frames[state.frame], 0, 0, W, H);
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
  for (const [x0, y0, x1, y1] of (data.boxes && data.boxes[state.word]) || []) {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.strokeRect(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
  }
  if (data.video) drawCurve(e);
  document.querySelectorAll(".word").forEach((el, k) => el.classList.toggle("selected", k === state.word));
  document.body.dataset.word = state.word;
  document.body.dataset.explainer = e.name;
  document.body.dataset.frame = state.frame;
}

function drawCurve(e) {
  // the word's temporal saliency, a bar per frame: the current frame dark, the most salient one outlined
  const curve = document.getElementById("curve");
  curve.width = W;
  const c = curve.getContext("2d");
  const n = frames.length, bar = W / n;
  c.clearRect(0, 0, W, curve.height);
  if (!e.temporal) return;
  const values = e.temporal[state.word];
  values.forEach((v, t) => {
    const height = Math.max(1, v / 255 * (curve.height - 4));
    c.fillStyle = t === state.frame ? "#21456b" : "#8ab";
    c.fillRect(t * bar + 1, curve.height - height, Math.max(1, bar - 2), height);
  });
  c.strokeStyle = "#e8a100"; c.lineWidth = 2;
  c.strokeRect(e.best[state.word] * bar + 1, 1, Math.max(1, bar - 2), curve.height - 2);
}

function select(k) { state.word = (k + data.labels.length) % data.labels.length; draw(); }
function setExplainer(name) {
  state.explainer = Math.max(0, explainers.findIndex((e) => e.name === name));
  document.getElementById("explainer").value = explainers[state.explainer].name;
  draw();
}
function setFrame(t) {
  state.frame = Math.min(frames.length - 1, Math.max(0, t));
  document.getElementById("frame").value = state.frame;
  document.getElementById("frame-number").textContent = state.frame;
  draw();
}
function jump() { const e = explainers[state.explainer]; if (e.best) setFrame(e.best[state.word]); }

const words = document.getElementById("words");
data.labels.forEach((label, k) => {
  const span = document.createElement("span");
  span.className = "word"; span.textContent = label; span.dataset.index = k;
  span.addEventListener("mouseenter", () => select(k));
  span.addEventListener("click", () => select(k));
  words.append(span, " ");
});
const chooser = document.getElementById("explainer");
explainers.forEach((e) => chooser.add(new Option(e.name, e.name)));
chooser.disabled = explainers.length < 2;
chooser.addEventListener("change", () => setExplainer(chooser.value));
const opacity = document.getElementById("opacity");
opacity.value = state.opacity;
opacity.addEventListener("input", () => { state.opacity = Number(opacity.value); draw(); });
if (data.video) {
  document.getElementById("video").hidden = false;
  const scrubber = document.getElementById("frame");
  scrubber.max = frames.length - 1;
  scrubber.addEventListener("input", () => setFrame(Number(scrubber.value)));
  document.getElementById("jump").addEventListener("click", jump);
  document.getElementById("curve").addEventListener("click", (event) => {
    setFrame(Math.floor(event.offsetX / event.target.clientWidth * frames.length));
  });
}
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (event.key === "ArrowRight") select(state.word + 1);
  if (event.key === "ArrowLeft") select(state.word - 1);
});
window.capsal = {state, select, setExplainer, setFrame, jump, peak: () => peak(explainers[state.explainer])};
Promise.all(frames.map((img) => img.decode())).then(() => {
  if (data.video) jump(); else draw();
  document.body.dataset.ready = "1";
});
"""
