"""Trials in local worker processes: ``nas run CONFIG --workers N`` (default: one per core).

Each worker is a fresh (spawned) Python process that imports TensorFlow and loads the task's
data (or the supernet whose subnets it evaluates) once, then runs the jobs the driver sends it
through its own pipe, so the driver always knows which trial each process holds. A worker that
dies mid-trial is replaced; its trial is retried once on another worker, and if that one is lost
too the trial fails with both reasons.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from search_spaces import FatalError, InputError

from ..executors import Executor, JobResult, TrainJob, WorkerSetup, worker_data
from ._worker import Attempt, describe_exit, limit_threads, safe_run_job, set_title

__all__ = ["ProcessExecutor", "default_workers"]

# Workers that die before they ever become ready (a broken install, no memory): after this many
# in a row the run stops instead of replacing them forever.
MAX_START_FAILURES = 3


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies, even by SIGKILL, so a killed
    driver never leaves trainings running that nobody will collect."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _worker_main(setup: WorkerSetup, conn: Connection, threads: int, parent: int) -> None:
    """The worker's whole life: warm up, then train whatever arrives until told to stop."""
    _die_with_parent()
    if os.getppid() != parent:  # the driver died before prctl took effect
        return
    # Ctrl-C reaches the whole process group; the driver decides what happens to workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So is SIGTERM to the group (kill -TERM -PGID): the driver stops them (SIGKILL, or they die
    # with it), after closing their trials; a worker killed first would fail a trial for nothing.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    set_title("nas-starting")
    limit_threads(threads)
    from search_spaces.backend import keras

    keras()
    limit_threads(threads)
    data = worker_data(setup)  # the task's data, or the supernet whose subnets it evaluates
    try:
        conn.send(("ready", os.getpid()))
        while True:
            set_title("nas-idle")
            job = conn.recv()
            if job is None:
                return
            set_title(f"nas-trial-{job.trial_number}")
            conn.send(("started", job.trial_number))
            conn.send(("done", safe_run_job(setup, job, data)))
    except (EOFError, OSError, BrokenPipeError):
        return  # the driver is gone


@dataclass
class _Worker:
    process: Any
    conn: Connection
    current: Attempt | None = None
    ready: bool = False
    started: bool = False

    @property
    def job(self) -> TrainJob | None:
        return None if self.current is None else self.current.job


class ProcessExecutor(Executor):
    """``workers`` local processes, each training one trial at a time with ``threads`` threads."""

    def __init__(
        self,
        setup: WorkerSetup,
        workers: int | None = None,
        threads: int = 1,
        status: Callable[[str], None] | None = None,
    ) -> None:
        n = default_workers() if workers is None else workers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"--workers: expected an int >= 1, got {n!r}.")
        self.setup = setup
        self.capacity = n
        self.threads = threads
        self.status = status or (lambda s: None)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._queue: collections.deque[Attempt] = collections.deque()
        self._done: list[JobResult] = []
        self._start_failures = 0
        self._closed = False
        self._host = socket.gethostname()
        for _ in range(n):
            self._spawn()

    # -- processes -----------------------------------------------------------------------------
    def _spawn(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(self.setup, child_conn, self.threads, os.getpid()),
            name="nas-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self._workers.append(_Worker(process, parent_conn))

    def worker_pids(self) -> dict[int, int | None]:
        """pid -> the trial it is training (None when idle): for ``ps``-style status and tests."""
        return {w.process.pid: (w.job.trial_number if w.job else None) for w in self._workers}

    def _lost(self, worker: _Worker) -> None:
        """A worker's process ended (or its pipe broke): replace it, retry or fail its trial."""
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        worker.process.join(timeout=5)
        worker.conn.close()
        reason = f"worker process {worker.process.pid} on {self._host} died ({describe_exit(worker.process.exitcode)})"
        if not worker.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise FatalError(
                    f"{self._start_failures} worker processes died while starting (last: {reason}); "
                    "run with --workers 1 --verbose to see why"
                )
        if worker.current is not None:
            after = worker.current.after_loss(reason, self.status, self._host, worker.process.pid)
            if isinstance(after, Attempt):
                self._queue.appendleft(after)
            else:
                self._done.append(after)
        if not self._closed:
            self._spawn()

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._queue:
                return
            if worker.current is None:
                item = self._queue.popleft()
                worker.current = item
                worker.started = False
                try:
                    worker.conn.send(item.job)
                except (BrokenPipeError, OSError):
                    # Already dead: its sentinel reports it on the next wait, with the job.
                    continue

    def _receive(self, worker: _Worker) -> None:
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        if kind == "ready":
            worker.ready = True
            self._start_failures = 0
        elif kind == "started":
            worker.started = True
        elif kind == "done":
            result: JobResult = payload
            self._done.append(result if worker.current is None else worker.current.finished(result))
            worker.current = None

    # -- Executor ------------------------------------------------------------------------------
    def submit(self, job: TrainJob) -> None:
        self._queue.append(Attempt(job))
        self._dispatch()

    def in_flight(self) -> int:
        return len(self._queue) + sum(w.job is not None for w in self._workers)

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._dispatch()
            if self._done or not self.in_flight():
                done, self._done = self._done, []
                return done
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            by_handle: dict[Any, tuple[str, _Worker]] = {}
            for w in self._workers:
                by_handle[w.conn] = ("conn", w)
                by_handle[w.process.sentinel] = ("sentinel", w)
            ready = wait(list(by_handle), timeout=remaining)
            # Messages first: a worker that sent its result and then died still delivers it.
            for handle in sorted(ready, key=lambda h: by_handle[h][0] != "conn"):
                kind, worker = by_handle[handle]
                if worker not in self._workers:
                    continue
                if kind == "conn":
                    self._receive(worker)
                elif not worker.conn.poll():
                    self._lost(worker)
            if not ready and remaining == 0.0:
                done, self._done = self._done, []
                return done

    def shutdown(self) -> None:
        """Ask idle workers to stop; kill busy ones (their trials are abandoned with the run)."""
        self._closed = True
        for w in self._workers:
            try:
                if w.job is None:
                    w.conn.send(None)
                else:
                    w.process.kill()
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self._workers.clear()
