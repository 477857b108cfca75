"""Search floors on NAS-Bench-201, scored by ``../shared/tools/score_search.py`` (which recomputes
regret from the records and the ground truth, trusting nothing the engine reports).

Parts (``--part``, default all):
  table    B=100, the device table known: mean regret per strategy, default/random ratio,
           queries needed to come within 0.1 points of the optimum, and the "one network per
           cell group" floor (below);
  fewshot  B=100 with ``--latency-samples 20``: mean regret, infeasible shipped, and the
           regret of the best network it trained that truly fits (what a perfect choice of
           which trained networks to measure would ship: the rest is lost in verifying);
  pareto   B=200 ``--pareto``: hypervolume ratio of the found front;
  kt       default, random, TPE and keras-tuner's Bayesian oracle in the same run (fewer seeds:
           TPE and the keras-tuner GP cost seconds per search, ours a fraction of one).

The group floor: NAS-Bench-201 lists every isomorphic encoding of a cell as its own trained
network (same network, another training run: accuracies differ by 0.44 points on average), and
the scorer's optimum is the best *string*. The engine trains one network per group (its
cheapest encoding on the device) and never retrains it, so its regret cannot go below the regret
of the best feasible cheapest-encoding: that is the floor column. With predicted latencies
(fewshot) the typical-latency floor applies too: see ``floors``.

Results merge into ``benchmarks/results/search_nb201.json`` and a table in ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import functools
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCORE = ROOT.parent / "shared" / "tools" / "score_search.py"
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "nas" / "data" / "nb201"
NAS = [str(ROOT / ".venv" / "bin" / "nas")]
PY = str(ROOT / ".venv" / "bin" / "python")
ACC_COL = {
    "cifar10": "CIFAR10TestAccuracy200Epochs",
    "cifar100": "CIFAR100TestAccuracy200Epochs",
    "imagenet16": "ImageNetTestAccuracy200Epochs",
}
LINE = re.compile(
    r"^\s+(\S+)\s+seeds\s+(\d+)\s+mean regret (\S+)\s+median (\S+)\s+max (\S+)\s+infeasible shipped (\d+)(?:\s+HV ratio (\S+))?",
    re.M,
)


@functools.cache
def truth(dataset: str, device: str) -> tuple[dict[str, float], dict[str, float]]:
    with gzip.open(DATA / "latency_ms_27dev.csv.gz", "rt") as f:
        lat = {r["arch_str"]: float(r[device]) for r in csv.DictReader(f)}
    with gzip.open(DATA / "accuracy_200ep.csv.gz", "rt") as f:
        acc = {r["ArchitectureString"]: float(r[ACC_COL[dataset]]) for r in csv.DictReader(f)}
    return acc, lat


@functools.cache
def groups() -> dict[str, str]:
    """arch -> NAS-Bench-201's ``UniqueString`` (isomorphic cells share it)."""
    with gzip.open(DATA / "accuracy_200ep.csv.gz", "rt") as f:
        return {r["ArchitectureString"]: r["UniqueString"] for r in csv.DictReader(f)}


def budget_at(dataset: str, device: str, quantile: float) -> float:
    """A row's latency budget: the ``quantile`` of the device's latencies over the space."""
    return float(np.quantile(list(truth(dataset, device)[1].values()), quantile))


@functools.cache
def floors(dataset: str, device: str, quantile: float) -> dict:
    """What the ground truth alone says about a row (no search involved).

    ``group_floor``: regret of the best feasible cheapest encoding of an isomorphism group (the
    engine trains one encoding per group; when several tie for cheapest, e.g. whole-millisecond
    phones or the FPGA, which one it trains is arbitrary, so their median accuracy counts). ``typical_floor``: regret of the best feasible network
    whose group's *median* latency also fits; a latency model sees a network's computation, so
    it prices a fast outlier encoding like its siblings and, with predicted latencies, cannot be
    expected to find the networks above this line. ``optimum_latency_vs_siblings``: the optimum's
    latency over its group's median.
    """
    acc, lat = truth(dataset, device)
    budget_ms = budget_at(dataset, device, quantile)
    g = groups()
    members = _members(g)
    median = {u: float(np.median([lat[a] for a in m])) for u, m in members.items()}
    feasible = [a for a in acc if lat[a] <= budget_ms]
    best = max(acc[a] for a in feasible)
    optimum = max(feasible, key=lambda a: acc[a])
    return {
        "best_feasible": best,
        "group_floor": group_floor(acc, lat, budget_ms, g),
        "typical_floor": best - max(acc[a] for a in feasible if median[g[a]] <= budget_ms),
        "optimum": optimum,
        "optimum_latency_vs_siblings": lat[optimum] / median[g[optimum]],
    }


def _members(grouping: dict[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for a, u in grouping.items():
        members.setdefault(u, []).append(a)
    return members


def group_floor(
    acc: dict[str, float], lat: dict[str, float], budget_ms: float, grouping: dict[str, str]
) -> float:
    """Regret of the best feasible cheapest encoding of a group of ``grouping`` (arch -> group),
    the median accuracy of the encodings that tie for cheapest."""
    best = max(acc[a] for a in acc if lat[a] <= budget_ms)
    cheapest = []
    for m in _members(grouping).values():
        low = min(lat[a] for a in m)
        if low <= budget_ms:
            cheapest.append(float(np.median([acc[a] for a in m if lat[a] <= low + 1e-9])))
    return best - max(cheapest)


def code_version() -> dict[str, object]:
    """The git head a row ran with and the files changed since, with a digest of each
    (uncommitted work of anyone sharing the tree runs too)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    changed = {}
    for line in status.splitlines():
        path = ROOT / line[3:]
        changed[line[3:]] = hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else None
    return {"head": head.stdout.strip(), "changed": changed}


def run_config(part: str, dataset: str, device: str, quantile: float, args: argparse.Namespace) -> dict:
    acc, lat = truth(dataset, device)
    budget_ms = budget_at(dataset, device, quantile)
    row_floors = floors(dataset, device, quantile)
    strategies = {
        "table": args.strategies,
        "fewshot": "default,random",
        "pareto": "default,random,nsga2",
        "kt": "default,random,tpe,kt-bayesian",
    }[part]
    seeds = {"kt": args.kt_seeds, "fewshot": args.fewshot_seeds, "pareto": args.pareto_seeds}.get(
        part, args.seeds
    )
    budget = 200 if part == "pareto" else 100
    code = code_version()  # before the run: the code it imports
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "out.json"
        cmd = NAS + [
            "benchmark",
            "nb201",
            "--dataset",
            dataset,
            "--device",
            device,
            "--max-latency-ms",
            repr(budget_ms),
            "--budget",
            str(budget),
            "--seeds",
            str(seeds),
            "--strategy",
            strategies,
            "--json",
            str(out),
            "--quiet",
        ]
        if part == "fewshot":
            cmd += ["--latency-samples", "20"]
        if part == "pareto":
            cmd += ["--pareto"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return {
                "part": part,
                "dataset": dataset,
                "device": device,
                "quantile": quantile,
                "error": p.stderr[-2000:],
            }
        score_cmd = [
            PY,
            str(SCORE),
            "--dataset",
            dataset,
            "--device",
            device,
            "--quantile",
            str(quantile),
            "--budget",
            str(budget),
            "--seeds",
            str(seeds),
            "--strategy",
            strategies,
            "--out-only",
            str(out),
        ]
        if part == "fewshot":
            score_cmd += ["--latency-samples", "20"]
        s = subprocess.run(score_cmd, capture_output=True, text=True, cwd=ROOT)
        records = json.loads(out.read_text())["runs"]
    feasible_best = row_floors["best_feasible"]
    result: dict = {
        "part": part,
        "dataset": dataset,
        "device": device,
        "quantile": quantile,
        "code": code,
        "budget_ms": budget_ms,
        **row_floors,
        "score_output": s.stdout,
        "strategies": {},
    }
    for m in LINE.finditer(s.stdout):
        name = m.group(1)
        rs = [r for r in records if r["strategy"] == name]
        within = []
        for r in rs:
            best_so_far, hit = -1e9, None
            for i, a in enumerate(r["queried"]):
                if lat[a] <= budget_ms:
                    best_so_far = max(best_so_far, acc[a])
                if best_so_far >= feasible_best - 0.1:
                    hit = i + 1
                    break
            within.append(hit)
        reached = [w for w in within if w is not None]
        # What a perfect final choice among its own trainings would have shipped (true latency):
        # the gap to ``mean_regret`` is lost in choosing (with predicted latencies: in verifying).
        trained = [
            feasible_best - max((acc[a] for a in r["queried"] if lat[a] <= budget_ms), default=np.nan)
            for r in rs
        ]
        result["strategies"][name] = {
            "seeds": int(m.group(2)),
            "mean_regret": float(m.group(3)),
            "median_regret": float(m.group(4)),
            "max_regret": float(m.group(5)),
            "infeasible_shipped": int(m.group(6)),
            "hv_ratio": float(m.group(7)) if m.group(7) else None,
            "seeds_within_0.1": len(reached),
            "median_queries_within_0.1": float(np.median(reached)) if reached else None,
            "mean_seconds": float(np.mean([r["seconds"] for r in rs])),
            "trained_regret": float(np.mean(trained)),
        }
        if part == "fewshot":
            # ``_ship``'s last resort: every kept-back sample missed, shipped on its prediction.
            blind = [r for r in rs if r.get("shipped_unmeasured")]
            result["strategies"][name]["shipped_unmeasured"] = len(blind)
            result["strategies"][name]["shipped_unmeasured_infeasible"] = sum(
                lat[r["best_arch"]] > budget_ms for r in blind
            )
            # Trainings spent on networks over the budget (true latency): what predicting
            # latency from few samples costs in trainings.
            result["strategies"][name]["trained_over_budget"] = float(
                np.mean([np.mean([lat[a] > budget_ms for a in r["queried"]]) for r in rs])
            )
    d, r = result["strategies"].get("default"), result["strategies"].get("random")
    if d and r and r["mean_regret"] > 0:
        result["default_random_ratio"] = d["mean_regret"] / r["mean_regret"]
    return result


def _share(strategy: dict) -> str:
    v = strategy.get("trained_over_budget")
    return "-" if v is None else f"{v:.0%}"


def write(results: list[dict]) -> None:
    """Merge ``results`` into the JSON (under a lock: two runs may finish rows at once) and
    rewrite the tables."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "search_nb201.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge_and_write(results)


def _merge_and_write(results: list[dict]) -> None:
    path = RESULTS / "search_nb201.json"
    old = json.loads(path.read_text()) if path.exists() else []
    key = lambda r: (r["part"], r["dataset"], r["device"], r["quantile"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in results})
    for r in merged.values():  # ground truth only: the same for every run of the row
        r.update(floors(r["dataset"], r["device"], r["quantile"]))
    rows = sorted(merged.values(), key=key)
    _write_atomic(path, json.dumps(rows, indent=1) + "\n")
    lines = ["# Search on NAS-Bench-201 (scored by score_search.py)", ""]
    for part in ("table", "fewshot", "pareto", "kt"):
        part_rows = [r for r in rows if r["part"] == part and "strategies" in r]
        if not part_rows:
            continue
        names = list(dict.fromkeys(n for r in part_rows for n in r["strategies"]))
        metric = "HV ratio" if part == "pareto" else "mean regret"
        lines += [f"## {part}: {metric} per strategy", ""]
        head = (
            "| dataset | device | q | "
            + " | ".join(names)
            + " | default/random | default queries to 0.1 (median) | infeasible shipped (default) | group floor |"
            + (
                " typical-latency floor | optimum latency / its group's median | shipped unmeasured (default) |"
                " best trained feasible (default) | trainings over the budget (default / random) |"
                if part == "fewshot"
                else ""
            )
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in part_rows:
            st = r["strategies"]
            vals = [
                (f"{st[n]['hv_ratio']:.3f}" if part == "pareto" else f"{st[n]['mean_regret']:.3f}")
                if n in st
                else "-"
                for n in names
            ]
            ratio = f"{r['default_random_ratio']:.2f}" if "default_random_ratio" in r else "-"
            d = st.get("default", {})
            q = d.get("median_queries_within_0.1")
            lines.append(
                f"| {r['dataset']} | {r['device']} | {r['quantile']} | "
                + " | ".join(vals)
                + f" | {ratio} | {q if q is not None else '-'} ({d.get('seeds_within_0.1', 0)}/{d.get('seeds', 0)} seeds)"
                + f" | {d.get('infeasible_shipped', '-')} | {r.get('group_floor', float('nan')):.3f} |"
                + (
                    f" {r['typical_floor']:.3f} | {r['optimum_latency_vs_siblings']:.2f} |"
                    f" {d.get('shipped_unmeasured', '-')} |"
                    + (f" {d['trained_regret']:.3f} |" if "trained_regret" in d else " - |")
                    + f" {_share(d)} / {_share(st.get('random', {}))} |"
                    if part == "fewshot"
                    else ""
                )
            )
        means = {
            n: np.mean(
                [
                    r["strategies"][n]["hv_ratio" if part == "pareto" else "mean_regret"]
                    for r in part_rows
                    if n in r["strategies"]
                ]
            )
            for n in names
        }
        lines += ["", "Mean over rows: " + ", ".join(f"{n} {v:.3f}" for n, v in means.items()), ""]
        over = {
            n: [
                r["strategies"][n]["trained_over_budget"]
                for r in part_rows
                if "trained_over_budget" in r["strategies"].get(n, {})
            ]
            for n in names
        }
        if any(over.values()):
            lines += [
                "Trainings spent on networks over the budget (true latency), mean over rows: "
                + ", ".join(f"{n} {np.mean(v):.0%}" for n, v in over.items() if v),
                "",
            ]
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"- ERROR {r['part']} {r['dataset']} {r['device']} {r['quantile']}: {r['error'][-300:]}")
    _write_atomic(RESULTS / "search_nb201.md", "\n".join(lines) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    """Several parts may run at once and merge into the same files: never leave half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="table,fewshot,pareto,kt")
    ap.add_argument(
        "--devices",
        default="pixel3,raspi4,gold_6240,eyeriss,fpga,titan_rtx_1,samsung_a50,pixel2,essential_ph_1,samsung_s7",
    )
    ap.add_argument("--datasets", default="cifar10,cifar100,imagenet16")
    ap.add_argument("--quantiles", default="0.25,0.5")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--kt-seeds", type=int, default=5)
    ap.add_argument("--fewshot-seeds", type=int, default=10)
    ap.add_argument("--pareto-seeds", type=int, default=5)
    ap.add_argument("--strategies", default="default,random", help="strategies of the table part")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rewrite", action="store_true", help="only rewrite the tables from the JSON")
    args = ap.parse_args()
    if args.rewrite:
        write([])
        return 0
    jobs = []
    for part in args.part.split(","):
        quantiles = [0.5] if part == "pareto" else [float(q) for q in args.quantiles.split(",")]
        for dataset in args.datasets.split(","):
            for device in args.devices.split(","):
                for q in quantiles:
                    jobs.append((part, dataset, device, q))
    results = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_config, *j, args) for j in jobs]
        for f in futures:
            r = f.result()
            results.append(r)
            st = r.get("strategies", {})
            summary = ", ".join(
                f"{n} {v['mean_regret']:.3f}" + (f" HV {v['hv_ratio']:.3f}" if v["hv_ratio"] else "")
                for n, v in st.items()
            )
            print(
                f"{r['part']} {r['dataset']} {r['device']} q{r['quantile']}: {summary or r.get('error', '')[-300:]}",
                flush=True,
            )
            write(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
