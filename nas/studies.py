"""The studies under a runs folder and their trained trials, read straight from their SQLite
files (read-only, no Optuna import: a search may be running on them)."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces import InputError
from search_spaces.safeio import load_json

from .trial_record import FORMAT_VERSION, REPORT_FORMAT, State, StudyKey, TrialKey, TrialRecord

__all__ = ["FORMAT_VERSION", "Study", "find_studies", "task_label"]

# The study attributes retrieval reads (one query for all of them).
_STUDY_KEYS = (StudyKey.CONFIG, StudyKey.FORMAT_VERSION, StudyKey.BUDGETS, StudyKey.VERIFIED)


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
        return task_label(self.config)

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


def task_label(config: Mapping[str, Any]) -> str:
    """The task a run config names, as ``--task`` matches it: a built-in task's name, or an
    ``.npz`` file's stem."""
    data = str((config.get("task") or {}).get("data", ""))
    return Path(data).stem if data.endswith(".npz") else data


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
                    f"AND a.key IN ({', '.join('?' * len(_STUDY_KEYS))})",
                    _STUDY_KEYS,
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
            version = attrs.get(StudyKey.FORMAT_VERSION)
            if version != FORMAT_VERSION or not isinstance(attrs.get(StudyKey.CONFIG), Mapping):
                raise InputError(
                    f"{path}: study {names[study_id]!r} has edge-nas format version {version!r}; expected "
                    f"{FORMAT_VERSION} (rerun it with this edge-nas, or move it out of --runs)."
                )
            studies.append(
                Study(
                    path,
                    names[study_id],
                    study_id,
                    attrs[StudyKey.CONFIG],
                    attrs.get(StudyKey.BUDGETS) if isinstance(attrs.get(StudyKey.BUDGETS), Mapping) else None,
                    _measured_latencies(attrs.get(StudyKey.VERIFIED)),
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
    record: TrialRecord


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
        if a.get(TrialKey.STATE) != State.COMPLETE or accuracy.get(tid) is None:
            continue
        key = str(a.get(TrialKey.CANONICAL, a.get(TrialKey.ARCH)))
        trial = _Trial(numbers[tid], float(accuracy[tid]), TrialRecord.from_attrs(a))
        if key not in out or trial.accuracy > out[key].accuracy:
            out[key] = trial
    return sorted(out.values(), key=lambda t: t.number)


# -- a study's report.json ------------------------------------------------------------------------
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
