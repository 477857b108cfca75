"""keras-tuner's oracles (Bayesian optimisation, Hyperband, random search) as Optuna samplers.

Only keras-tuner's ``HyperParameters`` and ``Oracle`` API is used, never its ``Tuner`` training
loop. Every finished trial of the study is replayed into the oracle: trained ones with their
accuracy, infeasible and failed ones with the worst accuracy seen (keras-tuner itself stops after
a few "consecutive oversized models"; here they are data and the search goes on). A resumed
study is replayed into a fresh oracle, so the strategy resumes with the study.

The Bayesian oracle is keras-tuner's GP (Matern 5/2, upper confidence bound) with two costs cut
so it can run next to the other strategies: the GP's kernel is refitted with
``GP_RESTARTS`` optimiser restarts instead of keras-tuner's 20, and the acquisition is minimised
over a random pool of ``ACQ_POOL`` points scored in one batch instead of by 50 L-BFGS-B runs
with numerical gradients (the space is categorical: keras-tuner rounds the optimum to the
nearest choices anyway).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna

from ._base import SearchContext
from ._sampler import ChoiceSampler

__all__ = ["KerasTunerSampler", "bayesian_sampler", "hyperband_sampler", "random_sampler"]

ORACLES = ("bayesian", "hyperband", "random")
GP_RESTARTS = 2
ACQ_POOL = 2000
_FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


def bayesian_sampler(context: SearchContext) -> KerasTunerSampler:
    return KerasTunerSampler(context, "bayesian")


def hyperband_sampler(context: SearchContext) -> KerasTunerSampler:
    return KerasTunerSampler(context, "hyperband")


def random_sampler(context: SearchContext) -> KerasTunerSampler:
    return KerasTunerSampler(context, "random")


class KerasTunerSampler(ChoiceSampler):
    """Asks a keras-tuner oracle for each trial's whole architecture; tells it every result."""

    def __init__(self, context: SearchContext, oracle: str) -> None:
        if oracle not in ORACLES:
            from search_spaces import InputError

            raise InputError(f"keras-tuner oracle: expected one of {list(ORACLES)}, got {oracle!r}.")
        super().__init__(context)
        self.kind = oracle
        self._oracle: Any = None
        self._kt_id: dict[int, str] = {}  # optuna trial number -> oracle trial id
        self._fed: set[int] = set()

    # -- the oracle ----------------------------------------------------------------------------
    def _make_oracle(self) -> Any:
        import keras_tuner as kt

        hp = kt.HyperParameters()
        self.context.space.sample_hp(hp)  # registers one Choice per decision of the space
        base = {
            "bayesian": kt.oracles.BayesianOptimizationOracle,
            "hyperband": kt.oracles.HyperbandOracle,
            "random": kt.oracles.RandomSearchOracle,
        }[self.kind]
        # The study is the record of the search: the oracle keeps nothing on disk.
        methods: dict[str, Any] = {"save": _no_save, "_save_trial": _no_save_trial}
        if self.kind == "bayesian":
            methods.update(_make_gpr=_make_gpr, populate_space=_populate_space_pooled)
        quiet = type(f"InMemory{base.__name__}", (base,), methods)
        kwargs: dict[str, Any] = {
            "objective": kt.Objective("score", "max"),
            "hyperparameters": hp,
            "allow_new_entries": False,
            "seed": self.context.seed + 1,  # keras-tuner treats seed 0 as "no seed"
            # Failures are counted by the search loop (max_failures_in_row), not here.
            "max_consecutive_failed_trials": 10**9,
        }
        if self.kind == "hyperband":
            kwargs["max_epochs"] = int(self.context.options.get("max_epochs", 27))
            kwargs["factor"] = int(self.context.options.get("factor", 3))
            kwargs["hyperband_iterations"] = 10**6
        else:
            # keras-tuner's default (10) would stop the oracle; the loop counts the trainings.
            kwargs["max_trials"] = 10**9
        if self.kind == "bayesian":
            kwargs["num_initial_points"] = int(self.context.options.get("num_initial_points", 10))
        oracle = quiet(**kwargs)
        oracle.verbose = 0
        return oracle

    def _sync(self, study: optuna.Study) -> None:
        """Tell the oracle every trial that finished since the last ask (all of them on resume)."""
        import keras_tuner as kt

        if self._oracle is None:
            self._oracle = self._make_oracle()
        trials = study.get_trials(deepcopy=False, states=_FINISHED)
        accuracies = [
            t.values[0]
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and t.values and math.isfinite(t.values[0])
        ]
        worst = float(min(accuracies)) if accuracies else 0.0
        for t in trials:
            if t.number in self._fed:
                continue
            self._fed.add(t.number)
            kt_id = self._kt_id.pop(t.number, None) or self._replay(t)
            if kt_id is None:
                continue
            trial = self._oracle.trials[kt_id]
            if t.state == optuna.trial.TrialState.COMPLETE and t.values and math.isfinite(t.values[0]):
                score = float(t.values[0])
            else:
                score = worst  # infeasible or failed: the worst result, never an exception
            self._oracle.update_trial(kt_id, {"score": score})
            trial.status = kt.engine.trial.TrialStatus.COMPLETED
            self._oracle.end_trial(trial)

    def _replay(self, t: optuna.trial.FrozenTrial) -> str | None:
        """Register a trial the oracle did not propose (a resumed or enqueued one)."""
        import keras_tuner as kt

        names = {c.name for c in self._choices}
        if not names <= set(t.params):
            return None
        hp = self._oracle.hyperparameters.copy()
        hp.values = {k: v for k, v in t.params.items() if k in names}
        kt_id = f"study-{t.number}"
        trial = kt.engine.trial.Trial(
            hyperparameters=hp, trial_id=kt_id, status=kt.engine.trial.TrialStatus.RUNNING
        )
        self._oracle.trials[kt_id] = trial
        self._oracle.start_order.append(kt_id)
        self._oracle._record_values(trial)  # so random search does not propose it again
        return kt_id

    # -- optuna's sampler interface (the rest is ChoiceSampler's) -------------------------------
    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        import warnings

        with warnings.catch_warnings():
            # sklearn's GP (Bayesian oracle) warns on every fit of a flat one-hot space, and
            # keras-tuner's locking calls a deprecated threading API on every call.
            warnings.simplefilter("ignore")
            self._sync(study)
            kt_trial = self._oracle.create_trial(f"optuna-{trial.number}")
        if kt_trial.status != "RUNNING":
            # The oracle is exhausted or waiting: this trial falls back to random choices.
            return {}
        self._kt_id[trial.number] = kt_trial.trial_id
        values = kt_trial.hyperparameters.values
        params = {c.name: values[c.name] for c in self._choices if c.name in values}
        if "tuner/epochs" in values:
            # Hyperband's fidelity for this trial (the loop trains with its own epochs).
            study._storage.set_trial_system_attr(trial._trial_id, "kt_epochs", int(values["tuner/epochs"]))
        return params


def _make_gpr(self: Any) -> Any:
    """keras-tuner's GP with fewer kernel-fit restarts (20 there: most of an ask's time)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern

    return GaussianProcessRegressor(
        kernel=Matern(nu=2.5),
        n_restarts_optimizer=GP_RESTARTS,
        normalize_y=True,
        alpha=self.alpha,
        random_state=self.seed,
    )


def _populate_space_pooled(self: Any, trial_id: str) -> dict[str, Any]:
    """keras-tuner's ``BayesianOptimizationOracle.populate_space`` with a pooled acquisition:
    the confidence bound scored on ``ACQ_POOL`` random points in one batch."""
    from keras_tuner.engine import trial as trial_module

    completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
    n_initial = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
    if len(completed) < n_initial:
        return self._random_populate_space()
    x, y = self._vectorize_trials()
    self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
    bounds = self._get_hp_bounds()
    pool = self._random_state.uniform(bounds[:, 0], bounds[:, 1], size=(ACQ_POOL, bounds.shape[0]))
    mu, sigma = self.gpr.predict(pool, return_std=True)
    # keras-tuner's sign convention: the score is negated when maximising, so minimise.
    best = pool[int(np.argmin(mu - self.beta * sigma))]
    return {"status": trial_module.TrialStatus.RUNNING, "values": self._vector_to_values(best)}


def _no_save(self: Any) -> None:
    return None


def _no_save_trial(self: Any, trial: Any) -> None:
    return None
