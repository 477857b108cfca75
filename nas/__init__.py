"""edge-nas from Python: ``nas.run(config, out=...)`` searches and exports, ``nas.best(runs=...)``
retrieves the best model of past studies. Importing ``nas`` loads nothing heavy.

``nas.run`` is the function below; the job's code is in ``nas.runner``. The module ``nas.run``
(for ``from nas.run import ...``) is imported here first, because Python binds a package
attribute to a submodule only on the submodule's first import: once it is in ``sys.modules``,
``import nas.run`` leaves ``nas.run`` the function.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

from search_spaces.plugins import lazy_attributes

from . import run as _run_module  # noqa: F401 - before the function takes the name (see above)

__all__ = ["best", "load_config", "run"]


def run(
    config: str | os.PathLike[str] | Mapping[str, Any] | RunConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    storage: str | None = None,
    status: Callable[[str], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Run the whole job like ``nas run CONFIG --out OUT`` and return the report.

    ``config`` is a YAML path, a mapping shaped like the YAML, or a ``RunConfig``. Each keyword
    in ``overrides`` is a config section whose keys replace the config's, e.g.
    ``nas.run("quickstart.yaml", out="runs/q2", search={"trainings": 4}, constraints={"max_size_kb": 30})``;
    the result is validated like a YAML file.
    """
    from .config import RunConfig, load_config, parse_config
    from .runner import run as run_job

    if isinstance(config, RunConfig):
        base = config
    elif isinstance(config, Mapping):
        base = parse_config(dict(config), "config", base_dir=Path.cwd())
    else:
        base = load_config(config)
    if overrides:
        doc = base.as_dict()
        for section, values in overrides.items():
            if not isinstance(values, Mapping):
                from search_spaces import InputError

                raise InputError(f"{section}: expected a mapping of settings to override, got {values!r}.")
            doc[section] = {**(doc.get(section) or {}), **dict(values)}
        base = parse_config(doc, "overrides", base_dir=Path.cwd())
    return run_job(base, out, resume=resume, storage=storage, status=status, on_event=on_event)


# ``nas.best`` is ``nas.retrieve.best`` itself, imported on first use (``import nas`` stays light).
__getattr__ = lazy_attributes(__name__, {"best": "retrieve"})


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Load and validate a run configuration YAML (every key: docs/configuration.md)."""
    from .config import load_config as _load

    return _load(path)
