"""``AutoModelForImageTextToText`` families whose image tokens sit in a language model's text: LLaVA
(``LlavaForConditionalGeneration``), PaliGemma (``PaliGemmaForConditionalGeneration``) and Idefics3
(``Idefics3ForConditionalGeneration``: an item is a group of patches its pixel shuffle merges into one image token;
tiles and a thumbnail combined onto one grid by :func:`tile_cells`; :class:`Idefics3Family`, and SmolVLM, the same
architecture under its own classes).

A vision tower (CLIP with a class token for LLaVA, SigLIP without one for PaliGemma) gives one token per patch; a
projector maps them to the language model's width, and they replace the image tokens of the text (the processor's
image token, ``config.image_token_id``), which the processor writes into the prompt: LLaVA's chat template around
``<image>``, PaliGemma's image tokens then bos, its prefix prompt (``model.prompt``, e.g. "caption en") and a line
break. That prefix is capsal's :attr:`PretrainedTokenizer.prefix <capsal.models.hf.PretrainedTokenizer.prefix>`:
never explained words; the words after it are the model's own caption (its ``generate``) or a query. The language
model (Llama, Gemma) reads the whole row, under its own mask: causal for LLaVA, bidirectional over the image and
prompt for PaliGemma (its ``token_type_ids``, 0 on the prefix).

Items are the tower's patch tokens (its class token excluded), an ``h x w`` grid; image token j is patch j (LLaVA
with ``vision_feature_select_strategy="full"`` has the class token's output first). Two ``keep`` modes:

- ``keep=input`` (default; which patch, seen alone by the tower, makes the word likely?): ``features`` are the patch
  embeddings; ``encode`` runs the tower on its class token (if any) and the kept patches, each at its own position
  embedding, and the image tokens of the other patches are hidden from the language model. With every item this is
  the model's own pass and caption.
- ``keep=prefix`` (where does the language model read the word, given a tower that saw the whole image?):
  ``features`` are the tower's tokens for the whole image (LLaVA's ``vision_feature_layer``, before the projector);
  the language model's attention mask hides every image token but the kept ones (the class token too).

A hidden image token keeps its place: the language model sees it in no row of its attention, and every token keeps
its position (rotary positions count every token of the row; ``generate`` is given them explicitly, as it would
otherwise count them from the attention mask). A row with no item hides every image token: the prompt and the words
alone, at their places. ``generate`` is the model's own ``generate`` on the state's image tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from capsal.errors import UserError
from capsal.models.hf.family import Family, State, embed_kept, kept_rows, patch_embeddings, prefix_tokens, whole_image
from capsal.types import ItemLayout


class ImageTextToTextFamily(Family):
    """A tower (``model.model.vision_tower``), a projector (``model.model.multi_modal_projector``) and a language model
    (``model.model.language_model``, ``model.lm_head``) reading the projected tokens in place of its image tokens.

    The state holds ``memory`` ``(B, N, D)``: the ``N`` image tokens the language model reads (projected, in the order
    of the row's image tokens), ``mask`` the ones it sees, ``item`` the item each is (-1: a class token, an unkept
    patch) and ``count`` the items. A subclass says which tower tokens are the image tokens (:meth:`select`)."""

    processor_class = "AutoProcessor"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.processor: Any = None  # the whole processor (image token, chat template), set by image_processor
        self.prefix: list[int] = []

    @property
    def vision(self) -> nn.Module:
        return self.model.model.vision_tower

    @property
    def decoder(self) -> nn.Module:
        """The language model (its config gives the vocabulary and the positions)."""
        return self.model.model.language_model

    @property
    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def class_slot(self) -> bool:
        """Whether the tower's class token is an image token of the text (before the patches)."""
        return False

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The tower's tokens the projector reads (prefix tokens first), from its encoder's hidden states."""
        return hidden_states[-1]

    def never_generated(self) -> list[int]:
        return [self.image_token_id]

    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """The language model's bos / eos / pad, else the tokenizer's."""
        text = self.model.config.get_text_config()
        ids = []
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(text, name, None)
            ids.append(int(value if value is not None else getattr(tokenizer, name)))
        return ids[0], ids[1], ids[2]

    def image_processor(self, processor: Any) -> Any:
        """The image processor inside the whole processor, resizing the whole image; the processor itself is kept for
        :meth:`prefix_ids`."""
        self.processor = processor
        return whole_image(processor.image_processor)

    def prefix_ids(self, prompt: str | None) -> list[int]:
        """The processor's row for one image and ``prompt`` before the words: its chat template's user turn (the
        image, then the prompt) and the assistant's cue when it has a template, else the image token then the
        prompt; the image token expanded into one per image token. Every row's words follow it."""
        processor = self.processor
        content = [{"type": "image"}, *([{"type": "text", "text": prompt}] if prompt else [])]
        if getattr(processor, "chat_template", None):
            text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        else:
            text = f"{processor.image_token}{prompt or ''}"
        ids = processor(text=text, images=self.prefix_image(), return_tensors="pt")["input_ids"][0].tolist()
        self.prefix = [int(i) for i in ids]
        return self.prefix

    def prefix_image(self) -> torch.Tensor:
        """A blank image of the size the processor gives (its image tokens are counted on it)."""
        return torch.zeros(3, self.vision.config.image_size, self.vision.config.image_size)

    def check_keep(self, keep: str) -> None:
        if keep not in ("input", "prefix"):
            raise UserError(
                f"model.keep={keep} needs a decoder that cross-attends; {type(self.model).__name__} reads its image "
                "tokens in its language model's text: use model.keep=input or model.keep=prefix"
            )

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        language = nn.ModuleList([self.model.lm_head, self.decoder])
        return [("decoder", language), ("projection", self.projector), ("encoder", self.vision)]

    def max_sentence_tokens(self) -> int | None:
        return int(self.decoder.config.max_position_embeddings)

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        if keep == "input":
            return patch_embeddings(self.vision)(pixel_values)
        embedded = self.vision.embeddings(pixel_values.to(self.vision.embeddings.patch_embedding.weight.dtype))
        return self.select(self.tower_states(embedded))[:, len(prefix_tokens(self.vision)) :]

    def encode_kept(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The tower's selected tokens for its prefix tokens and patch embeddings ``items`` at ``positions``."""
        return self.select(self.tower_states(embed_kept(self.vision, items, positions)))

    def tower_states(self, embedded: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tower's hidden states for its embedded tokens: the encoder's input (after CLIP's ``pre_layrnorm``),
        then each layer's output, as the tower's ``hidden_states``."""
        norm = getattr(self.vision, "pre_layrnorm", None)
        states = [norm(embedded) if norm is not None else embedded]
        for layer in self.vision.encoder.layers:
            states.append(layer(states[-1], None))
        return tuple(states)

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """The state of the module doc: the kept tokens in their image token's slot (patch ``positions``), the
        others zero and hidden."""
        batch, count = items.shape[:2]
        if keep == "prefix":
            index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
            tokens, kept, item, prefix = items, mask, index.masked_fill(~mask, -1), None
        else:
            tokens, kept, item, prefix = self.kept_tokens(items, mask, positions)
        grid = self.grid_tokens()
        # each kept token into its patch's slot; the unkept ones into one spare slot at the end, dropped
        target = torch.where(kept, positions.gather(1, item.clamp(min=0)), grid)
        slots = tokens.new_zeros(batch, grid + 1, tokens.shape[-1])
        slots = slots.scatter(1, repeat(target, "b k -> b k d", d=tokens.shape[-1]), tokens)[:, :grid]
        seen = torch.zeros(batch, grid + 1, dtype=torch.bool, device=items.device).scatter(1, target, kept)[:, :grid]
        index = torch.full((batch, grid + 1), -1, dtype=torch.long, device=items.device)
        index = index.scatter(1, target, item.masked_fill(~kept, -1))[:, :grid]
        if self.class_slot:  # the class token: seen beside any kept patch in keep=input, hidden in keep=prefix
            head = prefix[:, :1] if prefix is not None else slots.new_zeros(batch, 1, slots.shape[-1])
            slots = torch.cat([head, slots], dim=1)
            shown = mask.any(dim=1, keepdim=True) & (prefix is not None)
            seen = torch.cat([shown, seen], dim=1)
            index = torch.cat([torch.full_like(index[:, :1], -1), index], dim=1)
        return {"memory": self.projector(slots), "mask": seen, "item": index, "count": count}

    def kept_tokens(
        self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``keep=input``: the tower's tokens for each row's kept items ``(B, k, d)``, which are real (``(B, k)``),
        the item each is (``(B, k)``), and the tower's prefix tokens ``(B, p, d)`` (its class token)."""
        # a row with no item runs the tower on its first item, then hides it (SigLIP has no class token to run)
        runnable = mask.clone()
        runnable[:, 0] |= ~mask.any(dim=1)
        memory, kept, item = kept_rows(self.encode_kept, items, runnable, positions)
        kept = kept & mask.gather(1, item.clamp(min=0))
        start = memory.shape[1] - kept.shape[1]
        return memory[:, start:], kept, item, memory[:, :start]

    def grid_tokens(self) -> int:
        """The patches' image tokens in the prefix (the class token's excluded)."""
        return sum(i == self.image_token_id for i in self.prefix) - int(self.class_slot)

    def inputs(self, state: State, tokens: torch.Tensor) -> dict[str, Any]:
        """The model's own inputs for ``tokens`` (the prefix, then words) with the state's image tokens: the
        precomputed ``mm_encoder_outputs`` it puts in place of its image tokens, an ``attention_mask`` hiding the
        state's hidden ones, and what tells the prefix from the words (:meth:`text_kinds`)."""
        image = tokens == self.image_token_id
        memory = state["memory"]
        if not bool((image.sum(dim=1) == memory.shape[1]).all()):
            raise UserError(
                f"{type(self.model).__name__}: every row must start with the {len(self.prefix)} prefix tokens "
                f"({memory.shape[1]} image tokens); encode sentences with the model's vocab"
            )
        attention = torch.ones_like(tokens).masked_scatter(image, state["mask"].long())
        encoded = {"image": BaseModelOutputWithPooling(pooler_output=self.image_features(memory))}
        return {"mm_encoder_outputs": encoded, "attention_mask": attention, **self.text_kinds(tokens)}

    def image_features(self, memory: torch.Tensor) -> Any:
        """The projected image tokens ``(B, N, D)`` as the model's ``get_image_features`` gives them."""
        return memory

    def text_kinds(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra inputs that tell the prefix from the words (none by default)."""
        return {}

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> Any:
        """The model's own forward on ``tokens`` with the state's image tokens: logits ``(B, n, V)`` for every
        token (the language model's own positions, ``0..n-1``, hidden tokens included)."""
        return self.model(input_ids=tokens, **self.inputs(state, tokens), use_cache=False, **options)

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """The model's own ``generate`` after ``prefix`` with the state's image tokens, every position given (it
        would count them from the attention mask, moving the tokens after a hidden one); rows ``prefix, generated
        tokens``."""
        positions = repeat(torch.arange(prefix.shape[1], device=prefix.device), "n -> b n", b=prefix.shape[0])
        inputs = self.inputs(state, prefix)
        return self.model.generate(input_ids=prefix, position_ids=positions, generation_config=config, **inputs)


class LlavaFamily(ImageTextToTextFamily):
    """LLaVA: a CLIP tower (class token, ``pre_layrnorm``) whose ``vision_feature_layer`` (one index, or several
    concatenated) is projected; ``vision_feature_select_strategy="default"`` drops the class token, ``"full"`` keeps
    it as the first image token."""

    model_type = "llava"
    model_class = "LlavaForConditionalGeneration"

    @property
    def class_slot(self) -> bool:
        return self.model.config.vision_feature_select_strategy == "full"

    def image_features(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """One ``(N, D)`` tensor per image."""
        return list(memory)

    def feature_size(self, keep: str) -> int:
        """``keep=prefix``: the selected layers side by side."""
        layer = self.model.config.vision_feature_layer
        return super().feature_size(keep) * (1 if keep == "input" or isinstance(layer, int) else len(layer))

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        layer = self.model.config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        return torch.cat([hidden_states[k] for k in layers], dim=-1)


class PaliGemmaFamily(ImageTextToTextFamily):
    """PaliGemma: a SigLIP tower (no class token; its last layer through ``post_layernorm``) and a Gemma language
    model attending bidirectionally over the prefix (image tokens, bos, the prompt) and causally over the words."""

    model_type = "paligemma"
    model_class = "PaliGemmaForConditionalGeneration"

    def select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.vision.post_layernorm(hidden_states[-1])

    def text_kinds(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``token_type_ids``: 0 on the prefix (attended bidirectionally), 1 on the words."""
        columns = torch.arange(tokens.shape[1], device=tokens.device)
        return {"token_type_ids": repeat((columns >= len(self.prefix)).long(), "n -> b n", b=tokens.shape[0])}


class Idefics3Family(ImageTextToTextFamily):
    """Idefics3: a SigLIP-style tower (``model.model.vision_model``), a connector whose pixel shuffle merges each
    ``scale_factor x scale_factor`` group of patch tokens into one token (their widths side by side) before its
    ``modality_projection``, and a Llama language model (``model.model.text_model``).

    Items are the shuffled tokens, one per group of patches, ``g x g`` per crop (``image_seq_len`` = ``g**2``):
    ``keep=input`` the groups' patch embeddings side by side (the tower sees only the kept groups' patches of each
    crop, at their own position embeddings: :meth:`kept_tokens`), ``keep=prefix`` the tower's output for every crop
    whole (the language model sees only the kept groups' image tokens).
    With ``do_image_splitting`` the processor cuts the image into ``n x n`` tiles (images are made square first, so
    every image gives the same tiles) and adds a global thumbnail: the items are every tile's tokens, row by row,
    then the thumbnail's, and :meth:`layout` maps them back onto an ``n*g x n*g`` grid of cells (see
    :func:`tile_cells`). Without splitting the image is one ``g x g`` grid."""

    model_type = "idefics3"
    model_class = "Idefics3ForConditionalGeneration"

    @property
    def vision(self) -> nn.Module:
        return self.model.model.vision_model

    @property
    def decoder(self) -> nn.Module:
        return self.model.model.text_model

    @property
    def projector(self) -> nn.Module:
        return self.model.model.connector.modality_projection

    @property
    def side(self) -> int:
        """The pixels a square image is resized to: the tiles' span with splitting, one tile's without."""
        image = self.processor.image_processor
        return int((image.size if image.do_image_splitting else image.max_image_size)["longest_edge"])

    def feature_size(self, keep: str) -> int:
        return super().feature_size(keep) * int(self.model.config.scale_factor) ** 2

    def image_processor(self, processor: Any) -> Any:
        """The image processor on square images (every image then splits into the same tiles)."""
        self.processor = processor
        return SquareImages(processor.image_processor, self.side)

    def prefix_image(self) -> torch.Tensor:
        return torch.zeros(3, self.side, self.side)

    @property
    def scale(self) -> int:
        return int(self.model.config.scale_factor)

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        """Each image's tiles and thumbnail in the prefix's order (the processor batches a list of images as one
        sample's images, ``(1, B * t, 3, S, S)`` for ``t`` crops each), pixel-shuffled: ``keep=prefix`` the tower's
        output, ``keep=input`` the patch embeddings (an item is its group of patches, their widths side by side)."""
        crops = rearrange(pixel_values, "b n c h w -> (b n) c h w")
        if keep == "input":
            hidden = patch_embeddings(self.vision)(crops).contiguous()
        else:
            hidden = self.vision(pixel_values=crops).last_hidden_state
        tokens = self.model.model.connector.pixel_shuffle(hidden, self.scale)
        per_image = self.grid_tokens() // tokens.shape[1]
        return rearrange(tokens, "(b t) k d -> b (t k) d", t=per_image)

    def kept_tokens(
        self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tower on each crop's kept groups of patches alone, each patch at its own position embedding (one
        tower pass per row and crop, padded and masked), pixel-shuffled back into one token per item."""
        batch, count = items.shape[:2]
        side, scale = math.isqrt(int(self.processor.image_seq_len)), self.scale
        patches = rearrange(items, "b m (a c d) -> b m (a c) d", a=scale, c=scale)  # pixel_shuffle's order
        group_row, group_column = (positions % side**2) // side, positions % side
        offsets = torch.arange(scale, device=items.device)
        patch_row = group_row[..., None, None] * scale + offsets[:, None]
        patch_column = group_column[..., None, None] * scale + offsets[None, :]
        table = self.crop_positions().to(items.device)  # position id of each patch of a whole crop
        ids = table[patch_row * side * scale + patch_column].flatten(2)  # (B, m, s*s)
        crops = self.grid_tokens() // side**2
        rows = repeat(torch.arange(batch, device=items.device), "b -> b m", m=count)
        sequence = rows * crops + positions // side**2  # one tower pass per (row, crop)
        out = torch.zeros_like(patches)
        for key in torch.unique(sequence[mask]).tolist():
            chosen = mask & (sequence == key)
            embedded = patches[chosen] + self.vision.embeddings.position_embedding(ids[chosen])
            hidden = self.vision.encoder(inputs_embeds=rearrange(embedded, "k p d -> 1 (k p) d")).last_hidden_state
            out[chosen] = rearrange(self.vision.post_layernorm(hidden), "1 (k p) d -> k p d", p=scale**2)
        index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        return rearrange(out, "b m p d -> b m (p d)"), mask, index, out.new_zeros(batch, 0, out.shape[-1])

    def crop_positions(self) -> torch.Tensor:
        """``(P*P,)``: the position id the tower's embeddings give each patch of a whole crop, read from its own
        ``position_embedding`` call on a blank crop."""
        embeddings = self.vision.embeddings
        size = self.vision.config.image_size
        side = size // self.vision.config.patch_size
        seen: list[torch.Tensor] = []
        handle = embeddings.position_embedding.register_forward_hook(lambda module, args, out: seen.append(args[0]))
        try:
            weight = embeddings.patch_embedding.weight
            blank = torch.zeros(1, 3, size, size, dtype=weight.dtype, device=weight.device)
            embeddings(blank, patch_attention_mask=torch.ones(1, side, side, dtype=torch.bool, device=weight.device))
        finally:
            handle.remove()
        return seen[0][0]

    def layout(self, count: int) -> ItemLayout:
        """One ``g x g`` grid, or ``n x n`` tiles and a thumbnail on an ``n*g x n*g`` grid of cells."""
        per_crop = int(self.processor.image_seq_len)
        crops = count // per_crop
        if crops == 1:
            return super().layout(count)
        tiles = math.isqrt(crops - 1)
        side = math.isqrt(per_crop)
        cells = tile_cells(tiles, side)
        return ItemLayout(False, (tiles * side, tiles * side), count, cells)


def tile_cells(tiles: int, side: int) -> torch.Tensor:
    """``(h*w, m)`` weights of ``tiles x tiles`` tiles of ``side x side`` tokens each (row by row, tokens row-major)
    and a thumbnail of ``side x side`` tokens over the whole image, on the ``tiles*side`` square grid of cells: the
    one rule for overlapping items is that a cell is the mean of the items whose pixels cover it, its tile's token
    and the thumbnail token over it (each 1/2)."""
    grid = tiles * side
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    tile = (y // side) * tiles + x // side
    own = tile * side * side + (y % side) * side + x % side
    thumbnail = tiles * tiles * side * side + (y // tiles) * side + x // tiles
    cells = torch.zeros(grid * grid, (tiles * tiles + 1) * side * side, dtype=torch.float32)
    rows = torch.arange(grid * grid)
    cells[rows, own.flatten()] = 0.5
    cells[rows, thumbnail.flatten()] = 0.5
    return cells


class SquareImages:
    """An image processor called on images ``(B, 3, H, W)`` resized to ``side x side`` first (bilinear), so every
    image gives the same crops and the same prefix; the maps cover the whole image, as the other families' do."""

    def __init__(self, processor: Any, side: int):
        self.processor, self.side = processor, int(side)

    def __call__(self, images: torch.Tensor, **options: Any) -> Any:
        square = F.interpolate(images.float(), size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.processor(images=square.clamp(0, 1).to(images.dtype), **options)


class SmolVLMFamily(Idefics3Family):
    """SmolVLM: Idefics3's architecture (tower, pixel shuffle, connector, language model) under its own classes."""

    model_type = "smolvlm"
    model_class = "SmolVLMForConditionalGeneration"
