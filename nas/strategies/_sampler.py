"""The part of an Optuna sampler every strategy over a space's decisions shares."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna

from ._base import SearchContext

__all__ = ["ChoiceSampler"]


class ChoiceSampler(optuna.samplers.BaseSampler):
    """A sampler that proposes a whole architecture at once: its relative search space is every
    decision of ``context.space`` (subclasses implement ``sample_relative``); a parameter it
    leaves out, or any when it has nothing to propose, is drawn uniformly from its choices."""

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self._choices = context.space.choices()
        self._rng = np.random.default_rng(context.seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, Any]:
        return {c.name: optuna.distributions.CategoricalDistribution(list(c.values)) for c in self._choices}

    def sample_independent(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        # Reached only for parameters outside ``choices()`` or when nothing is left to propose.
        choices = getattr(param_distribution, "choices", None)
        if choices:
            return choices[int(self._rng.integers(len(choices)))]
        return param_distribution.to_external_repr(param_distribution.low)
