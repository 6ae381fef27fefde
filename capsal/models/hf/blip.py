"""``BlipForConditionalGeneration``: BLIP's vision transformer and its BERT-style text decoder that cross-attends to
it; a prompt (``prompt=``, e.g. "a picture of") conditions the caption."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from capsal.models.hf.family import CrossAttentionFamily, patch_embeddings


class BlipFamily(CrossAttentionFamily):
    """The encoder is ``model.vision_model`` (a class token, a position table, an ``encoder`` and a
    ``post_layernorm``), the decoder ``model.text_decoder``; both are as wide, so no projection."""

    model_type = "blip"
    model_class = "BlipForConditionalGeneration"

    @property
    def vision(self) -> nn.Module:
        return self.model.vision_model

    @property
    def decoder(self) -> nn.Module:
        return self.model.text_decoder

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """BLIP's [DEC] / [SEP] / [PAD], from its text config."""
        text = self.model.config.text_config
        return text.bos_token_id, text.sep_token_id, text.pad_token_id

    def read_hooks(self, state: dict[str, Any]) -> list[Any]:
        """Also hands each cross-attention its mask: BLIP's text layers pass it as ``attention_mask``, which its
        cross-attention never reads (transformers 5), so padded items would be attended to."""
        masks = [
            module.self.register_forward_pre_hook(_cross_attention_mask, with_kwargs=True)
            for name, module in self.decoder.named_modules()
            if name.endswith("crossattention")
        ]
        return masks + super().read_hooks(state)

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return patch_embeddings(self.vision)(pixel_values)

    def run_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.vision.post_layernorm(self.vision.encoder(inputs_embeds=hidden).last_hidden_state)


def _cross_attention_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: the mask given as ``attention_mask`` passed on as ``encoder_attention_mask``."""
    if kwargs.get("encoder_attention_mask") is None and kwargs.get("attention_mask") is not None:
        return args, {**kwargs, "encoder_attention_mask": kwargs["attention_mask"]}
    return None
