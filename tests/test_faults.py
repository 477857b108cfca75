"""Faults injected into real tiny ``nas run``s (slow: each trains a few networks): a signal while
training, then ``--resume``; a second driver on the same folder; a small full disk (root only)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_e2e_run import TINY

pytestmark = pytest.mark.slow
OUTPUTS = ("model.tflite", "export", "pareto.png", "report.html", "report.json")


def _start(cfg: Path, out: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "nas", "run", str(cfg), "--out", str(out)],
            stdout=f,
            stderr=f,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def _wait_for(log: Path, needle: str, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while needle not in log.read_text():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def _states(out: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_training_then_resume(run_nas, tmp_path: Path, sig: int, code: int) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start(cfg, out, log)
    _wait_for(log, "searching:", proc)
    time.sleep(3)
    sent = time.time()
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=60) == code
    assert time.time() - sent < 30
    text = log.read_text()
    assert "Traceback" not in text and text.strip().splitlines()[-1].startswith(
        f"nas: stopped by {signal.Signals(sig).name}"
    )
    assert "RUNNING" not in _states(out)
    resumed = run_nas("run", str(cfg), "--out", str(out), "--resume", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert all((out / n).exists() for n in OUTPUTS)
    again = run_nas("run", str(cfg), "--out", str(out), "--resume")
    assert again.returncode == 0 and "this run is finished" in again.stderr
    assert not any(p.name.startswith(".export.") for p in out.iterdir())


def test_second_driver_is_refused_naming_the_first(run_nas, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = _start(cfg, out, log)
    try:
        _wait_for(log, "searching:", proc)
        second = run_nas("run", str(cfg), "--out", str(out), "--resume")
        assert second.returncode == 2
        assert f"in use by another nas run (pid {proc.pid})" in second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_one_line_and_all_or_nothing(run_nas, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        proc = run_nas("run", str(cfg), "--out", str(mount / "run"), timeout=900)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        present = [n for n in OUTPUTS if (mount / "run" / n).exists()]
        if proc.returncode == 0:
            assert len(present) == len(OUTPUTS)
        else:
            assert "Traceback" not in proc.stderr
            assert "cannot write" in lines[-1] and len(lines[-1]) < 300, lines[-1]
            assert present == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
