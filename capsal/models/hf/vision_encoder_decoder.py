"""``VisionEncoderDecoderModel``: a ViT, DeiT, Swin... encoder and a GPT-2/BERT-style decoder that cross-attends to
it (ViT-GPT2 and kin)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from capsal.errors import UserError
from capsal.models.hf.family import CrossAttentionFamily


class VisionEncoderDecoderFamily(CrossAttentionFamily):
    """The encoder is ``model.encoder``, the decoder ``model.decoder``; an encoder narrower or wider than the decoder
    goes through ``enc_to_dec_proj``. ``keep=input`` runs ViT and DeiT encoders (a list of ``layers`` and a final
    ``layernorm``); Swin's shifted windows and patch merging need the full grid (``keep=encoder_output``)."""

    model_type = "vision-encoder-decoder"
    model_class = "VisionEncoderDecoderModel"

    @property
    def vision(self) -> nn.Module:
        return self.model.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.model.decoder

    @property
    def projection(self) -> nn.Module | None:
        return getattr(self.model, "enc_to_dec_proj", None)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.projection(hidden) if self.projection is not None else hidden

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        stages = [("decoder", self.decoder), ("projection", self.projection), ("encoder", self.vision)]
        return [(name, module) for name, module in stages if module is not None]

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """``decoder_start_token_id`` / eos / pad of the model's config, else its decoder's, else the tokenizer's
        (pad falls back to eos, as GPT-2 has none)."""
        config = self.model.config
        top, decoder = _ids_of(config), _ids_of(config.decoder)
        bos = _first(top("decoder_start_token_id"), decoder("decoder_start_token_id"), decoder("bos_token_id"))
        eos = _first(top("eos_token_id"), decoder("eos_token_id"), tokenizer.eos_token_id, tokenizer.sep_token_id)
        pad = _first(top("pad_token_id"), decoder("pad_token_id"), tokenizer.pad_token_id, eos)
        if bos is None or eos is None:
            raise UserError(
                "the model's config names no decoder_start_token_id or eos_token_id; set them before saving"
            )
        return bos, eos, pad

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision.embeddings.patch_embeddings(pixel_values)

    def run_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.vision.layers:
            hidden = layer(hidden, None)
        return self.vision.layernorm(hidden)


def _ids_of(config: Any):
    """A look-up of token-id settings that are absent from some configs."""
    return lambda name: getattr(config, name, None)


def _first(*values: int | None) -> int | None:
    return next((int(v) for v in values if v is not None), None)
