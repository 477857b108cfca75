"""ONNX -> PyTorch for the graphs tf2onnx writes for our spaces: an ``nn.Module`` that runs the
ONNX nodes in order with torch ops, so ``torch.export`` can trace it for ExecuTorch.

Why not onnx2tf or onnx2torch: onnx2tf's PyTorch output (2.x) needs Python >= 3.12, and
onnx2torch imports torchvision, whose PyPI wheels need a CUDA build of torch. The op set our
spaces produce is small (convolutions, pooling, activations, dense layers and the shape
arithmetic of a flatten); a node outside it is named, with its Keras layer, in the error.

Shape arithmetic (``Shape``, ``Gather``, ``Slice``, ``Concat``, ``Cast`` on shapes) runs in numpy
while tracing: shapes are static (batch 1), so those values are constants of the exported program.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces import InputError

from . import ConversionError

__all__ = ["SUPPORTED_OPS", "describe", "keras_layer", "onnx_to_torch"]


def keras_layer(node_name: str) -> str:
    """The Keras layer an ONNX node came from: tf2onnx names nodes ``model/<layer>/<TF op>``."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) >= 3:
        return parts[1]
    return parts[0] if parts else "?"


def describe(node: Any) -> str:
    return f"layer {keras_layer(node.name)!r} (ONNX node {node.name!r}, op {node.op_type})"


@dataclass(frozen=True)
class _Node:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_np(v: Any) -> bool:
    return isinstance(v, np.ndarray)


def _ints(v: Any) -> list[int]:
    return [int(i) for i in np.asarray(v).reshape(-1)]


def _torch() -> Any:
    import torch

    return torch


def _pads_2d(pads: Sequence[int]) -> tuple[int, int, int, int]:
    """ONNX ``[top, left, bottom, right]`` -> ``F.pad``'s ``(left, right, top, bottom)``."""
    top, left, bottom, right = (int(p) for p in pads)
    return (left, right, top, bottom)


def _auto_pads(x: Any, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """SAME_UPPER padding as ONNX defines it (extra pixel at the end)."""
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        begins.append(total // 2)
        ends.append(total - total // 2)
    return [*begins, *ends]


def _spatial_pads(n: _Node, x: Any, kernel: Sequence[int]) -> list[int]:
    strides = n.attrs.get("strides", [1] * len(kernel))
    dilations = n.attrs.get("dilations", [1] * len(kernel))
    auto = n.attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _auto_pads(x, kernel, strides, dilations)
        if auto == "SAME_LOWER":
            half = len(pads) // 2
            pads = [*pads[half:], *pads[:half]]
        return pads
    return list(n.attrs.get("pads", [0] * (2 * len(kernel))))


def _conv(n: _Node, x: Any, w: Any, b: Any = None) -> Any:
    F = _torch().nn.functional
    kernel = list(w.shape[2:])
    if len(kernel) != 2:
        raise NotImplementedError(f"{len(kernel)}-D convolution")
    pads = _spatial_pads(n, x, kernel)
    if pads[0] != pads[2] or pads[1] != pads[3]:
        x, pads = F.pad(x, _pads_2d(pads)), [0, 0, 0, 0]
    return F.conv2d(
        x,
        w,
        b,
        stride=tuple(n.attrs.get("strides", [1, 1])),
        padding=(pads[0], pads[1]),
        dilation=tuple(n.attrs.get("dilations", [1, 1])),
        groups=int(n.attrs.get("group", 1)),
    )


def _pool(n: _Node, x: Any, kind: str) -> Any:
    F = _torch().nn.functional
    kernel = list(n.attrs["kernel_shape"])
    pads = _spatial_pads(n, x, kernel)
    strides = tuple(n.attrs.get("strides", [1, 1]))
    if kind == "max":
        if pads[0] != pads[2] or pads[1] != pads[3]:
            x, pads = F.pad(x, _pads_2d(pads), value=float("-inf")), [0, 0, 0, 0]
        return F.max_pool2d(
            x, kernel, strides, (pads[0], pads[1]), ceil_mode=bool(n.attrs.get("ceil_mode", 0))
        )
    include = bool(n.attrs.get("count_include_pad", 0))
    if pads[0] != pads[2] or pads[1] != pads[3]:
        if include:
            x, pads = F.pad(x, _pads_2d(pads)), [0, 0, 0, 0]
        else:
            raise NotImplementedError("asymmetric padding of an average pool that excludes the padding")
    return F.avg_pool2d(
        x,
        kernel,
        strides,
        (pads[0], pads[1]),
        ceil_mode=bool(n.attrs.get("ceil_mode", 0)),
        count_include_pad=include,
    )


def _axes(n: _Node, args: Sequence[Any], index: int) -> list[int] | None:
    if "axes" in n.attrs:
        return [int(a) for a in n.attrs["axes"]]
    if len(args) > index and args[index] is not None:
        return _ints(args[index])
    return None


def _reduce_mean(n: _Node, x: Any, *rest: Any) -> Any:
    axes = _axes(n, rest, 0)
    keep = bool(n.attrs.get("keepdims", 1))
    if axes is None:
        axes = list(range(x.dim()))
    return x.mean(dim=tuple(axes), keepdim=keep)


def _clip(n: _Node, x: Any, lo: Any = None, hi: Any = None) -> Any:
    lo = float(np.asarray(lo)) if lo is not None else n.attrs.get("min")
    hi = float(np.asarray(hi)) if hi is not None else n.attrs.get("max")
    return _torch().clamp(x, min=lo, max=hi)


def _variadic(fn_np: Callable[..., Any], fn_t: Callable[..., Any]) -> Callable[..., Any]:
    def op(n: _Node, *args: Any) -> Any:
        if all(_is_np(a) for a in args):
            out = args[0]
            for a in args[1:]:
                out = fn_np(out, a)
            return out
        torch = _torch()
        vals = [torch.as_tensor(a) if _is_np(a) else a for a in args]
        out = vals[0]
        for v in vals[1:]:
            out = fn_t(out, v)
        return out

    return op


def _min_max(np_fn: Callable[..., Any], side: str) -> Callable[..., Any]:
    """Elementwise ``Min``/``Max``; a tensor against a scalar constant becomes a clamp (how relu6
    and hard-swish are written): quantizers and XNNPACK know clamps, not elementwise min/max."""
    torch_fn = "minimum" if side == "max" else "maximum"
    general = _variadic(np_fn, lambda a, b: getattr(_torch(), torch_fn)(a, b))

    def op(n: _Node, *args: Any) -> Any:
        tensors = [a for a in args if not _is_np(a)]
        scalars = [a for a in args if _is_np(a) and a.size == 1]
        if len(tensors) == 1 and len(scalars) == len(args) - 1 and scalars:
            value = float(np_fn.reduce([float(s.reshape(-1)[0]) for s in scalars]))
            return _torch().clamp(tensors[0], **{side: value})
        return general(n, *args)

    return op


def _binary(np_fn: Callable[..., Any], t_fn: Callable[..., Any]) -> Callable[..., Any]:
    return _variadic(np_fn, t_fn)


def _reshape(n: _Node, x: Any, shape: Any) -> Any:
    dims = _ints(shape)
    if not n.attrs.get("allowzero", 0):
        dims = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims) if not _is_np(x) else np.reshape(x, dims)


def _flatten(n: _Node, x: Any) -> Any:
    axis = int(n.attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod([int(d) for d in x.shape[:axis]])) if axis else 1
    return x.reshape(lead, -1)


def _gemm(n: _Node, a: Any, b: Any, c: Any = None) -> Any:
    if n.attrs.get("transA", 0):
        a = a.t()
    if n.attrs.get("transB", 0):
        b = b.t()
    out = float(n.attrs.get("alpha", 1.0)) * (a @ b)
    if c is not None:
        out = out + float(n.attrs.get("beta", 1.0)) * c
    return out


def _batch_norm(n: _Node, x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
    F = _torch().nn.functional
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(n.attrs.get("epsilon", 1e-5)))


def _softmax(n: _Node, x: Any) -> Any:
    return _torch().softmax(x, dim=int(n.attrs.get("axis", -1)))


def _transpose(n: _Node, x: Any) -> Any:
    perm = n.attrs.get("perm")
    perm = list(perm) if perm is not None else list(reversed(range(x.dim() if not _is_np(x) else x.ndim)))
    return np.transpose(x, perm) if _is_np(x) else x.permute(*perm)


def _shape(n: _Node, x: Any) -> np.ndarray:
    dims = [int(d) for d in x.shape]
    start, end = n.attrs.get("start", 0), n.attrs.get("end", len(dims))
    return np.asarray(dims[start:end], dtype=np.int64)


def _gather(n: _Node, data: Any, indices: Any) -> Any:
    axis = int(n.attrs.get("axis", 0))
    if _is_np(data):
        return np.take(data, np.asarray(indices).astype(np.int64), axis=axis)
    torch = _torch()
    idx = torch.as_tensor(np.asarray(indices).astype(np.int64))
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape([*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]])


def _slice(n: _Node, x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = _ints(starts), _ints(ends)
    ndim = x.ndim if _is_np(x) else x.dim()
    axes_l = _ints(axes) if axes is not None else list(range(len(starts)))
    steps_l = _ints(steps) if steps is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * ndim
    big = np.iinfo(np.int64).max
    for s, e, a, st in zip(starts, ends, axes_l, steps_l, strict=True):
        index[a] = slice(s, None if e >= big // 2 else e, st)
    return x[tuple(index)]


def _concat(n: _Node, *args: Any) -> Any:
    axis = int(n.attrs["axis"])
    if all(_is_np(a) for a in args):
        return np.concatenate(args, axis=axis)
    torch = _torch()
    return torch.cat([torch.as_tensor(a) if _is_np(a) else a for a in args], dim=axis)


def _cast(n: _Node, x: Any) -> Any:
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(int(n.attrs["to"]))
    if _is_np(x):
        return x.astype(dtype)
    if dtype == np.float32:
        return x.float()
    raise NotImplementedError(f"Cast of a tensor to {dtype}")


def _squeeze(n: _Node, x: Any, *rest: Any) -> Any:
    axes = _axes(n, rest, 0)
    if _is_np(x):
        return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
    if axes is None:
        return x.squeeze()
    for a in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(n: _Node, x: Any, *rest: Any) -> Any:
    axes = _axes(n, rest, 0) or []
    ndim = (x.ndim if _is_np(x) else x.dim()) + len(axes)
    for a in sorted(a + ndim if a < 0 else a for a in axes):
        x = np.expand_dims(x, a) if _is_np(x) else x.unsqueeze(a)
    return x


def _pad(n: _Node, x: Any, pads: Any = None, value: Any = None) -> Any:
    p = _ints(pads) if pads is not None else list(n.attrs["pads"])
    half = len(p) // 2
    if any(p[:2]) or any(p[half : half + 2]):
        raise NotImplementedError("padding of the batch or channel axis")
    mode = n.attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    torch_pads: list[int] = []
    for axis in reversed(range(2, half)):
        torch_pads += [p[axis], p[half + axis]]
    fill = float(np.asarray(value)) if value is not None else 0.0
    return _torch().nn.functional.pad(x, torch_pads, mode=mode, value=fill if mode == "constant" else None)


def _unary(name: str) -> Callable[..., Any]:
    def op(n: _Node, x: Any) -> Any:
        return getattr(_torch(), name)(x)

    return op


def _hard_sigmoid(n: _Node, x: Any) -> Any:
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    return _torch().clamp(alpha * x + beta, 0.0, 1.0)


def _leaky_relu(n: _Node, x: Any) -> Any:
    return _torch().nn.functional.leaky_relu(x, float(n.attrs.get("alpha", 0.01)))


OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv,
    "AveragePool": lambda n, x: _pool(n, x, "avg"),
    "MaxPool": lambda n, x: _pool(n, x, "max"),
    "GlobalAveragePool": lambda n, x: x.mean(dim=(2, 3), keepdim=True),
    "ReduceMean": _reduce_mean,
    "BatchNormalization": _batch_norm,
    "MatMul": lambda n, a, b: a @ b,
    "Gemm": _gemm,
    "Add": _binary(np.add, lambda a, b: a + b),
    "Sub": _binary(np.subtract, lambda a, b: a - b),
    "Mul": _binary(np.multiply, lambda a, b: a * b),
    "Div": _binary(np.divide, lambda a, b: a / b),
    "Min": _min_max(np.minimum, "max"),
    "Max": _min_max(np.maximum, "min"),
    "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "Exp": _unary("exp"),
    "Neg": lambda n, x: -x,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n, x: _torch().nn.functional.hardswish(x),
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Softmax": _softmax,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Cast": _cast,
    "Pad": _pad,
    "Identity": lambda n, x: x,
}

#: ONNX ops this converter maps to torch
SUPPORTED_OPS = tuple(sorted((*OPS, "Constant")))


def _module_base() -> type:
    return _torch().nn.Module


def onnx_to_torch(data: bytes, batch: int = 1) -> Any:
    """An ``nn.Module`` computing the ONNX model ``data`` (one float input, one output) for a
    fixed ``batch``; raises ``ConversionError`` naming the first layer whose op it cannot map."""
    import onnx
    from onnx import numpy_helper

    torch = _torch()
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise InputError(f"onnx -> pytorch: not an ONNX model ({type(e).__name__}).") from None
    graph = model.graph
    unsupported = [
        n for n in graph.node if n.op_type not in (*OPS, "Constant") or n.domain not in ("", "ai.onnx")
    ]
    if unsupported:
        raise ConversionError(
            f"step onnx -> pytorch: {describe(unsupported[0])} has no PyTorch mapping"
            + (f" (and {len(unsupported) - 1} more nodes)" if len(unsupported) > 1 else "")
            + "."
        )
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(
            f"onnx -> pytorch: expected one input and one output, got {len(inputs)} and {len(graph.output)}."
        )
    nodes = [_Node(n.name, n.op_type, tuple(n.input), tuple(n.output), _attrs(n)) for n in graph.node]
    for n in graph.node:  # Constant nodes become numpy values like initializers
        if n.op_type == "Constant":
            inits[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    nodes = [n for n in nodes if n.op_type != "Constant"]
    dims = [d.dim_value if d.dim_value > 0 else batch for d in inputs[0].type.tensor_type.shape.dim]
    input_name, output_name = inputs[0].name, graph.output[0].name

    class Module(_module_base()):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.input_shape = tuple(dims)
            self._names: dict[str, str] = {}
            self._consts: dict[str, np.ndarray] = {}
            for i, (name, value) in enumerate(inits.items()):
                # Scalars (clip bounds, epsilons) stay numpy: ops read them as Python numbers.
                if value.dtype.kind == "f" and value.size > 1:
                    key = f"w{i}"
                    self.register_buffer(key, torch.from_numpy(np.array(value, np.float32)))
                    self._names[name] = key
                else:
                    self._consts[name] = value

        def forward(self, x: Any) -> Any:
            env: dict[str, Any] = {input_name: x, **self._consts}
            env.update({name: getattr(self, key) for name, key in self._names.items()})
            for n in nodes:
                args = [env[i] if i else None for i in n.inputs]
                try:
                    out = OPS[n.op_type](n, *args)
                except NotImplementedError as e:
                    raise ConversionError(
                        f"step onnx -> pytorch: {describe(n)}: {e} is not supported."
                    ) from None
                env[n.outputs[0]] = out
            return env[output_name]

    return Module().eval()
