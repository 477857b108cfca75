"""Faults injected into real, tiny ``nas run``s: SIGINT (to the process group, as a terminal's
Ctrl-C) and SIGTERM at each phase, then ``--resume``; and a small full disk (tmpfs, root only).

    nice -n 19 python benchmarks/faults.py [--quick]

Writes ``benchmarks/results/faults.{json,md}``. Each signal case checks: the run stops within
``STOP_S`` seconds with exit 130/143 and one line on stderr, no trial is left RUNNING, and
``--resume`` completes with no completed trial trained again. Each disk-full case checks: a
non-zero exit, one line naming what could not be written, no traceback, and the run folder holds
all of its outputs or none of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STOP_S = 30.0
OUTPUTS = ("model.tflite", "export", "pareto.png", "report.html", "report.json")

TINY = """
task:
  data: digits
space:
  name: mbconv
  options:
    strides: [1, 2, 2]
    widths: [[8, 32], [16, 64], [24, 96]]
    depths: [1]
    kernels: [3]
    expands: [1, 6]
    se: [false]
    acts: [relu6]
    stem_width: 8
latency:
  device: host
  calibration_models: 2
constraints:
  max_size_kb: 24
search:
  strategy: random
  trainings: 3
  seed: 1
  workers: 1
training:
  epochs: 1
  final_epochs: 1
export:
  calibration_samples: 50
"""

# phase -> a piece of the progress output that says the run is in it
# phase -> (a piece of the progress output that comes just before it, seconds to wait after it)
PHASES = {
    "pricing": ("calibration measurements", 0.5),
    "training": ("searching:", 4.0),
    "retraining": ("retraining the winner", 1.0),
    "export": ("stage int8", 0.2),
    "report": ("export tflite", 0.5),
}


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "EDGE_NAS_CACHE": str(cache),
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
    }


def _nas(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas", *args]


def _study_states(out: Path) -> dict[str, int]:
    import sqlite3

    if not (out / "study.db").exists():
        return {}
    try:  # read-only: the study may sit on the full disk under test
        with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall()
    except sqlite3.Error as e:
        return {f"unreadable ({e})": 1}
    return {str(state): n for state, n in rows}


def _trained_archs(out: Path) -> list[str]:
    import optuna

    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name=optuna.study.get_all_study_names(url)[0], storage=url)
    return [
        t.user_attrs.get("canonical", "") for t in study.trials if t.user_attrs.get("state") == "complete"
    ]


def signal_case(work: Path, cache: Path, phase: str, sig: int) -> dict:
    cfg = work / "tiny.yaml"
    cfg.write_text(TINY)
    out = work / f"run-{phase}-{signal.Signals(sig).name}"
    log = work / f"{out.name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            _nas("run", str(cfg), "--out", str(out)),
            stderr=err,
            stdout=err,
            env=_env(cache),
            cwd=work,
            start_new_session=True,
        )
    needle, delay = PHASES[phase]
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and needle not in log.read_text():
        time.sleep(0.05)
    if needle not in log.read_text():
        proc.kill()
        proc.wait()
        return {"phase": phase, "signal": signal.Signals(sig).name, "ok": False, "why": "phase never reached"}
    time.sleep(delay)
    sent = time.time()
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=STOP_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stop_s = time.time() - sent
    rest = log.read_text()
    tail = [x for x in rest.replace("\r", "\n").splitlines() if x.strip()]
    last = tail[-1] if tail else ""
    states = _study_states(out)
    expected = 128 + sig
    finished_before = (out / "report.json").exists()
    resume = subprocess.run(
        _nas("run", str(cfg), "--out", str(out), "--resume"),
        capture_output=True,
        text=True,
        env=_env(cache),
        cwd=work,
        timeout=1200,
    )
    archs = _trained_archs(out) if (out / "study.db").exists() else []
    ok = (
        (proc.returncode == expected or (finished_before and proc.returncode == 0))
        and stop_s < STOP_S
        and "Traceback" not in rest
        and states.get("RUNNING", 0) == 0
        and resume.returncode == 0
        and all((out / n).exists() for n in OUTPUTS)
        and len(archs) == len(set(archs))
    )
    return {
        "phase": phase,
        "signal": signal.Signals(sig).name,
        "exit": proc.returncode,
        "stop_s": round(stop_s, 2),
        "last_line": last[:200],
        "traceback": "Traceback" in rest,
        "states_after_stop": states,
        "resume_exit": resume.returncode,
        "resume_last_line": (resume.stderr.strip().splitlines() or [""])[-1][:200],
        "completed_trials": len(archs),
        "trained_twice": len(archs) - len(set(archs)),
        "ok": ok,
    }


def disk_full_case(work: Path, cache: Path, size: str) -> dict:
    mount = work / f"tmpfs-{size}"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if r.returncode != 0:
        return {"size": size, "ok": None, "why": "cannot mount tmpfs (needs root)"}
    try:
        cfg = work / "tiny.yaml"
        cfg.write_text(TINY)
        out = mount / "run"
        proc = subprocess.run(
            _nas("run", str(cfg), "--out", str(out)),
            capture_output=True,
            text=True,
            env=_env(cache),
            cwd=work,
            timeout=1800,
        )
        lines = [x for x in proc.stderr.replace("\r", "\n").splitlines() if x.strip()]
        present = [n for n in OUTPUTS if (out / n).exists()]
        states = _study_states(out) if (out / "study.db").exists() else {}
        ok = (
            proc.returncode != 0
            and "Traceback" not in proc.stderr
            and bool(lines)
            and ("cannot write" in lines[-1] or "No space" in lines[-1] or "disk is full" in lines[-1])
            and len(present) in (0, len(OUTPUTS))
        ) or (proc.returncode == 0 and len(present) == len(OUTPUTS))
        return {
            "size": size,
            "exit": proc.returncode,
            "last_line": lines[-1][:300] if lines else "",
            "traceback": "Traceback" in proc.stderr,
            "outputs_present": present,
            "states": states,
            "ok": ok,
        }
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def main() -> int:
    quick = "--quick" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="nas-faults-"))
    cache = Path(os.environ.get("EDGE_NAS_CACHE", work / "cache"))
    # Warm the profile cache once so every case reaches its phase quickly.
    (work / "warm.yaml").write_text(TINY)
    subprocess.run(
        _nas("run", str(work / "warm.yaml"), "--out", str(work / "warm")),
        capture_output=True,
        env=_env(cache),
        cwd=work,
        timeout=1800,
    )
    cases = []
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--phase=")]
    phases = [] if "--disk-only" in sys.argv else only or (["pricing", "training"] if quick else list(PHASES))
    for phase in phases:
        for sig in (signal.SIGINT, signal.SIGTERM):
            cases.append(signal_case(work, cache, phase, sig))
            print(json.dumps(cases[-1]), flush=True)
    disk = []
    sizes = ["64k", "1m", "1200k", "1500k", "2m", "8m"]
    sizes = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--sizes=")), sizes)
    for size in [] if quick or only else sizes:
        disk.append(disk_full_case(work, cache, size))
        print(json.dumps(disk[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "--disk-only" in sys.argv and (RESULTS / "faults.json").is_file():
        earlier = json.loads((RESULTS / "faults.json").read_text())
        cases = earlier["signals"]  # keep the signal cases, and the other disk sizes
        tried = {d["size"] for d in disk}
        disk = [d for d in earlier["disk_full"] if d["size"] not in tried] + disk
    summary = {
        "signal_cases": len(cases),
        "signal_ok": sum(bool(c["ok"]) for c in cases),
        "disk_cases": len(disk),
        "disk_ok": sum(bool(c["ok"]) for c in disk),
        "load_average": os.getloadavg()[0],
    }
    (RESULTS / "faults.json").write_text(
        json.dumps({"summary": summary, "signals": cases, "disk_full": disk}, indent=1)
    )
    md = [
        "# Faults injected into real tiny `nas run`s (`benchmarks/faults.py`)",
        "",
        f"Summary: {summary}",
        "",
    ]
    md += [
        "| phase | signal | exit | stop s | RUNNING after | resume exit | trained twice | ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        md.append(
            f"| {c['phase']} | {c['signal']} | {c.get('exit')} | {c.get('stop_s')} | "
            f"{c.get('states_after_stop', {}).get('RUNNING', 0)} | {c.get('resume_exit')} | {c.get('trained_twice')} | {c['ok']} |"
        )
    md += ["", "| disk size | exit | outputs present | last line | ok |", "|---|---|---|---|---|"]
    for d in disk:
        md.append(
            f"| {d['size']} | {d.get('exit')} | {d.get('outputs_present')} | {d.get('last_line', d.get('why', ''))} | {d['ok']} |"
        )
    (RESULTS / "faults.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
