"""Rebuilding a functional tf_keras model with some layers changed or replaced by a chain, and the
channel groups that structured pruning must cut together (tensors joined by Add, Multiply, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import StageError

__all__ = ["ChannelGroup", "Replacement", "channel_groups", "rebuild"]

#: a replacement for one layer: new layers applied in a chain, and their weights
Replacement = list[tuple[Any, list[np.ndarray]]]


def _functional(model: Any, stage: str) -> None:
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "_is_graph_network", False):
        raise StageError(
            f"stage {stage}: model {model.name!r} is not a functional or sequential tf_keras model "
            f"(subclassed models cannot be rebuilt)."
        )


def rebuild(model: Any, replace: Callable[[Any], Replacement | None], stage: str) -> Any:
    """A new model with the same graph, where ``replace(layer)`` may swap a layer for a chain of
    new layers (with their weights); other layers are copied with their weights. The original
    model is not changed and shares no variables with the result."""
    from search_spaces.backend import keras

    k = keras()
    _functional(model, stage)
    tensors: dict[int, Any] = {}
    new_inputs = []
    for inp in model.inputs:
        layer = inp.node.layer
        new = k.Input(batch_shape=layer.get_config()["batch_input_shape"], dtype=inp.dtype, name=layer.name)
        tensors[id(inp)] = new
        new_inputs.append(new)
    pending_weights: list[tuple[Any, list[np.ndarray]]] = []
    uses: dict[int, int] = {}
    for node in model_nodes(model):
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if node.is_input:
                continue
            if uses[id(layer)] > 1:
                raise StageError(
                    f"stage {stage}: layer {layer.name!r} is shared by several calls; cannot rebuild it."
                )
            args, kwargs = _map_tensors((node.call_args, node.call_kwargs), tensors, layer.name, stage)
            chain = replace(layer)
            if chain is None:
                chain = [(layer.__class__.from_config(layer.get_config()), layer.get_weights())]
            out = None
            for i, (new_layer, weights) in enumerate(chain):
                out = new_layer(*args, **kwargs) if i == 0 else new_layer(out)
                pending_weights.append((new_layer, weights))
            for old_t, new_t in zip(_flatten(node.outputs), _flatten(out), strict=True):
                tensors[id(old_t)] = new_t
    outputs = [tensors[id(t)] for t in model.outputs]
    new_model = k.Model(new_inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    for new_layer, weights in pending_weights:
        try:
            new_layer.set_weights(weights)
        except ValueError as e:
            raise StageError(f"stage {stage}: layer {new_layer.name!r}: weights do not fit ({e}).") from None
    return new_model


def model_nodes(model: Any) -> list[Any]:
    """The call nodes of ``model``'s own graph (a layer reused by another model has more)."""
    return [
        node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]
    ]


def _flatten(x: Any) -> list[Any]:
    from search_spaces.backend import tf

    return tf().nest.flatten(x)


def _map_tensors(structure: Any, tensors: dict[int, Any], layer: str, stage: str) -> Any:
    from search_spaces.backend import tf

    def swap(x: Any) -> Any:
        if hasattr(x, "node") and hasattr(x, "shape") and type(x).__name__.endswith("KerasTensor"):
            if id(x) not in tensors:
                raise StageError(f"stage {stage}: layer {layer!r} reads a tensor from outside the model.")
            return tensors[id(x)]
        return x

    return tf().nest.map_structure(swap, structure)


@dataclass
class ChannelGroup:
    """Channels that must be cut together: the output channels of ``producers`` (Conv2D/Dense)
    flow through channel-wise layers (``members``) into the input channels of ``consumers``."""

    size: int
    producers: list[str]
    members: list[str]
    consumers: list[str]
    prunable: bool = True
    why: str = ""


# Layers whose output channel i depends only on input channel i.
_CHANNELWISE = {
    "BatchNormalization",
    "ReLU",
    "Activation",
    "DepthwiseConv2D",
    "Dropout",
    "GlobalAveragePooling2D",
    "MaxPooling2D",
    "AveragePooling2D",
    "ZeroPadding2D",
    "LeakyReLU",
    "PReLU",
    "Multiply",
    "Add",
}


def channel_groups(model: Any, stage: str) -> list[ChannelGroup]:
    """Union the channel axes of the graph's tensors into groups that can be pruned.

    A group is prunable when every tensor in it is produced by a Conv2D/Dense or a channel-wise
    layer, is read only by such layers, and it touches neither the model's inputs or outputs nor
    a residual ``Add`` (residual channels tie whole stages together and cost accuracy to cut).
    """
    _functional(model, stage)
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    layer_inputs: dict[str, list[str]] = {}
    for node in model_nodes(model):
        if node.layer.name in layer_inputs:
            raise StageError(
                f"stage {stage}: layer {node.layer.name!r} is shared by several calls; cannot prune it."
            )
        layer_inputs[node.layer.name] = [t.node.layer.name for t in _flatten(node.keras_inputs)]
    barriers: dict[str, str] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        name = layer.name
        find(name)  # every layer's output is a node
        if kind in ("Conv2D", "Dense"):
            continue  # a new channel axis starts here; its input is a consumer edge
        if kind == "DepthwiseConv2D" and layer.depth_multiplier != 1:
            barriers[name] = "depthwise with depth multiplier > 1"
        elif kind == "InputLayer":
            barriers[name] = "model input"
        elif kind == "Add":
            barriers[name] = "residual add"
        elif kind not in _CHANNELWISE:
            barriers[name] = f"{kind} layer {name!r}"
        for src in layer_inputs[name]:
            union(src, name)
    for out in model.outputs:
        barriers[out.node.layer.name] = "model output"
    layers = {layer.name: layer for layer in model.layers}
    groups: dict[str, ChannelGroup] = {}
    for layer in model.layers:
        root = find(layer.name)
        kind = type(layer).__name__
        size = int(layer.output_shape[-1]) if not isinstance(layer.output_shape, list) else 0
        group = groups.setdefault(root, ChannelGroup(size, [], [], []))
        if kind in ("Conv2D", "Dense"):
            group.producers.append(layer.name)
            if kind == "Conv2D" and layer.groups != 1:
                group.prunable, group.why = False, f"grouped conv {layer.name!r}"
        else:
            group.members.append(layer.name)
        if layer.name in barriers:
            group.prunable, group.why = False, barriers[layer.name]
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "Dense"):
            for src in layer_inputs[layer.name]:
                groups[find(src)].consumers.append(layer.name)
                if kind == "Dense" and len(layers[src].output_shape) != 2:
                    group = groups[find(src)]
                    group.prunable, group.why = False, f"Dense {layer.name!r} on a non-flat input"
    out = []
    for group in groups.values():
        if group.prunable and not group.producers:
            group.prunable, group.why = False, "no Conv2D/Dense produces it"
        out.append(group)
    return out
