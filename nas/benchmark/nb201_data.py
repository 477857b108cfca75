"""NAS-Bench-201's published tables (``nas/data/nb201``) and the engine's parts the benchmark
drives with them: the space, the sizes and screen, a latency predictor and an executor that look
the answers up instead of timing and training."""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, ClassVar

import numpy as np

from latency_models.predictor import LatencyPredictor
from search_spaces import InputError, TaskShape

__all__ = [
    "DATASETS",
    "SPACE_OPTIONS",
    "LookupPredictor",
    "Nb201Data",
    "device_family",
    "load_data",
    "lookup_executor",
]

DATASETS = {
    "cifar10": ("CIFAR10TestAccuracy200Epochs", 10),
    "cifar100": ("CIFAR100TestAccuracy200Epochs", 100),
    "imagenet16": ("ImageNetTestAccuracy200Epochs", 120),
}
# The published NAS-Bench-201 macro skeleton: 16 channels, 5 cells per stage, 32x32 inputs.
SPACE_OPTIONS = {"channels": 16, "cells_per_stage": 5}


@dataclass(frozen=True)
class Nb201Data:
    """All 15,625 cells: accuracy per dataset and latency (ms) per device, row-aligned."""

    archs: tuple[str, ...]
    accuracy: Mapping[str, np.ndarray]
    devices: tuple[str, ...]
    latency: np.ndarray  # (archs, devices)
    index: Mapping[str, int] = field(default_factory=dict)

    def device_latency(self, device: str) -> np.ndarray:
        if device not in self.devices:
            raise InputError(f"--device: unknown device {device!r}; valid devices: {sorted(self.devices)}.")
        return self.latency[:, self.devices.index(device)]


@cache
def load_data() -> Nb201Data:
    """The vendored NAS-Bench-201 tables (``nas/data/nb201``)."""
    root = resources.files("nas") / "data" / "nb201"
    with resources.as_file(root / "latency_ms_27dev.csv.gz") as p, gzip.open(p, "rt") as f:
        reader = csv.reader(f)
        header = next(reader)
        devices = tuple(header[2:])
        archs: list[str] = []
        lat: list[list[float]] = []
        for row in reader:
            archs.append(row[1])
            lat.append([float(v) for v in row[2:]])
    with resources.as_file(root / "accuracy_200ep.csv.gz") as p, gzip.open(p, "rt") as f:
        rows = list(csv.DictReader(f))
    if [r["ArchitectureString"] for r in rows] != archs:
        raise InputError("nas/data/nb201: accuracy and latency tables list different architectures.")
    accuracy = {name: np.array([float(r[col]) for r in rows]) for name, (col, _) in DATASETS.items()}
    return Nb201Data(tuple(archs), accuracy, devices, np.array(lat), {a: i for i, a in enumerate(archs)})


def device_family(device: str) -> str:
    """Settings of the same hardware (``titan_rtx_1`` / ``titan_rtx_32``) share a family."""
    return re.sub(r"_(1|32|64|256)$", "", device)


@dataclass(frozen=True)
class LookupPredictor(LatencyPredictor):
    """Latency by architecture string: a device's measured table, or predictions made once for
    every architecture of a finite space."""

    kind: ClassVar[str] = "lookup"
    values: Mapping[str, float] = field(default_factory=dict)

    def predict(self, archs: Sequence[Hashable]) -> np.ndarray:
        try:
            return np.array([self.values[str(a)] for a in archs], dtype=float)
        except KeyError as e:
            raise InputError(f"lookup predictor: no latency for arch {e.args[0]!r}.") from None

    def _payload(self) -> dict[str, Any]:
        return {"values": dict(self.values)}

    @classmethod
    def _from_payload(cls, doc: Mapping[str, Any], where: str) -> LookupPredictor:
        values = doc.get("values")
        if not isinstance(values, dict):
            raise InputError(
                f"{where}: values: expected an object of arch -> ms, got {type(values).__name__}."
            )
        return cls(
            space=str(doc["space"]),
            device=str(doc["device"]),
            values={str(k): float(v) for k, v in values.items()},
        )


# -- the engine's parts for this benchmark -------------------------------------------------------
@cache
def _space() -> Any:
    from search_spaces import get_space

    return get_space("nb201", SPACE_OPTIONS)


@cache
def _sizes(num_classes: int) -> dict[str, float]:
    """Predicted exported size of every cell (the size model is part of the real screen).

    Pricing 15,625 cells takes seconds; the classes only change the shared classifier head, so
    another dataset's sizes are the first one's plus the head's difference, checked on a few
    cells (the size model is linear in its terms) before it is trusted.
    """
    from latency_models.size import SizeModel

    space, task, model = _space(), TaskShape((32, 32, 3), num_classes), SizeModel()
    archs = load_data().archs

    def exact(a: str) -> float:
        return float(model.predict(space.size_terms(space.parse(a), task)))

    if num_classes != _SIZE_BASE_CLASSES:
        base = _sizes(_SIZE_BASE_CLASSES)
        probes = archs[:: len(archs) // 4]
        deltas = [exact(a) - base[a] for a in probes]
        if max(deltas) - min(deltas) < 1e-6 * max(abs(d) for d in deltas) + 1e-9:
            return {a: v + deltas[0] for a, v in base.items()}
    return {a: exact(a) for a in archs}


_SIZE_BASE_CLASSES = 10


def _make_screen(latency: LookupPredictor, num_classes: int, max_latency_ms: float | None) -> Any:
    """The loop's ``Screen``, with sizes memoised per process (prices 15,625 cells per call)."""
    from latency_models.size import SizeModel
    from nas.config import Constraints
    from nas.search import Screen
    from nas.strategies._base import Prediction

    sizes = _sizes(num_classes)

    @dataclass(frozen=True)
    class MemoScreen(Screen):
        def __call__(self, archs: Sequence[Hashable]) -> list[Prediction]:
            lat = self.latency.predict(list(archs))
            out = []
            for arch, ms in zip(archs, lat, strict=True):
                size = sizes[str(arch)]
                out.append(Prediction(float(ms), size, None, self._violations(float(ms), size, None)))
            return out

    return MemoScreen(
        _space(),
        TaskShape((32, 32, 3), num_classes),
        latency,
        SizeModel(),
        Constraints(max_latency_ms=max_latency_ms),
    )


def lookup_executor(accuracy: Callable[[str], float], queried: list[str]) -> Any:
    from nas.executors import Executor, JobResult, TrainJob

    class LookupExecutor(Executor):
        """ "Trains" by looking up the published accuracy; every look-up is one training."""

        def __init__(self) -> None:
            self._done: list[JobResult] = []

        def submit(self, job: TrainJob) -> None:
            queried.append(job.arch)
            self._done.append(
                JobResult(job.trial_number, job.arch, True, accuracy=accuracy(job.arch), epochs=200)
            )

        def poll(self, timeout: float | None = None) -> list[JobResult]:
            done, self._done = self._done, []
            return done

    return LookupExecutor()
