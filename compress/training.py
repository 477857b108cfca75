"""Fine-tuning shared by every stage that trains: plain cross-entropy, or knowledge distillation
from a teacher (soft targets at a temperature, mixed with the labels by ``alpha``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_spaces import InputError

from ._base import CompressData, StageError

__all__ = ["Trainer", "keras_accuracy", "recalibrate_batchnorm"]

_EPS = 1e-7


@dataclass(frozen=True, eq=False)
class Trainer:
    """How stages fine-tune. With a ``teacher`` every fine-tuning distils from it, so distillation
    composes with pruning, QAT and low-rank factorization."""

    batch_size: int = 64
    learning_rate: float = 5e-4
    seed: int = 0
    teacher: Any = field(default=None, repr=False)
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size: expected an int >= 1, got {self.batch_size!r}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InputError(f"learning_rate: expected a number > 0, got {self.learning_rate!r}.")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InputError(f"temperature: expected a number > 0, got {self.temperature!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha: expected a number in [0, 1], got {self.alpha!r}.")

    def with_teacher(
        self, teacher: Any, temperature: float | None = None, alpha: float | None = None
    ) -> Trainer:
        from dataclasses import replace

        return replace(
            self,
            teacher=teacher,
            temperature=self.temperature if temperature is None else temperature,
            alpha=self.alpha if alpha is None else alpha,
        )

    def fit(
        self,
        model: Any,
        data: CompressData,
        epochs: int,
        stage: str,
        callbacks: Sequence[Any] = (),
        recalibrate: bool = True,
    ) -> Any:
        """Train ``model`` in place for ``epochs`` on the training split and return it.

        A diverging loss raises ``StageError`` naming the stage. ``recalibrate`` re-estimates
        BatchNorm statistics afterwards: after a few epochs the moving averages (momentum 0.99)
        lag the weights, and inference-mode accuracy can fall to chance without it.
        """
        from search_spaces.backend import keras, set_seed

        k = keras()
        set_seed(self.seed)
        steps = max(1, math.ceil(len(data.x_train) / self.batch_size)) * epochs
        schedule = k.optimizers.schedules.CosineDecay(self.learning_rate, decay_steps=steps, alpha=0.1)
        num_classes = int(model.output_shape[-1])
        y = np.eye(num_classes, dtype=np.float32)[data.y_train]
        if self.teacher is not None:
            soft = self.teacher.predict(data.x_train, batch_size=256, verbose=0).astype(np.float32)
            y = np.concatenate([y, soft], axis=1)
            loss = _distillation_loss(num_classes, self.temperature, self.alpha)
        else:
            loss = k.losses.CategoricalCrossentropy()
        model.compile(optimizer=k.optimizers.Adam(schedule), loss=loss)
        history = model.fit(
            data.x_train,
            y,
            batch_size=self.batch_size,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=[*callbacks, k.callbacks.TerminateOnNaN()],
        )
        losses = history.history.get("loss", [])
        if not losses or not all(math.isfinite(v) for v in losses):
            raise StageError(
                f"stage {stage}: fine-tuning diverged (loss {losses[-1] if losses else 'missing'})."
            )
        if recalibrate:
            recalibrate_batchnorm(model, data.x_train, self.batch_size)
        return model


def _distillation_loss(num_classes: int, temperature: float, alpha: float) -> Any:
    """Hinton et al.: ``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``.

    The labels and the teacher's probabilities travel together in ``y_true`` (one-hot, then
    soft) so plain ``model.fit`` works, pruning and QAT callbacks included. The models output
    softmax probabilities; their logs are logits up to a constant, which softmax ignores.
    """
    from search_spaces.backend import tf

    t = tf()

    def loss(y_true: Any, y_pred: Any) -> Any:
        labels, soft = y_true[:, :num_classes], y_true[:, num_classes:]
        y_pred = t.clip_by_value(y_pred, _EPS, 1.0)
        hard = -t.reduce_sum(labels * t.math.log(y_pred), axis=-1)
        teacher_t = t.nn.softmax(t.math.log(t.clip_by_value(soft, _EPS, 1.0)) / temperature)
        student_log_t = t.nn.log_softmax(t.math.log(y_pred) / temperature)
        kl = t.reduce_sum(
            teacher_t * (t.math.log(t.clip_by_value(teacher_t, _EPS, 1.0)) - student_log_t), axis=-1
        )
        return alpha * hard + (1.0 - alpha) * (temperature**2) * kl

    return loss


def recalibrate_batchnorm(
    model: Any, x: np.ndarray, batch_size: int = 128, max_batches: int = 30, shuffle_seed: int | None = 0
) -> None:
    """Set every BatchNorm layer's moving mean and variance to the average of its statistics over
    up to ``max_batches`` batches of ``x`` (drawn in a permutation seeded by ``shuffle_seed``, in
    order when it is None); weights other than the BN statistics are not touched.

    After training, the moving averages still mix in the earlier, very different weights: after
    a short training (inference-mode accuracy of a 1-epoch mnist5k training measured 0.13-0.19,
    train 0.61-0.73, and 0.77-0.90 once recalibrated: what makes short trainings a usable
    fidelity of the search) and after a stage changes the weights (pruning, factoring).
    """
    from search_spaces.backend import keras

    bns = [m for m in model.submodules if isinstance(m, keras().layers.BatchNormalization)]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    order = None if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(x))
    try:
        for i, start in enumerate(range(0, min(len(x), batch_size * max_batches), batch_size), start=1):
            for bn in bns:
                bn.momentum = 1.0 - 1.0 / i  # each batch counts 1 / i: the running mean of them
            rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            model(x[rows], training=True)
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum


def keras_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a tf_keras model in inference mode."""
    pred = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(pred, axis=1) == y))
