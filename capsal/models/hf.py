"""Pretrained Hugging Face captioners behind the encoder-decoder protocol (``pip install capsal[hf]``).

Supported families: ``VisionEncoderDecoderModel`` (ViT, DeiT, Swin... encoders with GPT-2/BERT-style decoders
that cross-attend: ViT-GPT2 and kin) and ``BlipForConditionalGeneration``. ``GitForCausalLM`` is not: its image
tokens are a prefix of the decoder's own self-attention, so there is no encoder output for the decoder to
cross-attend to (README, "Explaining a pretrained Hugging Face captioner").

Items are the image's patch tokens, an ``h x w`` grid read row-major; pixels go through the model's own image
processor (resize, normalisation: the grid covers the whole image, so ``Saliency.to_image_size`` maps cells back
to the original pixels; a processor's centre crop is turned off for that reason). ``keep`` says where "keep only
item i" happens:

- ``keep=input`` (the paper's Eq. 7 literally, and what its reasoning supports: the model sees nothing of the image
  but item i): ``features`` are the patch embeddings before the encoder; ``encode`` puts the kept patches, each at
  its own position embedding, after the class token (and DeiT's distillation token) and runs the whole vision
  encoder on them. ViT, DeiT and BLIP encoders; Swin's shifted windows and patch merging need the full grid.
- ``keep=encoder_output``: ``features`` are the vision encoder's output patch tokens for the whole image (one pass);
  ``encode`` hands the kept ones to the decoder's cross-attention. Cheaper, and a different question: where does
  the decoder read the word, given an encoder that saw everything (each token has mixed in the rest of the image).
  The encoder's class token is left out in this mode: it summarises the whole image, so keeping it beside token i
  would show the decoder everything; captions can therefore differ slightly from the model's own.

Words come from :class:`PretrainedTokenizer`: captions are encoded as :func:`capsal.text.tokenize`'s words (lower
case, no punctuation) so word spans mean what the datasets mean; a word's subword tokens are summed into one
``Saliency`` row. BLIP's prompt (``prompt=``, e.g. "a picture of") sits in the prefix after bos and is never
explained as words. ``generate`` is the model's own ``generate`` (greedy or beam) on the decoder; ``attention`` is
the decoder's cross-attention, the mean over heads of its last layer, on the patch tokens.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from capsal.errors import UserError
from capsal.models.base import CaptioningModule, _plain
from capsal.models.protocol import widened
from capsal.safe_load import load_checkpoint
from capsal.text import Tokenizer, tokenize
from capsal.types import ItemLayout

log = logging.getLogger("capsal")

KEEP = ("input", "encoder_output")
FAMILIES = {"vision-encoder-decoder": "VisionEncoderDecoderModel", "blip": "BlipForConditionalGeneration"}
# what ``save_pretrained`` writes besides the weights: a capsal checkpoint carries these, its state dict the weights
_FILE_SUFFIXES = (".json", ".txt", ".model")
State = dict[str, Any]  # memory, mask, item (the item each memory token is, -1 for none), count (items)


def _transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - the dev extras install it
        raise UserError("model=hf_captioner needs the transformers package: pip install 'capsal[hf]'") from error
    return transformers


def offline_hint(name_or_path: str, error: BaseException) -> str:
    """The one line a user sees when ``name_or_path`` cannot be loaded."""
    reason = " ".join(str(error).split()).split(". ")[0][:160]
    return (
        f"model.name_or_path={name_or_path} could not be loaded ({type(error).__name__}: {reason}); with no network, "
        "pass a local folder written by save_pretrained (the model, its tokenizer and its image processor, e.g. "
        "model.save_pretrained(f); tokenizer.save_pretrained(f); processor.save_pretrained(f)) or download the "
        "hub id once into the Hugging Face cache (hf download <id>) where there is a network"
    )


def load_parts(name_or_path: str, from_config: bool = False):
    """``(model, tokenizer, image processor)`` of a hub id or a ``save_pretrained`` folder; ``from_config``: the
    architecture with random weights (benchmarks; capsal checkpoints, whose state dict holds the weights)."""
    transformers = _transformers()
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        name_or_path = str(folder)
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(
            f"model.name_or_path={name_or_path} is no folder; pass a folder written by save_pretrained or a hub id "
            "such as nlpconnect/vit-gpt2-image-captioning"
        )
    try:
        # never the code a model repository or a checkpoint's files may name (auto_map): capsal's families are built in
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        processor = transformers.AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UserError(offline_hint(name_or_path, error)) from error
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise UserError(
            f"model.name_or_path={name_or_path} is a {config.model_type!r} model; capsal explains "
            f"{', '.join(FAMILIES.values())} (GitForCausalLM and others are not supported)"
        )
    model_class = getattr(transformers, family)
    model = model_class(config) if from_config else model_class.from_pretrained(name_or_path)
    return model, tokenizer, processor


class PretrainedTokenizer(Tokenizer):
    """A Hugging Face tokenizer behind capsal's :class:`~capsal.text.Tokenizer` interface.

    ``prefix``: bos then the prompt's tokens; a caption's tokens follow, then eos. A token belongs to the word it
    adds characters to: decoding the row's first k tokens and the first k+1 gives :func:`tokenize`'s words, and the
    (k+1)-th token belongs to the last word when the words changed, to none when they did not (punctuation).
    """

    def __init__(self, tokenizer: Any, bos_id: int, eos_id: int, pad_id: int, size: int, prompt: str | None = None):
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.size = int(size)
        self.prompt = prompt or None
        prompt_ids = self._ids(" ".join(tokenize(prompt))) if self.prompt else []
        self.prefix: list[int] = [self.bos_id, *prompt_ids]

    def __len__(self) -> int:
        return self.size

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _text_of(self, words: list[str]) -> str:
        """The text the words are encoded from: a space before them after a prompt (byte-level BPE marks word starts
        with it; WordPiece ignores it)."""
        return (" " if self.prompt else "") + " ".join(words)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self._ids(self._text_of(tokenize(text))) if tokenize(text) else []
        return [*self.prefix, *ids, self.eos_id] if add_special else ids

    def words_of(self, ids: Iterable[int]) -> tuple[list[str], list[int]]:
        ids = [int(i) for i in ids]
        start = len(self.prefix) if ids[: len(self.prefix)] == self.prefix else min(1, len(ids))
        owners = [-1] * len(ids)
        words: list[str] = []
        for k in range(start, len(ids)):
            if ids[k] == self.eos_id:
                break
            now = tokenize(self.tokenizer.decode(ids[start : k + 1], skip_special_tokens=True))
            if now != words:
                owners[k] = len(now) - 1
            words = now
        return words, owners

    def unknown_words(self, text: str) -> list[str]:
        """Words whose tokens do not decode back to them (an unknown token, or characters the vocabulary lacks)."""
        return [w for w in tokenize(text) if self.words_of(self.encode(w))[0] != [w]]


def _special_ids(model: nn.Module, tokenizer: Any) -> tuple[int, int, int]:
    """``(bos, eos, pad)`` the model decodes with: BLIP's [DEC] / [SEP] / [PAD]; a VisionEncoderDecoder's
    ``decoder_start_token_id`` / eos / pad (pad falls back to eos, as GPT-2 has none)."""
    config = model.config
    if config.model_type == "blip":
        text = config.text_config
        return text.bos_token_id, text.sep_token_id, text.pad_token_id
    top, decoder = _ids_of(config), _ids_of(config.decoder)
    bos = _first(top("decoder_start_token_id"), decoder("decoder_start_token_id"), decoder("bos_token_id"))
    eos = _first(top("eos_token_id"), decoder("eos_token_id"), tokenizer.eos_token_id, tokenizer.sep_token_id)
    pad = _first(top("pad_token_id"), decoder("pad_token_id"), tokenizer.pad_token_id, eos)
    if bos is None or eos is None:
        raise UserError("the model's config names no decoder_start_token_id or eos_token_id; set them before saving")
    return bos, eos, pad


def _ids_of(config: Any):
    """A look-up of token-id settings that are absent from some configs."""
    return lambda name: getattr(config, name, None)


def _first(*values: int | None) -> int | None:
    return next((int(v) for v in values if v is not None), None)


def _prefix_tokens(vision: nn.Module) -> list[torch.Tensor]:
    """The learned tokens a ViT-style encoder puts before the patches: class (ViT, DeiT, BLIP), distillation (DeiT)."""
    embeddings = getattr(vision, "embeddings", None)
    names = ("cls_token", "class_embedding", "distillation_token")
    return [getattr(embeddings, n) for n in names if isinstance(getattr(embeddings, n, None), nn.Parameter)]


def _position_table(vision: nn.Module) -> torch.Tensor | None:
    embeddings = getattr(vision, "embeddings", None)
    for name in ("position_embeddings", "position_embedding"):
        table = getattr(embeddings, name, None)
        if isinstance(table, nn.Parameter):
            return table
    return None


class HFCaptioner(CaptioningModule):
    """A pretrained ``transformers`` captioner (``name_or_path``: a hub id or a ``save_pretrained`` folder).

    ``keep``: ``input`` or ``encoder_output`` (module docstring); ``prompt``: text after bos that is part of the
    prefix (BLIP's conditional captioning, e.g. "a picture of"); ``from_config``: random weights of the same
    architecture. ``max_len``/``beam_size``: generation; the optimizer and captioning metrics as every capsal model.
    """

    OWN_TOKENIZER = True  # capsal-train encodes the data with the model's tokenizer, not a vocabulary of the data
    PRETRAINED = True  # capsal-explain and capsal-eval accept it as model= instead of a checkpoint

    def __init__(
        self,
        name_or_path: str,
        keep: str = "input",
        prompt: str | None = None,
        from_config: bool = False,
        max_len: int = 20,
        beam_size: int = 1,
        optimizer: dict | None = None,
        caption_metrics: list[str] | tuple[str, ...] = ("bleu", "meteor", "rouge", "cider"),
        metrics_every_n_epochs: int = 1,
    ):
        super(CaptioningModule, self).__init__()  # LightningModule's set-up; the layers are the pretrained model's
        if keep not in KEEP:
            raise UserError(f"model.keep={keep!r} is unknown; use one of {', '.join(KEEP)}")
        optimizer = _plain(optimizer) or {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-5}
        self.save_hyperparameters(
            {
                "name_or_path": str(name_or_path),
                "keep": keep,
                "prompt": prompt,
                "from_config": bool(from_config),
                "max_len": max_len,
                "beam_size": beam_size,
                "optimizer": optimizer,
                "item_mode": "grid",
                "caption_metrics": list(caption_metrics or []),
                "metrics_every_n_epochs": metrics_every_n_epochs,
            }
        )
        self.hf, tokenizer, processor = load_parts(str(name_or_path), from_config)
        self.hf.train()  # from_pretrained gives eval mode; a LightningModule starts in training mode (dropout on)
        self.processor = _whole_image(processor)
        self.tokenizer = tokenizer
        bos, eos, pad = _special_ids(self.hf, tokenizer)
        self.vocab = PretrainedTokenizer(tokenizer, bos, eos, pad, self.decoder.config.vocab_size, prompt)
        self.feature_size: int = self.vision.config.hidden_size
        if keep == "input" and (_position_table(self.vision) is None or not hasattr(self.vision, "embeddings")):
            raise UserError(
                f"model.keep=input needs a ViT, DeiT or BLIP vision encoder (class token and position table); "
                f"{type(self.vision).__name__} mixes patches before its output: use model.keep=encoder_output"
            )
        self._init_bookkeeping()

    # ---- the parts of either family -------------------------------------------------------------------------------
    @property
    def vision(self) -> nn.Module:
        return self.hf.vision_model if self.hf.config.model_type == "blip" else self.hf.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.hf.text_decoder if self.hf.config.model_type == "blip" else self.hf.decoder

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder width -> decoder width where the VisionEncoderDecoder has a projection."""
        projection = getattr(self.hf, "enc_to_dec_proj", None)
        return projection(hidden) if projection is not None else hidden

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        stages = [("decoder", self.decoder), ("projection", getattr(self.hf, "enc_to_dec_proj", None))]
        return [(name, module) for name, module in [*stages, ("encoder", self.vision)] if module is not None]

    # ---- the encoder-decoder protocol -------------------------------------------------------------------------
    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] through the model's image processor (resize, normalisation), in the model's
        dtype, on the pixels' device."""
        values = self.processor(images=pixels, do_rescale=False, return_tensors="pt")["pixel_values"]
        weight = next(self.vision.parameters())
        return values.to(device=pixels.device, dtype=weight.dtype)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``keep=input``: the patch embeddings; ``keep=encoder_output``: the encoder's output patch tokens."""
        if pixels.shape[1] != 1:
            raise UserError(f"{type(self).__name__} explains images; got clips of {pixels.shape[1]} frames")
        values = self.pixel_values(pixels[:, 0])
        if self.hparams.keep == "input":
            tokens = self._patch_embeddings(values)
        else:
            tokens = self.vision(pixel_values=values).last_hidden_state[:, len(_prefix_tokens(self.vision)) :]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise UserError(f"the encoder gives {tokens.shape[1]} patch tokens, not a square grid")
        return rearrange(tokens, "b (h w) d -> b 1 h w d", h=side)

    def item_layout(self, grid_shape: tuple[int, int, int]) -> ItemLayout:
        frames, h, w = (int(v) for v in grid_shape)
        if frames != 1:
            raise UserError(f"{type(self).__name__} explains images; got clips of {frames} frames")
        return ItemLayout(False, (h, w), h * w)

    def _patch_embeddings(self, values: torch.Tensor) -> torch.Tensor:
        embeddings = self.vision.embeddings
        if hasattr(embeddings, "patch_embeddings"):  # ViT, DeiT
            return embeddings.patch_embeddings(values)
        return rearrange(embeddings.patch_embedding(values), "b d h w -> b (h w) d")  # BLIP

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> State:
        """The decoder's ``memory`` ``(B, S, D)``, its ``mask`` and which item each memory token is (``item``, -1
        for the class token). ``keep=input`` runs the vision encoder on the class token(s) and the real items at
        their ``positions`` (default ``0..m-1``); a row with masked items is encoded alone with its real items, as
        the encoders have no padding mask. ``keep=encoder_output``: the items are the memory (``positions`` unused)."""
        batch, count = items.shape[:2]
        if mask is None:
            mask = torch.ones(batch, count, dtype=torch.bool, device=items.device)
        mask = mask.to(device=items.device, dtype=torch.bool)
        if positions is None:
            positions = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        positions = positions.to(device=items.device, dtype=torch.long)
        index = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        if self.hparams.keep == "encoder_output":
            memory = self.project(items).contiguous()  # GPT-2 views its inputs
            return {"memory": memory, "mask": mask, "item": index.masked_fill(~mask, -1), "count": count}
        if bool(mask.all()):
            return self._with_prefix(self._run_vision(items, positions), mask, index, count)
        rows = [self._run_vision(items[b, mask[b]][None], positions[b, mask[b]][None])[0] for b in range(batch)]
        memory = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        lengths = mask.sum(dim=1)
        width = memory.shape[1] - len(_prefix_tokens(self.vision))
        compact = repeat(torch.arange(width, device=items.device), "m -> b m", b=batch) < lengths[:, None]
        kept = torch.full_like(compact, -1, dtype=torch.long)
        kept[compact] = index[mask]
        return self._with_prefix(memory, compact, kept, count)

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

    def _run_vision(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The vision encoder's output for the prefix tokens and ``items`` at ``positions`` (patch indices)."""
        prefix = _prefix_tokens(self.vision)
        table = _position_table(self.vision).to(items.dtype)
        start = torch.cat([token.to(items.dtype) for token in prefix], dim=1) + table[:, : len(prefix)]
        patches = items + table[0, len(prefix) :][positions]
        hidden = torch.cat([start.expand(items.shape[0], -1, -1), patches], dim=1)
        dropout = getattr(self.vision.embeddings, "dropout", None)
        hidden = dropout(hidden) if dropout is not None else hidden
        if hasattr(self.vision, "layers"):  # ViT, DeiT
            for layer in self.vision.layers:
                hidden = layer(hidden, None)
            return self.vision.layernorm(hidden)
        return self.vision.post_layernorm(self.vision.encoder(inputs_embeds=hidden).last_hidden_state)  # BLIP

    def max_sentence_tokens(self) -> int | None:
        """The decoder's position table: the most tokens (prefix included) it takes."""
        config = self.decoder.config
        capacity = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        return None if capacity is None else int(capacity)

    def _decode(self, state: State, tokens: torch.Tensor, **options: Any):
        return self.decoder(
            input_ids=tokens,
            attention_mask=torch.ones_like(tokens),
            encoder_hidden_states=state["memory"],
            encoder_attention_mask=state["mask"].long(),
            use_cache=False,
            **options,
        )

    def token_logits(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        return self._decode(state, tokens).logits

    def token_logprobs(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(widened(self.token_logits(state, tokens)), dim=-1)

    def attention(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, n, m)``: the last decoder layer's cross-attention weights, the mean over its heads, on each item
        (the class token's share is left out, so a row sums to at most 1)."""
        with _eager_attention(self.decoder):
            weights = self._decode(state, tokens, output_attentions=True).cross_attentions[-1].mean(dim=1)
        item = state["item"]
        out = weights.new_zeros(weights.shape[0], weights.shape[1], state["count"])
        index = item.clamp(min=0)[:, None, :].expand_as(weights)
        return out.scatter_add_(2, index, weights * (item >= 0)[:, None, :])

    @torch.no_grad()
    def generate(
        self,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> torch.Tensor:
        """The decoder's own ``generate`` (greedy, or beam search with ``beam_size`` beams) after the prefix: rows
        ``prefix, words, eos, pad``, at most ``max_len`` tokens after the prefix."""
        state = self.encode(items, mask)
        vocab = self.vocab
        prefix = torch.tensor([vocab.prefix], device=items.device).expand(items.shape[0], -1)
        config = copy.deepcopy(self.hf.generation_config)
        config.update(
            num_beams=int(beam_size or self.hparams.beam_size),
            max_new_tokens=int(max_len or self.hparams.max_len),
            max_length=None,
            min_length=0,
            do_sample=False,
            num_return_sequences=1,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
            bos_token_id=vocab.bos_id,
            decoder_start_token_id=None,
        )
        tokens = self.decoder.generate(
            input_ids=prefix,
            attention_mask=torch.ones_like(prefix),
            encoder_hidden_states=state["memory"],
            encoder_attention_mask=state["mask"].long(),
            generation_config=config,
            cache=_cross_attention_cache(self.decoder.config),
        )
        return _pad_after_eos(tokens, len(vocab.prefix), vocab.eos_id, vocab.pad_id)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def pretrained_files(self) -> dict[str, bytes]:
        """Everything ``save_pretrained`` writes but the weights (config, generation config, tokenizer, image
        processor): a capsal checkpoint carries these, its state dict the weights, so it loads alone."""
        with tempfile.TemporaryDirectory() as folder:
            self.hf.config.save_pretrained(folder)
            self.hf.generation_config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)
            self.processor.save_pretrained(folder)
            return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.suffix in _FILE_SUFFIXES}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["capsal"]["pretrained_files"] = self.pretrained_files()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **kwargs) -> HFCaptioner:  # type: ignore[override]
        """A fine-tuned captioner from its capsal checkpoint alone: the architecture and tokenizer from the files it
        carries, the weights from its state dict (``name_or_path`` is not read)."""
        checkpoint = load_checkpoint(Path(checkpoint_path))
        options = dict(checkpoint["hyper_parameters"])
        source = options.pop("name_or_path")
        options.pop("item_mode", None)
        with tempfile.TemporaryDirectory() as folder:
            _write_pretrained_files(checkpoint.get("capsal", {}).get("pretrained_files"), Path(folder), checkpoint_path)
            model = cls(**{**options, "name_or_path": folder, "from_config": True})
        model.hparams["name_or_path"] = source
        model.hparams["from_config"] = options.get("from_config", False)
        model.load_state_dict(checkpoint["state_dict"])
        model.on_load_checkpoint(checkpoint)
        return model.to(map_location) if map_location is not None else model


def _write_pretrained_files(files: Any, folder: Path, checkpoint_path: Any) -> None:
    """The ``save_pretrained`` files a checkpoint carries, written into ``folder`` for ``from_pretrained`` to read:
    only bytes under plain file names of the kinds ``pretrained_files`` saves, so a crafted name (``../x``, an
    absolute path) cannot write outside ``folder``."""
    if not isinstance(files, dict) or not files:
        raise UserError(f"{checkpoint_path} holds no Hugging Face model files; save it with capsal-train again")
    for name, data in files.items():
        plain_name = isinstance(name, str) and name == Path(name).name and not name.startswith(".")
        if not (plain_name and name.endswith(_FILE_SUFFIXES) and isinstance(data, bytes)):
            raise UserError(
                f"{checkpoint_path} carries a Hugging Face file named {name!r}, which capsal does not write (it wants "
                f"plain file names ending in {', '.join(_FILE_SUFFIXES)}); save the model with capsal-train again"
            )
        (folder / name).write_bytes(data)


def _whole_image(processor: Any) -> Any:
    """The processor resizing the whole image (no centre crop), so the patch grid covers every original pixel."""
    if getattr(processor, "do_center_crop", False):
        log.info("%s: centre crop turned off, so saliency maps cover the whole image", type(processor).__name__)
        processor = copy.deepcopy(processor)
        crop = processor.crop_size
        processor.do_center_crop = False
        processor.size = {"height": crop["height"], "width": crop["width"]}
    return processor


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
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


def _cross_attention_cache(config: Any):
    """A cache for a decoder-only model that cross-attends (``generate`` would give it a self-attention cache only)."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))


def _pad_after_eos(tokens: torch.Tensor, prefix: int, eos: int, pad: int) -> torch.Tensor:
    """Generated rows with pad after each row's first eos (past the prefix), trailing all-pad columns dropped."""
    body = tokens[:, prefix:]
    ended = (body == eos).long().cumsum(dim=1)
    after = (ended > 1) | ((ended == 1) & (body != eos))
    body = body.masked_fill(after, pad)
    length = int((~after).sum(dim=1).max()) if body.numel() else 0
    return torch.cat([tokens[:, :prefix], body[:, :length]], dim=1)
