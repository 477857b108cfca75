"""LiteRT (TFLite with XNNPACK): conversion to .tflite (int8 full-integer, fp16, fp32) and timing
with ``ai_edge_litert``'s interpreter at a pinned thread count."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from search_spaces import InputError
from search_spaces.backend import native_stderr_muted, tf

from . import Artifact, ModelNotRunnable, Runtime, Session, input_sample, read_model_file, run_in_chunks

__all__ = ["LiteRT", "LiteRTSession", "TFLiteRuntime", "convert_tflite", "load_file"]


def convert_tflite(
    model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None, signature: bool = True
) -> bytes:
    """A .tflite flatbuffer. int8 is full-integer with int8 input and output; it needs samples.

    ``signature=False`` converts the model's graph directly instead of through a SavedModel (what
    ``from_keras_model`` does): 8x faster on small models, the same operators, tensors, weights
    and timings, but no signature table (``get_signature_runner``) and a slightly smaller file.
    For files that are only timed; shipped files keep their signature."""
    t = tf()
    converter = _graph_converter(model) if not signature else None
    if converter is None:
        converter = t.lite.TFLiteConverter.from_keras_model(model)
    if dtype == "fp16":
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [t.float16]
    elif dtype == "int8":
        if representative is None:
            raise InputError("int8 conversion: a representative dataset is required, got none.")
        samples = [np.asarray(s, dtype=np.float32) for s in itertools.islice(representative, 1000)]
        if not samples:
            raise InputError("int8 conversion: the representative dataset is empty.")

        def gen() -> Iterable[list[np.ndarray]]:
            for s in samples:
                yield [s[None, ...]]

        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = t.int8
        converter.inference_output_type = t.int8
    elif dtype == "dynamic":
        converter.optimizations = [t.lite.Optimize.DEFAULT]
    elif dtype != "fp32":
        raise InputError(f"dtype: expected one of ['int8', 'fp16', 'fp32', 'dynamic'], got {dtype!r}.")
    with native_stderr_muted():
        return bytes(converter.convert())


def _graph_converter(model: Any) -> Any:
    """A converter of ``model``'s inference graph that skips the SavedModel round trip, or None
    when the model cannot be traced that way (the caller then converts it the usual way)."""
    t = tf()
    try:
        specs = [
            t.TensorSpec([None, *i.shape[1:]], i.dtype, name=f"input_{k}") for k, i in enumerate(model.inputs)
        ]
        single = len(specs) == 1

        def call(*xs: Any) -> Any:
            return model(xs[0] if single else list(xs), training=False)

        fn = t.function(call).get_concrete_function(*specs)
        converter = t.lite.TFLiteConverter.from_concrete_functions([fn], model)
        converter.experimental_lower_to_saved_model = False
    except Exception:  # any tracing failure: the SavedModel path is the reference, use it
        return None
    return converter


class LiteRTSession(Session):
    def __init__(self, data: bytes, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.threads = threads
        # The first interpreter of a process prints "INFO: Created TensorFlow Lite XNNPACK
        # delegate for CPU." on the native stderr.
        with native_stderr_muted():
            self.interpreter = Interpreter(model_content=data, num_threads=threads)
            try:
                self.interpreter.allocate_tensors()
            except RuntimeError as e:
                raise ModelNotRunnable(
                    f"LiteRT could not prepare the model: {str(e).splitlines()[0][:160]} (an int8 "
                    "tensor with a degenerate range, e.g. an activation that was zero on every calibration sample?)"
                ) from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch_resized = 1

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self.output["dtype"] in (np.int8, np.uint8):
            scale, zero = self.output["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        return run_in_chunks(x, batch, self._run_chunk)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        if len(chunk) != self._batch_resized:
            self.interpreter.resize_tensor_input(self.input["index"], [len(chunk), *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch_resized = len(chunk)
        self.interpreter.set_tensor(self.input["index"], self._quantize(chunk))
        self.interpreter.invoke()
        return self._dequantize(self.interpreter.get_tensor(self.output["index"]))

    def prepare(self, x: np.ndarray | None) -> None:
        if self._batch_resized != 1:
            self.interpreter.resize_tensor_input(self.input["index"], [1, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch_resized = 1
        sample = input_sample(x, [1, *self.input["shape"][1:]])
        self.interpreter.set_tensor(self.input["index"], self._quantize(sample))

    def invoke_once(self) -> None:
        self.interpreter.invoke()


class TFLiteRuntime(Runtime):
    """A runtime of .tflite flatbuffers (LiteRT, TFLM): one conversion for all of them."""

    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        self.check_dtype(dtype)
        return Artifact(self.name, dtype, convert_tflite(model, dtype, representative))

    def convert_for_profiling(
        self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None
    ) -> Artifact:
        self.check_dtype(dtype)
        return Artifact(self.name, dtype, convert_tflite(model, dtype, representative, signature=False))


class LiteRT(TFLiteRuntime):
    name = "litert"
    dtypes = ("int8", "fp16", "fp32", "dynamic")
    session_class = LiteRTSession

    def version(self) -> str:
        from importlib.metadata import version

        return version("ai-edge-litert")


def load_file(path: str | os.PathLike[str], threads: int = 1) -> LiteRTSession:
    """Open a .tflite file on disk (as the other runtimes' ``load_file``)."""
    return LiteRTSession(read_model_file(path, ".tflite file"), threads)
