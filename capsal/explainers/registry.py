"""The explainer registry: built-ins register by decorator, plugins through the ``capsal.explainers`` entry points."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from capsal.errors import UserError

ENTRY_POINT_GROUP = "capsal.explainers"
_REGISTRY: dict[str, type] = {}
_plugins_loaded = False


def register_explainer(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_explainer("my_method")``. A name can be registered once."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"an explainer named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorate


def _load_plugins() -> None:
    """Import plugin modules once; loading an entry point registers its class (decorated or not)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        if isinstance(loaded, type) and entry_point.name not in _REGISTRY:
            register_explainer(entry_point.name)(loaded)


def _load_builtins() -> None:
    import capsal.explainers.builtin  # noqa: F401  (registers the built-in explainers)


def available_explainers() -> list[str]:
    _load_builtins()
    _load_plugins()
    return sorted(_REGISTRY)


def get_explainer(name: str) -> type:
    """The explainer class registered as ``name``; an unknown name lists the known ones."""
    _load_builtins()
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"unknown explainer {name!r}; known explainers: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_explainer(name: str, **options: Any):
    """An explainer instance by registry name, with its own options."""
    return get_explainer(name)(**options)
