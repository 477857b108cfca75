"""Importing the modules a registry names (CLI subcommands, predictor kinds): a registered
module that fails to import is an error naming the registry and the module, never skipped."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import PluginError

__all__ = ["import_plugin"]


def import_plugin(module: str, registry: str) -> ModuleType:
    """``module`` imported; ``PluginError`` (one line) when it or a module it needs is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PluginError(
            f"{registry}: expected the registered module {module!r} to import, "
            f"got {type(e).__name__}: {' '.join(str(e).split())}."
        ) from e
