"""Is a map true to the model? Deletion and insertion (Petsiuk et al., RISE, BMVC 2018) per word or phrase of a
caption, under teacher forcing.

A span's map orders the model's input items, most salient first (ties in a random order seeded per sample, so a flat
map scores what a random order scores, not what the raster order gives). Deletion removes the first ``round(k m /
K)`` items at step k = 0..K; insertion keeps only them. At every step the span's probability per word is read: a
word's teacher-forced probability (the product over its tokens), and for a phrase the geometric mean over its words,
``exp(sum of log-probabilities / words)`` (Eq. 9 sums the words' losses; dividing by the words keeps phrases of any
length on one scale, where a product would vanish with length). Each curve is
summarised by its area over the fraction of items removed or inserted (trapezoid rule, as RISE): lower is better for
deletion, higher for insertion. "Removing" means what the caption-guided explainer means by it: the kept items are
gathered into a shorter input at their original positions (:func:`~capsal.models.protocol.keep_items`); no item at
all is a row whose mask is all False.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor

from capsal.explainers.base import Seeds, eval_mode, word_table
from capsal.explainers.chunking import known_costs, pass_key, run_in_chunks
from capsal.metrics.base import OTHER, CategoryAccuracy, Unknown
from capsal.models.protocol import check_no_item, keep_items, target_logprobs

STEPS = 16
WIDTH_GROUPS = 8  # a chunk pads to its widest input: inputs sorted by width run in up to this many groups,
GROUP_INPUTS = 64  # of at least this many inputs (a group's own overhead outweighs the padding it saves below)


Span = tuple[int, int, int]  # (row, first word, end word), half-open


def removal_order(maps: Tensor, item_mask: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """``(P, m)`` item indices by decreasing saliency, ties in the order of a random permutation drawn from each
    span's generator, padded items last."""
    m = maps.shape[1]
    permutations = torch.stack([torch.randperm(m, generator=g) for g in generators]).to(maps.device)
    values = maps.masked_fill(~item_mask, float("-inf")).gather(1, permutations)
    ranked = torch.sort(values, dim=1, descending=True, stable=True).indices
    return permutations.gather(1, ranked)


def step_counts(real: Tensor, steps: int) -> Tensor:
    """``(P, K+1)`` how many items step k takes out (deletion) or puts in (insertion): ``k m / K`` rounded half up,
    for ``m`` real items of each span's sample."""
    k = torch.arange(steps + 1, device=real.device)
    return torch.div(2 * k[None, :] * real[:, None] + steps, 2 * steps, rounding_mode="floor")


def step_keeps(order: Tensor, counts: Tensor, item_mask: Tensor, insertion: bool) -> Tensor:
    """``(P, K+1, m)`` which items each step keeps: the first ``counts`` of ``order`` (insertion) or the rest."""
    places = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, places)  # rank[p, order[p, j]] = j
    first = rank[:, None, :] < counts[:, :, None]
    return (first if insertion else ~first) & item_mask[:, None, :]


def area(curves: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoid area under ``(P, K+1)`` curves over the ``(P, K+1)`` fractions of items moved."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * fractions.diff(dim=1)).sum(1)


@dataclass
class Curves:
    """Deletion and insertion curves of P spans: the span's probability at each of the K+1 steps, and the fraction
    of the sample's items removed (deletion) or present (insertion) at each step."""

    deletion: Tensor
    insertion: Tensor
    fractions: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        return area(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> Tensor:
        return area(self.insertion, self.fractions)


def span_targets(model: Any, tokens: Tensor, spans: Sequence[Span]) -> Tensor:
    """``(P, n)`` True at the target columns (token t+1 after input t) of each span's words, whatever tokens a
    word has (``word_table``: the one place subword tokens become words)."""
    words, _, rows = word_table(model.vocab, tokens)
    row_of = torch.tensor([row for row, _, _ in spans], device=tokens.device)
    starts = torch.tensor([start for _, start, _ in spans], device=tokens.device)[:, None]
    ends = torch.tensor([end for _, _, end in spans], device=tokens.device)[:, None]
    lengths = torch.tensor([len(w) for w in words], device=tokens.device)[row_of][:, None]
    column_words = rows[row_of]
    return (column_words >= starts) & (column_words < ends) & (column_words < lengths)


def span_generators(
    sample_ids: Sequence[str], tokens: Tensor, model: Any, spans: Sequence[Span], seed: int, stream: str = "items"
) -> list[torch.Generator]:
    """One generator per span for the tie-breaking permutation: seeded by the sample and sentence (as explainers
    draw randomness, :class:`~capsal.explainers.base.Seeds`) and the span, so a span's order does not depend on the
    batch or process it is scored in."""
    words = word_table(model.vocab, tokens)[0]
    seeds = Seeds(seed, [f"{i}/{' '.join(w)}" for i, w in zip(sample_ids, words, strict=True)], torch.Generator())
    return [seeds.generator(row, f"faithfulness/{stream}/{start}-{end}") for row, start, end in spans]


@torch.no_grad()
def faithfulness_curves(
    model: Any,
    items: Tensor,
    tokens: Tensor,
    spans: Sequence[Span],
    maps: Tensor,
    sample_ids: Sequence[str],
    mask: Tensor | None = None,
    steps: int = STEPS,
    seed: int = 0,
    memory_budget_mb: float = 256.0,
) -> Curves:
    """Deletion and insertion curves of each span ``(row, start, end)`` of ``tokens`` ``(B, L)`` (bos ... eos), in
    the order of its map ``maps[p]`` over the ``(B, m, d)`` items of its row. All ``2 P (K+1)`` inputs go through
    the model as teacher-forced passes in chunks under ``memory_budget_mb`` (as the caption-guided explainer's)."""
    mask = torch.ones(items.shape[:2], dtype=torch.bool, device=items.device) if mask is None else mask.bool()
    rows = torch.tensor([row for row, _, _ in spans], dtype=torch.long, device=items.device)
    item_mask = mask[rows]
    order = removal_order(maps.float(), item_mask, span_generators(sample_ids, tokens, model, spans, seed))
    real = item_mask.sum(1)
    counts = step_counts(real, steps)
    keeps = torch.stack([step_keeps(order, counts, item_mask, insertion) for insertion in (False, True)])
    keeps = rearrange(keeps, "c p k m -> (c p k) m")  # c: deletion, insertion
    input_rows = repeat(rows, "p -> (c p k)", c=2, k=steps + 1)

    def inputs(chosen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return keep_items(items[input_rows[chosen]], keeps[chosen])

    logprobs = _span_logprobs(model, items, tokens, spans, input_rows, keeps.sum(1), inputs, memory_budget_mb)
    return _curves(logprobs, spans, counts, real, steps)


@torch.no_grad()
def spatial_faithfulness_curves(
    model: Any,
    grid: Tensor,
    tokens: Tensor,
    spans: Sequence[Span],
    frames: Tensor,
    region_maps: Tensor,
    sample_ids: Sequence[str],
    mask: Tensor | None = None,
    steps: int = STEPS,
    seed: int = 0,
    memory_budget_mb: float = 256.0,
) -> Curves:
    """Video, inside frames: deletion and insertion of the cells of each span's most salient frame ``frames[p]``, in
    the order of its region map ``region_maps[p]`` ``(r,)`` over the ``(B, T, h, w, d)`` grid. A removed cell is
    zeroed in its frame's grid before ``model.items`` pools the frames (as Eq. 13's ``pooled`` region input feeds a
    cell alone); deletion keeps the other frames and drops the frame once no cell is left, insertion gives the model
    that frame alone, holding the inserted cells (no item at step 0)."""
    mask = torch.ones(grid.shape[:2], dtype=torch.bool, device=grid.device) if mask is None else mask.bool()
    h, w = grid.shape[2:4]
    rows = torch.tensor([row for row, _, _ in spans], dtype=torch.long, device=grid.device)
    cells = torch.ones(len(spans), h * w, dtype=torch.bool, device=grid.device)
    generators = span_generators(sample_ids, tokens, model, spans, seed, stream="cells")
    order = removal_order(region_maps.float(), cells, generators)
    counts = step_counts(cells.sum(1), steps)
    cell_keeps = torch.stack([step_keeps(order, counts, cells, insertion) for insertion in (False, True)])
    cell_keeps = rearrange(cell_keeps, "c p k r -> (c p k) r")
    input_rows = repeat(rows, "p -> (c p k)", c=2, k=steps + 1)
    input_frames = repeat(frames.to(grid.device), "p -> (c p k)", c=2, k=steps + 1)
    insertion = repeat(torch.tensor([False, True], device=grid.device), "c -> (c p k)", p=len(spans), k=steps + 1)
    any_cell = cell_keeps.any(1)
    frame_mask = mask[input_rows]
    own = torch.nn.functional.one_hot(input_frames, grid.shape[1]).bool()
    frame_keeps = torch.where(insertion[:, None], own & any_cell[:, None], frame_mask & ~(own & ~any_cell[:, None]))

    def inputs(chosen: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        framed = grid[input_rows[chosen]].clone()
        picked = torch.arange(len(chosen), device=grid.device)
        kept_cells = rearrange(cell_keeps[chosen], "c (h w) -> c h w 1", h=h, w=w).to(grid.dtype)
        framed[picked, input_frames[chosen]] = framed[picked, input_frames[chosen]] * kept_cells
        return keep_items(model.items(framed), frame_keeps[chosen])

    items = model.items(grid[:1])
    logprobs = _span_logprobs(model, items, tokens, spans, input_rows, frame_keeps.sum(1), inputs, memory_budget_mb)
    return _curves(logprobs, spans, counts, cells.sum(1), steps)


def _span_logprobs(model, items, tokens, spans, input_rows, widths, inputs, memory_budget_mb: float) -> Tensor:
    """``(Q,)`` summed log-probabilities of each input's span words: ``inputs(chosen)`` builds the ``(kept, mask,
    positions)`` of the chosen inputs; they run widest first, in groups of similar width (a chunk pads to its
    widest input), each chunked under the budget, and stop after the span's last word."""
    targets = span_targets(model, tokens, spans)[_span_of(input_rows, spans)]
    widest_first = torch.sort(widths, descending=True, stable=True).indices
    last_target = (targets * torch.arange(1, targets.shape[1] + 1, device=targets.device)).amax(1)

    def run(start: int, stop: int) -> Tensor:
        chosen = widest_first[start:stop]
        who, length = input_rows[chosen], int(last_target[chosen].max())
        state = model.encode(*inputs(chosen))
        logprobs = target_logprobs(model, state, tokens[who, :length], tokens[who, 1 : length + 1])
        return (logprobs.to(torch.float64) * targets[chosen, :length]).sum(1)

    key = pass_key(tokens, items)
    known = known_costs(_COSTS, model)
    parts, total, cost = [], len(input_rows), known.get(key)
    group = max(-(-total // WIDTH_GROUPS), GROUP_INPUTS)
    with eval_mode(model):
        check_no_item(model, items, tokens[:, :-1])  # deletion's last step, insertion's first: one line if undefined
        for first in range(0, total, group):  # the first (widest) group's measured cost serves the narrower ones
            stop = min(total, first + group)
            part, chunking = run_in_chunks(
                lambda a, b, first=first: run(first + a, first + b), stop - first, memory_budget_mb, items.device, cost
            )
            parts.append(part)
            cost = cost or chunking["cost"]
    if cost is not None:
        known[key] = cost
    ordered = torch.cat(parts)
    return torch.empty_like(ordered).scatter_(0, widest_first, ordered)


def _span_of(input_rows: Tensor, spans: Sequence[Span]) -> Tensor:
    """The span of each input: inputs come ordered as ``(c p k)``, deletion/insertion, span, step."""
    steps = len(input_rows) // (2 * len(spans))
    return torch.arange(len(input_rows), device=input_rows.device) // steps % len(spans)


def _curves(logprobs: Tensor, spans: Sequence[Span], counts: Tensor, real: Tensor, steps: int) -> Curves:
    """Curves from the ``(2 P (K+1),)`` summed log-probabilities: per word (geometric mean over a span's words),
    over the fraction of the ``real`` items moved at each step."""
    words = torch.tensor([end - start for _, start, end in spans], dtype=torch.float64, device=logprobs.device)
    curves = rearrange(logprobs, "(c p k) -> c p k", c=2, k=steps + 1).div(words[None, :, None]).exp()
    moved = counts.to(torch.float64) / real.clamp(min=1)[:, None]
    return Curves(deletion=curves[0], insertion=curves[1], fractions=moved)


_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {pass_key: ChunkCost}


class Faithfulness(CategoryAccuracy):
    """Mean deletion and insertion area per phrase (``deletion/avg``, ``insertion/avg``) and per category, with the
    mean curves (:meth:`mean_curves`). Sum states: exact under DDP."""

    higher_is_better = None  # deletion: lower; insertion: higher

    def __init__(self, categories: Sequence[str], steps: int = STEPS, unknown: Unknown = OTHER, **kwargs: Any):
        super().__init__(categories, unknown=unknown, groups=("deletion", "insertion"), **kwargs)
        self.steps = steps
        for group in self.groups:
            self.add_state(f"{group}_curve", torch.zeros(steps + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, curves: Curves, categories: Sequence[str]) -> None:
        if not len(curves.deletion) == len(categories):
            raise ValueError(f"got {len(curves.deletion)} curves and {len(categories)} categories; give one per span")
        indices = self.category_indices(categories)
        for group, values, auc in (
            ("deletion", curves.deletion, curves.deletion_auc),
            ("insertion", curves.insertion, curves.insertion_auc),
        ):
            self._accumulate(group, auc, indices)
            curve = getattr(self, f"{group}_curve")
            curve.add_(values.detach().to(device=curve.device, dtype=curve.dtype).sum(0))

    def mean_curves(self) -> dict[str, list[float]]:
        """The mean probability at each step, over every scored span: ``{"deletion": [...], "insertion": [...]}``."""
        return {
            group: (getattr(self, f"{group}_curve") / getattr(self, f"{group}_count").sum().clamp(min=1)).tolist()
            for group in self.groups
        }
