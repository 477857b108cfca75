"""Measure latency on this machine: per-block tables (cached per runtime and machine) and whole
models, always through a real runtime's converted file and its interpreter."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Block, InputError, SearchSpace, TaskShape

from .host_cache import _fingerprint_id, _load_cached, cache_dir, locked, machine_fingerprint, table_path
from .runtimes import ModelNotRunnable, RepeatedTiming, Runtime, Timing, get_runtime, time_calls
from .table import DTYPES, INVOKE_KEY, OVERHEAD_KEY, PERSISTENT_KEY, Entry, LatencyTable, TableMeta

__all__ = [
    "BLOCK_TIMING",
    "MODEL_TIMING",
    "convert_runnable",
    "load_runnable",
    "cache_dir",
    "convert_blocks",
    "host_table",
    "invoke_overhead_from",
    "invoke_overhead_ms",
    "invoke_pair",
    "machine_fingerprint",
    "measure_archs",
    "measure_arenas",
    "predict_arena_bytes",
    "profile_blocks",
    "tflm_model_overhead_bytes",
    "time_interleaved",
    "time_session",
    "random_representative",
    "table_path",
]

# (runs, warmup, min_total_s). Blocks take micro- to milliseconds, so the floor on total time
# (not the run count) is what steadies their medians on a shared, noisy machine.
BLOCK_TIMING = (50, 10, 0.3)
MODEL_TIMING = (100, 10, 1.0)
# Whole files checked against a budget: several repeats of REPEAT_TIMING, interleaved across the
# files, so each figure comes with its repeat-to-repeat spread (``time_interleaved``).
REPEAT_TIMING = (50, 10, 0.3)
REPEATS = 5
REPRESENTATIVE_SAMPLES = 8
SAVE_EVERY = 16

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


def time_session(
    session: Any, sample: np.ndarray, timing: tuple[int, int, float], threads: int = 1
) -> Timing:
    """Time ``session`` on ``sample`` with ``(runs, warmup, min_total_s)``; preempted runs are
    dropped (see ``latency_models.runtimes.time_calls``)."""
    runs, warmup, min_total_s = timing
    session.prepare(sample)
    single = threads == 1 and getattr(session, "runs_on_caller_thread", True)
    return time_calls(
        session.invoke_once, runs=runs, warmup=warmup, min_total_s=min_total_s, single_thread=single
    )


def time_interleaved(
    sessions: Sequence[tuple[Any, np.ndarray]],
    repeats: int = REPEATS,
    timing: tuple[int, int, float] = REPEAT_TIMING,
    threads: int = 1,
) -> list[RepeatedTiming]:
    """Time every ``(session, sample)`` ``repeats`` times, round-robin (each round times every
    session once), so drift of the machine's speed during the measurement hits all alike; each
    result is the median of its repeats with their spread."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats: expected an int >= 1, got {repeats!r}.")
    rounds: list[list[Timing]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, (session, sample) in enumerate(sessions):
            rounds[i].append(time_session(session, sample, timing, threads))
    return [RepeatedTiming.of(r) for r in rounds]


# Converted block files, shared by runtimes that load the same .tflite (LiteRT and TFLite Micro):
# profiling both converts each block once. Keyed by space, block and dtype; a few MB at most.
_TFLITE_CACHE: dict[tuple[str, Block, str], Any] = {}
_TFLITE_RUNTIMES = ("litert", "tflm")


def _space_options(space: SearchSpace) -> dict[str, Any] | None:
    """Options that rebuild ``space`` by name in another process (checked), else None."""
    import dataclasses

    from search_spaces import get_space

    if not dataclasses.is_dataclass(space):
        return None
    options = {f.name: getattr(space, f.name) for f in dataclasses.fields(space) if f.init}
    try:
        options = json.loads(json.dumps(options))
        return options if get_space(space.name, options) == space else None
    except Exception:  # noqa: BLE001 - a space that cannot travel is converted in-process
        return None


def convert_blocks(
    space: SearchSpace,
    blocks: Sequence[Block],
    runtime: str,
    dtype: str,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict[Block, Any]:
    """Convert blocks for ``runtime`` in ``workers`` processes (default: one per core, at most
    4). Conversion is CPU work that does not need a quiet machine, unlike timing; doing it first,
    in parallel, roughly halves a first profile on 2 cores. Returns what the workers converted
    (possibly nothing: a space that cannot be rebuilt by name, a failed worker); the caller
    converts the rest itself."""
    import base64
    import dataclasses
    import subprocess
    import sys
    import threading

    from .runtimes import Artifact

    blocks = list(blocks)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers <= 1 or len(blocks) < 4 * workers:
        return {}
    options = _space_options(space)
    if options is None:
        return {}
    shares = [blocks[i::workers] for i in range(workers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = []
    for share in shares:
        proc = subprocess.Popen(
            [sys.executable, "-m", "latency_models._convert_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        job = {
            "space": space.name,
            "options": options,
            "blocks": [dataclasses.asdict(b) for b in share],
            "runtime": runtime,
            "dtype": dtype,
        }
        proc.stdin.write(json.dumps(job))  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        procs.append(proc)
    out: dict[Block, Any] = {}
    lock = threading.Lock()

    def collect(proc: Any, share: list[Block]) -> None:
        # One reader per worker: a worker blocked on a full pipe would stop converting.
        for line in proc.stdout:
            try:
                doc = json.loads(line)
                artifact = Artifact(runtime, dtype, base64.b64decode(doc["data"]))
                block = share[int(doc["i"])]
            except (ValueError, KeyError, IndexError, TypeError):
                break  # a garbled line: the rest of this share converts in-process
            with lock:
                out[block] = artifact
                if progress is not None:
                    progress(len(out), len(blocks))
        proc.wait()

    readers = [
        threading.Thread(target=collect, args=pair, daemon=True) for pair in zip(procs, shares, strict=True)
    ]
    try:
        for t in readers:
            t.start()
        for t in readers:
            t.join()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out


# Random weights (profiling and calibration models) can leave an activation zero on every
# calibration sample, whose int8 range LiteRT's XNNPACK then refuses; such a file is made again
# with other random weights, at most this many times in all.
RUNNABLE_TRIES = 4


def convert_runnable(
    rt: Runtime,
    make_model: Callable[[int], Any],
    dtype: str,
    representative: Any,
    tries: int = RUNNABLE_TRIES,
    profiling: bool = False,
) -> Any:
    """``rt.convert`` (``rt.convert_for_profiling`` with ``profiling``: a file only timed) of the
    model ``make_model(attempt)`` builds with random weights, checked by preparing it in the
    runtime (``load_runnable``)."""
    convert = rt.convert_for_profiling if profiling else rt.convert
    return load_runnable(
        rt, lambda attempt: convert(make_model(attempt), dtype, representative), tries=tries
    )[0]


def load_runnable(
    rt: Runtime, make: Callable[[int], Any], threads: int = 1, tries: int = RUNNABLE_TRIES
) -> tuple[Any, Any]:
    """(the file ``make(attempt)`` returns, its loaded session): a file the runtime refuses
    (``ModelNotRunnable``) is made again by ``make(attempt + 1)`` (other random weights, the same
    network), at most ``tries`` times in all."""
    for attempt in range(tries):
        artifact = make(attempt)
        try:
            return artifact, rt.load(artifact, threads=threads)
        except ModelNotRunnable as e:
            if attempt == tries - 1:
                raise ModelNotRunnable(f"{e} (the same with {tries} sets of random weights)") from None
    raise AssertionError("unreachable")


def _convert_block(
    space: SearchSpace, block: Block, rt: Runtime, dtype: str, fresh: bool = False
) -> tuple[Any, list[np.ndarray]]:
    """The block's file for ``rt`` (cached for the TFLite runtimes unless ``fresh``)."""
    key = (space.name, block, dtype)
    model = space.block_model(block)
    samples = random_representative(_model_input_shape(model))
    if rt.name in _TFLITE_RUNTIMES and key in _TFLITE_CACHE and not fresh:
        del model
        return replace(_TFLITE_CACHE[key], runtime=rt.name), samples
    try:
        artifact = rt.convert_for_profiling(model, dtype, samples if dtype == "int8" else None)
    finally:
        del model
        _clear_keras()
    if rt.name in _TFLITE_RUNTIMES:
        if len(_TFLITE_CACHE) > 2000:
            _TFLITE_CACHE.clear()
        _TFLITE_CACHE[key] = artifact
    return artifact, samples


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
    needs alone. Blocks are profiled one after another in key order, so a run is reproducible.
    """
    entries, _ = _profile(space, blocks, runtime, dtype, threads, progress, timing)
    return entries


def _profile(
    space: SearchSpace,
    blocks: Iterable[Block],
    runtime: str,
    dtype: str,
    threads: int,
    progress: Progress | None,
    timing: tuple[int, int, float],
    converted: dict[Block, Any] | None = None,
) -> tuple[dict[Block, Entry], dict[Block, int]]:
    """Entries, and for TFLM each block's persistent arena bytes (the part that adds up across
    a network's blocks, unlike the activation part)."""
    _check_threads(threads)
    rt = get_runtime(runtime)
    rt.check_dtype(dtype)
    todo = sorted(set(blocks), key=lambda b: b.key)
    out: dict[Block, Entry] = {}
    persistent: dict[Block, int] = {}
    for i, block in enumerate(todo):
        if progress is not None:
            progress(i, len(todo))
        if converted is not None and block in converted:
            artifact = replace(converted[block], runtime=rt.name)
            samples = random_representative(_input_shape_of(artifact, space, block))
        else:
            artifact, samples = _convert_block(space, block, rt, dtype)
        artifact, session = load_runnable(
            rt,
            lambda attempt, first=artifact, block=block: (
                first if attempt == 0 else _convert_block(space, block, rt, dtype, fresh=True)[0]
            ),
            threads=threads,
        )
        t = time_session(session, samples[0], timing, threads)
        use = _arena_use(rt, artifact)
        if use is not None:
            persistent[block] = use.tail
        memory = None if use is None else use.total
        out[block] = Entry(mean_ms=max(t.median_ms, 1e-6), std_ms=t.std_ms, count=t.runs, memory_bytes=memory)
    if progress is not None:
        progress(len(todo), len(todo))
    return out, persistent


def _input_shape_of(artifact: Any, space: SearchSpace, block: Block) -> tuple[int, ...]:
    """The input shape (no batch axis) of a converted block, read from its file where the
    runtime's format allows (TFLite), else from the block's model."""
    if artifact.runtime in _TFLITE_RUNTIMES or artifact.data[4:8] == b"TFL3":
        from .runtimes.litert import LiteRTSession

        session = LiteRTSession(artifact.data)
        return tuple(int(d) for d in session.input["shape"][1:])
    model = space.block_model(block)
    try:
        return _model_input_shape(model)
    finally:
        del model
        _clear_keras()


def _arena_use(rt: Runtime, artifact: Any) -> Any:
    """The arena a block needs, for runtimes that report it (TFLite Micro), else None."""
    fn = getattr(rt, "arena_use", None)
    return fn(artifact) if fn is not None else None


# -- TFLite Micro arena model ---------------------------------------------------------------------


def _conv_pair_and_chain(hw: int, c_in: int, c_out: int, kernel: int) -> tuple[Any, Any, Any]:
    """Two small conv models A (c_in -> c_out) and B (c_out -> c_out) and one model running A then
    B: what separate models pay once each and a chain pays once is ``f(A) + f(B) - f(A then B)``."""
    from search_spaces.backend import keras

    k = keras()

    def conv_model(c: int, name: str) -> Any:
        inputs = k.Input(shape=(hw, hw, c), batch_size=1)
        conv = k.layers.Conv2D(c_out, kernel, padding="same", name=f"{name}_conv")
        return k.Model(inputs, conv(inputs), name=name)

    a, b = conv_model(c_in, "a"), conv_model(c_out, "b")
    inputs = k.Input(shape=(hw, hw, c_in), batch_size=1)
    return a, b, k.Model(inputs, b(a(inputs)), name="ab")


def tflm_model_overhead_bytes() -> int:
    """Persistent bytes every separate TFLM model pays once (allocator structs, its input and
    output tensors): measured as ``tail(A) + tail(B) - tail(A then B)`` for two small convs."""
    from .runtimes.tflm import arena_use

    rt = get_runtime("tflm")
    tails = []
    for model in _conv_pair_and_chain(8, 4, 8, 3):
        artifact = rt.convert_for_profiling(model, "int8", random_representative(_model_input_shape(model)))
        tails.append(arena_use(artifact).tail)
    _clear_keras()
    return max(0, tails[0] + tails[1] - tails[2])


def invoke_overhead_ms(
    runtime: str, dtype: str, threads: int = 1, timing: tuple[int, int, float] = BLOCK_TIMING, rounds: int = 5
) -> float:
    """The fixed cost of one invoke on ``runtime``: ``t(A) + t(B) - t(A then B)`` for two tiny
    convolutions, median over interleaved rounds. Every block of a table was timed as its own
    model and paid it once; a whole network pays it once in all (``LatencyTable.price``)."""
    rt = get_runtime(runtime)
    sessions = [(rt.load(a, threads=threads), x) for a, x in invoke_pair(runtime, dtype)]
    diffs = []
    for _ in range(rounds):
        diffs.append(tuple(time_session(s, x, timing, threads).median_ms for s, x in sessions))
    return invoke_overhead_from(diffs)


def invoke_pair(runtime: str, dtype: str) -> list[tuple[Any, np.ndarray]]:
    """The converted files (and a sample each) of two tiny convolutions A and B and of A then
    B, whose timings give the per-invoke cost (``invoke_overhead_from``)."""
    rt = get_runtime(runtime)
    rt.check_dtype(dtype)
    out = []
    for model in _conv_pair_and_chain(2, 2, 4, 1):
        samples = random_representative(_model_input_shape(model))
        out.append((rt.convert_for_profiling(model, dtype, samples if dtype == "int8" else None), samples[0]))
    _clear_keras()
    return out


def invoke_overhead_from(rounds: Sequence[Sequence[float]]) -> float:
    """The per-invoke cost (ms) from rounds of ``(t(A), t(B), t(A then B))`` medians."""
    return max(0.0, float(np.median([ta + tb - tab for ta, tb, tab in rounds])))


def retime_blocks(
    space: SearchSpace,
    table: LatencyTable,
    runtime: str,
    dtype: str,
    threads: int = 1,
    n: int = 4,
    repeats: int = 3,
) -> list[tuple[float, RepeatedTiming]]:
    """Re-time ``n`` of ``table``'s blocks, spread over its latencies, as profiling timed them
    (converted again, about 0.2 s each; interleaved repeats): (the table's ms, the fresh timing)
    per block, to see whether a cached profile still holds. Empty when the space cannot build
    single blocks."""
    entries = sorted(
        ((b, e) for b, e in table.entries.items() if e.mean_ms > 0),
        key=lambda item: item[1].mean_ms,
    )
    n = min(n, len(entries))
    picked = [entries[int(round((i + 0.5) * len(entries) / n - 0.5))] for i in range(n)]
    rt = get_runtime(runtime)
    sessions = []
    try:
        for block, _ in picked:
            artifact, samples = _convert_block(space, block, rt, dtype)  # as profiling converts it
            sessions.append((rt.load(artifact, threads=threads), samples[0]))
    except NotImplementedError:
        return []
    fresh = time_interleaved(sessions, repeats, BLOCK_TIMING, threads=threads)
    return [(e.mean_ms, f) for (_, e), f in zip(picked, fresh, strict=True)]


def predict_arena_bytes(table: LatencyTable, blocks: Sequence[Block]) -> int:
    """TFLM arena bytes for a network of ``blocks`` from a ``tflm`` table (``LatencyTable.memory``)."""
    return table.memory(blocks)


def measure_arenas(space: SearchSpace, task: TaskShape, archs: Iterable[Hashable]) -> list[int]:
    """The arena bytes TFLM really allocates for each whole int8 network."""
    from .runtimes.tflm import arena_bytes

    rt = get_runtime("tflm")
    samples = random_representative(task.input_shape)
    out = []
    for arch in archs:
        model = space.build(arch, task)
        try:
            artifact = rt.convert(model, "int8", samples)
        finally:
            del model
            _clear_keras()
        out.append(arena_bytes(artifact))
    return out


def host_table(
    space: SearchSpace,
    task: TaskShape,
    blocks: Iterable[Block],
    runtime: str = "litert",
    dtype: str = "int8",
    threads: int = 1,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    timing: tuple[int, int, float] = BLOCK_TIMING,
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
    with locked(path):
        cached = _load_cached(path, meta)
        entries = dict(cached.entries) if cached is not None else {}
        extra = dict(cached.meta.extra) if cached is not None else dict(meta.extra)
        todo = sorted((b for b in wanted if b not in entries), key=lambda b: b.key)
        if INVOKE_KEY not in extra:
            extra[INVOKE_KEY] = invoke_overhead_ms(runtime, dtype, threads, timing)
            if entries and not todo:
                LatencyTable(replace(meta, extra=extra), entries).save(path)
        converted = convert_blocks(
            space,
            todo,
            runtime,
            dtype,
            progress=(lambda i, n: progress(0, n) if progress is not None and i == n else None),
        )
        # Saved in chunks: an interrupted profile keeps what it measured.
        for start in range(0, len(todo), SAVE_EVERY):
            chunk = todo[start : start + SAVE_EVERY]

            def chunk_progress(done: int, _total: int, start: int = start) -> None:
                if progress is not None:
                    progress(start + done, len(todo))

            new, persistent = _profile(
                space, chunk, runtime, dtype, threads, chunk_progress, timing, converted
            )
            entries.update(new)
            if persistent:
                extra[PERSISTENT_KEY] = {
                    **extra.get(PERSISTENT_KEY, {}),
                    **{b.key: v for b, v in persistent.items()},
                }
                if OVERHEAD_KEY not in extra:
                    extra[OVERHEAD_KEY] = tflm_model_overhead_bytes()
            LatencyTable(replace(meta, extra=extra), entries).save(path)
        if not todo and progress is not None:
            progress(0, 0)
    extra = {**extra, "input_shape": list(task.input_shape), "num_classes": task.num_classes}
    return LatencyTable(replace(meta, extra=extra), entries)


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
        out.append(time_session(session, samples[0], timing, threads))
    if progress is not None:
        progress(len(archs), len(archs))
    return out
