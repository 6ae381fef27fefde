"""Caption-guided saliency (paper section 4): keep one item, teacher-force the sentence, read what is left.

For each item i the model sees the length-1 input ``(v_i)`` (at its original position, for models with
positional embeddings) and gives ``q_i(y_t)``. ``Loss(t, i, w) = -log q_i(y_t = w)`` (Eq. 7) or
``KL(p(y_t) || q_i(y_t))`` against the full-input distribution (Eq. 6). For video, region (a, b) of frame i is
the grid feature ``f_i(a, b)`` alone, a length-1 input (Eq. 13), fed as ``region_input`` says: ``pooled`` (default)
``f_i(a, b) / (h*w)``, the frame descriptor (the grid mean) of frame i with every other cell zeroed; ``cell``: the
raw ``f_i(a, b)``, Eq. 13 as printed; ``rescaled``: ``f_i(a, b)`` scaled to the norm of frame i's descriptor.
``pooled`` is the default because it keeps the cells' relative strengths at the scale of the frame descriptors the
model was trained on (a background cell stays near zero), where a raw cell is far from anything the model saw.
All ``r*m + m`` inputs of every sample go through the model as one batched teacher-forced pass, in chunks whose
measured peak memory stays under ``memory_budget_mb`` (:mod:`capsal.explainers.chunking`).
"""

from __future__ import annotations

import weakref
from typing import Any, Literal, get_args

import torch
from einops import rearrange, repeat

from capsal.constraints import PositiveFloat, PositiveInt
from capsal.errors import UserError
from capsal.explainers.base import Explainer, Sentences
from capsal.explainers.chunking import known_costs, pass_key, run_in_chunks, unseen_bytes
from capsal.explainers.precision import Precision, normalize_precision
from capsal.explainers.registry import register_explainer
from capsal.explainers.saliency import Saliency
from capsal.models.protocol import check_no_item, keep_items, target_logprobs, widened

Mode = Literal["information_gain", "kl"]
RegionInput = Literal["pooled", "cell", "rescaled"]
ZeroPoint = Literal["min", "empty"]
MODES = get_args(Mode)
REGION_INPUTS = get_args(RegionInput)


@register_explainer("caption_guided")
class CaptionGuided(Explainer):
    """The paper's explainer. Works with any model implementing the encoder-decoder protocol.

    Options: ``mode`` (``information_gain``, Eq. 7, or ``kl``, Eq. 6); ``spatial`` (video: also the regions
    inside each frame, Eq. 13, when a grid is given); ``region_input`` (how a region is fed: ``pooled``, ``cell``
    or ``rescaled``, see the module doc); ``memory_budget_mb``: the most memory one chunk of the
    batched pass may allocate at its peak (encoder and decoder activations, logits, losses: everything beyond the
    model, the inputs and, for ``kl``, the full-input reference). Probe passes of one and two inputs measure the
    peak (CUDA: ``max_memory_allocated``; elsewhere the live tensors their ops create) and the other chunks hold
    ``(budget - fixed part) / per-input peak`` inputs; the measured cost is kept per model and sentence length, so
    an evaluation probes once per length; on CUDA out-of-memory a chunk is halved and retried, with one warning
    (:mod:`capsal.explainers.chunking`). ``information_gain`` reads only the target words' log-probabilities
    (the protocol's optional ``target_logprobs``: no ``(chunk, n, V)`` log-probabilities next to the logits);
    ``beam_size`` for the model's own caption; ``precision`` (``32``, ``bf16-mixed``, ``16-mixed``: the model
    calls' autocast, :mod:`capsal.explainers.precision`); ``zero_point``: where a word's map starts, ``min`` (Eq. 8:
    min-max over the items, the least helpful item is 0) or ``empty`` (the evidence gained over no item at all,
    ``max(0, Loss(t, none) - Loss(t, i))``, divided by its largest value: an item that helps no more than nothing
    is 0, docs/faithfulness.md). ``last_chunking`` holds the last call's cost and chunk size. With a foil
    (``explain(..., contrast=...)``) the loss is ``-(log q_i(w) - log q_i(foil))``, both read from the same pass
    (its full ``(chunk, n, V)`` log-probabilities).
    """

    contrastive = True

    def __init__(
        self,
        mode: Mode = "information_gain",
        spatial: bool = True,
        memory_budget_mb: PositiveFloat = 256.0,
        beam_size: PositiveInt = 1,
        precision: Precision = 32,
        region_input: RegionInput = "pooled",
        zero_point: ZeroPoint = "min",
    ):
        if mode not in MODES:
            raise UserError(
                f"caption_guided mode must be one of {', '.join(MODES)}, got {mode!r} "
                "(explainer_options.caption_guided.mode=kl, for example)"
            )
        if region_input not in REGION_INPUTS:
            raise UserError(
                f"caption_guided region_input must be one of {', '.join(REGION_INPUTS)}, got {region_input!r} "
                "(explainer_options.caption_guided.region_input=cell, for example)"
            )
        self.mode = mode
        self.spatial = spatial
        self.region_input = region_input
        self.zero_point = zero_point
        self.memory_budget_mb = memory_budget_mb
        self.beam_size = beam_size
        self.last_chunking: dict | None = None
        self._costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {pass shape: ChunkCost}
        self.precision = precision
        normalize_precision(precision)  # a wrong name stops here, not at the first batch

    def _attribute(self, model: Any, items: torch.Tensor, grid: torch.Tensor | None, sentences: Sentences) -> Saliency:
        mask, tokens, layout = sentences.mask, sentences.tokens, sentences.layout
        batch, m = items.shape[:2]

        singles, positions, owners = self._single_item_inputs(items)
        regions = None
        if layout.is_video and self.spatial and grid is not None:
            regions = self._single_region_inputs(grid, self.region_input)
            singles = torch.cat([singles, regions[0]])
            positions = torch.cat([positions, regions[1]])
            owners = torch.cat([owners, regions[2]])

        reference = None
        if self.mode == "kl":
            reference = model.token_logprobs(model.encode(items, mask), tokens[:, :-1])
        losses = widened(self._losses(model, singles, positions, owners, sentences, reference))  # (N, n), >= f32

        item_losses = rearrange(losses[: batch * m], "(b m) n -> b n m", b=batch)
        region_losses = None
        if regions is not None:
            h, w = grid.shape[2:4]
            region_losses = rearrange(losses[batch * m :], "(b m r) n -> b n m r", b=batch, m=m, r=h * w)
        empty = self._empty_losses(model, items, sentences, reference) if self.zero_point == "empty" else None
        return sentences.saliency(
            scores=-item_losses,
            losses=item_losses,
            region_scores=None if region_losses is None else -region_losses,
            region_losses=region_losses,
            explainer=self.name,
            zero=None if empty is None else -empty,
        )

    def _empty_losses(self, model, items, sentences: Sentences, reference) -> torch.Tensor:
        """``Loss(t, none)`` ``(B, n)``: the loss of each word with no item at all (a row whose mask is all False;
        one line for a model that does not define it)."""
        logq = check_no_item(model, items, sentences.tokens[:, :-1])
        if sentences.foil is not None:  # the foil's spliced words need their own pass
            kept, mask, positions = keep_items(items, torch.zeros(items.shape[:2], dtype=torch.bool))
            return widened(-sentences.explained(model, kept, mask, positions))
        if self.mode == "information_gain":
            return widened(-logq.gather(-1, sentences.tokens[:, 1:, None])[..., 0])
        return widened((reference.exp() * (reference - logq)).sum(-1))

    def check_contrast(self, contrast) -> None:
        super().check_contrast(contrast)
        if contrast is not None and self.mode != "information_gain":
            raise UserError(
                "a contrastive map compares two words' log-probabilities: use caption_guided's "
                "mode=information_gain with contrast= (mode=kl compares whole distributions)"
            )

    @staticmethod
    def _single_item_inputs(items: torch.Tensor):
        """Every item alone: ``(B*m, 1, d)`` inputs, their original positions and the sample they belong to."""
        batch, m = items.shape[:2]
        singles = rearrange(items, "b m d -> (b m) 1 d")
        positions = repeat(torch.arange(m, device=items.device), "m -> (b m) 1", b=batch)
        owners = repeat(torch.arange(batch, device=items.device), "b -> (b m)", m=m)
        return singles, positions, owners

    @staticmethod
    def _single_region_inputs(grid: torch.Tensor, region_input: str = "pooled"):
        """Every region of every frame alone (Eq. 13), positioned at its frame: ``(B*T*h*w, 1, d)``, each fed as
        ``region_input`` says (see the module doc)."""
        batch, frames, h, w = grid.shape[:4]
        singles = rearrange(region_inputs(grid, region_input), "b t h w d -> (b t h w) 1 d")
        positions = repeat(torch.arange(frames, device=grid.device), "t -> (b t r) 1", b=batch, r=h * w)
        owners = repeat(torch.arange(batch, device=grid.device), "b -> (b t r)", t=frames, r=h * w)
        return singles, positions, owners

    def _losses(self, model, singles, positions, owners, sentences: Sentences, reference) -> torch.Tensor:
        """``Loss(t, i, w)`` for every single-item input, ``(N, n)``, in chunks under the memory budget (with a
        foil, ``-(log q_i(w) - log q_i(foil))`` read from the same pass's log-probabilities)."""
        tokens = sentences.tokens
        inputs, targets = tokens[:, :-1], tokens[:, 1:]

        def run(start: int, stop: int) -> torch.Tensor:
            who = owners[start:stop]
            if sentences.foil is not None:
                return -sentences.explained(model, singles[start:stop], None, positions[start:stop], rows=who)
            state = model.encode(singles[start:stop], None, positions[start:stop])
            if self.mode == "information_gain":
                return -target_logprobs(model, state, inputs[who], targets[who])
            logq = model.token_logprobs(state, inputs[who])  # (c, n, V)
            logp = reference[who]
            return (logp.exp() * (logp - logq)).sum(-1)

        key = (*pass_key(tokens, singles), sentences.foil is not None)
        known = known_costs(self._costs, model)
        cost = known.get(key)
        unseen = unseen_bytes(model, singles.device) if cost is None else 0  # only a new measurement needs it
        losses, self.last_chunking = run_in_chunks(
            run, singles.shape[0], self.memory_budget_mb, singles.device, cost=cost, unseen=unseen
        )
        if self.last_chunking["cost"] is not None:
            known[key] = self.last_chunking["cost"]
        return losses


def region_inputs(grid: torch.Tensor, region_input: str = "pooled") -> torch.Tensor:
    """The grid ``(B, T, h, w, d)`` as the one-region inputs of Eq. 13: each cell ``pooled`` (divided by ``h*w``:
    the grid mean of its frame with every other cell zeroed), as a raw ``cell``, or ``rescaled`` to the norm of its
    frame's descriptor (the grid mean)."""
    h, w = grid.shape[2:4]
    if region_input == "pooled":
        return grid / (h * w)
    if region_input == "rescaled":
        frame_norm = grid.mean(dim=(2, 3), keepdim=True).norm(dim=-1, keepdim=True)
        return grid * frame_norm / grid.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(grid.dtype).tiny)
    return grid
