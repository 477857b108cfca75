"""Training one candidate on real data with tf_keras, evaluated in inference mode.

A NaN loss or an error while building or training raises ``TrialFailedError`` so the search
records the trial as failed and goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces import SearchSpace, TrialFailedError

from .config import TrainConfig
from .data import TaskData

__all__ = ["TrainResult", "train_model", "train_candidate"]


@dataclass(frozen=True)
class TrainResult:
    """Accuracy is measured on the validation split, in inference mode."""

    accuracy: float
    train_accuracy: float
    loss: float
    epochs: int
    seconds: float
    params: int


def train_model(model: Any, data: TaskData, config: TrainConfig, epochs: int, seed: int) -> TrainResult:
    """Compile and fit ``model`` on the task's training split; evaluate on validation."""
    from search_spaces.backend import keras, set_seed

    k = keras()
    set_seed(seed)
    x, y = data.x_train, data.y_train
    if config.max_train_samples and len(x) > config.max_train_samples:
        idx = np.random.default_rng(seed).permutation(len(x))[: config.max_train_samples]
        x, y = x[idx], y[idx]
    steps = max(1, math.ceil(len(x) / config.batch_size)) * epochs
    schedule = k.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.05)
    optimizer = (
        k.optimizers.Adam(schedule)
        if config.optimizer == "adam"
        else k.optimizers.SGD(schedule, momentum=0.9)
    )
    from_logits = False
    user = getattr(model, "edge_nas_compile", None)  # a keras-tuner build(hp) compiled its model
    if user is not None:
        optimizer = _user_optimizer(k, user) or optimizer
        from_logits = user.from_logits
    model.compile(
        optimizer=optimizer,
        loss=k.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    if data.scale == 1.0 and not data.augment:
        history = model.fit(
            x,
            y,
            batch_size=config.batch_size,
            epochs=epochs,
            verbose=0,
            shuffle=True,
            callbacks=[k.callbacks.TerminateOnNaN()],
        )
    else:  # uint8 images (converted one batch at a time) or augmented batches
        history = model.fit(
            batches(data, x, y, config.batch_size, seed, train=True),
            epochs=epochs,
            verbose=0,
            callbacks=[k.callbacks.TerminateOnNaN()],
        )
    losses = history.history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        raise TrialFailedError(f"training diverged (loss {losses[-1] if losses else 'missing'})")
    from compress.training import recalibrate_batchnorm

    recalibrate_batchnorm(
        model,
        data.inputs(x[:RECALIBRATION_SAMPLES]),
        batch_size=RECALIBRATION_CHUNK,
        max_batches=RECALIBRATION_SAMPLES // RECALIBRATION_CHUNK,
        shuffle_seed=None,  # the first samples, in order
    )
    if data.scale == 1.0:
        loss, accuracy = model.evaluate(data.x_val, data.y_val, batch_size=256, verbose=0)
    else:
        loss, accuracy = model.evaluate(batches(data, data.x_val, data.y_val, 256, seed), verbose=0)
    if not math.isfinite(loss):
        raise TrialFailedError("validation loss is NaN")
    return TrainResult(
        accuracy=float(accuracy),
        train_accuracy=float(history.history["accuracy"][-1]),
        loss=float(loss),
        epochs=epochs,
        seconds=time.perf_counter() - start,
        params=int(model.count_params()),
    )


def batches(
    data: TaskData, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, train: bool = False
) -> Any:
    """A ``keras.utils.Sequence`` of float32 batches of ``x`` (stored uint8 pixels are scaled one
    batch at a time, so the float copy of a whole split never exists). ``train``: reshuffled
    every epoch, and augmented (random horizontal flip, random crop after a 1/8 zero padding) when
    the task asks for it."""
    from search_spaces.backend import keras

    augment = train and data.augment and x.ndim == 4

    class _Batches(keras().utils.Sequence):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x)) if train else np.arange(len(x))

        def __len__(self) -> int:
            return max(1, math.ceil(len(x) / batch_size))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            xb = data.inputs(x[idx])
            if augment:
                xb = _augment(xb, self.rng)
            return xb, y[idx]

        def on_epoch_end(self) -> None:
            if train:
                self.order = self.rng.permutation(len(x))

    return _Batches()


def _augment(xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = xb.shape
    flip = rng.random(n) < 0.5
    xb = xb.copy()
    xb[flip] = xb[flip, :, ::-1]
    ph, pw = max(1, h // 8), max(1, w // 8)
    padded = np.pad(xb, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    dy = rng.integers(0, 2 * ph + 1, n)
    dx = rng.integers(0, 2 * pw + 1, n)
    for j in range(n):
        xb[j] = padded[j, dy[j] : dy[j] + h, dx[j] : dx[j] + w]
    return xb


def _user_optimizer(k: Any, user: Any) -> Any:
    """The optimizer a user's build(hp) compiled with, rebuilt in tf_keras (same class and
    settings); None when tf_keras has no optimizer of that name."""
    cls = getattr(k.optimizers, user.optimizer, None)
    if cls is None:
        return None
    try:
        return cls(**dict(user.config))
    except (TypeError, ValueError):
        return None


# Training samples whose statistics replace each BatchNorm layer's moving averages after training
# (``compress.training.recalibrate_batchnorm``, in chunks, so a large input does not need one huge
# batch).
RECALIBRATION_SAMPLES = 1000
RECALIBRATION_CHUNK = 200


def train_candidate(
    space: SearchSpace,
    arch: Hashable,
    data: TaskData,
    config: TrainConfig,
    seed: int,
    epochs: int | None = None,
) -> tuple[TrainResult, Any]:
    """Build and train ``arch``; returns the result and the trained model."""
    from search_spaces.backend import keras

    keras().backend.clear_session()
    try:
        model = space.build(arch, data.shape)
    except Exception as e:  # a space that cannot build this arch fails the trial, not the search
        raise TrialFailedError(f"build failed: {e.__class__.__name__}: {e}") from e
    try:
        result = train_model(model, data, config, epochs or config.epochs, seed)
    except TrialFailedError:
        raise
    except Exception as e:
        from search_spaces.keras_tuner import first_line, user_frame

        # A user's layer (keras-tuner space) that fails inside fit(): name the user's line.
        where = user_frame(e)
        prefix = f"{where}: " if ":" in where else ""
        raise TrialFailedError(f"{prefix}training failed: {e.__class__.__name__}: {first_line(e)}") from e
    return result, model
