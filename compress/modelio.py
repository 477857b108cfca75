"""Loading the user's saved tf_keras models with one-line errors, and without running code from
the file: ``.keras`` archives load in Keras's safe mode (a ``Lambda`` layer's pickled bytecode is
refused); legacy ``.h5`` files and SavedModel folders can carry code that runs on load, so they
are refused unless the caller says it trusts the file (``--trust-model-code``). A Keras 3
``.keras`` file is loaded with Keras 3 (safe mode) and translated to tf_keras
(``search_spaces.keras3``), outputs checked."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from search_spaces import InputError

__all__ = ["TRUST_OPTION", "check_model_file", "load_keras_model"]

TRUST_OPTION = "--trust-model-code"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _kind(path: Path) -> str:
    """``keras`` (a zip archive), ``h5``, ``savedmodel`` or ``unknown``, by content, not name."""
    if path.is_dir():
        return "savedmodel" if (path / "saved_model.pb").exists() else "folder"
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__}: {e.strerror or e}).") from None
    if head == _HDF5_MAGIC:
        return "h5"
    if zipfile.is_zipfile(path):
        return "keras"
    return "unknown"


def check_model_file(path: str | os.PathLike[str], what: str = "MODEL", trust_code: bool = False) -> str:
    """Everything that can be said of a model file without TensorFlow: it exists, is a model
    format, and (unless ``trust_code``) carries no code that would run on load. Returns its kind."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: file not found.")
    if not (path.is_file() or path.is_dir()):  # a FIFO or device would block or never end
        raise InputError(f"{what} {path}: expected a model file or SavedModel folder, got a special file.")
    kind = _kind(path)
    if kind == "folder":
        raise InputError(
            f"{what} {path}: expected a tf_keras SavedModel folder (with saved_model.pb), got a folder without one."
        )
    if kind == "unknown":
        raise InputError(
            f"{what} {path}: expected a saved tf_keras model (.keras archive, .h5 or SavedModel folder), "
            "got a file that is none of them."
        )
    if kind == "keras" and path.suffix != ".keras":
        # tf_keras decides by the name: a zip not called .keras would go to the legacy loaders.
        raise InputError(f"{what} {path}: expected a .keras archive to be named *.keras, got {path.name!r}.")
    if kind in ("h5", "savedmodel") and not trust_code:
        name = "legacy HDF5 (.h5)" if kind == "h5" else "SavedModel"
        raise InputError(
            f"{what} {path}: a {name} model can run code stored in the file when loaded; save it as .keras "
            f"(model.save('m.keras')), or pass {TRUST_OPTION} if you trust its author."
        )
    if kind == "keras" and not trust_code:
        foreign = _foreign_code(path, what)
        if foreign == "Lambda":
            raise _lambda_error(what, path)
        if foreign:
            raise InputError(
                f"{what} {path}: the model's config imports module {foreign!r}, whose code would run when "
                f"loaded; refused (only keras/tf_keras are imported; pass {TRUST_OPTION} for your own layers)."
            )
    return kind


def _lambda_error(what: str, path: Path) -> InputError:
    return InputError(
        f"{what} {path}: the model holds Python code (a Lambda layer) that would run when loaded; "
        f"refused (pass {TRUST_OPTION} if you trust its author)."
    )


_SAFE_MODULES = ("keras", "tf_keras", "builtins")


def _foreign_code(path: Path, what: str) -> str | None:
    """``"Lambda"`` if a .keras archive's config holds a ``Lambda`` layer, the name of a module
    outside keras/tf_keras if it asks for one (tf_keras imports any ``module`` a config names,
    in safe mode too), else ``None``. Read before TensorFlow loads."""
    from search_spaces.safeio import MAX_JSON_BYTES, loads_json

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("config.json")
            if info.file_size > MAX_JSON_BYTES:
                raise InputError(
                    f"{what} {path}: expected a model config of at most 64 MB, got {info.file_size:,} bytes."
                )
            config = loads_json(z.read(info), f"{what} {path} (config.json)", "a model config")
    except KeyError:
        raise InputError(f"{what} {path}: expected a .keras archive with config.json, got none.") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputError(
            f"{what} {path}: expected a readable .keras archive ({e.__class__.__name__})."
        ) from None
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                return "Lambda"
            module = node.get("module")
            if isinstance(module, str) and module.split(".")[0] not in _SAFE_MODULES:
                return module[:60]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def load_keras_model(
    path: str | os.PathLike[str], what: str = "MODEL", trust_code: bool = False, check: Any = None
) -> Any:
    """A tf_keras model from ``path`` (not compiled); ``what`` names the argument in errors.

    ``trust_code`` allows the legacy formats, whose loading can run code stored in the file.
    ``check``: inputs a translated Keras 3 model must give the same outputs on."""
    path = Path(path)
    kind = check_model_file(path, what, trust_code)
    if kind == "keras" and _keras3_version(path):
        return _load_keras3(path, what, check)
    from search_spaces.backend import keras

    k = keras()
    try:
        with warnings.catch_warnings():  # e.g. "module X is not loaded, but a Lambda layer uses it"
            warnings.simplefilter("ignore")
            if kind == "keras":
                model = k.models.load_model(path, compile=False, safe_mode=not trust_code)
            else:
                model = k.models.load_model(path, compile=False)
    except Exception as e:  # tf_keras raises OSError, ValueError, KeyError, ... for foreign files
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "arbitrary code execution" in first:
            raise _lambda_error(what, path) from None
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
