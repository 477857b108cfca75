"""Why a few table-known NAS-Bench-201 rows stay above 0.3 regret: functional twins.

``A = |nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|`` and
``B = |nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|`` both
compute ``conv3x3(conv3x3(x)) + x``; NAS-Bench-201 does not count them as isomorphic and trained
each once. For each row this runs ``default`` (table known, B=100, the seeds given) in process, as
``nas benchmark nb201`` does, and counts the searches that trained A, B, both or neither, with the
regret of each (scored like ``score_search.py``: best feasible accuracy minus the shipped arch's).

Run (from the project root):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nb201_twins.py
Writes ``benchmarks/results/nb201_twins.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import search_nb201  # noqa: E402

from latency_models.table import write_atomic  # noqa: E402

A = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"
B = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ROWS = "cifar100/titan_rtx_1/0.5,imagenet16/titan_rtx_1/0.5,cifar100/titanx_1/0.5,imagenet16/titanx_1/0.5"


def main() -> int:
    from threadpoolctl import threadpool_limits

    from nas.benchmark.nb201 import BenchmarkConfig, run_one

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=ROWS, help="dataset/device/quantile, comma-separated")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    groups = search_nb201.groups()
    out = []
    with threadpool_limits(1):
        for row in args.rows.split(","):
            dataset, device, q = row.split("/")
            acc, lat = search_nb201.truth(dataset, device)
            budget = search_nb201.budget_at(dataset, device, float(q))
            best = search_nb201.floors(dataset, device, float(q))["best_feasible"]
            config = BenchmarkConfig(
                dataset=dataset, device=device, max_latency_ms=budget, budget=100, seeds=1
            )
            runs = []
            for seed in range(args.seeds):
                record = run_one(config, "default", seed)
                trained = {groups[a] for a in record["queried"]}
                runs.append(
                    {
                        "seed": seed,
                        "regret": best - acc[record["best_arch"]],
                        "trained_a": groups[A] in trained,
                        "trained_b": groups[B] in trained,
                    }
                )
            out.append(
                {
                    "row": row,
                    "accuracy_a": acc[A],
                    "accuracy_b": acc[B],
                    "a_fits": lat[A] <= budget,
                    "best_feasible": best,
                    "runs": runs,
                }
            )
            print(row, _summary(runs), flush=True)
    res = ROOT / "benchmarks" / "results"
    write_atomic(res / "nb201_twins.json", json.dumps(out, indent=1) + "\n")
    lines = [
        "# Functional twins A and B (benchmarks/nb201_twins.py)",
        "",
        "| row | A acc | B acc | searches | mean regret | trained A | of those <= 0.3 | not A, trained B | neither |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        s = _summary(r["runs"])
        lines.append(
            f"| {r['row']} | {r['accuracy_a']:.2f} | {r['accuracy_b']:.2f} | {s['searches']} | {s['mean_regret']:.3f} "
            f"| {s['trained_a']} | {s['a_and_ok']} | {s['b_only']} | {s['neither']} |"
        )
    write_atomic(res / "nb201_twins.md", "\n".join(lines) + "\n")
    return 0


def _summary(runs: list[dict]) -> dict:
    return {
        "searches": len(runs),
        "mean_regret": float(np.mean([r["regret"] for r in runs])),
        "trained_a": sum(r["trained_a"] for r in runs),
        "a_and_ok": sum(r["trained_a"] and r["regret"] <= 0.3 for r in runs),
        "b_only": sum(r["trained_b"] and not r["trained_a"] for r in runs),
        "neither": sum(not r["trained_a"] and not r["trained_b"] for r in runs),
    }


if __name__ == "__main__":
    sys.exit(main())
