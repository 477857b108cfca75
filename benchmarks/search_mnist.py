"""Search on the real task: bundled MNIST digits (``mnist5k``), ``mbconv``, this host's latency.

At equal numbers of trainings (same epochs each), ``default`` against keras-tuner's random search
oracle (``kt-random``) and Optuna's TPE, several seeds, real trainings through ``nas.run.run``
(the budgets of ``examples/quickstart.yaml``). Per strategy and seed: the test accuracy of the
shipped model (the winner retrained for ``--final-epochs``, int8, measured with LiteRT on the test
split), its validation accuracy in the search, how many trained candidates break a budget (by the
screen's prediction, sizes near the budget verified on the converted file) and whether the shipped
file meets the budgets as measured. Optional ``default-mf``: the same strategy with
``search.fidelity`` (successive halving) on the same epoch budget, with its trainings counted per
fidelity.

Writes ``benchmarks/results/search_mnist.{json,md}`` after every search (a partial run keeps
what it measured). Rerun: ``nice -n 19 .venv/bin/python benchmarks/search_mnist.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from search_nb201 import code_version  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# name -> (strategy, search.fidelity or None)
VARIANTS: dict[str, tuple[str, dict[str, int] | None]] = {
    "default": ("default", None),
    "kt-random": ("kt-random", None),
    "tpe": ("tpe", None),
    "default-mf": ("default", {"min_epochs": 1, "eta": 2}),
}


def one(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from nas.config import parse_config
    from nas.run import run

    strategy, fidelity = VARIANTS[name]
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["search"] = {"strategy": strategy, "trainings": args.trainings, "seed": seed, "workers": 1}
    if fidelity is not None:
        doc["search"]["fidelity"] = fidelity
    doc["training"] = {**doc["training"], "epochs": args.epochs, "final_epochs": args.final_epochs}
    config = parse_config(doc, base_dir=ROOT / "examples")
    with tempfile.TemporaryDirectory() as td:
        started = time.time()
        report = run(config, Path(td) / "run", status=lambda s: None)
        seconds = time.time() - started
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{Path(td) / 'run' / 'study.db'}")
        trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if t.user_attrs.get("fidelity_history")]
    trainings = [h for t in trained for h in t.user_attrs["fidelity_history"]]
    breaking = [t for t in trained if any(v > 0 for v in (t.user_attrs.get("violations") or {}).values())]
    best = report["best"] or {}  # None: no verified file met the budgets, nothing was shipped
    verified = report.get("verification") or []
    return {
        "variant": name,
        "strategy": strategy,
        "fidelity": fidelity,
        "seed": seed,
        "candidates_trained": len(trained),
        "trainings": len(trainings),
        "trainings_by_epochs": {
            str(e): sum(h["epochs"] == e for h in trainings) for e in sorted({h["epochs"] for h in trainings})
        },
        "epochs_spent": sum(h["epochs"] for h in trainings),
        "trained_breaking_budget": len(breaking),
        "infeasible_proposals": sum(1 for t in trials if t.user_attrs.get("state") == "infeasible"),
        "budgets": report.get("budgets"),
        "shipped": bool(best),
        "shipped_arch": best.get("arch"),
        "shipped_val_accuracy_search": best.get("val_accuracy_search"),
        "shipped_test_accuracy": best.get("accuracy"),
        "shipped_meets_budgets_measured": bool(
            best
            and best["meets_budgets"].get("latency_measured", True)
            and best["meets_budgets"]["size_measured"]
        ),
        "shipped_measured_latency_ms": best.get("measured_latency_ms"),
        "shipped_predicted_latency_ms": best.get("predicted_latency_ms"),
        "shipped_size_bytes": best.get("size_bytes"),
        "verified": sum(v.get("stage") == "verify" for v in verified),
        "verified_fit": sum(bool(v.get("fits")) for v in verified if v.get("stage") == "verify"),
        "seconds": round(seconds, 1),
        # strategies change while benchmarks run: which code this search used
        "code": code_version(),
    }


def prior_check(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Why ``default`` picks what it picks: ``n`` random feasible candidates of its pool trained
    for ``--epochs``; Spearman correlation of their validation accuracy with default's prior
    score and with what the prior could use (predicted file size, weight count, latency)."""
    import random

    import numpy as np
    from scipy.stats import spearmanr

    from nas.config import parse_config
    from nas.data import load_task
    from nas.run import build_latency_model
    from nas.search import Screen
    from nas.strategies import SearchContext
    from nas.strategies.default import DefaultSampler
    from nas.train import train_candidate
    from search_spaces import get_space

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["training"] = {**doc["training"], "epochs": args.epochs}
    config = parse_config(doc, base_dir=ROOT / "examples")
    space = get_space(config.space.name, config.space.options)
    data = load_task(config.task)
    model = build_latency_model(config, space, data)
    screen = Screen(space, data.shape, model.predictor, model.size, config.constraints, model.memory_table)
    level = config.constraints.max_latency_ms
    sampler = DefaultSampler(SearchContext(space=space, seed=0, predict=screen, max_latency_ms=level))
    pool = sampler._pool([], 0)
    feasible = [int(i) for i in np.flatnonzero(pool.feasible)]
    prior = dict(zip(feasible, sampler._prior(pool, np.array(feasible), level), strict=True))
    rows = []
    for i in random.Random(args.prior_seed).sample(feasible, n):
        arch = pool.archs[i]
        result, _ = train_candidate(space, arch, data, config.training, 0, args.epochs)
        rows.append(
            {
                "arch": str(arch),
                "val_accuracy": result.accuracy,
                "prior": float(prior[i]),
                "predicted_size_bytes": float(np.exp(pool.size[i])),
                "weights": space.size_terms(arch, data.shape).weights,
                "predicted_latency_ms": float(pool.latency[i]),
                "prior_rank_of_feasible": sum(v > prior[i] for v in prior.values()) / len(prior),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    acc = [r["val_accuracy"] for r in rows]
    keys = ("prior", "predicted_size_bytes", "weights", "predicted_latency_ms")
    return {
        "candidates": n,
        "epochs": args.epochs,
        "feasible_in_pool": len(feasible),
        "spearman_with_val_accuracy": {
            k: float(spearmanr([r[k] for r in rows], acc).statistic) for k in keys
        },
        "rows": rows,
    }


def write_prior_check(doc: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / ".search_mnist_prior.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(RESULTS / "search_mnist_prior.json")
    rho = doc["spearman_with_val_accuracy"]
    lines = [
        "# What default's prior knows on mnist5k (mbconv, quickstart budgets)",
        "",
        f"{doc['candidates']} random feasible candidates of default's pool ({doc['feasible_in_pool']} feasible), "
        f"trained {doc['epochs']} epochs. Spearman correlation with validation accuracy "
        "(`benchmarks/search_mnist.py --prior-check N`):",
        "",
        "| default's prior score | predicted file size | weight count | predicted latency |",
        "|---|---|---|---|",
        f"| {rho['prior']:.3f} | {rho['predicted_size_bytes']:.3f} | {rho['weights']:.3f} | "
        f"{rho['predicted_latency_ms']:.3f} |",
    ]
    tmp = RESULTS / ".search_mnist_prior.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS / "search_mnist_prior.md")


# default's shipped test accuracy (mean, stdev over 6 seeds) before shipped files were verified:
# benchmarks/results/search_mnist.md (the quickstart budgets of that time, absolute).
BEFORE_VERIFICATION = (0.9635, 0.0029)


def _machine() -> str:
    from latency_models.profile import machine_fingerprint

    m = machine_fingerprint()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores), load average {load:.1f} at the end"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in VARIANTS:
        rs = [r for r in rows if r["variant"] == name]
        if not rs:
            continue
        shipped = [r for r in rs if r.get("shipped", True)]
        test = [r["shipped_test_accuracy"] for r in shipped] or [float("nan")]
        val = [r["shipped_val_accuracy_search"] for r in shipped] or [float("nan")]
        out[name] = {
            "searches": len(rs),
            "mean_test_accuracy": statistics.fmean(test),
            "stdev_test_accuracy": statistics.stdev(test) if len(test) > 1 else 0.0,
            "mean_val_accuracy_search": statistics.fmean(val),
            "trained_breaking_budget": sum(r["trained_breaking_budget"] for r in rs),
            "shipped_breaking_budget_measured": sum(not r["shipped_meets_budgets_measured"] for r in shipped),
            "nothing_shipped": len(rs) - len(shipped),
            "mean_trainings": statistics.fmean(r["trainings"] for r in rs),
            "mean_epochs_spent": statistics.fmean(r["epochs_spent"] for r in rs),
            "mean_infeasible_proposals": statistics.fmean(r["infeasible_proposals"] for r in rs),
        }
    return out


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    summary = summarize(rows)
    seeds = sorted({r["seed"] for r in rows})
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "args": {**vars(args), "seeds": len(seeds)},
        "host_cpus": os.cpu_count(),
        "summary": summary,
        "runs": rows,
    }
    tmp = RESULTS / f".{args.name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(RESULTS / f"{args.name}.json")
    lines = [
        "# Search on mnist5k (mbconv, host latency, real trainings)",
        "",
        f"Budgets of examples/quickstart.yaml; {args.trainings} trainings of {args.epochs} epochs per search "
        f"(default-mf: the same {args.trainings * args.epochs} epochs, successive halving); the winner "
        f"retrained for {args.final_epochs} epochs, int8, accuracy measured with LiteRT on the 1,000-image "
        f"test split. Seeds {seeds}. `benchmarks/search_mnist.py --name {args.name}`, 2 shared CPU cores, "
        f"one worker; {_machine()}. Every shipped file was verified first (its own measured latency and "
        "size, `nas run`'s verification); a search whose verified files all missed ships nothing.",
        "",
        "| strategy | searches | mean test accuracy (shipped) | stdev | mean val accuracy in search | "
        "trainings (mean) | epochs (mean) | trained breaking a budget | shipped over budget (measured) | "
        "infeasible proposals (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['searches']} | {s['mean_test_accuracy']:.4f} | {s['stdev_test_accuracy']:.4f} | "
            f"{s['mean_val_accuracy_search']:.4f} | {s['mean_trainings']:.1f} | {s['mean_epochs_spent']:.1f} | "
            f"{s['trained_breaking_budget']} | {s['shipped_breaking_budget_measured']} | "
            f"{s['mean_infeasible_proposals']:.1f} |"
        )
    lines += [
        "",
        "| strategy | seed | test accuracy (shipped) | val accuracy in search | trainings by epochs | "
        "trained breaking a budget | infeasible proposals | latency budget (ms) | shipped: predicted / "
        "measured ms | verified fit / all | shipped arch | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = (r.get("budgets") or {}).get("max_latency_ms")
        if r.get("shipped", True):
            acc = f"{r['shipped_test_accuracy']:.4f} | {r['shipped_val_accuracy_search']:.4f}"
            lat = (
                f"{r['shipped_predicted_latency_ms']:.4f} / {r['shipped_measured_latency_ms']:.4f}"
                if r.get("shipped_predicted_latency_ms") is not None and r.get("shipped_measured_latency_ms")
                else "-"
            )
        else:
            acc, lat = "nothing shipped | -", "-"
        lines.append(
            f"| {r['variant']} | {r['seed']} | {acc} | {r['trainings_by_epochs']} | {r['trained_breaking_budget']} | "
            f"{r['infeasible_proposals']} | {'-' if budget is None else f'{budget:.4f}'} | {lat} | "
            f"{r.get('verified_fit', '-')} / {r.get('verified', '-')} | `{r['shipped_arch']}` | {r['seconds']:.0f} |"
        )
    if all(n in summary for n in ("default", "kt-random", "tpe")):
        d = summary["default"]["mean_test_accuracy"]
        others = {n: summary[n]["mean_test_accuracy"] for n in ("kt-random", "tpe")}
        breakers = sum(s["trained_breaking_budget"] for s in summary.values())
        met = all(d >= v for v in others.values()) and breakers == 0
        lines += [
            "",
            f"Floor (default's mean test accuracy >= kt-random's and tpe's at equal trainings, no trained "
            f"candidate breaking a budget): **{'met' if met else 'not met'}** (default {d:.4f}, "
            + ", ".join(f"{n} {v:.4f}" for n, v in others.items())
            + f"; {breakers} trained budget-breakers).",
        ]
    if summary:
        over = {n: s["shipped_breaking_budget_measured"] for n, s in summary.items()}
        none = {n: s["nothing_shipped"] for n, s in summary.items()}
        lines += [
            "",
            "Verified shipping (issue 15): shipped files measured over a budget, per strategy: "
            + ", ".join(f"{n} {v}" for n, v in over.items())
            + "; searches that shipped nothing: "
            + ", ".join(f"{n} {v}" for n, v in none.items())
            + (
                f". default's mean shipped test accuracy {summary['default']['mean_test_accuracy']:.4f} against "
                f"{BEFORE_VERIFICATION[0]:.4f} - {BEFORE_VERIFICATION[1]:.4f} = "
                f"{BEFORE_VERIFICATION[0] - BEFORE_VERIFICATION[1]:.4f} before verification (6 seeds)."
                if "default" in summary
                else "."
            ),
        ]
    tmp = RESULTS / f".{args.name}.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS / f"{args.name}.md")


def previous_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Searches of an earlier run with the same trainings and epochs (others are not comparable)."""
    path = RESULTS / f"{args.name}.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    same = ("trainings", "epochs", "final_epochs")
    if any(old["args"].get(k) != getattr(args, k) for k in same):
        raise SystemExit(f"{path}: written with other {same}; rerun without --append")
    return list(old["runs"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="default,kt-random,tpe,default-mf")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trainings", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--final-epochs", type=int, default=6)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument(
        "--append", action="store_true", help="keep the searches already in results/search_mnist.json"
    )
    ap.add_argument(
        "--prior-check", type=int, default=0, metavar="N", help="only the prior check, N trainings"
    )
    ap.add_argument("--prior-seed", type=int, default=0)
    ap.add_argument(
        "--name", default="search_mnist", help="results file stem (benchmarks/results/NAME.{json,md})"
    )
    args = ap.parse_args()
    if args.prior_check:
        write_prior_check(prior_check(args.prior_check, args))
        return 0
    names = args.strategies.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--strategies: unknown {unknown[0]!r}; valid: {sorted(VARIANTS)}")
    rows = previous_rows(args) if args.append else []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in names:
            rows = [r for r in rows if (r["variant"], r["seed"]) != (name, seed)]
            row = one(name, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, args)
    if rows:
        write(rows, args)  # also with --append --seeds 0: rewrite the tables from the JSON
    return 0


if __name__ == "__main__":
    sys.exit(main())
