"""Retrieval: the most accurate trained models of past studies, and subnets of trained
supernets, that meet budgets on a device.

Studies are read straight from their SQLite files (read-only, no Optuna import), so answering
over hundreds of trials takes well under a second. Candidates of a study run for another device
are re-priced with the requested device's latency model, and the answer says so. A supernet's
subnets are searched for the device (``nas.retrieve_supernets``), which takes an evaluation per
subnet.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search_spaces import FatalError, InputError

from .config import BUDGETS
from .pricing import Device, _CannotPrice, _Pricers, resolve_device
from .studies import Study, _read_report, _task_shape, _trained_trials, _Trial, find_studies

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


# -- candidates and the answer --------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """An architecture priced on the requested device: a trained trial of a study
    (``source`` "trained"), or a subnet of a supernet (``source`` "supernet": ``accuracy`` is
    its inherited, BN-recalibrated validation accuracy, ``study`` the supernet folder,
    ``trial`` the evaluation's number and ``fidelity_epochs`` the supernet's epochs)."""

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
    source: str = "trained"

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
    supernets: int = 0

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
            "supernets": self.supernets,
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
                f"no trained candidate or supernet found under {self.runs}"
                + (f" for task {self.task}" if self.task else "")
                + "."
            )
        b, c = self.binding, self.closest
        unit = BUDGET_UNITS[b["budget"]]
        value = "unknown" if b["value"] is None else f"{b['value']:.4g} {unit}"
        return (
            f"no candidate meets the budgets on {self.device}: the binding budget is "
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
    evaluations: int | None = None,
) -> Answer:
    """The ``top`` most accurate candidates under ``runs`` that meet the budgets on ``device``
    (``answer.candidates``, best first; ``answer.as_dict()`` is what ``nas best --json`` prints):
    trained trials of studies, and subnets of supernets (``evaluations`` searched per supernet,
    as ``nas specialize`` does, by default as many as it does). With ``export``, also retrain, compress and export a trained
    winner there like ``nas run``, or specialize a supernet winner there like ``nas specialize``.

    This is ``nas.best``."""
    from .retrieve_supernets import SUPERNET, export_subnet, find_supernets, subnet_candidates

    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InputError(f"--top: expected an int >= 1, got {top!r}.")
    if evaluations is not None and (
        isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 1
    ):
        raise InputError(f"--evaluations: expected an int >= 1, got {evaluations!r}.")
    budgets = Budgets(max_latency_ms, max_size_kb, max_memory_kb)
    if export is not None:
        _export_target(export)  # before any search: a supernet's takes minutes
    say = status or (lambda s: None)
    unreadable: list[str] = []
    supernets = find_supernets(runs)
    # A folder of supernets alone is an answer too; without any, find_studies says what is missing.
    has_studies = not supernets or any(Path(runs).rglob("study.db"))
    studies = find_studies(runs, unreadable) if has_studies else []
    if task is not None:
        matching = [s for s in studies if s.task == task]
        if not matching and not any(n.task == task for n in supernets):
            found = sorted({s.task for s in studies} | {n.task for n in supernets})
            raise InputError(
                f"--task: no study or supernet under {runs} is for task {task!r}; tasks found: {found}."
            )
        studies = matching
        supernets = [n for n in supernets if n.task == task]
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
    refused: list[InputError] = []
    for supernet in supernets:
        try:
            found = subnet_candidates(supernet, dev, budgets, evaluations, say)
        except InputError as e:  # budgets no subnet meets, a table missing one of its blocks
            refused.append(e)
            notes.append(f"skipped supernet {supernet.folder}: {e}")
            continue
        notes.append(f"searched {len(found)} subnet(s) of supernet {supernet.folder} with {dev.describe()}")
        pool.extend(found)
    if not pool and refused:  # nothing else answers: the supernet's reason is the answer
        raise refused[0]
    skips = [n for n in notes if n.startswith("skipped ") and not n.startswith("skipped supernet")]
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
        supernets=len(supernets),
    )
    if not feasible and pool:
        answer = replace(answer, **_binding(pool, budgets))
    if export is not None:
        if not answer.found:
            raise FatalError(f"--export: nothing to export; {answer.summary()}")
        if answer.candidates[0].source == SUPERNET:
            report = export_subnet(answer, export, evaluations, dev, say)
        else:
            report = export_best(answer, export, studies=studies, status=status)
        answer = replace(answer, exported={"out": str(export), "best": report["best"]})
    return answer


def _candidates(study: Study, trials: Sequence[_Trial], dev: Device, pricers: _Pricers) -> list[Candidate]:
    same = dev.same_as(study)
    latency: list[float]
    memory: list[float | None]
    if same:
        # A file verified before shipping was measured: that beats any prediction.
        latency = [study.measured.get(t.number, float(t.record.predicted_latency_ms)) for t in trials]
        memory = [t.record.predicted_memory_bytes for t in trials]
    else:
        pricer = pricers.get(study)
        archs = [pricer.space.parse(t.record.arch) for t in trials]
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
            arch=str(t.record.arch),
            accuracy=t.accuracy,
            latency_ms=lat,
            size_bytes=float(t.record.predicted_size_bytes),
            memory_bytes=None if mem is None else float(mem),
            study=str(study.folder),
            study_name=study.name,
            trial=t.number,
            task=study.task,
            space=study.space,
            searched_for=study.device,
            repriced=not same,
            fidelity_epochs=t.record.fidelity_epochs,
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
def _export_target(out: str | os.PathLike[str]) -> Path:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"--export: {target} exists and is not an empty folder; choose a new folder.")
    return target


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

    from .config import Constraints, LatencyConfig, file_device, parse_config
    from .data import load_task
    from .latency_model import LatencyModel
    from .report import write_report
    from .search import Screen
    from .shipping import finish_winner

    say = status or (lambda s: None)
    if not answer.found:
        raise FatalError(f"--export: nothing to export; {answer.summary()}")
    target = _export_target(out)
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
            device=file_device(dev.name, dev.path),
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
