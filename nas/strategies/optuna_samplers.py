"""Optuna's own samplers as strategies. The loop sets each trial's constraints with
``Trial.set_constraint`` before telling it, and Optuna 5's samplers read them from the trial."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._base import SearchContext

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["nsga2_sampler", "random_sampler", "tpe_sampler"]


def random_sampler(context: SearchContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=context.seed)


def tpe_sampler(context: SearchContext) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=context.seed, multivariate=True, n_startup_trials=10)


def nsga2_sampler(context: SearchContext) -> optuna.samplers.BaseSampler:
    import optuna

    population = int(context.options.get("population_size", 20))
    return optuna.samplers.NSGAIISampler(seed=context.seed, population_size=population)
