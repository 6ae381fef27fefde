"""S2VT-style encoder-decoder captioner (paper section 3).

The encoder LSTM reads the items ``v_1..v_m``; its last state is ``z`` (Eq. 2), or ``z`` is the mean of the
items (``encoder="mean"``, the mean-pool variant of [23]). The decoder LSTM starts from ``z`` and sees ``z`` next
to every word embedding (Eq. 3). Teacher forcing runs ``nn.LSTM`` over the whole sentence in one call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from einops import rearrange, repeat
from pydantic import Field
from torch import nn

from capsal.constraints import DropoutRate, PositiveInt
from capsal.errors import UserError
from capsal.models.base import CaptioningModule
from capsal.models.protocol import widened


class S2VT(CaptioningModule):
    """``input_projection_size``: the width items are projected to before the encoder (the paper: 2048-d
    descriptors to 1300); ``None`` (default): ``hidden_size``, as checkpoints without it were built.
    ``forget_bias``: the LSTMs' initial forget-gate bias (Jozefowicz et al., 2015: 1.0 lets the encoder carry what
    it read across a long item sequence from the first step); ``None`` (default): PyTorch's initialisation."""

    RANDOMISATION_STAGES = ("output", "decoder", "embedding", "encoder", "initial_state", "item_projection", "backbone")

    def __init__(
        self,
        vocab,
        encoder: Literal["lstm", "mean"] = "lstm",
        hidden_size: PositiveInt = 256,
        embed_size: PositiveInt = 64,
        dropout: DropoutRate = 0.1,
        input_projection_size: PositiveInt | None = None,
        forget_bias: Annotated[float, Field(strict=True)] | None = None,
        **kwargs,
    ):
        super().__init__(vocab, **kwargs)
        if encoder not in ("lstm", "mean"):
            raise UserError(f"S2VT encoder must be 'lstm' or 'mean', got {encoder!r}")
        self.save_hyperparameters(
            {"encoder": encoder, "hidden_size": hidden_size, "embed_size": embed_size, "dropout": dropout}
        )
        if input_projection_size is not None:
            self.save_hyperparameters({"input_projection_size": input_projection_size})
        projected = input_projection_size or hidden_size
        self.item_projection = nn.Sequential(nn.Linear(self.feature_size, projected), nn.ReLU(), nn.Dropout(dropout))
        if encoder == "lstm":
            self.encoder = nn.LSTM(projected, hidden_size, batch_first=True)
        else:
            self.initial_state = nn.Linear(projected, 2 * hidden_size)
        self.embedding = nn.Embedding(len(self.vocab), embed_size, padding_idx=self.vocab.pad_id)
        z_size = hidden_size if encoder == "lstm" else projected
        self.decoder = nn.LSTM(embed_size + z_size, hidden_size, batch_first=True)
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, len(self.vocab)))
        if forget_bias is not None:
            self.save_hyperparameters({"forget_bias": forget_bias})
            for lstm in (m for m in self.modules() if isinstance(m, nn.LSTM)):
                with torch.no_grad():
                    lstm.bias_ih_l0[hidden_size : 2 * hidden_size].fill_(
                        forget_bias
                    )  # gates: input, forget, cell, output
                    lstm.bias_hh_l0[hidden_size : 2 * hidden_size].zero_()

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``z`` and the decoder's initial ``(h, c)``, batch-first. S2VT has no positional input: ``positions``
        is accepted and ignored (the order of items is all it knows). A row with no item (mask all False) is what
        nothing read gives: the lstm encoder's zero state, or the mean encoder's ``z = 0``."""
        projected = self.item_projection(items)
        if mask is None:
            mask = torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
        if self.hparams.encoder == "lstm":
            # real items first, in their order, so any mask (not only right padding) packs correctly
            order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
            projected = projected.gather(1, order[..., None].expand_as(projected))
            lengths = mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(projected, lengths, batch_first=True, enforce_sorted=False)
            _, (h, c) = self.encoder(packed)
            # a row with no item read nothing: the encoder's initial zero state (packing read one padded item)
            seen = mask.any(dim=1)[:, None]
            h, c = torch.where(seen, h[-1], 0.0), torch.where(seen, c[-1], 0.0)
            z = h
        else:
            weights = mask.to(projected.dtype)[..., None]
            z = (projected * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            h, c = torch.tanh(self.initial_state(z)).chunk(2, dim=-1)
        return {"z": z, "h": h, "c": c}

    def _decode(self, state: dict[str, torch.Tensor], tokens: torch.Tensor, hc: tuple[torch.Tensor, torch.Tensor]):
        words = self.embedding(tokens)
        inputs = torch.cat([words, repeat(state["z"], "b d -> b n d", n=tokens.shape[1])], dim=-1)
        hidden, (h, c) = self.decoder(inputs, hc)
        # one (b n) x d matrix: a fused addmm, where the LSTM's non-contiguous 3-d output would add a second (b, n, V)
        logits = self.output(rearrange(hidden, "b n d -> (b n) d"))
        return rearrange(logits, "(b n) v -> b n v", b=tokens.shape[0]), (h, c)

    def token_logits(self, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        hc = (rearrange(state["h"], "b d -> 1 b d").contiguous(), rearrange(state["c"], "b d -> 1 b d").contiguous())
        logits, _ = self._decode(state, tokens, hc)
        return logits

    def token_logprobs(self, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(widened(self.token_logits(state, tokens)), dim=-1)

    def init_decoder(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"h": state["h"], "c": state["c"]}

    def decode_step(self, state: dict[str, torch.Tensor], cache: Any, tokens: torch.Tensor):
        hc = (rearrange(cache["h"], "b d -> 1 b d").contiguous(), rearrange(cache["c"], "b d -> 1 b d").contiguous())
        logits, (h, c) = self._decode(state, tokens[:, -1:], hc)
        return torch.log_softmax(widened(logits[:, -1]), dim=-1), {"h": h[0], "c": c[0]}
