"""Loading the user's saved tf_keras models (``.keras``, ``.h5`` or a SavedModel folder) with
one-line errors for a missing or foreign file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from search_spaces import InputError

__all__ = ["load_keras_model"]


def load_keras_model(path: str | os.PathLike[str], what: str = "MODEL") -> Any:
    """A tf_keras model from ``path`` (not compiled); ``what`` names the argument in errors."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: file not found.")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise InputError(
            f"{what} {path}: expected a tf_keras SavedModel folder (with saved_model.pb), got a folder without one."
        )
    from search_spaces.backend import keras

    k = keras()
    try:
        model = k.models.load_model(path, compile=False)
    except Exception as e:  # tf_keras raises OSError, ValueError, KeyError, ... for foreign files
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{what} {path}: expected a saved tf_keras model (.keras, .h5 or SavedModel folder), got a file "
            f"tf_keras cannot load ({first})."
        ) from None
    if not isinstance(model, k.Model):
        raise InputError(f"{what} {path}: expected a tf_keras Model, got {type(model).__name__}.")
    return model
