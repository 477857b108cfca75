"""Host runtimes floor: does a per-block table predict whole-model latency (LiteRT int8) and the
TFLite Micro arena of 30 random ``mbconv`` networks?

Latency: the table is profiled here (``host_table``), its overhead correction is fitted on 5
OTHER architectures, and the 30 scored ones are measured end to end (median of many runs, in
interleaved rounds so load drift hits every model alike; runs the OS preempted are dropped, see
``time_session``). Floor: >= 90% within 10%.
Arena: ``predict_arena_bytes`` on a TFLM table vs the bytes TFLM allocates for the whole model.
Floor: within 5%.

Run: ``.venv/bin/python benchmarks/host_latency.py [--n 30] [--calib 5] [--rounds 3]``.

With ``--config examples/quickstart.yaml``: the latency model ``nas run`` itself builds for that
config (``build_latency_model`` then ``prepare_budgets``: the host profile, the re-timed
calibration models, the models measured near the resolved budget) against LiteRT on ``--n``
uniformly random networks of the config's space, measured end to end in interleaved rounds.
Floor: >= 90% within 10%. Results in ``benchmarks/results/host_latency_quickstart.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.predictor import TablePredictor  # noqa: E402
from latency_models.profile import (  # noqa: E402
    host_table,
    machine_fingerprint,
    predict_arena_bytes,
    random_representative,
    time_session,
)
from latency_models.runtimes import get_runtime  # noqa: E402
from latency_models.runtimes.tflm import arena_use  # noqa: E402
from latency_models.table import write_atomic  # noqa: E402
from search_spaces import TaskShape, get_space  # noqa: E402
from search_spaces.backend import keras  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def distinct_archs(space, rng: random.Random, n: int, exclude: set[str]) -> list:
    out: dict[str, object] = {}
    while len(out) < n:
        arch = space.random(rng)
        if str(arch) not in exclude:
            out[str(arch)] = arch
    return list(out.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--calib", type=int, default=5)
    parser.add_argument("--pool", type=int, default=12, help="candidate calibration archs (not scored)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per whole model")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", help="score the latency model nas run builds for this run config")
    args = parser.parse_args()
    if args.config:
        return run_config_check(args)

    t_start = time.time()
    space, task = get_space("mbconv"), TaskShape((28, 28, 1), 10)
    scored = distinct_archs(space, random.Random(args.seed), args.n, set())
    pool = distinct_archs(space, random.Random(args.seed + 1), args.pool, {str(a) for a in scored})
    blocks = [b for a in pool + scored for b in space.blocks(a, task)]

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        table = host_table(space, task, blocks, "litert", "int8", args.threads, cache_dir=Path(tmp))
        t_profile = time.time() - t0
        # Calibration archs span the latency range (chosen by table sum alone, never measured
        # before choosing): a correction fitted on five small models says nothing of large ones.
        sums = np.array([table.price(space.blocks(a, task)) for a in pool])
        order = np.argsort(sums)
        picks = sorted({int(order[round(q * (len(pool) - 1))]) for q in np.linspace(0, 1, args.calib)})
        calib = [pool[i] for i in picks]
        archs = calib + scored
        blocks = [b for a in archs for b in space.blocks(a, task)]
        t0 = time.time()
        # Arena bytes do not depend on timing: a few runs per block keep TFLM's reference kernels quick.
        tflm_table = host_table(
            space, task, blocks, "tflm", "int8", 1, cache_dir=Path(tmp), timing=(3, 1, 0.0)
        )
        t_tflm = time.time() - t0

    # Whole models: one conversion each, LiteRT timed in interleaved rounds, TFLM arena from the same file.
    litert, k = get_runtime("litert"), keras()
    sessions, arenas = [], []
    t0 = time.time()
    samples = random_representative(task.input_shape)
    for arch in archs:
        artifact = litert.convert(space.build(arch, task), "int8", samples)
        k.backend.clear_session()
        sessions.append(litert.load(artifact, threads=args.threads))
        arenas.append(arena_use(artifact).total)
    t_convert = time.time() - t0
    medians = np.zeros((args.rounds, len(archs)))
    spreads = []
    for r in range(args.rounds):
        for i, session in enumerate(sessions):
            t = time_session(session, samples[0], (100, 10, 0.3), args.threads)
            medians[r, i] = t.median_ms
            if r == 0:
                spreads.append((t.p10_ms, t.p90_ms, t.runs))
    measured = np.median(medians, axis=0)

    nc, ns = len(calib), len(scored)
    base = TablePredictor(space="mbconv", device="host", table=table, task=task)
    predictor = base.with_correction(calib, measured[:nc].tolist())
    raw = base.raw(scored)
    pred = predictor.predict(scored)
    y = measured[nc:]
    rel = np.abs(pred - y) / y
    rel_raw = np.abs(raw - y) / y

    arena_true = np.array(arenas[nc:], dtype=float)
    arena_pred = np.array(
        [predict_arena_bytes(tflm_table, space.blocks(a, task)) for a in scored], dtype=float
    )
    # the naive baseline: the largest block's own arena (what a table without persistent bytes gives)
    arena_peak = np.array(
        [max(tflm_table.lookup(b).memory_bytes for b in space.blocks(a, task)) for a in scored], dtype=float
    )
    arel = np.abs(arena_pred - arena_true) / arena_true
    arel_peak = np.abs(arena_peak - arena_true) / arena_true

    result = {
        "benchmark": "host_latency",
        "machine": machine_fingerprint(),
        "python": platform.python_version(),
        "runtime": {
            "name": "litert",
            "version": table.meta.runtime_version,
            "dtype": "int8",
            "threads": args.threads,
        },
        "tflm_version": tflm_table.meta.runtime_version,
        "space": "mbconv",
        "task": {"input_shape": list(task.input_shape), "num_classes": task.num_classes},
        "n_scored": ns,
        "n_calibration": nc,
        "rounds": args.rounds,
        "distinct_blocks": len(set(blocks)),
        "latency": {
            "within_10pct": float(np.mean(rel <= 0.10)),
            "within_5pct": float(np.mean(rel <= 0.05)),
            "mape_pct": float(100 * rel.mean()),
            "max_err_pct": float(100 * rel.max()),
            "spearman": spearman(pred, y),
            "raw_sum_within_10pct": float(np.mean(rel_raw <= 0.10)),
            "raw_sum_mape_pct": float(100 * rel_raw.mean()),
            "correction": {"scale": predictor.correction.scale, "offset_ms": predictor.correction.offset_ms},
            "measured_ms_range": [float(y.min()), float(y.max())],
            "floor_within_10pct": 0.90,
            "meets_floor": bool(np.mean(rel <= 0.10) >= 0.90),
        },
        "arena": {
            "within_5pct": float(np.mean(arel <= 0.05)),
            "mape_pct": float(100 * arel.mean()),
            "max_err_pct": float(100 * arel.max()),
            "model_overhead_bytes": int(tflm_table.meta.extra.get("tflm_model_overhead_bytes", 0)),
            "naive_peak_within_5pct": float(np.mean(arel_peak <= 0.05)),
            "naive_peak_mape_pct": float(100 * arel_peak.mean()),
            "arena_bytes_range": [int(arena_true.min()), int(arena_true.max())],
            "floor": "every architecture within 5%",
            "meets_floor": bool(np.all(arel <= 0.05)),
        },
        "per_arch": [
            {
                "arch": str(a),
                "measured_ms": float(y[i]),
                "round_medians_ms": [float(v) for v in medians[:, nc + i]],
                "p10_ms": spreads[nc + i][0],
                "p90_ms": spreads[nc + i][1],
                "runs": spreads[nc + i][2],
                "table_sum_ms": float(raw[i]),
                "predicted_ms": float(pred[i]),
                "arena_bytes": int(arena_true[i]),
                "arena_predicted": int(arena_pred[i]),
            }
            for i, a in enumerate(scored)
        ],
        "seconds": {
            "profile_litert": round(t_profile, 1),
            "profile_tflm": round(t_tflm, 1),
            "convert_whole": round(t_convert, 1),
            "total": round(time.time() - t_start, 1),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "host_latency.json", json.dumps(result, indent=1) + "\n")
    lat, mem = result["latency"], result["arena"]
    md = [
        "# host_latency",
        "",
        f"{ns} random `mbconv` archs (28x28x1, 10 classes), LiteRT {result['runtime']['version']} int8, "
        f"{args.threads} thread(s), {result['machine']['cpu']}; correction fitted on {nc} other archs. "
        "Shared, loaded machine: medians of interleaved rounds, preempted runs dropped.",
        "",
        "| metric | value | floor |",
        "|---|---|---|",
        f"| latency: share within 10% (table + correction) | {lat['within_10pct']:.0%} | >= 90% |",
        f"| latency: share within 5% | {lat['within_5pct']:.0%} | |",
        f"| latency: MAPE / max error | {lat['mape_pct']:.1f}% / {lat['max_err_pct']:.1f}% | |",
        f"| latency: Spearman | {lat['spearman']:.3f} | |",
        f"| latency: raw table sum within 10% (no correction) | {lat['raw_sum_within_10pct']:.0%} | |",
        f"| measured latency range (ms) | {lat['measured_ms_range'][0]:.3f} - {lat['measured_ms_range'][1]:.3f} | |",
        f"| TFLM arena: share within 5% | {mem['within_5pct']:.0%} | 100% |",
        f"| TFLM arena: MAPE / max error | {mem['mape_pct']:.2f}% / {mem['max_err_pct']:.2f}% | |",
        f"| TFLM arena, naive peak-of-blocks model: within 5% | {mem['naive_peak_within_5pct']:.0%} | |",
        f"| arena range (bytes) | {mem['arena_bytes_range'][0]} - {mem['arena_bytes_range'][1]} | |",
        "",
        f"Wall time {result['seconds']['total']} s ({len(set(blocks))} distinct blocks profiled).",
        "",
    ]
    write_atomic(RESULTS / "host_latency.md", "\n".join(md))
    print("\n".join(md))
    return 0 if lat["meets_floor"] and mem["meets_floor"] else 1


def run_config_check(args: argparse.Namespace) -> int:
    """The ``--config`` mode: nas run's own latency model against LiteRT on random networks."""
    import os

    from nas.config import load_config
    from nas.data import load_task
    from nas.run import build_latency_model, prepare_budgets

    t_start = time.time()
    config = load_config(args.config)
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)
    notes: list[str] = []
    model = build_latency_model(config, space, data, notes.append)
    model, screen, budgets, guard = prepare_budgets(config, space, data, model, None, notes.append)
    t_model = time.time() - t_start
    known = {c["arch"] for c in model.calibration}
    scored = distinct_archs(space, random.Random(args.seed), args.n, known)
    litert, k = get_runtime(config.latency.runtime), keras()
    rep = list(data.x_train[:64])
    sessions = []
    for arch in scored:
        artifact = litert.convert(space.build(arch, data.shape), config.latency.dtype, rep)
        k.backend.clear_session()
        sessions.append(litert.load(artifact, threads=config.latency.threads))
    medians = np.zeros((args.rounds, len(scored)))
    for r in range(args.rounds):
        for i, session in enumerate(sessions):
            medians[r, i] = time_session(
                session, data.x_train[0], (100, 10, 0.5), config.latency.threads
            ).median_ms
    y = np.median(medians, axis=0)
    pred = model.predictor.predict(scored)
    raw = model.predictor.raw(scored)
    rel = np.abs(pred - y) / y
    rel_raw = np.abs(raw - y) / y
    spread = (medians.max(axis=0) - medians.min(axis=0)) / 2 / y
    budget = budgets.constraints.max_latency_ms
    near = np.abs(y / budget - 1) <= 0.25
    result = {
        "benchmark": "host_latency --config",
        "config": str(args.config),
        "machine": machine_fingerprint(),
        "load_average": os.getloadavg(),
        "n_scored": len(scored),
        "rounds": args.rounds,
        "budget_ms": budget,
        "latency_guard": guard,
        "calibration_models": len(model.calibration),
        "near_budget_models": sum(bool(c.get("near_budget")) for c in model.calibration),
        "correction": dict(model.predictor.correction.__dict__),
        "within_10pct": float(np.mean(rel <= 0.10)),
        "within_5pct": float(np.mean(rel <= 0.05)),
        "mape_pct": float(100 * rel.mean()),
        "max_err_pct": float(100 * rel.max()),
        "near_budget_n": int(near.sum()),
        "near_budget_within_10pct": float(np.mean(rel[near] <= 0.10)) if near.any() else None,
        "raw_sum_within_10pct": float(np.mean(rel_raw <= 0.10)),
        "raw_sum_mape_pct": float(100 * rel_raw.mean()),
        "measurement_spread_median_pct": float(100 * np.median(spread)),
        "measured_ms_range": [float(y.min()), float(y.max())],
        "floor_within_10pct": 0.90,
        "meets_floor": bool(np.mean(rel <= 0.10) >= 0.90),
        "seconds": {"latency_model": round(t_model, 1), "total": round(time.time() - t_start, 1)},
        "per_arch": [
            {
                "arch": str(a),
                "measured_ms": float(y[i]),
                "predicted_ms": float(pred[i]),
                "table_sum_ms": float(raw[i]),
            }
            for i, a in enumerate(scored)
        ],
        "notes": notes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "host_latency_quickstart.json", json.dumps(result, indent=1) + "\n")
    md = [
        "# host_latency --config " + str(args.config),
        "",
        f"The latency model `nas run` builds for `{args.config}` (host profile, {result['calibration_models']} "
        f"whole-model calibrations of which {result['near_budget_models']} near the resolved budget "
        f"{budget:.4g} ms) against LiteRT on {len(scored)} uniformly random networks of its space, "
        f"medians of {args.rounds} interleaved rounds. CPU: {result['machine']['cpu']}; load average "
        f"{result['load_average'][0]:.2f}.",
        "",
        "| metric | value | floor |",
        "|---|---|---|",
        f"| within 10% | {result['within_10pct']:.0%} | >= 90% |",
        f"| within 5% | {result['within_5pct']:.0%} | |",
        f"| MAPE / max error | {result['mape_pct']:.1f}% / {result['max_err_pct']:.1f}% | |",
        f"| networks within 25% of the budget: within 10% | {result['near_budget_within_10pct'] if result['near_budget_within_10pct'] is None else format(result['near_budget_within_10pct'], '.0%')} (of {result['near_budget_n']}) | |",
        f"| raw table sum (no correction) within 10% / MAPE | {result['raw_sum_within_10pct']:.0%} / {result['raw_sum_mape_pct']:.1f}% | |",
        f"| measurement: median round-to-round spread | {result['measurement_spread_median_pct']:.1f}% | |",
        f"| measured range (ms) | {y.min():.4f} - {y.max():.4f} | |",
        "",
        f"Wall time {result['seconds']['total']} s.",
        "",
    ]
    write_atomic(RESULTS / "host_latency_quickstart.md", "\n".join(md))
    print("\n".join(md))
    return 0 if result["meets_floor"] else 1


if __name__ == "__main__":
    sys.exit(main())
