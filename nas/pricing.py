"""The requested device's latency model for past studies: what ``--device`` names (``host``, a
table file, a predictor file, or a device studies under --runs were run for) and the pricers that
re-price a study's architectures on it, built once per space and task shape."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import InputError
from search_spaces.safeio import load_json

from .studies import Study, _read_report, _task_shape


@dataclass(frozen=True)
class Device:
    """What ``--device`` resolved to: ``host``, a table file, a predictor file."""

    name: str
    kind: str  # "host" | "table" | "predictor"
    path: Path | None = None

    def same_as(self, study: Study) -> bool:
        """True when the study was priced with this very latency model (no re-pricing needed)."""
        lat = study.latency
        if self.kind == "host":
            return study.device == "host"
        key = "table" if self.kind == "table" else "predictor"
        other = lat.get(key)
        return bool(other) and self.path is not None and _same_file(Path(other), self.path)

    def describe(self) -> str:
        return "host (this machine's cached profile)" if self.kind == "host" else f"{self.kind} {self.path}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def resolve_device(device: str, studies: Sequence[Study]) -> Device:
    """``host``; a path to a latency table (.json/.csv/.yaml) or predictor (.json) file; or the
    name of a device some study under ``--runs`` was searched for (its table/predictor is reused)."""
    if device == "host":
        return Device("host", "host")
    path = Path(device)
    if path.is_file():
        return _device_from_file(path)
    known: dict[str, Device] = {}
    for s in studies:
        lat = s.latency
        for key in ("predictor", "table"):
            if s.device != "host" and lat.get(key) and Path(lat[key]).is_file():
                known.setdefault(s.device, Device(s.device, key, Path(lat[key])))
    if device in known:
        return known[device]
    seen = sorted({s.device for s in studies} | {"host"})
    raise InputError(
        f"--device: no latency model for {device!r}: not 'host', not a table/predictor file, and no study "
        f"under --runs was searched for it with a readable table or predictor (devices found: {seen})."
    )


def _device_from_file(path: Path) -> Device:
    if path.suffix == ".json":
        try:
            doc = load_json(path, "latency table or predictor")
        except InputError as e:
            raise InputError(
                f"--device {path}: not a JSON latency table or predictor ({str(e)[-80:]})."
            ) from None
        if isinstance(doc, dict) and doc.get("format") == "edge-nas-latency-predictor":
            return Device(str(doc.get("device", path.stem)), "predictor", path)
    from latency_models.table import LatencyTable

    table = LatencyTable.load(path)
    return Device(table.meta.device, "table", path)


@dataclass
class _Pricer:
    """Prices architectures of one (space, options, task shape) on the requested device."""

    space: Any
    latency: Callable[[Sequence[Hashable]], Any]
    memory_table: Any
    description: str


class _Pricers:
    """Latency models built once per space and task shape (loading a table is the slow part)."""

    def __init__(self, device: Device, studies: Sequence[Study]) -> None:
        self.device = device
        self.studies = studies
        self._cache: dict[str, _Pricer] = {}
        self._loaded: Any = None

    def _model_file(self) -> Any:
        if self._loaded is None:
            assert self.device.path is not None
            if self.device.kind == "predictor":
                from latency_models.predictor import load_predictor

                self._loaded = load_predictor(self.device.path)
            else:
                from latency_models.table import LatencyTable

                self._loaded = LatencyTable.load(self.device.path)
        return self._loaded

    def get(self, study: Study) -> _Pricer:
        shape = _task_shape(study)
        key = json.dumps(
            [
                study.space,
                study.space_options,
                list(shape.input_shape),
                shape.num_classes,
                study.latency.get("runtime"),
                study.latency.get("dtype"),
                study.latency.get("threads"),
            ],
            sort_keys=True,
            default=str,
        )
        if key not in self._cache:
            self._cache[key] = self._build(study, shape)
        return self._cache[key]

    def _build(self, study: Study, shape: Any) -> _Pricer:
        from latency_models.predictor import LinearCorrection
        from search_spaces import get_space

        from .latency_model import memory_table, predictor_from_table

        space = get_space(study.space, study.space_options)
        if self.device.kind == "predictor":
            predictor = self._model_file()
            if predictor.space != study.space:
                raise _CannotPrice(
                    f"predictor {self.device.path} prices space {predictor.space!r}, not {study.space!r}"
                )
            return _Pricer(space, predictor.predict, None, f"predictor {self.device.path}")
        if self.device.kind == "table":
            table = self._model_file()
            correction = LinearCorrection()
            description = f"table {self.device.path}"
        else:
            table, correction, description = self._host_table(study, space)
        predictor = predictor_from_table(
            table, study.space, shape, study.space_options, device=self.device.name, correction=correction
        )
        return _Pricer(space, predictor.predict, memory_table(table), description)

    def _host_table(self, study: Study, space: Any) -> tuple[Any, Any, str]:
        """The cached host table of the study's space and runtime settings, with the whole-model
        correction of a host study of the same space under --runs when there is one."""
        from latency_models.predictor import LinearCorrection
        from latency_models.profile import table_path
        from latency_models.table import LatencyTable

        lat = study.latency
        runtime, dtype, threads = (
            lat.get("runtime", "litert"),
            lat.get("dtype", "int8"),
            int(lat.get("threads", 1)),
        )
        path = table_path(space, runtime, dtype, threads)
        if not path.is_file():
            raise _CannotPrice(
                f"no cached host latency table at {path} ({study.space} {runtime} {dtype}, {threads} thread); "
                "run nas run with latency.device host, or nas latency profile, first"
            )
        table = LatencyTable.load(path)
        correction, note = LinearCorrection(), "uncorrected block sums"
        for other in self.studies:
            if (
                other.device == "host"
                and other.space == study.space
                and other.space_options == study.space_options
            ):
                c = (_read_report(other) or {}).get("latency_model", {}).get("correction")
                if c:
                    correction = LinearCorrection(
                        float(c["scale"]), float(c["offset_ms"]), int(c["n_measurements"])
                    )
                    note = f"correction from {other.folder}"
                    break
        return table, correction, f"host table {path} ({note})"


class _CannotPrice(Exception):
    """A study's candidates cannot be priced on the requested device (said in the answer's notes)."""
