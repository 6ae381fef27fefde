"""A small encoder-decoder Transformer captioner over the items.

The encoder reads the projected items plus LEARNED positional embeddings of their original indices (``encode``'s
``positions``, default ``0..m-1``), so an item kept alone by a saliency explainer is still seen where it was. The
decoder is causal over the words (with learned word positions) and cross-attends to the real items only (key padding
mask from ``mask``). Teacher forcing is one call; ``decode_step`` recomputes over the whole prefix (no cache).

Capacity: the word position table holds ``max_words`` positions, so the model takes at most ``max_words`` teacher-
forced tokens (bos + ``max_words - 1`` words, then the last word is predicted): ``max_sentence_tokens()`` says so.
A longer sentence is never an error: explainers and training keep bos and its first ``max_words`` words
(:func:`capsal.models.protocol.fit_sentences`; ``Saliency.words`` and the score columns then cover exactly those
words), ``token_logprobs`` itself returns rows for the first ``max_words`` steps only, and generation stops at
``max_words`` tokens. Each truncation is counted, and the first one in a process logs a warning.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from capsal.constraints import DropoutRate, PositiveInt
from capsal.errors import UserError
from capsal.models.base import CaptioningModule
from capsal.models.protocol import AttentionTrace, cut_tokens, widened
from capsal.models.tracing import recording

State = dict[str, torch.Tensor]


class TransformerCaptioner(CaptioningModule):
    """``hidden_size`` is ``d_model``; words are embedded in ``embed_size`` dimensions (``None``: ``hidden_size``)
    and projected to ``d_model`` when the sizes differ. ``max_items`` sizes the item position table (positions must
    lie in ``[0, max_items)``), ``max_words`` the word position table (longest token prefix, bos included: the
    model's capacity, ``max_sentence_tokens()``; longer sentences are truncated, see the module docstring).
    ``feedforward_size`` ``None`` means ``4 * hidden_size``."""

    RANDOMISATION_STAGES = (
        "output",
        "decoder",
        "encoder",
        "word_positions",
        "word_projection",
        "embedding",
        "item_positions",
        "item_projection",
        "backbone",
    )

    def __init__(
        self,
        vocab,
        hidden_size: PositiveInt = 128,
        embed_size: PositiveInt | None = None,
        num_heads: PositiveInt = 4,
        num_encoder_layers: PositiveInt = 2,
        num_decoder_layers: PositiveInt = 2,
        feedforward_size: PositiveInt | None = None,
        dropout: DropoutRate = 0.1,
        max_items: PositiveInt = 256,
        max_words: PositiveInt = 64,
        **kwargs,
    ):
        super().__init__(vocab, **kwargs)
        self.check_arguments({**kwargs, "hidden_size": hidden_size, "num_heads": num_heads, "max_words": max_words})
        embed_size = embed_size or hidden_size
        feedforward_size = feedforward_size or 4 * hidden_size
        self.save_hyperparameters(
            {
                "hidden_size": hidden_size,
                "embed_size": embed_size,
                "num_heads": num_heads,
                "num_encoder_layers": num_encoder_layers,
                "num_decoder_layers": num_decoder_layers,
                "feedforward_size": feedforward_size,
                "dropout": dropout,
                "max_items": max_items,
                "max_words": max_words,
            }
        )
        if self.hparams.max_len > max_words:
            raise UserError(f"max_words ({max_words}) must be at least max_len ({self.hparams.max_len})")
        self.item_projection = nn.Linear(self.feature_size, hidden_size)
        self.item_positions = nn.Embedding(max_items, hidden_size)
        self.embedding = nn.Embedding(len(self.vocab), embed_size, padding_idx=self.vocab.pad_id)
        self.word_projection = nn.Identity() if embed_size == hidden_size else nn.Linear(embed_size, hidden_size)
        self.word_positions = nn.Embedding(max_words, hidden_size)
        for table in (self.item_positions, self.word_positions):
            nn.init.normal_(table.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = {
            "d_model": hidden_size,
            "nhead": num_heads,
            "dim_feedforward": feedforward_size,
            "dropout": dropout,
            "batch_first": True,
            "norm_first": True,
        }
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer),
            num_encoder_layers,
            norm=nn.LayerNorm(hidden_size),
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            NoItemDecoderLayer(**layer), num_decoder_layers, norm=nn.LayerNorm(hidden_size)
        )
        self.output = nn.Linear(hidden_size, len(self.vocab))

    # ---- protocol -------------------------------------------------------------------------------------------
    @staticmethod
    def check_arguments(arguments: dict, prefix: str = "") -> None:
        """Options wrong only together (``capsal.config_schema`` calls it before anything is built)."""
        hidden, heads = arguments.get("hidden_size", 128), arguments.get("num_heads", 4)
        if hidden % heads:
            raise UserError(
                f"{prefix}hidden_size={hidden} is not divisible by {prefix}num_heads={heads}; choose sizes that divide"
            )
        words, length = arguments.get("max_words", 64), arguments.get("max_len", 20)
        if words < length:
            raise UserError(f"{prefix}max_words={words} is less than {prefix}max_len={length}; raise max_words")

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> State:
        """Batch-first state: the encoder's ``memory`` ``(B, m, H)`` and ``mask`` ``(B, m)``. ``positions``
        ``(B, m)`` long (default ``arange(m)``) are the items' original indices. A row with no item has zero
        memory, and the decoder's cross-attention reads nothing from it (:class:`NoItemDecoderLayer`)."""
        batch, count = items.shape[:2]
        if mask is None:
            mask = torch.ones(batch, count, dtype=torch.bool, device=items.device)
        if positions is None:
            positions = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        positions = positions.to(device=items.device, dtype=torch.long)
        if positions.shape != (batch, count):
            raise ValueError(f"positions must have shape {(batch, count)} (batch, items), got {tuple(positions.shape)}")
        limit = self.hparams.max_items
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= limit):
            raise ValueError(
                f"item positions must lie in [0, {limit}), got [{int(positions.min())}, {int(positions.max())}]; "
                f"raise model.max_items (a new model) or use fewer items"
            )
        mask = mask.bool()
        hidden = self.dropout(self.item_projection(items) + self.item_positions(positions))
        # a row with no item attends over its padding (finite, never read: the decoder reads nothing there)
        seen = mask.any(dim=1)
        memory = self.encoder(hidden, src_key_padding_mask=~mask & seen[:, None])
        return {"memory": torch.where(seen[:, None, None], memory, 0.0), "mask": mask}

    def max_sentence_tokens(self) -> int:
        """The most teacher-forced tokens (bos included) this model takes: its word position table's size."""
        return int(self.hparams.max_words)

    def token_logprobs(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, n, V)`` for ``n = min(tokens' length, max_words)``: steps beyond the word positions are dropped
        (counted, a warning the first time) rather than an error."""
        return torch.log_softmax(widened(self.token_logits(state, tokens)), dim=-1)

    def token_logits(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """The logits under ``token_logprobs``, with its cut to ``max_words`` steps."""
        limit = self.max_sentence_tokens()
        tokens = cut_tokens(self, tokens, limit, limit)
        length = tokens.shape[1]
        words = self.word_projection(self.embedding(tokens))
        words = self.dropout(words + self.word_positions(torch.arange(length, device=tokens.device)))
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=words.dtype)
        hidden = self.decoder(
            words,
            state["memory"],
            tgt_mask=causal,
            tgt_is_causal=True,
            memory_key_padding_mask=~state["mask"],
        )
        return self.output(hidden)

    def attention_trace(self, items: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> AttentionTrace:
        """Every attention map of one pass of :meth:`encode` and :meth:`token_logprobs` (the model's own code; the
        maps recorded per head on the way, :func:`~capsal.models.tracing.recording`). The encoder sequence is the
        items themselves; padded items (``mask`` False) are no item."""
        layers = self.decoder.layers
        groups = {
            "encoder": [layer.self_attn for layer in self.encoder.layers],
            "decoder": [layer.self_attn for layer in layers],
            "cross": [layer.multihead_attn for layer in layers],
        }
        with recording(groups) as maps:
            state = self.encode(items, mask)
            logprobs = self.token_logprobs(state, tokens)
        item = torch.arange(items.shape[1], device=items.device).expand(items.shape[0], -1)
        item = item.masked_fill(~state["mask"], -1)
        return AttentionTrace(maps["encoder"], maps["decoder"], maps["cross"], logprobs, item, items.shape[1])

    def generate(
        self,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> torch.Tensor:
        """As :meth:`CaptioningModule.generate`, at most ``max_words`` generated tokens (the word positions)."""
        return super().generate(
            items, mask, beam_size, min(max_len or self.hparams.max_len, self.max_sentence_tokens())
        )

    def init_decoder(self, state: State) -> dict:
        return {}

    def decode_step(self, state: State, cache: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Recomputes the whole prefix: causal masking makes the last row the next-token distribution."""
        return self.token_logprobs(state, tokens)[:, -1], cache


class NoItemDecoderLayer(nn.TransformerDecoderLayer):
    """``nn.TransformerDecoderLayer`` (same parameters, same outputs) whose cross-attention over a row with no item
    (memory all masked) reads the zero vector, as soft attention over nothing does: the block gives the output
    projection's bias instead of PyTorch's NaN, so the row is the decoder from the words alone."""

    def _mha_block(
        self,
        x: torch.Tensor,
        mem: torch.Tensor,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if key_padding_mask is None:
            return super()._mha_block(x, mem, attn_mask, key_padding_mask, is_causal)
        masked = key_padding_mask if key_padding_mask.dtype == torch.bool else torch.isneginf(key_padding_mask)
        empty = masked.all(dim=-1)
        if not bool(empty.any()):
            return super()._mha_block(x, mem, attn_mask, key_padding_mask, is_causal)
        # attend over the empty rows' padding (finite, so no NaN reaches any gradient), then read nothing there
        finite = key_padding_mask.masked_fill(empty[:, None], 0)
        out = super()._mha_block(x, mem, attn_mask, finite, is_causal)
        bias = self.multihead_attn.out_proj.bias
        nothing = torch.zeros_like(out) if bias is None else self.dropout2(bias.to(out.dtype).expand_as(out))
        return torch.where(empty[:, None, None], nothing, out)
