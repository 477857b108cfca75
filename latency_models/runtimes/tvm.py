"""Apache TVM on the CPU: tf_keras -> ONNX (tf2onnx) -> Relax (TVM's ONNX frontend) -> a library
compiled for an LLVM target, run with TVM's Relax virtual machine.

The host target (``llvm``) builds a shared library this machine loads and times. A cross target
(``llvm -mtriple=aarch64-linux-gnu``, a Raspberry Pi) is saved as a ``.tar`` of object files that
``tvm.runtime.load_module`` links on the device; it cannot be run here.

fp32 only: TVM 0.27 has no QNN path (Relay and its QNN dialect are gone); its ONNX frontend reads
a QDQ model but lowers QuantizeLinear/DequantizeLinear to float arithmetic, so an "int8" library
would compute in fp32 and its timing would not be an int8 timing.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import InputError

from . import Artifact, ConversionError, Runtime, Session, input_sample, read_model_file
from .onnx_torch import describe, keras_layer

__all__ = ["HOST_TARGET", "TVM", "TVMSession", "compile_onnx", "load_file", "tvm_module"]

HOST_TARGET = "llvm"
INSTALL = "pip install 'edge-nas[tvm]' (apache-tvm)"


def tvm_module() -> Any:
    try:
        import tvm
    except ModuleNotFoundError:
        raise InputError(f"runtime tvm: not available here; run: {INSTALL}.") from None
    return tvm


def _target_config(text: str) -> dict[str, Any]:
    """``llvm -mtriple=T -mcpu=C -mattr=+a,+b`` (the form TVM's docs and users write; TVM 0.27
    reads only dicts or JSON) as a target dict; a JSON object passes through."""
    import json

    if text.startswith("{"):
        return dict(json.loads(text))
    kind, *flags = text.split()
    config: dict[str, Any] = {"kind": kind}
    for flag in flags:
        key, sep, value = flag.lstrip("-").partition("=")
        if not sep or not key:
            raise ValueError(f"expected -key=value, got {flag!r}")
        config[key] = value.split(",") if key in ("mattr", "keys", "libs") else value
    return config


def check_target(target: str) -> Any:
    """A ``tvm.target.Target`` for an LLVM CPU target string, or one line saying what is wrong."""
    tvm = tvm_module()
    text = str(target).strip()
    try:
        config = _target_config(text)
    except ValueError as e:
        raise InputError(f"tvm target: {target!r} is not a target string ({e}).") from None
    if config.get("kind") != "llvm":
        raise InputError(
            f"tvm target: expected an LLVM CPU target like 'llvm' or 'llvm -mtriple=aarch64-linux-gnu', got {target!r}."
        )
    try:
        return tvm.target.Target(config)
    except Exception as e:  # noqa: BLE001 - TVM raises its own error types for bad targets
        raise InputError(f"tvm target: {target!r} is not a valid TVM target ({_first(e)[:120]}).") from None


def is_host(target: str) -> bool:
    """Whether ``target`` builds for this machine (no other triple, CPU or ABI given)."""
    return str(target).strip() == HOST_TARGET


def compile_onnx(data: bytes, target: str = HOST_TARGET, batch: int = 1) -> tuple[bytes, str]:
    """Compile an fp32 ONNX model (one input) for ``target`` at a fixed ``batch``.

    Returns the library's bytes and its suffix: ``.so`` for the host, ``.tar`` (object files,
    linked on the device) for a cross target. A node TVM's frontend lacks is named with its layer.
    """
    import onnx

    tvm = tvm_module()
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    tgt = check_target(target)
    model = onnx.load_from_string(data)
    known = _get_convert_map()
    missing = [n for n in model.graph.node if n.op_type not in known]
    if missing:
        raise ConversionError(
            f"step onnx -> relax (TVM frontend): {describe(missing[0])} is not supported by TVM."
        )
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
    printed = io.StringIO()
    try:
        # The frontend prints the op it failed on to stdout; the error below names it with its layer.
        with contextlib.redirect_stdout(printed):
            mod = from_onnx(model, shape_dict={inp.name: dims}, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        # The library carries its input shape (``input_shape()``): a file on disk is all a
        # session needs, as for the other runtimes.
        bb = relax.BlockBuilder()
        with bb.function("input_shape", params=[]):
            bb.emit_func_output(relax.ShapeExpr([int(d) for d in dims]))
        mod["input_shape"] = bb.get()["input_shape"]
    except Exception as e:  # noqa: BLE001 - the frontend raises many types
        failure = f"step onnx -> relax (TVM frontend){_node_of(printed.getvalue(), model)}: {_first(e)}"
    else:
        failure = None
    if failure is not None:
        # The frontend's half-built BlockBuilder (kept alive by the traceback until here) warns
        # on fd 2 when collected: collect it now, while the caller may have stderr muted.
        gc.collect()
        raise ConversionError(failure)
    try:
        executable = tvm.compile(mod, target=tgt)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"step compile ({tgt}): {_first(e)}") from None
    suffix = ".so" if is_host(target) else ".tar"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"model{suffix}")
        try:
            executable.export_library(str(path))
        except Exception as e:  # noqa: BLE001
            raise ConversionError(f"step export_library ({tgt}): {_first(e)}") from None
        return path.read_bytes(), suffix


def _node_of(text: str, model: Any) -> str:
    """`` at layer 'x' (ONNX op Y)`` for the op a frontend failure names, when its nodes all come
    from one Keras layer (or from a few, named)."""
    m = re.search(r"Error converting operator (\w+)", text)
    if not m:
        return ""
    layers = sorted({keras_layer(n.name) for n in model.graph.node if n.op_type == m.group(1)})
    if len(layers) == 1:
        return f" at layer {layers[0]!r} (ONNX op {m.group(1)})"
    return f" at ONNX op {m.group(1)} (in one of the layers {layers[:5]})" if layers else ""


def _first(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


class TVMSession(Session):
    """A host library loaded into TVM's Relax VM. Compiled for batch 1: ``run`` loops samples."""

    def __init__(self, library: bytes, threads: int = 1) -> None:
        tvm = tvm_module()
        from tvm import relax

        self.threads = threads
        # TVM's pool pins the calling thread to a core when it is configured, which would cap
        # every other runtime in this process at one core: the caller's affinity is restored.
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        tvm.get_global_func("runtime.config_threadpool")(1, threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        # load_module needs a file; the library is mapped in, so the temp file can go at once.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "model.so")
            path.write_bytes(library)
            try:
                lib = tvm.runtime.load_module(str(path))
            except Exception as e:  # noqa: BLE001
                raise InputError(f"runtime tvm: not a library TVM can load ({_first(e)}).") from None
        self.vm = relax.VirtualMachine(lib, tvm.cpu())
        self.main = self.vm["main"]
        self.in_shape = tuple(int(d) for d in self.vm["input_shape"]())
        self._tensor = tvm.runtime.tensor
        self._x = self._tensor(np.zeros(self.in_shape, np.float32))

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        outs = [self.main(self._tensor(x[i : i + 1].reshape(self.in_shape))).numpy() for i in range(len(x))]
        return np.concatenate(outs, axis=0).astype(np.float32)

    def prepare(self, x: np.ndarray | None) -> None:
        self._x = self._tensor(input_sample(x, self.in_shape))

    def invoke_once(self) -> None:
        self.main(self._x)


class TVM(Runtime):
    name = "tvm"
    dtypes = ("fp32",)
    session_class = TVMSession

    def version(self) -> str:
        return str(tvm_module().__version__)

    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        self.check_dtype(dtype)
        from .onnxruntime import keras_to_onnx

        tvm_module()
        library, _ = compile_onnx(keras_to_onnx(model))
        return Artifact(self.name, dtype, library)


def load_file(path: str | os.PathLike[str], threads: int = 1) -> TVMSession:
    """A session for a host library (``.so`` written by ``compile_onnx``) on disk."""
    return TVMSession(read_model_file(path), threads)
