"""Each command's own top-level settings as a typed dataclass: the schema ``capsal.config_schema`` checks the
composed config's top level against (component nodes such as ``model`` or ``trainer`` are checked against the
class their ``_target_`` names). Defaults live in ``capsal/conf/<command>.yaml``; these say what is allowed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field
from typing_extensions import TypedDict

from capsal.constraints import NamesFrom, NonNegativeFloat, NonNegativeInt, PositiveInt, Seed, UnitInterval
from capsal.explainers import registry
from capsal.metrics.captioning import CaptionMetricNames

Split = Literal["train", "val", "test"]
Component = dict[str, Any] | None  # a node checked against its own _target_
Device = Annotated[str, Field(strict=True, pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]


def _sample_ref(value: str) -> str:
    if re.fullmatch(r"[^:]+:-?\d+", value) is None:
        raise ValueError("give <split>:<index>, e.g. val:3")
    return value


SampleRef = Annotated[str, Field(strict=True), AfterValidator(_sample_ref)]


def _ordered(span: list[int]) -> list[int]:
    if span[0] >= span[1]:
        raise ValueError(f"the span {span} is empty; give [start, end] with start < end")
    return span


Span = Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2), AfterValidator(_ordered)]  # half-open


ExplainerName = registry.ExplainerName
ExplainerNames = registry.ExplainerNames


@dataclass
class TrainSettings:
    datamodule: Component = None
    model: Component = None
    trainer: Component = None
    logger: Component = None
    callbacks: Component = None
    seed: Seed | None = 0
    cpu_threads: PositiveInt | Literal["auto"] | None = None  # null: torch's default; auto: the idle cores
    ckpt_path: str | None = None  # resume from this checkpoint
    output_dir: str = "."
    summary_examples: NonNegativeInt = 5


@dataclass
class EvalSettings:
    explainer_options: Component = None
    trainer: Component = None
    datamodule: Component = None
    model: Component = None
    ckpt_path: str | None = None
    split: Split = "test"
    explainers: ExplainerNames | None = None
    max_samples: PositiveInt | None = None
    batch_size: PositiveInt = 8
    rows_per_step: PositiveInt = 32
    all_captions: bool = True
    tolerance: NonNegativeFloat = 0.0
    faithfulness: bool = True
    faithfulness_steps: PositiveInt = 16
    caption_metrics: CaptionMetricNames | None = None
    sanity: bool = False
    sanity_samples: PositiveInt = 32
    explorer: bool = True
    progress: bool = True
    output_dir: str = "."


@dataclass
class ExplainSettings:
    explainer_options: Component = None
    datamodule: Component = None
    model: Component = None
    ckpt_path: str | None = None
    input: str | None = None
    sample: SampleRef | None = None
    explainer: ExplainerName = "caption_guided"
    explainers: NamesFrom(registry.available_explainers, non_empty=True) | None = None  # type: ignore[valid-type]
    query: str | None = None
    contrast: str | None = None
    reference: bool = False
    phrases: Annotated[list[Span], Field(min_length=1)] | None = None  # [[start, end], ...], start < end
    device: Device = "auto"
    output_dir: str = "."


@dataclass
class ExtractSettings:
    datamodule: Component = None
    backbone: Component = None
    features_dir: str = ""
    splits: NamesFrom(lambda: ("train", "val", "test"), non_empty=True) = ("train", "val", "test")  # type: ignore[valid-type]
    batch_size: PositiveInt = 16
    frames_per_pass: PositiveInt = 128
    shard_size: PositiveInt = 256
    num_workers: NonNegativeInt = 0
    device: Device = "auto"
    seed: Seed = 0
    progress: bool = True


class TrainerRanges(TypedDict, total=False):
    """Ranges of Lightning ``Trainer`` options that Lightning itself checks only once ``fit`` runs (or never); its
    types and the rest are checked by its own signature and constructor."""

    log_every_n_steps: PositiveInt
    check_val_every_n_epoch: PositiveInt | None
    val_check_interval: PositiveInt | Annotated[float, Field(strict=True, gt=0.0, le=1.0)] | None
    limit_train_batches: NonNegativeInt | UnitInterval | None
    limit_val_batches: NonNegativeInt | UnitInterval | None
    limit_test_batches: NonNegativeInt | UnitInterval | None
    limit_predict_batches: NonNegativeInt | UnitInterval | None
    num_sanity_val_steps: Annotated[int, Field(strict=True, ge=-1)]
    gradient_clip_val: NonNegativeFloat | None
