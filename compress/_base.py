"""What every compression stage is: a small unit that maps a tf_keras model to a compressed one,
the data it may fine-tune on, and the quantization a stage asks the exporters for."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from search_spaces import InputError, NasError

__all__ = [
    "CompressData",
    "ExportOnly",
    "Quantization",
    "Stage",
    "StageError",
    "check_count",
    "check_fraction",
    "check_model_task",
    "check_non_negative",
    "check_positive",
    "stage_check",
]


class StageError(NasError):
    """A stage could not be applied to this model (names the stage and the layer); the pipeline
    stops and writes nothing."""


@dataclass(frozen=True)
class CompressData:
    """The task's splits as arrays: float32 inputs with a leading batch axis, int class labels."""

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_val: np.ndarray = field(repr=False)
    y_val: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        shape = None
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
                raise InputError(
                    f"data {split}: expected numpy arrays, got {type(x).__name__}, {type(y).__name__}."
                )
            if len(x) == 0 or len(x) != len(y):
                raise InputError(
                    f"data {split}: expected as many labels as inputs (> 0), got {len(x)} and {len(y)}."
                )
            if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
                raise InputError(
                    f"data y_{split}: expected 1-D integer class labels, got {y.dtype} {y.shape}."
                )
            if shape is not None and x.shape[1:] != shape:
                raise InputError(f"data x_{split}: expected input shape {shape}, got {x.shape[1:]}.")
            shape = x.shape[1:]
            # Frozen dataclass: normalise dtypes through object.__setattr__ once, here.
            object.__setattr__(self, f"x_{split}", np.ascontiguousarray(x, dtype=np.float32))
            object.__setattr__(self, f"y_{split}", y.astype(np.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1

    def calibration(self, n: int) -> np.ndarray:
        """``n`` training samples spread over the split (the representative dataset for int8)."""
        idx = np.linspace(0, len(self.x_train) - 1, num=min(n, len(self.x_train))).astype(int)
        return self.x_train[idx]


@dataclass(frozen=True)
class Quantization:
    """What a quantization stage asks the exporters for.

    ``dtype`` is ``fp32``, ``fp16``, ``dynamic`` (int8 weights, float activations) or ``int8``
    (full integer). ``calibration`` is the representative-set size; ``max_error`` (int8 only)
    turns on mixed precision: a layer whose int8 output error (RMSE / scale, from the TFLite
    quantization debugger) is above it stays float. ``strip`` (set by the ``strip`` stage) removes
    the strings from exported .tflite/TFLite Micro files; ``None`` is the default: full-integer
    int8 and ``tflm`` files are stripped, float ones keep names and signatures (signature runners).
    ``per_channel`` (int8 only) is the converter's default per-output-channel weight scales;
    ``False`` asks for one scale per tensor (smaller file: no float32 scale + int64 zero point per
    channel of every weight and bias, at some accuracy risk, measured in the report).
    """

    dtype: str = "fp32"
    calibration: int = 200
    max_error: float | None = None
    strip: bool | None = None
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "fp16", "dynamic", "int8"):
            raise InputError(
                f"quantization dtype: expected one of ['dynamic', 'fp16', 'fp32', 'int8'], got {self.dtype!r}."
            )
        if (
            not isinstance(self.calibration, int)
            or isinstance(self.calibration, bool)
            or self.calibration < 1
        ):
            raise InputError(f"quantization calibration: expected an int >= 1, got {self.calibration!r}.")
        if self.max_error is not None and not (math.isfinite(self.max_error) and self.max_error > 0):
            raise InputError(f"quantization max_error: expected a number > 0, got {self.max_error!r}.")
        if self.strip is not None and not isinstance(self.strip, bool):
            raise InputError(f"quantization strip: expected true, false or none, got {self.strip!r}.")
        if not isinstance(self.per_channel, bool) or (not self.per_channel and self.dtype != "int8"):
            raise InputError(
                f"quantization per_channel: expected true, or false with dtype int8, got {self.per_channel!r} "
                f"with {self.dtype}."
            )


def stage_check(ok: bool, stage: str, rule: str, got: object) -> None:
    """The stages' one message template: ``stage prune: sparsity must be in (0, 1), got 1.5.``"""
    if not ok:
        raise InputError(f"stage {stage}: {rule}, got {got!r}.")


# The argument rules several stages share, each stated once (``stage_check``'s template).
def check_count(stage: Stage, arg: str, low: int = 1) -> None:
    """``stage.<arg>`` is an int >= ``low`` (epochs, rounds, calibration samples)."""
    value = getattr(stage, arg)
    stage_check(isinstance(value, int) and value >= low, stage.name, f"{arg} must be an int >= {low}", value)


def check_positive(stage: Stage, arg: str) -> None:
    """``stage.<arg>`` is a finite number > 0 (learning rates, temperatures)."""
    value = getattr(stage, arg)
    stage_check(math.isfinite(value) and value > 0, stage.name, f"{arg} must be a number > 0", value)


def check_non_negative(stage: Stage, arg: str) -> None:
    """``stage.<arg>`` is >= 0 (a count that may be zero: a minimum number of weights)."""
    value = getattr(stage, arg)
    stage_check(value >= 0, stage.name, f"{arg} must be an int >= 0", value)


def check_fraction(stage: Stage, arg: str) -> None:
    """``stage.<arg>`` is a float in (0, 1) (sparsity, pruning ratio)."""
    value = getattr(stage, arg)
    stage_check(isinstance(value, float) and 0.0 < value < 1.0, stage.name, f"{arg} must be in (0, 1)", value)


class Stage(ABC):
    """One compression step. Subclasses are frozen dataclasses whose fields are the stage's
    arguments (checked when the stage is made: ``Stage.__post_init__`` applies ``rules``), so a
    pipeline is a plain list of values.

    ``apply`` returns a new model and never changes the one it gets (the original is the
    baseline every row is compared with). Stages that only choose how the exporters quantize
    (``ExportOnly``) return the model as it is and set ``quantization``.
    """

    name: ClassVar[str]
    #: the argument a bare ``STAGE:VALUE`` sets
    main_arg: ClassVar[str | None] = None
    #: argument -> its rule (``check_count``, ``check_positive``, ...), checked in this order when
    #: the stage is made; a stage with rules across arguments checks them in its own
    #: ``__post_init__`` (calling ``super().__post_init__()`` first if it also has ``rules``)
    rules: ClassVar[Mapping[str, Callable[[Stage, str], None]]] = {}

    def __post_init__(self) -> None:
        for arg, rule in self.rules.items():
            rule(self, arg)

    @abstractmethod
    def apply(self, model: Any, data: CompressData) -> Any:
        """The compressed model (a tf_keras model, possibly wrapped for QAT)."""

    @property
    def quantization(self) -> Quantization | None:
        """The quantization the exporters should use after this stage (``None``: unchanged)."""
        return None

    def next_quantization(self, current: Quantization) -> Quantization:
        """What the exporters use after this stage, given what they used before it: this stage's
        ``quantization`` if it sets one (export options such as ``strip`` carry over)."""
        from dataclasses import replace

        chosen = self.quantization
        return current if chosen is None else replace(chosen, strip=current.strip)

    @property
    def spec(self) -> str:
        """This stage as a ``STAGE[:key=value...]`` string (its row label in the report)."""
        from dataclasses import fields

        args = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)  # type: ignore[arg-type]
            if f.repr
            and getattr(self, f.name) is not None
            and (f.name == self.main_arg or getattr(self, f.name) != f.default)
        ]
        return ":".join([self.name, *args])


def check_model_task(model: Any, data: CompressData, what: str = "model") -> None:
    """The model must take the task's inputs and output one softmax row per class."""
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape is None:
        raise InputError(f"{what}: expected a model with one input, got {len(model.input_shape)} inputs.")
    if tuple(int(d) if d is not None else -1 for d in in_shape) != data.input_shape:
        raise InputError(f"{what}: expected input shape {data.input_shape} (the task's), got {in_shape}.")
    out = model.output_shape
    if isinstance(out, list) or len(out) != 2:
        raise InputError(f"{what}: expected one output of shape (batch, classes), got {out}.")
    if int(out[1]) < data.num_classes:
        raise InputError(f"{what}: expected {data.num_classes} classes (the task's), got {out[1]}.")


class ExportOnly(Stage):
    """A stage that leaves the model as it is and only changes what the exporters write (a
    post-training quantization, stripping strings)."""

    def apply(self, model: Any, data: CompressData) -> Any:
        return model
