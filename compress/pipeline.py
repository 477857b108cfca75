"""Running a pipeline: apply the stages in order, export and measure the file after each one,
stop early at a size/latency target within an accuracy budget, then export every format into a
temp folder that is renamed into place only when everything worked."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latency_models.table import write_atomic
from search_spaces import InputError

from ._base import CompressData, Quantization, Stage, StageError, check_model_task
from .exporters import EXPORTERS, ExportContext, Exported, get_exporter
from .registry import build_pipeline
from .training import Trainer

__all__ = [
    "REPORT_NAME",
    "CompressReport",
    "ExportFailed",
    "ReportRow",
    "TargetResult",
    "compress_and_export",
]

REPORT_NAME = "compress_report.json"
REPORT_FORMAT = "edge-nas-compress-report"


@dataclass(frozen=True)
class ReportRow:
    """One stage's result, measured on the .tflite file exported right after it (LiteRT)."""

    stage: str
    dtype: str
    accuracy: float
    accuracy_drop: float
    size_bytes: int
    gzip_bytes: int
    sparsity: float
    macs: int
    latency_ms: float
    params: int
    seconds: float
    kept: bool = True
    notes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetResult:
    """Whether progressive compression met its target, where, and if not, what it reached."""

    size_kb: float | None
    latency_ms: float | None
    max_accuracy_drop: float | None
    met: bool
    stage: str | None
    reason: str


@dataclass(frozen=True)
class CompressReport:
    rows: tuple[ReportRow, ...]
    exports: tuple[Exported, ...]
    target: TargetResult | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: format -> why its export failed (the other formats were still written)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for e in self.exports for f in e.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": 1,
            "meta": self.meta,
            "rows": [asdict(r) for r in self.rows],
            "exports": [e.as_dict() for e in self.exports],
            "files": list(self.files),
            "target": asdict(self.target) if self.target else None,
            "failed": dict(self.failed),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


class ExportFailed(StageError):
    """Some formats could not be exported (a conversion step failed on a layer); the others and
    the report were written. ``report`` is what was written."""

    def __init__(self, message: str, report: CompressReport) -> None:
        super().__init__(message)
        self.report = report


def _positive(value: float | None, where: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{where}: expected a number > 0, got {value!r}.")


def check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may receive a compress output: new, empty, or an earlier output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: expected a directory, got a file.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / REPORT_NAME).exists():
        raise InputError(
            f"--out {out_dir}: expected a new or empty directory (or an earlier compress output), got a "
            f"directory with other files."
        )


def compress_and_export(
    model: Any,
    data: CompressData,
    pipeline: Sequence[str] | Sequence[Stage] | str,
    formats: Sequence[str],
    out_dir: str | os.PathLike[str],
    teacher: Any = None,
    target_size_kb: float | None = None,
    target_latency_ms: float | None = None,
    max_accuracy_drop: float | None = None,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
    trainer: Trainer | None = None,
    tvm_target: str | None = None,
) -> CompressReport:
    """Compress ``model`` through ``pipeline`` and export the result in every format.

    Every argument is checked before any work; nothing appears in ``out_dir`` unless the stages
    and at least one format succeed (it is built in a temp folder beside it and renamed into
    place). A format whose conversion fails is left out, named in the report's ``failed``, and
    ``ExportFailed`` is raised after the rest was written. ``tvm_target`` adds a cross-compiled
    TVM library for that target to the ``tvm`` format.
    """
    out_dir = Path(out_dir)
    say = progress or (lambda message: None)
    formats = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    if not formats:
        raise InputError(f"formats: expected at least one of {sorted(EXPORTERS)}, got none.")
    exporters = [get_exporter(f) for f in formats]
    _positive(target_size_kb, "target_size_kb")
    _positive(target_latency_ms, "target_latency_ms")
    if max_accuracy_drop is not None and not (math.isfinite(max_accuracy_drop) and max_accuracy_drop >= 0):
        raise InputError(f"max_accuracy_drop: expected a number >= 0 (points), got {max_accuracy_drop!r}.")
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads: expected an int >= 1, got {threads!r}.")
    check_model_task(model, data, "model")
    trainer = trainer or Trainer()
    if teacher is not None:
        check_model_task(teacher, data, "teacher")
        if int(teacher.output_shape[-1]) != int(model.output_shape[-1]):
            raise InputError(
                f"teacher: expected {model.output_shape[-1]} classes (the model's), got {teacher.output_shape[-1]}."
            )
        trainer = trainer.with_teacher(teacher)
    stages = build_pipeline(pipeline, trainer)
    if tvm_target is not None:
        if "tvm" not in formats:
            raise InputError(f"tvm_target: expected the 'tvm' format among the formats, got {formats}.")
        from latency_models.runtimes.tvm import check_target

        check_target(tvm_target)
    check_out_dir(out_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the folder it becomes is the user's to share
    try:
        report = _run(
            model,
            data,
            stages,
            exporters,
            work,
            threads,
            say,
            target_size_kb,
            target_latency_ms,
            max_accuracy_drop,
            tvm_target,
        )
        write_atomic(work / REPORT_NAME, report.to_json())
        _swap_into_place(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"wrote {out_dir / REPORT_NAME}")
    if report.failed:
        raise ExportFailed("; ".join(m.rstrip(".") for m in report.failed.values()) + ".", report)
    return report


def _swap_into_place(work: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run(
    model: Any,
    data: CompressData,
    stages: list[Stage],
    exporters: list[Any],
    work: Path,
    threads: int,
    say: Callable[[str], None],
    target_size_kb: float | None,
    target_latency_ms: float | None,
    max_drop: float | None,
    tvm_target: str | None = None,
) -> CompressReport:
    scratch = Path(tempfile.mkdtemp(prefix="stages-", dir=work))
    try:
        quant = Quantization()
        t0 = time.perf_counter()
        base, base_bytes = _measure(model, quant, data, scratch, threads, "original")
        rows = [_row("original", base, model, base.accuracy, time.perf_counter() - t0)]
        say(_line(rows[-1]))
        targeted = target_size_kb is not None or target_latency_ms is not None
        current, current_quant, current_row = model, quant, 0
        # The .tflite the kept row measured: the tflite exporter writes exactly these bytes again.
        current_file = (base, base_bytes)
        met_at: int | None = None
        for i, stage in enumerate(stages):
            t0 = time.perf_counter()
            say(f"stage {stage.spec} ...")
            new_model = _apply(stage, current, data)
            new_quant = stage.next_quantization(current_quant)
            exported, exported_bytes = _measure(new_model, new_quant, data, scratch, threads, f"{i + 1:02d}")
            row = _row(stage.spec, exported, new_model, base.accuracy, time.perf_counter() - t0)
            within = max_drop is None or row.accuracy_drop <= max_drop + 1e-9
            if not within:
                row = _replace(
                    row,
                    kept=False,
                    notes=(
                        *row.notes,
                        f"accuracy drop {row.accuracy_drop:.2f} > {max_drop:g} points: stage undone",
                    ),
                )
            rows.append(row)
            say(_line(row))
            if within:
                current, current_quant, current_row = new_model, new_quant, len(rows) - 1
                current_file = (exported, exported_bytes)
                if targeted and _meets(row, target_size_kb, target_latency_ms):
                    met_at = len(rows) - 1
                    break
        target = (
            _target_result(rows, met_at, current_row, target_size_kb, target_latency_ms, max_drop)
            if targeted
            else None
        )
        ctx = ExportContext(current, data, threads, tvm_target=tvm_target)
        exports = []
        failed: dict[str, str] = {}
        for exporter in exporters:
            say(f"export {exporter.name} ...")
            before = {p.name for p in work.iterdir()}
            try:
                if exporter.name == "tflite":  # measured already, as the kept row: the same bytes
                    measured, raw = current_file
                    write_atomic(work / measured.files[0], raw)
                    exports.append(measured)
                else:
                    exports.append(exporter.export(current_quant, work, ctx))
            except StageError as e:
                for p in work.iterdir():  # what the failed format had already written
                    if p.name not in before and p.is_file():
                        p.unlink()
                # One format's converter failing on a layer does not cost the user the others.
                failed[exporter.name] = str(e)
                say(f"export {exporter.name} failed: {e}")
        if not exports:
            raise StageError("; ".join(m.rstrip(".") for m in failed.values()) + ".")
        files = tuple(f for e in exports for f in e.files)
        rows[current_row] = _replace(rows[current_row], files=files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    from importlib.metadata import version

    meta = {
        "threads": threads,
        "test_samples": int(len(data.x_test)),
        "latency": "median ms of single-sample runs on this host",
        "final_stage": rows[current_row].stage,
        "versions": {
            p: version(p)
            for p in (
                "tensorflow",
                "tensorflow-model-optimization",
                "ai-edge-litert",
                # the optional extras' packages, when their formats were exported
                *(("apache-tvm",) if any(e.name == "tvm" for e in exporters) else ()),
                *(("executorch", "torch") if any(e.name == "executorch" for e in exporters) else ()),
            )
        },
    }
    return CompressReport(tuple(rows), tuple(exports), target, meta, failed)


def _apply(stage: Stage, model: Any, data: CompressData) -> Any:
    """Apply a stage; unexpected errors become a ``StageError`` that names the stage."""
    try:
        return stage.apply(model, data)
    except (InputError, StageError):
        raise
    except Exception as e:  # TensorFlow/tfmot raise many types; the user needs the stage and the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(
            f"stage {stage.spec}: failed on this model ({type(e).__name__}: {first[:300]})."
        ) from None


def _measure(
    model: Any, quant: Quantization, data: CompressData, scratch: Path, threads: int, tag: str
) -> tuple[Exported, bytes]:
    """The model exported as .tflite at ``quant`` and measured, with the file's bytes."""
    from .exporters import TFLiteExporter

    folder = scratch / tag
    folder.mkdir()
    exported = TFLiteExporter().export(quant, folder, ExportContext(model, data, threads))
    raw = (folder / exported.files[0]).read_bytes()
    shutil.rmtree(folder, ignore_errors=True)
    return exported, raw


def _row(stage: str, e: Exported, model: Any, base_accuracy: float, seconds: float) -> ReportRow:
    return ReportRow(
        stage=stage,
        dtype=e.dtype,
        accuracy=e.accuracy,
        accuracy_drop=round(100.0 * (base_accuracy - e.accuracy), 4),
        size_bytes=e.size_bytes,
        gzip_bytes=e.gzip_bytes,
        sparsity=e.sparsity,
        macs=e.macs,
        latency_ms=e.latency_ms,
        params=int(model.count_params()),
        seconds=round(seconds, 2),
        notes=e.notes,
    )


def _replace(row: ReportRow, **changes: Any) -> ReportRow:
    from dataclasses import replace

    return replace(row, **changes)


def _line(row: ReportRow) -> str:
    return (
        f"{row.stage:<28} {row.dtype:<8} acc {100 * row.accuracy:6.2f}% ({-row.accuracy_drop:+.2f}) "
        f"size {row.size_bytes / 1024:8.1f} KB gzip {row.gzip_bytes / 1024:8.1f} KB "
        f"sparsity {row.sparsity:.2f} MACs {row.macs:,} latency {row.latency_ms:.3f} ms"
        + ("" if row.kept else "  [undone]")
    )


def _meets(row: ReportRow, size_kb: float | None, latency_ms: float | None) -> bool:
    return (size_kb is None or row.size_bytes <= size_kb * 1024) and (
        latency_ms is None or row.latency_ms <= latency_ms
    )


def _target_result(
    rows: list[ReportRow],
    met_at: int | None,
    final: int,
    size_kb: float | None,
    latency_ms: float | None,
    max_drop: float | None,
) -> TargetResult:
    wanted = " and ".join(
        [
            *([f"<= {size_kb:g} KB"] if size_kb is not None else []),
            *([f"<= {latency_ms:g} ms"] if latency_ms is not None else []),
        ]
    )
    if met_at is not None:
        row = rows[met_at]
        return TargetResult(
            size_kb,
            latency_ms,
            max_drop,
            True,
            row.stage,
            f"{row.stage} reached {row.size_bytes / 1024:.1f} KB, {row.latency_ms:.3f} ms at {row.accuracy_drop:.2f} points drop ({wanted}).",
        )
    row = rows[final]
    undone = [r.stage for r in rows if not r.kept]
    why = (
        f"; undone for accuracy: {', '.join(undone)}"
        if undone
        else "; every stage kept, none went far enough"
    )
    return TargetResult(
        size_kb,
        latency_ms,
        max_drop,
        False,
        None,
        f"target {wanted} not met: best within the accuracy budget is {row.stage} with "
        f"{row.size_bytes / 1024:.1f} KB, {row.latency_ms:.3f} ms, {row.accuracy_drop:.2f} points drop{why}.",
    )
