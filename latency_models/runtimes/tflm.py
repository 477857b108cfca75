"""TensorFlow Lite Micro through its Python interpreter: runs int8 .tflite files as a
microcontroller would and reports the tensor-arena bytes the model really needs.

On x86 TFLM runs its portable reference kernels, so its latencies say little about a Cortex-M;
the arena bytes, however, are what the same file needs on the device (same planner, same kernels'
persistent buffers), which is why tables on this runtime are mostly about memory.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from search_spaces import InputError

from . import Artifact, Session, input_sample, read_model_file
from .litert import TFLiteRuntime

__all__ = ["ArenaUse", "TFLiteMicro", "TFLMSession", "arena_bytes", "arena_use", "load_file"]

# The interpreter takes a fixed arena; we start at its own default (10x the model) and grow it
# until the model fits, up to this cap, because activation-heavy models need far more.
MAX_ARENA = 1 << 30

T = TypeVar("T")


@dataclass(frozen=True)
class ArenaUse:
    """The arena TFLM's recording allocator reports: ``head`` is the planned (non-persistent)
    activation memory, ``tail`` the persistent part (tensor structs, kernels' buffers)."""

    total: int
    head: int
    tail: int


def _interpreter_module() -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ModuleNotFoundError:
        raise InputError("runtime tflm: not available here (pip install tflite-micro).") from None
    return runtime


def _captured_stderr(fn: Callable[[], T]) -> tuple[T, str]:
    """Run ``fn`` with the process's fd 2 sent to a temp file: TFLM prints its allocation report
    and its errors from C++ straight to stderr, not through Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read().decode(errors="replace")


def _open(data: bytes) -> Any:
    """A TFLM interpreter for ``data`` with an arena large enough for it."""
    runtime = _interpreter_module()
    size = max(len(data) * 10, 1 << 16)
    last = ""
    while size <= MAX_ARENA:
        try:
            interpreter, _ = _captured_stderr(
                lambda n=size: runtime.Interpreter.from_bytes(data, arena_size=n)
            )
            return interpreter
        except (RuntimeError, ValueError) as e:
            last = str(e)
            size *= 4
    raise InputError(f"runtime tflm: the model does not fit a {MAX_ARENA}-byte arena ({last.strip()[:200]}).")


def _parse_allocations(text: str) -> ArenaUse:
    found = {k: re.search(rf"Arena allocation {k} (\d+) bytes", text) for k in ("total", "head", "tail")}
    if not all(found.values()):
        raise RuntimeError(f"TFLM printed no arena report; got {text[:200]!r}")
    return ArenaUse(*(int(found[k].group(1)) for k in ("total", "head", "tail")))  # type: ignore[union-attr]


def arena_use(artifact: Artifact | bytes) -> ArenaUse:
    """Arena bytes the model uses once allocated (the numbers of TFLM's ``PrintAllocations``)."""
    data = artifact.data if isinstance(artifact, Artifact) else bytes(artifact)
    interpreter = _open(data)
    _, text = _captured_stderr(interpreter.print_allocations)
    return _parse_allocations(text)


def arena_bytes(artifact: Artifact | bytes) -> int:
    """The tensor arena (bytes) a microcontroller must reserve to run this int8 model."""
    return arena_use(artifact).total


class TFLMSession(Session):
    """A TFLM interpreter (batch 1, as on a microcontroller); ``run`` loops over the batch."""

    def __init__(self, data: bytes) -> None:
        self.interpreter = _open(data)
        self.input = self.interpreter.get_input_details(0)
        self.output = self.interpreter.get_output_details(0)
        self.in_shape = tuple(int(d) for d in self.input["shape"])
        if self.in_shape[0] != 1:
            raise InputError(
                f"runtime tflm: expected a batch-1 model, got input shape {list(self.in_shape)}."
            )

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind in "iu":
            q = self.input["quantization_parameters"]
            scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if np.dtype(self.output["dtype"]).kind in "iu":
            q = self.output["quantization_parameters"]
            return (y.astype(np.float32) - int(q["zero_points"][0])) * float(q["scales"][0])
        return y.astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, *self.in_shape[1:])
        outs = []
        for sample in self._quantize(x):
            self.interpreter.set_input(sample[None, ...], 0)
            self.interpreter.invoke()
            outs.append(self._dequantize(np.array(self.interpreter.get_output(0))))
        return np.concatenate(outs, axis=0)

    def prepare(self, x: np.ndarray | None) -> None:
        self.interpreter.set_input(self._quantize(input_sample(x, self.in_shape)), 0)

    def invoke_once(self) -> None:
        self.interpreter.invoke()


class TFLiteMicro(TFLiteRuntime):
    """int8 only: TFLM targets integer microcontrollers (fp32 files run too, but slowly and
    nobody deploys them)."""

    name = "tflm"
    dtypes = ("int8", "fp32")

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("tflite-micro")
        except PackageNotFoundError:
            raise InputError("runtime tflm: not available here (pip install tflite-micro).") from None

    def load(self, artifact: Artifact, threads: int = 1) -> TFLMSession:
        # TFLM is single-threaded by design; ``threads`` is accepted for a uniform interface.
        return TFLMSession(artifact.data)

    def arena_bytes(self, artifact: Artifact) -> int:
        return arena_bytes(artifact)

    def arena_use(self, artifact: Artifact) -> ArenaUse:
        return arena_use(artifact)


def load_file(path: str | os.PathLike[str], threads: int = 1) -> TFLMSession:
    """A session for a ``.tflite`` file on disk."""
    data = read_model_file(path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InputError(f"{path}: expected a .tflite flatbuffer (identifier TFL3), got something else.")
    return TFLMSession(data)
