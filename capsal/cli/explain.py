"""``capsal-explain``: per-word saliency for one image, video or dataset sample; writes figures, arrays, JSON."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf

from capsal.checkpoints import checkpoint_datamodule, load_model, model_source
from capsal.cli.command import command
from capsal.cli.settings import ExplainSettings
from capsal.config_schema import check_config
from capsal.devices import resolve_device
from capsal.errors import UserError
from capsal.explainers import build_explainers
from capsal.explainers.saliency import Saliency
from capsal.explorer import saliency_maps, write_explorer
from capsal.maxima import peak_frames, peak_location
from capsal.types import Box, Caption, Sample
from capsal.viz import (
    SENTENCE_LINES,
    page_paths,
    panel_figures,
    save_png,
    stack_panels,
    to_numpy_image,
    video_panel,
)

log = logging.getLogger("capsal")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ExplainInput:
    """What to explain: original pixels (for display) and, for dataset samples, the ground truth."""

    pixels: torch.Tensor  # uint8 (T, 3, H, W) at the original size
    source: str
    sample: Sample | None = None


def load_input(cfg: DictConfig, model) -> ExplainInput:
    if (cfg.input is None) == (cfg.sample is None):
        raise UserError("give exactly one of input=<image or video file> or sample=<split>:<index>")
    if cfg.input is not None:
        return ExplainInput(read_media(Path(cfg.input), model), str(cfg.input))
    split, _, index = str(cfg.sample).partition(":")  # its form was checked with the config
    datamodule = checkpoint_datamodule(model, cfg.get("datamodule"))
    try:
        sample = datamodule.sample(split, int(index))
    except (IndexError, ValueError) as error:
        raise UserError(str(error)) from error
    return ExplainInput(sample.pixels, f"{split}:{index} ({sample.sample_id})", sample)


def read_media(path: Path, model) -> torch.Tensor:
    from capsal.datamodules.media import decode_video, read_image

    if path.is_dir():
        raise UserError(f"input={path} is a folder; give one image or video file")
    if not path.is_file():
        raise UserError(f"input file {path} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path)
    frames = model.input_shape[0] if model.input_shape else 26
    return decode_video(path, num_frames=frames)


def model_pixels(pixels: torch.Tensor, model) -> torch.Tensor:
    """Float ``(1, T, 3, H, W)`` at the size the model was trained on (any input size and aspect ratio), resized
    frame by frame so a large clip is never held in float at its own size."""
    if not model.input_shape or tuple(pixels.shape[-2:]) == tuple(model.input_shape[1:]):
        return (pixels.float() / 255.0)[None]
    size = tuple(int(v) for v in model.input_shape[1:])
    frames = [
        F.interpolate(frame[None].float() / 255.0, size=size, mode="bilinear", antialias=True, align_corners=False)
        for frame in pixels
    ]
    return torch.cat(frames)[None]


def choose_sentence(cfg: DictConfig, given: ExplainInput) -> tuple[str | None, Caption | None]:
    if cfg.reference:
        if given.sample is None:
            raise UserError("reference=true needs sample=<split>:<index>")
        return given.sample.captions[0].text, given.sample.captions[0]
    return query_text(cfg.query), None


def query_text(query: str | None, key: str = "query") -> str | None:
    """The query or foil (its type was checked with the config: null or a string), refused when it has no
    characters."""
    if query is not None and not query.strip():
        raise UserError(f"the {key} is empty; give a sentence such as {key}='a red circle' or leave it out")
    return query


def parse_phrases(phrases: Any) -> list[tuple[int, int]] | None:
    """``phrases=[[start, end], ...]`` as integer pairs (None or ``[]``: not given). Their form was checked with the
    rest of the config (``capsal.config_schema``); whether they lie inside the sentence is checked once it is known."""
    if phrases is None:
        return None
    return [(int(start), int(end)) for start, end in phrases] or None


def explain(cfg: DictConfig) -> dict[str, Any]:
    """Run ``capsal-explain`` as ``cfg`` says; returns the JSON summary it writes."""
    check_config(cfg, ExplainSettings)
    phrases = parse_phrases(cfg.phrases)
    device = resolve_device(cfg.device)
    options = OmegaConf.to_container(cfg.explainer_options, resolve=True) or {}
    explainers = build_explainers(list(cfg.explainers or [cfg.explainer]), options)
    contrast = query_text(cfg.contrast, "contrast")
    for explainer in explainers.values():
        explainer.check_contrast(contrast)
    model = load_model(cfg, device)
    given = load_input(cfg, model)
    query, caption = choose_sentence(cfg, given)
    pixels = model_pixels(given.pixels, model).to(device)
    cached = getattr(given.sample, "grid", None)  # a sample of a feature cache: the grid the model was trained on
    with torch.no_grad():  # the explainer turns gradients on where it needs them, from its inputs
        grid = cached[None].float().to(device) if cached is not None else model.features(pixels)
        items = model.items(grid)
    sample_ids = [given.sample.sample_id] if given.sample is not None else None
    saliencies: dict[str, Saliency] = {}
    tokens = query
    for name, explainer in explainers.items():
        saliencies[name] = explainer.explain(
            model, items, grid=grid, tokens=tokens, sample_ids=sample_ids, contrast=contrast
        )
        saliency = saliencies[next(iter(saliencies))]
        if not saliency.words[0]:
            raise UserError(
                f"the model produced no words for {given.source}: its own caption is empty (it emitted <eos> first),"
                " so there is nothing to explain; pass query='<a sentence>' to explain a sentence of your own"
            )
        tokens = query if query is not None else " ".join(saliency.words[0])  # the model's own caption once
    foil = saliency.foil_words[0] if saliency.foil_words else None
    spans = phrase_spans(phrases, caption, saliency.words[0], foil)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if saliency.layout.is_video:
        summary = _write_video(saliencies, given, spans, output_dir)
    else:
        summary = _write_image(saliencies, given, spans, caption, output_dir)
    summary.update(
        {
            "checkpoint": model_source(cfg),
            "input": given.source,
            "explainer": saliency.explainer,
            "explainer_options": repr(explainers[saliency.explainer]),
            "explainers": list(saliencies),
            "sentence": " ".join(saliency.words[0]),
            "contrast": " ".join(foil) if foil else None,
            "unknown_words": model.vocab.unknown_words(query) if query else [],
        }
    )
    summary["explorer"] = str(output_dir / "explorer.html")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"capsal-explain: '{summary['sentence']}' -> {', '.join(summary['figures'])}")
    print(f"capsal-explain: arrays {output_dir / 'saliency.npz'}, summary {output_dir / 'summary.json'}")
    print(f"capsal-explain: explorer {summary['explorer']} (open it in any browser, offline)")
    return summary


def phrase_spans(
    phrases, caption: Caption | None, words: list[str], foil: list[str] | None = None
) -> list[tuple[int, int, str]]:
    """``(start, end, label)`` of each panel: the given spans, the reference's phrases, or every word; with a foil,
    a span whose words differ is labelled "<words> rather than <foil words>"."""
    if phrases:
        spans = list(phrases)
    elif caption is not None and caption.phrases:
        spans = [(p.start, p.end) for p in caption.phrases]
    else:
        spans = [(k, k + 1) for k in range(len(words))]
    for start, end in spans:
        if not 0 <= start < end <= len(words):
            raise UserError(
                f"phrase span [{start}, {end}) is not inside the sentence's {len(words)} words "
                f"({' '.join(words)!r}); give 0 <= start < end <= {len(words)}"
            )
    return [(s, e, _label(words[s:e], foil[s:e] if foil else None)) for s, e in spans]


def _label(words: list[str], foil: list[str] | None) -> str:
    text = " ".join(words)
    return text if not foil or foil == words else f"{text} rather than {' '.join(foil)}"


def _boxes_for(caption: Caption | None, spans) -> list[list[Box]] | None:
    if caption is None:
        return None
    by_span = {(p.start, p.end): p.boxes for p in caption.phrases}
    return [list(by_span.get((s, e), [])) for s, e, _ in spans]


def _write_image(
    saliencies: dict[str, Saliency], given: ExplainInput, spans, caption, output_dir: Path
) -> dict[str, Any]:
    """The figure (a block of panels per explainer, :func:`capsal.viz.panel_figures`), the explorer, the arrays and
    the summary of an image; the summary's maxima are the first explainer's."""
    height, width = given.pixels.shape[-2:]
    image = to_numpy_image(given.pixels[0])
    labels = [label for _, _, label in spans]
    first = next(iter(saliencies.values()))
    sentence, boxes = " ".join(first.words[0]), _boxes_for(caption, spans)
    heats, maps, arrays = {}, {}, {}
    for name, saliency in saliencies.items():
        scaled = torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans])
        heats[name] = saliency.to_image_size(height, width, scaled).cpu().numpy()
        maps[name] = saliency_maps(saliency, 0, [(s, e) for s, e, _ in spans])
        n = len(saliency.words[0])  # one row per word
        arrays[name] = {
            "scores": saliency.scores[0, :n].cpu().numpy(),
            "e": saliency.e[0, :n].cpu().numpy(),
            "losses": saliency.losses[0, :n].cpu().numpy() if saliency.losses is not None else np.array([]),
            "maps": heats[name],
        }
    unit = "words" if all(e - s == 1 for s, e, _ in spans) else "phrases"
    pages, _ = panel_figures(image, {name: list(h) for name, h in heats.items()}, labels, sentence, boxes, unit)
    paths = page_paths(output_dir / "saliency.png", len(pages))
    figures = [save_png(page, path) for page, path in zip(pages, paths, strict=True)]
    write_explorer(output_dir / "explorer.html", _frames(given), labels, maps, boxes, sentence)
    common = {"words": np.array(first.words[0]), "spans": np.array([(s, e) for s, e, _ in spans])}
    np.savez_compressed(output_dir / "saliency.npz", **common, **_by_explainer(arrays))
    return {
        "kind": "image",
        "figures": [str(path) for path in figures],
        "grid": list(first.layout.grid_size),
        "panels": [
            {"span": [s, e], "text": label, "max_xy": list(peak_location(torch.as_tensor(h)))}
            for (s, e, label), h in zip(spans, heats[first.explainer], strict=True)
        ],
    }


def _by_explainer(arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``saliency.npz``'s per-explainer arrays: the first explainer's under their own names (``maps``), each further
    explainer's with its name after them (``maps_gradient``)."""
    first = next(iter(arrays))
    return {
        key if name == first else f"{key}_{name}": value for name, own in arrays.items() for key, value in own.items()
    }


def _write_video(saliencies: dict[str, Saliency], given: ExplainInput, spans, output_dir: Path) -> dict[str, Any]:
    """Fig. 5 of the explained sentence (per panel the temporal strip and its most salient frame with the spatial
    map over it; a panel per explainer, stacked under the sentence, wrapped), the arrays and the summary (the first
    explainer's frames and maxima). Only the frames shown are converted, and spatial maps are upsampled for those
    frames only, so a clip of any size fits in memory."""
    frames = given.pixels  # uint8 (T, 3, H, W), the decoded size
    labels = [label for _, _, label in spans]
    sentence = " ".join(next(iter(saliencies.values())).words[0])
    panels, maps, arrays = {}, {}, {}
    for name, saliency in saliencies.items():
        arrays[name], spatial = _video_arrays(saliency, spans, frames.shape[-2:])
        temporal = arrays[name]["temporal"]
        shown = {t: to_numpy_image(frames[t]) for t in set(peak_frames(torch.as_tensor(temporal)).tolist())}
        panels[name] = video_panel(shown, temporal, labels, spatial, title=name)
        maps[name] = saliency_maps(saliency, 0, [(s, e) for s, e, _ in spans])
    images = [panel.image for panel in panels.values()]
    save_png(stack_panels(images, sentence, SENTENCE_LINES), output_dir / "saliency.png")  # the sentence wrapped
    common = {"words": np.array(sentence.split()), "spans": np.array([(s, e) for s, e, _ in spans])}
    np.savez_compressed(output_dir / "saliency.npz", **common, **_by_explainer(arrays))
    write_explorer(output_dir / "explorer.html", _frames(given), labels, maps, None, sentence)
    panel, entries = next(iter(panels.values())), []
    for k, (s, e, label) in enumerate(spans):
        entry = {"span": [s, e], "text": label, "best_frame": panel.frames[k]}
        if panel.points[k] is not None:
            entry["max_xy"] = list(panel.points[k])
        entries.append(entry)
    frames_n = int(next(iter(arrays.values()))["temporal"].shape[1])
    return {"kind": "video", "figures": [str(output_dir / "saliency.png")], "frames": frames_n, "panels": entries}


def _video_arrays(saliency: Saliency, spans, size) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One explainer's video arrays: ``temporal`` (panels x frames) and, with spatial maps, ``regions`` (panels x
    frames x grid) and ``spatial`` (each panel's map in its most salient frame at ``size``, also returned)."""
    temporal = torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans]).float().cpu()  # (P, T)
    arrays = {"temporal": temporal.numpy()}
    if saliency.region_scores is None:
        return arrays, None
    best = peak_frames(temporal)
    regions = torch.stack([saliency.phrase_regions(s, e)[0] for s, e, _ in spans]).float().cpu()  # (P, T, r)
    h, w = saliency.layout.grid_size
    arrays["regions"] = rearrange(regions, "p t (h w) -> p t h w", h=h, w=w).numpy()
    at_best = regions[torch.arange(len(spans)), best]  # (P, r): each panel's most salient frame
    arrays["spatial"] = saliency.to_image_size(*size, at_best).numpy()  # (P, H, W)
    return arrays, arrays["spatial"]


def _frames(given: ExplainInput) -> np.ndarray:
    """The frames as the explorer takes them: uint8 ``(T, H, W, 3)`` at the input's own size."""
    return rearrange(given.pixels, "t c h w -> t h w c").cpu().numpy()


main = command("capsal-explain", "explain", explain)


if __name__ == "__main__":
    main()
