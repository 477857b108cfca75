"""The run folder's guard: --out checks, one driver per folder, finished runs left alone,
leftovers of killed runs removed, outputs together or not at all, signals, write failures."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.guard import (
    LOCK_NAME,
    RunFinished,
    RunGuard,
    Stopped,
    check_out_dir,
    close_running_trials,
    raise_if_stopped,
    stop_on_signals,
    write_failure,
)
from search_spaces import InputError

from .conftest import ROOT, assert_one_line_error


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("", "expected a folder path, got ''"),
        ("   ", "expected a folder path"),
        ("/proc/nas-out", "under a system folder"),
        ("/sys/x/y", "under a system folder"),
        ("/dev/nas", "under a system folder"),
    ],
)
def test_bad_out_paths(out: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_out_dir(out)


def test_out_that_is_a_file_or_under_one(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("mine")
    with pytest.raises(InputError, match="an existing file"):
        check_out_dir(f)
    with pytest.raises(InputError, match="is a file"):
        check_out_dir(f / "sub" / "run")
    assert check_out_dir(f, folder=False) == f  # an output file is replaced
    with pytest.raises(InputError, match="an existing folder"):
        check_out_dir(tmp_path, folder=False)
    assert check_out_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_one_driver_per_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    code = (
        "import sys, time; from nas.guard import RunGuard\n"
        f"g = RunGuard({str(out)!r}).__enter__(); print('locked', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"in use by another nas run \\(pid {holder.pid}\\)"):
            with RunGuard(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunGuard(out) as g:  # the lock died with its holder: no stale lock
        assert g.out == out


def test_resume_on_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("report.json", "model.tflite", "study.db"):
        (out / name).write_text(name)
    before = {p.name: p.read_text() for p in out.iterdir() if p.name != LOCK_NAME}
    with pytest.raises(RunFinished, match="this run is finished"):
        with RunGuard(out, resume=True):
            pass
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != LOCK_NAME} == before


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / ".export.abc123").mkdir(parents=True)
    (out / ".export.abc123" / "model.tflite").write_bytes(b"x")
    (out / ".model.tflite.tmp").write_bytes(b"x")
    (out / ".report.json.k2j3h4").write_text("{")
    (out / "study.db").write_bytes(b"")
    (out / "model.tflite").write_bytes(b"partial")  # no report.json: the outputs never completed
    (out / "export").mkdir()
    with RunGuard(out, resume=True):
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, "study.db"])


def test_a_users_own_folder_keeps_its_files(tmp_path: Path) -> None:
    mine = tmp_path / "myapp"
    mine.mkdir()
    (mine / "model.tflite").write_bytes(b"the user's")
    with pytest.raises(RuntimeError):
        with RunGuard(mine):
            raise RuntimeError("the run failed")
    assert (mine / "model.tflite").read_bytes() == b"the user's"
    assert sorted(p.name for p in mine.iterdir()) == ["model.tflite"]


def test_a_failed_finish_leaves_no_partial_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(OSError):
        with RunGuard(out) as g:
            g.make_folder()
            (out / "study.db").write_bytes(b"")
            (out / "model.tflite").write_bytes(b"x")
            (out / "export").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.json"))
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "study.db"]


def test_nothing_is_left_in_an_existing_empty_folder_on_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(InputError):
        with RunGuard(out):
            raise InputError("constraints.max_latency_ms: expected a number > 0, got -1.")
    assert list(out.iterdir()) == []


def test_close_running_trials() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    running = study.ask()
    running.suggest_categorical("s0_width", [8, 16])
    done = study.ask()
    study.tell(done, [0.5, 1.0])
    assert close_running_trials(study) == 1
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.WAITING) == 1  # re-queued for --resume
    assert study.trials[0].user_attrs["error"] == "interrupted; re-queued on resume"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_raise_stopped(sig: int, code: int) -> None:
    with pytest.raises(Stopped) as e:
        with stop_on_signals(grace_s=5):
            os.kill(os.getpid(), sig)
            time.sleep(2)
    assert e.value.exit_code == code


def test_a_swallowed_stop_is_raised_again() -> None:
    with stop_on_signals(grace_s=5):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        except Stopped:
            pass  # what TensorFlow's calibration does with an exception in our callback
        with pytest.raises(Stopped):
            raise_if_stopped()
    raise_if_stopped()  # outside the command: nothing pending


def test_write_failures_are_one_line() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/report.json")
    assert write_failure(full, "writing the report") == (
        "cannot write /data/run/report.json (last step: writing the report): No space left on device."
    )
    nameless = OSError(errno.ENOSPC, "No space left on device")
    assert write_failure(nameless, where="runs/q") == "cannot write into runs/q: No space left on device."
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert "No space left" in (write_failure(outer) or "")
    sqlite = Exception("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT ...]")
    assert (
        write_failure(sqlite, where="runs/q")
        == "cannot write the study database in runs/q: database or disk is full."
    )
    assert write_failure(ValueError("x")) is None


def test_cli_out_empty_creates_nothing(run_nas, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("search:\n  trainings: 1\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_nas("run", str(cfg), "--out", "", cwd=tmp_path)
    assert_one_line_error(proc, "--out", "expected a folder path")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
