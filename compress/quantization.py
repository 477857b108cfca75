"""Quantization stages: post-training dynamic range, float16 and full-integer int8 (with a
configurable calibration set and optional mixed precision), and quantization-aware training."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ._base import CompressData, ExportOnly, Quantization, Stage, StageError, check_count, stage_check
from .training import Trainer

__all__ = [
    "DynamicRange",
    "Float16",
    "Int8",
    "MixedInt8",
    "QuantizationAware",
    "convert_int8_per_tensor",
    "convert_mixed_int8",
]


class _PostTraining(ExportOnly):
    """A post-training quantization without arguments: the exporters' dtype is the stage's name."""

    @property
    def quantization(self) -> Quantization:
        return Quantization(self.name)


@dataclass(frozen=True)
class DynamicRange(_PostTraining):
    """Post-training dynamic range quantization: int8 weights, float activations."""

    name: ClassVar[str] = "dynamic"


@dataclass(frozen=True)
class Float16(_PostTraining):
    """Post-training float16 weights (half the size, float compute)."""

    name: ClassVar[str] = "fp16"


@dataclass(frozen=True)
class Int8(ExportOnly):
    """Post-training full-integer int8 (int8 input and output) calibrated on ``calibration``
    training samples; ``per_channel=0`` uses one weight scale per tensor instead of one per
    output channel (smaller file, some accuracy risk)."""

    name: ClassVar[str] = "int8"
    main_arg: ClassVar[str | None] = "calibration"

    calibration: int = 200
    per_channel: int = 1

    def __post_init__(self) -> None:
        check_count(self, "calibration")
        stage_check(self.per_channel in (0, 1), self.name, "per_channel must be 0 or 1", self.per_channel)

    @property
    def quantization(self) -> Quantization:
        return Quantization("int8", self.calibration, per_channel=bool(self.per_channel))


def convert_int8_per_tensor(model: Any, calibration: np.ndarray) -> bytes:
    """Full-integer int8 (int8 input and output) with one weight scale per tensor.

    TensorFlow exposes this only as the converter attribute ``_experimental_disable_per_channel``
    (present since TF 2.4, still in 2.21).
    """
    from search_spaces.backend import native_stderr_muted, tf

    t = tf()
    converter = t.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [t.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _samples(calibration)
    converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = t.int8
    converter.inference_output_type = t.int8
    converter._experimental_disable_per_channel = True
    with native_stderr_muted():
        return bytes(converter.convert())


@dataclass(frozen=True)
class MixedInt8(ExportOnly):
    """int8, except layers whose int8 output error (RMSE in units of the quantization scale,
    measured by the TFLite quantization debugger) is above ``max_error``: they stay float and the
    report lists them."""

    name: ClassVar[str] = "mixed"
    main_arg: ClassVar[str | None] = "max_error"

    max_error: float = 0.7
    calibration: int = 200

    def __post_init__(self) -> None:
        stage_check(
            isinstance(self.max_error, float) and math.isfinite(self.max_error) and self.max_error > 0,
            self.name,
            "max_error must be a number > 0",
            self.max_error,
        )
        check_count(self, "calibration")

    @property
    def quantization(self) -> Quantization:
        return Quantization("int8", self.calibration, self.max_error)


@dataclass(frozen=True)
class QuantizationAware(Stage):
    """Quantization-aware training with tfmot (fake-quant in the forward pass) for ``epochs``;
    sparse models keep their zeros (prune-preserving scheme). Layers tfmot has no int8 rule for
    stop the stage with their name, except weight-free ``Multiply`` (hard-swish, squeeze-excite
    gates) and ``Activation`` layers tfmot has no rule for (hard-sigmoid): their output is
    quantized like an ``Add``'s."""

    name: ClassVar[str] = "qat"
    main_arg: ClassVar[str | None] = "epochs"

    epochs: int = 1
    calibration: int = 200
    trainer: Trainer = field(default_factory=Trainer, repr=False, compare=False)
    rules: ClassVar = {"epochs": check_count, "calibration": check_count}

    def apply(self, model: Any, data: CompressData) -> Any:
        from search_spaces.backend import keras

        k = keras()
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_configs as configs,
        )

        from .pruning import copy_model, weight_sparsity

        qk = tfmot.quantization.keras
        if is_quantization_aware(model):
            raise StageError(f"stage {self.name}: the model is already quantization-aware.")

        def annotate(layer: Any) -> Any:
            if isinstance(layer, k.layers.InputLayer):
                return layer
            if isinstance(layer, k.layers.Multiply) or (
                isinstance(layer, k.layers.Activation)
                and getattr(layer.activation, "__name__", "") not in _TFMOT_ACTS
            ):
                return qk.quantize_annotate_layer(layer, configs.Default8BitOutputQuantizeConfig())
            act = getattr(layer, "activation", None)
            if act is not None and getattr(act, "__name__", "") not in _TFMOT_ACTS:
                raise StageError(
                    f"stage {self.name}: layer {layer.name!r} ({type(layer).__name__}) has a fused "
                    f"{getattr(act, '__name__', act)!r} activation tfmot cannot quantize; remove the stage or "
                    f"use a separate Activation layer."
                )
            return qk.quantize_annotate_layer(layer)

        work = copy_model(model, self.name)
        annotated = k.models.clone_model(work, clone_function=annotate)
        scheme = (
            tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            if weight_sparsity(work) > 0.2
            else qk.default_8bit.Default8BitQuantizeScheme()
        )
        try:
            with qk.quantize_scope(
                {"Default8BitOutputQuantizeConfig": configs.Default8BitOutputQuantizeConfig}
            ):
                qat = qk.quantize_apply(annotated, scheme)
        except (ValueError, RuntimeError, TypeError) as e:
            found = re.search(r"Layer (\S+?):<class '[\w.]*?(\w+)'>", str(e))
            if found:
                raise StageError(
                    f"stage {self.name}: layer {found.group(1)!r} ({found.group(2)}) cannot be quantized by tfmot "
                    f"(no int8 rule for it); remove the stage or replace the layer."
                ) from None
            raise StageError(
                f"stage {self.name}: tfmot cannot quantize this model: {str(e).splitlines()[0]}"
            ) from None
        # BatchNorm is folded into fake-quantized convs; its statistics must not be re-estimated.
        return self.trainer.fit(qat, data, self.epochs, self.name, recalibrate=False)

    @property
    def quantization(self) -> Quantization:
        return Quantization("int8", self.calibration)


# Activations tfmot's default 8-bit scheme has a rule for (others get their output quantized).
_TFMOT_ACTS = ("relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh")


def is_quantization_aware(model: Any) -> bool:
    return any(type(layer).__name__.startswith("Quantize") for layer in model.layers)


def _samples(x: np.ndarray) -> Iterator[list[np.ndarray]]:
    for s in x:
        yield [s[None, ...].astype(np.float32)]


def convert_mixed_int8(
    model: Any, calibration: np.ndarray, max_error: float
) -> tuple[bytes, dict[str, float]]:
    """int8 with float fallback: the quantization debugger measures every quantized tensor's
    RMSE / scale on the calibration set; ops above ``max_error`` are deny-listed (kept float).

    Returns the flatbuffer and ``{tensor name: error}`` of the tensors kept float.
    """
    from search_spaces.backend import tf

    t = tf()

    def make_converter() -> Any:
        converter = t.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [t.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _samples(calibration)
        return converter

    debugger = t.lite.experimental.QuantizationDebugger(
        converter=make_converter(), debug_dataset=lambda: _samples(calibration[:64])
    )
    debugger.run()
    # The debugger reports errors per tensor but not the tensors' int8 scales; read those from
    # the int8 model (debug keys are "NumericVerify/<int8 tensor name><suffix>:<index>").
    from ai_edge_litert.interpreter import Interpreter

    plain = Interpreter(model_content=bytes(debugger.get_nondebug_quantized_model()))
    scales = {
        d["name"]: float(d["quantization"][0]) for d in plain.get_tensor_details() if d["quantization"][0] > 0
    }
    errors: dict[str, float] = {}
    for key, stats in debugger.layer_statistics.items():
        name = re.sub(r":\d+$", "", key.removeprefix("NumericVerify/"))
        matches = [n for n in scales if name.startswith(n)]
        mse = float(stats.get("mean_squared_error", float("nan")))
        if matches and math.isfinite(mse):
            errors[key] = math.sqrt(mse) / scales[max(matches, key=len)]
    denied = {name: err for name, err in errors.items() if err > max_error}
    if not denied:
        return debugger.get_nondebug_quantized_model(), {}
    options = t.lite.experimental.QuantizationDebugOptions(denylisted_nodes=sorted(denied))
    selective = t.lite.experimental.QuantizationDebugger(
        converter=make_converter(), debug_dataset=lambda: _samples(calibration[:8]), debug_options=options
    )
    return bytes(selective.get_nondebug_quantized_model()), denied
