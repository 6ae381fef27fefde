"""Check a composed config against the signatures of what it configures, before any data is read or anything built.

Every node with a ``_target_`` is bound to that class's parameters (a ``**kwargs`` handed to the parent class is
followed up the hierarchy; ``**options: Unpack[TypedDict]`` reads as the dict's fields) and each value is validated
against the annotation (pydantic, strict; :mod:`capsal.constraints`). A command's top level is its settings
dataclass; ``explainer_options.<name>`` is the explainer's constructor; options wrong only together are the owning
class's ``check_arguments``; Lightning's own classes are also built once so Lightning's checks speak. Every problem
is one :class:`UserError` line starting with the full key and its value.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from typing import Any

import typing_extensions
from hydra.utils import get_object
from lightning.pytorch import Callback, Trainer
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, TypeAdapter, ValidationError

from capsal.errors import UserError
from capsal.metrics.captioning import check_java
from capsal.removed import REMOVED

HYDRA_KEYS = frozenset({"_target_", "_recursive_", "_partial_", "_convert_", "_args_"})
_UNPACK = {typing.Unpack, typing_extensions.Unpack}  # distinct objects before Python 3.12
_STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


def show(value: Any) -> str:
    """A value as the command line would spell it: null, true, 'text', [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


# ---- parameters of a target ----------------------------------------------------------------------------------------
Parameter = inspect.Parameter  # .annotation resolved (typing.Any where there is none), .default


def _hints(function: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function, include_extras=True)
    except NameError:  # a name imported only for type checkers: the annotations that are objects already
        parameters = inspect.signature(function).parameters.values()
        return {p.name: p.annotation for p in parameters if not isinstance(p.annotation, str)}


@cache
def parameters(target: Callable) -> tuple[dict[str, Parameter], bool]:
    """``({name: Parameter}, open)`` of a class's constructor (or a function); ``open``: any keyword is taken."""
    found: dict[str, Parameter] = {}
    owners = [c for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) else [target]
    for owner in owners:
        function = owner.__init__ if isinstance(target, type) else owner
        hints, keywords = _hints(function), None
        for name, parameter in list(inspect.signature(function).parameters.items())[int(isinstance(target, type)) :]:
            if parameter.kind is parameter.VAR_KEYWORD:
                keywords = hints.get(name, Any)
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                found.setdefault(name, parameter.replace(annotation=hints.get(name, Any)))
        if keywords is None:
            return found, False
        if typing.get_origin(keywords) in _UNPACK:  # **options: Unpack[TypedDict]
            (fields,) = typing.get_args(keywords)
            for name, annotation in typing.get_type_hints(fields, include_extras=True).items():
                found.setdefault(name, Parameter(name, Parameter.KEYWORD_ONLY, annotation=annotation))
            return found, False
    return found, True  # **kwargs that reach object (or a function's): any keyword is taken


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation, config=_STRICT)


def check_value(key: str, annotation: Any, value: Any) -> None:
    """One line naming ``key`` when ``value`` does not fit ``annotation``."""
    if annotation in (Any, Parameter.empty):
        return
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        for part in first["loc"]:  # a nested key (model.optimizer.lr): name it and show its own value
            if isinstance(value, dict) and part in value:
                key, value = f"{key}.{part}", value[part]
        raise UserError(f"{key}={show(value)} is not allowed: {message[0].lower()}{message[1:]}") from None


def check_arguments(target: Callable, arguments: Mapping[str, Any], prefix: str) -> None:
    """Validate ``arguments`` (the config's values, by parameter name) against ``target``'s parameters."""
    known, open_ = parameters(target)
    for name, value in arguments.items():
        if name not in known:
            if not open_:
                raise UserError(unknown_key(f"{prefix}{name}", known, getattr(target, "__qualname__", str(target))))
            continue
        check_value(f"{prefix}{name}", known[name].annotation, value)
    if callable(related := getattr(target, "check_arguments", None)):
        defaults = {n: p.default for n, p in known.items() if p.default is not inspect.Parameter.empty}
        related({**defaults, **arguments}, prefix)


def unknown_key(key: str, known: Iterable[str], owner: str = "") -> str:
    """The line for a key nobody takes: what replaced it, or the nearest valid name (and, with ``owner``, the class
    and its options)."""
    import difflib

    for old, hint in REMOVED.items():
        if key == old or key.endswith("." + old):
            return f"{key}= was removed: {hint}"
    known = list(known)
    name = key.rpartition(".")[2]
    nearest = difflib.get_close_matches(name, known, n=1)
    suggestion = f"; did you mean {key[: -len(name)]}{nearest[0]}?" if nearest else ""
    if not owner:
        return f"{key} is not an option{suggestion}"
    return f"{key} is not an option of {owner}{suggestion} (options: {', '.join(known) or 'none'})"


# ---- walking a config ----------------------------------------------------------------------------------------------
def values(node: DictConfig) -> Iterator[tuple[str, Any]]:
    """``(name, plain value)`` of each key set to a value here: ``???`` is Hydra's to report, and an interpolation is
    checked where its value is set (so an error names the key the user wrote)."""
    for name in node:
        if name in HYDRA_KEYS or OmegaConf.is_missing(node, name) or OmegaConf.is_interpolation(node, name):
            continue
        try:
            value = node[name]
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:  # an interpolation that does not resolve: Hydra says so when it is used
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in HYDRA_KEYS}
        yield str(name), value


def check_node(node: DictConfig, prefix: str) -> None:
    """A node with a ``_target_``: its arguments (a nested node also against the parameter that takes it), then every
    nested node with a ``_target_`` against its own."""
    try:
        target = get_object(str(node._target_))
    except Exception as error:
        raise UserError(f"{prefix}_target_={node._target_!r} cannot be imported ({error})") from None
    check_arguments(target, dict(values(node)), prefix)
    for name in node:
        if _is_target_node(node, name):
            check_node(node[name], f"{prefix}{name}.")
    lightning_callback = isinstance(target, type) and issubclass(target, Callback) and "lightning." in target.__module__
    if target is Trainer or lightning_callback:
        check_lightning(target, node, prefix)


def _is_target_node(node: DictConfig, name: Any) -> bool:
    child = node._get_node(name)
    return isinstance(child, DictConfig) and not child._is_none() and "_target_" in child


def check_config(cfg: DictConfig, settings: type) -> None:
    """Raise a one-line :class:`UserError` for the first bad option of ``cfg`` (a command's composed config, whose
    top-level keys are the fields of the dataclass ``settings``)."""
    fields = typing.get_type_hints(settings, include_extras=True)  # a dataclass: each field is annotated
    if unknown := [str(name) for name in cfg if name != "hydra" and name not in fields]:
        raise UserError(unknown_key(unknown[0], fields, settings.__name__))
    for name in fields:  # components (a node with a _target_, or a group of them) first: a setting may interpolate one
        if name not in cfg:
            continue
        if _is_target_node(cfg, name):
            check_node(cfg[name], f"{name}.")
        elif isinstance(cfg._get_node(name), DictConfig):
            for child in (c for c in cfg[name] if _is_target_node(cfg[name], c)):
                check_node(cfg[name][child], f"{name}.{child}.")
    for name, value in values(cfg):
        check_value(name, fields.get(name, Any), value)  # hydra's own node: Any
    check_explainer_options(cfg)
    check_java(cfg)  # captioning metrics need Java


def check_explainer_options(cfg: DictConfig) -> None:
    """``explainer_options.<name>.*`` (also under ``callbacks.saliency``) against each explainer's constructor."""
    from capsal.explainers import get_explainer

    for prefix in ("", "callbacks.saliency."):
        options = OmegaConf.select(cfg, f"{prefix}explainer_options", default=None)
        for name in options if isinstance(options, DictConfig) else ():
            explainer, node = get_explainer(str(name)), options[name]  # an unknown name is one line too
            if isinstance(node, DictConfig):
                check_arguments(explainer, dict(values(node)), f"{prefix}explainer_options.{name}.")


# ---- Lightning's own classes -------------------------------------------------------------------------------------
def check_lightning(target: type, node: DictConfig, prefix: str) -> None:
    """Build a Lightning ``Trainer`` or callback once (nothing written; the Trainer without logger or callbacks) so
    Lightning's own checks speak, after the Trainer ranges Lightning leaves until ``fit`` (:class:`TrainerRanges`);
    a Lightning error names the first option that fails alone."""
    import warnings

    from capsal.cli.settings import TrainerRanges

    arguments = dict(values(node))
    for name, annotation in typing.get_type_hints(TrainerRanges, include_extras=True).items():
        if name in arguments and target is Trainer:
            check_value(f"{prefix}{name}", annotation, arguments[name])
    quiet = {"logger": False, "enable_checkpointing": False, "callbacks": []} if target is Trainer else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # Lightning's start-up lines belong to the real Trainer, not this check
        try:
            problem = _refusal(target, {**arguments, **quiet})
            alone = problem and next((n for n in arguments if _refusal(target, {n: arguments[n], **quiet})), None)
        finally:
            logging.disable(logging.NOTSET)
    if alone is not None:
        raise UserError(f"{prefix}{alone}={show(arguments[alone])} is not allowed: {problem}")
    if problem is not None:
        raise UserError(f"{prefix.rstrip('.')}: Lightning refuses these options together: {problem}")


def _refusal(target: type, arguments: dict[str, Any]) -> str | None:
    """The first line of Lightning's refusal to build ``target(**arguments)``, or None when it builds."""
    try:
        target(**arguments)
    except Exception as error:  # MisconfigurationException, ValueError, TypeError, ...
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


# ---- the command line ----------------------------------------------------------------------------------------------
def check_command_line(program: str, config_name: str, overrides: list[str]) -> None:
    """Compose ``overrides`` as the command will, and turn Hydra's refusal of a key or group option into one line
    (with the nearest valid name, or what replaced a removed key) and exit code 2; flags (``--multirun``, ``-cn``...)
    are left to Hydra."""
    import sys

    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    from capsal.explainers.registry import register_plugin_options

    register_plugin_options()  # plugin explainers' options become keys before Hydra composes

    if any(arg.startswith("-") for arg in overrides):
        return
    with initialize_config_module(config_module="capsal.conf", version_base="1.3"):
        try:
            compose(config_name, overrides=overrides)
            return
        except HydraException as error:
            cause, line = error.__cause__, str(error).strip().splitlines()[0]
            if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
                key, parent = str(cause.full_key), getattr(cause, "parent_node", None)
                names = [str(k) for k in parent if k != "hydra"] if isinstance(parent, DictConfig) else []
                message = unknown_key(key, names)
                line = message if " was removed: " in message else f"{line} {message}"
            elif "Available options in" in str(error):
                options = str(error).split("Available options in", 1)[1].split("Config search path")[0]
                line += "; available: " + ", ".join(o.strip() for o in options.splitlines()[1:] if o.strip())
    print(f"{program}: error: {line}", file=sys.stderr)
    sys.exit(2)
