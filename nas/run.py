"""``nas run``: the whole job. Load the task, build the device's latency model, search under the
budgets, retrain the winner, compress and export it, re-measure the exported file, report.

Everything is written into the output folder; files appear only when complete (temp + rename),
and the study (``study.db``) is Optuna's own SQLite storage, so a killed run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import FatalError, InputError, SearchSpace, TrialFailedError, get_space

from .config import Constraints, RunConfig
from .data import TaskData, load_task
from .search import SAMPLING_SECONDS

if TYPE_CHECKING:  # pragma: no cover
    from .guard import RunGuard

__all__ = [
    "LatencyModel",
    "NothingFitsError",
    "build_latency_model",
    "finish_winner",
    "prepare_budgets",
    "run",
    "study_name",
]

log = logging.getLogger("nas")
REPORT_VERSION = 1


@dataclass(frozen=True)
class LatencyModel:
    """The device's models: latency predictor, size model, optional memory table. ``calibration``
    holds the whole-model measurements the correction was fitted on, ``drift`` what re-timing
    a cached profile's calibration models found this run (None: nothing to compare)."""

    predictor: Any
    size: Any
    memory_table: Any
    description: str
    calibration: list[dict[str, Any]]
    drift: dict[str, Any] | None = None

    def refined(self, measured: Sequence[tuple[str, float]], space: SearchSpace) -> LatencyModel:
        """The same model with its correction re-fitted on the calibration models plus
        ``measured`` (arch string, ms) whole-file measurements (a table predictor only)."""
        if not measured or not hasattr(self.predictor, "with_correction") or not self.calibration:
            return self
        pairs = [(c["arch"], c["latency_ms"]) for c in self.calibration] + list(measured)
        archs = [space.parse(a) for a, _ in pairs]
        return replace(self, predictor=self.predictor.with_correction(archs, [m for _, m in pairs]))

    def with_calibration(
        self, records: Sequence[dict[str, Any]], space: SearchSpace, task: Any
    ) -> LatencyModel:
        """The model re-fitted (latency correction and size model) on ``records``."""
        from latency_models.size import SizeModel

        archs = [space.parse(c["arch"]) for c in records]
        sized = [(a, c["size_bytes"]) for a, c in zip(archs, records, strict=True) if c.get("size_bytes")]
        size = SizeModel.fit(
            [space.size_terms(a, task) for a, _ in sized], [b for _, b in sized], self.size.dtype
        )
        predictor = self.predictor
        if hasattr(predictor, "with_correction"):
            predictor = predictor.with_correction(archs, [c["latency_ms"] for c in records])
        return replace(self, predictor=predictor, size=size, calibration=list(records))


def study_name(config: RunConfig) -> str:
    return f"nas-{config.space.name}-{config.task.name}"


def _calibration_archs(space: SearchSpace, n: int, seed: int) -> list[Hashable]:
    """The cheapest and the largest choice of every decision, then random ones."""
    rng = random.Random(seed + 1)
    archs: list[Hashable] = []
    for pick in (min, max):
        try:
            archs.append(space.from_params({c.name: pick(c.values, key=_order) for c in space.choices()}))
        except (InputError, TypeError):
            pass
    while len(archs) < n:
        archs.append(space.random(rng))
    return list(dict.fromkeys(archs))[:n]


def _order(value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return float(value)
    return {"relu6": 0.0, "hswish": 1.0}.get(str(value), 0.5)


def build_latency_model(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    status: Callable[[str], None] = lambda s: None,
    measured: Sequence[tuple[str, float]] = (),
) -> LatencyModel:
    """Host: profile (or reuse) this machine's table, re-time its calibration models, then fit
    the whole-model overhead and the size model on them (and on ``measured``, files a study
    verified). Otherwise load the user's table or predictor."""
    from latency_models.predictor import TablePredictor, load_predictor
    from latency_models.size import SizeModel
    from latency_models.table import LatencyTable

    lat = config.latency
    task = data.shape
    if lat.device != "host":
        if lat.predictor:
            predictor = load_predictor(lat.predictor)
            if predictor.space != space.name:
                raise InputError(
                    f"latency.predictor: predicts space {predictor.space!r}, but the run searches {space.name!r}."
                )
            return LatencyModel(predictor, SizeModel(lat.dtype), None, f"predictor {lat.predictor}", [])
        table = LatencyTable.load(lat.table)
        predictor = TablePredictor(
            space=space.name,
            device=lat.device,
            table=table,
            task=task,
            space_options=dict(config.space.options),
            strict=lat.strict,
        )
        description = f"table {lat.table}"
        if lat.strict:
            _check_covered(space, table, task)
        else:
            blocks = space.all_blocks(task)
            missing = table.missing(blocks) if blocks is not None else []
            if missing:
                description += (
                    f" ({len(missing)} of {len(set(blocks or []))} blocks of the space extrapolated)"
                )
                status(
                    f"latency table {lat.table}: {len(missing)} of {len(set(blocks or []))} blocks of the space "
                    "are not in it; priced by the per-kind model fitted on its entries (latency.strict refuses)"
                )
        memory = table if all(e.memory_bytes is not None for e in table.entries.values()) else None
        model = LatencyModel(predictor, SizeModel(lat.dtype), memory, description, [])
        records = _table_calibration(table, space, task, lat.table, status)
        return model.with_calibration(records, space, task) if records else model

    from latency_models.profile import blocks_to_profile

    blocks, complete = blocks_to_profile(space, task)
    if not complete:
        status(
            f"space {space.name} cannot list every block: profiling the {len(blocks)} blocks of its extreme "
            "and random architectures; blocks outside them are priced by the per-kind model fitted on these"
        )
    predictor = _host_predictor(config, space, task, blocks, status)
    calibration, drift = _calibrate(config, space, data, predictor, status)
    if drift is not None and drift["drifted"] and lat.on_drift == "reprofile":
        status(f"re-profiling this machine: {drift['message']}")
        _forget_host_profile(config, space, predictor)
        predictor = _host_predictor(config, space, task, blocks, status)
        calibration, _ = _calibrate(config, space, data, predictor, status)
        drift = {**drift, "action": "re-profiled"}
    archs = [space.parse(c["arch"]) for c in calibration]
    size = SizeModel.fit(
        [space.size_terms(a, task) for a in archs], [c["size_bytes"] for c in calibration], lat.dtype
    )
    memory = (
        predictor.table if all(e.memory_bytes is not None for e in predictor.table.entries.values()) else None
    )
    model = LatencyModel(
        predictor,
        size,
        memory,
        f"host profile ({lat.runtime} {lat.dtype}, {lat.threads} thread)"
        + ("" if complete else f"; {len(blocks)} sampled blocks, the others extrapolated"),
        calibration,
        drift,
    )
    if calibration:
        model = replace(
            model,
            predictor=predictor.with_correction(archs, [c["latency_ms"] for c in calibration]),
        )
    return model.refined(measured, space)


def _host_predictor(
    config: RunConfig, space: SearchSpace, task: Any, blocks: Any, status: Callable[[str], None]
) -> Any:
    from latency_models.predictor import TablePredictor
    from latency_models.profile import host_table

    lat = config.latency
    status(
        f"host latency table: {len(blocks)} distinct blocks ({lat.runtime} {lat.dtype}, {lat.threads} thread)"
    )
    table = host_table(
        space,
        task,
        blocks,
        lat.runtime,
        lat.dtype,
        lat.threads,
        progress=lambda i, n: status(f"profiling block {i}/{n}") if n and i % 20 == 0 else None,
    )
    return TablePredictor(
        space=space.name,
        device="host",
        table=table,
        task=task,
        space_options=dict(config.space.options),
        provenance={
            "table": "host profile",
            "runtime": lat.runtime,
            "dtype": lat.dtype,
            "threads": lat.threads,
        },
    )


def _forget_host_profile(config: RunConfig, space: SearchSpace, predictor: Any) -> None:
    """Delete this machine's cached table and calibration for the run's space and runtime."""
    from latency_models.profile import table_path

    lat = config.latency
    table_path(space, lat.runtime, lat.dtype, lat.threads).unlink(missing_ok=True)
    path = _calibration_path(config, space, predictor.task, predictor)[0]
    for p in [path, *path.parent.glob(path.stem + "-*.bin")]:
        p.unlink(missing_ok=True)


def _table_calibration(
    table: Any, space: SearchSpace, task: Any, where: str, status: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The whole-model measurements a device table carries (``nas latency import --kit``), on
    which the overhead correction and the size model are fitted as for the host; none when the
    table has none or was measured for another input than the run's task."""
    from latency_models.table import CALIBRATION_KEY

    records = table.meta.extra.get(CALIBRATION_KEY)
    if not records:
        return []
    shape, classes = table.meta.extra.get("input_shape"), table.meta.extra.get("num_classes")
    if (shape is not None and tuple(shape) != tuple(task.input_shape)) or (
        classes is not None and classes != task.num_classes
    ):
        status(
            f"latency table {where}: its calibration models were measured for input {shape} and "
            f"{classes} classes, the run's task is {list(task.input_shape)} and {task.num_classes}: "
            "not used (no whole-model correction)"
        )
        return []
    for i, r in enumerate(records):
        try:
            space.parse(r["arch"])
        except InputError as e:
            raise InputError(f"{where}: extra.{CALIBRATION_KEY}[{i}]: {e}") from None
    status(f"latency table {where}: whole-model correction fitted on its {len(records)} calibration models")
    return [dict(r) for r in records]


def _check_covered(space: SearchSpace, table: Any, task: Any) -> None:
    blocks = space.all_blocks(task)
    if blocks is None:
        return
    missing = table.missing(blocks)
    if missing:
        table.lookup(missing[0])  # raises MissingEntryError naming the block and the nearest entries


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
    from latency_models.profile import convert_runnable, retime_blocks, time_interleaved
    from latency_models.runtimes import Artifact, get_runtime
    from latency_models.table import write_atomic
    from search_spaces.weights import like_trained

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
    rep = list(data.inputs(data.x_train[:64]))
    artifacts = []
    for i, arch in enumerate(archs):
        status(f"calibrating the latency and size models: model {i + 1}/{len(archs)}")
        artifacts.append(
            convert_runnable(
                rt,
                like_trained(space, arch, data.shape, seed=i),
                lat.dtype,
                rep if lat.dtype == "int8" else None,
            )
        )
    sessions = [(rt.load(a, threads=lat.threads), sample) for a in artifacts]
    timings = time_interleaved(sessions, CALIBRATION_REPEATS, threads=lat.threads)
    out = [
        {
            "arch": str(arch),
            "latency_ms": t.median_ms,
            "spread_ms": t.spread_ms,
            "size_bytes": a.size_bytes,
        }
        for arch, a, t in zip(archs, artifacts, timings, strict=True)
    ]
    for i, a in enumerate(artifacts):
        write_atomic(path.with_name(f"{path.stem}-{i}.bin"), a.data)
    write_atomic(path, json.dumps({"key": key, "models": out}, indent=1))
    return out, None


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
    (fresh, never cached) and re-fit the correction with them. They are converted as profiled
    blocks are (``convert_for_profiling``: timed the same, 8x faster to make, but without the
    shipped file's signature), so their sizes do not enter the size model."""
    from latency_models.profile import convert_runnable, time_interleaved
    from latency_models.runtimes import get_runtime
    from search_spaces.weights import like_trained

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
    rt = get_runtime(lat.runtime)
    rep = list(data.inputs(data.x_train[:64]))
    artifacts = []
    for i, arch in enumerate(picked):
        artifacts.append(
            convert_runnable(
                rt,
                like_trained(space, arch, data.shape, seed=100 + i),
                lat.dtype,
                rep if lat.dtype == "int8" else None,
                profiling=True,
            )
        )
    sessions = [(rt.load(a, threads=lat.threads), rep[0]) for a in artifacts]
    timings = time_interleaved(sessions, CALIBRATION_REPEATS, threads=lat.threads)
    records = [
        {
            "arch": str(arch),
            "latency_ms": t.median_ms,
            "spread_ms": t.spread_ms,
            "size_bytes": None,  # a profiling file: no signature, a little smaller than shipped
            "near_budget": True,
            "predicted_before_ms": float(model.predictor.predict([arch])[0]),
        }
        for arch, a, t in zip(picked, artifacts, timings, strict=True)
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


def open_storage(url: str) -> Any:
    """Optuna storage for ``url``. SQLite files run in WAL mode with normal sync: every
    ask/tell is its own transaction, and this makes the driver's bookkeeping ~2.5x faster
    while a killed process still loses nothing committed."""
    import optuna

    if not url.startswith("sqlite:///"):
        return url
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with it
    return storage


def _open_study(config: RunConfig, out_dir: Path, storage: str | None, resume: bool, sampler: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage or f"sqlite:///{out_dir / 'study.db'}"
    name = study_name(config)
    try:
        existing = optuna.study.get_all_study_names(url)
    except Exception as e:  # noqa: BLE001 - any storage failure is the user's URL
        from .guard import write_failure

        if storage is None and write_failure(e):
            raise  # our own study.db on a full or read-only disk: not a bad URL
        raise InputError(
            f"--storage: cannot open {url!r} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})."
        ) from None
    if name in existing and not resume:
        raise InputError(
            f"{url}: study {name!r} already exists; rerun with --resume to continue it, or choose a new --out."
        )
    study = optuna.create_study(
        storage=open_storage(url),
        study_name=name,
        directions=["maximize", "minimize"],
        sampler=sampler,
        load_if_exists=True,
    )
    import warnings

    with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5; it is what we want
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "latency_ms"])
    if not study.user_attrs.get("config"):
        study.set_user_attr("config", config.as_dict())
        study.set_user_attr("format_version", REPORT_VERSION)
    return study


def exact_size_fn(
    space: SearchSpace, data: TaskData, dtype: str, options: dict[str, Any] | None = None
) -> Callable[[Hashable], int]:
    """Size of the exported file of ``arch``, by converting it with trained-looking weights (the
    size of a TFLite file does not depend on the weights' values, only on their layout). With the
    space's ``options``, sizes are kept on disk beside the host profile, so a later run of the
    same space and task converts none twice (a conversion takes a second or two)."""
    import hashlib
    from importlib.metadata import version

    from latency_models.profile import cache_dir
    from latency_models.runtimes import get_runtime
    from latency_models.table import write_atomic
    from search_spaces.backend import keras
    from search_spaces.weights import randomize_like_trained

    rt = get_runtime("litert")
    rep = list(data.inputs(data.x_train[:32]))
    path = None
    cache: dict[str, int] = {}
    if options is not None:
        key = json.dumps(
            [
                space.name,
                options,
                list(data.shape.input_shape),
                data.shape.num_classes,
                dtype,
                version("tensorflow"),
            ],
            sort_keys=True,
            default=str,
        )
        path = cache_dir() / "sizes" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        try:
            doc = json.loads(path.read_text())
            if doc.get("key") == key:
                cache = {str(a): int(b) for a, b in doc["sizes"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            cache = {}  # missing or damaged: ours to rebuild

    def exact(arch: Hashable) -> int:
        name = str(arch)
        if name not in cache:
            keras().backend.clear_session()
            model = randomize_like_trained(space.build(arch, data.shape))
            cache[name] = rt.convert(model, dtype, rep if dtype == "int8" else None).size_bytes
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(path, json.dumps({"key": key, "sizes": cache}))
                except OSError:
                    pass  # a read-only cache only costs time
        return cache[name]

    return exact


def select_best(study: Any) -> Any:
    """The most accurate trained, feasible trial at the most epochs trained (multi-fidelity
    search: the candidates promoted to full fidelity); ties: lower predicted latency."""
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("state") == "complete"]
    if not done:
        return None
    return max(done, key=lambda t: (t.user_attrs.get("fidelity_epochs") or 0, t.values[0], -t.values[1]))


def _stored(config: RunConfig, out: Path, storage: str | None, resume: bool) -> dict[str, Any]:
    """What a study being resumed already fixed: its resolved budgets and verified files."""
    if not resume:
        return {}
    import optuna

    url = storage or f"sqlite:///{out / 'study.db'}"
    if storage is None and not (out / "study.db").is_file():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if study_name(config) not in optuna.study.get_all_study_names(url):
            return {}
        attrs = optuna.load_study(study_name=study_name(config), storage=url).user_attrs
    except Exception:  # noqa: BLE001 - _open_study names a storage that cannot be opened
        return {}
    return {"budgets": attrs.get("budgets"), "verified": attrs.get("verified") or []}


def prepare_budgets(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    model: LatencyModel,
    stored: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> tuple[LatencyModel, Any, Any, float]:
    """The budgets a run screens with, on ``model`` (what ``nas run`` does between building the
    latency model and searching): relative budgets resolved (or ``stored`` ones reused on
    resume), the model re-fitted on fresh measurements near the latency budget, and the guard
    band. Returns (model, screen, resolved budgets, latency guard)."""
    from .budgets import ResolvedBudgets, resolve
    from .search import Screen

    screen = Screen(
        space,
        data.shape,
        model.predictor,
        model.size,
        Constraints(),
        model.memory_table,
        exact_size=exact_size_fn(
            space,
            data,
            config.latency.dtype,
            dict(config.space.options) if space.defined_by_options else None,
        ),
    )
    if stored:
        budgets = ResolvedBudgets.from_dict(stored)
        say(f"budgets as resolved when the study started: {_budget_text(budgets.constraints)}")
    else:
        budgets = resolve(config.constraints, space, screen)
    if budgets.constraints.max_latency_ms is not None:
        model = _near_budget_calibration(config, space, data, model, budgets.constraints.max_latency_ms, say)
        screen = replace(screen, latency=model.predictor, size=model.size)
        if not stored and "max_latency_ms" in config.constraints.relative():
            budgets = resolve(config.constraints, space, screen)  # on the re-fitted model
    if config.constraints.relative() and not stored:
        say(f"budgets resolved on this device: {_budget_text(budgets.constraints)}")
    guard = _latency_guard(model) if budgets.constraints.max_latency_ms is not None else 0.0
    if guard:
        guard = _guard_leaving_candidates(space, screen, budgets.constraints, guard, say)
    if guard:
        say(
            f"screening latency at {1 - guard:.0%} of the budget: the latency model's error near it "
            "and the timing noise, so trained candidates can be shipped as measured"
        )
    return model, replace(screen, constraints=budgets.constraints, latency_guard=guard), budgets, guard


def run(
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    storage: str | None = None,
    executor_factory: Callable[..., Any] | None = None,
    status: Callable[[str], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole job and return the report (also written to ``out_dir/report.json``).

    Latency model, budgets (relative ones resolved on this device), search, verification of
    the best few candidates' exported files, then the shipped model: retrained, exported and
    measured, shipped only when that file meets the budgets. When no candidate's file fits,
    the report is still written and ``NothingFitsError`` names the closest one.

    ``out_dir`` is held by one driver at a time (see ``nas.guard.RunGuard``); ``--resume`` on a
    finished run raises ``RunFinished`` and changes nothing."""
    from .guard import RunGuard

    with RunGuard(out_dir, resume) as guard:
        return _run_in_folder(config, guard, resume, storage, executor_factory, status, on_event)


def _run_in_folder(
    config: RunConfig,
    guard: RunGuard,
    resume: bool,
    storage: str | None,
    executor_factory: Callable[..., Any] | None,
    status: Callable[[str], None] | None,
    on_event: Callable[[str, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    from .executors import WorkerSetup
    from .guard import close_running_trials
    from .report import write_report
    from .search import SearchLoop, budget_share
    from .strategies import make_strategy
    from .verify import measurements_for_correction

    say = status or (lambda s: log.info(s))
    out = guard.out
    if not resume and out.is_dir() and (out / "study.db").exists() and storage is None:
        raise InputError(
            f"--out: {out} already holds a study; rerun with --resume to continue it, or choose a new folder."
        )
    started = time.time()
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)
    stored = _stored(config, out, storage, resume)
    verified_before = measurements_for_correction(stored.get("verified") or [])

    model = build_latency_model(config, space, data, say, measured=verified_before)
    model, screen, budgets, latency_guard = prepare_budgets(
        config, space, data, model, stored.get("budgets"), say
    )
    screening = budget_share(space, screen, seed=config.search.seed)

    from .strategies import SearchContext

    guard.make_folder()  # only now: bad input above leaves no folder behind
    context = SearchContext(
        space=space,
        seed=config.search.seed,
        predict=screen,
        max_latency_ms=None
        if budgets.constraints.max_latency_ms is None
        else budgets.constraints.max_latency_ms * (1 - latency_guard),
        n_trials=config.search.trainings,
    )
    sampler = make_strategy(config.search.strategy, context)
    study = _open_study(config, out, storage, resume, sampler)
    if not study.user_attrs.get("budgets"):
        study.set_user_attr("budgets", {**budgets.as_dict(), "latency_guard": latency_guard})
    if study.trials:
        # A seeded sampler would replay the proposals it made before the interruption.
        study.sampler = make_strategy(
            config.search.strategy, replace(context, seed=context.seed + len(study.trials))
        )
    setup = WorkerSetup(
        config.space.name,
        dict(config.space.options),
        _task_dict(config),
        _train_dict(config),
        weights_dir=str(out / WEIGHTS_DIR),
    )
    if executor_factory is None:  # as the CLI: local worker processes, one per core by default
        from .distributed import ExecutorChoice

        executor_factory = ExecutorChoice(
            workers=config.search.workers,
            cpus_per_trial=config.search.cpus_per_trial,
            gpus_per_trial=config.search.gpus_per_trial,
        ).factory(status)
    executor = executor_factory(setup, data)
    loop = SearchLoop(
        study=study,
        space=space,
        screen=screen,
        executor=executor,
        trainings=config.search.trainings,
        seed=config.search.seed,
        epochs=config.training.epochs,
        fidelity=config.search.fidelity,
        max_asks=config.search.max_asks,
        max_failures_in_row=config.search.max_failures_in_row,
        on_event=on_event,
    )
    say(f"searching: {config.search.trainings} trainings, strategy {config.search.strategy}")
    try:
        loop.run()
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: no trial stays RUNNING in the study
        close_running_trials(study)
        raise
    search_s = time.time() - started

    if select_best(study) is None:
        raise FatalError("no candidate was trained successfully; see the trials in the study for the reasons")
    shipped, verified, model = _verify_and_ship(
        config, space, data, study, screen, budgets.constraints, model, out, say
    )
    shutil.rmtree(out / WEIGHTS_DIR, ignore_errors=True)
    if shipped and hasattr(model.predictor, "extrapolated"):
        arch = space.parse(shipped[0].arch)
        n = model.predictor.extrapolated([arch])[0]
        if n:
            total = len(space.blocks(arch, data.shape))
            say(
                f"shipped {shipped[0].arch}: {n} of its {total} blocks priced by the per-kind model (not in the table)"
            )
    winner_trial = (
        next(t for t in study.get_trials(deepcopy=False) if shipped and t.number == shipped[0].trial)
        if shipped
        else None
    )
    report = write_report(
        out,
        config=config,
        study=study,
        space=space,
        screen=screen,
        latency_model=model,
        best_trial=winner_trial,
        exported=shipped[1] if shipped else None,
        timings={"search_s": search_s, "total_s": time.time() - started},
        screening=screening,
        budgets={**budgets.as_dict(), "latency_guard": latency_guard},
        verification=[v.as_dict() for v in verified],
    )
    if not shipped:
        from .verify import closest

        near = closest(verified, budgets.constraints)
        detail = (
            f"closest: {near.arch} (trial {near.trial}): {'; '.join(r for r in near.reasons if not r.startswith('file') or 'budget' in r)}"
            if near is not None
            else "no candidate could be verified"
        )
        raise NothingFitsError(
            f"no verified candidate's file meets the budgets ({_budget_text(budgets.constraints)}); {detail}; "
            f"files kept in {out / 'verify'}, report in {out / 'report.json'}"
        )
    return report


class NothingFitsError(FatalError):
    """Every verified candidate's exported file broke a budget as measured: nothing was shipped."""


def _budget_text(c: Constraints) -> str:
    from .config import BUDGETS

    return ", ".join(f"{k} {v:.4g} {BUDGETS[k]}" for k, v in c.as_dict().items()) or "none"


# At most this many candidates are verified (trained, compressed, exported and timed) per run.
VERIFY_LIMIT = 8
# Inside --out: the weights each training left, so verification compresses the very networks the
# search trained instead of training them again. Removed once the run has shipped (or not).
WEIGHTS_DIR = ".weights"


def _predicted_to_fit(trial: Any, space: SearchSpace, screen: Any, model: LatencyModel) -> bool:
    """Whether ``trial``'s network fits the budgets by ``model``'s (possibly re-fitted) latency."""
    if trial.user_attrs.get("state") != "complete":
        return False
    budget = screen.constraints.max_latency_ms
    if budget is None:
        return True
    predicted = float(model.predictor.predict([space.parse(trial.user_attrs["arch"])])[0])
    return predicted <= budget * (1.0 - screen.latency_guard)


def _verify_and_ship(
    config: RunConfig,
    space: SearchSpace,
    data: TaskData,
    study: Any,
    screen: Any,
    budgets: Constraints,
    model: LatencyModel,
    out: Path,
    say: Callable[[str], None],
) -> tuple[tuple[Any, dict[str, Any]] | None, list[Any], LatencyModel]:
    """Verify the best candidates' exported files, then retrain, export and measure the most
    accurate one that fits, falling back to the next when the shipped file itself does not.
    Returns ((verified winner, exported record) or None, every verification, the refined model)."""
    from compress import StageError

    from .verify import check, order, pick, verify_candidates

    trials = study.get_trials(deepcopy=False)
    verified: list[Any] = []
    # Rounds: when no verified file fits, the correction is re-fitted on what was measured, and
    # the next candidates still predicted to fit are verified, up to VERIFY_LIMIT in all.
    while len(verified) < VERIFY_LIMIT:
        done = {v.trial for v in verified}
        pool = [t for t in trials if t.number not in done and _predicted_to_fit(t, space, screen, model)]
        k = config.export.verify_candidates
        # Up to two more than asked for candidates near a budget, within the run's overall limit.
        chosen = pick(pool, budgets, k=k, limit=min(k + 2, VERIFY_LIMIT - len(verified)))
        if not chosen:
            break
        verified += verify_candidates(
            config, space, data, chosen, budgets, out / "verify", say, weights=out / WEIGHTS_DIR
        )
        timed = [(v.arch, v.measured_latency_ms) for v in verified if v.measured_latency_ms is not None]
        model = model.refined(timed, space)
        study.set_user_attr("verified", [v.as_dict() for v in verified])
        if any(v.fits for v in verified):
            break
        say("no verified file fits; re-fitted the latency correction on their measurements")
    finals: list[Any] = []
    for v in order(verified):
        say(f"retraining {v.arch} (trial {v.trial}) for {config.training.final_epochs} epochs to ship it")
        try:
            exported = finish_winner(config, space, space.parse(v.arch), data, out, say)
        except (StageError, TrialFailedError) as e:  # e.g. a retrained file the runtime refuses
            finals.append(
                replace(v, stage="final", fits=False, reasons=(f"its file could not be made: {e}",))
            )
            study.set_user_attr("verified", [x.as_dict() for x in (*verified, *finals)])
            say(f"the retrained file of trial {v.trial} could not be made ({e}); trying the next candidate")
            _set_aside(out, v.trial)
            continue
        latency = exported.pop("_timing", None)
        exported["predicted_latency_ms"] = v.predicted_latency_ms  # as the search priced it
        fits, reasons = check(latency, exported["size_bytes"], budgets, None)
        final = replace(
            v,
            stage="final",
            accuracy=exported["accuracy"],
            measured_latency_ms=exported["measured_latency_ms"] if latency is not None else None,
            latency_spread_ms=None if latency is None else latency.spread_ms,
            latency_repeats_ms=() if latency is None else latency.repeats_ms,
            size_bytes=exported["size_bytes"],
            file="model.tflite",
            fits=fits,
            reasons=reasons,
            shipped=fits,
            epochs=config.training.final_epochs,
        )
        finals.append(final)
        study.set_user_attr("verified", [x.as_dict() for x in (*verified, *finals)])
        if fits:
            return (final, exported), [*verified, *finals], model
        say(
            f"the retrained file of trial {v.trial} does not fit ({'; '.join(reasons)}); trying the next candidate"
        )
        _set_aside(out, v.trial)
    return None, [*verified, *finals], model


def _set_aside(out: Path, trial: int) -> None:
    """Move a shipped-then-rejected model and its export under ``verify/trial-N/final/``."""
    import shutil

    target = out / "verify" / f"trial-{trial}" / "final"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", "export"):
        if (out / name).exists():
            os.replace(out / name, target / name)


def _task_dict(config: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config.task)


def _train_dict(config: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config.training)


def finish_winner(
    config: RunConfig,
    space: SearchSpace,
    arch: Hashable,
    data: TaskData,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Retrain the winner, quantize and export it, and re-measure the exported file itself.

    The search held the validation split out to compare candidates; once the winner is chosen it
    has done its job, so the final model learns from training and validation samples together
    (1.33x the data for the 60/20/20 split). The test split stays untouched: every reported
    accuracy is measured on it."""
    from dataclasses import replace

    from .train import train_candidate

    final = replace(
        data,
        x_train=np.concatenate([data.x_train, data.x_val]),
        y_train=np.concatenate([data.y_train, data.y_val]),
    )
    result, model = train_candidate(
        space, arch, final, config.training, config.search.seed, config.training.final_epochs
    )
    exported = export_winner(config, model, data, out, say)
    exported["final_train_samples"] = int(len(final.y_train))
    exported["params"] = result.params
    return exported


def export_winner(
    config: RunConfig, model: Any, data: TaskData, out: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Compress and export the winner through the same pipeline as ``nas compress`` (into
    ``out/export/``), then re-measure the delivered ``model.tflite`` itself with LiteRT."""
    import shutil

    from compress import compress_and_export
    from latency_models.profile import time_interleaved
    from latency_models.runtimes import Artifact, get_runtime

    from .verify import latency_runtime_format

    report = compress_and_export(
        model,
        data.compress_data(),
        config.export.stages(),
        list(config.export.formats),
        out / "export",
        threads=config.latency.threads,
        progress=say,
        tvm_target=config.export.tvm_target,
    )
    tflite = [e for e in report.exports if e.format == "tflite"]
    if not tflite:
        raise InputError(
            f"export.formats: must include 'tflite' for model.tflite, got {list(config.export.formats)}."
        )
    exported = tflite[0]
    source = out / "export" / exported.files[0]
    tmp = out / ".model.tflite.tmp"
    shutil.copyfile(source, tmp)
    tmp.replace(out / "model.tflite")
    data_bytes = (out / "model.tflite").read_bytes()
    rt = get_runtime("litert")
    session = rt.load(Artifact("litert", exported.dtype, data_bytes), threads=config.latency.threads)
    x_test = data.inputs(data.x_test)
    accuracy = float(np.mean(np.argmax(session.run(x_test), axis=1) == data.y_test))
    if data.class_names:  # labels.txt beside model.tflite: line i is class i
        from latency_models.table import write_atomic

        write_atomic(out / "labels.txt", "".join(f"{name}\n" for name in data.class_names).encode())
    fmt, _ = latency_runtime_format(config)
    timing = None
    if fmt is not None:
        # The shipped file is timed the way verification timed the candidates: in repeats, with
        # the runtime the budget is for (ONNX Runtime times the exported .onnx).
        lat = config.latency
        runtime = get_runtime(lat.runtime)
        file = out / "export" / next(e for e in report.exports if e.format == fmt).files[0]
        if fmt == "tflite":
            file = out / "model.tflite"
        timed = runtime.load(Artifact(runtime.name, exported.dtype, file.read_bytes()), threads=lat.threads)
        timing = time_interleaved([(timed, x_test[0])], threads=lat.threads)[0]
    return {
        "file": "model.tflite",
        "format": f"tflite-{exported.dtype}",
        "size_bytes": len(data_bytes),
        "accuracy": accuracy,
        "test_samples": int(len(data.y_test)),
        "measured_latency_ms": None if timing is None else timing.median_ms,
        "latency_spread_ms": None if timing is None else [min(timing.repeats_ms), max(timing.repeats_ms)],
        "latency_repeats_ms": None if timing is None else list(timing.repeats_ms),
        "latency_runtime": None if timing is None else config.latency.runtime,
        "runtime": f"litert {rt.version()}",
        "threads": config.latency.threads,
        "compression": report.to_dict(),
        "_timing": timing,
        "class_names": list(data.class_names),
        "skipped_images": data.skipped,
    }
