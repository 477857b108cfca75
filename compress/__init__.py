"""Compression and export: pipelines of stages (pruning, quantization, distillation, low-rank)
and exporters whose files are re-loaded and re-measured with their own runtimes."""

from __future__ import annotations

from typing import Any

from ._base import CompressData, Quantization, Stage, StageError
from .registry import STAGES, build_pipeline, parse_stage
from .training import Trainer

__all__ = [
    "EXPORTERS",
    "STAGES",
    "CompressData",
    "CompressReport",
    "ExportFailed",
    "Quantization",
    "ReportRow",
    "Stage",
    "StageError",
    "Trainer",
    "build_pipeline",
    "compress_and_export",
    "parse_stage",
]


def __getattr__(name: str) -> Any:
    # The pipeline and exporters pull in numpy-heavy helpers; load them on first use.
    if name in ("compress_and_export", "CompressReport", "ExportFailed", "ReportRow"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "EXPORTERS":
        from .exporters import EXPORTERS

        return EXPORTERS
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
