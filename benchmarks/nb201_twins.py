"""Why a few table-known NAS-Bench-201 rows stay above 0.3 regret: functional twins.

``A = |nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|`` and
``B = |nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|`` both
compute ``conv3x3(conv3x3(x)) + x``; NAS-Bench-201 does not count them as isomorphic and trained
each once. For each row this runs ``default`` (table known, B=100, the seeds given) in process, as
``nas benchmark nb201`` does, and counts the searches that trained A, B, both or neither, with the
regret of each (scored like ``score_search.py``: best feasible accuracy minus the shipped arch's).

Why not count A and B as one network? It also answers what merging every such pair would cost:
``search_spaces.nb201.functional_string`` groups the cells that compute the same function (5,390
groups against NAS-Bench-201's 6,466), and for every table-known row of
``benchmarks/results/search_nb201.json`` the group floor (the engine trains one encoding per
group, its cheapest) is computed under both groupings.

Run (from the project root):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nb201_twins.py [--floors-only]
Writes ``benchmarks/results/nb201_twins.{json,md}`` (``--floors-only`` keeps the searches
already in the JSON).
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
ROWS = (
    "cifar100/titan_rtx_1/0.5,imagenet16/titan_rtx_1/0.5,cifar100/titanx_1/0.5,imagenet16/titanx_1/0.5,"
    "cifar100/1080ti_1/0.5,imagenet16/1080ti_1/0.5,cifar100/2080ti_32/0.5,imagenet16/2080ti_32/0.5,"
    "cifar100/titanxp_1/0.5,imagenet16/titanxp_1/0.5"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=ROWS, help="dataset/device/quantile, comma-separated")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--floors-only", action="store_true", help="keep the searches already in the JSON")
    args = ap.parse_args()
    res = ROOT / "benchmarks" / "results"
    if args.floors_only:
        searches = json.loads((res / "nb201_twins.json").read_text())["searches"]
    else:
        searches = _searches(args.rows, args.seeds)
    merged = _merged_floors()
    write_atomic(
        res / "nb201_twins.json", json.dumps({"searches": searches, "merged_floors": merged}, indent=1) + "\n"
    )
    write_atomic(res / "nb201_twins.md", _markdown(searches, merged))
    return 0


def _searches(rows: str, seeds: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    from nas.benchmark.nb201 import BenchmarkConfig, run_one

    groups = search_nb201.groups()
    out = []
    with threadpool_limits(1):
        for row in rows.split(","):
            dataset, device, q = row.split("/")
            acc, lat = search_nb201.truth(dataset, device)
            budget = search_nb201.budget_at(dataset, device, float(q))
            best = search_nb201.floors(dataset, device, float(q))["best_feasible"]
            config = BenchmarkConfig(
                dataset=dataset, device=device, max_latency_ms=budget, budget=100, seeds=1
            )
            runs = []
            for seed in range(seeds):
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
    return out


def _merged_floors() -> list[dict]:
    """Every table-known row's group floor under NAS-Bench-201's groups and under functional ones."""
    from search_spaces import get_space
    from search_spaces.nb201 import functional_string

    space = get_space("nb201")
    functional = {a: functional_string(space.parse(a)) for a in search_nb201.groups()}
    rows = json.loads((ROOT / "benchmarks" / "results" / "search_nb201.json").read_text())
    out = []
    for r in rows:
        if r["part"] != "table":
            continue
        acc, lat = search_nb201.truth(r["dataset"], r["device"])
        budget = search_nb201.budget_at(r["dataset"], r["device"], r["quantile"])
        out.append(
            {
                "row": f"{r['dataset']}/{r['device']}/{r['quantile']}",
                "nb201_groups": r["group_floor"],  # ``floors`` stored it with the row
                "functional_groups": search_nb201.group_floor(acc, lat, budget, functional),
            }
        )
    return out


def _markdown(searches: list[dict], merged: list[dict]) -> str:
    lines = [
        "# Functional twins A and B (benchmarks/nb201_twins.py)",
        "",
        "| row | A acc | B acc | searches | mean regret | trained A | of those <= 0.3 | not A, trained B | neither |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in searches:
        s = _summary(r["runs"])
        lines.append(
            f"| {r['row']} | {r['accuracy_a']:.2f} | {r['accuracy_b']:.2f} | {s['searches']} | {s['mean_regret']:.3f} "
            f"| {s['trained_a']} | {s['a_and_ok']} | {s['b_only']} | {s['neither']} |"
        )
    iso = np.array([m["nb201_groups"] for m in merged])
    fun = np.array([m["functional_groups"] for m in merged])
    lines += [
        "",
        "## If functional twins counted as one network",
        "",
        f"Group floor over the {len(merged)} table-known rows, one trained encoding (the cheapest) per group: "
        f"NAS-Bench-201's groups mean {iso.mean():.3f}, functional groups mean {fun.mean():.3f}; "
        f"{int((fun > iso + 1e-9).sum())} rows rise, {int((fun < iso - 1e-9).sum())} fall, "
        f"{int((fun > 0.3).sum())} rows above 0.3 (against {int((iso > 0.3).sum())}).",
        "",
        "| row | floor, NAS-Bench-201 groups | floor, functional groups |",
        "|---|---|---|",
    ]
    for m in merged:
        if abs(m["functional_groups"] - m["nb201_groups"]) > 1e-9:
            lines.append(f"| {m['row']} | {m['nb201_groups']:.3f} | {m['functional_groups']:.3f} |")
    return "\n".join(lines) + "\n"


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
