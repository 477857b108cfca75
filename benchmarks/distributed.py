"""Distributed search floors, measured on a real local Ray cluster (``ray start --head`` on
127.0.0.1 with 2 CPUs, stopped by pid afterwards) and with local worker processes.

1. Trials of one search run on >= 2 distinct worker processes.
2. Trials per minute with 2 workers vs 1 on the same config (floor: ratio >= 1.6), for Ray and
   for the local ``ProcessExecutor``; each measurement is a fresh driver process, so worker
   start-up is paid in both and no worker is warm from the other measurement.
3. The driver's own limit: trials per second it asks, screens and tells when the training takes
   no time at all (an executor that answers at once), i.e. where the driver becomes the
   bottleneck of an N-node cluster.

    .venv/bin/python benchmarks/distributed.py [--trainings 12] [--epochs 3] [--repeats 1]

Writes ``benchmarks/results/distributed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

CONFIG = """
task:
  data: digits
space:
  name: mbconv
  options:
    strides: [1, 2, 2]
    widths: [[8, 32], [16, 64], [24, 96]]
    depths: [1, 2]
    kernels: [3, 5]
    expands: [1, 6]
    se: [false]
    acts: [relu6]
    stem_width: 8
latency:
  device: host
  calibration_models: 2
search:
  strategy: random
  trainings: 12
  seed: 7
training:
  epochs: 3
  final_epochs: 1
"""


def _setup(trainings: int, strategy: str = "random", epochs: int = 3) -> dict[str, Any]:
    """Everything the driver builds before its loop (latency model from the cache)."""
    import dataclasses

    import yaml

    from nas.config import parse_config
    from nas.data import load_task
    from nas.executors import WorkerSetup
    from nas.run import build_latency_model
    from nas.search import Screen
    from search_spaces import get_space

    config = parse_config(yaml.safe_load(CONFIG))
    config = dataclasses.replace(
        config,
        search=dataclasses.replace(config.search, trainings=trainings, strategy=strategy),
        training=dataclasses.replace(config.training, epochs=epochs),
    )
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)
    model = build_latency_model(config, space, data)
    screen = Screen(space, data.shape, model.predictor, model.size, config.constraints, model.memory_table)
    setup = WorkerSetup(
        config.space.name,
        dict(config.space.options),
        dataclasses.asdict(config.task),
        dataclasses.asdict(config.training),
    )
    return {"config": config, "data": data, "space": space, "screen": screen, "setup": setup}


def _loop(parts: dict[str, Any], executor: Any, storage: str, on_event: Any = None) -> Any:
    import optuna

    from nas.search import SearchLoop
    from nas.strategies import SearchContext, make_strategy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = parts["config"]
    context = SearchContext(
        space=parts["space"],
        seed=config.search.seed,
        predict=parts["screen"],
        max_latency_ms=None,
        n_trials=config.search.trainings,
    )
    study = optuna.create_study(
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=make_strategy(config.search.strategy, context),
    )
    return SearchLoop(
        study=study,
        space=parts["space"],
        screen=parts["screen"],
        executor=executor,
        trainings=config.search.trainings,
        seed=config.search.seed,
        epochs=config.training.epochs,
        on_event=on_event,
    ), study


def measure_one(
    kind: str, workers: int, trainings: int, address: str | None, epochs: int = 3
) -> dict[str, Any]:
    """One search with ``workers`` at once, timed from the executor's creation to the last tell."""
    from nas.distributed import ExecutorChoice

    parts = _setup(trainings, epochs=epochs)
    choice = ExecutorChoice(workers=workers, ray_address=address if kind == "ray" else None)
    choice.connect()
    arrivals: list[float] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        executor = choice.factory()(parts["setup"], parts["data"])
        loop, study = _loop(
            parts,
            executor,
            f"sqlite:///{tmp}/study.db",
            on_event=lambda k, i: (
                arrivals.append(time.perf_counter() - t0) if k in ("complete", "failed") else None
            ),
        )
        loop.run()
        wall = time.perf_counter() - t0
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("state") == "complete"]
    pids = sorted({t.user_attrs["pid"] for t in trials})
    # Steady state: from the moment every worker has delivered once (start-up paid) to the end.
    warm = arrivals[min(workers, len(arrivals)) - 1]
    steady = (len(arrivals) - min(workers, len(arrivals))) / max(1e-9, arrivals[-1] - warm) * 60
    return {
        "executor": kind,
        "workers": workers,
        "trainings": len(trials),
        "wall_s": wall,
        "trials_per_min": len(trials) / wall * 60,
        "steady_trials_per_min": steady,
        "distinct_worker_pids": len(pids),
        "worker_pids": pids,
        "mean_run_s": sum(t.user_attrs["run_s"] for t in trials) / max(1, len(trials)),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
    }


def _storage(kind: str, url: str) -> Any:
    """``sqlite``: the study file as ``nas run`` opens it today (a synced commit per write);
    ``sqlite-wal``: the same file in WAL mode with ``synchronous=NORMAL`` (committed writes
    survive a killed process, not a power cut); ``memory``: no storage at all, the upper bound."""
    if kind == "memory":
        return None
    if kind == "sqlite":
        return url
    import optuna
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(url)

    @event.listens_for(storage.engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()  # reconnect with the pragmas
    return storage


def driver_limit(n: int, strategy: str, storage_kind: str) -> dict[str, Any]:
    """Trials per second the driver asks, screens and tells when a training costs nothing."""
    from nas.executors import Executor, JobResult, TrainJob

    class Instant(Executor):
        """Answers every job at once (a stand-in for infinitely many, infinitely fast workers).
        The accuracy is a fixed function of the architecture so samplers see varied values."""

        capacity = 8

        def __init__(self) -> None:
            self._done: list[JobResult] = []

        def submit(self, job: TrainJob) -> None:
            acc = (zlib.crc32(job.arch.encode()) % 1000) / 1000
            self._done.append(JobResult(job.trial_number, job.arch, True, accuracy=acc, run_s=0.0))

        def poll(self, timeout: float | None = None) -> list[JobResult]:
            done, self._done = self._done, []
            return done

    parts = _setup(n, strategy)
    with tempfile.TemporaryDirectory() as tmp:
        storage = _storage(storage_kind, f"sqlite:///{tmp}/study.db")
        loop, study = _loop(parts, Instant(), storage)
        t0 = time.perf_counter()
        stats = loop.run()
        wall = time.perf_counter() - t0
    return {
        "strategy": strategy,
        "storage": storage_kind,
        "asked": stats.asked,
        "trained": stats.trained,
        "wall_s": wall,
        "asks_per_s": stats.asked / wall,
        "trainings_per_s": stats.trained / wall,
    }


def _spin(seconds: float, out: Any) -> None:
    t0, c0 = time.time(), os.times()
    while time.time() - t0 < seconds:
        pass
    c1 = os.times()
    out.put((c1.user + c1.system - c0.user - c0.system) / (time.time() - t0))


def cpu_probe(seconds: float = 6.0) -> dict[str, float]:
    """How much CPU this machine gives us right now: the cores that 1 and then 2 busy processes
    actually get. On a shared machine whose scheduler gives each tenant a fixed share, 2 processes
    get no more than 1, and no executor can then show a 2-worker speed-up."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    got: dict[str, float] = {}
    for n in (1, 2):
        q = ctx.Queue()
        procs = [ctx.Process(target=_spin, args=(seconds, q)) for _ in range(n)]
        for proc in procs:
            proc.start()
        got[f"cores_with_{n}"] = sum(q.get() for _ in procs)
        for proc in procs:
            proc.join()
    got["ratio_2_vs_1"] = got["cores_with_2"] / max(1e-9, got["cores_with_1"])
    return got


def _child(args: argparse.Namespace) -> None:
    result = measure_one(args.kind, args.workers, args.trainings, args.address, args.epochs)
    Path(args.json).write_text(json.dumps(result))


def _run_child(
    kind: str, workers: int, trainings: int, address: str | None, env: dict[str, str], epochs: int
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--workers",
        str(workers),
        "--trainings",
        str(trainings),
        "--epochs",
        str(epochs),
        "--json",
        out,
    ]
    if address:
        cmd += ["--address", address]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} x{workers} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    print(
        f"{kind:8s} workers={workers}: {result['trials_per_min']:.2f} trials/min "
        f"(steady {result['steady_trials_per_min']:.2f}), {result['distinct_worker_pids']} worker pids, "
        f"load {result['load_avg_1min'][0]:.1f}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainings", type=int, default=12)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per training (longer trials amortize start-up)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--driver-trials", type=int, default=60)
    parser.add_argument("--child", dest="kind")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--address")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.kind:
        _child(args)
        return

    from nas.distributed.cluster import LocalRayCluster, quiet_ray_env

    cache = Path(tempfile.mkdtemp(prefix="nasbench-cache"))
    env = {**os.environ, **quiet_ray_env(), "EDGE_NAS_CACHE": str(cache)}
    os.environ["EDGE_NAS_CACHE"] = str(cache)
    started = time.time()
    print("profiling this machine's latency table once (cached for every measurement) ...", flush=True)
    _setup(1)  # the latency table and calibration, so no measurement pays for them

    probes = [cpu_probe()]
    print(f"cpu probe: {probes[-1]}", flush=True)
    runs: list[dict[str, Any]] = []
    with LocalRayCluster(num_cpus=2) as cluster:
        for _ in range(args.repeats):
            for workers in (2, 1):
                runs.append(_run_child("ray", workers, args.trainings, cluster.address, env, args.epochs))
    for _ in range(args.repeats):
        for workers in (2, 1):
            runs.append(_run_child("process", workers, args.trainings, None, env, args.epochs))

    probes.append(cpu_probe())
    print(f"cpu probe: {probes[-1]}", flush=True)

    def ratio(kind: str, key: str) -> float:
        two = [r[key] for r in runs if r["executor"] == kind and r["workers"] == 2]
        one = [r[key] for r in runs if r["executor"] == kind and r["workers"] == 1]
        return (sum(two) / len(two)) / (sum(one) / len(one))

    drivers = [
        driver_limit(args.driver_trials, strategy, storage)
        for strategy in ("random", "tpe", "default")
        for storage in ("sqlite", "sqlite-wal", "memory")
    ]
    for d in drivers:
        print(
            f"driver {d['strategy']:8s} {d['storage']:6s}: {d['trainings_per_s']:.1f} trainings/s", flush=True
        )

    summary = {
        "ray_ratio_2_vs_1": ratio("ray", "trials_per_min"),
        "ray_ratio_2_vs_1_steady": ratio("ray", "steady_trials_per_min"),
        "process_ratio_2_vs_1": ratio("process", "trials_per_min"),
        "process_ratio_2_vs_1_steady": ratio("process", "steady_trials_per_min"),
        "max_distinct_worker_pids": max(r["distinct_worker_pids"] for r in runs),
        "floor_distinct_workers_ok": any(r["distinct_worker_pids"] >= 2 for r in runs if r["workers"] == 2),
    }
    summary["floor_ratio_ok"] = summary["ray_ratio_2_vs_1"] >= 1.6
    # What 2 processes could get at all while we measured (1.0 = a fixed share, no speed-up possible).
    summary["cpu_available_ratio_2_vs_1"] = sum(p["ratio_2_vs_1"] for p in probes) / len(probes)
    summary["ray_ratio_per_available_cpu"] = (
        summary["ray_ratio_2_vs_1"] / summary["cpu_available_ratio_2_vs_1"]
    )
    result = {
        "benchmark": "distributed",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": list(os.getloadavg())},
        "trainings_per_run": args.trainings,
        "epochs_per_training": args.epochs,
        "cpu_probes": probes,
        "runs": runs,
        "driver_limit": drivers,
        "summary": summary,
        "seconds": time.time() - started,
    }
    from latency_models.table import write_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "distributed.json", json.dumps(result, indent=1))
    write_atomic(RESULTS / "distributed.md", _markdown(result))
    print(json.dumps(summary, indent=1))


def _markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [
        "# distributed",
        "",
        f"Real local Ray cluster (`ray start --head`, 127.0.0.1, 2 CPUs) and local worker processes; "
        f"{r['trainings_per_run']} trainings ({r.get('epochs_per_training', 3)} epochs each) of tiny MBConv "
        "models on `digits` per run, "
        "each run a fresh driver (worker start-up included). The machine is shared: "
        "1-minute load averages are given per run.",
        "",
        "| executor | workers | trials/min | steady trials/min | distinct worker pids | mean run_s | load avg |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['executor']} | {x['workers']} | {x['trials_per_min']:.2f} | {x['steady_trials_per_min']:.2f} | "
            f"{x['distinct_worker_pids']} | {x['mean_run_s']:.2f} | {x['load_avg_1min'][0]:.1f} |"
        )
    lines += [
        "",
        f"- Ray 2 vs 1 workers: **{s['ray_ratio_2_vs_1']:.2f}x** trials/min "
        f"(steady state {s['ray_ratio_2_vs_1_steady']:.2f}x); floor 1.6x: {'met' if s['floor_ratio_ok'] else 'NOT met'}.",
        f"- Local processes 2 vs 1: {s['process_ratio_2_vs_1']:.2f}x (steady {s['process_ratio_2_vs_1_steady']:.2f}x).",
        f"- CPU the machine gave 2 busy processes vs 1 while measuring (spin probe, before and after): "
        f"{s['cpu_available_ratio_2_vs_1']:.2f}x "
        + ", ".join(f"{p['cores_with_1']:.2f} -> {p['cores_with_2']:.2f} cores" for p in r["cpu_probes"])
        + f"; Ray ratio per available CPU: {s['ray_ratio_per_available_cpu']:.2f}.",
        f"- Distinct worker processes in one search: {s['max_distinct_worker_pids']}.",
        "",
        "## The driver's own limit (training takes no time)",
        "",
        "| strategy | storage | asks/s | trainings handed out and told /s |",
        "|---|---|---|---|",
    ]
    for d in r["driver_limit"]:
        lines.append(
            f"| {d['strategy']} | {d['storage']} | {d['asks_per_s']:.1f} | {d['trainings_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
