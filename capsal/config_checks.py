"""One validation pass over a composed config, before any data is read or any epoch runs.

:func:`check_config` walks every leaf of the config ``capsal-train``, ``capsal-eval``, ``capsal-explain`` or
``capsal-extract`` composed and checks it against :data:`RULES`, a declarative table of (key pattern, rule): the
type, range or allowed values of each option of the models, datamodules, trainer, loggers, callbacks, explainers
and captioning metrics. A bad value stops the command with one line naming the full key, the value and what is
allowed (``model.encoder='gru' is not allowed; use one of: lstm, mean``), as a :class:`UserError` (exit code 2).

Free-form leaves (paths, ``_target_``, names, Hydra keys, interpolated output folders) are listed as
:class:`Exempt` with the reason, so the table covers every leaf of the shipped configs; ``tests/test_config_checks.py``
composes every config and fails on a leaf without a rule. At run time a leaf without a rule (a plugin's option) is
left to the object that takes it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from capsal.errors import MissingJavaError, UserError

SPLITS = ("train", "val", "test")
_WRONG = "not-a-valid-value"  # the generated test's wrong string


def show(value: Any) -> str:
    """A value as the command line would spell it: null, true, 'text', [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``True`` is not ``1``)."""
    return type(a) is type(b) and a == b


# ---- rules ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Rule:
    """What a leaf may hold. ``null``: None is allowed too. ``hint``: appended to the error line."""

    null: bool = False
    hint: str = ""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def what(self) -> str:
        """The allowed values, in words."""
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else the rest of the error line after ``key=value``."""
        if value is None and self.null:
            return None
        if value is not None and self.accepts(value):
            return None
        allowed = f"null or {self.what()}" if self.null else self.what()
        return f"is not allowed; use {allowed}" + (f" ({self.hint})" if self.hint else "")

    def bad_values(self) -> list[Any]:
        """Values of the wrong type and, where a range applies, out of it (for the generated test)."""
        raise NotImplementedError

    def message(self, key: str, value: Any) -> str | None:
        """None when ``value`` is allowed at ``key``, else the one-line error."""
        problem = self.problem(value)
        return None if problem is None else f"{key}={show(value)} {problem}"


@dataclass(frozen=True)
class Int(Rule):
    low: int | None = None
    high: int | None = None

    def accepts(self, value: Any) -> bool:
        return _is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def what(self) -> str:
        if self.low is not None and self.high is not None:
            return f"an integer from {self.low} to {self.high}"
        if self.low is not None:
            return f"an integer >= {self.low}"
        return "an integer"

    def bad_values(self) -> list[Any]:
        bad: list[Any] = [_WRONG, 2.5, True]
        if self.low is not None:
            bad.append(self.low - 1)
        if self.high is not None:
            bad.append(self.high + 1)
        return bad


@dataclass(frozen=True)
class Float(Rule):
    """A number (an integer is fine); ``low_open``/``high_open`` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if not _is_number(value) or value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def what(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a number" + (f" {' and '.join(b for b in (low, high) if b)}" if low or high else "")

    def bad_values(self) -> list[Any]:
        bad: list[Any] = [_WRONG, False]
        if self.low is not None:
            bad.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            bad.append(self.high if self.high_open else self.high + 1)
        return bad


@dataclass(frozen=True)
class Bool(Rule):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def what(self) -> str:
        return "true or false"

    def bad_values(self) -> list[Any]:
        return [_WRONG, 1]


def _names(values: Sequence[Any] | Callable[[], Sequence[Any]]) -> list[Any]:
    return list(values() if callable(values) else values)


@dataclass(frozen=True)
class Choice(Rule):
    """One of ``values`` (a tuple, or a function returning them, e.g. the explainer registry)."""

    values: Sequence[Any] | Callable[[], Sequence[Any]] = ()

    def accepts(self, value: Any) -> bool:
        return any(_same(value, allowed) for allowed in _names(self.values))

    def what(self) -> str:
        return "one of: " + ", ".join(dict.fromkeys(str(v) for v in _names(self.values)))

    def bad_values(self) -> list[Any]:
        return [_WRONG, 2.5, [_WRONG]]


@dataclass(frozen=True)
class Names(Rule):
    """A list of ``values`` (each at most once); ``empty``: the empty list is allowed."""

    values: Sequence[Any] | Callable[[], Sequence[Any]] = ()
    empty: bool = True

    def accepts(self, value: Any) -> bool:
        return self.problem(value) is None

    def what(self) -> str:
        return ("a list of" if self.empty else "a non-empty list of") + ": " + ", ".join(_names(self.values))

    def problem(self, value: Any) -> str | None:
        if value is None and self.null:
            return None
        allowed = _names(self.values)
        if isinstance(value, (list, tuple)) and (value or self.empty):
            unknown = [v for v in value if not any(_same(v, a) for a in allowed)]
            if unknown:
                return f"names {show(unknown[0])}, which is not allowed; use {self.what()}"
            if len(set(value)) < len(value):
                return f"repeats a name; use {self.what()}, each at most once"
            return None
        return f"is not allowed; use {'null or ' if self.null else ''}{self.what()}"

    def bad_values(self) -> list[Any]:
        bad: list[Any] = [_WRONG, [_WRONG], [3]]
        if not self.empty:
            bad.append([])
        return bad


@dataclass(frozen=True)
class IntList(Rule):
    """A non-empty list of integers >= ``low``."""

    low: int = 1

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (list, tuple)) and bool(value) and all(_is_int(v) and v >= self.low for v in value)

    def what(self) -> str:
        return f"a non-empty list of integers >= {self.low}"

    def bad_values(self) -> list[Any]:
        return [_WRONG, 3, [], ["a"], [self.low - 1]]


@dataclass(frozen=True)
class Text(Rule):
    """A string, optionally matching ``pattern`` (described by ``form``)."""

    pattern: str = ""
    form: str = "a string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (not self.pattern or re.fullmatch(self.pattern, value) is not None)

    def what(self) -> str:
        return self.form

    def bad_values(self) -> list[Any]:
        bad: list[Any] = [[1, 2], {"a": 1}]
        if self.pattern:
            bad.append(_WRONG)
        return bad


@dataclass(frozen=True)
class Spans(Rule):
    """Half-open word spans ``[[start, end], ...]`` with ``0 <= start < end``."""

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, (list, tuple))
            and bool(value)
            and all(
                isinstance(s, (list, tuple)) and len(s) == 2 and all(map(_is_int, s)) and 0 <= s[0] < s[1]
                for s in value
            )
        )

    def what(self) -> str:
        return "word spans [[start, end], ...] with 0 <= start < end"

    def bad_values(self) -> list[Any]:
        return [_WRONG, [1, 2], [[2, 1]], [["a", 1]]]


@dataclass(frozen=True)
class AnyOf(Rule):
    """Any of ``rules`` (e.g. ``trainer.devices``: an integer, auto, or a list of GPU ids)."""

    rules: tuple[Rule, ...] = ()

    def accepts(self, value: Any) -> bool:
        return any(rule.problem(value) is None for rule in self.rules)

    def what(self) -> str:
        return " or ".join(rule.what() for rule in self.rules)

    def bad_values(self) -> list[Any]:
        return [v for rule in self.rules for v in rule.bad_values() if not self.accepts(v) and v is not None]


@dataclass(frozen=True)
class Removed(Rule):
    """A key that is gone: only null is accepted; ``hint`` says what replaced it."""

    def accepts(self, value: Any) -> bool:
        return False

    def problem(self, value: Any) -> str | None:
        return None if value is None else f"was removed: {self.hint}"

    def message(self, key: str, value: Any) -> str | None:
        return None if value is None else f"{key}= was removed: {self.hint}"  # the wording removed_crop_key uses

    def what(self) -> str:
        return "null"

    def bad_values(self) -> list[Any]:
        return [_WRONG, True]


@dataclass(frozen=True)
class Exempt(Rule):
    """A free-form leaf nobody can check here (a path, a class, a name); ``reason`` says why."""

    reason: str = ""

    def accepts(self, value: Any) -> bool:
        return True

    def what(self) -> str:
        return "anything"

    def bad_values(self) -> list[Any]:
        return []


# ---- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """``pattern``: a glob over the dotted key (``*`` also crosses dots); ``target``: a glob over the ``_target_`` of
    the node holding the key (rows naming a target come before the generic row for the same key)."""

    pattern: str
    rule: Rule
    target: str | None = field(default=None)


def _explainers() -> list[str]:
    from capsal.explainers import available_explainers

    return available_explainers()


def _precisions() -> tuple[Any, ...]:
    from capsal.explainers.precision import PRECISIONS

    return PRECISIONS


def _region_inputs() -> tuple[str, ...]:
    from capsal.explainers.caption_guided import REGION_INPUTS

    return REGION_INPUTS


def _caption_metrics() -> tuple[str, ...]:
    from capsal.metrics.captioning import CAPTION_METRICS

    return CAPTION_METRICS


def _shapes() -> tuple[str, ...]:
    from capsal.datamodules.shapes_draw import SHAPES

    return SHAPES


def _colors() -> list[str]:
    from capsal.datamodules.shapes_draw import PALETTE

    return list(PALETTE)


def _accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def _strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


PATH = "a path: checked when the file or folder is opened"
TARGET = "Hydra's class to instantiate: a wrong one is Hydra's own error"
HYDRA = "a Hydra instantiation flag"
NAME = "a free-form name"
POSITIVE = Int(1)
COUNT = Int(0)
SEED = Int(0, 2**32 - 1)
BATCHES = AnyOf(rules=(Int(0), Float(0.0, 1.0)), null=True)  # limit_*_batches: a count or a fraction
DEVICE = Text(pattern=r"auto|cpu|mps|cuda(:\d+)?", form="auto, cpu, mps, cuda or cuda:<index>")
CROP_HINT = "the datamodule frames the images now; set datamodule.protocol=center_crop (or full, the default) instead"

RULES: list[Row] = [
    # -- Hydra and free-form keys, anywhere
    Row("*_target_", Exempt(reason=TARGET)),
    Row("*_recursive_", Exempt(reason=HYDRA)),
    Row("*_partial_", Exempt(reason=HYDRA)),
    Row("*_convert_", Exempt(reason=HYDRA)),
    Row("hydra.*", Exempt(reason="Hydra's own settings, checked by Hydra")),
    Row("output_dir", Exempt(reason="the run folder, an interpolation of Hydra's run directory")),
    Row("ckpt_path", Exempt(reason=PATH)),
    # -- capsal-train
    Row("seed", SEED),
    Row("summary_examples", COUNT),
    Row("cpu_threads", AnyOf(rules=(Int(1), Choice(values=("auto",))), null=True)),
    # -- capsal-eval
    Row("split", Choice(values=SPLITS)),
    Row("explainers", Names(values=_explainers, null=True)),
    Row("max_samples", Int(1, null=True)),
    Row("batch_size", POSITIVE),
    Row("rows_per_step", POSITIVE),
    Row("all_captions", Bool()),
    Row("tolerance", Float(0.0)),
    Row("center_crop", Removed(hint=CROP_HINT)),
    Row("caption_metrics", Names(values=_caption_metrics, null=True)),
    Row("sanity", Bool()),
    Row("sanity_samples", POSITIVE),
    Row("progress", Bool()),
    # -- capsal-explain
    Row("input", Exempt(reason=PATH)),
    Row("sample", Text(pattern=r"[^:]+:-?\d+", form="<split>:<index>, e.g. val:3", null=True)),
    Row("explainer", Choice(values=_explainers)),
    Row("query", Text(null=True)),
    Row("reference", Bool()),
    Row("phrases", Spans(null=True)),
    Row("device", DEVICE),
    # -- capsal-extract
    Row("features_dir", Exempt(reason=PATH)),
    Row("splits", Names(values=SPLITS, empty=False)),
    Row("frames_per_pass", POSITIVE),
    Row("shard_size", POSITIVE),
    Row("num_workers", COUNT),
    Row("backbone.crop", Removed(hint=CROP_HINT)),
    # -- backbones (model.backbone.*, and capsal-extract's backbone.*)
    Row("*backbone.name", Choice(values=("inception_v3", "resnet50"))),
    Row("*backbone.weights", Exempt(reason="DEFAULT, a torchvision weights name or a .pth path: checked on loading")),
    Row("*backbone.frozen", Bool()),
    Row("*backbone.input_size", Int(1, null=True)),
    Row("*backbone.crop", Choice(values=("resize",), null=True, hint=CROP_HINT)),
    Row("*backbone.channels", IntList(low=1)),
    Row("*backbone.convs_per_stage", POSITIVE),
    Row("*backbone.cell_bound", Bool()),
    Row("*backbone.in_channels", POSITIVE),
    Row("*backbone.checkpoint", Exempt(reason=PATH)),
    # -- models
    Row("model.encoder", Choice(values=("lstm", "mean"))),
    Row("model.hidden_size", POSITIVE),
    Row("model.embed_size", Int(1, null=True), target="*TransformerCaptioner"),
    Row("model.embed_size", POSITIVE),
    Row("model.attention_size", Int(1, null=True)),
    Row("model.input_projection_size", Int(1, null=True)),
    Row("model.forget_bias", Float(null=True)),
    Row("model.dropout", Float(0.0, 1.0, high_open=True)),
    Row("model.doubly_stochastic", Float(0.0)),
    Row("model.item_mode", Choice(values=("auto", "grid", "frames"))),
    Row("model.max_len", POSITIVE),
    Row("model.beam_size", POSITIVE),
    Row("model.num_heads", POSITIVE),
    Row("model.num_encoder_layers", POSITIVE),
    Row("model.num_decoder_layers", POSITIVE),
    Row("model.feedforward_size", Int(1, null=True)),
    Row("model.max_items", POSITIVE),
    Row("model.max_words", POSITIVE),
    Row("model.caption_metrics", Names(values=_caption_metrics, null=True)),
    Row("model.name_or_path", Exempt(reason="a Hugging Face hub id or folder: checked when the model is loaded")),
    Row("model.keep", Choice(values=("input", "encoder_output"))),
    Row("model.prompt", Text(null=True)),
    Row("model.from_config", Bool()),
    Row("model.metrics_every_n_epochs", POSITIVE),
    Row("model.optimizer.lr", Float(0.0, low_open=True)),
    Row("model.optimizer.weight_decay", Float(0.0)),
    # -- datamodules
    Row("datamodule.root", Exempt(reason=PATH)),
    Row("datamodule.features_dir", Exempt(reason=PATH)),
    Row("datamodule.image_size", Int(1, null=True), target="*Flickr30kEntitiesDataModule"),
    Row("datamodule.image_size", POSITIVE),
    Row("datamodule.protocol", Choice(values=("full", "center_crop"))),
    Row("datamodule.karpathy_split", Bool()),
    Row("datamodule.batch_size", POSITIVE),
    Row("datamodule.eval_batch_size", Int(1, null=True)),
    Row("datamodule.num_workers", COUNT),
    Row("datamodule.min_vocab_count", POSITIVE),
    Row("datamodule.seed", SEED),
    Row("datamodule.num_frames", POSITIVE),
    Row("datamodule.frame_size", POSITIVE),
    Row("datamodule.check_videos", Bool()),
    Row("datamodule.num_train", POSITIVE),
    Row("datamodule.num_val", POSITIVE),
    Row("datamodule.num_test", POSITIVE),
    Row("datamodule.min_objects", POSITIVE),
    Row("datamodule.max_objects", POSITIVE),
    Row("datamodule.captions_per_image", POSITIVE),
    Row("datamodule.captions_per_clip", POSITIVE),
    Row("datamodule.noise", Float(0.0, 1.0)),
    Row("datamodule.relations", Bool()),
    Row("datamodule.size_words", Bool()),
    Row("datamodule.shapes", Names(values=_shapes, empty=False)),
    Row("datamodule.colors", Names(values=_colors, empty=False)),
    Row("datamodule.min_events", POSITIVE),
    Row("datamodule.max_events", POSITIVE),
    Row("datamodule.min_event_frames", Int(2)),
    # -- trainer (Lightning's Trainer arguments)
    Row("trainer.accelerator", Choice(values=_accelerators)),
    Row("trainer.strategy", Choice(values=_strategies)),
    Row(
        "trainer.devices",
        AnyOf(
            rules=(
                Int(1),
                Choice(values=(-1, "auto", "-1")),
                IntList(low=0),
                Text(pattern=r"\d+(\s*,\s*\d+)*,?", form="GPU ids such as '0,1'"),
            )
        ),
    ),
    Row("trainer.num_nodes", POSITIVE),
    Row("trainer.max_epochs", Int(-1, null=True)),
    Row("trainer.max_steps", Int(-1)),
    Row("trainer.max_time", Text(pattern=r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", form="DD:HH:MM:SS", null=True)),
    Row(
        "trainer.precision",
        Choice(
            values=(
                "32-true",
                "16-mixed",
                "bf16-mixed",
                "16-true",
                "bf16-true",
                "64-true",
                "transformer-engine",
                "transformer-engine-float16",
                64,
                32,
                16,
                "64",
                "32",
                "16",
                "bf16",
            )
        ),
    ),
    Row("trainer.gradient_clip_val", Float(0.0, null=True)),
    Row("trainer.log_every_n_steps", POSITIVE),
    Row("trainer.check_val_every_n_epoch", Int(1, null=True)),
    Row(
        "trainer.val_check_interval",
        AnyOf(rules=(Int(1), Float(0.0, 1.0, low_open=True)), null=True),
    ),
    Row("trainer.limit_*_batches", BATCHES),
    Row("trainer.num_sanity_val_steps", Int(-1)),
    Row("trainer.default_root_dir", Exempt(reason=PATH)),
    Row("trainer.enable_*", Bool()),
    Row("trainer.inference_mode", Bool()),
    # -- loggers
    Row("logger.save_dir", Exempt(reason=PATH)),
    Row("logger.name", Exempt(reason=NAME)),
    Row("logger.project", Exempt(reason=NAME)),
    Row("logger.offline", Bool()),
    Row("logger.log_model", AnyOf(rules=(Bool(), Choice(values=("all",))))),
    # -- callbacks
    Row("callbacks.model_checkpoint.dirpath", Exempt(reason=PATH)),
    Row("callbacks.model_checkpoint.filename", Exempt(reason="a file name pattern")),
    Row("callbacks.model_checkpoint.monitor", Text(null=True)),
    Row("callbacks.model_checkpoint.mode", Choice(values=("min", "max"))),
    Row("callbacks.model_checkpoint.save_top_k", Int(-1)),
    Row("callbacks.model_checkpoint.save_last", AnyOf(rules=(Bool(), Choice(values=("link",))), null=True)),
    Row("callbacks.model_checkpoint.auto_insert_metric_name", Bool()),
    Row("callbacks.saliency.explainers", Names(values=_explainers, null=True)),
    Row("callbacks.saliency.num_samples", COUNT),
    Row("callbacks.saliency.sentences", Choice(values=("prediction", "reference", "both"))),
    Row("callbacks.saliency.every_n_epochs", POSITIVE),
    Row("callbacks.saliency.localisation", Bool()),
    Row("callbacks.saliency.localisation_every_n_epochs", Int(1, null=True)),
    Row("callbacks.saliency.tolerance", Float(0.0)),
    Row("callbacks.saliency.gallery_dir", Exempt(reason=PATH)),
    Row("callbacks.saliency.seed", SEED),
    Row("callbacks.saliency.max_words", POSITIVE),
    Row("callbacks.budget_schedule.warmup_steps", COUNT),
    Row("callbacks.budget_schedule.final_ratio", Float(0.0, 1.0)),
    # -- explainer options (explainer_options.<name>.*, also under callbacks.saliency)
    Row("*explainer_options.caption_guided.mode", Choice(values=("information_gain", "kl"))),
    Row("*explainer_options.caption_guided.spatial", Bool()),
    Row("*explainer_options.caption_guided.region_input", Choice(values=_region_inputs)),
    Row("*explainer_options.caption_guided.memory_budget_mb", Float(0.0, low_open=True)),
    Row("*explainer_options.*.beam_size", POSITIVE),
    Row("*explainer_options.*.precision", Choice(values=_precisions)),
    Row("*explainer_options.center.sigma", Float(0.0, low_open=True)),
    Row("*explainer_options.random.seed", SEED),
]


@lru_cache(maxsize=4096)
def rule_for(key: str, target: str | None = None) -> Rule | None:
    """The first row of :data:`RULES` matching the dotted ``key`` (held by a node whose ``_target_`` is ``target``)."""
    for row in RULES:
        if fnmatchcase(key, row.pattern) and (row.target is None or fnmatchcase(target or "", row.target)):
            return row.rule
    return None


# ---- the pass -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    key: str  # dotted, from the config's root
    target: str | None  # the _target_ of the node holding it
    rule: Rule | None
    node: DictConfig
    name: str


def leaves(cfg: DictConfig, prefix: str = "") -> Iterator[Leaf]:
    """Every checked position of ``cfg``: a key with a rule (whatever it holds now) or a leaf without one."""
    target = cfg.get("_target_") if "_target_" in cfg else None
    target = target if isinstance(target, str) else None
    for name in cfg:
        key = f"{prefix}{name}"
        rule = rule_for(key, target)
        child = cfg._get_node(name)
        nested = isinstance(child, DictConfig) and not OmegaConf.is_interpolation(cfg, str(name))
        if rule is None and nested and not child._is_none() and not child._is_missing():
            yield from leaves(child, f"{key}.")
            continue
        yield Leaf(key, target, rule, cfg, str(name))


def _value(leaf: Leaf) -> tuple[bool, Any]:
    """(readable, the plain value); unresolvable interpolations and ??? are left to Hydra."""
    if OmegaConf.is_missing(leaf.node, leaf.name):
        return False, None
    try:
        value = leaf.node[leaf.name]
    except OmegaConfBaseException:
        return False, None
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return True, value


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line :class:`UserError` for the first bad option of ``cfg``; also check that Java is present when
    captioning metrics are asked for (the PTB tokenizer and METEOR run on it)."""
    for leaf in leaves(cfg):
        if leaf.rule is None or isinstance(leaf.rule, Exempt):
            continue
        readable, value = _value(leaf)
        if not readable:
            continue
        message = leaf.rule.message(leaf.key, value)
        if message is not None:
            raise UserError(message)
    _check_related(cfg)
    _check_java(cfg)


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException:
        return None


def _check_related(cfg: DictConfig) -> None:
    """Options that are only wrong together (the constructors check them too, later)."""
    model = _get(cfg, "model")
    if isinstance(model, DictConfig) and str(model.get("_target_", "")).endswith("TransformerCaptioner"):
        hidden, heads = _get(cfg, "model.hidden_size"), _get(cfg, "model.num_heads")
        if _is_int(hidden) and _is_int(heads) and heads > 0 and hidden % heads:
            raise UserError(
                f"model.hidden_size={hidden} is not divisible by model.num_heads={heads}; choose sizes that divide"
            )
        words, length = _get(cfg, "model.max_words"), _get(cfg, "model.max_len")
        if _is_int(words) and _is_int(length) and words < length:
            raise UserError(f"model.max_words={words} is less than model.max_len={length}; raise max_words")
    for option in ("objects", "events"):
        low, high = _get(cfg, f"datamodule.min_{option}"), _get(cfg, f"datamodule.max_{option}")
        if _is_int(low) and _is_int(high) and low > high:
            raise UserError(
                f"datamodule.min_{option}={low} exceeds datamodule.max_{option}={high}; make min_{option} <= "
                f"max_{option}"
            )


def _check_java(cfg: DictConfig) -> None:
    for key in ("model.caption_metrics", "caption_metrics"):
        metrics = _get(cfg, key)
        if metrics and shutil.which("java") is None:
            raise MissingJavaError(
                f"{key}={show(list(metrics))} needs Java (the PTB tokenizer and METEOR run on it) and java was not "
                f"found on PATH; install a JRE (e.g. apt-get install default-jre-headless) or set {key}=[]"
            )
