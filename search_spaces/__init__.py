"""Search spaces: families of edge networks that sample, build and list their priced blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import Block, Choice, SearchSpace, SizeTerms, TaskShape
from .errors import FatalError, InputError, NasError, TrialFailedError
from .plugins import load_registered

__all__ = [
    "Block",
    "Choice",
    "FatalError",
    "InputError",
    "NasError",
    "SPACES",
    "SUPERNETS",
    "SearchSpace",
    "SizeTerms",
    "TaskShape",
    "TrialFailedError",
    "get_space",
    "space_class",
    "supernet_class",
]

# name -> "module:Class"; modules are imported only when their space is asked for.
SPACES: dict[str, str] = {
    "mbconv": "search_spaces.mbconv:MbconvSpace",
    "ofa-mbv3": "search_spaces.ofa_mbv3:OfaMbv3Space",
    "nb201": "search_spaces.nb201:Nb201Space",
    "fbnet": "search_spaces.fbnet:FbnetSpace",
    "dsconv": "search_spaces.dsconv:DsconvSpace",
    "keras-tuner": "search_spaces.keras_tuner:KerasTunerSpace",
}

# space name -> "module:Class" of its elastic weight-sharing supernet (``nas supernet train``).
SUPERNETS: dict[str, str] = {
    "mbconv": "search_spaces.mbconv_supernet:MbconvSupernet",
    "ofa-mbv3": "search_spaces.ofa_supernet:OfaMbv3Supernet",
}


def space_class(name: str) -> type[SearchSpace]:
    """The class of the space called ``name`` (its module imported, no space made)."""
    return load_registered(SPACES, name, "space", "spaces")


def get_space(name: str, options: Mapping[str, Any] | None = None) -> SearchSpace:
    """The space called ``name`` with its options (a mapping from the config)."""
    cls = space_class(name)
    options = dict(options or {})
    if not hasattr(cls, "from_options"):
        if options:
            raise InputError(f"space {name}: takes no options, got {sorted(options)}.")
        return cls()
    try:
        return cls.from_options(options)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
        if isinstance(e, InputError):
            raise
        # A value of the wrong type deep in the options (null, a string for a list, ...).
        from .safeio import brief

        raise InputError(
            f"space {name}: expected options of the documented types, got {brief(options)} "
            f"({e.__class__.__name__}: {str(e)[:80]})."
        ) from None


def supernet_class(name: str, where: str = "space.name") -> type[Any]:
    """The supernet class of the space called ``name``: ``cls(space, task, seed=...)`` holds the
    weights every subnet of ``space`` shares (``search_spaces._supernet.ElasticSupernet``)."""
    if name not in SUPERNETS:
        raise InputError(f"{where}: expected a space with a supernet {sorted(SUPERNETS)}, got {name!r}.")
    return load_registered(SUPERNETS, name, "supernet", "supernets")
