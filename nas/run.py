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
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import FatalError, InputError, SearchSpace, get_space

from .config import RunConfig
from .data import TaskData, load_task

__all__ = ["LatencyModel", "build_latency_model", "finish_winner", "run", "study_name"]

log = logging.getLogger("nas")
REPORT_VERSION = 1


@dataclass(frozen=True)
class LatencyModel:
    """The device's models: latency predictor, size model, optional memory table."""

    predictor: Any
    size: Any
    memory_table: Any
    description: str
    calibration: list[dict[str, Any]]


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
    config: RunConfig, space: SearchSpace, data: TaskData, status: Callable[[str], None] = lambda s: None
) -> LatencyModel:
    """Host: profile (or reuse) this machine's table, then fit the whole-model overhead and the
    size model on a few real conversions. Otherwise load the user's table or predictor."""
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
        )
        _check_covered(space, table, task)
        memory = table if all(e.memory_bytes is not None for e in table.entries.values()) else None
        return LatencyModel(predictor, SizeModel(lat.dtype), memory, f"table {lat.table}", [])

    from latency_models.profile import host_table

    blocks = space.all_blocks(task)
    if blocks is None:
        raise InputError(
            f"latency.device host: space {space.name!r} cannot list its blocks; supply latency.table or latency.predictor."
        )
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
    predictor = TablePredictor(
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
    calibration = _calibrate(config, space, data, predictor, status)
    archs = [space.parse(c["arch"]) for c in calibration]
    if calibration:
        predictor = predictor.with_correction(archs, [c["latency_ms"] for c in calibration])
    size = SizeModel.fit(
        [space.size_terms(a, task) for a in archs], [c["size_bytes"] for c in calibration], lat.dtype
    )
    memory = table if all(e.memory_bytes is not None for e in table.entries.values()) else None
    return LatencyModel(
        predictor,
        size,
        memory,
        f"host profile ({lat.runtime} {lat.dtype}, {lat.threads} thread)",
        calibration,
    )


def _check_covered(space: SearchSpace, table: Any, task: Any) -> None:
    blocks = space.all_blocks(task)
    if blocks is None:
        return
    missing = table.missing(blocks)
    if missing:
        table.lookup(missing[0])  # raises MissingEntryError naming the block and the nearest entries


def _calibrate(
    config: RunConfig, space: SearchSpace, data: TaskData, predictor: Any, status: Callable[[str], None]
) -> list[dict[str, Any]]:
    """End-to-end measurements (cached beside the host table) that fit overhead and size."""
    from latency_models.profile import cache_dir
    from latency_models.runtimes import get_runtime
    from latency_models.table import write_atomic
    from search_spaces.backend import keras
    from search_spaces.weights import randomize_like_trained

    lat = config.latency
    n = lat.calibration_models
    if n == 0:
        return []
    rt = get_runtime(lat.runtime)
    key = json.dumps(
        [
            "v2-trained-weights",
            space.name,
            dict(config.space.options),
            list(data.input_shape),
            data.num_classes,
            lat.runtime,
            rt.version(),
            lat.dtype,
            lat.threads,
            n,
            predictor.table.meta.extra.get("fingerprint", ""),
        ],
        sort_keys=True,
    )
    import hashlib

    path = cache_dir() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                status(f"reusing {len(cached['models'])} calibration measurements from {path}")
                return cached["models"]
        except (OSError, json.JSONDecodeError):
            pass
    archs = _calibration_archs(space, n, config.search.seed)
    rep = list(data.inputs(data.x_train[:64]))
    out = []
    for i, arch in enumerate(archs):
        status(f"calibrating the latency and size models: model {i + 1}/{len(archs)}")
        keras().backend.clear_session()
        model = randomize_like_trained(space.build(arch, data.shape), seed=i)
        artifact = rt.convert(model, lat.dtype, rep if lat.dtype == "int8" else None)
        timing = rt.load(artifact, threads=lat.threads).time(rep[0], runs=100, warmup=10, min_total_s=1.0)
        out.append(
            {
                "arch": str(arch),
                "latency_ms": timing.median_ms,
                "p10_ms": timing.p10_ms,
                "p90_ms": timing.p90_ms,
                "size_bytes": artifact.size_bytes,
            }
        )
    write_atomic(path, json.dumps({"key": key, "models": out}, indent=1))
    return out


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


def exact_size_fn(space: SearchSpace, data: TaskData, dtype: str) -> Callable[[Hashable], int]:
    """Size of the exported file of ``arch``, by converting it with trained-looking weights (the
    size of a TFLite file does not depend on the weights' values, only on their layout)."""
    from latency_models.runtimes import get_runtime
    from search_spaces.backend import keras
    from search_spaces.weights import randomize_like_trained

    rt = get_runtime("litert")
    rep = list(data.inputs(data.x_train[:32]))
    cache: dict[str, int] = {}

    def exact(arch: Hashable) -> int:
        key = str(arch)
        if key not in cache:
            keras().backend.clear_session()
            model = randomize_like_trained(space.build(arch, data.shape))
            cache[key] = rt.convert(model, dtype, rep if dtype == "int8" else None).size_bytes
        return cache[key]

    return exact


def select_best(study: Any) -> Any:
    """The most accurate trained, feasible trial at the most epochs trained (multi-fidelity
    search: the candidates promoted to full fidelity); ties: lower predicted latency."""
    done = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("state") == "complete"]
    if not done:
        return None
    return max(done, key=lambda t: (t.user_attrs.get("fidelity_epochs") or 0, t.values[0], -t.values[1]))


def run(
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    storage: str | None = None,
    executor_factory: Callable[..., Any] | None = None,
    status: Callable[[str], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole job and return the report (also written to ``out_dir/report.json``)."""
    from .executors import WorkerSetup
    from .report import write_report
    from .search import Screen, SearchLoop, budget_share, smallest_achievable
    from .strategies import make_strategy

    say = status or (lambda s: log.info(s))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder.")
    if not resume and out.is_dir() and (out / "study.db").exists() and storage is None:
        raise InputError(
            f"--out: {out} already holds a study; rerun with --resume to continue it, or choose a new folder."
        )
    started = time.time()
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)

    model = build_latency_model(config, space, data, say)
    screen = Screen(
        space,
        data.shape,
        model.predictor,
        model.size,
        config.constraints,
        model.memory_table,
        exact_size=exact_size_fn(space, data, config.latency.dtype),
    )
    achievable = smallest_achievable(space, screen, seed=config.search.seed)
    screening = budget_share(space, screen, seed=config.search.seed)
    for name, budget in config.constraints.as_dict().items():
        if name in achievable and achievable[name] > budget:
            raise InputError(
                f"constraints.{name}: {budget:g} cannot be met by any architecture of space {space.name}; "
                f"the smallest achievable is {achievable[name]:.4g}."
            )

    from .strategies import SearchContext

    out.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves no folder behind
    context = SearchContext(
        space=space,
        seed=config.search.seed,
        predict=screen,
        max_latency_ms=config.constraints.max_latency_ms,
        n_trials=config.search.trainings,
    )
    sampler = make_strategy(config.search.strategy, context)
    study = _open_study(config, out, storage, resume, sampler)
    if study.trials:
        # A seeded sampler would replay the proposals it made before the interruption.
        from dataclasses import replace as _replace

        study.sampler = make_strategy(
            config.search.strategy, _replace(context, seed=context.seed + len(study.trials))
        )
    setup = WorkerSetup(
        config.space.name, dict(config.space.options), _task_dict(config), _train_dict(config)
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
    loop.run()
    search_s = time.time() - started

    best = select_best(study)
    if best is None:
        raise FatalError("no candidate was trained successfully; see the trials in the study for the reasons")
    winner = space.parse(best.user_attrs["arch"])
    say(f"retraining the winner {winner} for {config.training.final_epochs} epochs")
    exported = finish_winner(config, space, winner, data, out, say)
    report = write_report(
        out,
        config=config,
        study=study,
        space=space,
        screen=screen,
        latency_model=model,
        best_trial=best,
        exported=exported,
        timings={"search_s": search_s, "total_s": time.time() - started},
        screening=screening,
    )
    return report


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
    from latency_models.runtimes import Artifact, get_runtime

    report = compress_and_export(
        model,
        data.compress_data(),
        config.export.stages(),
        list(config.export.formats),
        out / "export",
        threads=config.latency.threads,
        progress=say,
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
    timing = session.time(x_test[0], runs=200, warmup=20, min_total_s=2.0)
    if data.class_names:  # labels.txt beside model.tflite: line i is class i
        from latency_models.table import write_atomic

        write_atomic(out / "labels.txt", "".join(f"{name}\n" for name in data.class_names).encode())
    return {
        "file": "model.tflite",
        "format": f"tflite-{exported.dtype}",
        "size_bytes": len(data_bytes),
        "accuracy": accuracy,
        "test_samples": int(len(data.y_test)),
        "measured_latency_ms": timing.median_ms,
        "latency_spread_ms": [timing.p10_ms, timing.p90_ms],
        "latency_runs": timing.runs,
        "runtime": f"litert {rt.version()}",
        "threads": config.latency.threads,
        "compression": report.to_dict(),
        "class_names": list(data.class_names),
        "skipped_images": data.skipped,
    }
