"""``SaliencyCallback``: caption-guided saliency during validation.

Each due validation epoch (every ``every_n_epochs``, never the sanity check):

- localisation: every validation batch's ground-truth captions are explained by every explainer on the rank that
  holds the batch, and the pointing game / attention correctness (images) or temporal / spatial pointing (video)
  are updated; at epoch end the torchmetrics states are reduced across ranks and ``val/<metric>/<explainer>`` (the
  ``avg`` over phrases) is logged with ``pl_module.log``, so every logger (CSV too) gets it;
- gallery (global rank zero only): a fixed, seeded set of validation samples is explained for the model's own
  caption and for the reference, one batched call per explainer; the figures go to W&B (images and a per-word
  table), TensorBoard (images) and always to a local folder with an ``index.html`` readable offline; the same
  explained words go to one ``explorer.html`` per epoch (:mod:`capsal.explorer`), linked from ``index.html`` and
  logged to W&B as ``wandb.Html``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from capsal import viz
from capsal.callbacks.gallery import KINDS, TABLE_COLUMNS, GalleryFigure, explain_gallery
from capsal.constraints import NonNegativeFloat, NonNegativeInt, PositiveInt, Seed
from capsal.datamodules.base import collate_samples
from capsal.devices import model_device
from capsal.errors import UserError
from capsal.evaluation import LocalisationEvaluator
from capsal.explainers import build_explainers, get_explainer
from capsal.explainers.base import Explainer, eval_mode
from capsal.explainers.registry import ExplainerNames
from capsal.explorer import write_samples
from capsal.models.protocol import visual_grid
from capsal.types import Batch, Sample

log = logging.getLogger("capsal")
SENTENCES = {"prediction": ("prediction",), "reference": ("reference",), "both": KINDS}


class SaliencyCallback(L.Callback):
    """Explain the model while it trains. Options (``conf/callbacks/saliency.yaml``):

    - ``explainers``: registry names; None: ``caption_guided``, plus ``soft_attention`` for models with attention.
    - ``explainer_options``: ``{name: {option: value}}`` passed to each explainer.
    - ``num_samples``: gallery samples, a fixed seeded choice of validation indices (0: no gallery).
    - ``sentences``: ``prediction``, ``reference`` or ``both`` (the gallery's sentences).
    - ``every_n_epochs``: draw the gallery every n-th epoch (and at the last epoch).
    - ``localisation``: measure localisation (pointing game...) over the whole validation set.
    - ``localisation_every_n_epochs``: how often (and at the last epoch); None: ``every_n_epochs``. Explaining every
      validation caption costs a large share of a validation, hence a sparser default in ``saliency.yaml``.
    - ``tolerance``: pointing-game tolerance in pixels (0: the paper's protocol).
    - ``faithfulness_steps``: also deletion and insertion of every phrase (``val/deletion/<explainer>``,
      ``val/insertion/<explainer>``) in this many steps at the localisation epochs; None: not measured (they cost
      several times the caption-guided pass, BENCHMARKS.md; ``capsal-eval`` measures them by default).
    - ``gallery_dir``: local gallery folder; None: ``<trainer.default_root_dir>/gallery``.
    - ``seed``: chooses the gallery samples.
    - ``max_words``: words shown per sentence in a figure (and rows in the table).
    - ``explorer``: also write the gallery's sentences as ``<gallery_dir>/epoch_XXX/explorer.html`` (point at a
      word to see its map; scrub a clip's frames) and log it to W&B as ``val/saliency/explorer``.
    """

    def __init__(
        self,
        explainers: ExplainerNames | None = None,
        explainer_options: dict[str, dict[str, Any]] | None = None,
        num_samples: NonNegativeInt = 4,
        sentences: Literal["prediction", "reference", "both"] = "both",
        every_n_epochs: PositiveInt = 1,
        localisation: bool = True,
        localisation_every_n_epochs: PositiveInt | None = None,
        tolerance: NonNegativeFloat = 0.0,
        faithfulness_steps: PositiveInt | None = None,
        gallery_dir: str | None = None,
        seed: Seed = 0,
        max_words: PositiveInt = 12,
        explorer: bool = True,
    ):
        if sentences not in SENTENCES:
            raise UserError(f"callbacks.saliency.sentences={sentences!r} must be prediction, reference or both")
        localisation_every_n_epochs = localisation_every_n_epochs or every_n_epochs
        for name, value, low in (
            ("num_samples", num_samples, 0),
            ("every_n_epochs", every_n_epochs, 1),
            ("localisation_every_n_epochs", localisation_every_n_epochs, 1),
            ("max_words", max_words, 1),
        ):
            if value < low:
                raise UserError(f"callbacks.saliency.{name}={value} must be at least {low}")
        if tolerance < 0:
            raise UserError(f"callbacks.saliency.tolerance={tolerance} must be >= 0 pixels")
        self.explainer_names = list(explainers) if explainers else None
        self.explainer_options = {k: dict(v or {}) for k, v in (explainer_options or {}).items()}
        self.num_samples = int(num_samples)
        self.kinds = SENTENCES[sentences]
        self.every_n_epochs = int(every_n_epochs)
        self.localisation = bool(localisation)
        self.localisation_every_n_epochs = int(localisation_every_n_epochs)
        self.tolerance = float(tolerance)
        self.faithfulness_steps = faithfulness_steps
        self.gallery_dir = Path(gallery_dir) if gallery_dir else None
        self.seed = int(seed)
        self.max_words = int(max_words)
        self.explorer = bool(explorer)
        self.gallery_index: Path | None = None
        self.sample_indices: list[int] | None = None
        self.explainers: dict[str, Explainer] = {}
        self.evaluator: LocalisationEvaluator | None = None
        self._records: list[dict[str, Any]] = []
        self._draw = False  # this validation epoch draws the gallery
        self._localise = False  # this validation epoch measures localisation

    # ---- set-up -------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = self.explainer_names or [
            name for name in ("caption_guided", "soft_attention") if get_explainer(name).refusal(pl_module) is None
        ]
        self.explainers = build_explainers(names, self.explainer_options)
        needs_grad = [name for name, e in self.explainers.items() if getattr(e, "needs_grad", False)]
        if needs_grad and trainer.validate_loop.inference_mode:
            raise UserError(
                f"explainer {needs_grad[0]} needs gradients but the trainer validates in inference mode; "
                "set trainer.inference_mode=false"
            )
        categories = list(getattr(trainer.datamodule, "categories", None) or [])
        self.evaluator = LocalisationEvaluator(
            self.explainers,
            categories,
            self.tolerance,
            device=model_device(pl_module),
            faithfulness_steps=self.faithfulness_steps,
        )
        if self.gallery_dir is None:
            self.gallery_dir = Path(trainer.default_root_dir) / "gallery"
        self.gallery_index = self.gallery_dir / "index.html"
        manifest = self.gallery_dir / "gallery.json"
        if trainer.is_global_zero and manifest.is_file() and not self._records:
            self._records = json.loads(manifest.read_text()).get("epochs", [])

    @staticmethod
    def _due(trainer: L.Trainer, every: int) -> bool:
        """Every ``every``-th epoch and the last one when fitting, always in ``trainer.validate``, never the sanity
        check."""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch
        return epoch % every == 0 or last

    # ---- localisation on every rank -----------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw = self.num_samples > 0 and self._due(trainer, self.every_n_epochs)
        self._localise = self.localisation and self._due(trainer, self.localisation_every_n_epochs)
        if self._localise and self.evaluator is not None:
            self.evaluator.device = model_device(pl_module)
            self.evaluator.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not (self._localise and isinstance(batch, Batch) and self.evaluator is not None):
            return
        with eval_mode(pl_module):
            self.evaluator.update(pl_module, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self._localise and self.evaluator is not None and self.evaluator.metrics
        metrics = self._log_localisation(pl_module) if due else {}
        if self._draw and trainer.is_global_zero:
            with eval_mode(pl_module):
                self._gallery(trainer, pl_module, metrics)
        self._draw = self._localise = False

    def _log_localisation(self, pl_module: L.LightningModule) -> dict[str, float]:
        """Reduce the metric states across ranks (a collective: every rank calls it) and log the averages."""
        assert self.evaluator is not None
        logged: dict[str, float] = {}
        for explainer, metrics in self.evaluator.compute().items():
            for metric, values in metrics.items():
                value = values.get("avg", math.nan)
                if math.isnan(value):  # nothing scored: no ground-truth phrases
                    continue
                key = f"val/{metric}/{explainer}"
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
                logged[key] = value
        return logged

    # ---- gallery on global rank zero ----------------------------------------------------------------------------
    def _gallery(self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        dataset = _val_dataset(trainer)
        if self.sample_indices is None:
            generator = torch.Generator().manual_seed(self.seed)
            count = min(self.num_samples, len(dataset))
            self.sample_indices = sorted(torch.randperm(len(dataset), generator=generator)[:count].tolist())
        samples: list[Sample] = [dataset[i] for i in self.sample_indices]
        batch = collate_samples(samples, pl_module.vocab).to(model_device(pl_module))
        with torch.no_grad():
            grid = visual_grid(pl_module, batch)
            items = pl_module.items(grid)
        figures = explain_gallery(
            pl_module, self.explainers, samples, items, grid, self.kinds, self.max_words, self.tolerance, self.explorer
        )
        epoch, step = trainer.current_epoch, trainer.global_step
        record = self._write_local(figures, epoch, step, metrics)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                explorer = self.gallery_dir / record["explorer"] if record.get("explorer") else None
                _log_wandb(logger, figures, epoch, step, explorer)
            elif isinstance(logger, TensorBoardLogger):
                _log_tensorboard(logger, figures, step)
        log.info("saliency gallery: epoch %d, %d figures -> %s", epoch, len(record["figures"]), self.gallery_index)

    def _write_local(self, figures: list[GalleryFigure], epoch: int, step: int, metrics: dict[str, float]) -> dict:
        assert self.gallery_dir is not None and self.gallery_index is not None
        folder = f"epoch_{epoch:03d}"
        entries = []
        for figure in figures:
            name = f"sample_{figure.sample}_{figure.kind}"
            figure.files["image"] = viz.save_png(figure.image, self.gallery_dir / folder / f"{name}.png")
            strip = None
            if figure.strip is not None:
                strip = f"{folder}/{name}_strip.png"
                figure.files["strip"] = viz.save_png(figure.strip, self.gallery_dir / strip)
            entries.append(
                {
                    "sample": figure.sample,
                    "sample_id": figure.sample_id,
                    "index": self.sample_indices[figure.sample] if self.sample_indices else None,
                    "kind": figure.kind,
                    "sentence": figure.sentence,
                    "words": figure.words,
                    "explainers": list(self.explainers),
                    "png": f"{folder}/{name}.png",
                    "strip": strip,
                    "size": [int(figure.image.shape[1]), int(figure.image.shape[0])],
                }
            )
        settings = {name: repr(explainer) for name, explainer in self.explainers.items()}
        record = {"epoch": epoch, "step": step, "metrics": metrics, "explainers": settings, "figures": entries}
        sentences = [figure.explorer for figure in figures if figure.explorer is not None]
        if self.explorer and sentences:  # (a sentence without words has nothing to point at)
            record["explorer"] = f"{folder}/explorer.html"
            title = f"capsal saliency gallery, epoch {epoch} (step {step})"
            write_samples(self.gallery_dir / record["explorer"], sentences, title)
        # A validation of epoch E replaces what a previous run (resumed or restarted) wrote from E on.
        self._records = [r for r in self._records if r["epoch"] < epoch] + [record]
        (self.gallery_dir / "gallery.json").write_text(json.dumps({"epochs": self._records}, indent=1))
        self.gallery_index.write_text(viz.gallery_html(self._records))
        return record


def _val_dataset(trainer: L.Trainer):
    """The (whole, unsharded) validation dataset: the datamodule's split, else the first validation loader's."""
    datamodule = trainer.datamodule
    if datamodule is not None and callable(getattr(datamodule, "get_split", None)):
        return datamodule.get_split("val")
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
    return loader.dataset


def _log_wandb(
    logger: WandbLogger, figures: list[GalleryFigure], epoch: int, step: int, explorer: Path | None = None
) -> None:
    import wandb

    if explorer is not None:  # the page as written (inject=False: W&B would add a stylesheet link to it)
        logger.log_metrics({"val/saliency/explorer": wandb.Html(str(explorer), inject=False)}, step=step)

    by_sample: dict[int, list[GalleryFigure]] = {}
    for figure in figures:
        by_sample.setdefault(figure.sample, []).append(figure)
    for sample, group in by_sample.items():
        captions = [f"{f.kind}: {f.sentence}" for f in group]
        # the PNGs already written for the local gallery: W&B copies them instead of encoding the arrays again
        images = [str(f.files["image"]) if "image" in f.files else f.image for f in group]
        logger.log_image(f"val/saliency/sample_{sample}", images, step=step, caption=captions)
        strips = [f for f in group if f.strip is not None]
        if strips:
            logger.log_image(
                f"val/saliency_strip/sample_{sample}",
                [str(f.files["strip"]) if "strip" in f.files else f.strip for f in strips],
                step=step,
                caption=[f"{f.kind}: {f.sentence}" for f in strips],
            )
    rows = [
        [
            epoch,
            step,
            f.sample,
            f.sample_id,
            f.kind,
            r.word_index,
            r.word,
            r.explainer,
            wandb.Image(r.cell),
            r.x,
            r.y,
            r.frame,
            r.hit,
        ]
        for f in figures
        for r in f.results
    ]
    logger.log_table("val/saliency/table", columns=TABLE_COLUMNS, data=rows, step=step)


def _log_tensorboard(logger: TensorBoardLogger, figures: list[GalleryFigure], step: int) -> None:
    writer = logger.experiment
    for figure in figures:
        tag = f"val/saliency/sample_{figure.sample}/{figure.kind}"
        writer.add_image(tag, figure.image, step, dataformats="HWC")
        if figure.strip is not None:
            writer.add_image(f"{tag}_strip", figure.strip, step, dataformats="HWC")
