"""ExecuTorch with the XNNPACK backend: tf_keras -> ONNX (tf2onnx) -> PyTorch (``onnx_torch``) ->
``torch.export`` -> ``.pte`` lowered with the XNNPACK partitioner, run with ExecuTorch's runtime.

int8 goes through PT2E (``onnx_to_pte(..., "int8")``, the ``executorch`` export format): the
exported graph is annotated by ExecuTorch's XNNPACK quantizer (symmetric, per-channel weights, int8
activations), calibrated on the representative samples, converted, exported again and lowered.
That works for whole classifiers; as a latency runtime ExecuTorch offers fp32 only, because an
int8 single block (its last convolution is the program's output) lowers but does not load:
``XNNCompiler: Failed to create convolution node ... xnn_status_invalid_parameter``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from search_spaces import InputError

from . import Artifact, ConversionError, Runtime, Session, input_sample, read_model_file
from .onnx_torch import onnx_to_torch

__all__ = ["ExecuTorch", "ExecuTorchSession", "load_file", "onnx_to_pte", "require"]

INSTALL = "pip install 'edge-nas[executorch]' (executorch, torch)"


def require() -> None:
    """Raise a one-line ``InputError`` with the install hint when executorch or torch is missing."""
    try:
        import executorch  # noqa: F401
        import torch  # noqa: F401
    except ModuleNotFoundError as e:
        raise InputError(
            f"runtime executorch: not available here ({e.name} is missing); run: {INSTALL}."
        ) from None


def _first(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _failing_layer(e: BaseException) -> str:
    """The Keras layer an export error points at, when its message names an ONNX node's value."""
    import re

    m = re.search(r"model/([^/\s'\"]+)/", str(e))
    return f" (layer {m.group(1)!r})" if m else ""


def _step(name: str, fn: Any) -> Any:
    try:
        return fn()
    except (InputError, ConversionError):
        raise
    except Exception as e:  # noqa: BLE001 - torch.export and the lowering raise many types
        raise ConversionError(f"step {name}{_failing_layer(e)}: {type(e).__name__}: {_first(e)}") from None


def onnx_to_pte(
    data: bytes, dtype: str = "fp32", representative: Iterable[np.ndarray] | None = None
) -> bytes:
    """A ``.pte`` program (batch 1) from an fp32 ONNX model; int8 through the PT2E quantizer."""
    require()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = onnx_to_torch(data)
    example = (torch.zeros(module.input_shape),)
    with torch.no_grad():
        exported = _step("torch.export", lambda: torch.export.export(module, example))
        if dtype == "int8":
            if representative is None:
                raise InputError("int8 conversion: a representative dataset is required, got none.")
            exported = _quantize(exported, example, representative, module.input_shape)
        edge = _step(
            "lower to ExecuTorch/XNNPACK",
            lambda: to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]),
        )
        program = _step("to_executorch", lambda: edge.to_executorch())
    return bytes(program.buffer)


def _quantize(
    exported: Any, example: Any, representative: Iterable[np.ndarray], shape: tuple[int, ...]
) -> Any:
    import itertools

    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    samples = [np.asarray(s, np.float32) for s in itertools.islice(representative, 1000)]
    if not samples:
        raise InputError("int8 conversion: the representative dataset is empty.")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = _step("PT2E prepare (XNNPACK quantizer)", lambda: prepare_pt2e(exported.module(), quantizer))
    for s in samples:
        prepared(torch.from_numpy(s.reshape(shape)))
    converted = _step("PT2E convert", lambda: convert_pt2e(prepared))
    return _step("torch.export (int8)", lambda: torch.export.export(converted, example))


class ExecuTorchSession(Session):
    """A ``.pte`` program loaded by ExecuTorch's runtime. Programs are exported for batch 1:
    ``run`` loops samples."""

    def __init__(self, data: bytes, threads: int = 1) -> None:
        require()
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime as EtRuntime

        self.threads = threads
        # XNNPACK's pool defaults to one thread per core; pin it like the other runtimes. The pool
        # is process-wide: resetting it under a loaded program crashes, so only on a change.
        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        try:
            # The method lives inside the program: keep both (and the bytes) for the session's life.
            self._data = bytes(data)
            self.program = EtRuntime.get().load_program(self._data)
            self.method = self.program.load_method("forward")
        except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError/ValueError
            raise InputError(
                f"runtime executorch: not a program ExecuTorch can load ({_first(e)})."
            ) from None
        meta = self.method.metadata.input_tensor_meta(0)
        self.in_shape = tuple(int(d) for d in meta.sizes())
        self._torch = torch
        self._x = [torch.zeros(self.in_shape)]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        t = self._torch
        outs = [
            self.method.execute([t.from_numpy(x[i : i + 1].reshape(self.in_shape))])[0].numpy()
            for i in range(len(x))
        ]
        return np.concatenate(outs, axis=0).astype(np.float32)

    def prepare(self, x: np.ndarray | None) -> None:
        self._x = [self._torch.from_numpy(input_sample(x, self.in_shape).copy())]

    def invoke_once(self) -> None:
        self.method.execute(self._x)


class ExecuTorch(Runtime):
    name = "executorch"
    dtypes = ("fp32",)  # int8 blocks do not load in XNNPACK (module docstring)
    session_class = ExecuTorchSession

    def version(self) -> str:
        require()
        from importlib.metadata import version

        return version("executorch")

    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        self.check_dtype(dtype)
        require()
        from .onnxruntime import keras_to_onnx

        return Artifact(self.name, dtype, onnx_to_pte(keras_to_onnx(model), dtype))


def load_file(path: str | os.PathLike[str], threads: int = 1) -> ExecuTorchSession:
    """A session for a ``.pte`` file on disk."""
    return ExecuTorchSession(read_model_file(path), threads)
