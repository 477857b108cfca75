"""What keeps a run folder sane around the run: ``--out`` checked before any work, one driver per
folder (a lock naming the other process), stale temp files of killed runs removed, a finished
run never overwritten by ``--resume``, outputs that appear together or not at all, Ctrl-C and
SIGTERM turned into a prompt, clean stop, and write failures (disk full, read-only) told in one line.

``nas run`` uses it in three places: ``RunGuard`` around the job, ``stop_on_signals`` around the
CLI command, and ``write_failure`` when mapping errors to exit codes.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from search_spaces import InputError, NasError

from .trial_record import TrialKey, requeue_interrupted

__all__ = [
    "LOCK_NAME",
    "OUTPUT_NAMES",
    "RunFinished",
    "RunGuard",
    "Stopped",
    "check_out_dir",
    "raise_if_stopped",
    "close_running_trials",
    "stop_on_signals",
    "write_failure",
]

LOCK_NAME = ".nas-run.lock"
# What a finished run leaves; ``report.json`` is written last and marks the set complete.
OUTPUT_NAMES = ("model.tflite", "export", "pareto.png", "report.html", "report.json")
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
# After the first signal the run has this long to stop on its own (native code such as a
# TFLite conversion only returns to Python when it is done); then the process exits anyway.
GRACE_S = 20.0


class RunFinished(NasError):
    """``--resume`` on a run folder whose report is already written: nothing to do."""


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


# -- --out ----------------------------------------------------------------------------------
def check_out_dir(out: str | os.PathLike[str], what: str = "--out", folder: bool = True) -> Path:
    """``out`` as a folder (or, with ``folder=False``, a file) we may create and write, or one
    line saying why not. Creates nothing."""
    text = os.fspath(out)
    kind = "folder" if folder else "file"
    if not text or not text.strip():
        raise InputError(f"{what}: expected a {kind} path, got {text!r}.")
    path = Path(text).expanduser()
    resolved = path.resolve()
    if any(resolved == Path(r) or Path(r) in resolved.parents for r in _SYSTEM_ROOTS):
        raise InputError(f"{what}: expected a folder for results, got {text!r} (under a system folder).")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{what}: expected a folder, got {text!r} (an existing file).")
    if not folder and path.is_dir():
        raise InputError(f"{what}: expected a file path, got {text!r} (an existing folder).")
    if not folder and path.exists() and not path.is_file():
        raise InputError(f"{what}: expected a regular file path, got {text!r} (a special file).")
    probe = path.parent if (not folder and path.is_file()) else path  # a file is replaced in its folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what}: expected a {kind} path, got {text!r} ({probe} is a file).")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what}: expected a writable location, got {text!r} ({probe} is not writable).")
    try:
        st = os.statvfs(probe)
    except OSError:
        return path
    if st.f_flag & os.ST_RDONLY:
        raise InputError(
            f"{what}: expected a writable location, got {text!r} ({probe} is on a read-only mount)."
        )
    return path


# -- the run folder -------------------------------------------------------------------------
class RunGuard:
    """Holds the run folder for one driver.

    ``__enter__`` checks ``--out``; if the folder exists it is locked at once, a finished run is
    refused for ``--resume`` (``RunFinished``), and leftovers of killed runs are removed. A
    folder created later by the run is locked by ``make_folder``. ``__exit__`` removes a partial
    set of outputs if the run failed before its report was written, and releases the lock.
    """

    def __init__(self, out: str | os.PathLike[str], resume: bool = False) -> None:
        self.out = check_out_dir(out)
        self.resume = resume
        self._lock_fd: int | None = None
        self._had_report = False
        self._created_lock = False
        self._made_folder = False

    def __enter__(self) -> RunGuard:
        if self.out.is_dir():
            self._lock()
            self._had_report = (self.out / "report.json").is_file()
            if self.resume and self._had_report:
                self.release()
                raise RunFinished(
                    f"{self.out}: this run is finished (report.json is written); nothing to resume. "
                    "Choose a new --out to search again."
                )
            self._remove_leftovers()
        return self

    def make_folder(self) -> Path:
        """Create the run folder (after every input check passed) and lock it."""
        if not self.out.exists():
            self._made_folder = True
        self.out.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock()
            self._remove_leftovers()
        return self.out

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None and self._lock_fd is not None:
                # All of a run's outputs or none, until its report is written: a run that stops
                # after it (nothing fit the budgets as measured) keeps what it measured.
                wrote_report = (self.out / "report.json").is_file()
                if not self._had_report and not wrote_report and self._ours():
                    self._remove_outputs()
                if self._created_lock and not (self.out / "study.db").exists():
                    (self.out / LOCK_NAME).unlink(missing_ok=True)  # leave the folder as we found it
        finally:
            self.release()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        import fcntl

        path = self.out / LOCK_NAME
        self._created_lock = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"--out: cannot create the lock file {path} ({e.strerror}).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"--out: {self.out} is in use by another nas run (pid {other}); wait for it to end or "
                "choose another folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _remove_leftovers(self) -> None:
        """Temp files and folders of a killed run (we hold the lock: nobody else is writing)."""
        for p in self.out.iterdir():
            if p.name == LOCK_NAME or not p.name.startswith("."):
                continue
            if p.is_dir() and p.name.startswith((".export.", ".outputs.")):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and (p.name.endswith(".tmp") or _is_atomic_temp(p.name)):
                p.unlink(missing_ok=True)
        if not (self.out / "report.json").is_file() and self._ours():
            self._remove_outputs()  # a run killed while finishing: its outputs were never complete

    def _ours(self) -> bool:
        """Whether the folder is a run folder (never delete a user's own model.tflite)."""
        return self._made_folder or not self._created_lock or (self.out / "study.db").exists()

    def _remove_outputs(self) -> None:
        for name in OUTPUT_NAMES:
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)


def _is_atomic_temp(name: str) -> bool:
    # ``write_atomic`` writes ``.{name}.XXXXXXXX`` beside its target, and a lone ``study.db`` is
    # never one of them (SQLite's own -wal/-shm files do not start with a dot).
    return any(name.startswith(f".{target}.") for target in (*OUTPUT_NAMES, "model.tflite"))


def close_running_trials(study: Any) -> int:
    """After a stop: close every trial the driver left ``RUNNING`` as failed with the reason
    ``interrupted; re-queued on resume`` and enqueue its architecture again, as ``--resume``
    would; a trial part-way through multi-fidelity promotions is left to ``--resume``. Returns
    how many were closed. Storage errors (a full disk) are swallowed: resume handles the rest."""
    import optuna

    closed = 0
    try:
        trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    except Exception:  # noqa: BLE001 - the storage may be what failed
        return 0
    for t in trials:
        history = t.user_attrs.get(TrialKey.FIDELITY_HISTORY) or []
        if history and history[-1].get("accuracy") is not None:
            continue  # SearchLoop._restore resumes its promotion
        try:
            requeue_interrupted(study, t)
            closed += 1
        except Exception:  # noqa: BLE001
            break
    return closed


# -- signals --------------------------------------------------------------------------------
@contextmanager
def stop_on_signals(grace_s: float = GRACE_S, write: Callable[[str], Any] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Stopped`` in the main thread, so the run unwinds (trials closed,
    lock released); a second signal, or ``grace_s`` seconds without unwinding, exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    say = write or (lambda s: (sys.stderr.write(s + "\n"), sys.stderr.flush()))
    received = _RECEIVED
    received.clear()
    timers: list[threading.Timer] = []

    def force(code: int, why: str) -> None:
        say(f"nas: {why}; exiting now (rerun with --resume to continue).")
        os._exit(code)

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            force(128 + signum, f"second {signal.Signals(signum).name}")
        received.append(signum)
        timer = threading.Timer(grace_s, force, (128 + signum, f"still stopping after {grace_s:.0f} s"))
        timer.daemon = True
        timer.start()
        timers.append(timer)
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for timer in timers:
            timer.cancel()
        received.clear()


_RECEIVED: list[int] = []


def raise_if_stopped() -> None:
    """Raise ``Stopped`` again if a signal came but its exception was swallowed (TensorFlow's
    calibration calls our Python from C++ and drops exceptions raised there). Called from the
    run's progress callback, which every phase calls."""
    if _RECEIVED and threading.current_thread() is threading.main_thread():
        raise Stopped(_RECEIVED[0])


# -- write failures -------------------------------------------------------------------------
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def write_failure(e: BaseException, doing: str = "", where: str = "") -> str | None:
    """One line for a failed write (disk full, read-only, no permission), else ``None``.
    SQLite's "database or disk is full" arrives wrapped by SQLAlchemy and Optuna."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        during = f" (last step: {doing})" if doing else ""
        if isinstance(cur, OSError) and cur.errno in _WRITE_ERRNOS:
            name = cur.filename or (f"into {where}" if where else "a file")
            return f"cannot write {name}{during}: {cur.strerror or os.strerror(cur.errno or 0)}."
        text = str(cur).splitlines()[0] if str(cur) else ""
        for needle in ("database or disk is full", "readonly database", "disk I/O error"):
            if needle in text:
                place = f" in {where}" if where else ""
                return f"cannot write the study database{place}{during}: {needle}."
        cur = cur.__cause__ or cur.__context__
    return None
