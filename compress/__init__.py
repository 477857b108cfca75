"""Compression and export: pipelines of stages (pruning, quantization, distillation, low-rank)
and exporters whose files are re-loaded and re-measured with their own runtimes."""

from __future__ import annotations

from search_spaces.plugins import lazy_attributes

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


# The pipeline and exporters pull in numpy-heavy helpers; load them on first use.
__getattr__ = lazy_attributes(
    __name__,
    {
        "compress_and_export": "pipeline",
        "CompressReport": "pipeline",
        "ExportFailed": "pipeline",
        "ReportRow": "pipeline",
        "EXPORTERS": "exporters",
    },
)
