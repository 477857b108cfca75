"""ONNX Runtime on the CPU: tf_keras -> ONNX with tf2onnx (fp32), int8 by ONNX Runtime's static
QDQ quantization, and sessions pinned to a thread count."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import InputError

from . import Artifact, Runtime, Session, input_sample, read_model_file, run_in_chunks

__all__ = ["OnnxRuntime", "OnnxSession", "keras_to_onnx", "load_file", "quantize_onnx"]

OPSET = 17


@contextlib.contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    # tf2onnx logs recoverable optimizer failures with whole tracebacks; the graph it returns is
    # still correct (the tests compare outputs), so only real errors should reach the user.
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def keras_to_onnx(model: Any) -> bytes:
    """An fp32 ONNX model (opset 17) with a dynamic batch axis and one input named ``input``."""
    from search_spaces.backend import tf

    t = tf()
    with _quiet_tf2onnx():
        import tf2onnx

        spec = (t.TensorSpec((None, *model.inputs[0].shape[1:]), t.float32, name="input"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def quantize_onnx(fp32: bytes, representative: Iterable[np.ndarray]) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights, int8 activations) calibrated on
    ``representative`` (single samples without a batch axis)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = [np.asarray(s, dtype=np.float32)[None, ...] for s in itertools.islice(representative, 1000)]
    if not samples:
        raise InputError("int8 conversion: the representative dataset is empty.")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self._it, None)
            return None if sample is None else {"input": sample}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "m.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "q.onnx")
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps fusion; quantization works without it
            pre = src
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return dst.read_bytes()


class OnnxSession(Session):
    def __init__(self, data: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.threads = threads
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Spinning threads burn the shared cores between runs and skew everyone's timings.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads > 1 else "1")
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.in_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.output_name = self.session.get_outputs()[0].name
        self._feed: dict[str, np.ndarray] = {}

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        out = run_in_chunks(
            x, batch, lambda chunk: self.session.run([self.output_name], {self.input_name: chunk})[0]
        )
        return out.astype(np.float32)

    def prepare(self, x: np.ndarray | None) -> None:
        shape = (1, *(d if d > 0 else 1 for d in self.in_shape[1:]))
        self._feed = {self.input_name: input_sample(x, shape)}

    def invoke_once(self) -> None:
        self.session.run([self.output_name], self._feed)


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    dtypes = ("int8", "fp32")
    session_class = OnnxSession

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        self.check_dtype(dtype)
        data = keras_to_onnx(model)
        if dtype == "int8":
            if representative is None:
                raise InputError("int8 conversion: a representative dataset is required, got none.")
            data = quantize_onnx(data, representative)
        return Artifact(self.name, dtype, data)


def load_file(path: str | os.PathLike[str], threads: int = 1) -> OnnxSession:
    """A session for an ``.onnx`` file on disk."""
    data = read_model_file(path)
    try:
        return OnnxSession(data, threads)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        if e.__class__.__module__.startswith("onnxruntime"):
            raise InputError(
                f"{path}: not a model ONNX Runtime can load ({str(e).splitlines()[0][:200]})."
            ) from None
        raise
