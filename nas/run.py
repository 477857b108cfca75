"""The ``nas.run`` module name, kept so that ``import nas.run`` and ``from nas.run import ...``
go on working: the job's code is in ``nas.runner``, and every name is looked up there on use.

``nas.run`` itself (the package attribute) is the API function ``nas.run(config, out=...)``
defined in ``nas/__init__.py``, which imports this module first so that no later import rebinds it.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import importlib

    return getattr(importlib.import_module("nas.runner"), name)
