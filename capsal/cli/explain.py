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
from capsal.explorer import ExplorerMaps, write_explorer
from capsal.maxima import peak_frames, peak_location
from capsal.types import Box, Caption, Sample
from capsal.viz import page_paths, panel_figures, save_png, to_numpy_image, video_panel

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
    explainer = build_explainers([cfg.explainer], options)[cfg.explainer]
    contrast = query_text(cfg.contrast, "contrast")
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
    saliency = explainer.explain(model, items, grid=grid, tokens=query, sample_ids=sample_ids, contrast=contrast)
    if not saliency.words[0]:
        raise UserError(
            f"the model produced no words for {given.source}: its own caption is empty (it emitted <eos> first), "
            "so there is nothing to explain; pass query='<a sentence>' to explain a sentence of your own"
        )
    foil = saliency.foil_words[0] if saliency.foil_words else None
    spans = phrase_spans(phrases, caption, saliency.words[0], foil)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if saliency.layout.is_video:
        summary = _write_video(saliency, given, spans, output_dir)
    else:
        summary = _write_image(saliency, given, spans, caption, output_dir)
    summary.update(
        {
            "checkpoint": model_source(cfg),
            "input": given.source,
            "explainer": saliency.explainer,
            "explainer_options": repr(explainer),
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


def _write_image(saliency: Saliency, given: ExplainInput, spans, caption, output_dir: Path) -> dict[str, Any]:
    height, width = given.pixels.shape[-2:]
    scaled = torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans])
    heats = saliency.to_image_size(height, width, scaled).cpu().numpy()
    image = to_numpy_image(given.pixels[0])
    labels = [label for _, _, label in spans]
    sentence, boxes = " ".join(saliency.words[0]), _boxes_for(caption, spans)
    unit = "words" if all(e - s == 1 for s, e, _ in spans) else "phrases"
    pages, _ = panel_figures(image, {saliency.explainer: list(heats)}, labels, sentence, boxes, unit)
    paths = page_paths(output_dir / "saliency.png", len(pages))
    figures = [save_png(page, path) for page, path in zip(pages, paths, strict=True)]
    h, w = saliency.layout.grid_size
    grids = rearrange(scaled.float().cpu(), "p (h w) -> p 1 h w", h=h, w=w).numpy()
    write_explorer(
        output_dir / "explorer.html",
        _frames(given),
        labels,
        {saliency.explainer: ExplorerMaps(grids)},
        boxes,
        sentence,
    )
    n = len(saliency.words[0])  # one row per word
    np.savez_compressed(
        output_dir / "saliency.npz",
        words=np.array(saliency.words[0]),
        scores=saliency.scores[0, :n].cpu().numpy(),
        e=saliency.e[0, :n].cpu().numpy(),
        losses=saliency.losses[0, :n].cpu().numpy() if saliency.losses is not None else np.array([]),
        spans=np.array([(s, e) for s, e, _ in spans]),
        maps=heats,
    )
    return {
        "kind": "image",
        "figures": [str(path) for path in figures],
        "grid": list(saliency.layout.grid_size),
        "panels": [
            {"span": [s, e], "text": label, "max_xy": list(peak_location(torch.as_tensor(h)))}
            for (s, e, label), h in zip(spans, heats, strict=True)
        ],
    }


def _write_video(saliency: Saliency, given: ExplainInput, spans, output_dir: Path) -> dict[str, Any]:
    """Fig. 5 of the explained sentence (per panel the temporal strip and its most salient frame with the spatial
    map over it), the arrays and the summary. Only the frames shown are converted, and spatial maps are upsampled
    for those frames only, so a clip of any size fits in memory."""
    frames = given.pixels  # uint8 (T, 3, H, W), the decoded size
    height, width = frames.shape[-2:]
    temporal = torch.stack([saliency.phrase(s, e)[0] for s, e, _ in spans]).float().cpu()  # (P, T)
    best = peak_frames(temporal).tolist()
    arrays = {"words": np.array(saliency.words[0]), "temporal": temporal.numpy()}
    arrays["spans"] = np.array([(s, e) for s, e, _ in spans])
    spatial = None
    if saliency.region_scores is not None:
        regions = torch.stack([saliency.phrase_regions(s, e)[0] for s, e, _ in spans]).float().cpu()  # (P, T, r)
        h, w = saliency.layout.grid_size
        arrays["regions"] = rearrange(regions, "p t (h w) -> p t h w", h=h, w=w).numpy()
        at_best = regions[torch.arange(len(spans)), torch.tensor(best)]  # (P, r): each panel's most salient frame
        spatial = saliency.to_image_size(height, width, at_best).numpy()  # (P, H, W)
        arrays["spatial"] = spatial
    shown = {t: to_numpy_image(frames[t]) for t in set(best)}
    labels = [label for _, _, label in spans]
    panel = video_panel(shown, temporal.numpy(), labels, spatial, title=" ".join(saliency.words[0]))
    save_png(panel.image, output_dir / "saliency.png")
    np.savez_compressed(output_dir / "saliency.npz", **arrays)
    maps = ExplorerMaps(arrays.get("regions"), temporal.numpy())
    write_explorer(
        output_dir / "explorer.html",
        _frames(given),
        labels,
        {saliency.explainer: maps},
        None,
        " ".join(saliency.words[0]),
    )
    panels = []
    for k, (s, e, label) in enumerate(spans):
        entry = {"span": [s, e], "text": label, "best_frame": best[k]}
        if panel.points[k] is not None:
            entry["max_xy"] = list(panel.points[k])
        panels.append(entry)
    figures = [str(output_dir / "saliency.png")]
    return {"kind": "video", "figures": figures, "frames": int(temporal.shape[1]), "panels": panels}


def _frames(given: ExplainInput) -> np.ndarray:
    """The frames as the explorer takes them: uint8 ``(T, H, W, 3)`` at the input's own size."""
    return rearrange(given.pixels, "t c h w -> t h w c").cpu().numpy()


main = command("capsal-explain", "explain", explain)


if __name__ == "__main__":
    main()
