"""bf16-mixed against float32 on briefly trained models: the same phrase maps, the same pointing-game hits.

Every ground-truth phrase of a test split is explained twice on the CPU, once per precision, and compared the way the
paper scores it: Spearman rank correlation of the phrase maps (:func:`capsal.sanity.rank_correlation`), the
pointing-game hit at image size (images) and the most salient frame (videos, :func:`capsal.maxima.peak_frames`).

The target (>= 0.99 mean rank correlation, the same hit on >= 99% of phrases) is checked on a model whose maps have
structure: ``localising_image_model`` (S2VT trained 250 steps; its caption-guided maxima hit the named object).
Measured there (torch 2.14.1, 2-core CPU): caption_guided 0.998 and 100% of 48 phrases; gradient x input 0.954 and
100% (its maps are products of gradients and inputs, both rounded: the hits agree, the ranks of weak cells move).

The tiny one-epoch fixtures (``image_checkpoint`` / ``video_checkpoint``) keep a looser check: their caption-guided
maps are nearly flat (an item's loss differs from the others' by 0.0033 nats on average over the image grid, 0.00032
over the 8 frames, while bf16 moves a loss by ~0.0003 nats), so bf16 reorders near-ties: measured image 0.84 / 99%
of 102 phrases, video frames 0.35 / 42% of 26 (gradient: image 0.988 / 100%, video 1.00 / 100%). Regions are fed
``pooled`` (a cell over h*w, README "Eq. 13 measured"): their losses spread by 0.00012 nats over a frame's 16
regions on average, less than bf16's error, so their rank correlation (measured 0.23) says nothing here and is not
checked. Their thresholds sit under those numbers and the loss error, of the items and the regions, is held to
1e-3 nats (measured 0.00025), the check that does not depend on how flat a map is.
"""

from __future__ import annotations

import pytest
import torch

from capsal.checkpoints import checkpoint_datamodule, load_captioner
from capsal.evaluation import batches_of, caption_pairs, explain_batch, grounded_phrases, scored_maps
from capsal.explainers import build_explainer
from capsal.maxima import peak_frames
from capsal.metrics import pointing_hits
from capsal.models.protocol import visual_grid
from capsal.sanity import rank_correlation

# (explainer, model) -> (mean rank correlation, same hit / frame, mean region rank correlation, mean |bf16 - float32|
# of caption_guided's losses in nats): see the docstring. The localising model's losses are larger (whole nats), so
# bf16's relative rounding moves them more (0.0048 nats measured) without reordering its maps.
THRESHOLDS = {
    ("caption_guided", "localising image"): (0.99, 0.99, None, None),
    ("gradient", "localising image"): (0.94, 0.99, None, None),
    ("caption_guided", "image"): (0.75, 0.90, None, 1e-3),
    ("caption_guided", "video"): (0.30, 0.35, None, 1e-3),  # regions: held by the loss error (see the docstring)
    ("gradient", "image"): (0.97, 0.99, None, None),
    ("gradient", "video"): (0.95, 0.99, 0.99, None),
}


def compare(model, datamodule, name: str) -> dict[str, float]:
    """Both precisions on every test phrase: mean rank correlation, share of equal hits / peak frames."""
    samples = [datamodule.sample("test", i) for i in range(datamodule.sizes["test"])]
    explainers = {p: build_explainer(name, precision=p) for p in ("32", "bf16-mixed")}
    correlations, same, regions, errors, spreads = [], [], [], [], []
    for batch in batches_of(caption_pairs(samples), model.vocab, 16):
        with torch.no_grad():
            grid = visual_grid(model, batch)
            items = model.items(grid)
        spans, phrases = grounded_phrases(batch.captions)
        out = {p: explain_batch(e, model, items, grid, batch.tokens) for p, e in explainers.items()}
        full, mixed = out["32"], out["bf16-mixed"]
        assert all(s.scores.dtype == torch.float32 for s in out.values())
        if full.losses is not None:
            assert mixed.losses.dtype == torch.float32
            errors.append((full.losses - mixed.losses).abs()[full.word_mask].flatten())
        if full.region_losses is not None:
            errors.append((full.region_losses - mixed.region_losses).abs()[full.word_mask].flatten())
            spreads.append(full.region_losses.amax(-1) - full.region_losses.amin(-1))
        a, b = full.phrase_maps(spans), mixed.phrase_maps(spans)
        correlations.append(rank_correlation(a.flatten(1), b.flatten(1)))
        if full.layout.is_video:
            same.append(peak_frames(a) == peak_frames(b))
            if full.region_scores is not None:
                ra, rb = full.phrase_region_maps(spans), mixed.phrase_region_maps(spans)
                regions.append(rank_correlation(ra.flatten(1), rb.flatten(1)))
        else:
            sizes = [batch.image_size] * len(batch.captions)
            boxes = [p.boxes for p in phrases]
            hits = [pointing_hits(scored_maps(s, spans, sizes), boxes) for s in (full, mixed)]
            same.append(hits[0] == hits[1])
    result = {
        "layout": "video" if full.layout.is_video else "image",
        "phrases": torch.cat(same).numel(),
        "mean_rank_correlation": torch.cat(correlations).mean().item(),
        "same_peak": torch.cat(same).float().mean().item(),
        "mean_region_rank_correlation": torch.cat(regions).mean().item() if regions else None,
        "mean_loss_error": torch.cat(errors).mean().item() if errors else None,
        "mean_region_loss_spread": torch.cat([x.flatten() for x in spreads]).mean().item() if spreads else None,
    }
    print(f"\n{name}: {result}")  # pytest -s shows the measured numbers
    return result


def check(result: dict, name: str, fixture: str = "") -> None:
    correlation, peak, region, loss_error = THRESHOLDS[name, f"{fixture} {result['layout']}".strip()]
    assert result["phrases"] > 0
    assert result["mean_rank_correlation"] >= correlation
    assert result["same_peak"] >= peak  # the same pointing-game hit (images) / most salient frame (videos)
    if region is not None:
        assert result["mean_region_rank_correlation"] >= region
    if loss_error is not None:
        assert result["mean_loss_error"] <= loss_error


def from_checkpoint(checkpoint) -> tuple:
    model = load_captioner(checkpoint)
    return model, checkpoint_datamodule(model)


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_bf16_maps_of_a_localising_model_match_float32(localising_image_model, name):
    check(compare(*localising_image_model, name), name, "localising")


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_bf16_image_maps_match_float32(image_checkpoint, name):
    check(compare(*from_checkpoint(image_checkpoint), name), name)


@pytest.mark.parametrize("name", ["caption_guided", "gradient"])
def test_bf16_video_maps_match_float32(video_checkpoint, name):
    check(compare(*from_checkpoint(video_checkpoint), name), name)
