"""The search loop: Optuna ask/tell on the driver, screening before any training.

Each asked candidate is priced (latency, size, memory) and checked against the budgets. An
infeasible one is recorded with its predictions and never trained; a network already trained
(the same canonical architecture) reuses its result; the rest go to an ``Executor`` and are told
to the study as their results arrive. Trial records live in the study's user attributes, so
the SQLite study alone is the run's history and a killed run resumes from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from search_spaces import FatalError, InputError, SearchSpace, TaskShape

from .config import Constraints, FidelityConfig
from .executors import Executor, JobResult, TrainJob
from .strategies._base import Prediction
from .trial_record import State, TrialKey, TrialRecord, requeue_interrupted, screened_attrs

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from latency_models.predictor import LatencyPredictor
    from latency_models.size import SizeModel
    from latency_models.table import LatencyTable

__all__ = ["Screen", "SearchLoop", "SearchStats", "smallest_achievable"]


@dataclass(frozen=True)
class Screen:
    """Prices architectures with the latency, size and memory models; checks the budgets."""

    space: SearchSpace
    task: TaskShape
    latency: LatencyPredictor
    size: SizeModel
    constraints: Constraints
    memory_table: LatencyTable | None = None
    exact_size: Callable[[Hashable], int] | None = None
    verify_margin: float = 0.15
    # Screen latency against budget * (1 - latency_guard): the latency model's error near the
    # budget plus timing noise, so a candidate predicted just under the budget (which its file
    # may well miss) is not trained. 0 where latency cannot be measured (another device).
    latency_guard: float = 0.0

    def __post_init__(self) -> None:
        if self.constraints.max_memory_kb is not None and self.memory_table is None:
            raise InputError(
                "constraints.max_memory_kb: needs a latency table with memory_bytes (profile with runtime tflm)."
            )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.constraints.as_dict())

    def __call__(self, archs: Sequence[Hashable]) -> list[Prediction]:
        latencies = self.latency.predict(list(archs))
        out = []
        for arch, latency in zip(archs, latencies, strict=True):
            size = self.size.predict(self.space.size_terms(arch, self.task))
            memory = None
            if self.memory_table is not None:
                memory = float(self.memory_table.memory(self.space.blocks(arch, self.task)))
            out.append(
                Prediction(
                    float(latency), float(size), memory, self._violations(float(latency), size, memory)
                )
            )
        return out

    def verify(self, arch: Hashable, pred: Prediction) -> tuple[Prediction, int | None]:
        """Replace a size prediction near the budget by the exact size of the converted file
        (about a second; size does not depend on the weights), so no candidate that breaks the
        size budget is ever trained because of a prediction error. Returns the exact size too."""
        budget = self.constraints.max_size_kb
        if self.exact_size is None or budget is None:
            return pred, None
        if abs(pred.size_bytes / 1024.0 - budget) > self.verify_margin * budget:
            return pred, None
        exact = int(self.exact_size(arch))
        violations = self._violations(pred.latency_ms, float(exact), pred.memory_bytes)
        return Prediction(pred.latency_ms, float(exact), pred.memory_bytes, violations), exact

    def _violations(self, latency: float, size: float, memory: float | None) -> tuple[float, ...]:
        c = self.constraints
        v: list[float] = []
        if c.max_latency_ms is not None:
            v.append(latency - c.max_latency_ms * (1.0 - self.latency_guard))
        if c.max_size_kb is not None:
            v.append(size / 1024.0 - c.max_size_kb)
        if c.max_memory_kb is not None:
            v.append((memory or 0.0) / 1024.0 - c.max_memory_kb)
        return tuple(v)


# Seconds that pricing one random sample of the space (for budgets, the guard, calibration
# targets) may take: a space slow to price gives fewer architectures (``SearchSpace.affordable``).
SAMPLING_SECONDS = 6.0


def smallest_achievable(
    space: SearchSpace, screen: Screen, samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """The smallest predicted latency/size/memory found in the space: the cheapest choice of every
    decision plus a random sample. Used to reject a budget nothing can meet before training."""
    import random

    rng = random.Random(seed)
    cheapest = space.cheapest()
    archs: list[Hashable] = [] if cheapest is None else [cheapest]
    archs += [space.random(rng) for _ in range(space.affordable(samples, SAMPLING_SECONDS))]
    preds = screen(archs)
    best = {
        "max_latency_ms": min(p.latency_ms for p in preds),
        "max_size_kb": min(p.size_bytes for p in preds) / 1024.0,
    }
    if screen.memory_table is not None:
        best["max_memory_kb"] = min(p.memory_bytes or 0.0 for p in preds) / 1024.0
    return best


def budget_share(space: SearchSpace, screen: Screen, samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """How much of the space each budget screens out, on a uniform random sample (by prediction):
    the evidence that the budgets bind even when a strategy never proposes an infeasible one."""
    import random

    rng = random.Random(seed + 7)
    samples = space.affordable(samples, SAMPLING_SECONDS)
    preds = screen([space.random(rng) for _ in range(samples)])
    names = screen.names
    return {
        "sampled": samples,
        "infeasible_share": sum(not p.feasible for p in preds) / samples,
        "by_budget": {n: sum(p.violations[i] > 0 for p in preds) / samples for i, n in enumerate(names)},
    }


@dataclass
class SearchStats:
    """What the search has done so far. ``trained`` counts trainings (at any fidelity, failed
    ones included); ``by_epochs`` counts them per number of epochs; ``epochs_spent`` is their sum,
    never more than ``budget_epochs`` (``trainings * training.epochs``)."""

    asked: int = 0
    trained: int = 0
    infeasible: int = 0
    failed: int = 0
    duplicates: int = 0
    best_accuracy: float | None = None  # at full fidelity (what the run ships)
    rungs: tuple[int, ...] = ()  # the epochs a training may get (one value: single fidelity)
    epochs_spent: int = 0
    budget_epochs: int = 0
    promoted: int = 0
    by_epochs: dict[int, int] = field(default_factory=dict)

    def count(self, epochs: int) -> None:
        self.trained += 1
        self.epochs_spent += epochs
        self.by_epochs[epochs] = self.by_epochs.get(epochs, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["by_epochs"] = {str(k): v for k, v in sorted(self.by_epochs.items())}
        out["rungs"] = list(self.rungs)
        return out


@dataclass
class SearchLoop:
    """Drive ``study`` with ``executor`` until the budget of ``trainings`` trainings of ``epochs``
    epochs is spent.

    With ``fidelity`` (asynchronous successive halving) a candidate is trained first for the
    lowest rung's epochs; a result in the top 1/eta of those at its rung so far is retrained at
    the next rung (the trial stays open meanwhile), the others are told at the epochs they got.
    Every training is recorded on its trial (``fidelity_history``), the trial's value is its
    accuracy at ``fidelity_epochs``, and the budget counts epochs, so it stays
    ``trainings * epochs`` however it is spent.
    """

    study: optuna.Study
    space: SearchSpace
    screen: Screen
    executor: Executor
    trainings: int
    seed: int = 0
    epochs: int = 3
    fidelity: FidelityConfig | None = None
    max_asks: int | None = None
    max_failures_in_row: int = 5
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    stats: SearchStats = field(default_factory=SearchStats)
    # canonical arch -> (accuracy, latency, epochs) of the trained network
    _trained: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    # trial number -> (trial, epochs of the training in flight)
    _pending: dict[int, tuple[optuna.trial.Trial, int]] = field(default_factory=dict)
    # promotions waiting for a free worker: (trial, epochs)
    _promotions: list[tuple[optuna.trial.Trial, int]] = field(default_factory=list)
    # canonical arch -> number of the trial training it; duplicates asked meanwhile wait here
    _in_flight: dict[str, int] = field(default_factory=dict)
    _parked: dict[int, list[optuna.trial.Trial]] = field(default_factory=dict)
    # epochs -> validation accuracies of every training finished at that rung
    _rung_results: dict[int, list[float]] = field(default_factory=dict)
    _failures_in_row: int = 0

    def __post_init__(self) -> None:
        self.rungs: tuple[int, ...] = self.fidelity.rungs(self.epochs) if self.fidelity else (self.epochs,)
        self.stats.budget_epochs = self.trainings * self.epochs
        self.stats.rungs = self.rungs

    # -- resume --------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Count what the study already holds; re-queue what a killed driver left running."""
        import optuna

        for t in self.study.get_trials(deepcopy=False):
            record = TrialRecord.from_attrs(t.user_attrs)
            state = record.state
            history = record.trainings(t.values[0] if t.values else None, self.epochs)
            for epochs, accuracy in history:
                self.stats.count(epochs)
                if accuracy is not None:
                    self._rung_results.setdefault(epochs, []).append(accuracy)
            if t.state == optuna.trial.TrialState.RUNNING:
                if history and history[-1][1] is not None:
                    # Promoted, its longer training lost with the driver: train it again, keep
                    # the trainings it already got.
                    self._resume_promotion(t, history[-1])
                    self.stats.asked += 1
                    continue
                # A driver killed mid-training: the result never arrived. Close the trial and
                # ask for the same architecture again.
                requeue_interrupted(self.study, t)
                continue
            if state == State.COMPLETE and t.values is not None:
                epochs = int(record.fidelity_epochs or self.epochs)
                self._trained[t.user_attrs[TrialKey.CANONICAL]] = (t.values[0], t.values[1], epochs)
                self._note_best(t.values[0], epochs)
            elif state == State.FAILED and history:
                self.stats.failed += 1
            elif state == State.INFEASIBLE:
                self.stats.infeasible += 1
            elif state == State.DUPLICATE:
                self.stats.duplicates += 1
            self.stats.asked += 1

    def _resume_promotion(self, t: optuna.trial.FrozenTrial, last: tuple[int, float | None]) -> None:
        import optuna

        trial = optuna.trial.Trial(self.study, t._trial_id)
        self._in_flight[t.user_attrs[TrialKey.CANONICAL]] = t.number
        higher = [r for r in self.rungs if r > last[0]]
        if higher:
            self._promotions.append((trial, higher[0]))
        else:  # the run's fidelity changed on resume: what it got is already full fidelity
            self._finish(trial, float(last[1] or 0.0), last[0])

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchStats:
        self._restore()
        max_asks = self.max_asks or max(200, self.trainings * 50)
        asks_this_run = 0
        try:
            while True:
                while len(self._pending) < self.executor.capacity:
                    if self._promotions:
                        self._promote(*self._promotions.pop(0))
                    elif asks_this_run < max_asks and self._fits(self.rungs[0]):
                        asks_this_run += 1
                        self._ask_one()
                    else:
                        break
                if not self._pending:
                    break
                for result in self.executor.poll(timeout=None):
                    self._tell_result(result)
        finally:
            self.executor.shutdown()
        if self.stats.trained == 0 and asks_this_run >= max_asks:
            raise FatalError(
                f"no feasible candidate found in {asks_this_run} proposals; the budgets may be too tight for this space"
            )
        return self.stats

    def _fits(self, epochs: int) -> bool:
        """Whether a training of ``epochs`` more still fits the budget (trainings in flight count)."""
        in_flight = sum(e for _, e in self._pending.values())
        return self.stats.epochs_spent + in_flight + epochs <= self.stats.budget_epochs

    def _submit(self, trial: optuna.trial.Trial, epochs: int) -> None:
        trial.set_user_attr(TrialKey.FIDELITY_EPOCHS, epochs)
        self._pending[trial.number] = (trial, epochs)
        self.executor.submit(TrainJob(trial.number, trial.user_attrs[TrialKey.ARCH], self.seed, epochs))

    def _promote(self, trial: optuna.trial.Trial, epochs: int) -> None:
        history = trial.user_attrs[TrialKey.FIDELITY_HISTORY]
        if not self._fits(epochs):
            # The budget ends before this longer training: the trial keeps what it got.
            trial.set_user_attr(
                TrialKey.PROMOTION_SKIPPED, f"{epochs} epochs do not fit the remaining budget"
            )
            self._finish(trial, float(history[-1]["accuracy"]), int(history[-1]["epochs"]))
            return
        self.stats.promoted += 1
        self._submit(trial, epochs)
        self._emit("promoted", {"arch": trial.user_attrs[TrialKey.ARCH], "epochs": epochs})

    def _promotable(self, accuracy: float, epochs: int) -> bool:
        """In the top 1/eta of the trainings finished at this rung so far (the best one while
        fewer than eta have finished), as Optuna's SuccessiveHalvingPruner decides."""
        assert self.fidelity is not None
        ranked = sorted(self._rung_results.get(epochs, []), reverse=True)
        k = max(1, len(ranked) // self.fidelity.eta)
        return accuracy >= ranked[k - 1]

    def _ask_one(self) -> None:
        import optuna

        trial = self.study.ask()
        self.stats.asked += 1
        try:
            arch = self.space.sample(trial)
        except InputError as e:
            trial.set_user_attr(TrialKey.STATE, State.FAILED)
            trial.set_user_attr(TrialKey.ERROR, str(e))
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.stats.failed += 1
            return
        canonical = str(self.space.canonical(arch))
        predicted = self.screen([arch])[0]
        pred, exact_size = self.screen.verify(arch, predicted) if predicted.feasible else (predicted, None)
        attrs = screened_attrs(
            arch,
            canonical,
            pred.latency_ms,
            predicted.size_bytes,
            exact_size,
            pred.memory_bytes,
            dict(zip(self.screen.names, pred.violations, strict=True)),
        )
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for name, value in zip(self.screen.names, pred.violations, strict=True):
            trial.set_constraint(name, value)  # Optuna's convention: > 0 means violated
        if not pred.feasible:
            trial.set_user_attr(TrialKey.STATE, State.INFEASIBLE)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            self.stats.infeasible += 1
            self._emit("infeasible", attrs)
            return
        if canonical in self._trained:
            accuracy, latency, epochs = self._trained[canonical]
            trial.set_user_attr(TrialKey.STATE, State.DUPLICATE)
            trial.set_user_attr(TrialKey.FIDELITY_EPOCHS, epochs)
            self.study.tell(trial, [accuracy, latency])
            self.stats.duplicates += 1
            self._emit("duplicate", attrs)
            return
        if canonical in self._in_flight:
            # The same network is training right now (another worker): wait for its result
            # instead of training it twice.
            original = self._in_flight[canonical]
            trial.set_user_attr(TrialKey.STATE, State.DUPLICATE)
            trial.set_user_attr(TrialKey.DUPLICATE_OF, original)
            self._parked.setdefault(original, []).append(trial)
            self.stats.duplicates += 1
            self._emit("duplicate", attrs)
            return
        self._in_flight[canonical] = trial.number
        self._submit(trial, self.rungs[0])
        self._emit("submitted", attrs)

    def _tell_result(self, result: JobResult) -> None:
        import optuna

        trial, epochs = self._pending.pop(result.trial_number)
        for key, value in result.as_attrs().items():
            trial.set_user_attr(key, value)
        ok = result.ok and result.accuracy is not None and math.isfinite(result.accuracy)
        history = [
            *trial.user_attrs.get(TrialKey.FIDELITY_HISTORY, []),
            {"epochs": epochs, "accuracy": result.accuracy if ok else None},
        ]
        trial.set_user_attr(TrialKey.FIDELITY_HISTORY, history)
        self.stats.count(epochs)
        if not ok:
            trial.set_user_attr(TrialKey.STATE, State.FAILED)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._in_flight.pop(trial.user_attrs[TrialKey.CANONICAL], None)
            for twin in self._parked.pop(trial.number, []):
                twin.set_user_attr(TrialKey.ERROR, f"duplicate of trial {trial.number}, which failed")
                self.study.tell(twin, state=optuna.trial.TrialState.FAIL)
            self.stats.failed += 1
            self._failures_in_row += 1
            self._emit("failed", {"arch": result.arch, "error": result.error, "epochs": epochs})
            if self._failures_in_row >= self.max_failures_in_row:
                raise FatalError(
                    f"{self._failures_in_row} trainings failed in a row (last: {result.error}); "
                    "see report.json / the study for the reasons"
                )
            return
        self._failures_in_row = 0
        assert result.accuracy is not None  # ok says so
        accuracy = float(result.accuracy)
        self._rung_results.setdefault(epochs, []).append(accuracy)
        higher = [r for r in self.rungs if r > epochs]
        if higher and self._promotable(accuracy, epochs):
            self._promotions.append((trial, higher[0]))
            self._emit("trained", {"arch": result.arch, "accuracy": accuracy, "epochs": epochs})
            return
        self._finish(trial, accuracy, epochs)

    def _finish(self, trial: optuna.trial.Trial, accuracy: float, epochs: int) -> None:
        """Tell the trial (and twins waiting for it) its accuracy at the epochs it got."""
        latency = trial.user_attrs[TrialKey.PREDICTED_LATENCY_MS]
        trial.set_user_attr(TrialKey.FIDELITY_EPOCHS, epochs)
        trial.set_user_attr(TrialKey.STATE, State.COMPLETE)
        self.study.tell(trial, [accuracy, latency])
        canonical = trial.user_attrs[TrialKey.CANONICAL]
        self._in_flight.pop(canonical, None)
        self._trained[canonical] = (accuracy, latency, epochs)
        for twin in self._parked.pop(trial.number, []):
            twin.set_user_attr(TrialKey.FIDELITY_EPOCHS, epochs)
            self.study.tell(twin, [accuracy, latency])
        self._note_best(accuracy, epochs)
        self._emit(
            "complete", {"arch": trial.user_attrs[TrialKey.ARCH], "accuracy": accuracy, "epochs": epochs}
        )

    def _note_best(self, accuracy: float, epochs: int) -> None:
        if epochs >= self.epochs and (
            self.stats.best_accuracy is None or accuracy > self.stats.best_accuracy
        ):
            self.stats.best_accuracy = accuracy

    def _emit(self, kind: str, info: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, {**info, "stats": self.stats})
