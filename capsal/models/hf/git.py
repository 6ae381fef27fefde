"""``GitForCausalLM``: a CLIP vision tower whose output tokens, through ``visual_projection``, are a prefix of a
BERT-style language model's own self-attention (no cross-attention: image tokens attend to each other, each text
token to every image token and the text before it).

Items are the tower's patch tokens (its class token excluded), an ``h x w`` grid. Two ``keep`` modes:

- ``keep=input`` (which patch, seen alone by the tower, makes the word likely?): ``features`` are the patch
  embeddings; ``encode`` runs the tower on its class token and the kept patches, each at its own position embedding,
  and the language model reads the projected output (class token included) as its prefix. With every item this is
  the model's own pass.
- ``keep=prefix`` (where does the language model read the word, given a tower that saw the whole image?):
  ``features`` are the tower's output patch tokens for the whole image (one pass); the language model's attention
  mask hides every image token but the kept ones, the class token included (it summarises the whole image).

GIT embeds text positions over the text alone (``0..n-1``, image tokens carry no position in the language model),
so hiding image tokens moves no other token. A row with no item (mask all False) hides every image token: the
language model on the words alone. ``generate`` is the model's own ``generate`` on the state's prefix.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from einops import repeat
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from capsal.errors import UserError
from capsal.models.hf.family import Family, State, embed_kept, kept_rows, output_patches, patch_embeddings


class GitFamily(Family):
    """The tower is ``model.git.image_encoder.vision_model`` (CLIP: class token, position table, ``pre_layrnorm``,
    ``encoder``, ``post_layernorm``), then ``model.git.visual_projection``; the language model is
    ``model.git.embeddings``, ``model.git.encoder`` and the ``model.output`` head."""

    model_type = "git"
    model_class = "GitForCausalLM"

    @property
    def vision(self) -> nn.Module:
        return self.model.git.image_encoder.vision_model

    @property
    def decoder(self) -> nn.Module:
        """The language model's layers (their config is the model's: vocabulary, text positions)."""
        return self.model.git.encoder

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """GIT's bos / eos / pad ([CLS] / [SEP] / [PAD] of its BERT tokenizer): its config's, else the tokenizer's."""
        config = self.model.config
        bos = config.bos_token_id if config.bos_token_id is not None else tokenizer.cls_token_id
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.sep_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        return int(bos), int(eos), int(pad)

    def check_keep(self, keep: str) -> None:
        if keep not in ("input", "prefix"):
            raise UserError(
                f"model.keep={keep} needs a decoder that cross-attends; GitForCausalLM reads its image tokens as a "
                "prefix: use model.keep=input or model.keep=prefix"
            )

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        git = self.model.git
        language = nn.ModuleList([self.model.output, git.encoder, git.embeddings])
        return [("decoder", language), ("projection", git.visual_projection), ("encoder", self.vision)]

    def max_sentence_tokens(self) -> int | None:
        return int(self.model.config.max_position_embeddings)

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        if keep == "input":
            return patch_embeddings(self.vision)(pixel_values)
        return output_patches(self.vision, pixel_values)

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """``memory``: the projected image tokens ``(B, S, D)`` the language model reads as its prefix, ``mask`` the
        ones it sees, ``item`` the item each is (-1: the class token, padding), ``count`` the items.
        ``keep=prefix`` ignores ``positions``."""
        batch, count = items.shape[:2]
        project = self.model.git.visual_projection
        if keep == "prefix":
            index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
            return {"memory": project(items), "mask": mask, "item": index.masked_fill(~mask, -1), "count": count}
        memory, kept, item = kept_rows(self.encode_kept, items, mask, positions)
        prefix = memory.shape[1] - kept.shape[1]
        seen = repeat(kept.any(dim=1), "b -> b p", p=prefix)  # no item: the class token hidden too
        none = torch.full((batch, prefix), -1, dtype=torch.long, device=items.device)
        return {
            "memory": project(memory),
            "mask": torch.cat([seen, kept], dim=1),
            "item": torch.cat([none, item], dim=1),
            "count": count,
        }

    def encode_kept(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The tower's output for its class token and patch embeddings ``items`` at ``positions``."""
        vision = self.vision
        hidden = vision.pre_layrnorm(embed_kept(vision, items, positions))
        return vision.post_layernorm(vision.encoder(inputs_embeds=hidden).last_hidden_state)

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> CausalLMOutput:
        """The language model on the state's image tokens then ``tokens``, under GIT's own attention mask with the
        hidden image tokens masked out: logits ``(B, n, V)`` for the text."""
        git = self.model.git
        memory = state["memory"]
        hidden = torch.cat([memory, git.embeddings(input_ids=tokens)], dim=1)
        allowed = prefix_attention(state["mask"], tokens.shape[1])
        bias = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        bias = bias.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        out = git.encoder(hidden, attention_mask=bias, use_cache=False).last_hidden_state
        return CausalLMOutput(logits=self.model.output(out[:, memory.shape[1] :]))

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """``GitForCausalLM.generate`` after ``prefix``, with the state's image tokens in place of the tower's."""
        size = self.vision.config.image_size
        weight = self.vision.embeddings.patch_embedding.weight
        pixels = torch.zeros(prefix.shape[0], 3, size, size, dtype=weight.dtype, device=prefix.device)
        with self.reading(state):
            return self.model.generate(
                input_ids=prefix, pixel_values=pixels, attention_mask=torch.ones_like(prefix), generation_config=config
            )

    @contextlib.contextmanager
    def reading(self, state: State) -> Iterator[None]:
        """The model's own forward reading the state: ``visual_projection`` gives the state's image tokens (one
        row per beam), the language model's mask hides the state's hidden ones, and a cached step widens its text
        mask by the state's image tokens (GIT widens it by the full grid's count)."""
        git = self.model.git
        attention = git.encoder.layer[0].attention.self
        before = attention.image_patch_tokens
        handles = [
            git.visual_projection.register_forward_hook(functools.partial(_image_tokens, state["memory"])),
            git.encoder.register_forward_pre_hook(functools.partial(_hide, state["mask"]), with_kwargs=True),
        ]
        attention.image_patch_tokens = state["memory"].shape[1]
        try:
            yield
        finally:
            attention.image_patch_tokens = before
            for handle in handles:
                handle.remove()


def prefix_attention(visible: torch.Tensor, text: int) -> torch.Tensor:
    """``(B, 1, S, S)`` True where a query may attend to a key, for ``S = p + text`` tokens with the ``p`` image
    tokens first: GIT's mask (image tokens attend to each other, text to every image token and causally to text)
    with the image tokens ``visible`` False hidden from every query (each still attends to itself, so no row is
    empty)."""
    batch, image = visible.shape
    size = image + text
    device = visible.device
    query, key = torch.arange(size, device=device)[:, None], torch.arange(size, device=device)[None, :]
    gits = (key < image) | ((query >= image) & (key <= query))
    seen = torch.cat([visible, torch.ones(batch, text, dtype=torch.bool, device=device)], dim=1)
    allowed = (gits[None] & seen[:, None, :]) | (query == key)[None]
    return allowed[:, None]


def _image_tokens(memory: torch.Tensor, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the state's image tokens in place of the projection's output (one copy per beam)."""
    return memory.repeat_interleave(output.shape[0] // memory.shape[0], dim=0).to(output.dtype)


def _hide(visible: torch.Tensor, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook on the language model's layers: the additive mask's image columns that ``visible`` says
    are hidden set to the dtype's minimum (one row of ``visible`` per beam)."""
    mask = kwargs["attention_mask"] if "attention_mask" in kwargs else args[1]
    rows = visible.repeat_interleave(mask.shape[0] // visible.shape[0], dim=0)
    hidden = torch.zeros(mask.shape[0], 1, 1, mask.shape[-1], dtype=torch.bool, device=mask.device)
    hidden[..., : rows.shape[1]] = ~rows[:, None, None, :]
    mask = mask.masked_fill(hidden, torch.finfo(mask.dtype).min)
    if "attention_mask" in kwargs:
        return args, {**kwargs, "attention_mask": mask}
    return (args[0], mask, *args[2:]), kwargs
