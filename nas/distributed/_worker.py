"""What every worker process does, whichever executor started it: cap its threads to the CPUs
the trial asked for, name itself after the trial it trains, and turn any error into a result.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..executors import JobResult, TrainJob, WorkerSetup, run_job

__all__ = [
    "Attempt",
    "RetriedJobResult",
    "describe_exit",
    "limit_threads",
    "lost_result",
    "safe_run_job",
    "set_title",
]


@dataclass(frozen=True)
class RetriedJobResult(JobResult):
    """A result that needed a second attempt because the first worker was lost. The extra fields
    become the trial's user attributes (``attempts``, ``retried_after``) like every other one."""

    attempts: int = 2
    retried_after: str = ""


@dataclass(frozen=True)
class Attempt:
    """One try at a trial, as every executor tracks it: a trial whose worker is lost is tried
    once more elsewhere, and the retry carries why the first worker was lost."""

    job: TrainJob
    attempt: int = 1
    first_reason: str = ""

    def after_loss(
        self, reason: str, status: Callable[[str], None], host: str, pid: int
    ) -> Attempt | RetriedJobResult:
        """What follows the loss of this try's worker: the retry, or after a retry the failed trial."""
        if self.attempt == 1:
            status(f"{reason} while training trial {self.job.trial_number}; retrying it on another worker")
            return Attempt(self.job, 2, reason)
        status(f"{reason} while retrying trial {self.job.trial_number}; the trial failed")
        return lost_result(self.job, reason, self.first_reason, host, pid)

    def finished(self, result: JobResult) -> JobResult:
        """The trial's result as the executor reports it (a retried trial's says so)."""
        if self.attempt == 1:
            return result
        return RetriedJobResult(**asdict(result), attempts=self.attempt, retried_after=self.first_reason)


def limit_threads(threads: int) -> None:
    """One trial uses ``threads`` cores: several workers on one machine must not each start a
    thread per core and fight over them. Environment first (read when TensorFlow starts), then
    TensorFlow's own setting if it is already running in this (reused) process."""
    n = str(max(1, int(threads)))
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = n
    import sys

    if "tensorflow" in sys.modules:
        from search_spaces.backend import tf

        try:
            tf().config.threading.set_intra_op_parallelism_threads(int(n))
            tf().config.threading.set_inter_op_parallelism_threads(int(n))
        except RuntimeError:  # already initialised with these settings by an earlier trial
            pass


def set_title(title: str) -> None:
    """Show what this process does in ``ps``/``top`` (Linux; the kernel keeps 15 characters)."""
    try:
        Path("/proc/self/comm").write_text(title[:15])
    except OSError:
        pass


def safe_run_job(setup: WorkerSetup, job: TrainJob, data: Any) -> JobResult:
    """``run_job``, but an unexpected error (a bug, out of memory) fails this trial with its
    reason instead of killing the worker that every later trial needs."""
    started = time.time()
    try:
        return run_job(setup, job, data)
    except Exception as e:  # noqa: BLE001 - reported as this trial's failure reason
        last = traceback.extract_tb(e.__traceback__)[-1:]
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        return JobResult(
            job.trial_number,
            job.arch,
            False,
            error=f"worker error {e.__class__.__name__}{where}: {str(e).splitlines()[0][:300] if str(e) else ''}",
            host=socket.gethostname(),
            pid=os.getpid(),
            queued_s=max(0.0, started - job.submitted_at),
            run_s=time.time() - started,
        )


def describe_exit(exitcode: int | None) -> str:
    """``-9`` -> ``killed by SIGKILL``; ``1`` -> ``exit code 1``."""
    import signal

    if exitcode is None:
        return "connection lost"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def lost_result(job: TrainJob, reason: str, first_reason: str, host: str, pid: int) -> RetriedJobResult:
    """The trial's second worker was lost too: a failed trial that says both reasons."""
    return RetriedJobResult(
        job.trial_number,
        job.arch,
        False,
        error=f"{reason}; this was the retry after: {first_reason}",
        host=host,
        pid=pid,
        queued_s=0.0,
        run_s=0.0,
        attempts=2,
        retried_after=first_reason,
    )
