"""``nas benchmark nb201``: the real search engine on NAS-Bench-201, where every answer is known.

Each run drives the product's ``SearchLoop`` with an in-memory Optuna study, the real ``Screen``
(priced by the device's latency table, or by a predictor fitted on K looked-up latencies) and an
executor whose "training" looks up NAS-Bench-201's published test accuracy. The budget counts
those look-ups, exactly as it counts trainings in a real run.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from search_spaces import InputError
from search_spaces.errors import check

from ..pareto import non_dominated
from .nb201_data import (
    DATASETS,
    LookupPredictor,
    Nb201Data,
    _make_screen,
    _sizes,
    _space,
    device_family,
    load_data,
    lookup_executor,
)

__all__ = [
    "DATASETS",
    "BenchmarkConfig",
    "Nb201Data",
    "LookupPredictor",
    "load_data",
    "run_benchmark",
    "run_one",
]

# With K latency samples: most are kept back to measure trained networks (during the search at
# ``CHECKPOINTS`` and before shipping), the rest fit the model first. A kept-back sample is the
# better buy: it measures a network that was worth training, predicted near the budget, and it
# refits the model there too. K=20, 13 kept back instead of 7: ``benchmarks/search_nb201.py
# --part fewshot`` (24 rows, 10 seeds) mean regret 0.427 -> 0.305; the devices whose networks'
# latencies are noisy (gold_6240, raspi4, pixel3) gain most, as only a measurement tells which
# near-budget network fits.
VERIFY_FRACTION = 0.65
MAX_VERIFY = 16
# Predicted latencies within these fractions of the budget are "near" it (where the second half
# of the fitting samples goes).
NEAR_LOW = 0.8
NEAR_HIGH = 1.4
# Bounds of the relative latency error estimated near the budget.
MIN_ERROR = 0.02
MAX_ERROR = 0.3
# The search may train networks predicted up to this many errors over the budget (log scale; a
# 16 % chance to fit at 1): its expected improvement is weighted by the chance to fit, so such a
# network is trained only when it would be worth it. At 2 (a 2.3 % chance) the search spent 53 %
# of its trainings over the budget (24 few-shot rows of benchmarks/search_nb201.py).
SEARCH_BAND = 1.0
# Predicted latencies: after this many trainings the search stops to measure this many trained
# networks (``run_one``), out of the kept-back samples.
CHECKPOINTS = ((20, 2), (50, 2))


@dataclass(frozen=True)
class BenchmarkConfig:
    dataset: str
    device: str
    max_latency_ms: float | None
    budget: int = 100
    seeds: int = 20
    strategies: tuple[str, ...] = ("default",)
    latency_samples: int | None = None
    pareto: bool = False
    first_seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise InputError(
                f"--dataset: unknown dataset {self.dataset!r}; valid datasets: {sorted(DATASETS)}."
            )
        if self.max_latency_ms is None and not self.pareto:
            raise InputError("--max-latency-ms: expected a number > 0 (required unless --pareto), got none.")
        if self.max_latency_ms is not None:
            check(
                math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0,
                "--max-latency-ms",
                "a number > 0",
                self.max_latency_ms,
            )
        check(self.budget >= 1, "--budget", "an int >= 1", self.budget)
        check(self.seeds >= 1, "--seeds", "an int >= 1", self.seeds)
        check(self.first_seed >= 0, "--first-seed", "an int >= 0", self.first_seed)
        if self.latency_samples is not None:
            check(self.latency_samples >= 3, "--latency-samples", "an int >= 3", self.latency_samples)
        from nas.strategies import STRATEGIES

        check(len(self.strategies) > 0, "--strategy", "at least one name", ",".join(self.strategies))
        for s in self.strategies:
            if s not in STRATEGIES:
                raise InputError(
                    f"--strategy: unknown strategy {s!r}; valid strategies: {sorted(STRATEGIES)}."
                )


# -- few-shot latency ------------------------------------------------------------------------------
@dataclass
class _LatencyOracle:
    """The device's true latencies, handed out at most ``limit`` times (each one a measurement)."""

    truth: np.ndarray
    limit: int
    asked: list[int] = field(default_factory=list)

    def measure(self, i: int) -> float:
        if i not in self.asked:
            if len(self.asked) >= self.limit:
                raise RuntimeError("latency sample budget exhausted")  # pragma: no cover - guarded by callers
            self.asked.append(i)
        return float(self.truth[i])

    @property
    def left(self) -> int:
        return self.limit - len(self.asked)


@cache
def _reference(device: str) -> Any:
    """Every other hardware's latencies as few-shot reference (no setting of ``device``'s own
    hardware: ``titan_rtx_1`` is not a reference for ``titan_rtx_32``)."""
    from latency_models.measurements import Reference

    data = load_data()
    family = device_family(device)
    cols = [j for j, d in enumerate(data.devices) if device_family(d) != family]
    return Reference(
        path="nas/data/nb201/latency_ms_27dev.csv.gz",
        devices=tuple(data.devices[j] for j in cols),
        texts=data.archs,
        archs=_parsed(),
        matrix=data.latency[:, cols],
    )


@cache
def _parsed() -> tuple[Any, ...]:
    space = _space()
    return tuple(space.parse(a) for a in load_data().archs)


def transfer_latency(device: str, oracle: _LatencyOracle) -> np.ndarray:
    """Every cell's latency on ``device`` from the measurements so far: the engine's few-shot
    transfer (``latency_models.transfer.fit_transfer``); measured cells keep their measurement."""
    from latency_models.measurements import Measurements
    from latency_models.transfer import fit_transfer

    data, parsed = load_data(), _parsed()
    idx = list(oracle.asked)
    measurements = Measurements(
        path=f"<{len(idx)} latency samples>",
        texts=tuple(data.archs[i] for i in idx),
        archs=tuple(parsed[i] for i in idx),
        latency_ms=np.array([oracle.truth[i] for i in idx]),
    )
    predictor = fit_transfer(_space(), measurements, _reference(device), device=device)
    pred = np.asarray(predictor.predict(parsed), dtype=float)
    pred[idx] = oracle.truth[idx]
    return pred


def few_shot_latency(
    data: Nb201Data, device: str, oracle: _LatencyOracle, n_fit: int, budget: float | None, seed: int
) -> tuple[np.ndarray, float]:
    """Fit the few-shot latency model with ``n_fit`` measurements; also return the relative error
    expected near the budget.

    Half the measurements are spread over the range the reference devices span; the model fitted
    on them then picks the other half near the budget, where the ranking matters. Those were
    predicted before they were measured, so their error is an honest estimate of the error where
    the search will look.
    """
    ref = _reference(device)
    logref = np.log(np.maximum(ref.matrix, 1e-6))
    z = (logref - logref.mean(0)) / (logref.std(0) + 1e-12)
    order = np.argsort(z.mean(1), kind="stable")
    rng = np.random.default_rng(seed)
    first = max(3, n_fit // 2) if budget is not None else n_fit
    for q in np.arange(first) + 0.5:
        oracle.measure(
            int(order[min(len(order) - 1, int((q + rng.uniform(-0.4, 0.4)) * len(order) / first))])
        )
    pred = transfer_latency(device, oracle)
    if budget is None:
        return pred, 0.0
    near = np.flatnonzero((pred > NEAR_LOW * budget) & (pred < NEAR_HIGH * budget))
    near = np.setdiff1d(near, oracle.asked)
    rest = n_fit - len(oracle.asked)
    if rest <= 0 or len(near) == 0:
        return pred, MAX_ERROR
    # The larger half of the networks near the budget (what the search's prior and accuracy
    # model go for), spread over their predicted latency.
    size = np.array([_sizes(10)[a] for a in data.archs])
    near = near[size[near] >= np.median(size[near])]
    near = near[np.argsort(pred[near], kind="stable")]
    picks = near[np.unique(np.linspace(0, len(near) - 1, rest).round().astype(int))]
    rel = [(oracle.measure(int(i)) - pred[i]) / pred[i] for i in picks]
    error = float(np.clip(np.sqrt(np.mean(np.square(rel))), MIN_ERROR, MAX_ERROR))
    return transfer_latency(device, oracle), error


@functools.lru_cache(maxsize=4)
def _fitted(
    device: str, samples: int, budget: float | None, seed: int
) -> tuple[tuple[int, ...], np.ndarray, float]:
    """The few-shot fit before the search (the same for every strategy of a seed, so a run of
    several strategies fits it once): measured indices, predictions, expected error."""
    data = load_data()
    oracle = _LatencyOracle(data.device_latency(device), samples)
    n_verify = min(MAX_VERIFY, int(samples * VERIFY_FRACTION))
    pred, error = few_shot_latency(data, device, oracle, samples - n_verify, budget, seed)
    pred.setflags(write=False)
    return tuple(oracle.asked), pred, error


def _fitted_latency(config: BenchmarkConfig, seed: int) -> tuple[_LatencyOracle, np.ndarray, float]:
    assert config.latency_samples is not None
    asked, pred, error = _fitted(config.device, config.latency_samples, config.max_latency_ms, seed)
    oracle = _LatencyOracle(load_data().device_latency(config.device), config.latency_samples, list(asked))
    return oracle, pred.copy(), error


# -- one run -------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Non-dominated (accuracy up, latency down) archs, by latency."""
    return [arch for arch, _, _ in non_dominated(points, cost=lambda p: p[2], value=lambda p: p[1])]


def run_one(config: BenchmarkConfig, strategy: str, seed: int) -> dict[str, Any]:
    """One search with ``strategy``: the record ``score_search.py`` checks.

    With predicted latencies the search runs in phases (``CHECKPOINTS``): between them a few of
    the kept-back samples measure trained networks the way shipping does (``_verify``), the
    model is refitted and its bias near the budget corrected, and the search goes on with the
    corrected latencies. A model that misprices the networks the search wants (they are
    selected for looking fast) is found out after a fifth of the budget, not at the end.
    """
    import optuna

    from nas.search import SearchLoop
    from nas.strategies import SearchContext, make_strategy
    from nas.strategies.default import LATENCY_ERROR_OPTION

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_data()
    acc = data.accuracy[config.dataset]
    truth = data.device_latency(config.device)
    num_classes = DATASETS[config.dataset][1]
    started = time.perf_counter()

    oracle: _LatencyOracle | None = None
    drift: _Drift | None = None
    if config.latency_samples is None:
        latency_values = truth
    else:
        oracle, latency_values, error = _fitted_latency(config, seed)
        drift = _Drift(max(error, MIN_ERROR))
    search_budget = None if config.pareto else config.max_latency_ms
    verifying = search_budget is not None and oracle is not None and drift is not None
    phases = [(t, n) for t, n in CHECKPOINTS if t < config.budget] if verifying else []
    study = optuna.create_study(directions=["maximize", "minimize"])
    queried: list[str] = []
    executor = lookup_executor(lambda a: float(acc[data.index[a]]), queried)
    refit = None if oracle is None else functools.partial(transfer_latency, config.device, oracle)
    for phase, (trainings, samples) in enumerate([*phases, (config.budget, 0)]):
        expected = latency_values if drift is None else _expected(latency_values, drift, oracle)
        predictor = LookupPredictor(
            space="nb201",
            device=config.device,
            values=dict(zip(data.archs, expected.tolist(), strict=True)),
        )
        screen_budget = search_budget
        options: dict[str, object] = {"pareto": config.pareto}
        if verifying:
            assert drift is not None
            # Predicted latencies: networks predicted a little over the budget may fit; the
            # strategy weighs each by its chance to fit (and only a measured latency ships).
            screen_budget = search_budget * math.exp(SEARCH_BAND * drift.error)
            options[LATENCY_ERROR_OPTION] = drift.error
        screen = _make_screen(predictor, num_classes, screen_budget)
        # Each phase's sampler is new (its only state is the study); a seeded random sampler
        # would replay the first phase's proposals, so each phase has its own seed.
        context = SearchContext(
            space=_space(),
            seed=seed if phase == 0 else int(np.random.SeedSequence([seed, phase]).generate_state(1)[0]),
            predict=screen,
            max_latency_ms=search_budget,
            n_trials=config.budget,
            options=options,
        )
        study.sampler = make_strategy(strategy, context)
        loop = SearchLoop(study, _space(), screen, executor, trainings=trainings, seed=seed, epochs=200)
        stats = loop.run()
        if samples and oracle is not None and drift is not None:
            latency_values, drift = _verify(
                config, queried, acc, latency_values, oracle, data, drift, refit, samples
            )

    best = _ship(config, queried, acc, latency_values, oracle, data, drift=drift, refit=refit)
    record: dict[str, Any] = {
        "strategy": strategy,
        "seed": seed,
        "best_arch": best,
        "best_accuracy": float(acc[data.index[best]]) if best else None,
        "queried": queried,
        "asked": stats.asked,
        "infeasible_proposals": stats.infeasible,
        "duplicates": stats.duplicates,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if oracle is not None:
        record["latency_queried"] = [data.archs[i] for i in oracle.asked]
        # Shipped on its prediction: every kept-back sample missed (``_ship``'s last resort).
        if config.max_latency_ms is not None:
            record["shipped_unmeasured"] = best is not None and data.index[best] not in oracle.asked
    if config.pareto:
        record["front"] = pareto_front(
            [(a, float(acc[data.index[a]]), float(latency_values[data.index[a]])) for a in queried]
        )
    return record


def _expected(latency: np.ndarray, drift: _Drift, oracle: _LatencyOracle | None) -> np.ndarray:
    """Predicted latencies corrected by the model's bias near the budget; measured ones exact."""
    out = drift.expected(latency)
    if oracle is not None and oracle.asked:
        out[oracle.asked] = oracle.truth[oracle.asked]
    return out


def _ship(
    config: BenchmarkConfig,
    queried: list[str],
    acc: np.ndarray,
    latency: np.ndarray,
    oracle: _LatencyOracle | None,
    data: Nb201Data,
    error: float = 0.0,
    refit: Callable[[], np.ndarray] | None = None,
    drift: _Drift | None = None,
) -> str | None:
    """The most accurate queried network that meets the budget.

    With predicted latencies only a measured latency counts: the samples left are spent by
    ``_verify``, then the most accurate measured fit ships. Only when every sample is spent
    without a fit does a network ship on its prediction, and then only one expected under the
    budget by twice the error (else the one predicted fastest).
    """
    if not queried:
        return None
    ranked = sorted(dict.fromkeys(queried), key=lambda a: -acc[data.index[a]])
    if config.max_latency_ms is None:
        return ranked[0]
    budget = config.max_latency_ms
    if oracle is None:
        meets = [a for a in ranked if latency[data.index[a]] <= budget]
        return meets[0] if meets else min(queried, key=lambda a: latency[data.index[a]])
    drift = drift or _Drift(max(error, MIN_ERROR))
    latency, drift = _verify(config, queried, acc, latency, oracle, data, drift, refit, oracle.left)
    fits = _measured_fits(ranked, oracle, data, budget)
    if fits:
        return fits[0]
    expected = drift.expected(np.array([latency[data.index[a]] for a in ranked]))
    likely = [a for a, ms in zip(ranked, expected, strict=True) if ms <= drift.safe(budget)]
    return likely[0] if likely else min(queried, key=lambda a: latency[data.index[a]])


def _measured_fits(ranked: list[str], oracle: _LatencyOracle, data: Nb201Data, budget: float) -> list[str]:
    """The networks of ``ranked`` whose measured latency meets ``budget``, in ``ranked``'s order."""
    return [a for a in ranked if data.index[a] in oracle.asked and oracle.truth[data.index[a]] <= budget]


def _verify(
    config: BenchmarkConfig,
    queried: list[str],
    acc: np.ndarray,
    latency: np.ndarray,
    oracle: _LatencyOracle,
    data: Nb201Data,
    drift: _Drift,
    refit: Callable[[], np.ndarray] | None,
    samples: int,
) -> tuple[np.ndarray, _Drift]:
    """Measure up to ``samples`` trained networks, one at a time; return the (refitted)
    predictions and the updated drift.

    While no measured network fits, the next sample secures one: the most accurate trained
    network expected an error under the budget (an 84 % chance to fit). Once one fits, a sample goes to the trained
    network with the largest expected gain from measuring it: its chance to fit
    (``feasible_probability``) times its accuracy above the best verified one. Every sample
    updates the model's bias and error near the budget (``_Drift``: a run of misses lowers every
    remaining chance, since one model misprices similar networks alike), and the model is
    refitted (``refit``). The last sample of all, if nothing fits yet, goes to the candidate
    most likely to fit.
    """
    from nas.strategies.default import feasible_probability

    assert config.max_latency_ms is not None
    budget = config.max_latency_ms
    ranked = sorted(dict.fromkeys(queried), key=lambda a: -acc[data.index[a]])
    stop = max(0, oracle.left - samples)
    while oracle.left > stop:
        fits = _measured_fits(ranked, oracle, data, budget)
        floor = acc[data.index[fits[0]]] if fits else -math.inf
        left = [a for a in ranked if data.index[a] not in oracle.asked and acc[data.index[a]] > floor]
        if not left:
            break
        rows = np.array([data.index[a] for a in left])
        expected = drift.expected(latency[rows])
        chance = feasible_probability(expected, budget, drift.error)
        likely = [a for a, ms in zip(left, expected, strict=True) if ms <= drift.safe(budget, 1.0)]
        if not fits and likely and oracle.left > 1:
            # Secure one measured fit before spending samples on chances: the chances of the
            # networks over the budget are correlated (one model misprices them alike), so a run
            # of misses can leave nothing but a poor network for the last sample.
            pick = likely[0]
        elif not fits and oracle.left == 1:
            pick = left[int(np.argmax(chance))]  # ranked by accuracy: ties go to the more accurate
        else:
            if not fits:
                floor = float(acc[rows].min()) - 1.0
            gain = chance * (acc[rows] - floor)
            if gain.max() <= 0:
                break
            pick = left[int(np.argmax(gain))]
        row = data.index[pick]
        predicted = float(latency[row])
        measured = oracle.measure(row)
        drift = drift.after(predicted, measured, budget)
        hit = measured <= budget
        above = [a for a in left if a != pick and (not hit or acc[data.index[a]] > acc[data.index[pick]])]
        if refit is not None and oracle.left > 0 and above:
            latency = refit()
    return latency, drift


@dataclass(frozen=True)
class _Drift:
    """The latency model's bias and error near the budget, updated by each verification sample.

    A sample was predicted before it was measured, so ``log(measured / predicted)`` is an honest
    residual: the model's bias plus noise. With the fit's error estimate (``prior``) as the noise
    and as the prior spread of the bias, the bias is the residuals' mean shrunk toward zero, the
    noise their spread around it pooled with the prior, and the error of the next prediction
    adds the bias's own uncertainty.
    """

    prior: float
    residuals: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check(self.prior > 0, "latency error", "a number > 0", self.prior)

    @property
    def bias(self) -> float:
        return sum(self.residuals) / (len(self.residuals) + 1)

    @property
    def error(self) -> float:
        n, bias = len(self.residuals), self.bias
        noise = (self.prior**2 + sum((r - bias) ** 2 for r in self.residuals)) / (n + 1)
        return float(np.clip(math.sqrt(noise * (1.0 + 1.0 / (n + 1))), MIN_ERROR, MAX_ERROR))

    def expected(self, predicted: np.ndarray) -> np.ndarray:
        return np.asarray(predicted, dtype=float) * math.exp(self.bias)

    def safe(self, budget: float, errors: float = 2.0) -> float:
        """Expected latencies at most this are taken to fit (``errors`` errors under the budget)."""
        return math.exp(-errors * self.error) * budget

    def after(self, predicted: float, measured: float, budget: float) -> _Drift:
        """With one more sample; only samples predicted near the budget count (the model's error
        differs across its range, and the budget is where a mistake costs)."""
        if not NEAR_LOW * budget <= predicted <= NEAR_HIGH * budget:
            return self
        return _Drift(self.prior, (*self.residuals, math.log(measured / max(predicted, 1e-12))))


def run_benchmark(
    config: BenchmarkConfig, on_record: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Every strategy on every seed, in the same run (same budgets, same data)."""
    from threadpoolctl import threadpool_limits

    records = []
    # Small matrices: BLAS threads only contend with each other (and with other searches).
    with threadpool_limits(1):
        for strategy in config.strategies:
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                record = run_one(config, strategy, seed)
                records.append(record)
                if on_record is not None:
                    on_record(record)
    return records


def to_json(config: BenchmarkConfig, records: list[dict[str, Any]]) -> str:
    doc = {
        "benchmark": "nb201",
        "config": {
            "dataset": config.dataset,
            "device": config.device,
            "max_latency_ms": config.max_latency_ms,
            "budget": config.budget,
            "seeds": config.seeds,
            "strategies": list(config.strategies),
            "latency_samples": config.latency_samples,
            "pareto": config.pareto,
        },
        "runs": records,
    }
    return json.dumps(doc, indent=1) + "\n"
