"""Weights that look trained, for files that must match a trained model's layout.

An untrained network's BatchNorm layers fold into all-zero biases, which the TFLite converter
merges into shared constants with short names; a trained network keeps one bias tensor per
layer with its long fused name. Sizes measured on untrained models would then be a few percent
too small, so size calibration and exact-size checks use these weights instead.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["like_trained", "randomize_like_trained"]


def randomize_like_trained(model: Any, seed: int = 0) -> Any:
    """Give every BatchNorm non-trivial statistics and every bias a non-zero value (in place)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        name = type(layer).__name__
        weights = layer.get_weights()
        if not weights:
            continue
        if name == "BatchNormalization":
            gamma, beta, mean, var = weights
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(gamma.dtype),
                    rng.normal(0.0, 0.1, beta.shape).astype(beta.dtype),
                    rng.normal(0.0, 0.1, mean.shape).astype(mean.dtype),
                    rng.uniform(0.5, 1.5, var.shape).astype(var.dtype),
                ]
            )
        elif len(weights) == 2 and weights[1].ndim == 1:
            layer.set_weights([weights[0], rng.normal(0.0, 0.05, weights[1].shape).astype(weights[1].dtype)])
    return model


# Seeds of the next sets of weights when a file made from one set is refused by a runtime.
RESEED_STRIDE = 1000


def like_trained(space: Any, arch: Hashable, task: Any, seed: int = 0) -> Callable[[int], Any]:
    """A maker of ``arch``'s network with weights that look trained: ``make(attempt)`` builds it
    afresh (Keras session cleared) with the weights of seed ``seed + 1000 * attempt``, so a file a
    runtime refuses can be made again from other weights (``latency_models.profile.convert_runnable``)."""

    def make(attempt: int) -> Any:
        from .backend import keras

        keras().backend.clear_session()
        return randomize_like_trained(space.build(arch, task), seed=seed + RESEED_STRIDE * attempt)

    return make
