"""OpenVINO on the CPU plugin: tf_keras -> OpenVINO IR (xml + bin) with ``openvino.convert_model``,
int8 through ONNX Runtime's QDQ quantization (OpenVINO runs QDQ graphs as int8), and compiled
models pinned to a thread count and one stream."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import InputError

from . import Artifact, Runtime, Session, input_sample, read_model_file, run_in_chunks

__all__ = ["OpenVino", "OpenVinoSession", "ir_from_model", "load_file"]

XML, BIN = "model.xml", "model.bin"


def _ov() -> Any:
    try:
        import openvino
    except ModuleNotFoundError:
        raise InputError("runtime openvino: not available here (pip install openvino).") from None
    return openvino


def ir_from_model(model: Any) -> tuple[bytes, bytes]:
    """Serialize an ``openvino.Model`` (or anything ``convert_model`` takes) to IR xml and bin."""
    ov = _ov()
    if not isinstance(model, ov.Model):
        model = ov.convert_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp, XML)
        # fp16 weight compression would change fp32 results; keep the weights as given.
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


class OpenVinoSession(Session):
    runs_on_caller_thread = False  # OpenVINO infers on its own executor threads

    def __init__(self, xml: bytes, weights: bytes, threads: int = 1, precision: str = "f32") -> None:
        ov = _ov()
        core = ov.Core()
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
        self.in_shape = tuple(
            d.get_length() if d.is_static else -1 for d in model.inputs[0].get_partial_shape()
        )
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # The CPU plugin would pick bf16 on CPUs that have it; fp32 files must run in fp32.
            "INFERENCE_PRECISION_HINT": precision,
        }
        self._core, self._model, self._config = core, model, config
        self._compile(1)

    def _compile(self, batch: int) -> None:
        # A static batch lets the CPU plugin plan its kernels once; ``run`` recompiles on change.
        self._model.reshape([batch, *self.in_shape[1:]])
        self.compiled = self._core.compile_model(self._model, "CPU", self._config)
        self.request = self.compiled.create_infer_request()
        self.batch = batch

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        return run_in_chunks(x, batch, self._run_chunk)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        if len(chunk) != self.batch:
            self._compile(len(chunk))
        return np.array(self.request.infer([chunk])[0], dtype=np.float32)

    def prepare(self, x: np.ndarray | None) -> None:
        if self.batch != 1:
            self._compile(1)
        self.request.set_input_tensor(_ov().Tensor(input_sample(x, (1, *self.in_shape[1:]))))

    def invoke_once(self) -> None:
        self.request.infer()


class OpenVino(Runtime):
    name = "openvino"
    dtypes = ("int8", "fp32")

    def version(self) -> str:
        return str(_ov().get_version()).split("-")[0]

    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        self.check_dtype(dtype)
        if dtype == "fp32":
            xml, weights = ir_from_model(model)
        else:
            if representative is None:
                raise InputError("int8 conversion: a representative dataset is required, got none.")
            from .onnxruntime import keras_to_onnx, quantize_onnx

            qdq = quantize_onnx(keras_to_onnx(model), representative)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, "q.onnx")
                path.write_bytes(qdq)
                xml, weights = ir_from_model(_ov().convert_model(str(path)))
        return Artifact(self.name, dtype, xml, parts=((XML, xml), (BIN, weights)))

    def load(self, artifact: Artifact, threads: int = 1) -> OpenVinoSession:
        parts = dict(artifact.parts)
        if BIN not in parts:
            raise InputError(f"runtime openvino: the artifact has no {BIN} part, got parts {sorted(parts)}.")
        return OpenVinoSession(parts.get(XML, artifact.data), parts[BIN], threads)


def load_file(path: str | os.PathLike[str], threads: int = 1) -> OpenVinoSession:
    """A session for an IR ``.xml`` (with its ``.bin`` beside it) or an ``.onnx`` file."""
    data = read_model_file(path)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        xml, weights = ir_from_model(_ov().convert_model(str(path)))
        return OpenVinoSession(xml, weights, threads)
    weights_path = path.with_suffix(".bin")
    if not weights_path.is_file():
        raise InputError(f"{path}: expected the weights file {weights_path.name} beside it, found none.")
    return OpenVinoSession(data, weights_path.read_bytes(), threads)
