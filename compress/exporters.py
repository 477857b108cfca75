"""Exporters, one per format: write the file, read it back from disk, run it in its own runtime
and measure it (accuracy on the test split, size, gzip size, sparsity, MACs, latency)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from latency_models.table import write_atomic
from search_spaces import InputError

from ._base import CompressData, Quantization, StageError
from .measure import accuracy_of, gzip_size, tflite_stats

__all__ = [
    "AGREEMENT_FLOOR",
    "EXPORTERS",
    "Exported",
    "Exporter",
    "ExportContext",
    "c_array",
    "get_exporter",
    "parse_c_array",
]

#: exported float formats must predict the same class as the fp32 .tflite on this share of the test split
AGREEMENT_FLOOR = 0.99


@dataclass(frozen=True)
class Exported:
    """One exported model as measured from its file(s)."""

    format: str
    dtype: str
    files: tuple[str, ...]
    size_bytes: int
    gzip_bytes: int
    accuracy: float
    latency_ms: float
    sparsity: float
    macs: int
    runtime: str
    agreement: float | None = None
    arena_bytes: int | None = None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExportContext:
    """What every exporter of one model shares: the data, thread count, timing settings and a
    lazily built fp32 .tflite reference (its predicted classes, MACs)."""

    model: Any
    data: CompressData
    threads: int = 1
    runs: int = 50
    #: an extra TVM target (cross compilation, e.g. ``llvm -mtriple=aarch64-linux-gnu``)
    tvm_target: str | None = None
    _reference: tuple[np.ndarray, int] | None = field(default=None, repr=False)

    def reference(self) -> tuple[np.ndarray, int]:
        """Classes the fp32 .tflite predicts on the test split, and its MACs."""
        if self._reference is None:
            from latency_models.runtimes.litert import LiteRTSession, convert_tflite

            data = _convert(lambda: convert_tflite(self.model, "fp32"), "tflite")
            _, classes = accuracy_of(
                LiteRTSession(data, self.threads).run, self.data.x_test, self.data.y_test
            )
            self._reference = (classes, tflite_stats(data).macs)
        return self._reference

    def latency(self, session: Any) -> float:
        return float(session.time(self.data.x_test[0], runs=self.runs, warmup=5).median_ms)


def _convert(fn: Any, fmt: str) -> Any:
    """Run a converter; its failures become a ``StageError`` naming the format."""
    from latency_models.runtimes import ConversionError
    from search_spaces.backend import native_stderr_muted

    named: ConversionError | None = None
    try:
        # Converters and interpreters print C++ chatter on fd 2 (XNNPACK, calibration settings).
        with native_stderr_muted():
            try:
                return fn()
            except ConversionError as e:
                # A failure that names its step and layer: caught inside, so the muted chatter
                # (replayed for other errors) stays muted.
                named = e
    except (InputError, StageError):
        raise
    except Exception as e:  # converters raise many unrelated types (ConverterError, RuntimeError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"export {fmt}: conversion failed: {first[:300]}") from None
    raise StageError(f"export {fmt}: {named}")


def _int8(model: Any, calibration: np.ndarray, per_channel: bool, fmt: str) -> bytes:
    from latency_models.runtimes.litert import convert_tflite

    from .quantization import convert_int8_per_tensor

    if per_channel:
        return _convert(lambda: convert_tflite(model, "int8", calibration), fmt)
    return _convert(lambda: convert_int8_per_tensor(model, calibration), fmt)


def _strips(quant: Quantization) -> bool:
    """Strip strings? As the ``strip`` stage says; by default only full-integer int8 files (the
    microcontroller path, where names are dead weight), so float files keep the signature defs
    that LiteRT signature runners look up."""
    return quant.strip if quant.strip is not None else quant.dtype == "int8"


def _stripped(data: bytes, fmt: str) -> tuple[bytes, str]:
    """``data`` without its strings, and the report note saying so."""
    from .strip import STRIP_NOTE, strip_tflite

    stripped = _convert(lambda: strip_tflite(data), fmt)
    return stripped, STRIP_NOTE.format(saved=len(data) - len(stripped))


class Exporter(ABC):
    """Writes one format into ``out_dir`` and measures what it wrote.

    ``check_installed`` is called when the format is named (a config, a command line), before
    any work; ``export`` after the pipeline's stages, with the compressed model."""

    name: ClassVar[str]
    #: (module, pip install hint) for formats that need an optional extra
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()

    def check_installed(self) -> None:
        """One line naming the ``pip install`` to run when an optional extra is missing."""
        import importlib.util

        for module, hint in self.requires:
            if importlib.util.find_spec(module) is None:
                raise InputError(f"format {self.name}: {module} is not installed here; run: {hint}.")

    @abstractmethod
    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported: ...


class TFLiteExporter(Exporter):
    """``model_<dtype>.tflite`` at the pipeline's quantization (fp32 if no stage chose one)."""

    name = "tflite"

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.litert import convert_tflite

        notes: tuple[str, ...] = ()
        calibration = ctx.data.calibration(quant.calibration)
        if quant.dtype == "int8" and quant.max_error is not None:
            from .quantization import convert_mixed_int8

            data, kept = _convert(
                lambda: convert_mixed_int8(ctx.model, calibration, quant.max_error), self.name
            )
            notes = tuple(
                f"kept float (int8 error {err:.2f} > {quant.max_error:g}): {name}"
                for name, err in kept.items()
            )
            if not kept:
                notes = (f"mixed precision: every layer's int8 error is <= {quant.max_error:g}; all int8",)
            filename = "model_int8_mixed.tflite"
        elif quant.dtype == "int8" and not quant.per_channel:
            data = _int8(ctx.model, calibration, False, self.name)
            notes = ("int8 with one weight scale per tensor (per_channel=0)",)
            filename = "model_int8_per_tensor.tflite"
        else:
            data = _convert(lambda: convert_tflite(ctx.model, quant.dtype, calibration), self.name)
            filename = f"model_{quant.dtype}.tflite"
        if _strips(quant):
            data, note = _stripped(data, self.name)
            notes = (*notes, note)
        path = out_dir / filename
        write_atomic(path, data)
        return measure_tflite(path, quant.dtype, ctx, notes)


def measure_tflite(path: Path, dtype: str, ctx: ExportContext, notes: tuple[str, ...] = ()) -> Exported:
    """Re-load a .tflite file from disk and measure it with LiteRT."""
    from latency_models.runtimes.litert import LiteRTSession

    data = path.read_bytes()
    session = _convert(lambda: LiteRTSession(data, ctx.threads), "tflite")
    accuracy, _ = accuracy_of(session.run, ctx.data.x_test, ctx.data.y_test)
    stats = tflite_stats(data)
    return Exported(
        format="tflite",
        dtype=dtype,
        files=(path.name,),
        size_bytes=len(data),
        gzip_bytes=gzip_size(data),
        accuracy=accuracy,
        latency_ms=ctx.latency(session),
        sparsity=stats.sparsity,
        macs=stats.macs,
        runtime="litert",
        notes=notes,
    )


def c_array(data: bytes, name: str = "g_model_data") -> tuple[str, str]:
    """``model_data.cc`` and ``model_data.h`` holding ``data`` as an aligned C array."""
    header = (
        "// Generated by edge-nas `nas compress --formats tflm`: an int8 TFLite Micro model.\n"
        "#ifndef MODEL_DATA_H_\n#define MODEL_DATA_H_\n\n"
        f"extern const unsigned char {name}[];\nextern const unsigned int {name}_len;\n\n#endif  // MODEL_DATA_H_\n"
    )
    rows = [", ".join(f"0x{b:02x}" for b in data[i : i + 12]) for i in range(0, len(data), 12)]
    body = ",\n  ".join(rows)
    source = (
        '#include "model_data.h"\n\n'
        "// TFLite Micro reads the flatbuffer in place; 16-byte alignment keeps its tensors aligned.\n"
        f"alignas(16) const unsigned char {name}[] = {{\n  {body}\n}};\n"
        f"const unsigned int {name}_len = {len(data)};\n"
    )
    return source, header


def parse_c_array(source: str) -> bytes:
    """The bytes of the array in a ``model_data.cc`` written by ``c_array``."""
    start, end = source.index("{"), source.index("}")
    return bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", source[start:end]))


class TFLMExporter(Exporter):
    """The int8 model as ``model_data.cc``/``model_data.h`` for TFLite Micro. The C file is compiled
    with ``g++ -c`` to prove it builds; the file is parsed back and run with the tflite-micro
    interpreter; the arena is what that interpreter really allocates."""

    name = "tflm"

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.tflm import TFLMSession, arena_bytes

        calibration = ctx.data.calibration(quant.calibration if quant.dtype == "int8" else 200)
        per_channel = quant.per_channel or quant.dtype != "int8"
        data = _int8(ctx.model, calibration, per_channel, self.name)
        later = [] if per_channel else ["int8 with one weight scale per tensor (per_channel=0)"]
        # A microcontroller never looks a tensor up by name: strip unless the user said keep.
        if quant.strip is not False:
            data, note = _stripped(data, self.name)
            later.append(note)
        source, header = c_array(data)
        write_atomic(out_dir / "model_data.h", header)
        write_atomic(out_dir / "model_data.cc", source)
        notes = [compile_check(out_dir / "model_data.cc"), *later]
        stored = parse_c_array((out_dir / "model_data.cc").read_text())
        if stored != data:
            raise StageError(
                "export tflm: model_data.cc does not hold the converted model (read back differs)."
            )
        session = _convert(lambda: TFLMSession(stored), self.name)
        accuracy, _ = accuracy_of(session.run, ctx.data.x_test, ctx.data.y_test)
        stats = tflite_stats(stored)
        if quant.dtype != "int8":
            notes.append(
                "TFLite Micro runs integer models: exported int8 although the pipeline has no int8 stage"
            )
        return Exported(
            format="tflm",
            dtype="int8",
            files=("model_data.cc", "model_data.h"),
            size_bytes=len(stored),
            gzip_bytes=gzip_size(stored),
            accuracy=accuracy,
            latency_ms=float(
                session.time(ctx.data.x_test[0], runs=max(3, ctx.runs // 5), warmup=2).median_ms
            ),
            sparsity=stats.sparsity,
            macs=stats.macs,
            runtime="tflite-micro (reference kernels, this host)",
            arena_bytes=arena_bytes(stored),
            notes=tuple(notes),
        )


def compile_check(source: Path) -> str:
    """Compile ``source`` with ``g++ -c`` (object discarded); a failure stops the export."""
    compiler = shutil.which("g++")
    if compiler is None:
        return "g++ not found: the C array was not compile-checked here"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [
                compiler,
                "-std=c++11",
                "-c",
                str(source),
                "-I",
                str(source.parent),
                "-o",
                str(Path(tmp, "m.o")),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise StageError(
            f"export tflm: {source.name} does not compile: {proc.stderr.strip().splitlines()[0][:200]}"
        )
    return "model_data.cc compiles with g++ -std=c++11 -c"


def _agreement_check(fmt: str, classes: np.ndarray, ctx: ExportContext) -> float:
    reference, _ = ctx.reference()
    agreement = float(np.mean(classes == reference))
    if agreement < AGREEMENT_FLOOR:
        raise StageError(
            f"export {fmt}: predictions agree with the fp32 .tflite on {100 * agreement:.1f}% of the test split, "
            f"expected >= {100 * AGREEMENT_FLOOR:.0f}%; not writing a wrong file."
        )
    return agreement


def _measured(
    fmt: str,
    dtype: str,
    out_dir: Path,
    files: tuple[str, ...],
    session: Any,
    ctx: ExportContext,
    runtime: str,
    sparsity: float,
    notes: tuple[str, ...],
) -> Exported:
    """An exported file set measured from disk: ``session`` was loaded from ``files``; fp32
    files must agree with the fp32 .tflite (``AGREEMENT_FLOOR``)."""
    stored = [(out_dir / f).read_bytes() for f in files]
    accuracy, classes = accuracy_of(session.run, ctx.data.x_test, ctx.data.y_test)
    agreement = _agreement_check(fmt, classes, ctx) if dtype == "fp32" else None
    return Exported(
        format=fmt,
        dtype=dtype,
        files=files,
        size_bytes=sum(len(b) for b in stored),
        gzip_bytes=gzip_size(*stored),
        accuracy=accuracy,
        latency_ms=ctx.latency(session),
        sparsity=sparsity,
        macs=ctx.reference()[1],
        runtime=runtime,
        agreement=agreement,
        notes=notes,
    )


class OnnxExporter(Exporter):
    """``model.onnx`` (fp32, tf2onnx) run with ONNX Runtime; must agree with the fp32 .tflite."""

    name = "onnx"

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.onnxruntime import keras_to_onnx, load_file

        data = _convert(lambda: keras_to_onnx(ctx.model), self.name)
        path = out_dir / "model.onnx"
        write_atomic(path, data)
        session = load_file(path, ctx.threads)
        notes = ("fp32; MACs counted on the fp32 .tflite of the same model",)
        sparsity = _onnx_sparsity(path.read_bytes())
        return _measured(
            self.name, "fp32", out_dir, (path.name,), session, ctx, "onnxruntime", sparsity, notes
        )


def _onnx_sparsity(data: bytes) -> float:
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for init in onnx.load_from_string(data).graph.initializer:
        if len(init.dims) >= 2:
            values = numpy_helper.to_array(init)
            zeros += int(np.count_nonzero(values == 0))
            total += int(values.size)
    return zeros / total if total else 0.0


class OpenVinoExporter(Exporter):
    """``model.xml`` + ``model.bin`` (OpenVINO IR, fp32) run on the CPU plugin; must agree with
    the fp32 .tflite."""

    name = "openvino"

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.openvino import ir_from_model, load_file

        xml, weights = _convert(lambda: ir_from_model(ctx.model), self.name)
        write_atomic(out_dir / "model.bin", weights)
        write_atomic(out_dir / "model.xml", xml)
        session = load_file(out_dir / "model.xml", ctx.threads)
        stored = (out_dir / "model.bin").read_bytes()
        sparsity = float(np.mean(np.frombuffer(stored[: len(stored) // 4 * 4], np.float32) == 0))
        notes = ("fp32 IR; sparsity over every value in model.bin; MACs counted on the fp32 .tflite",)
        files = ("model.xml", "model.bin")
        return _measured(self.name, "fp32", out_dir, files, session, ctx, "openvino CPU", sparsity, notes)


class TVMExporter(Exporter):
    """``model_tvm.so``: the ONNX export compiled by Apache TVM for this host (``llvm``), loaded
    back into TVM's Relax VM and measured; must agree with the fp32 .tflite. With
    ``tvm_target`` set, also ``model_tvm_<triple>.tar`` for that target (object files that
    ``tvm.runtime.load_module`` links on the device; not run here). fp32 only: TVM 0.27 has no
    QNN path (see ``latency_models.runtimes.tvm``)."""

    name = "tvm"
    requires = (("tvm", "pip install 'edge-nas[tvm]'"),)

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.onnxruntime import keras_to_onnx
        from latency_models.runtimes.tvm import HOST_TARGET, check_target, compile_onnx, load_file, tvm_module

        tvm = _convert(tvm_module, self.name)  # a missing extra: one line naming the pip install
        if ctx.tvm_target:
            check_target(ctx.tvm_target)
        onnx_bytes = _convert(lambda: keras_to_onnx(ctx.model), self.name)
        library, _ = _convert(lambda: compile_onnx(onnx_bytes, HOST_TARGET), self.name)
        write_atomic(out_dir / "model_tvm.so", library)
        files = ["model_tvm.so"]
        host = str(tvm.target.Target(HOST_TARGET).attrs.get("mtriple", "")) or "host"
        notes = [
            f"fp32, compiled by TVM {tvm.__version__} for llvm ({host}); MACs counted on the fp32 .tflite"
        ]
        if quant.dtype != "fp32":
            notes.append(
                f"not {quant.dtype}: TVM 0.27 has no QNN path (Relay is gone) and its ONNX frontend lowers "
                "QuantizeLinear/DequantizeLinear to float math, so an int8 library would compute in fp32"
            )
        if ctx.tvm_target and ctx.tvm_target.strip() != HOST_TARGET:
            target = ctx.tvm_target.strip()
            cross, suffix = _convert(lambda: compile_onnx(onnx_bytes, target), self.name)
            triple = str(check_target(target).attrs.get("mtriple", "")) or "target"
            name = f"model_tvm_{re.sub(r'[^A-Za-z0-9_.-]+', '_', triple)}{suffix}"
            write_atomic(out_dir / name, cross)
            files.append(name)
            notes.append(
                f"{name}: compiled for {target!r}, not run here (only the host library can be); on the device "
                "tvm.runtime.load_module links it; size, accuracy and latency are the host library's"
            )
        session = load_file(out_dir / files[0], ctx.threads)
        main = (files[0],)
        measured = _measured(
            self.name,
            "fp32",
            out_dir,
            main,
            session,
            ctx,
            "tvm (relax VM, llvm)",
            _onnx_sparsity(onnx_bytes),
            tuple(notes),
        )
        return replace(measured, files=tuple(files))


class ExecuTorchExporter(Exporter):
    """``model_<dtype>.pte``: ONNX -> PyTorch -> ``torch.export`` -> ExecuTorch with the XNNPACK
    partitioner (int8 through the PT2E XNNPACK quantizer when the pipeline quantizes), re-loaded
    with ExecuTorch's runtime and measured; fp32 must agree with the fp32 .tflite."""

    name = "executorch"
    requires = (
        ("torch", "pip install 'edge-nas[executorch]'"),
        ("executorch", "pip install 'edge-nas[executorch]'"),
    )

    def export(self, quant: Quantization, out_dir: Path, ctx: ExportContext) -> Exported:
        from latency_models.runtimes.executorch import load_file, onnx_to_pte, require
        from latency_models.runtimes.onnxruntime import keras_to_onnx

        _convert(require, self.name)  # imports torch quietly; a missing extra: one line
        dtype = "int8" if quant.dtype == "int8" else "fp32"
        calibration = ctx.data.calibration(quant.calibration) if dtype == "int8" else None
        onnx_bytes = _convert(lambda: keras_to_onnx(ctx.model), self.name)
        pte = _convert(lambda: onnx_to_pte(onnx_bytes, dtype, calibration), self.name)
        path = out_dir / f"model_{dtype}.pte"
        write_atomic(path, pte)
        session = _convert(lambda: load_file(path, ctx.threads), self.name)
        notes = [
            f"{dtype} .pte, XNNPACK delegate"
            + (" (PT2E XNNPACK quantizer, per-channel weights)" if dtype == "int8" else "")
            + "; sparsity of the ONNX weights it was made from; MACs counted on the fp32 .tflite"
        ]
        if quant.dtype not in ("int8", "fp32"):
            notes.append(f"not {quant.dtype}: this exporter writes fp32 or int8")
        return _measured(
            self.name,
            dtype,
            out_dir,
            (path.name,),
            session,
            ctx,
            "executorch (XNNPACK)",
            _onnx_sparsity(onnx_bytes),
            tuple(notes),
        )


EXPORTERS: dict[str, type[Exporter]] = {
    "tflite": TFLiteExporter,
    "tflm": TFLMExporter,
    "onnx": OnnxExporter,
    "openvino": OpenVinoExporter,
    "tvm": TVMExporter,
    "executorch": ExecuTorchExporter,
}


def get_exporter(name: str) -> Exporter:
    if name not in EXPORTERS:
        raise InputError(f"format: unknown format {name!r}; valid formats: {sorted(EXPORTERS)}.")
    exporter = EXPORTERS[name]()
    exporter.check_installed()
    return exporter
