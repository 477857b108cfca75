"""Search strategies: every strategy is an Optuna sampler, driven by the same ask/tell loop.

A strategy is built by name with ``make_strategy(name, context)``. Because it is a sampler, its
whole state is the study (trials, values, user attributes), so a resumed study resumes the
strategy too. Constraints reach every strategy as data: each trial carries Optuna's
``Trial.set_constraint`` (Optuna 5; > 0 means violated) before telling it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from search_spaces.plugins import load_registered

from ._base import SearchContext, constraints_of

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["STRATEGIES", "SearchContext", "constraints_of", "make_strategy"]

# name -> "module:factory"; a factory takes a SearchContext and returns an optuna sampler.
STRATEGIES: dict[str, str] = {
    "random": "nas.strategies.optuna_samplers:random_sampler",
    "tpe": "nas.strategies.optuna_samplers:tpe_sampler",
    "nsga2": "nas.strategies.optuna_samplers:nsga2_sampler",
    "default": "nas.strategies.default:default_sampler",
    "kt-bayesian": "nas.strategies.keras_tuner:bayesian_sampler",
    "kt-hyperband": "nas.strategies.keras_tuner:hyperband_sampler",
    "kt-random": "nas.strategies.keras_tuner:random_sampler",
}


def make_strategy(name: str, context: SearchContext) -> optuna.samplers.BaseSampler:
    factory: Callable[[SearchContext], Any] = load_registered(STRATEGIES, name, "strategy", "strategies")
    return factory(context)
