"""Whole-model measurements that correct a run's latency model: the calibration models (cached
beside the host profile and re-timed, with the drift that finds), the models measured near the
latency budget, and the guard band they set."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import SearchSpace

from .search import SAMPLING_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    from .config import Constraints, RunConfig
    from .data import TaskData
    from .latency_model import LatencyModel


def _calibration_archs(space: SearchSpace, n: int, seed: int) -> list[Hashable]:
    """The cheapest and the largest choice of every decision, then random ones."""
    rng = random.Random(seed + 1)
    archs: list[Hashable] = [a for a in (space.cheapest(), space.largest()) if a is not None]
    while len(archs) < n:
        archs.append(space.random(rng))
    return list(dict.fromkeys(archs))[:n]


# Drift of a cached profile: re-timed calibration models whose median ratio to the cached
# timings moves by more than this, or than 3x the fresh repeats' spread, say the machine changed.
DRIFT_FLOOR = 0.05
CALIBRATION_REPEATS = 3


def _calibration_path(config: RunConfig, space: SearchSpace, task: Any, predictor: Any) -> tuple[Path, str]:
    import hashlib

    from latency_models.profile import cache_dir
    from latency_models.runtimes import get_runtime

    lat = config.latency
    rt = get_runtime(lat.runtime)
    key = json.dumps(
        [
            "v3-files",
            space.name,
            dict(config.space.options),
            list(task.input_shape),
            task.num_classes,
            lat.runtime,
            rt.version(),
            lat.dtype,
            lat.threads,
            lat.calibration_models,
            predictor.table.meta.extra.get("fingerprint", ""),
        ],
        sort_keys=True,
    )
    return cache_dir() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json", key


def _calibrate(
    config: RunConfig, space: SearchSpace, data: TaskData, predictor: Any, status: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Whole-model measurements that fit the overhead correction and the size model, and the
    drift found when the cached ones are re-timed.

    The converted calibration files are cached beside the host table. A later run re-times
    them (interleaved repeats) instead of trusting the old timings: shared machines change speed
    under you, and a table that was right an hour ago can be 10-40% off now. The fresh timings
    are what the correction is fitted on; the drift against the cached ones is reported."""
    from latency_models.profile import retime_blocks, time_interleaved
    from latency_models.runtimes import Artifact, get_runtime
    from latency_models.table import write_atomic

    lat = config.latency
    n = lat.calibration_models
    if n == 0:
        return [], None
    rt = get_runtime(lat.runtime)
    path, key = _calibration_path(config, space, data.shape, predictor)
    sample = data.inputs(data.x_train[:1])[0]
    cached = _load_calibration(path, key)
    if cached is not None:
        records, files = cached
        status(f"re-timing {len(records)} cached calibration models against the cached profile")
        sessions = [(rt.load(Artifact(rt.name, lat.dtype, b), threads=lat.threads), sample) for b in files]
        fresh = time_interleaved(sessions, CALIBRATION_REPEATS, threads=lat.threads)
        blocks = retime_blocks(
            space, predictor.table, lat.runtime, lat.dtype, lat.threads, REFERENCE_BLOCKS, CALIBRATION_REPEATS
        )
        drift = _drift(records, fresh, blocks)
        if drift["drifted"]:
            status(f"latency profile drifted: {drift['message']}")
        now = [
            {**r, "latency_ms": t.median_ms, "spread_ms": t.spread_ms, "cached_latency_ms": r["latency_ms"]}
            for r, t in zip(records, fresh, strict=True)
        ]
        return now, drift
    archs = _calibration_archs(space, n, config.search.seed)
    out, artifacts = _measure_models(
        config,
        space,
        data,
        archs,
        sample,
        first_seed=0,
        before_each=lambda i: status(f"calibrating the latency and size models: model {i + 1}/{len(archs)}"),
    )
    for i, a in enumerate(artifacts):
        write_atomic(path.with_name(f"{path.stem}-{i}.bin"), a.data)
    write_atomic(path, json.dumps({"key": key, "models": out}, indent=1))
    return out, None


def _measure_models(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    archs: Sequence[Hashable],
    sample: Any,
    first_seed: int,
    before_each: Callable[[int], None] = lambda i: None,
    timed_only: bool = False,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each of ``archs`` built with trained-looking weights (seeds from ``first_seed``), converted
    for the run's runtime (a file the runtime refuses is made again from other weights:
    ``load_runnable``) and the files timed interleaved on ``sample`` (None: the first
    representative input). Returns one record per architecture (arch, latency_ms, spread_ms,
    size_bytes) and the converted files. ``timed_only`` files are converted as profiled blocks
    are (``convert_for_profiling``: timed the same, 8x faster to make, but without the shipped
    file's signature), so their ``size_bytes`` is None: no size model is fitted on them."""
    from latency_models.profile import load_runnable, time_interleaved
    from latency_models.runtimes import get_runtime
    from search_spaces.weights import like_trained

    lat = config.latency
    rt = get_runtime(lat.runtime)
    rep = list(data.inputs(data.x_train[:64]))
    convert = rt.convert_for_profiling if timed_only else rt.convert
    rep_or_none = rep if lat.dtype == "int8" else None
    loaded = []
    for i, arch in enumerate(archs):
        before_each(i)
        make = like_trained(space, arch, data.shape, seed=first_seed + i)
        loaded.append(
            load_runnable(rt, lambda attempt, make=make: convert(make(attempt), lat.dtype, rep_or_none))
        )
    artifacts = [a for a, _ in loaded]
    # ``load_runnable`` checked each file in a session at one thread: timed as it is when the run
    # times at one thread too, else the file is loaded again at the run's thread count.
    x = rep[0] if sample is None else sample
    sessions = [(s if lat.threads == 1 else rt.load(a, threads=lat.threads), x) for a, s in loaded]
    timings = time_interleaved(sessions, CALIBRATION_REPEATS, threads=lat.threads)
    records = [
        {
            "arch": str(arch),
            "latency_ms": t.median_ms,
            "spread_ms": t.spread_ms,
            "size_bytes": None if timed_only else a.size_bytes,
        }
        for arch, a, t in zip(archs, artifacts, timings, strict=True)
    ]
    return records, artifacts


# Whole models measured near the latency budget on every run, so the correction is right where
# the search decides (a line fitted over the whole space can be 10-20% off at the budget).
NEAR_BUDGET_MODELS = 4


def _near_budget_calibration(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    model: LatencyModel,
    budget_ms: float,
    status: Callable[[str], None],
) -> LatencyModel:
    """Measure NEAR_BUDGET_MODELS random architectures predicted at 0.85-1.15x ``budget_ms``
    (fresh, never cached, converted for timing only) and re-fit the correction with them."""
    lat = config.latency
    if lat.device != "host" or not model.calibration or not hasattr(model.predictor, "with_correction"):
        return model
    rng = random.Random(1234)
    pool = list(dict.fromkeys(space.random(rng) for _ in range(space.affordable(2000, SAMPLING_SECONDS))))
    known = {c["arch"] for c in model.calibration}
    pool = [a for a in pool if str(a) not in known]
    preds = model.predictor.predict(pool)
    picked: list[Hashable] = []
    for target in np.linspace(0.88, 1.12, NEAR_BUDGET_MODELS) * budget_ms:
        order = np.argsort(np.abs(preds - target))
        choice = next((pool[i] for i in order if pool[i] not in picked), None)
        if choice is not None and abs(preds[pool.index(choice)] / budget_ms - 1) <= 0.15:
            picked.append(choice)
    if not picked:
        return model
    status(f"measuring {len(picked)} models near the latency budget ({budget_ms:.4g} ms)")
    measured, _ = _measure_models(config, space, data, picked, None, first_seed=100, timed_only=True)
    records = [
        {**r, "near_budget": True, "predicted_before_ms": float(model.predictor.predict([arch])[0])}
        for r, arch in zip(measured, picked, strict=True)
    ]
    return model.with_calibration([*model.calibration, *records], space, data.shape)


# The guard band's bounds (fractions of the latency budget).
GUARD_MIN, GUARD_MAX = 0.02, 0.20


# The guard band may not screen out more than this: at least this share of random architectures
# that meet the other budgets must stay under the guarded latency budget (a space of a few
# microsecond networks on a noisy machine can measure errors that would leave nothing to train).
GUARD_KEEPS_SHARE = 0.05
GUARD_SAMPLES = 1000


def _guard_leaving_candidates(
    space: SearchSpace, screen: Any, budgets: Constraints, guard: float, say: Callable[[str], None]
) -> float:
    """``guard``, narrowed if needed so that the guarded latency budget keeps candidates."""
    budget = budgets.max_latency_ms
    if budget is None or guard <= 0:
        return guard
    rng = random.Random(1)
    archs = [space.random(rng) for _ in range(space.affordable(GUARD_SAMPLES, SAMPLING_SECONDS))]
    preds = replace(screen, constraints=replace(budgets, max_latency_ms=None))(archs)
    latencies = np.sort([p.latency_ms for p in preds if p.feasible and p.latency_ms <= budget])
    need = int(np.ceil(GUARD_KEEPS_SHARE * len(archs)))
    if len(latencies) < need:  # the budget itself keeps fewer: keep what it keeps
        return 0.0 if len(latencies) == 0 else min(guard, max(0.0, 1.0 - latencies[-1] / budget))
    widest = max(0.0, 1.0 - float(latencies[need - 1]) / budget)
    if widest < guard:
        say(
            f"latency guard narrowed from {guard:.0%} to {widest:.0%} so that {GUARD_KEEPS_SHARE:.0%} of "
            "random architectures stay under the guarded budget"
        )
        return widest
    return guard


def _latency_guard(model: LatencyModel) -> float:
    """How far under the budget a prediction must be for its file to be expected to fit: the
    worst relative error of the fitted model on the models measured near the budget, plus
    ``verify.SPREAD_FACTOR`` times their median repeat spread (what verification demands)."""
    from .verify import SPREAD_FACTOR

    near = [c for c in model.calibration if c.get("near_budget")]
    if not near:
        return 0.0
    archs = [c["arch"] for c in near]
    space = model.predictor._space() if hasattr(model.predictor, "_space") else None
    if space is None:
        return 0.0
    predicted = model.predictor.predict([space.parse(a) for a in archs])
    errors = [abs(p / c["latency_ms"] - 1.0) for p, c in zip(predicted, near, strict=True)]
    spread = float(np.median([c["spread_ms"] / c["latency_ms"] for c in near]))
    return float(min(GUARD_MAX, max(GUARD_MIN, max(errors) + SPREAD_FACTOR * spread)))


def _load_calibration(path: Path, key: str) -> tuple[list[dict[str, Any]], list[bytes]] | None:
    """The cached records and files, or None when missing or damaged (a cache is ours to rebuild)."""
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") != key:
            return None
        records = list(cached["models"])
        files = [path.with_name(f"{path.stem}-{i}.bin").read_bytes() for i in range(len(records))]
        if not records or not all(isinstance(r.get("latency_ms"), (int, float)) for r in records):
            return None
        return records, files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# Blocks of the cached table re-timed on every run beside the calibration models (whole models
# alone cannot tell a stale table from a changed per-invoke cost).
REFERENCE_BLOCKS = 4


def _drift(
    records: Sequence[dict[str, Any]], fresh: Sequence[Any], blocks: Sequence[tuple[float, Any]] | None = None
) -> dict[str, Any]:
    """How far re-timed calibration models (and reference blocks) moved from their cached
    timings. Either beyond its threshold (the floor, or 3x the repeats' spread) is drift."""
    ratios = [t.median_ms / r["latency_ms"] - 1.0 for r, t in zip(records, fresh, strict=True)]
    spreads = [t.relative_spread for t in fresh] + [
        r["spread_ms"] / r["latency_ms"] for r in records if r.get("spread_ms") is not None
    ]
    median = float(np.median(ratios))
    threshold = max(DRIFT_FLOOR, 3.0 * float(np.median(spreads)))
    parts = [("calibration models", len(ratios), median, ratios, threshold)]
    block_doc = None
    if blocks:
        b_ratios = [timing.median_ms / cached - 1.0 for cached, timing in blocks]
        b_median = float(np.median(b_ratios))
        b_threshold = max(
            DRIFT_FLOOR, 3.0 * float(np.median([timing.relative_spread for _, timing in blocks]))
        )
        parts.append(("reference blocks", len(b_ratios), b_median, b_ratios, b_threshold))
        block_doc = {
            "count": len(b_ratios),
            "median": b_median,
            "per_block": b_ratios,
            "threshold": b_threshold,
            "drifted": abs(b_median) > b_threshold,
        }
    moved = [p for p in parts if abs(p[2]) > p[4]]
    drifted = bool(moved)
    if drifted:
        message = "; ".join(
            f"the {n} {what} now run {abs(m):.1%} {'slower' if m > 0 else 'faster'} than when profiled "
            f"(median; each {min(r):+.1%} to {max(r):+.1%}), beyond the profile's spread (+-{th:.1%})"
            for what, n, m, r, th in moved
        )
        message += "; the correction is re-fitted on the fresh timings"
    else:
        message = ", ".join(
            f"{what} within {abs(m):.1%} of the cached profile (threshold {th:.1%})"
            for what, _, m, _, th in parts
        )
    return {
        "models": len(ratios),
        "median": median,
        "per_model": ratios,
        "threshold": threshold,
        "blocks": block_doc,
        "drifted": drifted,
        "action": "correction re-fitted on fresh timings",
        "message": message,
    }
