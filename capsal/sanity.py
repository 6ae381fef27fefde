"""Model-randomisation sanity check (Adebayo et al., 2018): an explainer that reflects the model must change when
the model's weights are randomised, stage by stage from the output back to the input.

The stages are the model's own (``randomisation_stages`` in the protocol; capsal models state them in
``RANDOMISATION_STAGES``). The report is the mean rank correlation between each explainer's phrase maps before and
after each cumulative randomisation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from capsal.evaluation import explain_batch, grounded_phrases
from capsal.models.protocol import randomisation_stages, visual_grid
from capsal.types import Batch


def randomise_(module: nn.Module) -> None:
    """Re-initialise every sub-module that knows how (``reset_parameters``), in place."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()


def step_name(stages: Sequence[str]) -> str:
    """A cumulative step named by the stage randomised last (``"up to decoder"``): the stages before it are implied
    by the order, and every stage name joined made the tables' headers unreadable."""
    return f"up to {stages[-1]}"


def randomisation_steps(model: Any) -> dict[str, list[str]]:
    """``{step name: every stage randomised at that step}``, in the order the sanity check takes them."""
    names = [name for name, _ in randomisation_stages(model)]
    return {step_name(names[: k + 1]): names[: k + 1] for k in range(len(names))}


def cascading_randomisation(model: nn.Module, seed: int = 0) -> Iterator[tuple[list[str], Any]]:
    """Yield ``(stages, model)`` with the first ``k`` stages randomised, for k = 1, 2, ...: decoder first (from the
    output layer), then encoder, then the visual backbone. The original model is left untouched; the yielded
    model is one copy randomised further at each step, so use it before asking for the next stage."""
    randomised = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    done: list[str] = []
    for name, child in randomisation_stages(randomised):
        randomise_(child)
        done.append(name)
        yield list(done), randomised


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (ties broken by position)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return x.argsort(-1).argsort(-1).to(torch.float64)

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    denominator = (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp(min=1e-12)
    return (ra * rb).sum(-1) / denominator


def phrase_maps(model: Any, explainer: Any, batches: Sequence[Batch]) -> torch.Tensor:
    """Every grounded phrase's map under ``explainer``, flattened, ``(P, m)`` on the CPU."""
    maps = []
    for batch in batches:
        with torch.no_grad():
            grid = visual_grid(model, batch)
            items = model.items(grid)
        saliency = explain_batch(explainer, model, items, grid, batch.tokens, batch.sample_ids)
        spans, _ = grounded_phrases(batch.captions)
        if spans:
            maps.append(saliency.phrase_maps(spans).flatten(1).float().cpu())
    return torch.cat(maps) if maps else torch.zeros(0, 1)


def sanity_check(
    model: nn.Module,
    explainers: dict[str, Any],
    batches: Sequence[Batch],
    progress: bool = True,
    last_step: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """``{explainer: {step: mean rank correlation with the original phrase maps}}``, each step named by
    :func:`step_name` (``"up to decoder"``). ``last_step``, when given, receives each explainer's per-phrase
    correlations after the last step (every stage randomised), in :func:`phrase_sample_ids`' order, for intervals."""
    originals = {name: phrase_maps(model, e, batches) for name, e in explainers.items()}
    report: dict[str, dict[str, float]] = {name: {} for name in explainers}
    stages = cascading_randomisation(model)  # one model re-randomised in place: evaluate each stage as it comes
    total = len(randomisation_stages(model))
    for done, randomised in tqdm(stages, desc="sanity check", unit="stage", total=total, disable=not progress):
        for name, explainer in explainers.items():
            after = phrase_maps(randomised, explainer, batches)
            correlations = rank_correlation(originals[name], after)
            report[name][step_name(done)] = float(correlations.mean())
            if last_step is not None:
                last_step[name] = correlations
    return report


def phrase_sample_ids(batches: Sequence[Batch]) -> list[str]:
    """The sample of each grounded phrase of ``batches``, in the order :func:`phrase_maps` stacks them."""
    return [batch.sample_ids[row] for batch in batches for row, _, _ in grounded_phrases(batch.captions)[0]]
