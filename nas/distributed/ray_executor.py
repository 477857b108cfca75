"""Trials on a Ray cluster: ``nas run CONFIG --ray-address HOST:PORT``.

The driver keeps the study; each trial is one Ray task that asks for ``search.cpus_per_trial``
CPUs (and ``search.gpus_per_trial`` GPUs), so Ray places it wherever those are free. The task's
data goes into Ray's object store once and every task gets a reference, so each node fetches it
once. Results are collected with ``ray.wait`` as they finish. A task whose worker process or node
is lost is retried once (Ray's own retries are off so the driver knows and records it); a lost
cluster stops the run with a ``FatalError`` that says how to resume.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from search_spaces import FatalError, InputError

from ..executors import Executor, JobResult, TrainJob, WorkerSetup
from ._worker import Attempt, limit_threads, safe_run_job

__all__ = ["RayExecutor", "START_HINT", "check_fits", "connect_ray", "parse_ray_address", "ray_trial"]

START_HINT = "ray start --head --port=6379 --num-cpus=2 --include-dashboard=false"
_HOST = r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
# How often a waiting driver checks that the cluster is still there.
HEALTH_EVERY_S = 5.0
# A cluster whose head does not answer for this long is lost (Ray itself gives up after 60 s
# and ends the driver process without a word, so we must speak first).
LOST_AFTER_S = 20.0


def parse_ray_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); anything else is an ``InputError``."""
    m = re.fullmatch(rf"({_HOST}):(\d{{1,5}})", address.strip()) if isinstance(address, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise InputError(
            f"--ray-address: expected HOST:PORT of a Ray head node (e.g. 127.0.0.1:6379), got {address!r}."
        )
    return m.group(1).strip("[]"), int(m.group(2))


def _reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None if something accepts TCP connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or e.__class__.__name__


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's usage-stats notice, token warnings and worker logs out of the terminal."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if verbose:
        return
    for name in ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import ray._private.worker as ray_worker

    # The driver prints the cluster's error notices (e.g. "(raylet) A worker died ...") to stdout
    # even with log_to_driver=False; the executor reports those events itself, in one line.
    # Ray's private hook, so only if it is there: route those notices to the debug log instead.
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_nas_quiet", False):
        return

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                logging.getLogger("nas.ray").debug("%s", line)
            return
        original(data, ignore_prefix)

    to_log._nas_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = to_log


def connect_ray(address: str, verbose: bool = False) -> None:
    """Join the cluster at ``address`` as its driver; an unreachable one is an ``InputError``."""
    host, port = parse_ray_address(address)
    # ray.init retries an unreachable head for a minute; a plain TCP probe answers at once.
    why = _reachable(host, port)
    if why is not None:
        raise InputError(
            f"--ray-address: no Ray cluster answers at {host}:{port} ({why}); start one with "
            f"`{START_HINT}` on the head node and pass its HOST:6379."
        )
    quiet_ray(verbose)
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(
            address=f"{address.strip()}",
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
            namespace="edge-nas",
        )
    except Exception as e:  # noqa: BLE001 - whatever Ray raises, the user's address is the cause
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise InputError(
            f"--ray-address: cannot join the Ray cluster at {host}:{port} ({first}); is it a Ray head "
            f"node started with `{START_HINT}` and the same Ray and Python versions?"
        ) from None


def check_fits(address: str, cpus_per_trial: int, gpus_per_trial: float) -> None:
    """A trial must fit on the cluster, or nothing would ever be scheduled."""
    import ray

    res = ray.cluster_resources()
    fits = res.get("CPU", 0) >= cpus_per_trial and (not gpus_per_trial or res.get("GPU", 0) >= gpus_per_trial)
    if not fits:
        raise InputError(
            f"search.cpus_per_trial/gpus_per_trial: expected a trial to fit on the cluster at {address} "
            f"({res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU), got {cpus_per_trial} CPU and "
            f"{gpus_per_trial:g} GPU per trial."
        )


def ray_trial(setup: WorkerSetup, job: TrainJob, data: Any, threads: int) -> JobResult:
    """One trial inside a Ray worker process (``data`` arrives from the node's object store; for
    a supernet setup it is None, and each Ray worker process loads the supernet once and keeps
    it for the later tasks Ray gives that process)."""
    limit_threads(threads)
    return safe_run_job(setup, job, data)


class RayExecutor(Executor):
    """Trials as Ray tasks, as many at once as the cluster has slots (or ``workers``)."""

    def __init__(
        self,
        setup: WorkerSetup,
        data: Any,
        address: str,
        workers: int | None = None,
        cpus_per_trial: int = 1,
        gpus_per_trial: float = 0.0,
        status: Callable[[str], None] | None = None,
        resume_hint: str = "rerun the same command with --resume",
    ) -> None:
        import ray

        if not ray.is_initialized():
            connect_ray(address)
        self._ray = ray
        self.setup = setup
        self.address = address
        self.workers = workers
        self.cpus = cpus_per_trial
        self.gpus = gpus_per_trial
        self.status = status or (lambda s: None)
        self.resume_hint = resume_hint
        self._host, self._port = parse_ray_address(address)
        # Once into the object store: every task gets the reference, each node fetches it once.
        self._data_ref = ray.put(data)
        self._remote = ray.remote(ray_trial)
        self._inflight: dict[Any, Attempt] = {}
        self._capacity = 1
        self._capacity_at = -math.inf
        self._unreachable_since: float | None = None
        self._check_fits()

    # -- capacity ------------------------------------------------------------------------------
    def _slots(self) -> int:
        res = self._ray.cluster_resources()
        slots = int(res.get("CPU", 0) // self.cpus)
        if self.gpus:
            slots = min(slots, int(res.get("GPU", 0) // self.gpus))
        return slots

    def _check_fits(self) -> None:
        check_fits(self.address, self.cpus, self.gpus)

    @property  # type: ignore[override]
    def capacity(self) -> int:
        """Trials at once: every slot the cluster has now (nodes may join), capped by ``workers``."""
        now = time.monotonic()
        if now - self._capacity_at > HEALTH_EVERY_S:
            try:
                self._capacity = max(1, self._slots())
            except Exception:  # noqa: BLE001 - a flaky GCS answer keeps the last known size
                pass
            self._capacity_at = now
        return min(self._capacity, self.workers) if self.workers else self._capacity

    # -- Executor ------------------------------------------------------------------------------
    def _launch(self, attempt: Attempt) -> None:
        options: dict[str, Any] = {
            "num_cpus": self.cpus,
            "max_retries": 0,
            "name": f"nas-trial-{attempt.job.trial_number}",
        }
        if self.gpus:
            options["num_gpus"] = self.gpus
        ref = self._remote.options(**options).remote(self.setup, attempt.job, self._data_ref, self.cpus)
        self._inflight[ref] = attempt

    def submit(self, job: TrainJob) -> None:
        self._launch(Attempt(job))

    def in_flight(self) -> int:
        return len(self._inflight)

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight:
            wait_s = HEALTH_EVERY_S
            if deadline is not None:
                wait_s = max(0.0, min(wait_s, deadline - time.monotonic()))
            try:
                ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=wait_s)
                if ready:
                    # Everything else that is already done, without waiting.
                    ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight), timeout=0)
            except Exception as e:  # noqa: BLE001 - the connection to the cluster itself failed
                self._lost_cluster(str(e).strip().splitlines()[0][:200] if str(e).strip() else repr(e))
            if ready:
                arrived = time.time()
                out: list[JobResult] = []
                for ref in ready:
                    result = self._collect(ref, arrived)
                    if result is not None:
                        out.append(result)
                if out:
                    return out
                continue
            self._check_cluster()
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    def _collect(self, ref: Any, arrived: float) -> JobResult | None:
        """The finished task's result; None when it was lost and has been relaunched."""
        ray = self._ray
        attempt = self._inflight.pop(ref)
        job = attempt.job
        try:
            result: JobResult = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            # safe_run_job catches everything, so this is an error outside the training itself.
            cause = str(e).strip().splitlines()[-1][:300]
            return JobResult(job.trial_number, job.arch, False, error=f"ray task error: {cause}")
        except (ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError) as e:
            self._lost_cluster(f"{e.__class__.__name__}")
            return None
        except ray.exceptions.RayError as e:
            # The worker process or its node was lost (killed, out of memory, node gone).
            reason = f"ray worker lost ({e.__class__.__name__}: {_first_line(e)})"
            after = attempt.after_loss(reason, self.status, "", 0)
            if isinstance(after, Attempt):
                self._launch(after)
                return None
            return after
        # Queue time from the driver's clock only (node clocks may disagree): time to arrival
        # minus the run time the worker measured.
        queued = max(0.0, arrived - job.submitted_at - result.run_s)
        return attempt.finished(replace(result, queued_s=queued))

    def _check_cluster(self) -> None:
        why = _reachable(self._host, self._port, timeout=2.0)
        if why is None:
            self._unreachable_since = None
            return
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since >= LOST_AFTER_S:
            self._lost_cluster(f"the head node stopped answering: {why}")

    def _lost_cluster(self, why: str) -> None:
        raise FatalError(
            f"lost the Ray cluster at {self.address} mid-run ({why}); every trial told so far is saved in the "
            f"study, and the {len(self._inflight)} running are re-queued on resume: {self.resume_hint}"
        )

    def shutdown(self) -> None:
        """Cancel what is still running and leave the cluster (it stays up for other drivers)."""
        ray = self._ray
        for ref in list(self._inflight):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001, S110 - the cluster may already be gone
                pass
        self._inflight.clear()
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001, S110
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else e.__class__.__name__
