"""What a strategy is told about the search before it proposes anything."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from search_spaces import SearchSpace

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["SearchContext", "Prediction", "constraints_of"]


@dataclass(frozen=True)
class Prediction:
    """What is known of an architecture before training: predicted costs and budget violations
    (one value per constraint, > 0 means violated, Optuna's convention)."""

    latency_ms: float
    size_bytes: float
    memory_bytes: float | None = None
    violations: tuple[float, ...] = ()

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations)


@dataclass(frozen=True)
class SearchContext:
    """The space, the seed, the budgets and a cheap screen (the latency/size/memory models).

    ``predict`` prices a batch of architectures without training them; strategies may call it
    freely (it prices thousands per second) to propose only candidates likely to be feasible.
    ``objectives`` names the study's objectives in order, e.g. ("accuracy", "latency_ms").
    """

    space: SearchSpace
    seed: int = 0
    predict: Callable[[Sequence[Hashable]], Sequence[Prediction]] | None = None
    objectives: tuple[str, ...] = ("accuracy", "latency_ms")
    directions: tuple[str, ...] = ("maximize", "minimize")
    max_latency_ms: float | None = None
    n_trials: int = 100
    options: dict[str, object] = field(default_factory=dict)


def constraints_of(trial: optuna.trial.FrozenTrial) -> tuple[float, ...]:
    """The violations the loop set on the trial with ``Trial.set_constraint`` (one per budget,
    > 0 means violated). Optuna 5's samplers read them from the trial by themselves."""
    return tuple(trial.constraints.values())
