"""The explainer registry and the one way to build an explainer.

Built-ins register by decorator when ``capsal.explainers`` is imported (its ``__init__`` imports them, as
detectron2's ``meta_arch/__init__.py`` does); plugins register through the ``capsal.explainers`` entry points.
:func:`build_explainer` is what ``capsal-explain``, ``capsal-eval`` and the saliency callback all call: options
come from ``conf/explainer_options/<name>.yaml`` (capsal's, or for a plugin the same path inside the plugin's top-level
package), overridden by the options given (``explainer_options.<name>`` of the command's config).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from capsal.constraints import NameFrom, NamesFrom
from capsal.errors import UserError

ENTRY_POINT_GROUP = "capsal.explainers"
# where ``<name>.yaml`` option files are looked up (the ``explainer`` group of capsal's Hydra configs)
CONFIG_DIR: Path = Path(str(resources.files("capsal.conf") / "explainer_options"))
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


def available_explainers() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_explainer(name: str) -> type:
    """The explainer class registered as ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise UserError(f"unknown explainer {name!r}; known explainers: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _config_dirs(cls: type) -> list[Path]:
    """capsal's ``conf/explainer``, then the plugin package's own (``<package>/conf/explainer``)."""
    package = cls.__module__.partition(".")[0]
    if package == "capsal":
        return [CONFIG_DIR]
    try:
        return [CONFIG_DIR, Path(str(resources.files(package) / "conf" / "explainer_options"))]
    except (ModuleNotFoundError, TypeError):
        return [CONFIG_DIR]


def explainer_config(name: str) -> dict[str, Any]:
    """The options in ``conf/explainer_options/<name>.yaml``; empty when the explainer ships no such file."""
    for folder in _config_dirs(get_explainer(name)):
        path = folder / f"{name}.yaml"
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    return {}


def _check_options(name: str, cls: type, options: Mapping[str, Any]) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [p for p in parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise UserError(f"explainer {name!r} has no option {unknown[0]!r}; its options: {known}")


def build_explainer(name: str, **options: Any):
    """An explainer by registry name: its YAML options, overridden by ``options``."""
    cls = get_explainer(name)
    merged = {**explainer_config(name), **options}
    _check_options(name, cls, merged)
    return cls(**merged)


def build_explainers(names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``{name: explainer}`` for ``names``, each with ``options[name]`` (``explainer_options`` of the configs holds
    every built-in's; options for an explainer nobody registered are a typo the user should hear about)."""
    options = {key: dict(value or {}) for key, value in (options or {}).items()}
    for key in options:
        get_explainer(key)
    return {name: build_explainer(name, **options.get(name, {})) for name in names}


def plugin_option_defaults() -> dict[str, dict[str, Any]]:
    """``{name: options}`` of every plugin explainer: its own YAML's over its constructor's defaults, so that
    ``explainer_options.<plugin>.<option>=`` is a key of the composed configs as a built-in's option is."""
    _load_plugins()
    found = {}
    for name, cls in sorted(_REGISTRY.items()):
        if cls.__module__.partition(".")[0] == "capsal":
            continue
        defaults = {
            key: parameter.default
            for key, parameter in list(inspect.signature(cls.__init__).parameters.items())[1:]
            if isinstance(parameter.default, bool | int | float | str | list | type(None))
        }
        found[name] = {**defaults, **explainer_config(name)}
    return found


def register_plugin_options() -> None:
    """Store :func:`plugin_option_defaults` as the Hydra config node ``explainer_plugins/registered``, which
    ``conf/explainer_options/builtin.yaml`` includes (optionally): the commands call it before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="explainer_plugins", name="registered", node=plugin_option_defaults())


ExplainerName = NameFrom(available_explainers)  # a registered explainer's name (plugins included)
ExplainerNames = NamesFrom(available_explainers)  # a list of them, each at most once
