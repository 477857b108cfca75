"""A user's ``build(hp)`` function for the ``keras-tuner`` space: imported from ``module:function``
or ``path/to/file.py:function``, and its errors reported at the user's own line (not ours, not a
library's)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import InputError, TrialFailedError

__all__ = ["build_on_input", "first_line", "load_build", "user_frame"]


def first_line(e: BaseException) -> str:
    """The message's first line; TensorFlow's "in user code:" dumps end with the real one."""
    text = [t.strip() for t in str(e).strip().splitlines() if t.strip()]
    line = text[0] if text else ""
    if line.startswith("in user code") and len(text) > 1:
        import re

        raised = [t for t in text if re.match(r"^[\w.]+(Error|Exception): ", t)]
        line = raised[-1].split(": ", 1)[1] if raised else text[-1]
    return (line[:200] + "...") if len(line) > 200 else line


def build_on_input(
    model: Any,
    shape: tuple[int, ...],
    fails: Callable[[], str],
    detail: Callable[[BaseException], str] = first_line,
) -> None:
    """Build a user's model on inputs of ``shape`` (a batch axis in front). A model that does not
    build fails the trial: ``{fails()} {shape}: {error type}: {detail(error)}``."""
    try:
        model.build((None, *shape))
    except Exception as e:
        raise TrialFailedError(f"{fails()} {shape}: {type(e).__name__}: {detail(e)}") from None


def _library_dirs() -> tuple[str, ...]:
    import sysconfig

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = tuple(
        os.path.join(here, p) + os.sep for p in ("search_spaces", "nas", "latency_models", "compress")
    )
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
    return ours + tuple(os.path.abspath(p) + os.sep for p in paths) + ("<frozen",)


def user_frame(e: BaseException, func: Callable[..., Any] | None = None) -> str:
    """``file:line`` of the user's deepest frame in ``e``'s traceback (not ours, not a library's);
    the function's ``def`` line when the traceback holds none."""
    import traceback

    skip = _library_dirs()

    def user(filename: str) -> bool:
        return (
            not os.path.abspath(filename).startswith(skip)
            and not filename.startswith("<")
            and "__autograph_generated" not in filename
        )

    frames = [f for f in traceback.extract_tb(e.__traceback__) if user(f.filename)]
    if isinstance(e, SyntaxError) and e.filename:
        return f"{e.filename}:{e.lineno}"
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno}"
    # Inside a tf.function TensorFlow re-raises with the original frames written in the message.
    import re

    quoted = [m for m in re.findall(r'File "([^"]+)", line (\d+)', str(e)) if user(m[0])]
    if quoted:
        return f"{quoted[-1][0]}:{quoted[-1][1]}"
    code = getattr(func, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else "build(hp)"


def _import_file(path: str) -> Any:
    """A ``.py`` file as a module (its folder importable, so it may import its siblings)."""
    import importlib.util

    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise InputError(f"space keras-tuner: `build` file {path!r} not found.")
    name = f"edge_nas_user_{os.path.splitext(os.path.basename(full))[0]}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == full:
        return sys.modules[name]
    folder = os.path.dirname(full)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_build(spec: str) -> Callable[[Any], Any]:
    """The function named by ``module:function`` (the working folder is importable) or by
    ``path/to/file.py:function``; the name may also be a keras-tuner ``HyperModel`` subclass or
    instance, whose ``build`` method is then the function."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"space keras-tuner: `build` expected 'module:function', got {spec!r}.")
    module_name, func_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from .backend import native_stderr_muted, tf

    tf()  # TensorFlow configured (Keras 2, quiet) before the user's module imports it
    error: BaseException | None = None
    with native_stderr_muted():  # the user's `import keras` must not print TensorFlow's start-up
        try:
            module = (
                _import_file(module_name)
                if module_name.endswith(".py")
                else importlib.import_module(module_name)
            )
        except Exception as e:
            error = e
    shown = os.path.basename(module_name) if module_name.endswith(".py") else module_name
    if isinstance(error, InputError):
        raise error
    if isinstance(error, ModuleNotFoundError):
        if error.name and module_name.startswith(error.name):
            raise InputError(
                f"space keras-tuner: `build` module {module_name!r} not found ({error})."
            ) from None
        raise InputError(
            f"{user_frame(error)}: importing {shown} raised ModuleNotFoundError: {error}."
        ) from None
    if error is not None:  # the user's module: report its own line, not our traceback
        raise InputError(
            f"{user_frame(error)}: importing {shown} raised {type(error).__name__}: {first_line(error)}"
        ) from None
    func = getattr(module, func_name, None)
    hypermodel = _hypermodel(func, func_name, shown)
    if hypermodel is not None:  # keras-tuner's HyperModel form: its build(hp) is the space
        return hypermodel.build
    if not callable(func):
        raise InputError(
            f"space keras-tuner: `build` expected a function {func_name!r} in {module_name}, got {func!r}."
        )
    return func


def _hypermodel(obj: Any, name: str, shown: str) -> Any | None:
    """``obj`` as a keras-tuner ``HyperModel`` instance (a subclass is instantiated with no
    arguments), or None when it is not one. Only its ``build(hp)`` is used: a ``fit`` it defines
    is not (training follows the config's ``training`` section, the same for every candidate)."""
    import keras_tuner as kt

    if isinstance(obj, kt.HyperModel):
        return obj
    if isinstance(obj, type) and issubclass(obj, kt.HyperModel):
        try:
            return obj()
        except Exception as e:
            raise InputError(
                f"{user_frame(e)}: {shown}:{name}() raised {type(e).__name__}: {first_line(e)} (a HyperModel "
                "class is created with no arguments; name an instance of it instead)"
            ) from None
    return None
