"""Importing modules on first use: the modules a registry names (CLI subcommands, predictor
kinds), where a registered module that fails to import is an error naming the registry and the
module, never skipped; and a package's names that live in heavier submodules (``lazy_attributes``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from .errors import InputError, PluginError

__all__ = ["import_plugin", "lazy_attributes", "load_registered"]


def import_plugin(module: str, registry: str) -> ModuleType:
    """``module`` imported; ``PluginError`` (one line) when it or a module it needs is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PluginError(
            f"{registry}: expected the registered module {module!r} to import, "
            f"got {type(e).__name__}: {' '.join(str(e).split())}."
        ) from e


def load_registered(registry: Mapping[str, str], name: str, kind: str, kinds: str) -> Any:
    """What ``registry[name]`` names: every registry (spaces, runtimes, strategies, stages) maps a
    name to ``"module:attribute"``, imported on first use. An unknown ``kind`` lists the valid
    ``kinds``; a module that does not import raises its own error."""
    if name not in registry:
        raise InputError(f"{kind}: unknown {kind} {name!r}; valid {kinds}: {sorted(registry)}.")
    module_name, attribute = registry[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562) for names that live in submodules: ``homes``
    maps each name to its submodule, imported on the first use of the name."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
