"""``Qwen2VLForConditionalGeneration``: a vision tower whose merged tokens replace the image tokens
(``<|image_pad|>``) of a Qwen2 language model's input, placed by M-RoPE (3D rotary positions: temporal, height,
width).

The tower embeds 14 x 14 patches (``patch_size``) with a temporal patch size (an image repeats its frame), runs
full attention over one image's patches (``cu_seqlens``) with 2D rotary positions, and its ``PatchMerger`` merges each
2 x 2 group of neighbouring patches into one language-model token. Items are the merged tokens, one per 2 x 2 patch
group, an ``h x w`` grid read row-major. Every image is resized to one square (so a batch shares one grid): its side
is the largest multiple of ``patch_size x merge_size`` whose square fits the image processor's ``max_pixels``
(``size.longest_edge``; set it in the folder's ``preprocessor_config.json`` to choose the grid, e.g. 448 x 448
pixels gives a 16 x 16 grid). The whole image is resized, so ``Saliency.to_image_size`` maps cells back onto the
original pixels.

The language model reads ``frame before, image tokens, frame after, bos, words``: the frame is the tokenizer's chat
template around one image (a user turn holding the image, then the assistant's turn), or ``<|vision_start|>`` and
``<|vision_end|>`` without a template; capsal's bos is the frame's last token and ``model.prompt`` follows it. Frame
and prompt are prefix, never explained words. Two ``keep`` modes:

- ``keep=prefix`` (where does the language model read the word, given a tower that saw the whole image?):
  ``features`` are the merged tokens for the whole image (one tower pass); the language model's attention mask hides
  every image token but the kept ones. Qwen2-VL derives M-RoPE positions from the attention mask when none are
  given (its ``get_rope_index`` drops the masked tokens, and then fails: the grid no longer matches); hidden tokens
  must not move the others, so capsal passes the positions ``get_rope_index`` gives the whole sequence, each kept
  token at its own (height, width) and the words after the whole grid.
- ``keep=input`` (which 2 x 2 patch group, seen alone by the tower, makes the word likely?): ``features`` are the
  patch embeddings of each group (its four patches' ``patch_embed`` outputs side by side); ``encode`` runs the
  tower's blocks and merger on the kept groups' patches only, at their own 2D rotary positions, as one image
  (``cu_seqlens``). The tower's rotary positions are relative, so a group alone looks the same wherever it sits: its
  place reaches the model through the language model's M-RoPE position, as in ``keep=prefix``. With every item this
  is the model's own pass.

``keep=encoder_output`` is refused: the merged tokens are the language model's own input (``keep=prefix``). A row
with no item hides every image token: the language model on the frame and the words, at the positions they have
after an image. ``generate`` is the model's own ``generate`` on the state's image tokens, with the same mask and
positions (a cached step continues each position by one, as the model's own rope deltas do). Capsal reads no
attention maps of it (``soft_attention``, ``rollout`` and ``relevancy`` refuse); ``gradcam`` weighs the merged
tokens.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from capsal.errors import UserError
from capsal.models.hf.family import Family, State

log = logging.getLogger("capsal")


class Qwen2VLFamily(Family):
    """The tower is ``model.model.visual`` (``patch_embed``, ``rotary_pos_emb``, ``blocks``, ``merger``); the language
    model ``model.model.language_model`` with ``model.lm_head``.

    The family learns the grid from the image processor (:meth:`image_processor`) and the frame from the tokenizer
    (:meth:`special_ids`), both called once when the captioner is built. The state holds ``memory`` (the merged tokens
    ``(B, m, D)`` the language model reads; ``keep=input`` leaves masked ones zero), its ``mask``, the ``item`` each
    is (-1: hidden), ``count`` and ``positions`` (each item's cell of the grid)."""

    model_type = "qwen2_vl"
    model_class = "Qwen2VLForConditionalGeneration"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.side: int | None = None  # merged tokens per side of the square grid
        self.before: list[int] = []  # the frame's tokens before the image tokens
        self.after: list[int] = []  # the frame's tokens after them, capsal's bos last
        self._frame_positions: torch.Tensor | None = None

    @property
    def vision(self) -> nn.Module:
        return self.model.model.visual

    @property
    def decoder(self) -> nn.Module:
        """The language model (its config gives the vocabulary and the positions)."""
        return self.model.model.language_model

    @property
    def merge(self) -> int:
        return int(self.vision.config.spatial_merge_size)

    def image_processor(self, processor: Any) -> SquareImages:
        """The processor resizing every image to one square (module doc), whose grid the family remembers."""
        vision = self.vision.config
        factor = int(vision.patch_size) * self.merge
        ours = (getattr(processor, "patch_size", None), getattr(processor, "merge_size", None))
        if ours != (vision.patch_size, vision.spatial_merge_size):
            raise UserError(
                f"the image processor {type(processor).__name__} cuts patch_size/merge_size {ours}, the model's tower "
                f"{(vision.patch_size, vision.spatial_merge_size)}; save the model's own Qwen2VLImageProcessor in "
                "the folder"
            )
        size = dict(processor.size)  # max_pixels and min_pixels, as the processor keeps them
        most, least = int(size["longest_edge"]), int(size.get("shortest_edge") or 0)
        side = math.isqrt(most) // factor * factor
        if side == 0 or side * side < least:
            raise UserError(
                f"the image processor's max_pixels={most} (size.longest_edge) leaves no square of {factor} x {factor} "
                f"pixel groups between its min_pixels={least} and it; raise max_pixels in preprocessor_config.json"
            )
        self.side = side // factor
        self._frame_positions = None
        grid = f"{self.side} x {self.side}"
        log.info("Qwen2-VL: images resized to %d x %d pixels, a %s grid (max_pixels=%d)", side, side, grid, most)
        return SquareImages(processor, side)

    def feature_size(self, keep: str) -> int:
        """``keep=prefix``: the merged tokens' width (the language model's); ``keep=input``: a group's patch embeddings
        side by side (``merge_size ** 2`` tower widths)."""
        config = self.vision.config
        return int(config.embed_dim * config.spatial_merge_size**2 if keep == "input" else config.hidden_size)

    def never_generated(self) -> list[int]:
        config = self.model.config
        return [int(config.image_token_id), int(config.video_token_id)]

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """The frame's last token as bos (the words follow it), the tokenizer's eos, and its pad (else eos)."""
        self.before, self.after = frame(tokenizer, self.model.config)
        self._frame_positions = None
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = self.model.generation_config.eos_token_id
            eos = eos[0] if isinstance(eos, list | tuple) else eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        return int(self.after[-1]), int(eos), int(pad)

    def check_keep(self, keep: str) -> None:
        if keep not in ("input", "prefix"):
            raise UserError(
                f"model.keep={keep} needs a decoder that cross-attends; Qwen2VLForConditionalGeneration reads its "
                "merged image tokens as its language model's input: use model.keep=prefix or model.keep=input"
            )

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        return [("decoder", nn.ModuleList([self.model.lm_head, self.decoder])), ("encoder", self.vision)]

    def max_sentence_tokens(self) -> int | None:
        """The language model's positions less those the frame and the image take before the words."""
        first = int(self.frame_positions(self.vision.patch_embed.proj.weight.device).max()) + 1
        return int(self.decoder.config.max_position_embeddings) - first

    # ---- items -----------------------------------------------------------------------------------------------------
    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        """``(B, h*w, d)``: ``keep=prefix`` the merged tokens, ``keep=input`` each group's four patch embeddings side
        by side; ``pixel_values`` ``(B, patches, C*T*p*p)`` as :class:`SquareImages` gives them."""
        batch, patches = pixel_values.shape[:2]
        flat = rearrange(pixel_values, "b n d -> (b n) d")
        if keep == "input":
            return rearrange(self.vision.patch_embed(flat), "(b m g) d -> b m (g d)", b=batch, g=self.merge**2)
        side = math.isqrt(patches)
        grid = torch.tensor([[1, side, side]] * batch, device=flat.device)
        return rearrange(self.vision(flat, grid_thw=grid).pooler_output, "(b m) d -> b m d", b=batch)

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """The merged tokens the language model reads (``keep=input``: the tower run on the kept groups) at their
        grid ``positions``."""
        batch, count = items.shape[:2]
        memory = self.encode_kept(items, mask, positions) if keep == "input" else items
        index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        return {
            "memory": memory,
            "mask": mask,
            "item": index.masked_fill(~mask, -1),
            "count": count,
            "positions": positions,
        }

    def encode_kept(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``(B, m, D)``: the tower's blocks and merger on each row's kept groups (patch embeddings ``items``), each
        row one image of its own (``cu_seqlens``), every patch at its own 2D rotary position; masked items zero."""
        vision, merge = self.vision, self.merge
        memory = items.new_zeros(*items.shape[:2], int(vision.config.hidden_size))
        if not bool(mask.any()):
            return memory
        hidden = rearrange(items[mask], "k (g d) -> (k g) d", g=merge * merge)
        cell = positions[mask]
        offset = torch.arange(merge, device=items.device)
        rows = (cell // self.side)[:, None, None] * merge + offset[None, :, None]
        cols = (cell % self.side)[:, None, None] * merge + offset[None, None, :]
        coords = torch.stack(torch.broadcast_tensors(rows, cols), dim=-1)
        rotary = vision.rotary_pos_emb(hidden, rearrange(coords, "k i j c -> (k i j) c"))
        lengths = mask.sum(dim=1)
        cu_seqlens = nn.functional.pad((lengths[lengths > 0] * merge * merge).cumsum(0), (1, 0)).int()
        for block in vision.blocks:
            hidden = block(hidden, cu_seqlens=cu_seqlens, position_embeddings=rotary)
        return memory.masked_scatter(mask[..., None], vision.merger(hidden).to(memory.dtype))

    # ---- the language model --------------------------------------------------------------------------------------
    def frame_positions(self, device: torch.device) -> torch.Tensor:
        """``(3, L)``: the M-RoPE positions ``get_rope_index`` gives the frame around the whole grid's image tokens."""
        if self.side is None or not self.after:
            raise UserError("Qwen2VLFamily reads its grid and frame from the captioner's processor and tokenizer")
        cached = self._frame_positions
        if cached is None or cached.device != torch.device(device):
            config = self.model.config
            image = [config.image_token_id] * self.side**2
            ids = torch.tensor([[*self.before, *image, *self.after[:-1]]], device=device)
            grid = torch.tensor([[1, self.side * self.merge, self.side * self.merge]], device=device)
            types = (ids == config.image_token_id).int()
            cached = self.model.model.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=grid)[0][:, 0]
            self._frame_positions = cached
        return cached

    def inputs(
        self, state: State, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``(input ids, inputs_embeds, attention mask, position ids (3, B, L), frame length)`` of ``frame before,
        the state's image tokens, frame after, tokens``: hidden image tokens masked, every token at the position the
        whole sequence gives it (module doc)."""
        memory, visible, cells = state["memory"], state["mask"], state["positions"]
        batch, count, device = memory.shape[0], memory.shape[1], tokens.device
        full = self.frame_positions(device)
        start, size = len(self.before), self.side**2
        after = torch.tensor(self.after[:-1], dtype=torch.long, device=device)
        image = torch.full((count,), self.model.config.image_token_id, device=device)
        head = torch.cat([torch.tensor(self.before, dtype=torch.long, device=device), image, after])
        ids = torch.cat([repeat(head, "l -> b l", b=batch), tokens], dim=1)
        embed = self.decoder.get_input_embeddings()
        words = embed(ids[:, start + count :])
        embeds = torch.cat([embed(ids[:, :start]), memory.to(words.dtype), words], dim=1)
        ones = torch.ones(batch, ids.shape[1] - count, dtype=torch.long, device=device)
        attention = torch.cat([ones[:, :start], visible.long(), ones[:, start:]], dim=1)
        text = repeat(full.max() + 1 + torch.arange(tokens.shape[1], device=device), "n -> c n", c=3)
        rest = torch.cat([full[:, start + size :], text], dim=1)
        positions = torch.cat(
            [
                repeat(full[:, :start], "c l -> c b l", b=batch),
                full[:, start + cells.clamp(0, size - 1)],
                repeat(rest, "c l -> c b l", b=batch),
            ],
            dim=2,
        )
        return ids, embeds, attention, positions, len(head)

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> CausalLMOutputWithPast:
        """The model on the frame, the state's image tokens and ``tokens``: logits ``(B, n, V)`` for ``tokens``."""
        _, embeds, attention, positions, head = self.inputs(state, tokens)
        out = self.model(
            inputs_embeds=embeds, attention_mask=attention, position_ids=positions, use_cache=False, **options
        )
        return CausalLMOutputWithPast(logits=out.logits[:, head:])

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """``Qwen2VLForConditionalGeneration.generate`` after the frame, the state's image tokens and ``prefix``;
        rows ``prefix, generated tokens``."""
        ids, embeds, attention, positions, head = self.inputs(state, prefix)
        out = self.model.generate(
            input_ids=ids,
            inputs_embeds=embeds,
            attention_mask=attention,
            position_ids=positions,
            generation_config=config,
        )
        return out[:, head:]


class SquareImages:
    """A Qwen2-VL image processor behind capsal's call: every image resized (bicubic, antialiased, as the processor
    resizes) to one ``side x side`` square, then the processor's own normalisation and patch cutting, its patches
    handed back per image ``(B, patches, C*T*p*p)``. ``save_pretrained`` writes the processor's own files."""

    def __init__(self, processor: Any, side: int):
        self.processor, self.side = processor, side

    def __call__(self, images: torch.Tensor, **options: Any) -> dict[str, torch.Tensor]:
        square = nn.functional.interpolate(
            images.float(), size=(self.side, self.side), mode="bicubic", antialias=True, align_corners=False
        )
        out = self.processor(images=square, do_resize=False, **options)
        return {"pixel_values": rearrange(out["pixel_values"], "(b n) d -> b n d", b=images.shape[0])}

    def save_pretrained(self, folder: Any) -> Any:
        return self.processor.save_pretrained(folder)


def frame(tokenizer: Any, config: Any) -> tuple[list[int], list[int]]:
    """The token ids before and after the image tokens: the chat template's user turn holding one image and the
    assistant's turn opened, or ``<|vision_start|>`` and ``<|vision_end|>`` for a tokenizer without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return [int(config.vision_start_token_id)], [int(config.vision_end_token_id)]
    message = [{"role": "user", "content": [{"type": "image"}]}]
    text = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    image = int(config.image_token_id)
    if ids.count(image) != 1 or ids[0] == image or ids[-1] == image:
        raise UserError(
            f"the tokenizer's chat template gives {ids.count(image)} image tokens (id {image}) for one image, not "
            "one between other tokens; save the model's own Qwen2-VL chat template in the folder"
        )
    at = ids.index(image)
    return ids[:at], ids[at + 1 :]
