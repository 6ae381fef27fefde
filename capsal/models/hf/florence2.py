"""``Florence2ForConditionalGeneration``: a DaViT vision tower (convolutional stages with windowed and channel
attention), ``multi_modal_projector`` (a 2-D position embedding, the mean of every grid token as one summary token
before the grid tokens, a projection) and BART: the projected image tokens, then the task prompt's tokens, are the
input of BART's encoder, and BART's decoder cross-attends to that encoder's output.

Items are the tower's output grid tokens, an ``h x w`` grid (24 x 24 for Florence-2 at 768 pixels), each a
projected image token of the encoder's input. The summary token is no item: it is the mean of every grid token.
The task prompt is ``<CAPTION>``: :class:`transformers.Florence2Processor` writes the encoder's input ids (image
tokens, then ``<s>What does the image describe?</s>``), so the prompt is encoder input, never an explained word;
the explained text is the decoder's sentence (the model's own caption, or a query). Two ``keep`` modes:

- ``keep=prefix`` (which image token does BART's encoder read the word from, given a tower that saw the whole
  image?): ``features`` are the projected grid tokens of the whole image (one tower pass); the encoder's attention
  mask hides every image token but the kept ones, the summary token included (it summarises the whole image), and
  the decoder cross-attends to what the encoder kept (the kept image tokens and the prompt). BART numbers encoder
  positions over the whole sequence; every token keeps the position the processor's layout gives it (item j is the
  (j+1)-th image token), so hidden tokens move no other token. A row with no item is the encoder on the prompt
  alone. With every item this is the model's own pass with its summary token hidden, so captions can differ
  slightly from the model's own.
- ``keep=encoder_output`` (where does the decoder read the word, given an encoder that saw the whole image and the
  prompt?): ``features`` are BART's encoder outputs at the grid tokens, the model's own encoder pass; the decoder's
  cross-attention sees only the kept ones. The summary token's and the prompt's outputs are left out, as BLIP's
  class token is: each has read the whole image, so keeping one beside item i would show the decoder everything;
  captions can therefore differ from the model's own. A row with no item is the decoder on the words alone (its
  cross-attention reads zero).

``keep=input`` is refused: the tower has no class token and no position table to run one patch alone, and its
convolutions (a patch embedding at every stage, a depthwise convolution in every block) and windowed attention mix
neighbouring patches before the grid tokens exist. BART's decoder starts from ``decoder_start_token_id`` (``</s>``)
before bos (``<s>``, which Florence-2's generation forces): capsal's rows start with both, a prefix that is never
words. ``generate`` is the model's own ``generate`` on the state's encoder output; ``attention`` and
``attention_trace`` read the decoder's cross-attention (and, for ``keep=prefix``, BART's encoder layers).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from einops import repeat
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from capsal.errors import UserError
from capsal.models.hf.family import (
    Family,
    State,
    cross_attention_on_items,
    recorded_modules,
    traced_pass,
    whole_image,
    zero_context_hooks,
)
from capsal.models.protocol import AttentionTrace


class Florence2Family(Family):
    """The tower is ``model.model.vision_tower``, then ``model.model.multi_modal_projector``; BART is
    ``model.model.language_model`` (its ``encoder`` and ``decoder``) with ``model.lm_head``.

    The state holds ``memory`` (the encoder output the decoder cross-attends to, in the graph Grad-CAM
    differentiates), its ``mask``, the ``item`` each token is (-1: the prompt, padding) and ``count``. The encoder's
    input layout (where the image tokens and the prompt sit) is read from the processor (:meth:`image_processor`)."""

    model_type = "florence2"
    attends = True
    model_class = "Florence2ForConditionalGeneration"
    processor_class = "Florence2Processor"
    task: ClassVar[str] = "<CAPTION>"  # the task prompt the processor turns into the encoder's text

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.task_ids: torch.Tensor | None = None  # the encoder's input ids: image tokens, then the prompt

    @property
    def vision(self) -> nn.Module:
        return self.model.model.vision_tower

    @property
    def decoder(self) -> nn.Module:
        """BART's decoder (its config gives the vocabulary and the positions)."""
        return self.model.model.language_model.decoder

    @property
    def encoder(self) -> nn.Module:
        """BART's encoder, on the image tokens and the prompt."""
        return self.model.model.language_model.encoder

    def feature_size(self, keep: str) -> int:
        """The items are image tokens or encoder outputs, as wide as BART."""
        return int(self.model.config.text_config.d_model)

    def start_ids(self) -> list[int]:
        """BART's decoder start token (``</s>``), before bos."""
        return [int(self.model.config.text_config.decoder_start_token_id)]

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """BART's bos / eos / pad, from its text config."""
        text = self.model.config.text_config
        return int(text.bos_token_id), int(text.eos_token_id), int(text.pad_token_id)

    def image_processor(self, processor: Any) -> Any:
        """The ``Florence2Processor``'s image processor (the whole image resized); the encoder's input ids for
        :attr:`task` (image tokens, then the prompt) are read from the processor on the way, as it writes them."""
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            raise UserError(
                f"Florence-2 needs its Florence2Processor (image processor and tokenizer), got "
                f"{type(processor).__name__}; save the model's folder with Florence2Processor.save_pretrained"
            )
        blank = np.zeros((8, 8, 3), dtype=np.uint8)
        self.task_ids = processor(text=self.task, images=blank, return_tensors="pt")["input_ids"][0]
        return whole_image(processor.image_processor)

    def _layout(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids, image, prompt)``: the encoder's input ids, the positions of its image tokens (the summary token
        first) and of its prompt tokens."""
        if self.task_ids is None:
            raise UserError("Florence-2's encoder input is unknown: build the captioner with its Florence2Processor")
        ids = self.task_ids.to(device)
        is_image = ids == self.model.config.image_token_id
        return ids, torch.nonzero(is_image)[:, 0], torch.nonzero(~is_image)[:, 0]

    def check_keep(self, keep: str) -> None:
        if self.model.config.text_config.model_type != "bart":
            raise UserError(
                f"capsal explains Florence-2 with a BART language model; this one is "
                f"{self.model.config.text_config.model_type}: use a Florence-2 checkpoint"
            )
        if keep not in ("prefix", "encoder_output"):
            raise UserError(
                f"model.keep={keep} needs a vision tower that can see one patch alone; Florence-2's DaViT tower has "
                "no class token nor position table and mixes neighbouring patches in its convolutions and windowed "
                "attention: use model.keep=prefix or model.keep=encoder_output"
            )

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        """Output first: BART's decoder and head, BART's encoder, the projector, the tower. The head shares BART's
        token embeddings, so the decoder stage re-draws the prompt's embeddings too."""
        model = self.model.model
        head = nn.ModuleList([self.model.lm_head, self.decoder])
        return [
            ("decoder", head),
            ("text_encoder", self.encoder),
            ("projection", model.multi_modal_projector),
            ("encoder", self.vision),
        ]

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        """``keep=prefix``: the projected grid tokens (the summary token left out); ``keep=encoder_output``: BART's
        encoder outputs at the grid tokens, from the model's own encoder pass on the whole image and the prompt."""
        ids, image, _ = self._layout(pixel_values.device)
        tokens = self.model.get_image_features(pixel_values).pooler_output  # the summary token, then the grid
        if tokens.shape[1] != len(image):
            raise UserError(
                f"Florence-2's tower gives {tokens.shape[1]} image tokens but its processor writes {len(image)}: "
                "the processor's image size or image_seq_length does not fit the model"
            )
        if keep == "prefix":
            return tokens[:, 1:]
        hidden = repeat(self.embed(ids), "s d -> b s d", b=tokens.shape[0]).clone()
        hidden[:, image] = tokens.to(hidden.dtype)
        where = repeat(torch.arange(len(ids), device=ids.device), "s -> b s", b=tokens.shape[0])
        return self.run_encoder(hidden, torch.ones_like(where, dtype=torch.bool), where)[:, image[1:]]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """BART's token embeddings of ``ids`` (scaled as the model's own ``get_input_embeddings``)."""
        return self.model.get_input_embeddings()(ids)

    def run_encoder(self, hidden: torch.Tensor, seen: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """BART's encoder on ``hidden`` ``(B, S, D)``, each token at its encoder position ``where`` ``(B, S)``,
        with the tokens ``seen`` False hidden from every other (its attention mask)."""
        positions = self.encoder.embed_positions
        handle = positions.register_forward_hook(functools.partial(_at_positions, where))
        try:
            return self.encoder(inputs_embeds=hidden, attention_mask=seen.long()).last_hidden_state
        finally:
            handle.remove()

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """The encoder output the decoder reads (module doc); ``keep=encoder_output`` ignores ``positions``."""
        batch, count = items.shape[:2]
        index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch).masked_fill(~mask, -1)
        kept = items.masked_fill(~mask[..., None], 0)  # a masked item's values reach nothing
        if keep == "encoder_output":
            return {"memory": kept, "mask": mask, "item": index, "count": count}
        ids, image, prompt = self._layout(items.device)
        text = repeat(self.embed(ids[prompt]), "p d -> b p d", b=batch).to(items.dtype)
        seen = torch.cat([mask, torch.ones(batch, len(prompt), dtype=torch.bool, device=items.device)], dim=1)
        where = torch.cat([image[1:][positions], repeat(prompt, "p -> b p", b=batch)], dim=1)
        memory = self.run_encoder(torch.cat([kept, text], dim=1), seen, where)
        none = torch.full((batch, len(prompt)), -1, dtype=torch.long, device=items.device)
        return {"memory": memory, "mask": seen, "item": torch.cat([index, none], dim=1), "count": count}

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> Seq2SeqLMOutput:
        """The model's own decoder and head on ``tokens`` (rows from the decoder start token), cross-attending to
        the state's memory: logits ``(B, n, V)``."""
        with self.reading(state):
            return self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=state["memory"]),
                attention_mask=state["mask"].long(),
                decoder_input_ids=tokens,
                use_cache=False,
                **options,
            )

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """``Florence2ForConditionalGeneration.generate`` after ``prefix`` (from the decoder start token) on the
        state's encoder output; rows ``prefix, generated tokens``."""
        config.update(decoder_start_token_id=self.start_ids()[0])  # the prefix starts with it: nothing is prepended
        with self.reading(state):
            return self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=state["memory"]),
                attention_mask=state["mask"].long(),
                decoder_input_ids=prefix,
                generation_config=config,
            )

    def attention(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's cross-attention, the mean over its heads, on each item (the prompt's share is
        left out, so a row sums to at most 1)."""
        return cross_attention_on_items(self, state, tokens)

    def attention_trace(
        self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str, tokens: torch.Tensor
    ) -> AttentionTrace:
        """Every attention map of one pass of :meth:`encode` and :meth:`decode` (:func:`~capsal.models.hf.family.
        traced_pass`). The encoder sequence is what the decoder cross-attends to: ``keep=prefix``: the kept image
        tokens and the prompt, through BART's encoder layers (the tower ran before: none of its layers is in the
        pass); ``keep=encoder_output``: the grid tokens' encoder outputs, with no encoder layer in the pass."""
        encoder = recorded_modules(self.encoder, "attentions") if keep == "prefix" else []
        language = self.model.model.language_model
        return traced_pass(self, encoder, [language], items, mask, positions, keep, tokens)

    @contextlib.contextmanager
    def reading(self, state: State) -> Iterator[None]:
        """The decoder reading the state: a row with nothing to read (``keep=encoder_output``, no item) reads zero
        (:func:`~capsal.models.hf.family.zero_context_hooks`)."""
        empty = ~state["mask"].any(dim=1)
        handles = zero_context_hooks(self.decoder, empty) if bool(empty.any()) else []
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _at_positions(where: torch.Tensor, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on BART's learned position embedding: the embeddings of positions ``where`` ``(B, S)`` (BART
    offsets its table by ``module.offset``) in place of ``0..S-1``."""
    return nn.functional.embedding(where + module.offset, module.weight).to(output.dtype)
