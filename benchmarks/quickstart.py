"""Measure the foundation's floors on this machine, end to end through the real CLI.

* `nas --help` answers in under 1 second (median of 5; TensorFlow is imported lazily);
* `nas run examples/quickstart.yaml` from an empty profile cache (profiles this machine), then a
  second run that must reuse the cached profile and calibration: wall times of both;
* the budgets bind (some candidates screened out), the exported int8 model reaches >= 95% test
  accuracy, meets every budget by prediction and by its re-measured size, and its measured
  latency is within 20% of its prediction;
* beyond the one winner: the same latency model (cached table + correction) against end-to-end
  LiteRT measurements of ``--latency-check`` random architectures of the quickstart space
  predicted within 0.5-1.5x the latency budget (medians of 3 interleaved rounds), with and
  without the table's per-invoke term.

Usage: .venv/bin/python benchmarks/quickstart.py [--config examples/quickstart.yaml] [--latency-check 30]
Writes benchmarks/results/quickstart.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAS = str(Path(sys.executable).parent / "nas")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0, proc


def latency_check(config_path: str, n: int, cache: Path) -> dict:
    """Predicted vs measured latency of ``n`` random near-budget archs, in this process."""
    import random
    from dataclasses import replace

    import numpy as np

    sys.path.insert(0, str(ROOT))
    os.environ["EDGE_NAS_CACHE"] = str(cache)
    from latency_models.profile import measure_archs
    from latency_models.table import INVOKE_KEY
    from nas.config import load_config
    from nas.data import load_task
    from nas.run import build_latency_model
    from search_spaces import get_space

    config = load_config(config_path)
    data = load_task(config.task)
    space = get_space(config.space.name, config.space.options)
    model = build_latency_model(config, space, data)
    predictor = model.predictor
    budget = config.constraints.max_latency_ms
    rng = random.Random(12345)
    pool = {}
    for _ in range(5000):
        arch = space.random(rng)
        pool[str(arch)] = arch
    archs = list(pool.values())
    predicted = predictor.predict(archs)
    near = [a for a, p in zip(archs, predicted, strict=True) if 0.5 * budget <= p <= 1.5 * budget]
    rng.shuffle(near)
    near = near[:n]
    rounds = [
        [t.median_ms for t in measure_archs(space, data.shape, near, representative=list(data.x_train[:64]))]
        for _ in range(3)
    ]
    measured = np.median(np.asarray(rounds), axis=0)
    table = predictor.table
    no_invoke = replace(
        predictor,
        table=replace(
            table,
            meta=replace(table.meta, extra={k: v for k, v in table.meta.extra.items() if k != INVOKE_KEY}),
        ),
    )
    no_invoke = no_invoke.with_correction(
        [space.parse(c["arch"]) for c in model.calibration], [c["latency_ms"] for c in model.calibration]
    )

    def score(pred: np.ndarray) -> dict:
        err = pred / measured - 1
        return {
            "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
            "within_20pct": float(np.mean(np.abs(err) <= 0.20)),
            "mape": float(np.mean(np.abs(err))),
            "max_abs_error": float(np.max(np.abs(err))),
        }

    return {
        "n": len(near),
        "measured_range_ms": [float(measured.min()), float(measured.max())],
        "invoke_overhead_ms": table.meta.extra.get(INVOKE_KEY),
        "with_invoke_term": score(predictor.predict(near)),
        "without_invoke_term": score(no_invoke.predict(near)),
        "archs": [str(a) for a in near],
        "measured_ms": measured.tolist(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="examples/quickstart.yaml")
    ap.add_argument("--latency-check", type=int, default=30, metavar="N")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as td:
        env = {**os.environ, "EDGE_NAS_CACHE": str(Path(td) / "cache")}
        helps = [timed([NAS, "--help"], env)[0] for _ in range(5)]
        runs = []
        for i in (1, 2):
            out = Path(td) / f"run{i}"
            seconds, proc = timed([NAS, "run", args.config, "--out", str(out)], env)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            report = json.loads((out / "report.json").read_text())
            runs.append({"seconds": seconds, "profiled": "profiling block" in proc.stderr, "report": report})
        check = (
            latency_check(args.config, args.latency_check, Path(td) / "cache") if args.latency_check else None
        )
    best = runs[0]["report"]["best"]
    counts = runs[0]["report"]["counts"]
    budgets = runs[0]["report"]["constraints"]
    result = {
        "nas_help_median_s": statistics.median(helps),
        "first_run_s": runs[0]["seconds"],
        "second_run_s": runs[1]["seconds"],
        "second_run_profiled": runs[1]["profiled"],
        "first_run_profiled": runs[0]["profiled"],
        "constraints": budgets,
        "counts": counts,
        "best": {
            k: best[k]
            for k in (
                "arch",
                "accuracy",
                "size_bytes",
                "predicted_size_bytes",
                "predicted_latency_ms",
                "measured_latency_ms",
                "latency_error",
                "meets_budgets",
            )
        },
        "second_run_best_accuracy": runs[1]["report"]["best"]["accuracy"],
        "latency_check": check,
        "load_average_before": load_before,
        "floors": {
            "budgets_bind": counts["infeasible"] > 0
            or runs[0]["report"]["screening"]["infeasible_share"] > 0,
            "accuracy_ge_95": best["accuracy"] >= 0.95,
            "meets_every_budget": all(best["meets_budgets"].values()),
            "latency_within_20pct": abs(best["latency_error"]) <= 0.20,
            "help_under_1s": statistics.median(helps) < 1.0,
            "second_run_reuses_profile": not runs[1]["profiled"],
        },
    }
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quickstart.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [
        "| measure | value |",
        "|---|---|",
        f"| `nas --help` (median of 5) | {result['nas_help_median_s']:.3f} s |",
        f"| first `nas run` (profiles this machine) | {result['first_run_s']:.0f} s |",
        f"| second `nas run` (cached profile) | {result['second_run_s']:.0f} s |",
        f"| trials: complete / infeasible (never trained) / duplicate / failed | {counts['complete']} / {counts['infeasible']} / {counts['duplicate']} / {counts['failed']} |",
        f"| budgets | {budgets} |",
        f"| share of the space the budgets screen out (2,000 random archs, predicted) | {runs[0]['report']['screening']['infeasible_share']:.1%} {runs[0]['report']['screening']['by_budget']} |",
        f"| winner | `{best['arch']}` |",
        f"| test accuracy of model.tflite (LiteRT, 1,000 digits) | {best['accuracy']:.4f} |",
        f"| size: predicted / file | {best['predicted_size_bytes']:.0f} / {best['size_bytes']} bytes |",
        f"| latency: predicted / measured (LiteRT int8, 1 thread, median) | {best['predicted_latency_ms']:.4f} / {best['measured_latency_ms']:.4f} ms ({100 * best['latency_error']:+.1f}%) |",
        f"| load average before the run | {load_before[0]:.2f} |",
    ]
    if check:
        w, wo = check["with_invoke_term"], check["without_invoke_term"]
        lo, hi = check["measured_range_ms"]
        md += [
            "",
            f"Latency model vs LiteRT on {check['n']} random quickstart-space networks predicted within "
            f"0.5-1.5x the budget (measured {lo:.4f}-{hi:.4f} ms; per-invoke cost "
            f"{1000 * (check['invoke_overhead_ms'] or 0):.2f} us):",
            "",
            "| latency model | within 10% | within 20% | MAPE | max error |",
            "|---|---|---|---|---|",
            f"| table, per-invoke term, correction | {w['within_10pct']:.0%} | {w['within_20pct']:.0%} | {w['mape']:.1%} | {w['max_abs_error']:.1%} |",
            f"| table without per-invoke term, correction | {wo['within_10pct']:.0%} | {wo['within_20pct']:.0%} | {wo['mape']:.1%} | {wo['max_abs_error']:.1%} |",
        ]
    (out_dir / "quickstart.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print("floors:", result["floors"])
    return 0 if all(result["floors"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
