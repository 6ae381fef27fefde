"""``HFCaptioner``: the LightningModule around a pretrained ``transformers`` captioner and its family adapter."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from einops import rearrange, repeat
from torch import nn

from capsal.constraints import NamesFrom, PositiveInt
from capsal.errors import UserError
from capsal.metrics.captioning import CAPTION_METRICS
from capsal.models.base import LightningCaptioner, OptimizerOptions, plain
from capsal.models.hf.family import State
from capsal.models.hf.loading import family_of, load_parts, pretrained_files, write_pretrained_files
from capsal.models.hf.tokenizer import PretrainedTokenizer
from capsal.models.protocol import AttentionTrace, widened
from capsal.safe_load import load_checkpoint
from capsal.types import ItemLayout

Keep = Literal["input", "encoder_output", "prefix"]
KEEP: tuple[str, ...] = get_args(Keep)
CaptionMetricNames = NamesFrom(lambda: CAPTION_METRICS)


class HFCaptioner(LightningCaptioner):
    """A pretrained ``transformers`` captioner (``name_or_path``: a hub id or a ``save_pretrained`` folder).

    ``keep``: where "keep only item i" happens, ``input``, ``encoder_output`` (cross-attending families) or
    ``prefix`` (GIT, LLaVA, PaliGemma, Idefics3, Qwen2-VL, Florence-2) (:mod:`capsal.models.hf`);
    ``prompt``: text after bos that is part of the prefix (BLIP's conditional captioning, e.g. "a picture of");
    ``from_config``: random weights of the same architecture. ``max_len``/``beam_size``: generation; the optimizer
    and captioning metrics as every capsal model. The model's own parts sit in ``hf`` (its weights, under the
    state dict's ``hf.`` keys); ``family`` says how that model is read (:class:`~capsal.models.hf.family.Family`).
    """

    OWN_TOKENIZER = True  # capsal-train encodes the data with the model's tokenizer, not a vocabulary of the data
    PRETRAINED = True  # capsal-explain and capsal-eval accept it as model= instead of a checkpoint

    def __init__(
        self,
        name_or_path: str,
        keep: Keep = "input",
        prompt: str | None = None,
        from_config: bool = False,
        max_len: PositiveInt = 20,
        beam_size: PositiveInt = 1,
        optimizer: OptimizerOptions | None = None,
        caption_metrics: CaptionMetricNames = ("bleu", "meteor", "rouge", "cider"),
        metrics_every_n_epochs: PositiveInt = 1,
    ):
        if keep not in KEEP:
            raise UserError(f"model.keep={keep!r} is unknown; use one of {', '.join(KEEP)}")
        super().__init__(
            {"name_or_path": str(name_or_path), "keep": keep, "prompt": prompt, "from_config": bool(from_config)},
            optimizer=plain(optimizer) or {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 5e-5},
            item_mode="grid",
            max_len=max_len,
            beam_size=beam_size,
            caption_metrics=caption_metrics,
            metrics_every_n_epochs=metrics_every_n_epochs,
        )
        self.hf, tokenizer, processor = load_parts(str(name_or_path), from_config)
        self.hf.train()  # from_pretrained gives eval mode; a LightningModule starts in training mode (dropout on)
        self.family = family_of(self.hf)
        self.pretrained_processor = processor  # as loaded: what a checkpoint carries
        self.processor = self.family.image_processor(processor)
        self.tokenizer = tokenizer
        bos, eos, pad = self.family.special_ids(tokenizer)
        size, prefix = self.decoder.config.vocab_size, self.family.prefix_ids(prompt)
        self.vocab = PretrainedTokenizer(tokenizer, bos, eos, pad, size, prompt, prefix, self.family.start_ids())
        self.feature_size: int = self.family.feature_size(keep)
        self.family.check_keep(keep)

    # ---- the model's parts ------------------------------------------------------------------------------------
    @property
    def vision(self) -> nn.Module:
        return self.family.vision

    @property
    def decoder(self) -> nn.Module:
        return self.family.decoder

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder width -> decoder width, where the model has a projection between them."""
        return self.family.project(hidden)

    def randomisation_stages(self) -> list[tuple[str, nn.Module]]:
        return self.family.randomisation_stages()

    # ---- the encoder-decoder protocol -------------------------------------------------------------------------
    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] through the model's image processor (resize, normalisation), in the model's
        dtype, on the pixels' device."""
        values = self.processor(images=pixels, do_rescale=False, return_tensors="pt")["pixel_values"]
        weight = next(self.vision.parameters())
        return values.to(device=pixels.device, dtype=weight.dtype)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch tokens ``keep`` keeps (``input``: the patch embeddings; ``encoder_output``: the encoder's output
        patch tokens) as a one-frame grid ``(B, 1, h, w, d)``."""
        if pixels.shape[1] != 1:
            raise UserError(f"{type(self).__name__} explains images; got clips of {pixels.shape[1]} frames")
        tokens = self.family.patch_tokens(self.pixel_values(pixels[:, 0]), self.hparams.keep)
        layout = self.family.layout(tokens.shape[1])
        rows = layout.grid_size[0] if layout.cells is None else 1  # tiles: the items in one row
        return rearrange(tokens, "b (h w) d -> b 1 h w d", h=rows)

    def item_layout(self, grid_shape: tuple[int, int, int]) -> ItemLayout:
        """The family's layout of the grid's tokens (tiles and a thumbnail: combined onto one grid of cells)."""
        frames, h, w = (int(v) for v in grid_shape)
        if frames != 1:
            raise UserError(f"{type(self).__name__} explains images; got clips of {frames} frames")
        return self.family.layout(h * w)

    def encode(
        self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> State:
        """The family's state for ``items`` (every one real unless ``mask`` says otherwise, at ``positions``
        ``0..m-1`` unless given)."""
        return self.family.encode(*self._inputs(items, mask, positions), self.hparams.keep)

    @property
    def attention_trace(self) -> Callable[..., AttentionTrace] | None:
        """``attention_trace(items, mask, tokens)``: every attention map of one teacher-forced pass
        (:meth:`CrossAttentionFamily.attention_trace <capsal.models.hf.family.CrossAttentionFamily.attention_trace>`),
        or None for a family whose attention capsal does not read (GIT, BLIP-2), so explainers that need it refuse."""
        return self._attention_trace if self.family.attends else None

    def _attention_trace(self, items: torch.Tensor, mask: torch.Tensor | None, tokens: torch.Tensor) -> AttentionTrace:
        return self.family.attention_trace(*self._inputs(items, mask, None), self.hparams.keep, tokens)

    def _inputs(
        self, items: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``items`` with their mask (all real when None) and positions (``0..m-1`` when None), on their device."""
        batch, count = items.shape[:2]
        if mask is None:
            mask = torch.ones(batch, count, dtype=torch.bool, device=items.device)
        mask = mask.to(device=items.device, dtype=torch.bool)
        if positions is None:
            positions = repeat(torch.arange(count, device=items.device), "m -> b m", b=batch)
        return items, mask, positions.to(device=items.device, dtype=torch.long)

    def max_sentence_tokens(self) -> int | None:
        return self.family.max_sentence_tokens()

    def token_logits(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        return self.family.decode(state, tokens).logits

    def token_logprobs(self, state: State, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(widened(self.token_logits(state, tokens)), dim=-1)

    def encoder_tokens(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """The last vision encoder layer's tokens the decoder reads ``(B, S, D)`` (in the state's graph) and the item
        each is ``(B, S)`` (-1: a class token, padding): what Grad-CAM weighs for a ViT encoder."""
        return state["memory"], state["item"]

    @property
    def attention(self) -> Callable[[State, torch.Tensor], torch.Tensor] | None:
        """``attention(state, tokens) -> (B, n, m)``: the decoder's attention on each item (:meth:`Family.attention
        <capsal.models.hf.family.Family.attention>`), or None where capsal reads none (GIT, BLIP-2)."""
        return self.family.attention if self.family.attends else None

    @torch.no_grad()
    def generate(
        self,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> torch.Tensor:
        """The model's own ``generate`` (greedy, or beam search with ``beam_size`` beams) after the prefix: rows
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
        if never := self.family.never_generated():  # image placeholders: the forward would read one as an image
            config.suppress_tokens = sorted({*(config.suppress_tokens or []), *never})
        tokens = self.family.generate(state, prefix, config)
        return _pad_after_eos(tokens, len(vocab.prefix), vocab.eos_id, vocab.pad_id)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def pretrained_files(self) -> dict[str, bytes]:
        """Everything ``save_pretrained`` writes but the weights (config, generation config, tokenizer, image
        processor): a capsal checkpoint carries these, its state dict the weights, so it loads alone."""
        return pretrained_files(self.hf, self.tokenizer, self.pretrained_processor)

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
            write_pretrained_files(checkpoint.get("capsal", {}).get("pretrained_files"), Path(folder), checkpoint_path)
            model = cls(**{**options, "name_or_path": folder, "from_config": True})
        model.hparams["name_or_path"] = source
        model.hparams["from_config"] = options.get("from_config", False)
        model.load_state_dict(checkpoint["state_dict"])
        model.on_load_checkpoint(checkpoint)
        return model.to(map_location) if map_location is not None else model


def _pad_after_eos(tokens: torch.Tensor, prefix: int, eos: int, pad: int) -> torch.Tensor:
    """Generated rows with pad after each row's first eos (past the prefix), trailing all-pad columns dropped."""
    body = tokens[:, prefix:]
    ended = (body == eos).long().cumsum(dim=1)
    after = (ended > 1) | ((ended == 1) & (body != eos))
    body = body.masked_fill(after, pad)
    length = int((~after).sum(dim=1).max()) if body.numel() else 0
    return torch.cat([tokens[:, :prefix], body[:, :length]], dim=1)
