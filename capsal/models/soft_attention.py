"""Soft-attention captioner in the style of Show, Attend and Tell [27] (paper section 3, Eq. 4-5).

At every step the decoder LSTM cell attends over the items with additive attention,
``e_ti = w^T tanh(W_a h_{t-1} + U_a v_i + b_a)``, ``alpha_t = softmax_i(e_t)`` over the real items, and reads the
context ``z_t = sum_i alpha_ti v_i`` (of the projected items) next to the word embedding. The word distribution
comes from ``[h_t, z_t]`` (the deep output of [27]). The initial ``(h, c)`` comes from the mean of the items.
Images attend over grid cells, videos over frames: both are just items.

Teacher forcing loops over the steps (``alpha_t`` depends on ``h_{t-1}``); ``U_a v_i + b_a`` is computed once in
``encode``. ``token_logprobs``, ``attention`` and ``decode_step`` share one step function, so the weights that
``attention`` returns are exactly those the forward pass used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from capsal.constraints import DropoutRate, NonNegativeFloat, PositiveInt
from capsal.errors import UserError
from capsal.models.base import CaptioningModule
from capsal.models.protocol import logprobs_at, widened

State = dict[str, torch.Tensor]


class SoftAttention(CaptioningModule):
    """``doubly_stochastic`` (lambda) adds the regulariser of [27], ``lambda * sum_i (1 - sum_t alpha_ti)^2``
    (real items, real steps, averaged over the batch), to the training loss; validation loss stays the plain NLL.
    ``attention_size`` is the width of the additive-attention layer (``None``: ``hidden_size``)."""

    RANDOMISATION_STAGES = (
        "output",
        "decoder",
        "embedding",
        "attention_score",
        "attention_hidden",
        "attention_items",
        "initial_state",
        "item_projection",
        "backbone",
    )

    def __init__(
        self,
        vocab,
        hidden_size: PositiveInt = 256,
        embed_size: PositiveInt = 64,
        attention_size: PositiveInt | None = None,
        dropout: DropoutRate = 0.1,
        doubly_stochastic: NonNegativeFloat = 0.0,
        **kwargs,
    ):
        super().__init__(vocab, **kwargs)
        if doubly_stochastic < 0:
            raise UserError(f"doubly_stochastic must be >= 0, got {doubly_stochastic}")
        attention_size = attention_size or hidden_size
        self.save_hyperparameters(
            {
                "hidden_size": hidden_size,
                "embed_size": embed_size,
                "attention_size": attention_size,
                "dropout": dropout,
                "doubly_stochastic": doubly_stochastic,
            }
        )
        self.item_projection = nn.Sequential(nn.Linear(self.feature_size, hidden_size), nn.ReLU(), nn.Dropout(dropout))
        self.initial_state = nn.Linear(hidden_size, 2 * hidden_size)
        self.attention_items = nn.Linear(hidden_size, attention_size)  # U_a and b_a
        self.attention_hidden = nn.Linear(hidden_size, attention_size, bias=False)  # W_a
        self.attention_score = nn.Linear(attention_size, 1, bias=False)  # w
        self.embedding = nn.Embedding(len(self.vocab), embed_size, padding_idx=self.vocab.pad_id)
        self.decoder = nn.LSTMCell(embed_size + hidden_size, hidden_size)
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden_size, len(self.vocab)))

    # ---- protocol -------------------------------------------------------------------------------------------
    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> State:
        """Batch-first state: projected ``items`` ``(B, m, H)``, their attention ``keys`` ``U_a v_i + b_a``,
        ``mask`` ``(B, m)`` and the initial ``h``, ``c`` (from the mean of the real items: 0 for a row with no item). No
        positional input: ``positions`` is ignored."""
        projected = self.item_projection(items)
        if mask is None:
            mask = torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
        weights = mask.to(projected.dtype)[..., None]
        mean = (projected * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        h, c = torch.tanh(self.initial_state(mean)).chunk(2, dim=-1)
        return {"items": projected, "keys": self.attention_items(projected), "mask": mask.bool(), "h": h, "c": c}

    def token_logprobs(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        return self._teacher_forced(state, tokens)[0]

    def target_logprobs(self, state: State, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` log-probabilities of ``targets``, step by step: only one step's ``(B, V)`` logits are ever
        held, never the ``(B, n, V)`` log-probabilities (nor their per-step list) of ``token_logprobs``."""
        h, c = state["h"], state["c"]
        out = []
        for t in range(tokens.shape[1]):
            logits, h, c, _ = self._step_logits(state, h, c, tokens[:, t])
            out.append(logprobs_at(logits, targets[:, t]))
        return torch.stack(out, dim=1)

    def attention(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, n, m)`` attention weights; row t is ``alpha_{t}``, used to predict token t+1. Rows sum to 1 over
        the real items and are 0 on masked ones."""
        return self._teacher_forced(state, tokens)[1]

    def init_decoder(self, state: State) -> State:
        return {"h": state["h"], "c": state["c"]}

    def decode_step(self, state: State, cache: State, tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        logprobs, h, c, _ = self._step(state, cache["h"], cache["c"], tokens[:, -1])
        return logprobs, {"h": h, "c": c}

    # ---- the one code path ----------------------------------------------------------------------------------
    def _attend(self, state: State, h: torch.Tensor) -> torch.Tensor:
        """``alpha`` ``(B, m)``: Eq. 5 with ``h = h_{t-1}``, softmax over the real items; exactly 0 on masked ones,
        so a row with no item attends to nothing and reads the zero context."""
        energy = self.attention_score(torch.tanh(state["keys"] + self.attention_hidden(h)[:, None])).squeeze(-1)
        energy = energy.masked_fill(~state["mask"], torch.finfo(energy.dtype).min)
        return torch.softmax(energy, dim=-1).masked_fill(~state["mask"], 0.0)

    def _step_logits(self, state: State, h: torch.Tensor, c: torch.Tensor, token: torch.Tensor):
        alpha = self._attend(state, h)
        context = einsum(alpha, state["items"], "b m, b m d -> b d")  # Eq. 4
        h, c = self.decoder(torch.cat([self.embedding(token), context], dim=-1), (h, c))
        return self.output(torch.cat([h, context], dim=-1)), h, c, alpha

    def _step(self, state: State, h: torch.Tensor, c: torch.Tensor, token: torch.Tensor):
        logits, h, c, alpha = self._step_logits(state, h, c, token)
        return torch.log_softmax(widened(logits), dim=-1), h, c, alpha

    def _teacher_forced(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities ``(B, n, V)`` and attention weights ``(B, n, m)`` of teacher forcing ``tokens``."""
        h, c = state["h"], state["c"]
        logprobs, alphas = [], []
        for t in range(tokens.shape[1]):
            step_logprobs, h, c, alpha = self._step(state, h, c, tokens[:, t])
            logprobs.append(step_logprobs)
            alphas.append(alpha)
        return torch.stack(logprobs, dim=1), torch.stack(alphas, dim=1)

    # ---- training objective ---------------------------------------------------------------------------------
    def caption_loss(self, items: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked NLL per token; in training mode plus ``doubly_stochastic * attention_penalty``."""
        state = self.encode(items, mask)
        logprobs, alphas = self._teacher_forced(state, tokens[:, :-1])
        targets = tokens[:, 1:]
        loss = F.nll_loss(
            rearrange(logprobs, "b n v -> (b n) v"), rearrange(targets, "b n -> (b n)"), ignore_index=self.vocab.pad_id
        )
        weight = float(self.hparams.doubly_stochastic)
        if self.training and weight > 0:
            loss = loss + weight * self.attention_penalty(alphas, targets != self.vocab.pad_id, state["mask"])
        return loss

    @staticmethod
    def attention_penalty(alphas: torch.Tensor, step_mask: torch.Tensor, item_mask: torch.Tensor) -> torch.Tensor:
        """Doubly stochastic regulariser of [27]: ``sum_i (1 - sum_t alpha_ti)^2`` over real steps ``(B, n)`` and
        real items ``(B, m)``, averaged over the batch."""
        coverage = einsum(alphas, step_mask.to(alphas.dtype), "b n m, b n -> b m")
        return (((1.0 - coverage) ** 2) * item_mask.to(alphas.dtype)).sum(-1).mean()
