"""Budgets that travel: resolve relative budgets (a quantile of the space's predicted values, or
a multiple of the smallest achievable) into absolute ones on the run's device.

``resolve`` is called once the device's latency model exists (a host profile, a table or a
predictor alike). The resolved milliseconds and kilobytes are what the search screens with, what
verification measures against, what the study and ``report.json`` record, and what a resumed run
reuses (a profile that drifted must not move the goalposts half-way through a study).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from search_spaces import InputError, SearchSpace

from .config import BUDGETS, Constraints, relative_key

__all__ = ["RESOLUTION_SAMPLES", "ResolvedBudgets", "resolve"]

# Random architectures whose predicted values define the quantiles. The sample (seed 0) does
# not depend on the search's seed, so runs with different seeds on one device share a budget.
RESOLUTION_SAMPLES = 4000
_UNIT_SCALE = {"max_latency_ms": 1.0, "max_size_kb": 1 / 1024.0, "max_memory_kb": 1 / 1024.0}


@dataclass(frozen=True)
class ResolvedBudgets:
    """The absolute budgets a run uses, and how each was obtained."""

    constraints: Constraints  # absolute budgets only
    requested: Mapping[str, float]  # as the config wrote them
    how: Mapping[str, str]  # budget -> one line on where its value came from
    smallest: Mapping[str, float]  # smallest achievable value of each quantity (predicted)
    feasible_share: float  # of the random sample, by prediction, under every budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "requested": dict(self.requested),
            "resolved": self.constraints.as_dict(),
            "how": dict(self.how),
            "smallest_achievable": dict(self.smallest),
            "feasible_share": self.feasible_share,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ResolvedBudgets:
        """What ``as_dict`` wrote (a study's ``budgets`` attribute)."""
        try:
            constraints = Constraints(**{k: float(v) for k, v in doc["resolved"].items()})
            return cls(
                constraints,
                dict(doc.get("requested", {})),
                dict(doc.get("how", {})),
                dict(doc.get("smallest_achievable", {})),
                float(doc.get("feasible_share", float("nan"))),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"study budgets: malformed record ({e.__class__.__name__}: {e}).") from None


def _values(preds: list[Any], name: str) -> np.ndarray:
    if name == "max_latency_ms":
        return np.array([p.latency_ms for p in preds], dtype=float)
    if name == "max_size_kb":
        return np.array([p.size_bytes for p in preds], dtype=float) / 1024.0
    return np.array([p.memory_bytes or 0.0 for p in preds], dtype=float) / 1024.0


def resolve(
    constraints: Constraints,
    space: SearchSpace,
    screen: Any,
    samples: int = RESOLUTION_SAMPLES,
    seed: int = 0,
) -> ResolvedBudgets:
    """Absolute budgets for ``constraints`` on the device ``screen`` prices with.

    ``screen`` is a ``nas.search.Screen`` (its own budgets are ignored). Raises ``InputError``
    (one line, naming the smallest achievable value) when a budget, absolute or resolved, cannot
    be met by any architecture found, or when the budgets together leave nothing feasible.
    """
    rng = random.Random(seed)
    from .search import SAMPLING_SECONDS

    samples = space.affordable(samples, SAMPLING_SECONDS)
    archs: list[Hashable] = [space.random(rng) for _ in range(samples)]
    cheapest = space.cheapest()
    unconstrained = dataclasses.replace(screen, constraints=Constraints())
    preds = unconstrained(archs)
    extra = unconstrained([cheapest]) if cheapest is not None else []
    relative = constraints.relative()
    needs_memory = constraints.max_memory_kb is not None or "max_memory_kb" in relative
    if needs_memory and screen.memory_table is None:
        key = (
            "max_memory_kb"
            if constraints.max_memory_kb is not None
            else relative_key("max_memory_kb", relative["max_memory_kb"][0])
        )
        raise InputError(
            f"constraints.{key}: needs a latency table with memory_bytes (profile with runtime tflm)."
        )
    names = [n for n in BUDGETS if n != "max_memory_kb" or screen.memory_table is not None]
    values = {n: _values(preds, n) for n in names}
    smallest = {n: float(min(values[n].min(), *(_values(extra, n) if extra else []))) for n in names}

    resolved: dict[str, float] = dict(constraints.as_dict())
    how: dict[str, str] = {n: "absolute, as configured" for n in resolved}
    unit = {n: BUDGETS[n] for n in BUDGETS}
    for name, (form, value) in relative.items():
        key = relative_key(name, form)
        if form == "quantile":
            budget = float(np.quantile(values[name], value))
            how[name] = (
                f"{key} {value:g}: the {value:g} quantile of {samples} random architectures' "
                f"predicted values on this device"
            )
        else:
            budget = smallest[name] * value
            how[name] = (
                f"{key} {value:g}: {value:g} x the smallest achievable ({smallest[name]:.4g} {unit[name]})"
            )
        resolved[name] = budget

    for name, budget in resolved.items():
        if smallest[name] > budget:
            form = relative.get(name)
            key = name if form is None else relative_key(name, form[0])
            raise InputError(
                f"constraints.{key}: {budget:.4g} {unit[name]} cannot be met by any architecture of space "
                f"{space.name}; the smallest achievable is {smallest[name]:.4g} {unit[name]}."
            )
    ok = np.ones(len(preds), dtype=bool)
    for name, budget in resolved.items():
        ok &= values[name] <= budget
    if resolved and not ok.any():
        cheap_ok = bool(extra) and all(_values(extra, n)[0] <= b for n, b in resolved.items())
        if not cheap_ok:
            parts = ", ".join(f"{n} {resolved[n]:.4g} (smallest {smallest[n]:.4g})" for n in resolved)
            raise InputError(
                f"constraints: no architecture of {samples} sampled from space {space.name} meets every "
                f"budget at once: {parts}."
            )
    return ResolvedBudgets(
        constraints=Constraints(**resolved),
        requested=constraints.requested(),
        how=how,
        smallest=smallest,
        feasible_share=float(ok.mean()) if resolved else 1.0,
    )
