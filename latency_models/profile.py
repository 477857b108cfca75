"""Measure latency on this machine: per-block tables (cached per runtime and machine) and whole
models, always through a real runtime's converted file and its interpreter."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Block, InputError, SearchSpace, TaskShape

from .runtimes import Runtime, Timing, get_runtime
from .table import DTYPES, Entry, LatencyTable, TableMeta

__all__ = [
    "BLOCK_TIMING",
    "MODEL_TIMING",
    "cache_dir",
    "host_table",
    "machine_fingerprint",
    "measure_archs",
    "profile_blocks",
    "random_representative",
    "table_path",
]

# (runs, warmup, min_total_s). Blocks take micro- to milliseconds, so the floor on total time
# (not the run count) is what steadies their medians on a shared, noisy machine.
BLOCK_TIMING = (50, 10, 0.3)
MODEL_TIMING = (100, 10, 1.0)
REPRESENTATIVE_SAMPLES = 8

Progress = Callable[[int, int], None]


def random_representative(
    shape: Sequence[int], n: int = REPRESENTATIVE_SAMPLES, seed: int = 0
) -> list[np.ndarray]:
    """Random-normal calibration samples (no batch axis): latency does not depend on the weights'
    or activations' values, only on the shapes and the int8 kernels chosen."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(int(d) for d in shape)).astype(np.float32) for _ in range(n)]


def _check_threads(threads: int) -> None:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InputError(f"threads: expected an int >= 1, got {threads!r}.")


def _clear_keras() -> None:
    # Each conversion adds graphs to the default session; clearing keeps the 100th block as
    # fast to convert as the first.
    from search_spaces.backend import keras

    keras().backend.clear_session()


def _model_input_shape(model: Any) -> tuple[int, ...]:
    shape = model.inputs[0].shape
    return tuple(int(d) for d in shape[1:])


def profile_blocks(
    space: SearchSpace,
    blocks: Iterable[Block],
    runtime: str = "litert",
    dtype: str = "int8",
    threads: int = 1,
    progress: Progress | None = None,
    timing: tuple[int, int, float] = BLOCK_TIMING,
) -> dict[Block, Entry]:
    """Time each distinct block alone (its own tiny model) on ``runtime``.

    ``Entry.mean_ms`` holds the MEDIAN of the timed runs (what a table predicts), ``std_ms`` their
    spread and ``count`` the number of runs. On ``tflm`` ``memory_bytes`` is the arena the block
    needs. Blocks are profiled one after another in key order, so a run is reproducible.
    """
    _check_threads(threads)
    rt = get_runtime(runtime)
    rt.check_dtype(dtype)
    todo = sorted(set(blocks), key=lambda b: b.key)
    runs, warmup, min_total_s = timing
    out: dict[Block, Entry] = {}
    for i, block in enumerate(todo):
        if progress is not None:
            progress(i, len(todo))
        model = space.block_model(block)
        samples = random_representative(_model_input_shape(model))
        try:
            artifact = rt.convert(model, dtype, samples if dtype == "int8" else None)
        finally:
            del model
            _clear_keras()
        session = rt.load(artifact, threads=threads)
        t = session.time(samples[0], runs=runs, warmup=warmup, min_total_s=min_total_s)
        memory = _arena_bytes(rt, artifact)
        out[block] = Entry(mean_ms=max(t.median_ms, 1e-6), std_ms=t.std_ms, count=t.runs, memory_bytes=memory)
    if progress is not None:
        progress(len(todo), len(todo))
    return out


def _arena_bytes(rt: Runtime, artifact: Any) -> int | None:
    """The arena bytes a block needs, for runtimes that report them (TFLite Micro)."""
    fn = getattr(rt, "arena_bytes", None)
    return int(fn(artifact)) if fn is not None else None


# -- the host's persistent table cache ------------------------------------------------------------
def cache_dir() -> Path:
    """``$EDGE_NAS_CACHE``, else ``$XDG_CACHE_HOME/edge-nas/tables``, else ``~/.cache/edge-nas/tables``."""
    if os.environ.get("EDGE_NAS_CACHE"):
        return Path(os.environ["EDGE_NAS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edge-nas" / "tables"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def machine_fingerprint() -> dict[str, str]:
    """What makes one host's timings differ from another's: OS, architecture and CPU model."""
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": str(os.cpu_count() or 0),
    }


def _fingerprint_id(fp: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def table_path(
    space: SearchSpace, runtime: str, dtype: str, threads: int, directory: Path | None = None
) -> Path:
    """The cache file of one (space, runtime, runtime version, dtype, threads, machine).

    The space is part of the key because two spaces may build different models for blocks with
    the same fields (e.g. their squeeze-excite widths differ).
    """
    rt = get_runtime(runtime)
    fp = _fingerprint_id(machine_fingerprint())
    name = f"{_safe(space.name)}-{rt.name}-{_safe(rt.version())}-{dtype}-t{threads}-{fp}.json"
    return (directory if directory is not None else cache_dir()) / name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock next to ``path`` so two processes do not profile the same blocks twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic writes still keep the file whole
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load_cached(path: Path, meta: TableMeta) -> dict[Block, Entry]:
    if not path.is_file():
        return {}
    try:
        table = LatencyTable.load(path)
    except InputError:
        # A cache is ours to rebuild: a damaged file costs a re-profile, not a failed search.
        return {}
    if (table.meta.runtime, table.meta.runtime_version, table.meta.dtype, table.meta.threads) != (
        meta.runtime,
        meta.runtime_version,
        meta.dtype,
        meta.threads,
    ):
        return {}
    return dict(table.entries)


def host_table(
    space: SearchSpace,
    task: TaskShape,
    blocks: Iterable[Block],
    runtime: str = "litert",
    dtype: str = "int8",
    threads: int = 1,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> LatencyTable:
    """This machine's table for ``blocks``: profiles only the blocks the cache lacks, merges them
    in and saves atomically, so asking again profiles nothing. Returns the whole cached table
    (a superset of ``blocks``) with device ``host``."""
    _check_threads(threads)
    if dtype not in DTYPES:
        raise InputError(f"dtype: a host table supports {list(DTYPES)}, got {dtype!r}.")
    rt = get_runtime(runtime)
    rt.check_dtype(dtype)
    fp = machine_fingerprint()
    path = table_path(space, runtime, dtype, threads, cache_dir)
    meta = TableMeta(
        device="host",
        runtime=rt.name,
        runtime_version=rt.version(),
        dtype=dtype,
        threads=threads,
        source=f"measured here by edge-nas profile_blocks ({space.name})",
        extra={"machine": fp, "fingerprint": _fingerprint_id(fp), "space": space.name},
    )
    wanted = list(dict.fromkeys(blocks))
    with _locked(path):
        entries = _load_cached(path, meta)
        todo = [b for b in wanted if b not in entries]
        if todo:
            entries.update(profile_blocks(space, todo, runtime, dtype, threads, progress))
            LatencyTable(meta, entries).save(path)
        elif progress is not None:
            progress(0, 0)
    extra = {**meta.extra, "input_shape": list(task.input_shape), "num_classes": task.num_classes}
    return LatencyTable(TableMeta(**{**_meta_fields(meta), "extra": extra}), entries)


def _meta_fields(meta: TableMeta) -> dict[str, Any]:
    return {
        "device": meta.device,
        "runtime": meta.runtime,
        "runtime_version": meta.runtime_version,
        "dtype": meta.dtype,
        "threads": meta.threads,
        "source": meta.source,
    }


# -- whole models ---------------------------------------------------------------------------------
def measure_archs(
    space: SearchSpace,
    task: TaskShape,
    archs: Iterable[Hashable],
    runtime: str = "litert",
    dtype: str = "int8",
    threads: int = 1,
    representative: Sequence[np.ndarray] | None = None,
    progress: Progress | None = None,
    timing: tuple[int, int, float] = MODEL_TIMING,
) -> list[Timing]:
    """End-to-end latency of each architecture: build (random weights), convert, load, time."""
    _check_threads(threads)
    rt = get_runtime(runtime)
    rt.check_dtype(dtype)
    archs = list(archs)
    samples = list(representative) if representative is not None else random_representative(task.input_shape)
    if not samples:
        raise InputError("representative: expected at least one sample, got none.")
    runs, warmup, min_total_s = timing
    out: list[Timing] = []
    for i, arch in enumerate(archs):
        if progress is not None:
            progress(i, len(archs))
        model = space.build(arch, task)
        try:
            artifact = rt.convert(model, dtype, samples if dtype == "int8" else None)
        finally:
            del model
            _clear_keras()
        session = rt.load(artifact, threads=threads)
        out.append(session.time(samples[0], runs=runs, warmup=warmup, min_total_s=min_total_s))
    if progress is not None:
        progress(len(archs), len(archs))
    return out
