"""Retrieval from trained supernets: ``nas best`` answers from a supernet folder by searching its
subnets for the requested device and budgets (``nas.specialize``'s search, without shipping), and
``--export`` on a subnet runs the full specialization (``nas.specialize.specialize``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces import InputError

from .studies import task_label
from .supernet import MANIFEST, read_manifest
from .trial_record import State, TrialRecord

if TYPE_CHECKING:  # pragma: no cover
    from .pricing import Device
    from .retrieve import Answer, Budgets, Candidate

__all__ = ["SUPERNET", "SupernetFolder", "export_subnet", "find_supernets", "subnet_candidates"]

SUPERNET = "supernet"  # a candidate's ``source`` when it is a supernet's subnet (else "trained")


@dataclass(frozen=True)
class SupernetFolder:
    """A folder under ``--runs`` holding a supernet manifest, with the task and space it names
    (read from its checked manifest; the weights are loaded when it is searched)."""

    folder: Path
    task: str
    space: str


def find_supernets(runs: str | os.PathLike[str]) -> list[SupernetFolder]:
    """Every folder under ``runs`` (``runs`` itself included) holding ``supernet.json``, each
    checked by ``read_manifest`` (format, version, the weight file's sha256) before any search:
    a broken or truncated one is refused, naming it."""
    root = Path(runs)
    if not root.is_dir():
        raise InputError(f"--runs: expected a folder of run folders, got {str(root)!r} (not a folder).")
    found = []
    for path in sorted(root.rglob(MANIFEST)):
        config = read_manifest(path.parent).get("config")
        if not isinstance(config, dict):
            raise InputError(
                f"{path}: config: expected the run config the supernet was trained with, got {config!r}."
            )
        space = str((config.get("space") or {}).get("name", ""))
        found.append(SupernetFolder(path.parent, task_label(config), space))
    return found


def _device_flags(dev: Device) -> dict[str, str | None]:
    """``nas specialize``'s device arguments for what ``--device`` resolved to."""
    if dev.kind == "host":
        return {"device": "host", "table": None, "predictor": None}
    return {"device": None, "table": None, "predictor": None, dev.kind: str(dev.path)}


def _constraints(budgets: Budgets) -> Any:
    from .config import Constraints

    return Constraints(**budgets.as_dict())


def subnet_candidates(
    supernet: SupernetFolder,
    dev: Device,
    budgets: Budgets,
    evaluations: int | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> list[Candidate]:
    """The subnets ``nas specialize`` would consider: ``evaluations`` of them searched under the
    budgets on ``dev`` (inherited, BN-recalibrated validation accuracy; the device's latency and
    size screening), in a study kept in memory; only the supernet folder's
    ``evaluations.json`` (``nas.supernet.EvaluationCache``) gains the subnets evaluated."""
    import optuna

    from .retrieve import Candidate
    from .specialize import DEFAULT_EVALUATIONS, prepare_search, search_subnets
    from .supernet import load_supernet

    loaded = load_supernet(supernet.folder, say)
    setup = prepare_search(
        loaded,
        _constraints(budgets),
        evaluations=DEFAULT_EVALUATIONS if evaluations is None else evaluations,
        say=say,
        device_flag="--device",
        **_device_flags(dev),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def in_memory(sampler: Any) -> Any:
        return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    study, _, _ = search_subnets(setup, in_memory, say)
    where: dict[str, Any] = {
        "study": str(supernet.folder),
        "study_name": SUPERNET,
        "task": supernet.task,
        "space": supernet.space,
        "searched_for": dev.name,
        "repriced": False,  # priced by the device's own model in the search
        "fidelity_epochs": int(loaded.manifest["epoch"]),
        "source": SUPERNET,
    }
    out = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.from_attrs(t.user_attrs)
        if record.state != State.COMPLETE or not t.values:
            continue
        size = record.size_bytes  # exact where it was converted near the size budget
        memory = record.predicted_memory_bytes
        latency = record.predicted_latency_ms if record.predicted_latency_ms is not None else t.values[1]
        out.append(
            Candidate(
                arch=str(record.arch),
                accuracy=float(t.values[0]),
                latency_ms=float(latency),
                size_bytes=float(size or 0.0),
                memory_bytes=None if memory is None else float(memory),
                trial=t.number,
                **where,
            )
        )
    return out


def export_subnet(
    answer: Answer,
    out: str | os.PathLike[str],
    evaluations: int | None,
    dev: Device,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """``nas specialize`` of the winner's supernet into ``out`` for the answer's device and
    budgets (the same search, then verification, extraction, compression and measurement), with
    the answer beside its report as ``retrieval.json``; returns the report."""
    from latency_models.table import write_atomic

    from .specialize import DEFAULT_EVALUATIONS, specialize

    winner, budgets = answer.candidates[0], answer.budgets
    if budgets.max_latency_ms is None or budgets.max_size_kb is None:
        raise InputError(
            "--export: expected a latency and a size budget to specialize the supernet winner "
            f"{winner.study} (as nas specialize does), got {budgets.as_dict() or 'no budgets'}."
        )
    report = specialize(
        winner.study,
        out,
        max_latency_ms=budgets.max_latency_ms,
        max_size_kb=budgets.max_size_kb,
        max_memory_kb=budgets.max_memory_kb,
        evaluations=DEFAULT_EVALUATIONS if evaluations is None else evaluations,
        say=say,
        **_device_flags(dev),
    )
    write_atomic(Path(out) / "retrieval.json", json.dumps(answer.as_dict(), indent=1, default=str) + "\n")
    return report
