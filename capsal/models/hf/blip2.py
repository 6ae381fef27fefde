"""``Blip2ForConditionalGeneration``: a ViT-style vision tower, a querying transformer (Q-Former) whose learned
queries cross-attend to the tower's output tokens, ``language_projection``, and a decoder-only language model (OPT)
that reads the projected query outputs as a prefix of its text (the image tokens of ``input_ids`` replaced by them).

Items are the tower's patch tokens (its class token excluded), an ``h x w`` grid. The query outputs are no items:
each has read every patch the Q-Former saw. Two ``keep`` modes:

- ``keep=input`` (which patch, seen alone by the tower, makes the word likely?): ``features`` are the patch
  embeddings; ``encode`` runs the tower on its class token and the kept patches, each at its own position embedding,
  and the Q-Former reads the tower's output (class token included). With every item this is the model's own pass.
- ``keep=encoder_output`` (which patch does the Q-Former read the word from, given a tower that saw the whole
  image?): ``features`` are the tower's output patch tokens for the whole image (one pass); the Q-Former's
  cross-attention sees only the kept ones (``encoder_attention_mask``). The class token is left out, as for BLIP: it
  summarises the whole image, so keeping it beside patch i would show the Q-Former everything; captions can
  therefore differ slightly from the model's own.

``keep=prefix`` would hide projected query tokens, which are not items: refused. A row with no item (mask all
False) is the language model on the words alone: its query tokens are zero and hidden by the attention mask, and
OPT derives text positions from that mask, so the words sit at ``0..n-1`` as without an image. ``generate`` is the
language model's own ``generate`` on the state's prefix, as ``Blip2ForConditionalGeneration.generate`` calls it.
Prompts (``prompt=``) follow bos and are never explained words.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import repeat
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from capsal.errors import UserError
from capsal.models.hf.family import Family, State, embed_kept, kept_rows, output_patches, patch_embeddings


class Blip2Family(Family):
    """The tower is ``model.vision_model`` (class token, position table, ``encoder``, ``post_layernorm``); the
    Q-Former ``model.qformer`` with ``model.query_tokens``; then ``model.language_projection`` and
    ``model.language_model``.

    The state holds ``memory`` (the tower tokens the Q-Former reads, in the graph Grad-CAM differentiates), its
    ``mask``, the ``item`` each is (-1: the class token, padding), ``count``, and ``queries``: the projected query
    outputs the language model reads, with ``seen`` (False in a row with no item)."""

    model_type = "blip-2"
    model_class = "Blip2ForConditionalGeneration"

    @property
    def vision(self) -> nn.Module:
        return self.model.vision_model

    @property
    def decoder(self) -> nn.Module:
        """The language model (its config gives the vocabulary and the positions)."""
        return self.model.language_model

    def never_generated(self) -> list[int]:
        image = getattr(self.model.config, "image_token_index", None)
        return [] if image is None else [int(image)]

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """The language model's bos / eos / pad, from its text config."""
        text = self.model.config.text_config
        return int(text.bos_token_id), int(text.eos_token_id), int(text.pad_token_id)

    def check_keep(self, keep: str) -> None:
        if not self.model.config.use_decoder_only_language_model:
            raise UserError(
                f"capsal explains BLIP-2 with a decoder-only language model (OPT); this one is "
                f"{type(self.decoder).__name__}: use a blip2-opt checkpoint"
            )
        if keep not in ("input", "encoder_output"):
            raise UserError(
                f"model.keep={keep} would hide BLIP-2's projected query tokens, which are not items: use model.keep="
                "input or model.keep=encoder_output"
            )

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        qformer = _QueryingTransformer(self.model)
        return [("decoder", self.decoder), ("qformer", qformer), ("encoder", self.vision)]

    def max_sentence_tokens(self) -> int | None:
        """The language model's positions less the query tokens in front of the text."""
        return int(self.decoder.config.max_position_embeddings) - int(self.model.config.num_query_tokens)

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        if keep == "input":
            return patch_embeddings(self.vision)(pixel_values)
        return output_patches(self.vision, pixel_values)

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """The tower tokens the Q-Former reads and its projected query outputs (module doc); ``keep=encoder_output``
        ignores ``positions``."""
        batch, count = items.shape[:2]
        if keep == "encoder_output":
            index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
            memory, kept, item = items, mask, index.masked_fill(~mask, -1)
        else:
            memory, compact, kept_item = kept_rows(self.encode_kept, items, mask, positions)
            prefix = memory.shape[1] - compact.shape[1]
            ones = torch.ones(batch, prefix, dtype=torch.bool, device=items.device)
            none = torch.full((batch, prefix), -1, dtype=torch.long, device=items.device)
            kept, item = torch.cat([ones, compact], dim=1), torch.cat([none, kept_item], dim=1)
        seen = mask.any(dim=1)
        # a row with nothing to read reads everything, then its queries are zeroed and hidden: finite, and no value
        # of its masked items reaches the words
        readable = kept | ~seen[:, None]
        queries = self.queries(memory, readable)
        queries = torch.where(seen[:, None, None], queries, torch.zeros_like(queries))
        return {
            "memory": memory,
            "mask": kept,
            "item": item,
            "count": count,
            "queries": queries,
            "seen": repeat(seen, "b -> b q", q=queries.shape[1]),
        }

    def encode_kept(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The tower's output for its class token and patch embeddings ``items`` at ``positions``."""
        vision = self.vision
        hidden = vision.encoder(inputs_embeds=embed_kept(vision, items, positions)).last_hidden_state
        return vision.post_layernorm(hidden)

    def queries(self, memory: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        """``(B, Q, D)``: the query tokens through the Q-Former, cross-attending to the ``readable`` tokens of
        ``memory``, then ``language_projection``, as ``Blip2ForConditionalGeneration.get_image_features``."""
        model = self.model
        query = model.query_tokens.expand(memory.shape[0], -1, -1)
        out = model.qformer(query_embeds=query, encoder_hidden_states=memory, encoder_attention_mask=readable.long())
        return model.language_projection(out.last_hidden_state.to(memory.dtype))

    def _inputs(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The language model's ``inputs_embeds`` (the state's queries, then ``tokens`` embedded) and attention
        mask (the queries hidden in a row with no item)."""
        embeds = self.decoder.get_input_embeddings()(tokens)
        hidden = torch.cat([state["queries"].to(embeds.dtype), embeds], dim=1)
        return hidden, torch.cat([state["seen"], torch.ones_like(tokens, dtype=torch.bool)], dim=1).long()

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> CausalLMOutputWithPast:
        """The language model on the state's queries then ``tokens``: logits ``(B, n, V)`` for the text."""
        hidden, attention = self._inputs(state, tokens)
        out = self.decoder(inputs_embeds=hidden, attention_mask=attention, use_cache=False, **options)
        return CausalLMOutputWithPast(logits=out.logits[:, state["queries"].shape[1] :])

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """The language model's own ``generate`` after the state's queries and ``prefix``, as
        ``Blip2ForConditionalGeneration.generate`` runs it (image tokens in ``input_ids``, their embeddings replaced
        by the queries); rows ``prefix, generated tokens``."""
        hidden, attention = self._inputs(state, prefix)
        count = state["queries"].shape[1]
        image = torch.full((prefix.shape[0], count), self.model.config.image_token_id, device=prefix.device)
        ids = torch.cat([image, prefix], dim=1)
        out = self.decoder.generate(
            input_ids=ids, inputs_embeds=hidden, attention_mask=attention, generation_config=config
        )
        return out[:, count:]


class _QueryingTransformer(nn.Module):
    """The query tokens, Q-Former and projection as one stage of the sanity check (randomised together)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.qformer, self.language_projection = model.qformer, model.language_projection
        self.query_tokens = model.query_tokens

    def reset_parameters(self) -> None:
        """The query tokens redrawn as ``transformers`` initialises them (the modules reset themselves)."""
        with torch.no_grad():
            self.query_tokens.normal_(std=self.qformer.config.initializer_range)
