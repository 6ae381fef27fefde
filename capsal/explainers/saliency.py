"""``Saliency``: one padded batch of per-word saliency, whatever explainer made it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from capsal.types import ItemLayout


def _item_mask(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``mask`` broadcast to ``values`` and the dimensions one word's values span (its items, and regions)."""
    extra = values.dim() - mask.dim()
    mask = mask.reshape(*mask.shape, *([1] * extra)).expand_as(values)
    return mask, tuple(range(mask.dim() - 1 - extra, values.dim()))


def scale_per_word(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Linearly map each word's values over the real items to [0, 1] (paper Eq. 8's ``scale``).

    ``values`` ``(..., m[, r])`` with item ``mask`` broadcastable to ``values.shape[:-k]``; masked items become 0.
    A word whose values are all equal gets 1 everywhere (every item is equally, fully salient).
    """
    mask, dims = _item_mask(values, mask)
    low = values.masked_fill(~mask, float("inf")).amin(dim=dims, keepdim=True)
    high = values.masked_fill(~mask, float("-inf")).amax(dim=dims, keepdim=True)
    span = high - low
    scaled = torch.where(span > 0, (values - low) / span.clamp(min=torch.finfo(values.dtype).tiny), 1.0)
    return scaled.masked_fill(~mask, 0.0)


def scale_from_zero(values: torch.Tensor, zero: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each word's evidence over a zero point, ``max(0, values - zero)``, divided by its largest value over the real
    items (``values`` ``(..., m[, r])``, ``zero`` broadcastable to ``values.shape[:mask.dim()]``). A word that no item
    lifts above its zero point gets 0 everywhere: no evidence, rather than "everything equally salient"."""
    mask, dims = _item_mask(values, mask)
    zero = zero.reshape(*zero.shape, *([1] * (values.dim() - zero.dim())))
    gain = (values - zero).clamp(min=0).masked_fill(~mask, 0.0)
    high = gain.amax(dim=dims, keepdim=True)
    return torch.where(high > 0, gain / high.clamp(min=torch.finfo(values.dtype).tiny), 0.0)


@dataclass
class Saliency:
    """Per-word saliency for a batch of sentences (B samples, n words padded, m items, r regions per frame).

    - ``words``: each sample's words (no bos/eos); ``word_mask`` ``(B, n)`` True for real words.
    - ``scores`` ``(B, n, m)``: higher = more salient. ``losses`` ``(B, n, m)``: the raw ``Loss(t, i, w)``
      (Eq. 6/7) for explainers that have them (``scores = -losses``).
    - ``region_scores``/``region_losses`` ``(B, n, m, r)``: video only, saliency of grid region r inside frame i
      (Eq. 13), with ``r = h*w`` of ``layout.grid_size``.
    - ``item_mask`` ``(B, m)`` True for real items.
    - ``zero`` ``(B, n)``: each word's score with no item at all, for explainers asked to scale from it (the
      caption-guided ``zero_point=empty``); None: Eq. 8's min-max over the items.
    - ``foil_words``: for a contrastive map, each sample's foil words (word t explains ``log p(word t) -
      log p(foil word t)``); None otherwise.
    """

    words: list[list[str]]
    word_mask: torch.Tensor
    scores: torch.Tensor
    item_mask: torch.Tensor
    layout: ItemLayout
    losses: torch.Tensor | None = None
    region_scores: torch.Tensor | None = None
    region_losses: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    explainer: str = ""
    zero: torch.Tensor | None = None
    foil_words: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.words)

    @property
    def e(self) -> torch.Tensor:
        """Eq. 8: each word's scores scaled to [0, 1] over the items, ``(B, n, m)`` (from ``zero`` when set)."""
        return self._scale(self.scores, self._word_item_mask(), self.zero)

    @property
    def alpha(self) -> torch.Tensor:
        """``alpha_t = e_t / sum_i e_ti``: a distribution over items per real word (zeros for padded words)."""
        e = self.e
        return e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)

    @property
    def region_e(self) -> torch.Tensor | None:
        """Spatial saliency inside each frame scaled to [0, 1] per word and frame, ``(B, n, m, r)``."""
        if self.region_scores is None:
            return None
        mask = self._word_item_mask()[..., None].expand_as(self.region_scores)
        return self._scale(self.region_scores, mask, None if self.zero is None else self.zero[..., None])

    def phrase(self, start: int, end: int) -> torch.Tensor:
        """Eq. 9: saliency of the same half-open word span in every sample, ``(B, m)`` scaled to [0, 1]."""
        return self.phrase_maps([(b, start, end) for b in range(len(self))])

    def phrase_regions(self, start: int, end: int) -> torch.Tensor | None:
        """Eq. 9 for the regions inside frames, ``(B, m, r)`` scaled to [0, 1] per frame."""
        return self.phrase_region_maps([(b, start, end) for b in range(len(self))])

    def phrase_maps(self, spans: list[tuple[int, int, int]]) -> torch.Tensor:
        """Eq. 9 for ``(sample, start, end)`` spans, ``(P, m)``: the span's raw losses are summed (then negated)
        where the explainer has them, else its scores, and the sum is scaled to [0, 1] over the items."""
        summed = self._span_sums(self.losses, self.scores, spans)
        owners = torch.tensor([b for b, _, _ in spans], device=self.item_mask.device, dtype=torch.long)
        return self._scale(summed, self.item_mask[owners], self._span_zero(spans))

    def phrase_region_maps(self, spans: list[tuple[int, int, int]]) -> torch.Tensor | None:
        """Eq. 9 for regions inside frames, ``(P, m, r)``, scaled to [0, 1] per frame."""
        if self.region_scores is None:
            return None
        summed = self._span_sums(self.region_losses, self.region_scores, spans)
        owners = torch.tensor([b for b, _, _ in spans], device=self.item_mask.device, dtype=torch.long)
        zero = self._span_zero(spans)
        return self._scale(
            summed, self.item_mask[owners][..., None].expand_as(summed), None if zero is None else zero[:, None]
        )

    @staticmethod
    def _scale(values: torch.Tensor, mask: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
        return scale_per_word(values, mask) if zero is None else scale_from_zero(values, zero, mask)

    def _span_zero(self, spans: list[tuple[int, int, int]]) -> torch.Tensor | None:
        """A span's zero point: its words' zero points summed, as Eq. 9 sums their losses."""
        if self.zero is None:
            return None
        return torch.stack([self.zero[sample, start:end].sum() for sample, start, end in spans])

    def _span_sums(self, losses, scores, spans) -> torch.Tensor:
        width = self.word_mask.shape[1]
        rows = []
        for sample, start, end in spans:
            if not 0 <= start < end <= width:
                raise ValueError(f"phrase span [{start}, {end}) is outside the {width} words")
            rows.append(-losses[sample, start:end].sum(0) if losses is not None else scores[sample, start:end].sum(0))
        return torch.stack(rows)

    def to_image_size(self, height: int, width: int, values: torch.Tensor | None = None) -> torch.Tensor:
        """Grid values ``(..., h*w)`` at receptive-field centres, bilinearly upsampled to ``(..., height, width)``.

        ``align_corners=False`` puts value (a, b) exactly at the centre of its cell, ``((b+.5) W/w, (a+.5) H/h)``.
        Defaults to ``e`` for images and to ``region_e`` for videos.
        """
        if values is None:
            values = self.e if not self.layout.is_video else self.region_e
        if not self.layout.is_video:  # tiles and a thumbnail: their items combined on one grid (ItemLayout.cells)
            values = self.layout.on_grid(values)
        h, w = self.layout.grid_size
        lead = values.shape[:-1]
        grids = rearrange(values.reshape(-1, h * w), "n (h w) -> n 1 h w", h=h, w=w)
        image = F.interpolate(grids.float(), size=(height, width), mode="bilinear", align_corners=False)
        return image.reshape(*lead, height, width).to(values.dtype)

    def _word_item_mask(self) -> torch.Tensor:
        return self.word_mask[:, :, None] & self.item_mask[:, None, :]
