"""Distributed searches on a real local Ray cluster and in real worker processes, and the faults
they must survive: a worker killed mid-trial, the driver killed mid-search, the cluster lost.

Nothing is mocked: ``ray start --head`` on 127.0.0.1 (stopped by pid afterwards), real training
of tiny MBConv models on the ``digits`` task, real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from nas.distributed.cluster import LocalRayCluster, free_port
from tests.conftest import assert_one_line_error

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
search:
  strategy: random
  trainings: {trainings}
  seed: {seed}
training:
  epochs: 1
  final_epochs: 1
  max_train_samples: 600
export:
  calibration_samples: 50
"""

RAY_NOISE = ("(raylet)", "logging.cc", "Token authentication", "usage_lib", "Connecting to existing Ray")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host latency profile for every run of this module (profiling is not under test)."""
    return tmp_path_factory.mktemp("nascache")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    c = LocalRayCluster(num_cpus=2).start()
    try:
        yield c
    finally:
        c.stop()


def _config(tmp_path: Path, trainings: int, seed: int = 1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(trainings=trainings, seed=seed))
    return path


def _start(nas_bin: list[str], cache: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGE_NAS_CACHE": str(cache)}
    return subprocess.Popen(
        [*nas_bin, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _trials(out: Path) -> list[Any]:
    """The study's trials as the driver has stored them so far (read while it runs)."""
    url = f"sqlite:///{out / 'study.db'}"
    if not (out / "study.db").exists():
        return []
    # Read-only until the driver has created its study: opening the storage with Optuna would
    # create the tables too, racing the driver doing the same.
    try:
        with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True) as db:
            if not db.execute("SELECT count(*) FROM studies").fetchone()[0]:
                return []
    except sqlite3.Error:
        return []
    try:
        names = optuna.get_all_study_names(url)
        if not names:
            return []
        return optuna.load_study(study_name=names[0], storage=url).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the driver may be creating the tables right now
        return []


def _wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(
                f"nas exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}"
            )
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    return stdout, stderr


# -- bad input -------------------------------------------------------------------------------------
def test_bad_inputs_exit_2_with_one_line(run_nas, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 2)
    out = str(tmp_path / "run")
    assert_one_line_error(run_nas("run", str(cfg), "--out", out, "--workers", "0"), "--workers", "got 0")
    for bad in ("localhost", "127.0.0.1:99999", "http://127.0.0.1:6379", "a b:1"):
        assert_one_line_error(
            run_nas("run", str(cfg), "--out", out, "--ray-address", bad), "--ray-address", "HOST:PORT"
        )
    port = free_port()  # nothing listens there
    proc = run_nas("run", str(cfg), "--out", out, "--ray-address", f"127.0.0.1:{port}")
    assert_one_line_error(proc, f"127.0.0.1:{port}", "ray start --head")
    proc = run_nas("run", str(cfg), "--out", out, "--storage", f"sqlite:///{tmp_path}/no/such/dir/s.db")
    assert_one_line_error(proc, "--storage", "no/such/dir")
    assert_one_line_error(run_nas("run", str(cfg), "--out", out, "--storage", "nosuchdb://x/y"), "--storage")
    assert not (tmp_path / "run").exists()  # nothing half-written


# -- local worker processes ------------------------------------------------------------------------
def test_process_worker_killed_mid_trial_is_retried(nas_bin: list[str], cache: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 4)
    out = tmp_path / "run"
    proc = _start(nas_bin, cache, tmp_path, "run", str(cfg), "--out", str(out), "--workers", "2")

    def training_worker() -> tuple[int, int] | None:
        for pid in _children(proc.pid):
            comm = _comm(pid)
            if comm.startswith("nas-trial-"):
                return pid, int(comm.rsplit("-", 1)[1])
        return None

    victim, trial = _wait_for(training_worker, proc, 600, "a worker training a trial")
    time.sleep(0.5)  # well inside the training, not at its first instruction
    os.kill(victim, signal.SIGKILL)
    _, stderr = _finish(proc)
    assert f"worker process {victim}" in stderr and f"trial {trial}; retrying" in stderr

    report = json.loads((out / "report.json").read_text())
    done = [t for t in report["trials"] if t["state"] == "complete"]
    assert len(done) == 4
    pids = {t["worker"]["pid"] for t in done}
    assert len(pids) >= 2 and victim not in pids
    retried = next(t for t in _trials(out) if t.number == trial)
    assert retried.user_attrs["state"] == "complete"
    assert retried.user_attrs["attempts"] == 2 and "SIGKILL" in retried.user_attrs["retried_after"]


# -- Ray -------------------------------------------------------------------------------------------
def _ray_trial_of(pid: int) -> int:
    """The trial a Ray worker trains, from its process title ``ray::nas-trial-N``."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().strip()
    return int(title.rsplit("-", 1)[1])


def test_ray_worker_killed_then_driver_killed_then_resumed(
    nas_bin: list[str], cache: Path, cluster: LocalRayCluster, tmp_path: Path
) -> None:
    """One search on the cluster meets both faults: a worker killed mid-trial (retried once on
    another worker), then the driver killed with SIGKILL (resumed, nothing lost or repeated).
    One run for both keeps this test to a couple of minutes."""
    cfg = _config(tmp_path, 5, seed=3)
    out = tmp_path / "run"
    args = ("run", str(cfg), "--out", str(out), "--ray-address", cluster.address)
    proc = _start(nas_bin, cache, tmp_path, *args)

    # 1. a Ray worker killed while it trains
    victim = _wait_for(lambda: cluster.worker_pids("ray::nas-trial-"), proc, 600, "a Ray worker training")[0]
    trial = _ray_trial_of(victim)
    time.sleep(0.5)  # inside the training, not at its first instruction
    os.kill(victim, signal.SIGKILL)

    # 2. the driver killed once the retried trial and another are done and one more is training
    def retried_done_and_training() -> list[Any] | None:
        trials = _trials(out)
        done = {t.number for t in trials if t.user_attrs.get("state") == "complete"}
        training = [
            t
            for t in trials
            if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("fidelity_epochs")
        ]
        return trials if trial in done and len(done) >= 2 and training else None

    _wait_for(retried_done_and_training, proc, 600, "the retried trial and one more")
    proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate()
    assert f"trial {trial}; retrying it on another worker" in stderr
    before = _trials(out)
    done_before = {
        t.number: (tuple(t.values), t.user_attrs["pid"], t.user_attrs["run_s"])
        for t in before
        if t.user_attrs.get("state") == "complete"
    }
    interrupted = {t.number: t.params for t in before if t.state == optuna.trial.TrialState.RUNNING}
    retried = next(t for t in before if t.number == trial)
    assert retried.user_attrs["attempts"] == 2 and "WorkerCrashedError" in retried.user_attrs["retried_after"]
    assert retried.user_attrs["pid"] != victim

    # 3. resume: the same command with --resume
    more_out, more_err = _finish(_start(nas_bin, cache, tmp_path, *args, "--resume"))
    for noise in RAY_NOISE:
        assert noise not in stdout + stderr + more_out + more_err, noise
    after = _trials(out)
    report = json.loads((out / "report.json").read_text())
    # every completed trial kept: same number, same values, same worker, same time
    for number, kept in done_before.items():
        t = next(t for t in after if t.number == number)
        assert (tuple(t.values), t.user_attrs["pid"], t.user_attrs["run_s"]) == kept
    # none trained again: exactly the missing trainings happened, on the new run's workers
    done_after = [t for t in after if t.user_attrs.get("state") == "complete"]
    assert len(done_after) == 5
    new = [t for t in done_after if t.number not in done_before]
    assert len(new) == 5 - len(done_before)
    assert not {t.user_attrs["pid"] for t in new} & {pid for _, pid, _ in done_before.values()}
    kept_archs = {t.user_attrs["canonical"] for t in done_after if t.number in done_before}
    assert not kept_archs & {t.user_attrs["canonical"] for t in new}
    # the trials that were running are closed and their architectures asked again (one caught
    # half-way through its ask has only some of its choices: those are kept, the rest sampled)
    for number, params in interrupted.items():
        t = next(t for t in after if t.number == number)
        assert t.state == optuna.trial.TrialState.FAIL and "re-queued" in t.user_attrs["error"]
        assert any(params.items() <= r.params.items() and r.number > max(interrupted) for r in after)
    # where each trial ran: at least two distinct worker processes, with wait and run times
    rows = [r for r in report["trials"] if r["state"] == "complete"]
    assert len({r["worker"]["pid"] for r in rows}) >= 2
    assert all(r["run_s"] > 0 and r["queued_s"] >= 0 for r in rows)
    assert {r["number"] for r in report["trials"]} == {t.number for t in after}


def test_trial_that_does_not_fit_the_cluster_is_refused_at_start(
    run_nas, cluster: LocalRayCluster, tmp_path: Path
) -> None:
    cfg = tmp_path / "gpu.yaml"
    cfg.write_text(
        _config(tmp_path, 2).read_text().replace("  seed: 1\n", "  seed: 1\n  gpus_per_trial: 1\n")
    )
    proc = run_nas("run", str(cfg), "--out", str(tmp_path / "run"), "--ray-address", cluster.address)
    assert_one_line_error(proc, "gpus_per_trial", "0 GPU")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cluster_lost_mid_run_stops_with_resume_hint(nas_bin: list[str], cache: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, 6)
    out = tmp_path / "run"
    with LocalRayCluster(num_cpus=2) as own:
        proc = _start(
            nas_bin, cache, tmp_path, "run", str(cfg), "--out", str(out), "--ray-address", own.address
        )
        _wait_for(
            lambda: any(t.user_attrs.get("state") == "complete" for t in _trials(out)), proc, 600, "a trial"
        )
        own.stop()
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "lost the Ray cluster" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert any(t.user_attrs.get("state") == "complete" for t in _trials(out))
