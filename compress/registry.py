"""The stage registry: names to stage classes, and ``STAGE[:ARG][:key=value...]`` strings to
checked stage values (``prune:0.5``, ``structured:ratio=0.3:epochs=2``, ``int8:500``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from search_spaces import InputError
from search_spaces.plugins import load_registered

from ._base import Stage
from .training import Trainer

__all__ = ["STAGES", "build_pipeline", "parse_stage", "stage_class"]

# name -> "module:Class", imported on first use (tfmot and TensorFlow stay unloaded until needed).
STAGES: dict[str, str] = {
    "prune": "compress.pruning:MagnitudePrune",
    "structured": "compress.pruning:StructuredPrune",
    "dynamic": "compress.quantization:DynamicRange",
    "fp16": "compress.quantization:Float16",
    "int8": "compress.quantization:Int8",
    "mixed": "compress.quantization:MixedInt8",
    "qat": "compress.quantization:QuantizationAware",
    "distill": "compress.distillation:Distill",
    "finetune": "compress.distillation:FineTune",
    "lowrank": "compress.lowrank:LowRank",
    "strip": "compress.strip:Strip",
}


def stage_class(name: str) -> type[Stage]:
    return load_registered(STAGES, name, "stage", "stages")


def _convert(stage: str, key: str, text: str, annotation: str) -> Any:
    kinds = [a.strip() for a in annotation.split("|") if a.strip() != "None"]
    kind = kinds[0] if kinds else "str"
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise InputError(
            f"stage {stage}: {key} must be {'an int' if kind == 'int' else 'a number'}, got {text!r}."
        ) from None
    return text


def parse_stage(spec: str, trainer: Trainer | None = None) -> Stage:
    """A stage from its string; ``trainer`` (fine-tuning settings and teacher) goes to stages that
    train."""
    text = str(spec).strip()
    if not text:
        raise InputError("stage: expected a name like 'prune' or 'int8:200', got an empty string.")
    name, *parts = text.split(":")
    cls = stage_class(name.strip())
    args_spec = {f.name: f for f in fields(cls) if f.name != "trainer"}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            if cls.main_arg is None:
                raise InputError(
                    f"stage {name}: takes no bare argument, got {part!r}; valid arguments: {sorted(args_spec)}."
                )
            key, value = cls.main_arg, part
        key = key.strip()
        if key not in args_spec:
            raise InputError(f"stage {name}: unknown argument {key!r}; valid arguments: {sorted(args_spec)}.")
        if key in kwargs:
            raise InputError(f"stage {name}: argument {key!r} given twice, got {text!r}.")
        kwargs[key] = _convert(name, key, value.strip(), str(args_spec[key].type))
    if any(f.name == "trainer" for f in fields(cls)):  # type: ignore[arg-type]
        kwargs["trainer"] = trainer or Trainer()
    return cls(**kwargs)


def build_pipeline(specs: Sequence[str | Stage] | str, trainer: Trainer | None = None) -> list[Stage]:
    """Stages from a comma-separated string or a list of strings and/or ready stage values."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out: list[Stage] = []
    for spec in specs:
        if isinstance(spec, Stage):
            out.append(spec)
        elif isinstance(spec, str):
            out.append(parse_stage(spec, trainer))
        else:
            raise InputError(f"pipeline: expected stage strings or Stage values, got {type(spec).__name__}.")
    return out
