"""What a Keras model's layers cost: its priced blocks and weight counts, read from the layers'
configurations and shapes.

Pricing a keras-tuner candidate has to call the user's ``build(hp)``; building the returned
model's weights and translating it to tf_keras on top of that took about 70 ms per candidate, so
a search's pool of thousands of candidates took minutes to screen. ``read_unbuilt`` reads the
same blocks and counts from an unbuilt ``Sequential`` by shape inference, and from an already
built model by its layers' weights, without building anything: about 6 ms per candidate, the
``build(hp)`` call itself. It returns None for what it cannot read exactly (a nested model, a
layer whose weights it does not know, channels-first data); the caller then builds the model and
reads it with ``read_built``. Both paths give the same blocks and counts
(``tests/test_keras_tuner_patterns.py`` checks them against each other).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ._base import Block, SizeTerms

__all__ = ["PRICED_LAYERS", "price", "read_built", "read_unbuilt"]

PRICED_LAYERS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
# Layers that hold no weights (Keras 2 and 3 class names).
_NO_WEIGHTS = frozenset(
    {
        "Flatten", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
        "AlphaDropout", "Activation", "ReLU", "Softmax", "LeakyReLU", "ELU", "MaxPooling2D",
        "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "MaxPooling1D",
        "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Reshape", "Permute",
        "Rescaling", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Identity", "InputLayer",
        "ActivityRegularization",
    }
)  # fmt: skip

Shape = tuple[int | None, ...]
Row = tuple[str, Shape, dict[str, Any]]  # (layer class name, input shape without batch, config)


def price(rows: Iterable[Row], weight_shapes: Iterable[Sequence[int]]) -> tuple[list[Block], SizeTerms]:
    """One block per priced layer with its input shape, and the size terms of all weights
    (matrices and kernels count as weights, vectors as per-channel values, each array a tensor)."""
    blocks = []
    for kind, in_shape, cfg in rows:
        if kind not in PRICED_LAYERS:
            continue
        shape = tuple(int(d or 1) for d in in_shape)
        h, w, c = shape if len(shape) == 3 else (1, 1, shape[-1] if shape else 1)
        out_c = int(cfg.get("filters") or cfg.get("units") or c)
        kernel = int((cfg.get("kernel_size") or (1,))[0])
        stride = int((cfg.get("strides") or (1,))[0])
        act = str(cfg.get("activation", "linear"))
        extra = f"pad{cfg['padding']}" if "padding" in cfg else ""
        blocks.append(Block(kind.lower(), h, w, c, out_c, kernel, stride, act=act, extra=extra))
    weights = channels = tensors = 0
    for shape in weight_shapes:
        size = 1
        for d in shape:
            size *= int(d)
        tensors += 1
        if len(shape) == 1:
            channels += size
        else:
            weights += size
    return blocks, SizeTerms(weights, channels, tensors)


def read_built(model: Any) -> tuple[list[Block], SizeTerms]:
    """The blocks and size terms of a built (tf_keras) model."""
    rows = [
        (
            type(layer).__name__,
            tuple(layer.input_shape[1:]) if hasattr(layer, "input_shape") else (),
            layer.get_config(),
        )
        for layer in model.layers
        if type(layer).__name__ in PRICED_LAYERS
    ]
    return price(rows, (w.shape for layer in model.layers for w in layer.get_weights()))


def read_unbuilt(
    model: Any, input_shape: Sequence[int], num_classes: int
) -> tuple[list[Block], SizeTerms] | None:
    """The blocks and size terms of the model ``build(hp)`` returned (Keras 2 or 3), without
    building it; None when it cannot be read exactly (the caller builds it), or when it does not
    take ``input_shape`` or give ``num_classes`` outputs (building it says what is wrong)."""
    try:
        got = _read(model, tuple(int(d) for d in input_shape))
    except Exception:  # noqa: BLE001 - anything unusual is read the slow, exact way
        return None
    if got is None:
        return None
    rows, shapes, out = got
    if not out or out[-1] != num_classes:
        return None
    return price(rows, shapes)


def _read(model: Any, shape: tuple[int, ...]) -> tuple[list[Row], list[Shape], Shape] | None:
    layers = list(model.layers)
    if any(hasattr(layer, "layers") for layer in layers):
        return None  # a nested model
    if getattr(model, "built", False) and getattr(model, "inputs", None):
        if len(model.inputs) != 1 or _dims(model.inputs[0].shape)[1:] != shape:
            return None
        rows = []
        for layer in layers:
            if type(layer).__name__ in PRICED_LAYERS:
                rows.append((type(layer).__name__, _dims(_input_of(layer).shape)[1:], layer.get_config()))
        shapes = [_dims(w.shape) for layer in layers for w in layer.weights]
        outputs = model.outputs
        return (rows, shapes, _dims(outputs[0].shape)) if len(outputs) == 1 else None
    if type(model).__name__ != "Sequential":
        return None
    current: Shape = (None, *shape)
    rows, shapes = [], []
    for layer in layers:
        kind, cfg = type(layer).__name__, layer.get_config()
        if cfg.get("data_format") == "channels_first":
            return None
        own = _weight_shapes(kind, cfg, current[1:])
        if own is None:
            return None
        rows.append((kind, current[1:], cfg))
        shapes += own
        current = _dims(layer.compute_output_shape(current))
    return rows, shapes, current


def _input_of(layer: Any) -> Any:
    inputs = layer.input
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            raise ValueError(f"{layer.name}: several inputs")
        inputs = inputs[0]
    return inputs


def _dims(shape: Any) -> Shape:
    if hasattr(shape, "as_list"):
        shape = shape.as_list()
    return tuple(None if d is None else int(d) for d in shape)


def _weight_shapes(kind: str, cfg: dict[str, Any], in_shape: Shape) -> list[Shape] | None:
    """The shapes of the weights ``kind`` creates on ``in_shape`` (None: not known here)."""
    if kind in _NO_WEIGHTS:
        return []
    if not in_shape or in_shape[-1] is None:
        return None
    c = int(in_shape[-1])
    bias = bool(cfg.get("use_bias", True))
    if kind == "Dense":
        units = int(cfg["units"])
        return [(c, units)] + ([(units,)] if bias else [])
    if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        kh, kw = (int(k) for k in cfg["kernel_size"])
        if kind == "Conv2D":
            filters, groups = int(cfg["filters"]), int(cfg.get("groups") or 1)
            return [(kh, kw, c // groups, filters)] + ([(filters,)] if bias else [])
        mult = int(cfg.get("depth_multiplier") or 1)
        if kind == "DepthwiseConv2D":
            return [(kh, kw, c, mult)] + ([(c * mult,)] if bias else [])
        filters = int(cfg["filters"])
        return [(kh, kw, c, mult), (1, 1, c * mult, filters)] + ([(filters,)] if bias else [])
    if kind in ("BatchNormalization", "LayerNormalization"):
        axis = cfg.get("axis", -1)
        if axis not in (-1, [-1], len(in_shape), [len(in_shape)]):
            return None
        n = int(bool(cfg.get("center", True))) + int(bool(cfg.get("scale", True)))
        return [(c,)] * (n + (2 if kind == "BatchNormalization" else 0))
    return None
