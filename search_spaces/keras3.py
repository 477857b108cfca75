"""Keras 3 models translated to tf_keras, which the pipeline needs (TensorFlow Model
Optimization's pruning, clustering and QAT work only on tf_keras models).

Each layer is rebuilt from its config as the tf_keras layer of the same class, the graph is
re-run through those layers, the weights are copied, and both models are run on the same inputs:
the translation is accepted only when every output agrees within ``ATOL + RTOL * |keras 3|``.
Layers that cannot be translated (no tf_keras class of that name, an option tf_keras lacks,
weights of another shape, raw ``keras.ops`` nodes) are named in one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import TrialFailedError
from .user_code import build_on_input

__all__ = ["ATOL", "RTOL", "is_keras3", "to_tf_keras"]

ATOL = 1e-5
RTOL = 1e-4
# Keras 3 options with no tf_keras counterpart that are harmless at these values.
_DROPPABLE = {
    "lora_rank": (None, 0),
    "lora_alpha": (None,),
    "quantization_config": (None,),
    "synchronized": (False,),
}

# Options a tf_keras layer may lack, at the value that layer then has anyway (the preprocessing
# layers work channels-last without a data_format option).
_DEFAULT_WITHOUT_OPTION = {"data_format": "channels_last"}


def is_keras3(model: Any) -> bool:
    return any(c.__module__.split(".")[0] == "keras" for c in type(model).__mro__)


def _clean(value: Any) -> Any:
    """Keras 3 serialisations ({module, class_name, config, registered_name}) as tf_keras reads them."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            if value["class_name"] in ("DTypePolicy", "FloatDTypePolicy"):
                return value["config"]["name"]
            # Keras 3 adds options (initializers' input_axes, ...) that tf_keras lacks; at None
            # they mean the default.
            inner = {k: v for k, v in _clean(value["config"]).items() if v is not None}
            return {"class_name": value["class_name"], "config": inner}
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _copy_weights(layer: Any, twin: Any, problems: list[str]) -> None:
    """Copy ``layer``'s weights into its tf_keras ``twin`` (a nested Sequential layer by layer:
    the two libraries list a model's weights in different orders)."""
    if type(layer).__name__ == "Sequential":
        for sub, sub_twin in zip(layer.layers, twin.layers, strict=True):
            _copy_weights(sub, sub_twin, problems)
        return
    weights = [np.asarray(w) for w in layer.get_weights()]
    target = twin.get_weights()
    if [w.shape for w in weights] != [w.shape for w in target]:
        problems.append(
            f"{layer.name} ({type(layer).__name__}: weights {[w.shape for w in weights]} vs tf_keras "
            f"{[w.shape for w in target]})"
        )
        return
    twin.set_weights(weights)


def _translate_layer(layer: Any, k: Any) -> tuple[Any | None, str | None]:
    """The tf_keras twin of one Keras 3 layer, or the reason there is none. A nested
    ``Sequential`` (Keras's documented data-augmentation block) becomes a tf_keras Sequential of
    its layers' twins."""
    cls = type(layer).__name__
    if cls == "Sequential":
        twins, problems = [], []
        for sub in layer.layers:
            twin, why = _translate_layer(sub, k)
            if twin is None:
                problems.append(str(why))
            twins.append(twin)
        if problems:
            return None, "; ".join(problems)
        return k.Sequential(twins, name=layer.name), None
    target = getattr(k.layers, cls, None)
    if target is None or not isinstance(target, type):
        return None, f"{layer.name} ({cls}: no tf_keras layer of that name)"
    try:
        cfg = _clean(layer.get_config())
    except Exception as e:
        return None, f"{layer.name} ({cls}: no config: {type(e).__name__})"
    cfg.pop("build_config", None)
    for key, ok in _DROPPABLE.items():
        if key in cfg and cfg[key] in ok:
            cfg.pop(key)
    while True:
        try:
            return target.from_config(cfg), None
        except (TypeError, ValueError) as e:
            # tf_keras says "unexpected keyword argument 'x'" or "Keyword argument not understood: 'x'"
            m = re.search(r"unexpected keyword argument '(\w+)'|not understood:',? '(\w+)'", str(e))
            key = (m.group(1) or m.group(2)) if m else None
            if key is None or key not in cfg:
                return None, f"{layer.name} ({cls}: {str(e).splitlines()[0][:80]})"
            if cfg[key] not in (None, False, {}, []) and cfg[key] != _DEFAULT_WITHOUT_OPTION.get(key):
                return None, f"{layer.name} ({cls}: option {key}={cfg[key]!r} has no tf_keras equivalent)"
            cfg.pop(key)
        except Exception as e:
            return (
                None,
                f"{layer.name} ({cls}: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})",
            )


def to_tf_keras(
    model: Any, input_shape: Sequence[int], where: str = "model", check: np.ndarray | None = None
) -> Any:
    """The tf_keras model computing what the Keras 3 ``model`` computes, weights included.

    ``check`` holds inputs both models are run on (default: 16 seeded uniform samples in [0, 1));
    any output apart by more than ``ATOL + RTOL * |expected|`` is an error."""
    import keras

    from .backend import keras as tf_keras

    k = tf_keras()
    shape = tuple(int(d) for d in input_shape)
    if not model.built or not getattr(model, "inputs", None):
        build_on_input(
            model,
            shape,
            lambda: f"{where}: the Keras 3 model does not build on the input shape",
            lambda e: str(e).splitlines()[0][:160] if str(e) else "",
        )
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_run_through_graph") or not getattr(graph, "inputs", None):
        raise TrialFailedError(
            f"{where}: expected a Keras 3 Sequential or functional model, got a subclassed {type(model).__name__} "
            "(its call() cannot be translated to tf_keras)."
        )
    if len(graph.inputs) != 1:
        raise TrialFailedError(f"{where}: expected a Keras 3 model with one input, got {len(graph.inputs)}.")
    twins: dict[int, Any] = {}
    problems: list[str] = []
    for node_op in _operations(graph):
        if isinstance(node_op, keras.layers.InputLayer):
            continue
        if not isinstance(node_op, keras.layers.Layer):
            problems.append(
                f"{getattr(node_op, 'name', '?')} ({type(node_op).__name__}: a keras.ops operation)"
            )
            continue
        twin, why = _translate_layer(node_op, k)
        if twin is None:
            problems.append(str(why))
        else:
            twins[id(node_op)] = twin
    if problems:
        raise TrialFailedError(
            f"{where}: Keras 3 layers with no tf_keras translation: {'; '.join(problems)}."
        )
    in_shape = tuple(int(d) if d is not None else None for d in graph.inputs[0].shape[1:])
    inputs = k.Input(shape=in_shape, name=graph.inputs[0].name if graph.inputs[0].name else None)
    try:
        outputs = graph._run_through_graph(inputs, operation_fn=lambda op: twins[id(op)])
        out = k.Model(inputs, outputs, name=model.name)
    except Exception as e:
        raise TrialFailedError(
            f"{where}: rebuilding the Keras 3 graph in tf_keras failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''}"
        ) from None
    for layer in _operations(graph):
        twin = twins.get(id(layer))
        if twin is not None:
            _copy_weights(layer, twin, problems)
    if problems:
        raise TrialFailedError(
            f"{where}: Keras 3 layers with no tf_keras translation: {'; '.join(problems)}."
        )
    x = check if check is not None else np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    expected = np.asarray(model(x, training=False))
    got = np.asarray(out(x, training=False))
    bad = np.abs(got - expected) > ATOL + RTOL * np.abs(expected)
    if expected.shape != got.shape or bad.any():
        diff = float(np.max(np.abs(got - expected))) if expected.shape == got.shape else float("nan")
        raise TrialFailedError(
            f"{where}: the tf_keras translation of the Keras 3 model differs from it (max |diff| {diff:.3g}, "
            f"tolerance {ATOL:g} + {RTOL:g}*|output|)."
        )
    return out


def _operations(graph: Any) -> list[Any]:
    ops = getattr(graph, "operations", None)
    return list(ops if ops is not None else graph.layers)
