"""Retrieval: the most accurate trained models of past studies that meet budgets on a device.

Studies are read straight from their SQLite files (read-only, no Optuna import), so answering
over hundreds of trials takes well under a second. Candidates of a study run for another device
are re-priced with the requested device's latency model, and the answer says so.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search_spaces import FatalError, InputError
from search_spaces.safeio import load_json

from .config import BUDGETS

__all__ = [
    "Answer",
    "Budgets",
    "Candidate",
    "Study",
    "best",
    "export_best",
    "find_studies",
    "parse_quantity",
]

FORMAT_VERSION = 1  # the study user attr ``format_version`` written by ``nas run``
REPORT_FORMAT = "edge-nas-report"
BUDGET_UNITS = BUDGETS  # budget name -> unit, as in a run config


# -- budgets --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budgets:
    """Hard budgets for retrieval; ``None`` means no budget on that quantity."""

    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_memory_kb: float | None = None

    def __post_init__(self) -> None:
        for name in BUDGET_UNITS:
            value = getattr(self, name)
            if value is None:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value <= 0:
                flag = "--" + name.replace("_", "-")
                raise InputError(f"{flag}: expected a number > 0 ({BUDGET_UNITS[name]}), got {value!r}.")

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in BUDGET_UNITS if getattr(self, k) is not None}


_UNITS = {
    "time": {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0},
    "bytes": {"b": 1 / 1024, "kb": 1.0, "kib": 1.0, "k": 1.0, "mb": 1024.0, "mib": 1024.0, "m": 1024.0},
}


def parse_quantity(text: str, kind: str, where: str) -> float:
    """``"40kb"`` -> 40.0 (KB), ``"0.3 ms"`` -> 0.3 (ms). The unit is required: a bare number is
    ambiguous (bytes or KB? ms or s?) and is refused."""
    units = _UNITS[kind]
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ]*)\s*", str(text))
    examples = "e.g. 0.5ms, 2s" if kind == "time" else "e.g. 40kb, 1.5mb"
    if m is None:
        raise InputError(f"{where}: expected a number with a unit ({examples}), got {text!r}.")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        raise InputError(f"{where}: expected a unit after {m.group(1)} ({examples}), got {text!r}.")
    if unit not in units:
        raise InputError(f"{where}: unknown unit {m.group(2)!r}; valid units: {sorted(units)}.")
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"{where}: expected a value > 0, got {text!r}.")
    return number * units[unit]


# -- studies --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    """One edge-nas study found under the runs folder: its config and where it lives."""

    path: Path  # the study.db file
    name: str
    study_id: int
    config: Mapping[str, Any]
    budgets: Mapping[str, Any] | None = None  # as resolved by nas run (relative budgets)
    measured: Mapping[int, float] = field(default_factory=dict)  # trial -> ms of its verified file

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def task(self) -> str:
        data = str(self.config.get("task", {}).get("data", ""))
        return Path(data).stem if data.endswith(".npz") else data

    @property
    def space(self) -> str:
        return str(self.config.get("space", {}).get("name", ""))

    @property
    def space_options(self) -> dict[str, Any]:
        return dict(self.config.get("space", {}).get("options", {}) or {})

    @property
    def latency(self) -> dict[str, Any]:
        return dict(self.config.get("latency", {}) or {})

    @property
    def device(self) -> str:
        return str(self.latency.get("device", "host"))


def _connect(path: Path) -> sqlite3.Connection:
    # Read-only: retrieval never writes into a user's study (a search may be running on it).
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=5.0)


def find_studies(runs: str | os.PathLike[str], skipped: list[str] | None = None) -> list[Study]:
    """Every edge-nas study in every ``study.db`` under ``runs`` (the folder itself included).

    With ``skipped``, an unreadable ``study.db`` is noted there and passed over (one corrupt run
    among many should not hide the others), unless no study at all can be read."""
    root = Path(runs)
    if not root.is_dir():
        raise InputError(f"--runs: expected a folder of run folders, got {str(root)!r} (not a folder).")
    paths = sorted(root.rglob("study.db"))
    if not paths:
        raise InputError(
            f"--runs: no study found under {root} (looked for */study.db, as written by nas run)."
        )
    studies: list[Study] = []
    errors: list[InputError] = []
    for path in paths:
        sidecars = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
        existed = [p.exists() for p in sidecars]
        try:
            with closing(_connect(path)) as con:
                rows = con.execute(
                    "SELECT s.study_id, s.study_name, a.key, a.value_json FROM studies s "
                    "LEFT JOIN study_user_attributes a ON a.study_id = s.study_id "
                    "AND a.key IN ('config', 'format_version', 'budgets', 'verified')"
                ).fetchall()
            by_study: dict[int, dict[str, Any]] = {}
            names: dict[int, str] = {}
            for study_id, name, key, value in rows:
                names[study_id] = name
                attrs = by_study.setdefault(study_id, {})
                if key is not None:
                    attrs[key] = json.loads(value)
        except (sqlite3.Error, ValueError, TypeError) as e:
            for sidecar, was in zip(sidecars, existed, strict=True):
                if not was:  # SQLite made them for a file that is no study: leave no trace
                    sidecar.unlink(missing_ok=True)
            error = InputError(f"{path}: not an Optuna SQLite study ({str(e)[:100]}).")
            if skipped is None:
                raise error from None
            errors.append(error)
            skipped.append(str(error))
            continue
        for study_id, attrs in by_study.items():
            version = attrs.get("format_version")
            if version != FORMAT_VERSION or not isinstance(attrs.get("config"), Mapping):
                raise InputError(
                    f"{path}: study {names[study_id]!r} has edge-nas format version {version!r}; expected "
                    f"{FORMAT_VERSION} (rerun it with this edge-nas, or move it out of --runs)."
                )
            studies.append(
                Study(
                    path,
                    names[study_id],
                    study_id,
                    attrs["config"],
                    attrs.get("budgets") if isinstance(attrs.get("budgets"), Mapping) else None,
                    _measured_latencies(attrs.get("verified")),
                )
            )
    if not studies and errors:
        raise errors[0]
    return studies


def _measured_latencies(records: Any) -> dict[int, float]:
    """Trial number -> the latency its exported file measured in verification (the last one)."""
    out: dict[int, float] = {}
    if isinstance(records, list):
        for r in records:
            if isinstance(r, Mapping) and isinstance(r.get("measured_latency_ms"), (int, float)):
                value = float(r["measured_latency_ms"])
                if math.isfinite(value) and value > 0 and isinstance(r.get("trial"), int):
                    out[r["trial"]] = value
    return out


@dataclass(frozen=True)
class _Trial:
    number: int
    accuracy: float
    attrs: Mapping[str, Any]


def _trained_trials(study: Study) -> list[_Trial]:
    """Complete (trained, feasible at search time) trials, one per distinct architecture."""
    try:
        return _read_trials(study)
    except sqlite3.Error as e:  # e.g. locked for longer than the timeout by a running search
        raise InputError(f"{study.path}: cannot read the trials of study {study.name!r} ({e}).") from None


def _read_trials(study: Study) -> list[_Trial]:
    with closing(_connect(study.path)) as con:
        rows = con.execute(
            "SELECT t.trial_id, t.number, a.key, a.value_json FROM trials t "
            "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.study_id = ? AND t.state = 'COMPLETE'",
            (study.study_id,),
        ).fetchall()
        values = con.execute(
            "SELECT v.trial_id, v.value FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
            "WHERE t.study_id = ? AND v.objective = 0",
            (study.study_id,),
        ).fetchall()
    accuracy = {tid: v for tid, v in values}
    attrs: dict[int, dict[str, Any]] = {}
    numbers: dict[int, int] = {}
    for tid, number, key, value in rows:
        numbers[tid] = number
        attrs.setdefault(tid, {})[key] = json.loads(value)
    out: dict[str, _Trial] = {}
    for tid, a in attrs.items():
        if a.get("state") != "complete" or accuracy.get(tid) is None:
            continue
        key = str(a.get("canonical", a.get("arch")))
        trial = _Trial(numbers[tid], float(accuracy[tid]), a)
        if key not in out or trial.accuracy > out[key].accuracy:
            out[key] = trial
    return sorted(out.values(), key=lambda t: t.number)


# -- the device's latency model -------------------------------------------------------------------
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


_REPORTS: dict[str, dict[str, Any] | None] = {}


def _read_report(study: Study) -> dict[str, Any] | None:
    path = study.folder / "report.json"
    # keyed by mtime too: a notebook asking again after a run finished must see the new report
    key = f"{path.resolve()}:{path.stat().st_mtime_ns if path.is_file() else 0}"
    if key not in _REPORTS:
        _REPORTS[key] = _load_report(path)
    return _REPORTS[key]


def _load_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    doc = load_json(path, "run report")
    if (
        not isinstance(doc, dict)
        or doc.get("format") != REPORT_FORMAT
        or doc.get("version") != FORMAT_VERSION
    ):
        got = doc.get("version") if isinstance(doc, dict) else None
        raise InputError(
            f"{path}: expected an {REPORT_FORMAT} report version {FORMAT_VERSION}, got version {got!r} "
            "(rerun it with this edge-nas, or move it out of --runs)."
        )
    return doc


def _task_shape(study: Study) -> Any:
    """The task's input shape and classes: from report.json, else by loading the task's data."""
    from search_spaces import TaskShape

    report = _read_report(study)
    if report and report.get("task", {}).get("input_shape"):
        t = report["task"]
        return TaskShape(tuple(int(d) for d in t["input_shape"]), int(t["num_classes"]))
    from .data import TaskSpec, load_task

    data = load_task(TaskSpec(**dict(study.config["task"])))
    return TaskShape(data.input_shape, data.num_classes)


# -- candidates and the answer --------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A trained architecture priced on the requested device."""

    arch: str
    accuracy: float  # validation accuracy at search fidelity (``fidelity_epochs``)
    latency_ms: float
    size_bytes: float
    memory_bytes: float | None
    study: str  # the run folder
    study_name: str
    trial: int
    task: str
    space: str
    searched_for: str  # the device the study was searched for
    repriced: bool
    fidelity_epochs: int | None = None

    def ratios(self, budgets: Budgets) -> dict[str, float]:
        """value / budget for every budget (> 1 breaks it; memory unknown counts as infinite)."""
        out = {}
        if budgets.max_latency_ms is not None:
            out["max_latency_ms"] = self.latency_ms / budgets.max_latency_ms
        if budgets.max_size_kb is not None:
            out["max_size_kb"] = self.size_bytes / 1024.0 / budgets.max_size_kb
        if budgets.max_memory_kb is not None:
            m = self.memory_bytes
            out["max_memory_kb"] = math.inf if m is None else m / 1024.0 / budgets.max_memory_kb
        return out

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Answer:
    """The most accurate candidates meeting the budgets; when none does, the binding budget and
    the closest candidate."""

    runs: str
    device: str
    device_model: str
    device_arg: str
    budgets: Budgets
    task: str | None
    candidates: tuple[Candidate, ...]
    considered: int
    studies: int
    notes: tuple[str, ...] = ()
    binding: Mapping[str, Any] | None = None
    closest: Candidate | None = None
    exported: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def found(self) -> bool:
        return bool(self.candidates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": "edge-nas-best",
            "version": 1,
            "runs": self.runs,
            "device": self.device,
            "device_model": self.device_model,
            "task": self.task,
            "budgets": self.budgets.as_dict(),
            "studies": self.studies,
            "considered": self.considered,
            "candidates": [c.as_dict() for c in self.candidates],
            "notes": list(self.notes),
            "binding": dict(self.binding) if self.binding else None,
            "closest": self.closest.as_dict() if self.closest else None,
            "exported": dict(self.exported) if self.exported else None,
        }

    def summary(self) -> str:
        """The sentence printed when nothing meets the budgets."""
        if self.found:
            return f"{len(self.candidates)} candidate(s) meet the budgets on {self.device}."
        if self.closest is None or self.binding is None:
            return (
                f"no trained candidate found under {self.runs}"
                + (f" for task {self.task}" if self.task else "")
                + "."
            )
        b, c = self.binding, self.closest
        unit = BUDGET_UNITS[b["budget"]]
        value = "unknown" if b["value"] is None else f"{b['value']:.4g} {unit}"
        return (
            f"no trained candidate meets the budgets on {self.device}: the binding budget is "
            f"{b['budget']} {b['limit']:g} ({b['exceeding']} of {self.considered} candidates exceed it); "
            f"closest: {c.arch} (study {c.study}, trial {c.trial}) at {value} "
            f"({_ratio_text(b['ratio'])} the budget), accuracy {c.accuracy:.4f}."
        )


def _ratio_text(ratio: float) -> str:
    return "no memory estimate for" if math.isinf(ratio) else f"{ratio:.2f}x"


def best(
    runs: str | os.PathLike[str],
    *,
    device: str = "host",
    task: str | None = None,
    max_latency_ms: float | None = None,
    max_size_kb: float | None = None,
    max_memory_kb: float | None = None,
    top: int = 5,
    export: str | os.PathLike[str] | None = None,
    status: Callable[[str], None] | None = None,
) -> Answer:
    """The ``top`` most accurate trained candidates under ``runs`` that meet the budgets on
    ``device``. With ``export``, also retrain, compress and export the winner there like ``nas run``."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"--top: expected an int >= 1, got {top!r}.")
    budgets = Budgets(max_latency_ms, max_size_kb, max_memory_kb)
    unreadable: list[str] = []
    studies = find_studies(runs, unreadable)
    if task is not None:
        matching = [s for s in studies if s.task == task]
        if not matching:
            raise InputError(
                f"--task: no study under {runs} is for task {task!r}; tasks found: {sorted({s.task for s in studies})}."
            )
        studies = matching
    dev = resolve_device(device, studies)
    pricers = _Pricers(dev, studies)
    notes: list[str] = [f"ignored {e}" for e in unreadable]
    pool: list[Candidate] = []
    priced_studies = 0
    for study in studies:
        trials = _trained_trials(study)
        if not trials:
            continue
        try:
            found = _candidates(study, trials, dev, pricers)
        except _CannotPrice as e:
            notes.append(f"skipped {study.folder}: {e}")
            continue
        priced_studies += 1
        if found and found[0].repriced:
            notes.append(
                f"re-priced {len(found)} candidate(s) of {study.folder} (searched for {study.device!r}) "
                f"with {pricers.get(study).description}"
            )
        pool.extend(found)
    skips = [n for n in notes if n.startswith("skipped")]
    if not pool and skips:
        raise InputError(f"--device {device}: no latency model to price the studies with: {skips[0][8:]}.")
    feasible = [c for c in pool if all(r <= 1.0 for r in c.ratios(budgets).values())]
    feasible.sort(key=lambda c: (-c.accuracy, c.latency_ms, c.size_bytes))
    answer = Answer(
        runs=str(runs),
        device=dev.name,
        device_model=dev.describe(),
        device_arg=device,
        budgets=budgets,
        task=task,
        candidates=tuple(feasible[:top]),
        considered=len(pool),
        studies=priced_studies,
        notes=tuple(notes),
    )
    if not feasible and pool:
        answer = replace(answer, **_binding(pool, budgets))
    if export is not None:
        if not answer.found:
            raise FatalError(f"--export: nothing to export; {answer.summary()}")
        report = export_best(answer, export, studies=studies, status=status)
        answer = replace(answer, exported={"out": str(export), "best": report["best"]})
    return answer


def _candidates(study: Study, trials: Sequence[_Trial], dev: Device, pricers: _Pricers) -> list[Candidate]:
    same = dev.same_as(study)
    latency: list[float]
    memory: list[float | None]
    if same:
        # A file verified before shipping was measured: that beats any prediction.
        latency = [study.measured.get(t.number, float(t.attrs["predicted_latency_ms"])) for t in trials]
        memory = [t.attrs.get("predicted_memory_bytes") for t in trials]
    else:
        pricer = pricers.get(study)
        archs = [pricer.space.parse(t.attrs["arch"]) for t in trials]
        try:
            latency = [float(v) for v in pricer.latency(archs)]
        except InputError as e:  # e.g. a block the device's table lacks
            raise _CannotPrice(str(e).rstrip(".")) from None
        if pricer.memory_table is not None:
            shape = _task_shape(study)
            memory = [float(pricer.memory_table.memory(pricer.space.blocks(a, shape))) for a in archs]
        else:
            memory = [None] * len(trials)
    return [
        Candidate(
            arch=str(t.attrs["arch"]),
            accuracy=t.accuracy,
            latency_ms=lat,
            size_bytes=float(t.attrs["predicted_size_bytes"]),
            memory_bytes=None if mem is None else float(mem),
            study=str(study.folder),
            study_name=study.name,
            trial=t.number,
            task=study.task,
            space=study.space,
            searched_for=study.device,
            repriced=not same,
            fidelity_epochs=t.attrs.get("fidelity_epochs"),
        )
        for t, lat, mem in zip(trials, latency, memory, strict=True)
    ]


def _binding(pool: Sequence[Candidate], budgets: Budgets) -> dict[str, Any]:
    """The closest candidate (smallest worst value/budget ratio) and the budget it breaks most."""
    closest = min(pool, key=lambda c: (max(c.ratios(budgets).values()), -c.accuracy))
    ratios = closest.ratios(budgets)
    name = max(ratios, key=lambda k: ratios[k])
    value = {
        "max_latency_ms": closest.latency_ms,
        "max_size_kb": closest.size_bytes / 1024.0,
        "max_memory_kb": None if closest.memory_bytes is None else closest.memory_bytes / 1024.0,
    }[name]
    exceeding = sum(c.ratios(budgets)[name] > 1.0 for c in pool)
    return {
        "closest": closest,
        "binding": {
            "budget": name,
            "limit": budgets.as_dict()[name],
            "value": value,
            "ratio": ratios[name],
            "exceeding": exceeding,
        },
    }


# -- export ---------------------------------------------------------------------------------------
def export_best(
    answer: Answer,
    out: str | os.PathLike[str],
    *,
    studies: Sequence[Study] | None = None,
    status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Retrain the answer's winner with its study's settings, compress and export it exactly like
    ``nas run`` (the same functions), re-measure the file and write ``report.json`` in ``out``."""
    import dataclasses
    import time

    import optuna

    from latency_models.size import SizeModel
    from latency_models.table import write_atomic
    from search_spaces import TaskShape, get_space

    from .config import Constraints, LatencyConfig, parse_config
    from .data import load_task
    from .latency_model import LatencyModel
    from .report import write_report
    from .search import Screen
    from .shipping import finish_winner

    say = status or (lambda s: None)
    if not answer.found:
        raise FatalError(f"--export: nothing to export; {answer.summary()}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--export: {target} exists and is not an empty folder; choose a new folder.")
    winner = answer.candidates[0]
    studies = studies or find_studies(answer.runs)
    study = next((s for s in studies if str(s.folder) == winner.study and s.name == winner.study_name), None)
    if study is None:
        raise InputError(f"--export: the winner's study {winner.study} is no longer under {answer.runs}.")
    started = time.time()
    config = parse_config(dict(study.config), f"{study.path} (config)")
    dev = resolve_device(answer.device_arg, studies)
    if dev.kind == "host":
        latency = config.latency if study.device == "host" else LatencyConfig(device="host")
    else:
        latency = LatencyConfig(
            device=dev.name,
            runtime=config.latency.runtime,
            dtype=config.latency.dtype,
            threads=config.latency.threads,
            **{dev.kind: str(dev.path)},
        )
    constraints = Constraints(**answer.budgets.as_dict())
    config = dataclasses.replace(config, latency=latency, constraints=constraints)
    space = get_space(config.space.name, config.space.options)
    data = load_task(config.task)
    shape = TaskShape(data.input_shape, data.num_classes)
    pricer = _Pricers(dev, studies).get(study)
    report_doc = _read_report(study) or {}
    size = SizeModel(**report_doc.get("latency_model", {}).get("size_model", {"dtype": config.latency.dtype}))
    if pricer.memory_table is None and constraints.max_memory_kb is not None:
        constraints = dataclasses.replace(constraints, max_memory_kb=None)
        config = dataclasses.replace(config, constraints=constraints)
    latency_model = LatencyModel(
        predictor=_CallablePredictor(pricer.latency),
        size=size,
        memory_table=pricer.memory_table,
        description=pricer.description,
        calibration=[],
    )
    screen = Screen(space, shape, latency_model.predictor, size, constraints, pricer.memory_table)
    storage = f"sqlite:///{study.path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name=study.name, storage=storage)
    trial = next(t for t in source.get_trials(deepcopy=False) if t.number == winner.trial)
    target.mkdir(parents=True, exist_ok=True)
    say(f"retraining the winner {winner.arch} (study {study.folder}, trial {winner.trial})")
    exported = finish_winner(config, space, space.parse(winner.arch), data, target, say)
    report = write_report(
        target,
        config=config,
        study=source,
        space=space,
        screen=screen,
        latency_model=latency_model,
        best_trial=trial,
        exported=exported,
        timings={"search_s": 0.0, "total_s": time.time() - started},
    )
    write_atomic(target / "retrieval.json", json.dumps(answer.as_dict(), indent=1, default=str) + "\n")
    return report


@dataclass(frozen=True)
class _CallablePredictor:
    """A ``predict(archs)`` facade over a pricer's latency function (what ``Screen`` calls)."""

    fn: Callable[[Sequence[Hashable]], Any]

    def predict(self, archs: Sequence[Hashable]) -> Any:
        import numpy as np

        return np.asarray(self.fn(list(archs)), dtype=float)
