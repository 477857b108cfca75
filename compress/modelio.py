"""Loading the user's saved tf_keras models (``.keras``, ``.h5`` or a SavedModel folder) with
one-line errors for a missing or foreign file. A Keras 3 ``.keras`` file is loaded with Keras 3
(safe mode) and translated to tf_keras (``search_spaces.keras3``), outputs checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from search_spaces import InputError

__all__ = ["load_keras_model"]


def load_keras_model(path: str | os.PathLike[str], what: str = "MODEL", check: Any = None) -> Any:
    """A tf_keras model from ``path`` (not compiled); ``what`` names the argument in errors.
    ``check``: inputs a translated Keras 3 model must give the same outputs on."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: file not found.")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise InputError(
            f"{what} {path}: expected a tf_keras SavedModel folder (with saved_model.pb), got a folder without one."
        )
    from search_spaces.backend import keras

    k = keras()
    if _keras3_version(path):
        return _load_keras3(path, what, check)
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


def _keras3_version(path: Path) -> str | None:
    """The Keras version a ``.keras`` zip was saved by, when it is 3 or later."""
    import json
    import zipfile

    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            version = str(json.loads(z.read("metadata.json")).get("keras_version", ""))
    except (KeyError, ValueError, OSError):
        return None
    return version if version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 3 else None


def _load_keras3(path: Path, what: str, check: Any) -> Any:
    from search_spaces import TrialFailedError
    from search_spaces.backend import native_stderr_muted
    from search_spaces.keras3 import to_tf_keras

    with native_stderr_muted():
        import keras
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise InputError(
            f"{what} {path}: expected a Keras 3 model Keras can load in safe mode, got ({first})."
        ) from None
    shape = tuple(int(d) for d in model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if not shape:
        raise InputError(f"{what} {path}: expected a Keras 3 model with a known input shape, got none.")
    try:
        return to_tf_keras(model, shape, where=f"{what} {path}", check=check)
    except TrialFailedError as e:
        raise InputError(str(e)) from None
