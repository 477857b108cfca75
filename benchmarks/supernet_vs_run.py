"""Quality and cost floors of issue 20: one supernet specialized for 3 devices against 3 `nas run`
searches with the same budgets, for several seeds, end to end through the real CLI.

Devices (mnist5k, the quickstart space; each a `nas run` config written into ``--work``):

* ``int8``: this machine's LiteRT int8 table (examples/quickstart.yaml as it is);
* ``fp32``: this machine's LiteRT fp32 table, shipped as an fp32 file (``export.pipeline: [strip:keep]``: no quantization),
  size budget 4x the int8 one (4 bytes a weight instead of 1);
* ``slow``: a device 3x slower than this machine: the host's int8 table with every block's latency
  multiplied by 3 (`nas run` prices with it, cannot time the device and ships by prediction).
  Its "measured" latency here is the shipped file timed on this machine, times 3.

Per seed: the three `nas run` searches (relative latency budget: the 0.25 quantile on each
device), then `nas supernet train` (once, on the int8 config), then `nas specialize --config`
for each device with the budgets the `nas run` of that device and seed resolved, fine-tuned for
``--finetune-epochs``, then one more specialization without fine-tuning. Every command runs in
its own process; CPU time is that process's and its children's (``os.wait4``), wall time is
measured around it. Each shipped ``model.tflite`` is timed again in a fresh process (LiteRT, 1
thread, median of 3 runs of >= 1 s) against its budget.

Floors: mean over devices and seeds of (specialized test accuracy - `nas run` test accuracy) >=
-0.5 points; supernet training + the 3 specializations <= half the CPU time of the 3 searches
(per seed, and summed); one more specialization (no fine-tune) <= 60 s; every specialized
model within its budget.

Usage: .venv/bin/python benchmarks/supernet_vs_run.py --work /tmp/svr [--seeds 0,1,2]
Writes benchmarks/results/supernet_vs_run.{json,md} (after every step, so a stopped run keeps
what it measured; ``--work`` keeps the runs, and a step whose folder is complete is not redone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NAS = str(Path(sys.executable).parent / "nas")
DEVICES = ("int8", "fp32", "slow")
SLOW_FACTOR = 3.0
FP32_SIZE_FACTOR = 4.0


def run(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall time and the CPU time of it and its children."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {' | '.join(tail)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "command": " ".join(cmd[1:])}


def remeasure(model: Path) -> float:
    """The file timed in a fresh process as benchmarks/quickstart.py re-measures a shipped one."""
    from quickstart import REMEASURE  # benchmarks/ is this script's folder, first on sys.path

    out = subprocess.run(
        [sys.executable, "-c", REMEASURE, str(model)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[0])  # median of the 3 medians (then min, max)


def host_int8_table(work: Path) -> Path:
    """The host's cached LiteRT int8 table of the quickstart space (the first int8 run made it)."""
    from latency_models.profile import cache_dir

    found = sorted(cache_dir().glob("mbconv-litert-*-int8-t1-*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("no cached host int8 table of the mbconv space: the int8 nas run makes it")
    return found[-1]


def host_calibration(work: Path, host: Any) -> list[dict[str, Any]]:
    """The whole-model timings of the calibration networks the int8 run measured on this machine
    (nas run keeps them in its cache beside the host table)."""
    from nas.calibration import _calibration_path
    from nas.config import load_config
    from search_spaces import TaskShape, get_space

    config = load_config(config_for(work, "int8", 0))
    space = get_space(config.space.name, config.space.options)

    class HostPredictor:
        table = host

    path, _ = _calibration_path(config, space, TaskShape((28, 28, 1), 10), HostPredictor)
    return list(json.loads(path.read_text())["models"])


def slow_table(work: Path) -> Path:
    from dataclasses import replace

    from latency_models.table import CALIBRATION_KEY, INVOKE_KEY, Entry, LatencyTable

    path = work / "slow_x3.json"
    if not path.exists():
        host = LatencyTable.load(host_int8_table(work))
        entries = {
            b: Entry(e.mean_ms * SLOW_FACTOR, e.std_ms * SLOW_FACTOR, e.count, e.memory_bytes)
            for b, e in host.entries.items()
        }
        # A device's table as `nas latency import --kit` writes it: its blocks, its per-invoke
        # overhead and the whole-model timings of the calibration networks (here this machine's,
        # x3) on which nas run fits the whole-model correction; not this machine's fingerprint.
        extra = {k: v for k, v in host.meta.extra.items() if k not in ("machine", "fingerprint")}
        extra[INVOKE_KEY] = extra.get(INVOKE_KEY, 0.0) * SLOW_FACTOR
        extra[CALIBRATION_KEY] = [
            {**r, "latency_ms": r["latency_ms"] * SLOW_FACTOR, "spread_ms": r["spread_ms"] * SLOW_FACTOR}
            for r in host_calibration(work, host)
        ]
        extra.update(input_shape=[28, 28, 1], num_classes=10)
        meta = replace(
            host.meta,
            device="slow-x3",
            extra=extra,
            source=f"the host's LiteRT int8 table with every latency x{SLOW_FACTOR:g} (benchmarks/supernet_vs_run.py)",
        )
        LatencyTable(meta, entries).save(path)
    return path


def config_for(work: Path, device: str, seed: int) -> Path:
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["search"]["seed"] = seed
    if device == "fp32":
        doc["latency"]["dtype"] = "fp32"
        doc["export"]["pipeline"] = ["strip:keep"]
        doc["constraints"]["max_size_kb"] = doc["constraints"]["max_size_kb"] * FP32_SIZE_FACTOR
    elif device == "slow":
        doc["latency"] = {"device": "slow-x3", "table": str(slow_table(work))}
    path = work / "configs" / f"{device}_seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def phases(folder: Path) -> dict[str, Any]:
    """Where a run's time went, from its own report and study: wall seconds until the search
    ended (latency model, budgets and the search), in all, and for a specialization the wall
    seconds of its subnet evaluations (each trial's ``run_s``) and how many came from the cache."""
    import optuna

    report = json.loads((folder / "report.json").read_text())
    out = {"search_s": report["timings"]["search_s"], "total_s": report["timings"]["total_s"]}
    if "supernet" in report:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = f"sqlite:///{folder / 'study.db'}"
        (name,) = optuna.get_all_study_names(url)
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        out["evaluations_s"] = sum(float(t.user_attrs.get("run_s") or 0.0) for t in trials)
        out["evaluations_from_cache"] = report["supernet"].get("evaluations_from_cache", 0)
    return out


def shipped(folder: Path, device: str) -> dict[str, Any]:
    """What a run folder shipped: test accuracy, budgets, and the file re-timed here."""
    report = json.loads((folder / "report.json").read_text())
    best, budgets = report["best"], report["budgets"]["resolved"]
    measured = remeasure(folder / "model.tflite")
    if device == "slow":
        measured *= SLOW_FACTOR
    return {
        "arch": best["arch"],
        "test_accuracy": best["accuracy"],
        "size_bytes": best["size_bytes"],
        "predicted_latency_ms": best.get("predicted_latency_ms"),
        "remeasured_ms": measured,
        "budget_ms": budgets["max_latency_ms"],
        "budget_kb": budgets["max_size_kb"],
        "within_budget": measured <= budgets["max_latency_ms"]
        and best["size_bytes"] <= budgets["max_size_kb"] * 1024,
        "format": best.get("format"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="folder for configs, runs and supernets (kept)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--supernet-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "supernet_vs_run"))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the results from --work's finished steps"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from latency_models.profile import machine_fingerprint

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    state_file = work / "state.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    load = os.getloadavg()[0]

    def save() -> None:
        state_file.write_text(json.dumps(state, indent=1))
        write_results(state, args, machine_fingerprint(), load)

    def step(key: str, cmd: list[str], folder: Path, device: str | None) -> dict[str, Any]:
        if key in state:
            return state[key]
        print(f"{key}: {' '.join(cmd[1:])}", flush=True)
        record = run(cmd, work / "logs" / f"{key}.log")
        # What the run said about its own costs (the size model's re-fit, cached evaluations).
        record["notes"] = [
            line.strip()
            for line in (work / "logs" / f"{key}.log").read_text().splitlines()
            if "size model re-fitted" in line or "evaluated by earlier specializations" in line
        ]
        if device is not None:
            record.update(shipped(folder, device))
        state[key] = record
        save()
        print(f"  {json.dumps({k: v for k, v in record.items() if k != 'command'})}", flush=True)
        return record

    (work / "logs").mkdir(exist_ok=True)
    for key, record in state.items():  # each finished run's phases, from its folder
        folder = _folder(work, key)
        if "total_s" not in record and folder is not None and (folder / "report.json").exists():
            record.update(phases(folder))
    if args.report_only:
        save()
        return 0
    for seed in seeds:
        runs = {}
        for device in DEVICES:
            config = config_for(work, device, seed)
            folder = work / "runs" / f"{device}_seed{seed}"
            runs[device] = step(
                f"run_{device}_seed{seed}",
                [NAS, "run", str(config), "--out", str(folder)],
                folder,
                device,
            )
        supernet = work / "supernets" / f"seed{seed}"
        step(
            f"supernet_seed{seed}",
            [NAS, "supernet", "train", str(config_for(work, "int8", seed)), "--out", str(supernet),
             "--epochs", str(args.supernet_epochs)],
            supernet,
            None,
        )  # fmt: skip
        for device in DEVICES:
            folder = work / "specialized" / f"{device}_seed{seed}"
            budget = runs[device]
            step(
                f"specialize_{device}_seed{seed}",
                [NAS, "specialize", "--supernet", str(supernet), "--config", str(config_for(work, device, seed)),
                 "--max-latency-ms", repr(budget["budget_ms"]), "--max-size-kb", repr(budget["budget_kb"]),
                 "--finetune-epochs", str(args.finetune_epochs), "--out", str(folder)],
                folder,
                device,
            )  # fmt: skip
        # One more device: the int8 host at a budget half way between its 0.25 budget and the
        # fp32 one, no fine-tune (what a new device costs once the supernet exists).
        folder = work / "specialized" / f"extra_seed{seed}"
        budget = runs["int8"]
        step(
            f"specialize_extra_seed{seed}",
            [NAS, "specialize", "--supernet", str(supernet), "--config", str(config_for(work, "int8", seed)),
             "--max-latency-ms", repr(budget["budget_ms"] * 1.2), "--max-size-kb", repr(budget["budget_kb"]),
             "--out", str(folder)],
            folder,
            "int8",
        )  # fmt: skip
    save()
    return 0


def _folder(work: Path, key: str) -> Path | None:
    kind, rest = key.split("_", 1)
    if kind == "run":
        return work / "runs" / rest
    if kind == "specialize":
        return work / "specialized" / rest
    return None


def write_results(
    state: dict[str, Any], args: argparse.Namespace, machine: dict[str, Any], load: float
) -> None:
    seeds = sorted({int(k.rsplit("seed", 1)[1]) for k in state})
    pairs, costs = [], []
    for seed in seeds:
        for device in DEVICES:
            r, s = state.get(f"run_{device}_seed{seed}"), state.get(f"specialize_{device}_seed{seed}")
            if r and s:
                pairs.append({"seed": seed, "device": device, "run": r, "specialized": s,
                              "difference_points": 100 * (s["test_accuracy"] - r["test_accuracy"])})  # fmt: skip
        runs = [state.get(f"run_{d}_seed{seed}") for d in DEVICES]
        specs = [state.get(f"specialize_{d}_seed{seed}") for d in DEVICES]
        sn = state.get(f"supernet_seed{seed}")
        if all(runs) and all(specs) and sn:
            run_cpu = sum(r["cpu_s"] for r in runs)
            sn_cpu = sn["cpu_s"] + sum(s["cpu_s"] for s in specs)
            costs.append({"seed": seed, "runs_cpu_s": run_cpu, "supernet_cpu_s": sn_cpu, "ratio": sn_cpu / run_cpu,
                          "runs_wall_s": sum(r["wall_s"] for r in runs),
                          "supernet_wall_s": sn["wall_s"] + sum(s["wall_s"] for s in specs)})  # fmt: skip
    extras = [state[k] for k in sorted(state) if k.startswith("specialize_extra")]
    specialized = [state[k] for k in sorted(state) if k.startswith("specialize_")]
    mean_diff = statistics.mean(p["difference_points"] for p in pairs) if pairs else None
    ratio = sum(c["supernet_cpu_s"] for c in costs) / sum(c["runs_cpu_s"] for c in costs) if costs else None
    floors = {
        "quality_mean_difference_ge_-0.5_points": None if mean_diff is None else mean_diff >= -0.5,
        "cost_cpu_ratio_le_0.5": None if ratio is None else ratio <= 0.5,
        "extra_specialization_le_60s": None if not extras else all(e["wall_s"] <= 60 for e in extras),
        "every_specialized_within_budget": None
        if not specialized
        else all(s["within_budget"] for s in specialized),
    }
    result = {
        "benchmark": "supernet vs nas run (issue 20 quality and cost floors)",
        "command": " ".join(
            ["python", "benchmarks/supernet_vs_run.py", *(a for a in sys.argv[1:] if a != "--report-only")]
        ),
        "machine": machine,
        "load_before": load,
        "supernet_epochs": args.supernet_epochs,
        "finetune_epochs": args.finetune_epochs,
        "pairs": pairs,
        "costs": costs,
        "extra": extras,
        "mean_difference_points": mean_diff,
        "cpu_ratio": ratio,
        "floors": floors,
        "steps": state,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    yes = {True: "yes", False: "NO", None: "not measured"}
    md = [
        "# Supernet vs `nas run` (issue 20: quality and cost)",
        "",
        f"`{result['command']}` on {machine.get('cpu', 'this machine')} (load average {load:.2f} when these results "
        "were written; the steps ran one after another, some beside a niced test run). "
        f"Supernet {args.supernet_epochs} epochs; specializations fine-tuned {args.finetune_epochs} epochs. "
        "Test accuracy of each shipped model.tflite; re-measured = that file timed again in a fresh process "
        f"(LiteRT, 1 thread; the slow device: this machine's time x{SLOW_FACTOR:g}).",
        "",
        "| seed | device | budget ms / KB | nas run: arch | test acc | re-measured ms | specialized: arch | test acc | re-measured ms | difference (points) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {p['seed']} | {p['device']} | {p['run']['budget_ms']:.4f} / {p['run']['budget_kb']:.0f} | "
            f"`{p['run']['arch']}` | {p['run']['test_accuracy']:.4f} | {p['run']['remeasured_ms']:.4f} | "
            f"`{p['specialized']['arch']}` | {p['specialized']['test_accuracy']:.4f} | "
            f"{p['specialized']['remeasured_ms']:.4f} | {p['difference_points']:+.2f} |"
            for p in pairs
        ),
        "",
        "| seed | 3 nas runs: CPU s (wall s) | supernet + 3 specializations: CPU s (wall s) | ratio |",
        "|---|---|---|---|",
        *(
            f"| {c['seed']} | {c['runs_cpu_s']:.0f} ({c['runs_wall_s']:.0f}) | "
            f"{c['supernet_cpu_s']:.0f} ({c['supernet_wall_s']:.0f}) | {c['ratio']:.2f} |"
            for c in costs
        ),
        "",
        "Per step (CPU s / wall s): "
        + "; ".join(f"{k} {v['cpu_s']:.0f}/{v['wall_s']:.0f}" for k, v in sorted(state.items())),
        "",
        "Where the wall time went, from each run's report (search = latency model, budgets and the search; "
        "the rest = verification, final training or fine-tune, export; evaluations = the subnets' own "
        "evaluation time within the search):",
        "",
        "| step | wall s | CPU s | search s | after the search s | evaluations s (from cache) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {k} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} | {v['search_s']:.0f} | {v['total_s'] - v['search_s']:.0f} | "
            + (f"{v['evaluations_s']:.0f} ({v['evaluations_from_cache']})" if "evaluations_s" in v else "")
            + " |"
            for k, v in sorted(state.items())
            if "total_s" in v
        ),
        "",
        "One more specialization (int8 host, latency budget x1.2, no fine-tune): "
        + ", ".join(
            f"{e['wall_s']:.0f} s wall ({e['cpu_s']:.0f} s CPU), test accuracy {e['test_accuracy']:.4f}"
            for e in extras
        ),
        "",
        f"Mean difference {mean_diff if mean_diff is None else f'{mean_diff:+.2f}'} points; CPU ratio "
        f"{ratio if ratio is None else f'{ratio:.2f}'}.",
        "",
        "Floors: " + ", ".join(f"{k} {yes[v]}" for k, v in floors.items()),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
