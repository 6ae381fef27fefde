"""The LightningModules capsal's captioners extend.

:class:`LightningCaptioner` owns what every captioner shares, whatever its layers: the saved options
(``hparams``), the item layout (``item_layout``, ``items``), teacher-forced training with masked cross-entropy,
validation captioning metrics, checkpoint metadata and the optimizer. A subclass supplies ``vocab``, ``features``,
``encode``, ``token_logprobs`` (or ``token_logits``) and ``generate``. :class:`CaptioningModule` is that subclass for
capsal's own captioners: a visual backbone built from its config (``features``), a word-level vocabulary and
greedy/beam generation (limited to ``max_len`` tokens; explaining a given sentence has no limit) over
``init_decoder`` / ``decode_step``; its subclasses supply ``encode``, ``token_logprobs``, those two and the sanity
check's stages (``RANDOMISATION_STAGES``). Pretrained models (:mod:`capsal.models.hf`) extend
:class:`LightningCaptioner` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ConfigDict
from typing_extensions import TypedDict

from capsal import __version__
from capsal.constraints import NonNegativeFloat, PositiveFloat, PositiveInt
from capsal.devices import gather_dicts
from capsal.errors import UserError
from capsal.metrics.captioning import CaptionMetricNames
from capsal.models.decoding import beam_decode, greedy_decode
from capsal.models.protocol import fit_sentences, logprobs_at, sentence_targets, visual_grid
from capsal.removed import current_backbone_config
from capsal.text import Tokenizer, Vocabulary
from capsal.types import Batch, ItemLayout

ITEM_MODES = ("auto", "grid", "frames")


def plain(value: Any) -> Any:
    """``value`` with Hydra configs as dicts and lists and paths as strings, however deeply nested: checkpoints hold
    plain containers, which capsal's weights-only loading reads without allowlisting anything."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return str(value) if isinstance(value, PurePath) else value


class OptimizerOptions(TypedDict, total=False):
    """The optimizer node (``_target_`` an optimizer class, ``_partial_: true``): the ranges capsal's configs set;
    any other keyword goes to the optimizer, whose own signature checks it."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    lr: PositiveFloat
    weight_decay: NonNegativeFloat


class LightningCaptioner(L.LightningModule):
    """Training, validation metrics, checkpoints and the optimizer of any captioner behind the protocol.

    ``options``: the subclass's own constructor options, saved beside the shared ones as ``hparams`` (and in
    checkpoints, as plain containers). ``optimizer``: a ``_partial_`` optimizer config (given, or the subclass's
    default). ``item_mode``: ``"auto"`` reads one-frame inputs as a grid of items and longer clips as frames;
    ``"grid"`` or ``"frames"`` force one layout. ``max_len``/``beam_size``: generation defaults.
    ``caption_metrics`` are computed on generated captions every ``metrics_every_n_epochs`` validation epochs.
    """

    vocab: Tokenizer

    def __init__(
        self,
        options: Mapping[str, Any],
        optimizer: OptimizerOptions | Mapping[str, Any],
        item_mode: Literal["auto", "grid", "frames"] = "auto",
        max_len: PositiveInt = 20,
        beam_size: PositiveInt = 1,
        caption_metrics: CaptionMetricNames | None = ("bleu", "meteor", "rouge", "cider"),
        metrics_every_n_epochs: PositiveInt = 1,
    ):
        super().__init__()
        self.save_hyperparameters(
            {
                **options,
                "optimizer": plain(optimizer),
                "item_mode": item_mode,
                "max_len": max_len,
                "beam_size": beam_size,
                "caption_metrics": list(caption_metrics or []),
                "metrics_every_n_epochs": metrics_every_n_epochs,
            }
        )
        if item_mode not in ITEM_MODES:
            raise UserError(f"item_mode must be auto, grid or frames, got {item_mode!r}")
        self._predictions: dict[str, str] = {}
        self._references: dict[str, list[str]] = {}
        # Set by capsal-train, saved in checkpoints so a checkpoint alone can rebuild its data and inputs.
        self.datamodule_config: dict | None = None
        self.input_shape: tuple[int, int, int] | None = None  # (frames, height, width) the model was trained on

    # ---- the encoder-decoder protocol ---------------------------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def items(self, grid: torch.Tensor) -> torch.Tensor:
        if not self.item_layout(tuple(grid.shape[1:4])).is_video:
            return rearrange(grid, "b 1 h w d -> b (h w) d")
        return grid.mean(dim=(2, 3))

    def item_layout(self, grid_shape: tuple[int, int, int]) -> ItemLayout:
        """Image cells (one frame, or ``item_mode=grid``) or frames (several, or ``item_mode=frames``) for grids of
        ``(T, h, w)``."""
        frames, h, w = (int(v) for v in grid_shape)
        mode = self.hparams.item_mode
        is_video = frames > 1 if mode == "auto" else mode == "frames"
        return ItemLayout(is_video, (h, w), frames if is_video else h * w)

    def encode(self, items: torch.Tensor, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        raise NotImplementedError

    def token_logprobs(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def token_logits(self, state: Any, tokens: torch.Tensor) -> torch.Tensor:
        """Optional for a subclass: the ``(B, n, V)`` logits whose ``log_softmax`` is ``token_logprobs``; with it,
        :meth:`target_logprobs` never holds log-probabilities next to the logits."""
        raise NotImplementedError

    def target_logprobs(self, state: Any, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` log-probabilities of ``targets`` (the protocol's optional method): from :meth:`token_logits`
        with an in-place log-sum-exp when the subclass has them (peak: one ``(B, n, V)`` tensor instead of two),
        else ``token_logprobs`` gathered at ``targets``."""
        if type(self).token_logits is LightningCaptioner.token_logits:
            logprobs = self.token_logprobs(state, tokens)
            return logprobs.gather(-1, targets[:, : logprobs.shape[1], None])[..., 0]
        logits = self.token_logits(state, tokens)
        return logprobs_at(logits, targets[:, : logits.shape[1]])

    def generate(
        self,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    # ---- training -----------------------------------------------------------------------------------------
    def caption_loss(self, items: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy of the teacher-forced targets up to and including each row's first eos (pad may equal
        eos, as in GPT-2); captions longer than the model takes (``max_sentence_tokens()``) are trained on their
        first words (counted, a warning logged), never a crash."""
        tokens = fit_sentences(self, tokens)
        logprobs = self.token_logprobs(self.encode(items, mask), tokens[:, :-1])
        targets = tokens[:, 1 : logprobs.shape[1] + 1]
        losses = F.nll_loss(rearrange(logprobs, "b n v -> b v n"), targets, reduction="none")
        real = sentence_targets(targets, self.vocab.eos_id)
        return (losses * real).sum() / real.sum().clamp(min=1)

    # ---- Lightning hooks ----------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.caption_loss(self.items(visual_grid(self, batch)), batch.tokens)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        items = self.items(visual_grid(self, batch))
        loss = self.caption_loss(items, batch.tokens)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch), sync_dist=True)
        if self._metrics_due():
            generated = self.generate(items)
            for sample_id, row, refs in zip(batch.sample_ids, generated, batch.references, strict=True):
                self._predictions[sample_id] = self.vocab.decode_text(row)
                self._references[sample_id] = refs

    def on_validation_epoch_end(self) -> None:
        if not self._predictions:
            return
        predictions, references = gather_dicts(self._predictions), gather_dicts(self._references)
        self._predictions, self._references = {}, {}
        if self.trainer.sanity_checking or not self.hparams.caption_metrics:
            return
        from capsal.metrics.captioning import caption_scores

        scores = caption_scores(predictions, references, self.hparams.caption_metrics)
        for name, value in scores.items():
            self.log(f"val/{name}", value, rank_zero_only=True)
        self.last_predictions = predictions

    def _metrics_due(self) -> bool:
        every = max(1, int(self.hparams.metrics_every_n_epochs))
        return bool(self.hparams.caption_metrics) and (self.current_epoch + 1) % every == 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):  # Lightning copies them as they were given
            if key in checkpoint:
                checkpoint[key] = plain(checkpoint[key])
        checkpoint["capsal"] = {
            "version": __version__,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "datamodule": self.datamodule_config,
            "input_shape": list(self.input_shape) if self.input_shape else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("capsal", {})
        self.datamodule_config = meta.get("datamodule")
        self.input_shape = tuple(meta["input_shape"]) if meta.get("input_shape") else None

    def configure_optimizers(self):
        return instantiate(self.hparams.optimizer)(params=[p for p in self.parameters() if p.requires_grad])


class CaptioningModule(LightningCaptioner):
    """capsal's own captioners: a backbone built from its config and a word list ``vocab`` (both saved in the
    checkpoint's hyper-parameters), stepwise greedy/beam generation. Options as :class:`LightningCaptioner`."""

    # attribute names of the sanity check's stages, from the output back to the input (absent ones are skipped)
    RANDOMISATION_STAGES: tuple[str, ...] = ("output", "decoder", "embedding", "encoder", "item_projection", "backbone")

    def __init__(
        self,
        vocab: list[str] | Vocabulary,
        backbone: dict | None = None,
        optimizer: OptimizerOptions | None = None,
        item_mode: Literal["auto", "grid", "frames"] = "auto",
        max_len: PositiveInt = 20,
        beam_size: PositiveInt = 1,
        caption_metrics: CaptionMetricNames | None = ("bleu", "meteor", "rouge", "cider"),
        metrics_every_n_epochs: PositiveInt = 1,
    ):
        words = vocab.to_list() if isinstance(vocab, Vocabulary) else list(vocab)
        backbone = plain(backbone) or {"_target_": "capsal.models.backbones.SmallCNN"}
        super().__init__(
            {"vocab": words, "backbone": backbone},
            optimizer=plain(optimizer) or {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
            item_mode=item_mode,
            max_len=max_len,
            beam_size=beam_size,
            caption_metrics=caption_metrics,
            metrics_every_n_epochs=metrics_every_n_epochs,
        )
        self.vocab = Vocabulary(words)
        recorded = current_backbone_config(backbone)
        if "crop" in recorded:
            raise UserError(
                f"model.backbone.crop={recorded['crop']!r}: this model was trained on images its backbone cropped, an "
                "option capsal no longer has (the datamodule frames images: datamodule.protocol); retrain it, or load "
                "it with the capsal version that made it"
            )
        self.backbone = instantiate(recorded)
        self.feature_size: int = self.backbone.out_channels

    # ---- the encoder-decoder protocol ---------------------------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        frames = rearrange(pixels, "b t c h w -> (b t) c h w")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not getattr(self.backbone, "frozen", False)):
            grid = self.backbone(frames)
        return rearrange(grid, "(b t) d h w -> b t h w d", b=pixels.shape[0])

    def randomisation_stages(self) -> list[tuple[str, torch.nn.Module]]:
        """The sanity check's stages, output first, as ``RANDOMISATION_STAGES`` states them."""
        children = dict(self.named_children())
        stages = [(name, children[name]) for name in self.RANDOMISATION_STAGES if name in children]
        return [(name, child) for name, child in stages if any(True for _ in child.parameters())]

    def init_decoder(self, state: Any) -> Any:
        raise NotImplementedError

    def decode_step(self, state: Any, cache: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Log-probabilities ``(B, V)`` of the next token given ``tokens`` so far ``(B, t)``, and the new cache."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        items: torch.Tensor,
        mask: torch.Tensor | None = None,
        beam_size: int | None = None,
        max_len: int | None = None,
    ) -> torch.Tensor:
        beam_size = beam_size or self.hparams.beam_size
        max_len = max_len or self.hparams.max_len
        state = self.encode(items, mask)
        if beam_size == 1:
            return greedy_decode(self, state, items.shape[0], max_len, items.device)
        return beam_decode(self, state, items.shape[0], beam_size, max_len, items.device)
