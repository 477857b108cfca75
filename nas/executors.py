"""Where trainings run. The driver hands ``TrainJob``s to an ``Executor`` and collects
``JobResult``s as they finish; the inline executor trains in this process, others (local worker
processes, a Ray cluster) plug in with the same three methods. A setup naming a supernet makes
every job an evaluation of a subnet with inherited weights instead of a training
(``nas specialize``), on the same executors.
"""

from __future__ import annotations

import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from search_spaces import TrialFailedError

__all__ = [
    "Executor",
    "InlineExecutor",
    "JobResult",
    "TrainJob",
    "WorkerSetup",
    "run_job",
    "weights_path",
    "worker_data",
]


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs to train any candidate of this run (plain, picklable values)."""

    space: str
    space_options: dict[str, Any]
    task: dict[str, Any]
    training: dict[str, Any]
    # Where each trained network's weights are kept for verification to reuse (None: nowhere). A
    # worker that cannot write there (another machine) skips it; verification then retrains.
    weights_dir: str | None = None
    # A supernet folder: jobs evaluate its subnets (BN calibration on the first
    # ``calibration_samples`` training samples, then validation accuracy) instead of training.
    # The weights' sha256 makes a worker refuse a folder retrained since the driver read it.
    supernet: str | None = None
    supernet_sha256: str = ""
    calibration_samples: int = 0


@dataclass(frozen=True)
class TrainJob:
    trial_number: int
    arch: str
    seed: int
    epochs: int
    submitted_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class JobResult:
    trial_number: int
    arch: str
    ok: bool
    accuracy: float | None = None
    train_accuracy: float | None = None
    epochs: int | None = None
    train_seconds: float | None = None
    params: int | None = None
    error: str | None = None
    host: str = ""
    pid: int = 0
    queued_s: float = 0.0
    run_s: float = 0.0
    # What the driver keeps beside the study but never stores in it: an evaluated subnet's BN
    # statistics ({layer: (mean, variance)} numpy arrays, a few KB) for its extraction later.
    payload: Any = field(default=None, repr=False, compare=False)

    def as_attrs(self) -> dict[str, Any]:
        skip = ("trial_number", "arch", "ok", "payload")
        return {k: v for k, v in asdict(self).items() if k not in skip}


_WORKER_CACHE: dict[str, Any] = {}


def weights_path(folder: str | os.PathLike[str], trial_number: int, epochs: int) -> str:
    """The file holding trial ``trial_number``'s weights after ``epochs`` epochs of training."""
    return os.path.join(folder, f"trial-{trial_number}-e{epochs}.weights.h5")


def _keep_weights(model: Any, folder: str, trial_number: int, epochs: int) -> None:
    """Save the trained weights (temp file, then rename); best effort: the search does not need them."""
    try:
        os.makedirs(folder, exist_ok=True)
        final = weights_path(folder, trial_number, epochs)
        tmp = final[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, final)
    except (OSError, ValueError):
        pass


def worker_data(setup: WorkerSetup) -> Any:
    """What a process loads once and passes to each of its jobs: the task's data, or for a
    supernet setup the loaded supernet (TensorFlow, weights, traced functions), kept for the
    process's later jobs."""
    from .data import TaskSpec, load_task

    if setup.supernet is None:
        return load_task(TaskSpec(**setup.task))
    from .supernet import load_supernet

    key = f"supernet:{setup.supernet}"
    loaded = _WORKER_CACHE.get(key)
    if loaded is None:
        loaded = load_supernet(setup.supernet)
        _WORKER_CACHE[key] = loaded
    sha = loaded.manifest["weights"]["sha256"]
    if setup.supernet_sha256 and sha != setup.supernet_sha256:
        raise TrialFailedError(
            f"supernet {setup.supernet}: expected weights sha256 {setup.supernet_sha256} (as the driver "
            f"read them), got {sha}: the folder changed during the run."
        )
    return loaded


def _evaluate(setup: WorkerSetup, job: TrainJob, loaded: Any) -> JobResult:
    """One subnet's inherited validation accuracy, and its BN statistics as the payload."""
    from .supernet import evaluate_subnet

    net = loaded.net
    accuracy, stats = evaluate_subnet(net, net.space.parse(job.arch), loaded.data, setup.calibration_samples)
    return JobResult(job.trial_number, job.arch, True, accuracy=accuracy, epochs=job.epochs, payload=stats)


def run_job(setup: WorkerSetup, job: TrainJob, data: Any = None) -> JobResult:
    """Train one candidate (or evaluate one subnet, for a supernet setup). Runs in any process;
    ``data`` is ``worker_data(setup)``, loaded once per process or passed in (e.g. from Ray's
    object store)."""
    from search_spaces import get_space

    from .config import TrainConfig
    from .train import train_candidate

    started = time.time()
    queued = max(0.0, started - job.submitted_at)
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        if data is None:
            data = worker_data(setup)
        if setup.supernet is not None:
            evaluated = _evaluate(setup, job, data)
            return replace(evaluated, queued_s=queued, run_s=time.time() - started, **where)
        space = get_space(setup.space, setup.space_options)
        arch = space.parse(job.arch)
        result, model = train_candidate(
            space, arch, data, TrainConfig(**setup.training), job.seed, job.epochs
        )
        if setup.weights_dir:
            _keep_weights(model, setup.weights_dir, job.trial_number, job.epochs)
    except TrialFailedError as e:
        return JobResult(
            job.trial_number,
            job.arch,
            False,
            error=str(e),
            queued_s=queued,
            run_s=time.time() - started,
            **where,
        )
    return JobResult(
        job.trial_number,
        job.arch,
        True,
        accuracy=result.accuracy,
        train_accuracy=result.train_accuracy,
        epochs=result.epochs,
        train_seconds=result.seconds,
        params=result.params,
        queued_s=queued,
        run_s=time.time() - started,
        **where,
    )


class Executor(ABC):
    """Runs training jobs; ``capacity`` jobs may be in flight at once."""

    capacity: int = 1

    @abstractmethod
    def submit(self, job: TrainJob) -> None: ...

    @abstractmethod
    def poll(self, timeout: float | None = None) -> list[JobResult]:
        """Results that finished since the last call (waits up to ``timeout`` for at least one)."""

    def in_flight(self) -> int:
        return 0

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        pass


class InlineExecutor(Executor):
    """Trains in this process, one job at a time (the simplest, and the reference)."""

    def __init__(self, setup: WorkerSetup, data: Any = None) -> None:
        self.setup = setup
        self.data = data
        self._done: list[JobResult] = []

    def submit(self, job: TrainJob) -> None:
        self._done.append(run_job(self.setup, job, self.data))

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        done, self._done = self._done, []
        return done
