"""Search on the real task: bundled MNIST digits (``mnist5k``), ``mbconv``, this host's latency.

At equal numbers of trainings, ``default`` against keras-tuner's random search oracle
(``kt-random``) and Optuna's TPE, several seeds, real (short) trainings through ``nas.run.run``.
Reports the validation accuracy of the shipped model, how many trained candidates break a budget
(predicted, by the screen) and how many proposals were infeasible (stock keras-tuner, which only
limits the parameter count, would have trained those or aborted after a few in a row).

Writes ``benchmarks/results/search_mnist.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def one(strategy: str, seed: int, args: argparse.Namespace) -> dict:
    import optuna

    from nas.config import parse_config
    from nas.run import run

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["search"] = {"strategy": strategy, "trainings": args.trainings, "seed": seed, "workers": 1}
    doc["training"] = {**doc["training"], "epochs": args.epochs, "final_epochs": 1}
    config = parse_config(doc, base_dir=ROOT / "examples")
    with tempfile.TemporaryDirectory() as td:
        started = time.time()
        run(config, Path(td) / "run", status=lambda s: None)
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{Path(td) / 'run' / 'study.db'}")
        trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if t.user_attrs.get("state") in ("complete", "failed")]
    complete = [t for t in trained if t.user_attrs.get("state") == "complete"]
    breaking = [t for t in trained if any(v > 0 for v in (t.user_attrs.get("violations") or {}).values())]
    best = max(complete, key=lambda t: (t.values[0], -t.values[1])) if complete else None
    return {
        "strategy": strategy,
        "seed": seed,
        "trained": len(trained),
        "trained_breaking_budget": len(breaking),
        "infeasible_proposals": sum(1 for t in trials if t.user_attrs.get("state") == "infeasible"),
        "shipped_arch": best.user_attrs["arch"] if best else None,
        "shipped_val_accuracy": best.values[0] if best else None,
        "seconds": round(time.time() - started, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="default,kt-random,tpe")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trainings", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        for strategy in args.strategies.split(","):
            row = one(strategy, seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_mnist.json").write_text(
        json.dumps({"args": vars(args), "runs": rows}, indent=1) + "\n"
    )
    lines = [
        "# Search on mnist5k (mbconv, host latency, real trainings)",
        "",
        f"{args.trainings} trainings of {args.epochs} epochs per search, {args.seeds} seeds.",
        "",
        "| strategy | mean shipped val accuracy | trained breaking a budget | infeasible proposals (mean) |",
        "|---|---|---|---|",
    ]
    for s in args.strategies.split(","):
        rs = [r for r in rows if r["strategy"] == s]
        accs = [r["shipped_val_accuracy"] for r in rs if r["shipped_val_accuracy"] is not None]
        lines.append(
            f"| {s} | {sum(accs) / max(len(accs), 1):.4f} | {sum(r['trained_breaking_budget'] for r in rs)} | "
            f"{sum(r['infeasible_proposals'] for r in rs) / max(len(rs), 1):.1f} |"
        )
    (RESULTS / "search_mnist.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
