"""Device kit floors (issue 17): tables that price what they did not measure, and a kit measured
by a second, minimal Python environment acting as the device.

Stages (each merges its section into ``benchmarks/results/device_kit.{json,md}``):

* ``loo``: leave one resolution out on OFA's five Note10 tables; every block of the left-out
  resolution priced by the model fitted on the other four; 200 random ``ofa-mbv3`` subnets at
  that resolution. Floor: >= 90% within 10% of the left-out table's own sum, every resolution.
* ``device``: ``nas latency kit examples/quickstart.yaml``, copied to another folder, its
  ``measure.py`` run by ``--venv`` (numpy + ai-edge-litert only, no TensorFlow, no project
  code), stopped with kill -9 halfway and restarted, then ``nas latency import``. Floors: the
  restart measures only what was missing; kit < 5 MB; runner < 10 min.
* ``host``: ``host_table`` of the same blocks (fresh cache) right after; floor: >= 90% of
  blocks within 15% of the kit's.
* ``subset``: a third of the device table's blocks (``spanning_subset``) and the per-kind model
  for the rest, on 100 random networks; floor: >= 90% within 10% of the full table's sum.
* ``search``: ``nas run`` of the quickstart config with ``latency.table`` = the imported table;
  the shipped model.tflite timed here (the host was the device); floor: within 10% of its
  prediction.
* ``recheck``: the kit's runner run again, imported, and the shipped file timed right away.
* ``archs``: ``--archs`` random networks timed here with the kit's calibration files against the
  imported table's prediction (the search floor's question on many networks, drift reported).
* ``ceiling``: the host's own table on the shipped file, corrected the same way.

Run: ``.venv/bin/python benchmarks/device_kit.py [--stages loo,device,host,subset,search]
[--venv /tmp/kitvenv] [--work /tmp/device_kit]``. The machine is shared: timings are medians,
whole files are timed in interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latency_models.table import LatencyTable, write_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "examples" / "quickstart.yaml"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _nas(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nas", *args], capture_output=True, text=True, env=_env(), cwd=ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"nas {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _load_avg() -> float:
    return os.getloadavg()[0]


# -- leave one resolution out ---------------------------------------------------------------------
def stage_loo(args: argparse.Namespace) -> dict:
    from latency_models.extrapolate import fit_block_model, merge_tables
    from latency_models.ofa import load_ofa_yaml, vendored
    from search_spaces import TaskShape, get_space

    res = (160, 176, 192, 208, 224)
    tables = {r: load_ofa_yaml(vendored(f"note10_{r}_lookup_table.yaml")) for r in res}
    space = get_space("ofa-mbv3", {})
    rng = random.Random(args.seed)
    archs = [space.random(rng) for _ in range(200)]
    rows = []
    for r in res:
        model = fit_block_model(merge_tables(tables[q].entries for q in res if q != r))
        task = TaskShape((r, r, 3), 1000)
        truth_table = tables[r]
        held = sum(b in model.entries for b in truth_table.entries)
        block_err = [abs(model.price(b) / e.mean_ms - 1) for b, e in truth_table.entries.items()]
        errs, plain = [], []
        for a in archs:
            blocks = space.blocks(a, task)
            truth = sum(truth_table.entries[b].mean_ms for b in blocks)
            errs.append(abs(sum(model.price(b) for b in blocks) / truth - 1))
            cost_only = sum(model.entries[b] if b in model.entries else model.modelled(b) for b in blocks)
            plain.append(abs(cost_only / truth - 1))
        rows.append(
            {
                "resolution": r,
                "blocks": len(truth_table),
                "blocks_in_other_tables": held,
                "block_median_error": float(np.median(block_err)),
                "nets_within_10pct": float(np.mean(np.asarray(errs) <= 0.10)),
                "nets_median_error": float(np.median(errs)),
                "nets_max_error": float(np.max(errs)),
                "cost_model_only_within_10pct": float(np.mean(np.asarray(plain) <= 0.10)),
                "cost_model_only_median_error": float(np.median(plain)),
            }
        )
    return {"rows": rows, "floor_ok": all(r["nets_within_10pct"] >= 0.9 for r in rows), "archs": len(archs)}


# -- the kit on the "device" ----------------------------------------------------------------------
def _blocks_done(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["blocks"])
    except (OSError, ValueError, KeyError):
        return 0


def stage_device(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    kit = work / "kit"
    out: dict = {"load_average_before": _load_avg()}
    if not (kit / "manifest.json").is_file():
        shutil.rmtree(kit, ignore_errors=True)
        t0 = time.time()
        out["kit_command"] = _nas("latency", "kit", str(CONFIG), "--out", str(kit)).strip()
        out["kit_build_s"] = time.time() - t0
    manifest = json.loads((kit / "manifest.json").read_text())
    out["kit_bytes"] = sum(p.stat().st_size for p in kit.iterdir())
    out["kit_files"] = len(manifest["files"])
    out["blocks"] = manifest["blocks_total"]
    device = work / "device"
    shutil.rmtree(device, ignore_errors=True)
    shutil.copytree(kit, device / "kit")
    python = str(Path(args.venv) / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
            "('tensorflow', 'latency_models', 'nas', 'search_spaces', 'numpy', 'ai_edge_litert')}))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=device,
    )
    out["device_env_modules"] = json.loads(probe.stdout)
    out["device_python"] = subprocess.run(
        [python, "--version"], capture_output=True, text=True
    ).stdout.strip()
    results = device / "results.json"
    cmd = [python, "kit/measure.py", "--threads", "1", "--out", "results.json"]
    # First session: stopped with kill -9 once half the blocks are saved.
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=device, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    half = manifest["blocks_total"] // 2
    while proc.poll() is None and _blocks_done(results) < half:
        time.sleep(0.2)
    if proc.poll() is not None:
        raise SystemExit(f"runner ended before being killed: {proc.stderr.read()[-500:]}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_s = time.time() - t0
    before = json.loads(results.read_text())
    out["killed_after_blocks"] = len(before["blocks"])
    out["killed_after_invoke_rounds"] = len(before["invoke"])
    # Second session: must measure exactly what the first did not.
    t1 = time.time()
    done = subprocess.run(cmd, cwd=device, env=env, capture_output=True, text=True)
    second_s = time.time() - t1
    if done.returncode != 0:
        raise SystemExit(f"runner failed: {done.stderr[-500:]}")
    after = json.loads(results.read_text())
    kept_same = all(after["blocks"][k] == v for k, v in before["blocks"].items())
    second_blocks = sum(1 for v in after["blocks"].values() if v["session"] == 1)
    total_measurements = (
        manifest["timing"]["invoke_rounds"]
        + manifest["blocks_total"]
        + manifest["timing"]["repeats"] * sum(f["role"] in ("calibration", "arch") for f in manifest["files"])
    )
    done_before = (
        len(before["invoke"])
        + len(before["blocks"])
        + sum(len(m["repeats_ms"]) for m in before["models"].values())
    )
    out.update(
        {
            "runner_first_session_s": first_s,
            "runner_second_session_s": second_s,
            "runner_total_s": first_s + second_s,
            "second_session_blocks": second_blocks,
            "second_session_measurements": after["sessions"][1]["measured"],
            "missing_at_restart": total_measurements - done_before,
            "first_session_results_unchanged": kept_same,
            "resume_line": next((ln for ln in done.stderr.splitlines() if ln.startswith("resuming")), ""),
            "device_description": after["device"],
        }
    )
    out["restart_measures_only_missing"] = bool(
        kept_same
        and second_blocks == manifest["blocks_total"] - len(before["blocks"])
        and after["sessions"][1]["measured"] == total_measurements - done_before
    )
    table_path = work / "device.json"
    out["import_command"] = _nas(
        "latency", "import", str(results), "--kit", str(kit), "--device", "kit-venv", "--out", str(table_path)
    ).strip()
    out["kit_under_5mb"] = out["kit_bytes"] < 5e6
    out["runner_under_10min"] = out["runner_total_s"] < 600
    out["load_average_after"] = _load_avg()
    return out


def _quickstart() -> tuple:
    from nas.config import load_config
    from nas.data import load_task
    from search_spaces import get_space

    config = load_config(CONFIG)
    space = get_space(config.space.name, dict(config.space.options))
    return config, space, load_task(config.task).shape


def stage_host(args: argparse.Namespace) -> dict:
    from latency_models.profile import host_table

    work = Path(args.work)
    device = LatencyTable.load(work / "device.json")
    config, space, task = _quickstart()
    cache = work / "hostcache"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.time()
    load = _load_avg()
    host = host_table(space, task, list(device.entries), "litert", device.meta.dtype, 1, cache_dir=cache)
    ratios = np.array([device.entries[b].mean_ms / host.entries[b].mean_ms for b in device.entries])
    err = np.abs(ratios - 1)
    host.save(work / "host.json")
    return {
        "blocks": len(ratios),
        "host_profile_s": time.time() - t0,
        "load_average": load,
        "within_15pct": float(np.mean(err <= 0.15)),
        "within_10pct": float(np.mean(err <= 0.10)),
        "median_ratio_kit_over_host": float(np.median(ratios)),
        "median_abs_error": float(np.median(err)),
        "p90_abs_error": float(np.percentile(err, 90)),
        "block_ms_median": float(np.median([e.mean_ms for e in host.entries.values()])),
        "invoke_overhead_ms": {
            "kit": device.meta.extra.get("invoke_overhead_ms"),
            "host": host.meta.extra.get("invoke_overhead_ms"),
        },
        "floor_ok": bool(np.mean(err <= 0.15) >= 0.9),
    }


def stage_subset(args: argparse.Namespace) -> dict:
    from latency_models.extrapolate import fit_block_model
    from latency_models.kit import spanning_subset
    from latency_models.ofa import load_ofa_yaml, vendored
    from search_spaces import TaskShape, get_space

    work = Path(args.work)
    _, space, task = _quickstart()
    out: dict = {"fraction": 1 / 3, "archs": 100}
    cases = [
        ("kit on the minimal venv (quickstart mbconv)", LatencyTable.load(work / "device.json"), space, task)
    ]
    if (work / "host.json").is_file():
        cases.append(("host profile (quickstart mbconv)", LatencyTable.load(work / "host.json"), space, task))
    cases.append(
        (
            "OFA Note10 224 (ofa-mbv3)",
            load_ofa_yaml(vendored("note10_224_lookup_table.yaml")),
            get_space("ofa-mbv3", {}),
            TaskShape((224, 224, 3), 1000),
        )
    )
    rows = []
    for name, table, sp, tk in cases:
        rng = random.Random(args.seed)
        archs = [sp.random(rng) for _ in range(100)]
        chosen = spanning_subset(list(table.entries), 1 / 3)
        part = {b: table.entries[b] for b in chosen}
        model = fit_block_model(part)
        sub = LatencyTable(table.meta, part)
        errs = []
        for a in archs:
            blocks = sp.blocks(a, tk)
            errs.append(abs(sub.price(blocks, model.price) / table.price(blocks) - 1))
        rows.append(
            {
                "table": name,
                "blocks": len(table),
                "measured": len(chosen),
                "within_10pct": float(np.mean(np.asarray(errs) <= 0.10)),
                "median_error": float(np.median(errs)),
                "max_error": float(np.max(errs)),
            }
        )
    out["rows"] = rows
    out["floor_ok"] = rows[0]["within_10pct"] >= 0.9
    return out


def stage_search(args: argparse.Namespace) -> dict:
    import yaml

    from latency_models.profile import time_interleaved
    from latency_models.runtimes.litert import load_file

    work = Path(args.work)
    raw = yaml.safe_load(CONFIG.read_text())
    raw["latency"] = {"device": "kit-venv", "table": str(work / "device.json"), "dtype": "int8"}
    config_path = work / "search.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    run_dir = work / "run"
    t0 = time.time()
    if not (args.reuse_run and (run_dir / "report.json").is_file()):
        shutil.rmtree(run_dir, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "nas", "run", str(config_path), "--out", str(run_dir)],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        if done.returncode != 0:
            raise SystemExit(f"nas run failed: {done.stderr[-800:]}")
    wall = time.time() - t0
    report = json.loads((run_dir / "report.json").read_text())
    best = report["best"]
    predicted = float(best["predicted_latency_ms"])
    # The shipped file timed here, interleaved with the kit's calibration files: how far the
    # machine's speed moved since the runner measured them (the drift a device table cannot see)
    # is the ratio of the calibration files' timings now to then.
    table = LatencyTable.load(work / "device.json")
    results = json.loads((work / "device" / "results.json").read_text())
    manifest = json.loads((work / "kit" / "manifest.json").read_text())
    cal_files = [f["file"] for f in manifest["files"] if f["role"] == "calibration"]
    then = [float(np.median(results["models"][f]["repeats_ms"])) for f in cal_files]
    sessions = [load_file(run_dir / "model.tflite"), *(load_file(work / "kit" / f) for f in cal_files)]
    pairs = [(s, np.zeros(tuple(int(d) for d in s.input["shape"][1:]), np.float32)) for s in sessions]
    timings = time_interleaved(pairs, repeats=args.repeats)
    timing = timings[0]
    drift = [t.median_ms / m - 1 for t, m in zip(timings[1:], then, strict=True)]
    # Per round: the calibration files' speed against the runner's, and the shipped file's
    # error against its prediction scaled by that speed.
    per_round = []
    for i in range(len(timing.repeats_ms)):
        speed = float(np.median([t.repeats_ms[i] / m for t, m in zip(timings[1:], then, strict=True)]))
        per_round.append(timing.repeats_ms[i] / (predicted * speed) - 1)
    config_space, _, fitted = _kit_predictor(table)
    cal = table.meta.extra["calibration"]
    archs = [config_space.parse(c["arch"]) for c in cal]
    fit_err = [float(v) / c["latency_ms"] - 1 for v, c in zip(fitted.predict(archs), cal, strict=True)]
    now_err = [float(v) / t.median_ms - 1 for v, t in zip(fitted.predict(archs), timings[1:], strict=True)]
    check = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measured_ms": timing.median_ms,
        "error": timing.median_ms / predicted - 1,
        "drift_corrected_error": float(np.median(per_round)),
        "calibration_drift": float(np.median(drift)),
        "load_average": _load_avg(),
    }
    previous = (json.loads((RESULTS / "device_kit.json").read_text()).get("search") or {}).get("checks", [])
    checks = [*previous, check] if args.reuse_run else [check]
    return {
        "checks": checks,
        "calibration_now_vs_runner": drift,
        "calibration_drift_median": float(np.median(drift)),
        "calibration_fit_error_at_runner_time": fit_err,
        "calibration_prediction_error_now": now_err,
        "shipped_error_drift_corrected": float(np.median(per_round)),
        "shipped_error_drift_corrected_per_round": per_round,
        "repeats": len(timing.repeats_ms),
        "wall_s": wall,
        "latency_model": report["latency_model"]["description"],
        "correction": report["latency_model"]["correction"],
        "calibration_models": len(report["latency_model"]["calibration"] or []),
        "shipped_arch": best.get("arch"),
        "predicted_ms": predicted,
        "measured_here_ms": timing.median_ms,
        "measured_spread_ms": timing.spread_ms,
        "error": timing.median_ms / predicted - 1,
        "floor_ok": abs(timing.median_ms / predicted - 1) <= 0.10,
        "load_average": _load_avg(),
    }


def stage_recheck(args: argparse.Namespace) -> dict:
    """The shipped file against a table measured just before: the kit's runner run again in the
    minimal venv (fresh results), imported, the same correction fitted, then the shipped file and
    the calibration files timed right away: the floor's question without 10+ minutes of drift."""
    from latency_models.profile import time_interleaved
    from latency_models.runtimes.litert import load_file

    work = Path(args.work)
    report = json.loads((work / "run" / "report.json").read_text())
    arch_text, searched = report["best"]["arch"], float(report["best"]["predicted_latency_ms"])
    fresh = work / "recheck"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(work / "kit", fresh / "kit")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = str(Path(args.venv) / "bin" / "python")
    t0 = time.time()
    subprocess.run(
        [python, "kit/measure.py", "--out", "results.json"],
        cwd=fresh,
        env=env,
        check=True,
        capture_output=True,
    )
    runner_s = time.time() - t0
    _nas(
        "latency",
        "import",
        str(fresh / "results.json"),
        "--kit",
        str(work / "kit"),
        "--out",
        str(fresh / "t.json"),
    )
    space, _, p = _kit_predictor(LatencyTable.load(fresh / "t.json"))
    predicted = float(p.predict([space.parse(arch_text)])[0])
    sessions = [load_file(work / "run" / "model.tflite")]
    pairs = [(s, np.zeros(tuple(int(d) for d in s.input["shape"][1:]), np.float32)) for s in sessions]
    timing = time_interleaved(pairs, repeats=args.repeats)[0]
    return {
        "runner_s": runner_s,
        "shipped_arch": arch_text,
        "predicted_by_search_table_ms": searched,
        "predicted_by_fresh_table_ms": predicted,
        "measured_ms": timing.median_ms,
        "spread_ms": timing.spread_ms,
        "error": timing.median_ms / predicted - 1,
        "floor_ok": abs(timing.median_ms / predicted - 1) <= 0.10,
        "load_average": _load_avg(),
    }


def stage_ceiling(args: argparse.Namespace) -> dict:
    """The same question for the host's own table (the ``host`` stage's profile of the same
    blocks): the kit's calibration files and the shipped file timed here in the same interleaved
    rounds, the correction fitted on the calibration timings, the shipped file predicted. What
    the host pipeline gets without its near-budget models and verified files is the ceiling for
    a device table, which has neither."""
    from latency_models.predictor import TablePredictor
    from latency_models.profile import time_interleaved
    from latency_models.runtimes.litert import load_file
    from search_spaces import TaskShape, get_space

    work = Path(args.work)
    report = json.loads((work / "run" / "report.json").read_text())
    arch_text = report["best"]["arch"]
    device = LatencyTable.load(work / "device.json")
    host = LatencyTable.load(work / "host.json")
    extra = device.meta.extra
    space = get_space(extra["space"], extra["space_options"])
    task = TaskShape(tuple(extra["input_shape"]), extra["num_classes"])
    manifest = json.loads((work / "kit" / "manifest.json").read_text())
    cal = [f for f in manifest["files"] if f["role"] == "calibration"]
    files = [work / "run" / "model.tflite", *(work / "kit" / f["file"] for f in cal)]
    sessions = [load_file(f) for f in files]
    pairs = [(s, np.zeros(tuple(int(d) for d in s.input["shape"][1:]), np.float32)) for s in sessions]
    timings = time_interleaved(pairs, repeats=args.repeats)
    archs = [space.parse(f["arch"]) for f in cal]
    arch = space.parse(arch_text)
    out = {"shipped_arch": arch_text, "measured_ms": timings[0].median_ms, "load_average": _load_avg()}
    for name, table in (("host", host), ("kit", device)):
        p = TablePredictor(
            space=space.name, device=name, table=table, task=task, space_options=extra["space_options"]
        )
        raw = float(p.raw([arch])[0])
        fitted = p.with_correction(archs, [t.median_ms for t in timings[1:]])
        predicted = float(fitted.predict([arch])[0])
        out[name] = {
            "raw_sum_ms": raw,
            "raw_error": timings[0].median_ms / raw - 1,
            "predicted_ms": predicted,
            "error": timings[0].median_ms / predicted - 1,
            "calibration_fit_errors": [
                float(v) / t.median_ms - 1 for v, t in zip(fitted.predict(archs), timings[1:], strict=True)
            ],
        }
    return out


def _kit_predictor(table: LatencyTable):
    """The imported table's predictor with its correction fitted on the table's calibration
    models, as ``nas run`` fits it: (space, task, predictor)."""
    from latency_models.predictor import TablePredictor
    from search_spaces import TaskShape, get_space

    extra = table.meta.extra
    space = get_space(extra["space"], extra["space_options"])
    task = TaskShape(tuple(extra["input_shape"]), extra["num_classes"])
    cal = extra["calibration"]
    p = TablePredictor(
        space=space.name, device="kit", table=table, task=task, space_options=extra["space_options"]
    )
    return (
        space,
        task,
        p.with_correction([space.parse(c["arch"]) for c in cal], [c["latency_ms"] for c in cal]),
    )


def stage_archs(args: argparse.Namespace) -> dict:
    """The search floor's question on many networks instead of one shipped file: ``--archs``
    random quickstart networks (weights that look trained, converted as calibration files are),
    timed here interleaved with the kit's calibration files, against the imported table's
    corrected prediction; the calibration files' speed now against the runner's gives the drift
    of the machine between the two, reported and also divided out."""
    from latency_models.profile import convert_runnable, time_interleaved
    from latency_models.runtimes import get_runtime
    from latency_models.runtimes.litert import load_file
    from nas.data import load_task
    from search_spaces.weights import like_trained

    work = Path(args.work)
    table = LatencyTable.load(work / "device.json")
    space, task, predictor = _kit_predictor(table)
    rng = random.Random(args.seed)
    archs = list(dict.fromkeys(space.random(rng) for _ in range(args.archs * 2)))[: args.archs]
    folder = work / "archs"
    folder.mkdir(exist_ok=True)
    rt = get_runtime("litert")
    data = load_task(_quickstart()[0].task)
    rep = list(data.inputs(data.x_train[:64]))
    t0 = time.time()
    for i, arch in enumerate(archs):
        path = folder / f"{i:03d}-{arch}.tflite"
        if not path.is_file():
            art = convert_runnable(rt, like_trained(space, arch, task, seed=i), "int8", rep, profiling=True)
            write_atomic(path, art.data)
    convert_s = time.time() - t0
    results = json.loads((work / "device" / "results.json").read_text())
    manifest = json.loads((work / "kit" / "manifest.json").read_text())
    cal_files = [f["file"] for f in manifest["files"] if f["role"] == "calibration"]
    then = [float(np.median(results["models"][f]["repeats_ms"])) for f in cal_files]
    files = [folder / f"{i:03d}-{a}.tflite" for i, a in enumerate(archs)] + [
        work / "kit" / f for f in cal_files
    ]
    load = _load_avg()
    sessions = [load_file(f) for f in files]
    timings = time_interleaved([(s, rep[0]) for s in sessions], repeats=args.repeats)
    measured = np.array([t.median_ms for t in timings[: len(archs)]])
    speed = float(np.median([t.median_ms / m for t, m in zip(timings[len(archs) :], then, strict=True)]))
    predicted = predictor.predict(archs)
    err = measured / predicted - 1
    err_drift = measured / (predicted * speed) - 1
    return {
        "archs": len(archs),
        "convert_s": convert_s,
        "load_average": load,
        "calibration_speed_now_vs_runner": speed,
        "errors": [float(e) for e in err],
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "median_abs_error": float(np.median(np.abs(err))),
        "max_abs_error": float(np.max(np.abs(err))),
        "within_10pct_drift_removed": float(np.mean(np.abs(err_drift) <= 0.10)),
        "median_abs_error_drift_removed": float(np.median(np.abs(err_drift))),
        "max_abs_error_drift_removed": float(np.max(np.abs(err_drift))),
        "floor_ok": bool(np.mean(np.abs(err) <= 0.10) >= 0.9),
    }


STAGES = {
    "ceiling": stage_ceiling,
    "recheck": stage_recheck,
    "archs": stage_archs,
    "loo": stage_loo,
    "device": stage_device,
    "host": stage_host,
    "subset": stage_subset,
    "search": stage_search,
}


def write_md(result: dict) -> None:
    md = ["# device kit (issue 17)", ""]
    m = result.get("machine", {})
    md.append(
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores), shared with other jobs while measuring "
        f"(load averages are in `device_kit.json`)."
    )
    commands = dict.fromkeys(result[s].get("command") for s in STAGES if s in result)
    md.append("Commands: " + "; ".join(f"`{c}`" for c in commands if c) + ".")
    loo = result.get("loo")
    if loo:
        md += [
            "",
            "## Leave one resolution out (OFA Note10 tables, 200 random ofa-mbv3 subnets)",
            "",
            "| left out | blocks (in other tables) | block median error | nets within 10% | nets median / max error | cost model alone: within 10% / median |",
            "|---|---|---|---|---|---|",
        ]
        for r in loo["rows"]:
            md.append(
                f"| {r['resolution']} | {r['blocks']} ({r['blocks_in_other_tables']}) | {r['block_median_error']:.1%} "
                f"| {r['nets_within_10pct']:.0%} | {r['nets_median_error']:.1%} / {r['nets_max_error']:.1%} "
                f"| {r['cost_model_only_within_10pct']:.0%} / {r['cost_model_only_median_error']:.1%} |"
            )
        md.append(
            f"\nFloor (>= 90% within 10%, every resolution): {'met' if loo['floor_ok'] else 'NOT met'}."
        )
    d = result.get("device")
    if d:
        md += [
            "",
            "## Kit measured by a minimal venv (the device)",
            "",
            f"Device environment modules found: {d['device_env_modules']} ({d['device_python']}).",
            "",
            "| quantity | value | floor |",
            "|---|---|---|",
            f"| kit size | {d['kit_bytes'] / 1e6:.2f} MB ({d['kit_files']} files, {d['blocks']} blocks) | < 5 MB: {'met' if d['kit_under_5mb'] else 'NOT met'} |",
            f"| runner wall time (both sessions) | {d['runner_total_s']:.0f} s ({d['runner_first_session_s']:.0f} + {d['runner_second_session_s']:.0f}) | < 600 s: {'met' if d['runner_under_10min'] else 'NOT met'} |",
            f"| kill -9 after | {d['killed_after_blocks']} blocks saved | |",
            f"| restart measured | {d['second_session_measurements']} of the {d['missing_at_restart']} missing ({d['second_session_blocks']} blocks); first session's results unchanged: {d['first_session_results_unchanged']} | only the missing: {'met' if d['restart_measures_only_missing'] else 'NOT met'} |",
            "",
            f"Restart said: `{d['resume_line']}`. Import: `{d['import_command'].splitlines()[0]}`.",
        ]
        if "kit_build_s" in d:
            md.append(f"Kit build (`nas latency kit`): {d['kit_build_s']:.0f} s.")
    h = result.get("host")
    if h:
        md += [
            "",
            "## Kit (minimal venv) vs `host_table` on the same blocks",
            "",
            f"{h['blocks']} blocks (median block {h['block_ms_median'] * 1000:.1f} us): {h['within_15pct']:.0%} within 15% "
            f"({h['within_10pct']:.0%} within 10%), median |error| {h['median_abs_error']:.1%}, 90th percentile "
            f"{h['p90_abs_error']:.1%}, median ratio kit/host {h['median_ratio_kit_over_host']:.3f}. Per-invoke cost: "
            f"kit {h['invoke_overhead_ms']['kit']:.4f} ms, host {h['invoke_overhead_ms']['host']:.4f} ms. The two ran "
            f"one after the other (not interleaved: two processes), load average {h['load_average']:.2f}. "
            f"Floor (>= 90% within 15%): {'met' if h['floor_ok'] else 'NOT met'}.",
        ]
        if "ceiling" in h:
            c = h["ceiling"]
            md.append(
                f"\nCeiling: two host profiles of the same blocks agree {c['within_15pct']:.0%} within 15% "
                f"(median |difference| {c['median_abs_error']:.1%})."
            )
    s = result.get("subset")
    if s:
        md += [
            "",
            "## A third of the blocks measured, the rest predicted (100 random networks)",
            "",
            "| table | blocks | measured | within 10% of the full table | median / max error |",
            "|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            md.append(
                f"| {r['table']} | {r['blocks']} | {r['measured']} | {r['within_10pct']:.0%} | {r['median_error']:.1%} / {r['max_error']:.1%} |"
            )
        md.append(f"\nFloor (first row, >= 90% within 10%): {'met' if s['floor_ok'] else 'NOT met'}.")
    q = result.get("search")
    if q:
        md += [
            "",
            "## Search with the imported table",
            "",
            f"`nas run` of the quickstart config with `latency.table` = the imported table ({q['wall_s']:.0f} s; "
            f"{q['latency_model']}; correction fitted on {q['calibration_models']} calibration models: "
            f"{q['correction']}). Shipped `{q['shipped_arch']}`: predicted {q['predicted_ms'] * 1000:.1f} us, "
            f"measured here {q['measured_here_ms'] * 1000:.1f} us (+-{q['measured_spread_ms'] * 1000:.1f}), "
            f"error {q['error']:+.1%}. Floor (within 10%): {'met' if q['floor_ok'] else 'NOT met'}.",
        ]
        if len(q.get("checks", [])) > 1:
            md += [
                "",
                "Every check of the same shipped file (`--reuse-run` times it again):",
                "",
                "| at (UTC) | measured us | error vs prediction | calibration files vs runner | drift-corrected error | load |",
                "|---|---|---|---|---|---|",
            ]
            for c in q["checks"]:
                md.append(
                    f"| {c['at']} | {c['measured_ms'] * 1000:.1f} | {c['error']:+.1%} | {c['calibration_drift']:+.1%} "
                    f"| {c['drift_corrected_error']:+.1%} | {c['load_average']:.2f} |"
                )
        if "calibration_drift_median" in q:
            md += [
                "",
                f"Timed in the same interleaved rounds, the kit's {len(q['calibration_now_vs_runner'])} calibration files "
                f"now run {q['calibration_drift_median']:+.1%} (median; "
                f"{min(q['calibration_now_vs_runner']):+.1%} to {max(q['calibration_now_vs_runner']):+.1%}) against "
                f"the runner's timings of them: the machine's speed drift between the device run and this check, "
                f"which a device table cannot see (on the host `nas run` re-times its calibration files every run). "
                f"Shipped error with that drift removed (each round's shipped timing against the prediction "
                f"scaled by the same round's calibration speed; median of {q['repeats']} rounds): "
                f"{q['shipped_error_drift_corrected']:+.1%} (rounds {min(q['shipped_error_drift_corrected_per_round']):+.1%} "
                f"to {max(q['shipped_error_drift_corrected_per_round']):+.1%}). The fitted "
                f"correction's error on the calibration models themselves, at the runner's time: "
                f"{', '.join(f'{e:+.1%}' for e in q['calibration_fit_error_at_runner_time'])}.",
            ]
    r = result.get("recheck")
    if r:
        md += [
            "",
            "## The shipped file against a freshly measured table",
            "",
            f"The kit's runner run again in the minimal venv ({r['runner_s']:.0f} s), imported, the correction "
            f"fitted on its calibration networks, then the shipped file timed right away in repeats "
            f"(load average {r['load_average']:.2f}): "
            f"predicted {r['predicted_by_fresh_table_ms'] * 1000:.1f} us (the search's table said "
            f"{r['predicted_by_search_table_ms'] * 1000:.1f}), measured {r['measured_ms'] * 1000:.1f} us "
            f"(+-{r['spread_ms'] * 1000:.1f}), error {r['error']:+.1%}. Within 10%: {'yes' if r['floor_ok'] else 'NO'}.",
        ]
    a = result.get("archs")
    if a:
        md += [
            "",
            "## Many networks against the imported table",
            "",
            f"{a['archs']} random quickstart networks (weights that look trained, int8), timed here with "
            f"the kit's calibration files ({args_repeats(a)}), against the imported table's corrected "
            f"prediction: {a['within_10pct']:.0%} within 10% (median |error| {a['median_abs_error']:.1%}, "
            f"max {a['max_abs_error']:.1%}). The calibration files ran {a['calibration_speed_now_vs_runner'] - 1:+.1%} "
            f"against the runner's timings of them (the machine's drift since); with that divided out: "
            f"{a['within_10pct_drift_removed']:.0%} within 10% (median {a['median_abs_error_drift_removed']:.1%}, "
            f"max {a['max_abs_error_drift_removed']:.1%}).",
        ]
    c = result.get("ceiling")
    if c:
        md += [
            "",
            "## Ceiling: the host's own table on the same shipped file",
            "",
            f"The shipped file and the kit's calibration files timed here in {args_repeats(c)}; the correction "
            f"fitted on those calibration timings for each table. Shipped file measured {c['measured_ms'] * 1000:.1f} us.",
            "",
            "| table | raw sum (us) | measured vs raw | corrected prediction (us) | measured vs prediction | calibration fit errors |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("host", "kit"):
            t = c[name]
            md.append(
                f"| {name} | {t['raw_sum_ms'] * 1000:.1f} | {t['raw_error']:+.1%} | {t['predicted_ms'] * 1000:.1f} "
                f"| {t['error']:+.1%} | {', '.join(f'{e:+.0%}' for e in t['calibration_fit_errors'])} |"
            )
    md.append("")
    write_atomic(RESULTS / "device_kit.md", "\n".join(md))


def args_repeats(r: dict) -> str:
    return f"interleaved rounds, load average {r['load_average']:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="loo,device,host,subset,search")
    parser.add_argument("--venv", default="/tmp/kitvenv", help="the minimal venv (numpy + ai-edge-litert)")
    parser.add_argument("--work", default="/tmp/device_kit")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--reuse-run", action="store_true", help="search: time the existing run's model again"
    )
    parser.add_argument(
        "--repeats", type=int, default=15, help="search, archs: interleaved rounds of the check"
    )
    parser.add_argument("--archs", type=int, default=60, help="archs: random networks timed")
    args = parser.parse_args()
    path = RESULTS / "device_kit.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    from latency_models.profile import machine_fingerprint

    result["machine"] = {**machine_fingerprint(), "python": platform.python_version()}
    result["command"] = "python benchmarks/device_kit.py " + " ".join(sys.argv[1:])
    Path(args.work).mkdir(parents=True, exist_ok=True)
    write_md(result)
    for stage in [s for s in args.stages.split(",") if s]:
        t0 = time.time()
        result[stage] = STAGES[stage](args)
        result[stage]["stage_s"] = time.time() - t0
        result[stage]["command"] = result["command"]
        write_atomic(path, json.dumps(result, indent=1) + "\n")
        write_md(result)
        print(f"{stage}: done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
