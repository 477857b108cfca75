"""Real runtimes on this machine: convert a tf_keras model for a runtime, run it, time it.

One module per runtime (``litert``, ``onnxruntime``, ``openvino``, ``tflm``, ``tvm``,
``executorch``; the last two are optional extras), each exposing a
``Runtime`` subclass; the profilers, the whole-model measurements and the compression exporters
all go through these, so a number always comes from the file a runtime really executes.
"""

from __future__ import annotations

import os
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from search_spaces import InputError, TrialFailedError
from search_spaces.plugins import load_registered

__all__ = [
    "RUNTIMES",
    "Artifact",
    "ConversionError",
    "ModelNotRunnable",
    "RepeatedTiming",
    "Runtime",
    "Session",
    "Timing",
    "get_runtime",
    "input_sample",
    "read_model_file",
    "run_in_chunks",
    "time_calls",
]


class ConversionError(InputError):
    """A conversion step failed on one layer of the model; the message names the step and the
    layer (exporters record it and still write the other formats)."""


class ModelNotRunnable(TrialFailedError):
    """The runtime refused to prepare a converted file (LiteRT's XNNPACK delegate does, for one,
    when an int8 tensor's range is degenerate: an activation that was zero on every calibration
    sample, such as a squeeze-excite unit whose ReLU never fires)."""


@dataclass(frozen=True)
class Timing:
    """Latency statistics of many timed runs after a warm-up (ms)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int
    warmup: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "median_ms": self.median_ms,
            "p10_ms": self.p10_ms,
            "p90_ms": self.p90_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "runs": self.runs,
            "warmup": self.warmup,
        }


@dataclass(frozen=True)
class RepeatedTiming:
    """One model timed in several repeats (each a ``Timing``, interleaved with other models so a
    change of machine speed hits them alike): the median of the repeats' medians, and the
    repeat-to-repeat spread (half the range of those medians), the noise a single figure has."""

    median_ms: float
    spread_ms: float
    repeats_ms: tuple[float, ...]
    runs: int

    @classmethod
    def of(cls, timings: Iterable[Timing]) -> RepeatedTiming:
        timings = list(timings)
        if not timings:
            raise InputError("repeats: expected at least one timing, got none.")
        medians = tuple(float(t.median_ms) for t in timings)
        return cls(
            median_ms=float(np.median(medians)),
            spread_ms=(max(medians) - min(medians)) / 2.0,
            repeats_ms=medians,
            runs=sum(t.runs for t in timings),
        )

    @property
    def relative_spread(self) -> float:
        return self.spread_ms / self.median_ms if self.median_ms > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "spread_ms": self.spread_ms,
            "repeats_ms": list(self.repeats_ms),
            "runs": self.runs,
        }


def time_calls(
    fn: Callable[[], Any],
    runs: int = 100,
    warmup: int = 10,
    min_total_s: float = 0.0,
    single_thread: bool = True,
) -> Timing:
    """Median-based timing of ``fn``: warm-up calls, then ``runs`` timed calls (more while the
    total stays under ``min_total_s``, so micro-second models are timed over enough calls).

    On a shared machine a run that loses the CPU mid-way takes milliseconds longer, and long
    runs lose it more often than short ones, which would bias whole models against the tiny
    blocks a table sums. When ``fn`` runs on this thread alone (``single_thread``), its thread
    CPU time tells: a run whose wall time exceeds its CPU time by more than 20 us + 10% waited
    for the CPU and is left out (``runs`` counts the runs kept).
    """
    if runs < 3:
        raise InputError(f"runs: expected an int >= 3, got {runs!r}.")
    for _ in range(warmup):
        fn()
    wall: list[float] = []
    kept: list[float] = []
    start = time.perf_counter()
    while len(kept) < runs or (time.perf_counter() - start < min_total_s and len(wall) < 100 * runs):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.thread_time()
        w, c = (t1 - t0) * 1e3, (c1 - c0) * 1e3
        wall.append(w)
        if not single_thread or w - c <= 0.02 + 0.1 * c:
            kept.append(w)
        if len(wall) >= 100 * runs:
            break
    samples = kept if len(kept) >= 3 else wall
    arr = np.asarray(samples)
    return Timing(
        median_ms=float(np.median(arr)),
        p10_ms=float(np.percentile(arr, 10)),
        p90_ms=float(np.percentile(arr, 90)),
        mean_ms=float(arr.mean()),
        std_ms=float(statistics.pstdev(samples)),
        runs=len(samples),
        warmup=warmup,
    )


@dataclass(frozen=True)
class Artifact:
    """A converted model: the bytes a runtime loads (and, for multi-file formats, named parts)."""

    runtime: str
    dtype: str
    data: bytes
    parts: tuple[tuple[str, bytes], ...] = ()

    @property
    def size_bytes(self) -> int:
        return len(self.data) + sum(len(b) for _, b in self.parts)


def input_sample(x: np.ndarray | None, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """``x`` as one float32 input of ``shape`` (what ``Session.prepare`` sets), zeros when None."""
    return np.zeros(shape, np.float32) if x is None else np.asarray(x, np.float32).reshape(shape)


def run_in_chunks(x: np.ndarray, batch: int, run_chunk: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``run_chunk`` over ``x`` (as float32) in slices of at most ``batch`` samples, joined."""
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate([run_chunk(x[start : start + batch]) for start in range(0, len(x), batch)], axis=0)


def read_model_file(path: str | os.PathLike[str], what: str = "model file") -> bytes:
    """The bytes of a model file on disk (each runtime's ``load_file``), or one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found.")
    return path.read_bytes()


class Session(ABC):
    """A loaded model ready to run. Inputs and outputs are float arrays; quantization of int8
    inputs and outputs happens inside, with the scales stored in the file."""

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch ``x`` (float32, leading batch axis)."""

    @abstractmethod
    def invoke_once(self) -> None:
        """Run once on the input already set (what timing measures)."""

    threads: int = 1
    # Runtimes that run inference on their own worker threads (OpenVINO) say False: then this
    # thread's CPU time cannot tell a preempted run, and every run is kept.
    runs_on_caller_thread: bool = True

    def time(
        self, x: np.ndarray | None = None, runs: int = 100, warmup: int = 10, min_total_s: float = 0.2
    ) -> Timing:
        self.prepare(x)
        return time_calls(
            self.invoke_once,
            runs=runs,
            warmup=warmup,
            min_total_s=min_total_s,
            single_thread=self.threads == 1 and self.runs_on_caller_thread,
        )

    @abstractmethod
    def prepare(self, x: np.ndarray | None) -> None:
        """Set one sample (or zeros) as the input for ``invoke_once``."""


class Runtime(ABC):
    """A runtime installed here. ``convert`` makes its artifact, ``load`` opens it (by default
    ``session_class(artifact.data, threads)``; a runtime whose files have several parts, or whose
    sessions take other arguments, overrides ``load``)."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]]
    session_class: ClassVar[Callable[[bytes, int], Session]]

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def convert(self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None) -> Artifact:
        """Convert a tf_keras model. ``representative`` (single samples, float32) calibrates int8."""

    def convert_for_profiling(
        self, model: Any, dtype: str, representative: Iterable[np.ndarray] | None = None
    ) -> Artifact:
        """Like ``convert``, for a file that is only timed (a table's block, never shipped): it
        must run exactly as ``convert``'s would, but may leave out what only a user of a shipped
        file needs. A first profile converts hundreds of blocks, so this is where it gets fast."""
        return self.convert(model, dtype, representative)

    def load(self, artifact: Artifact, threads: int = 1) -> Session:
        return self.session_class(artifact.data, threads)

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.dtypes:
            raise InputError(f"dtype: runtime {self.name} supports {list(self.dtypes)}, got {dtype!r}.")


# name -> "module:Class", imported on first use.
RUNTIMES: dict[str, str] = {
    "litert": "latency_models.runtimes.litert:LiteRT",
    "onnxruntime": "latency_models.runtimes.onnxruntime:OnnxRuntime",
    "openvino": "latency_models.runtimes.openvino:OpenVino",
    "tflm": "latency_models.runtimes.tflm:TFLiteMicro",
    "tvm": "latency_models.runtimes.tvm:TVM",
    "executorch": "latency_models.runtimes.executorch:ExecuTorch",
}


def get_runtime(name: str) -> Runtime:
    try:
        cls = load_registered(RUNTIMES, name, "runtime", "runtimes")
    except ModuleNotFoundError as e:
        raise InputError(f"runtime {name}: not available here ({e.name} is not installed).") from None
    return cls()
