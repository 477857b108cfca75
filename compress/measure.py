"""Measuring an exported file itself: size, gzip size, weight sparsity and MACs read from the
flatbuffer, accuracy and latency from running it in its runtime."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FileStats", "accuracy_of", "gzip_size", "tflite_stats"]


@dataclass(frozen=True)
class FileStats:
    """What a .tflite file holds: multiply-accumulates of one inference and the fraction of zero
    weights among its conv/dense kernels (as stored: int8, fp16 or fp32)."""

    macs: int
    sparsity: float
    weights: int


def gzip_size(*blobs: bytes) -> int:
    """Bytes after gzip -9 (what a sparse file really costs to ship)."""
    return len(gzip.compress(b"".join(blobs), compresslevel=9, mtime=0))


_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16}


def tflite_stats(data: bytes) -> FileStats:
    """MACs and kernel sparsity of a .tflite flatbuffer (batch 1), read from its tensors."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    producer = {out: op for op in graph.operators for out in op.outputs}
    macs = zeros = total = 0
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if name not in _WEIGHTED:
            continue
        out_shape = [int(d) for d in graph.tensors[op.outputs[0]].shape]
        out_elems = int(np.prod(out_shape[1:])) if out_shape else 0
        weight_index = op.inputs[2 if name == "TRANSPOSE_CONV" else 1]
        w_shape = [int(d) for d in graph.tensors[weight_index].shape]
        if name == "CONV_2D":  # filter [out, kh, kw, in]
            macs += out_elems * int(np.prod(w_shape[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out]
            macs += out_elems * w_shape[1] * w_shape[2]
        elif name == "FULLY_CONNECTED":  # filter [out, in]
            macs += out_elems * w_shape[1]
        else:
            macs += int(np.prod(graph.tensors[op.inputs[0]].shape)) * int(np.prod(w_shape[1:3])) * w_shape[0]
        values = _constant(model, graph, weight_index, producer, op_names)
        if values is not None:
            zeros += int(np.count_nonzero(values == 0))
            total += int(values.size)
    return FileStats(macs=int(macs), sparsity=zeros / total if total else 0.0, weights=total)


def _constant(model: Any, graph: Any, index: int, producer: dict[int, Any], op_names: dict[int, str]) -> Any:
    """The stored values of a weight tensor, following a DEQUANTIZE (fp16 weights) to its source."""
    for _ in range(2):
        tensor = graph.tensors[index]
        buffer = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
        if buffer is not None and len(buffer):
            dtype = _NUMPY.get(tensor.type)
            return (
                None if dtype is None else np.frombuffer(np.asarray(buffer, np.uint8).tobytes(), dtype=dtype)
            )
        op = producer.get(index)
        if op is None:
            return None
        code = model.operatorCodes[op.opcodeIndex]
        if op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) != "DEQUANTIZE":
            return None
        index = op.inputs[0]
    return None


def accuracy_of(predict: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of ``predict(x)`` (probabilities) and the predicted classes."""
    classes = np.argmax(np.asarray(predict(x)), axis=1)
    return float(np.mean(classes == y)), classes
