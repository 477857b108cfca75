"""The schema of what a run stores in its Optuna study: the names of a trial's user attributes
and of the study's own, the states a trial ends in, and the format version. Every module that
reads or writes them takes the names from here; ``TrialRecord`` is one trial's record read back.

The names are plain strings on purpose: they are the keys in ``study.db`` (read with SQL by
``nas.studies``) and in ``report.json``, so changing one is a format change (bump
``FORMAT_VERSION``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "INTERRUPTED",
    "REPORT_FORMAT",
    "STATES",
    "State",
    "StudyKey",
    "TrialKey",
    "TrialRecord",
    "requeue_interrupted",
    "screened_attrs",
]

# The version of what a study and its report.json hold (the study attr ``format_version``, the
# report's ``version``); retrieval refuses any other.
FORMAT_VERSION = 1
REPORT_FORMAT = "edge-nas-report"


class StudyKey:
    """The study's own user attributes, written by ``nas run``."""

    CONFIG = "config"  # the run config, as a dict
    FORMAT_VERSION = "format_version"
    BUDGETS = "budgets"  # the budgets as resolved on the device (and the latency guard)
    VERIFIED = "verified"  # the verification records of the exported files


class TrialKey:
    """A trial's user attributes, written by the search loop (the worker's ``JobResult`` and
    retry fields are written under their own field names)."""

    ARCH = "arch"  # str(arch), parsed back with ``space.parse``
    CANONICAL = "canonical"  # str(space.canonical(arch)): one per distinct network
    STATE = "state"  # one of ``STATES``
    ERROR = "error"
    PREDICTED_LATENCY_MS = "predicted_latency_ms"
    PREDICTED_SIZE_BYTES = "predicted_size_bytes"
    EXACT_SIZE_BYTES = "exact_size_bytes"  # the converted file's size, near the size budget
    PREDICTED_MEMORY_BYTES = "predicted_memory_bytes"
    VIOLATIONS = "violations"  # budget name -> violation (> 0 means broken)
    FIDELITY_EPOCHS = "fidelity_epochs"  # the epochs the trial's value was trained for
    FIDELITY_HISTORY = "fidelity_history"  # [{"epochs", "accuracy"}] of every training
    PROMOTION_SKIPPED = "promotion_skipped"
    DUPLICATE_OF = "duplicate_of"  # the trial whose training a duplicate waited for


class State:
    """The values of ``TrialKey.STATE``."""

    COMPLETE = "complete"  # trained (at ``fidelity_epochs``) and feasible at search time
    INFEASIBLE = "infeasible"  # screened out by the budgets, never trained
    FAILED = "failed"
    DUPLICATE = "duplicate"  # the same canonical network as a trained trial: its result reused
    RUNNING = "running"  # reported for a trial with no state yet (never stored)


STATES = (State.COMPLETE, State.INFEASIBLE, State.FAILED, State.DUPLICATE)

# The error of a trial a stopped driver left running; its architecture is asked again.
INTERRUPTED = "interrupted; re-queued on resume"


@dataclass(frozen=True)
class TrialRecord:
    """One trial's record as stored (a key the trial lacks takes the default)."""

    arch: str | None = None
    canonical: str | None = None
    state: str | None = None
    error: str | None = None
    predicted_latency_ms: float | None = None
    predicted_size_bytes: float | None = None
    exact_size_bytes: int | None = None
    predicted_memory_bytes: float | None = None
    violations: Mapping[str, float] = field(default_factory=dict)
    fidelity_epochs: int | None = None
    fidelity_history: Sequence[Mapping[str, Any]] | None = None
    promotion_skipped: str | None = None
    duplicate_of: int | None = None
    # where and how it trained (``JobResult`` and the distributed executors' retry fields)
    host: str | None = None
    pid: int | None = None
    queued_s: float | None = None
    run_s: float | None = None
    attempts: int = 1
    retried_after: str | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """The record in a trial's user attributes (unknown keys are ignored)."""
        return cls(**{f.name: attrs[f.name] for f in fields(cls) if f.name in attrs})

    @property
    def size_bytes(self) -> float | None:
        """The exact size where it was measured, else the predicted one."""
        return self.exact_size_bytes or self.predicted_size_bytes

    def trainings(self, accuracy: float | None, default_epochs: int) -> list[tuple[int, float | None]]:
        """(epochs, accuracy) of every training the trial got. A study written before
        ``fidelity_history`` existed: its one training, at ``fidelity_epochs`` (else
        ``default_epochs``) with the trial's value ``accuracy``."""
        if self.fidelity_history is not None:
            return [(int(h["epochs"]), h["accuracy"]) for h in self.fidelity_history]
        if self.state in (State.COMPLETE, State.FAILED) and "interrupted" not in str(self.error or ""):
            return [(int(self.fidelity_epochs or default_epochs), accuracy)]
        return []


def screened_attrs(
    arch: Any,
    canonical: str,
    latency_ms: float,
    predicted_size_bytes: float,
    exact_size_bytes: int | None,
    memory_bytes: float | None,
    violations: Mapping[str, float],
) -> dict[str, Any]:
    """What the search stores on a trial when it prices the asked architecture."""
    return {
        TrialKey.ARCH: str(arch),
        TrialKey.CANONICAL: canonical,
        TrialKey.PREDICTED_LATENCY_MS: latency_ms,
        TrialKey.PREDICTED_SIZE_BYTES: predicted_size_bytes,
        TrialKey.EXACT_SIZE_BYTES: exact_size_bytes,
        TrialKey.PREDICTED_MEMORY_BYTES: memory_bytes,
        TrialKey.VIOLATIONS: dict(violations),
    }


def requeue_interrupted(study: Any, trial: Any) -> None:
    """Close ``trial`` (left RUNNING by a stopped driver) as failed with the reason
    ``INTERRUPTED`` and ask for its architecture again.

    Optuna has no public call to close a trial of another process (``study.tell`` needs the
    trial to be this process's), so this is the one place that uses its storage directly."""
    import optuna

    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, TrialKey.STATE, State.FAILED)
    storage.set_trial_user_attr(trial._trial_id, TrialKey.ERROR, INTERRUPTED)
    storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    if trial.params:
        study.enqueue_trial(trial.params, skip_if_exists=False)
