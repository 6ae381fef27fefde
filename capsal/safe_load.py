"""Reading checkpoints capsal did not make without running anything from them.

Every checkpoint capsal reads goes through :func:`load_checkpoint`: ``torch.load(weights_only=True)``, which builds
tensors, plain containers and the few data types of ``SAFE_TYPES``, and calls nothing else (a pickle payload stops
with one line instead of running). What a checkpoint names is then checked before anything is imported or built:
its model class (:func:`captioner_class`) and every ``_target_`` of the configs stored in it (:func:`check_targets`)
must be capsal's own, ``torch.optim``'s, or registered by an installed package through the entry-point groups of
``GROUPS`` (README, "Loading checkpoints you did not make").
"""

from __future__ import annotations

import collections
import functools
import pickle
import re
import typing
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

from capsal.errors import UserError

# What an OmegaConf config pickles into (measured with torch.serialization.get_unsafe_globals_in_checkpoint): capsal
# before 2026-11-25 (commit 8c86f08) saved its datamodules' list options as ListConfig, and a captioner of one's own
# may save a Hydra config as its hyper-parameters. Data classes and constructors of plain values: nothing they build
# runs code.
SAFE_TYPES: tuple[Any, ...] = (
    DictConfig,
    ListConfig,
    AnyNode,
    Metadata,
    ContainerMetadata,
    typing.Any,
    dict,
    list,
    int,
    collections.defaultdict,
)
# entry-point groups through which an installed package registers classes a checkpoint may name
GROUPS = ("capsal.captioners", "capsal.datamodules", "capsal.backbones")
HOW_TO_REGISTER = (
    "register a class of your own under the entry-point group capsal.captioners, capsal.datamodules or "
    "capsal.backbones of its package (README, 'Loading checkpoints you did not make')"
)


@functools.cache
def _allow_safe_types() -> None:
    """Allowlist ``SAFE_TYPES`` for every weights-only load of this process (Lightning's resume included), once."""
    torch.serialization.add_safe_globals(list(SAFE_TYPES))


def load_checkpoint(path: Path) -> Any:
    """The contents of checkpoint ``path``, read weights-only; one line when it is missing, unreadable, or holds
    Python objects beyond tensors, plain containers and ``SAFE_TYPES`` (they are named, and nothing of them ran)."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the .ckpt file capsal-train saved")
    _allow_safe_types()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        types = _unsafe_globals(path, error)
        raise UserError(
            f"{path}: this checkpoint holds Python objects that capsal does not load: {', '.join(types)}; a checkpoint "
            "holds tensors, plain containers and OmegaConf configs. If you made this file and trust it, save it "
            "again with plain dicts and lists (README, 'Loading checkpoints you did not make'); otherwise do not use it"
        ) from error
    except Exception as error:  # a truncated or foreign file surfaces as many exception types
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}); pass a capsal .ckpt"
        ) from error


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The types the weights-only unpickler refused, read from the file without running it (or its error)."""
    try:
        allowed = {f"{t.__module__}.{getattr(t, '__qualname__', t)}" for t in SAFE_TYPES}
        found = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
    except Exception:  # a file in the legacy (non-zip) format: only the error names what stopped it
        found = []
    return found or re.findall(r"GLOBAL (\S+)", str(error)) or ["an object of unknown type"]


def captioner_class(name: str, path: Path, versions: str) -> type:
    """The LightningModule class ``name`` (a checkpoint's ``capsal.model_class``): one of capsal's captioners
    (``capsal.models``) or a class registered under ``capsal.captioners``. The allowlist is checked before anything
    is imported, so a checkpoint cannot have capsal import a module of its choice."""
    from capsal.models.base import LightningCaptioner

    registered = _registered(name, groups=("capsal.captioners",))
    if registered is None and not name.startswith("capsal.models."):
        raise UserError(
            f"{path} names model class {name}, which is neither one of capsal's captioners (capsal.models) nor "
            f"registered under the entry-point group capsal.captioners; to load a captioner of your own, "
            f"{HOW_TO_REGISTER}"
        )
    try:
        model_class = registered.load() if registered is not None else _locate(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"{path} needs model class {name}, which cannot be imported ({versions})") from error
    captioner = isinstance(model_class, type) and (
        registered is not None or issubclass(model_class, LightningCaptioner)
    )
    if not captioner or not callable(getattr(model_class, "load_from_checkpoint", None)):
        raise UserError(f"{path} names model class {name}, which is not a LightningModule captioner ({versions})")
    return model_class


def check_targets(config: Any, source: str) -> None:
    """Refuse, in one line, a config stored in a checkpoint (``source`` names it) that would have Hydra import or
    call anything but capsal's own classes, ``torch.optim`` optimizers and schedulers, or registered classes: every
    ``_target_`` of it, however deeply nested (``_args_``, ``_partial_`` ones included), is checked unimported
    unless it lies inside capsal or ``torch.optim``.

    Configs a user writes (command line, YAML) are theirs and are never checked here."""
    for target in _targets(config):
        if not _allowed(target):
            raise UserError(
                f"{source} asks to build {target}, which capsal does not build from a checkpoint (it builds capsal's "
                f"own classes, torch.optim optimizers and schedulers, and registered classes); {HOW_TO_REGISTER}"
            )


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield str(node["_target_"])
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _targets(value)


def _allowed(target: str) -> bool:
    """Whether Hydra may build ``target``: a class that capsal defines, a ``torch.optim`` optimizer or scheduler
    (only those two packages are imported to find out), or a registered class."""
    root = target.split(".")
    if root[0] == "capsal":
        found = _locate_or_none(target)
        return isinstance(found, type) and found.__module__.split(".")[0] == "capsal"
    if root[:2] == ["torch", "optim"]:
        found = _locate_or_none(target)
        bases = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
        return isinstance(found, type) and issubclass(found, bases)
    return _registered(target, GROUPS) is not None


def _locate(target: str) -> Any:
    """What Hydra's ``_target_`` resolution gives for ``target`` (the same look-up, so the check sees what Hydra
    would build)."""
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as error:  # Hydra reports a missing module or attribute as ImportError or ValueError
        raise ImportError(str(error)) from error


def _locate_or_none(target: str) -> Any:
    try:
        return _locate(target)
    except ImportError:
        return None


def _registered(target: str, groups: tuple[str, ...]) -> metadata.EntryPoint | None:
    """The entry point of ``groups`` naming class ``target`` (``package.module.Class`` is the entry point
    ``package.module:Class``), read from the installed packages' metadata without importing them."""
    for group in groups:
        for entry_point in metadata.entry_points(group=group):
            if f"{entry_point.module}.{entry_point.attr}" == target:
                return entry_point
    return None
