"""Pruning stages: unstructured magnitude pruning on a tfmot schedule, and structured channel
pruning that removes whole filters so the dense model itself gets smaller and faster."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._base import (
    CompressData,
    Stage,
    StageError,
    check_count,
    check_fraction,
    check_non_negative,
)
from .graph import ChannelGroup, channel_groups, model_nodes, rebuild
from .training import Trainer, recalibrate_batchnorm

__all__ = ["MagnitudePrune", "StructuredPrune", "copy_model", "weight_sparsity"]


def copy_model(model: Any, stage: str) -> Any:
    """A deep copy (same graph, copied weights) so a stage never trains the caller's model."""
    return rebuild(model, lambda layer: None, stage)


def weight_sparsity(model: Any) -> float:
    """Fraction of zeros among the kernels (weights of rank >= 2) of a Keras model."""
    zeros = total = 0
    for w in model.get_weights():
        if w.ndim >= 2:
            zeros += int(np.count_nonzero(w == 0))
            total += int(w.size)
    return zeros / total if total else 0.0


@dataclass(frozen=True)
class MagnitudePrune(Stage):
    """Zero the smallest-magnitude weights of every Conv2D/Dense kernel (``min_weights`` or more),
    raising sparsity from 0 to ``sparsity`` in ``rounds`` steps of a polynomial tfmot schedule
    while fine-tuning (prune, fine-tune, repeat), then strip the wrappers."""

    name: ClassVar[str] = "prune"
    main_arg: ClassVar[str | None] = "sparsity"

    sparsity: float = 0.5
    epochs: int = 2
    rounds: int = 4
    min_weights: int = 512
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)
    rules: ClassVar = {
        "sparsity": check_fraction,
        "min_weights": check_non_negative,
        "epochs": check_count,
        "rounds": check_count,
    }

    def apply(self, model: Any, data: CompressData) -> Any:
        from search_spaces.backend import keras

        k = keras()
        import tensorflow_model_optimization as tfmot

        steps = max(1, math.ceil(len(data.x_train) / self.trainer.batch_size)) * self.epochs
        # The last pruning event lands at ~70% of training so the final sparsity gets fine-tuned.
        frequency = max(1, int(0.7 * steps) // self.rounds)
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0,
            final_sparsity=self.sparsity,
            begin_step=0,
            end_step=frequency * self.rounds,
            frequency=frequency,
        )
        pruned_layers: list[str] = []

        def wrap(layer: Any) -> Any:
            if isinstance(layer, (k.layers.Conv2D, k.layers.Dense)) and not isinstance(
                layer, k.layers.DepthwiseConv2D
            ):
                if int(np.prod(layer.kernel.shape)) >= self.min_weights:
                    pruned_layers.append(layer.name)
                    return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
            return layer

        work = copy_model(model, self.name)
        try:
            wrapped = k.models.clone_model(work, clone_function=wrap)
        except (ValueError, RuntimeError) as e:
            raise StageError(f"stage {self.name}: tfmot cannot wrap this model: {e}") from None
        if not pruned_layers:
            raise StageError(
                f"stage {self.name}: no Conv2D/Dense layer has >= {self.min_weights} weights to prune."
            )
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        self.trainer.fit(wrapped, data, self.epochs, self.name, callbacks=callbacks, recalibrate=False)
        # strip_pruning reuses the layer objects; a copy gives the next stage a graph of its own.
        stripped = copy_model(tfmot.sparsity.keras.strip_pruning(wrapped), self.name)
        recalibrate_batchnorm(stripped, data.x_train, self.trainer.batch_size)
        return stripped


@dataclass(frozen=True)
class StructuredPrune(Stage):
    """Remove ``ratio`` of the channels of every prunable channel group (the expansion channels of
    inverted residuals, head channels, ...), least important first, where a channel's
    importance is the L1 norm of its BatchNorm-folded filters. ``rounds`` > 1 prunes in steps,
    fine-tuning after each. The result is a smaller dense model: fewer filters, fewer MACs."""

    name: ClassVar[str] = "structured"
    main_arg: ClassVar[str | None] = "ratio"

    ratio: float = 0.3
    epochs: int = 2
    rounds: int = 1
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)
    rules: ClassVar = {"ratio": check_fraction, "epochs": check_count, "rounds": check_count}

    def apply(self, model: Any, data: CompressData) -> Any:
        current = model
        epochs_per_round = max(1, self.epochs // self.rounds)
        for r in range(1, self.rounds + 1):
            # Keep (1 - ratio) ** (r / rounds) of the original channels after round r.
            keep_total = (1.0 - self.ratio) ** (r / self.rounds)
            keep_prev = (1.0 - self.ratio) ** ((r - 1) / self.rounds)
            current = prune_channels(current, 1.0 - keep_total / keep_prev, self.name)
            recalibrate_batchnorm(current, data.x_train, self.trainer.batch_size)
            self.trainer.fit(current, data, epochs_per_round, self.name)
        return current


def _importance(model: Any, group: ChannelGroup) -> np.ndarray:
    layers = {layer.name: layer for layer in model.layers}
    score = np.zeros(group.size)
    for name in group.producers:
        layer = layers[name]
        kernel = layer.get_weights()[0]
        l1 = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        nxt = [
            n.layer
            for n in layer._outbound_nodes
            if n.layer.name in layers and layers[n.layer.name] is n.layer
        ]
        if len(nxt) == 1 and type(nxt[0]).__name__ == "BatchNormalization" and nxt[0].scale:
            bn = nxt[0]
            gamma, var = bn.gamma.numpy(), bn.moving_variance.numpy()
            l1 = l1 * np.abs(gamma) / np.sqrt(var + bn.epsilon)
        score += l1 / (l1.max() + 1e-12)
    return score


def prune_channels(model: Any, ratio: float, stage: str) -> Any:
    """Rebuild ``model`` without the ``ratio`` least important channels of each prunable group."""
    groups = [g for g in channel_groups(model, stage) if g.prunable and g.size > 1]
    if not groups:
        raise StageError(f"stage {stage}: the model has no channel group that can be pruned.")
    keep_of: dict[str, np.ndarray] = {}  # layer name -> kept output channels
    for group in groups:
        n_keep = max(1, int(round(group.size * (1.0 - ratio))))
        if n_keep >= group.size:
            continue
        keep = np.sort(np.argsort(-_importance(model, group), kind="stable")[:n_keep])
        for name in (*group.producers, *group.members):
            keep_of[name] = keep
    if not keep_of:
        raise StageError(f"stage {stage}: ratio {ratio:g} removes no channel from any group.")
    source_of = {
        node.layer.name: [t.node.layer.name for t in _flatten(node.keras_inputs)]
        for node in model_nodes(model)
    }

    def replace(layer: Any) -> list[tuple[Any, list[np.ndarray]]] | None:
        kind = type(layer).__name__
        out_keep = keep_of.get(layer.name)
        srcs = source_of.get(layer.name, [])
        in_keep = keep_of.get(srcs[0]) if len(srcs) == 1 else None
        if out_keep is None and in_keep is None:
            return None
        config = layer.get_config()
        weights = layer.get_weights()
        if kind == "Conv2D":
            kernel = weights[0]
            if in_keep is not None:
                kernel = kernel[:, :, in_keep, :]
            if out_keep is not None:
                kernel = kernel[..., out_keep]
                config["filters"] = len(out_keep)
            weights = [kernel] + [b[out_keep] if out_keep is not None else b for b in weights[1:]]
        elif kind == "Dense":
            kernel = weights[0]
            if in_keep is not None:
                kernel = kernel[in_keep, :]
            if out_keep is not None:
                kernel = kernel[:, out_keep]
                config["units"] = len(out_keep)
            weights = [kernel] + [b[out_keep] if out_keep is not None else b for b in weights[1:]]
        elif kind == "DepthwiseConv2D":
            weights = [weights[0][:, :, out_keep, :]] + [b[out_keep] for b in weights[1:]]
        elif out_keep is not None:
            # Channel-wise layers (BatchNorm, PReLU, ...): their per-channel vectors shrink.
            weights = [
                w[..., out_keep] if w.shape and w.shape[-1] == len(_full(layer)) else w for w in weights
            ]
        else:
            return None
        return [(layer.__class__.from_config(config), weights)]

    return rebuild(model, replace, stage)


def _flatten(x: Any) -> list[Any]:
    from search_spaces.backend import tf

    return tf().nest.flatten(x)


def _full(layer: Any) -> range:
    return range(int(layer.output_shape[-1]) if not isinstance(layer.output_shape, list) else 0)
