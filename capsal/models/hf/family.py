"""What a Hugging Face model family tells :class:`~capsal.models.hf.HFCaptioner`, and what the families whose text
decoder cross-attends to a vision encoder's output share.

A family wraps one ``transformers`` model class. It holds the model without owning it: the captioner registers the
model as its ``hf`` submodule, so parameters, devices and checkpoints stay the model's own, and a family adds no
weights. :class:`Family` is the interface; :class:`CrossAttentionFamily` implements it for an encoder whose output
patch tokens a text decoder cross-attends to (``VisionEncoderDecoderModel``, BLIP), leaving each such family to
name its parts and how its encoder runs on a subset of patches.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from einops import rearrange, repeat
from torch import nn

from capsal.errors import UserError
from capsal.models.protocol import AttentionTrace, on_items, widened
from capsal.models.tracing import recording
from capsal.types import ItemLayout

log = logging.getLogger("capsal")

State = dict[str, Any]  # memory, mask, item (the item each memory token is, -1 for none), count (items)


class Family(ABC):
    """One family of pretrained captioners behind the encoder-decoder protocol.

    Items are the image's patch tokens; ``keep`` says where "keep only item i" happens (``input``: the patch
    embeddings before the vision encoder; ``encoder_output``: the encoder's output tokens for the whole image).
    """

    model_type: ClassVar[str]  # the ``config.model_type`` this family wraps
    attends: ClassVar[bool] = False  # whether :meth:`attention` and :meth:`attention_trace` read attention weights
    model_class: ClassVar[str]  # the ``transformers`` class that loads it
    # what loads its processor: ``AutoImageProcessor``, or ``AutoProcessor`` for a family whose processor also knows
    # its image token and chat template (its tokenizer is then the processor's)
    processor_class: ClassVar[str] = "AutoImageProcessor"

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    @abstractmethod
    def vision(self) -> nn.Module:
        """The vision encoder (its parameters give the dtype pixels are fed in)."""

    @property
    @abstractmethod
    def decoder(self) -> nn.Module:
        """The text decoder (its config gives the vocabulary size and the most tokens it takes)."""

    @abstractmethod
    def special_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """``(bos, eos, pad)`` the model decodes with."""

    def start_ids(self) -> list[int]:
        """Tokens the decoder reads before bos (none by default; BART's decoder start token): part of every row's
        prefix, never words. A family whose processor writes the whole prefix gives :meth:`prefix_ids` instead."""
        return []

    def image_processor(self, processor: Any) -> Any:
        """The processor as capsal uses it: by default the whole image resized (:func:`whole_image`)."""
        return whole_image(processor)

    def layout(self, count: int) -> ItemLayout:
        """The layout of ``count`` patch tokens: by default a square grid read row-major."""
        side = math.isqrt(count)
        if side * side != count:
            raise UserError(f"the encoder gives {count} patch tokens, not a square grid")
        return ItemLayout(False, (side, side), count)

    def feature_size(self, keep: str) -> int:
        """The width of the items ``keep`` gives (:meth:`patch_tokens`): by default the vision encoder's."""
        return int(self.vision.config.hidden_size)

    def prefix_ids(self, prompt: str | None) -> list[int] | None:
        """The token ids before a caption's words, when the family writes them (image tokens, a chat template);
        None: bos then the prompt's tokens (:class:`~capsal.models.hf.tokenizer.PretrainedTokenizer`)."""
        return None

    def never_generated(self) -> list[int]:
        """Token ids the model's own ``generate`` must not emit: placeholders its forward fills with image features
        (one among the words would be read as one more image token). None by default."""
        return []

    @abstractmethod
    def check_keep(self, keep: str) -> None:
        """Refuse, in one line, a ``keep`` this model cannot do."""

    @abstractmethod
    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        """``(B, h*w, d)``: the tokens ``keep`` keeps, for processed ``pixel_values``."""

    @abstractmethod
    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """The decoder's state for ``items`` ``(B, m, d)`` (``mask`` True for real ones, at patch ``positions``)."""

    @abstractmethod
    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> Any:
        """The decoder's output (``.logits`` ``(B, n, V)``) on ``tokens`` under teacher forcing."""

    @abstractmethod
    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """Rows ``prefix, generated tokens`` by the model's own ``generate`` under the generation ``config``."""

    @abstractmethod
    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        """The sanity check's stages, output first."""

    def attention(self, state: State, tokens: torch.Tensor) -> torch.Tensor | None:
        """``(B, n, m)`` attention weights on the items, or None for a model without them (``attends`` False)."""
        return None

    def attention_trace(
        self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str, tokens: torch.Tensor
    ) -> AttentionTrace:
        """Every attention map of one teacher-forced pass, for a family that ``attends``."""
        raise UserError(f"{type(self.model).__name__}: capsal reads no attention maps of this model")

    def max_sentence_tokens(self) -> int | None:
        """The decoder's position table: the most tokens (prefix included) it takes."""
        config = self.decoder.config
        capacity = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        return None if capacity is None else int(capacity)


class CrossAttentionFamily(Family):
    """A vision encoder whose output patch tokens a text decoder cross-attends to.

    ``keep=input`` (the paper's Eq. 7: the model sees nothing of the image but the kept patches): the items are
    the patch embeddings; ``encode`` puts the kept ones, each at its own position embedding, after the encoder's
    prefix tokens (class token, DeiT's distillation token) and runs the vision encoder on them. ``keep=
    encoder_output``: the items are the encoder's output patch tokens for the whole image; ``encode`` hands the
    kept ones to the cross-attention, leaving out the class token (it summarises the whole image). A subclass
    names its parts and supplies :meth:`embed_patches` and :meth:`run_encoder`.
    """

    attends = True

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder width -> decoder width, for models with a projection between them."""
        return hidden

    @abstractmethod
    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, h*w, d)`` patch embeddings, before position embeddings and prefix tokens."""

    @abstractmethod
    def run_encoder(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vision encoder's layers and final norm on embedded tokens ``(B, S, d)`` (prefix tokens first)."""

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        return [("decoder", self.decoder), ("encoder", self.vision)]

    def check_keep(self, keep: str) -> None:
        if keep == "prefix":
            raise UserError(
                f"model.keep=prefix needs image tokens in front of a language model's text (GitForCausalLM); "
                f"{type(self.model).__name__} cross-attends to its encoder: use model.keep=input or encoder_output"
            )
        if keep == "input" and (position_table(self.vision) is None or not hasattr(self.vision, "embeddings")):
            raise UserError(
                f"model.keep=input needs a ViT, DeiT or BLIP vision encoder (class token and position table); "
                f"{type(self.vision).__name__} mixes patches before its output: use model.keep=encoder_output"
            )

    def patch_tokens(self, pixel_values: torch.Tensor, keep: str) -> torch.Tensor:
        if keep == "input":
            return self.embed_patches(pixel_values)
        return output_patches(self.vision, pixel_values)

    def encode(self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str) -> State:
        """``memory`` ``(B, S, D)``, its ``mask``, the item each memory token is (``item``, -1 for prefix tokens)
        and the item ``count``. ``keep=input``: a row with masked items is encoded alone with its real items, as
        the encoders have no padding mask; ``keep=encoder_output`` ignores ``positions``."""
        batch, count = items.shape[:2]
        if keep == "encoder_output":
            index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
            memory = self.project(items).contiguous()  # GPT-2 views its inputs
            return {"memory": memory, "mask": mask, "item": index.masked_fill(~mask, -1), "count": count}
        return self._with_prefix(*kept_rows(self.encode_kept, items, mask, positions), count)

    def encode_kept(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The vision encoder's output for its prefix tokens and patch embeddings ``items`` at ``positions``."""
        hidden = embed_kept(self.vision, items, positions)
        dropout = getattr(self.vision.embeddings, "dropout", None)
        return self.run_encoder(dropout(hidden) if dropout is not None else hidden)

    def _with_prefix(self, memory: torch.Tensor, mask: torch.Tensor, item: torch.Tensor, count: int) -> State:
        """The state of encoder outputs whose first tokens are the encoder's prefix (class token...)."""
        prefix = memory.shape[1] - mask.shape[1]
        ones = torch.ones(mask.shape[0], prefix, dtype=torch.bool, device=mask.device)
        none = torch.full((mask.shape[0], prefix), -1, dtype=torch.long, device=mask.device)
        return {
            "memory": self.project(memory),
            "mask": torch.cat([ones, mask], dim=1),
            "item": torch.cat([none, item], dim=1),
            "count": count,
        }

    def decode(self, state: State, tokens: torch.Tensor, **options: Any) -> Any:
        with self.reading(state):
            return self.decoder(
                input_ids=tokens,
                attention_mask=torch.ones_like(tokens),
                encoder_hidden_states=state["memory"],
                encoder_attention_mask=state["mask"].long(),
                use_cache=False,
                **options,
            )

    @contextlib.contextmanager
    def reading(self, state: State) -> Iterator[None]:
        """The decoder reading ``state``, with :meth:`read_hooks` on it and removed afterwards."""
        handles = self.read_hooks(state)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def read_hooks(self, state: State) -> list[Any]:
        """:func:`zero_context_hooks` for the state's rows with no item (``keep=encoder_output``, mask all False)."""
        empty = ~state["mask"].any(dim=1)
        if not bool(empty.any()):
            return []
        handles = zero_context_hooks(self.decoder, empty)
        if not handles:
            raise UserError(
                f"model.keep=encoder_output cannot be asked for a row with no item (mask all False): capsal does not "
                f"know where {type(self.decoder).__name__} cross-attends; use model.keep=input (the encoder on its "
                f"class token alone)"
            )
        return handles

    def attention(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """The last decoder layer's cross-attention weights, the mean over its heads, on each item (the class
        token's share is left out, so a row sums to at most 1)."""
        return cross_attention_on_items(self, state, tokens)

    def attention_trace(
        self, items: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: str, tokens: torch.Tensor
    ) -> AttentionTrace:
        """Every attention map of one pass of :meth:`encode` and :meth:`decode` under eager attention (fused kernels
        return no weights), recorded from the modules ``transformers`` itself records as ``attentions`` and
        ``cross_attentions`` (:func:`recorded_modules`). The encoder sequence is what the cross-attention reads:
        ``keep=input``: the prefix tokens (class token...) and the patches, through the vision encoder's
        self-attention layers; ``keep=encoder_output``: the patch tokens the encoder gave for the whole image, with
        no encoder layer in the pass."""
        if keep == "input" and not bool(mask.all()):
            raise UserError(
                "the attention trace of model.keep=input needs every item present (mask all True): a row with fewer "
                "items is encoded alone; explain the rows one at a time"
            )
        encoder = recorded_modules(self.vision, "attentions") if keep == "input" else []
        return traced_pass(self, encoder, [self.vision, self.decoder], items, mask, positions, keep, tokens)

    def generate(self, state: State, prefix: torch.Tensor, config: Any) -> torch.Tensor:
        """The decoder's own ``generate`` after ``prefix``, cross-attending to the state's memory."""
        with self.reading(state):
            return self.decoder.generate(
                input_ids=prefix,
                attention_mask=torch.ones_like(prefix),
                encoder_hidden_states=state["memory"],
                encoder_attention_mask=state["mask"].long(),
                generation_config=config,
                cache=cross_attention_cache(self.decoder.config),
            )


def cross_attention_on_items(family: Family, state: State, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, n, m)``: the last decoder layer's cross-attention weights of ``family.decode``, the mean over its heads,
    on each item, under eager attention (columns that are no item, a class token or a prompt, are left out, so a row
    sums to at most 1)."""
    with eager_attention(family.decoder):
        weights = family.decode(state, tokens, output_attentions=True).cross_attentions[-1].mean(dim=1)
    return on_items(weights, state["item"], state["count"])


def traced_pass(
    family: Family,
    encoder: list[nn.Module],
    eager: list[nn.Module],
    items: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    keep: str,
    tokens: torch.Tensor,
) -> AttentionTrace:
    """Every attention map of one pass of ``family.encode`` and ``family.decode``, under eager attention in the
    ``eager`` models (fused kernels return no weights): the ``encoder`` self-attention modules that run inside
    ``encode`` (none when the encoder ran before), then the decoder's self- and cross-attention, recorded from the
    modules ``transformers`` itself records as ``attentions`` and ``cross_attentions`` (:func:`recorded_modules`)."""
    groups = {
        "encoder": encoder,
        "decoder": recorded_modules(family.decoder, "attentions"),
        "cross": recorded_modules(family.decoder, "cross_attentions"),
    }
    with contextlib.ExitStack() as stack:
        for model in eager:
            stack.enter_context(eager_attention(model))
        maps = stack.enter_context(recording(groups))
        state = family.encode(items, mask, positions, keep)
        logprobs = torch.log_softmax(widened(family.decode(state, tokens).logits), dim=-1)
    return AttentionTrace(maps["encoder"], maps["decoder"], maps["cross"], logprobs, state["item"], state["count"])


def zero_context_hooks(decoder: nn.Module, empty: torch.Tensor) -> list[Any]:
    """Hooks that make each cross-attention of ``decoder`` read the zero vector (before its output projection) in
    the rows ``empty`` (B,) marks as having nothing to read, as PyTorch's fused attention does over nothing, instead
    of the uniform weights over padding that eager attention gives: the decoder from the words alone. None where
    capsal does not know the decoder's cross-attention (GPT-2, BERT, BLIP and BART are known)."""
    handles = []
    for name, module in decoder.named_modules():
        if name.endswith("encoder_attn") and isinstance(getattr(module, "out_proj", None), nn.Module):  # BART
            handles.append(module.out_proj.register_forward_pre_hook(functools.partial(_zero_rows_in, empty)))
        if not name.endswith("crossattention"):
            continue
        if isinstance(getattr(module, "c_proj", None), nn.Module):  # GPT-2: the heads' values, then c_proj
            handles.append(module.c_proj.register_forward_pre_hook(functools.partial(_zero_rows_in, empty)))
        elif isinstance(getattr(module, "self", None), nn.Module):  # BERT, BLIP: the context, then output
            handles.append(module.self.register_forward_hook(functools.partial(_zero_rows_out, empty)))
    return handles


def _rows(empty: torch.Tensor, size: int) -> torch.Tensor:
    """``empty`` per row of a batch of ``size``: generation repeats each row once per beam."""
    return empty if size == len(empty) else empty.repeat_interleave(size // len(empty))


def _zero_rows_in(empty: torch.Tensor, module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the first input zero in the rows with no item."""
    values = args[0]
    return (torch.where(_rows(empty, values.shape[0])[:, None, None], 0.0, values), *args[1:])


def _zero_rows_out(empty: torch.Tensor, module: nn.Module, args: tuple, output: tuple) -> tuple:
    """Forward hook: the first output (the attended context) zero in the rows with no item."""
    context = output[0]
    return (torch.where(_rows(empty, context.shape[0])[:, None, None], 0.0, context), *output[1:])


def recorded_modules(model: nn.Module, key: str) -> list[nn.Module]:
    """The submodules a ``transformers`` model records as output ``key`` (``attentions``, ``cross_attentions``:
    their output's second element is the attention weights), by its own ``_can_record_outputs`` declaration."""
    specs = (getattr(model, "_can_record_outputs", None) or {}).get(key) or []
    return [
        module
        for name, module in model.named_modules()
        if any(_records(spec, name, module) for spec in (specs if isinstance(specs, list | tuple) else [specs]))
    ]


def _records(spec: Any, name: str, module: nn.Module) -> bool:
    """Whether one ``_can_record_outputs`` entry (a class, a class name or an ``OutputRecorder``) names ``module``."""
    target = spec if isinstance(spec, type) else getattr(spec, "target_class", None)
    class_name = spec if isinstance(spec, str) else getattr(spec, "class_name", None)
    layer = getattr(spec, "layer_name", None)
    kind = (target is not None and isinstance(module, target)) or (
        class_name is not None and type(module).__name__.endswith(class_name)
    )
    return kind and (layer is None or f".{layer.strip('.')}." in f".{name}.")


def kept_rows(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    items: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A vision encoder ``run(items, positions)`` (its output, prefix tokens first) on each row's real items:
    ``(memory (B, p + k, d), mask (B, k), item (B, k))`` for the ``k`` patch tokens after the ``p`` prefix tokens
    (``item`` -1 for padding). One pass when every item is real; else each row alone, padded, since ViT-style
    encoders take no padding mask."""
    batch, count = items.shape[:2]
    index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
    if bool(mask.all()):
        return run(items, positions), mask, index
    rows = [run(items[b, mask[b]][None], positions[b, mask[b]][None])[0] for b in range(batch)]
    memory = nn.utils.rnn.pad_sequence(rows, batch_first=True)
    lengths = mask.sum(dim=1)
    width = memory.shape[1] - (rows[0].shape[0] - int(lengths[0]))
    compact = repeat(torch.arange(width, device=items.device), "k -> b k", b=batch) < lengths[:, None]
    kept = torch.full_like(compact, -1, dtype=torch.long)
    kept[compact] = index[mask]
    return memory, compact, kept


def embed_kept(vision: nn.Module, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A ViT-style encoder's input for patch embeddings ``items`` ``(B, k, d)`` at patch ``positions``: its prefix
    tokens (class...) then the patches, each plus its own position embedding, as its embeddings would give them."""
    prefix = [rearrange(token.to(items.dtype), "... d -> 1 (...) d") for token in prefix_tokens(vision)]
    table = position_table(vision).to(items.dtype)
    patches = items + table[0, len(prefix) :][positions]
    if not prefix:  # SigLIP: no class token
        return patches
    start = torch.cat(prefix, dim=1) + table[:, : len(prefix)]
    return torch.cat([start.expand(items.shape[0], -1, -1), patches], dim=1)


def patch_embeddings(vision: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``pixel_values -> (B, h*w, d)``: a ViT-style tower's patch embeddings (its ``patch_embedding`` convolution),
    before position embeddings and prefix tokens: the items of ``keep=input``."""
    embedding = vision.embeddings.patch_embedding

    def embed(pixel_values: torch.Tensor) -> torch.Tensor:
        return rearrange(embedding(pixel_values.to(embedding.weight.dtype)), "b d h w -> b (h w) d")

    return embed


def output_patches(vision: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, h*w, d)``: a vision tower's output patch tokens for the whole image, its prefix tokens (class...) left
    out: the items of ``keep=encoder_output`` and ``keep=prefix``."""
    return vision(pixel_values=pixel_values).last_hidden_state[:, len(prefix_tokens(vision)) :]


def prefix_tokens(vision: nn.Module) -> list[torch.Tensor]:
    """The learned tokens a ViT-style encoder puts before the patches: class (ViT, DeiT, BLIP), distillation (DeiT)."""
    embeddings = getattr(vision, "embeddings", None)
    names = ("cls_token", "class_embedding", "distillation_token")
    return [getattr(embeddings, n) for n in names if isinstance(getattr(embeddings, n, None), nn.Parameter)]


def position_table(vision: nn.Module) -> torch.Tensor | None:
    """A ViT-style encoder's learned position embeddings ``(1, prefix + patches, d)`` (a parameter, or CLIP's
    ``nn.Embedding``), or None (Swin...)."""
    embeddings = getattr(vision, "embeddings", None)
    for name in ("position_embeddings", "position_embedding"):
        table = getattr(embeddings, name, None)
        if isinstance(table, nn.Embedding):
            return table.weight[None]
        if isinstance(table, nn.Parameter):
            return table
    return None


def whole_image(processor: Any) -> Any:
    """The processor resizing the whole image (no centre crop, no padding to a square as LLaVA's), so the patch grid
    covers every original pixel and ``Saliency.to_image_size`` maps cells back onto them."""
    if getattr(processor, "do_center_crop", False):
        log.info("%s: centre crop turned off, so saliency maps cover the whole image", type(processor).__name__)
        processor = copy.deepcopy(processor)
        crop = processor.crop_size
        processor.do_center_crop = False
        processor.size = {"height": crop["height"], "width": crop["width"]}
    if getattr(processor, "do_pad", False):
        log.info("%s: padding turned off, so saliency maps cover only the image", type(processor).__name__)
        processor = copy.deepcopy(processor)
        processor.do_pad = False
    return processor


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Eager attention inside the block (fused kernels return no weights), the model's own afterwards."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def cross_attention_cache(config: Any):
    """A cache for a decoder-only model that cross-attends (``generate`` would give it a self-attention cache only)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
