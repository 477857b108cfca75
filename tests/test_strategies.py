"""One contract every strategy passes, driven through the real SearchLoop on NAS-Bench-201's
published accuracies and a device's measured latencies (a narrowed op set keeps it fast)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from latency_models.size import SizeModel
from nas.benchmark.nb201 import LookupPredictor, load_data, lookup_executor
from nas.config import Constraints
from nas.search import Screen, SearchLoop
from nas.strategies import STRATEGIES, SearchContext, make_strategy
from search_spaces import InputError, TaskShape, get_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3"]
SPACE = get_space("nb201", {"channels": 16, "cells_per_stage": 5, "ops": OPS})
TASK = TaskShape((32, 32, 3), 10)
DEVICE = "pixel3"
ALL = sorted(STRATEGIES)  # every registered strategy: adding one to the registry is enough to test it


def _in_space() -> list[str]:
    data = load_data()
    return [
        a
        for a in data.archs
        if all(op.split("~")[0] in OPS for op in a.strip("|").replace("|+|", "|").split("|"))
    ]


def budget_at(quantile: float) -> float:
    data = load_data()
    lat = data.device_latency(DEVICE)
    return float(np.quantile([lat[data.index[a]] for a in _in_space()], quantile))


class Harness:
    """A study, the loop and what the executor looked up."""

    def __init__(
        self, strategy: str, max_latency_ms: float, seed: int = 0, study: optuna.Study | None = None
    ):
        data = load_data()
        lat = data.device_latency(DEVICE)
        acc = data.accuracy["cifar10"]
        predictor = LookupPredictor(
            space="nb201", device=DEVICE, values={a: float(lat[data.index[a]]) for a in data.archs}
        )
        self.screen = Screen(SPACE, TASK, predictor, SizeModel(), Constraints(max_latency_ms=max_latency_ms))
        self.context = SearchContext(
            space=SPACE, seed=seed, predict=self.screen, max_latency_ms=max_latency_ms, n_trials=10
        )
        sampler = make_strategy(strategy, self.context)
        if study is None:
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        else:
            study.sampler = sampler
        self.study = study
        self.queried: list[str] = []
        self.executor = lookup_executor(lambda a: float(acc[data.index[a]]), self.queried)
        self.truth = {a: float(lat[data.index[a]]) for a in data.archs}

    def run(self, trainings: int) -> SearchLoop:
        loop = SearchLoop(self.study, SPACE, self.screen, self.executor, trainings=trainings, max_asks=400)
        loop.run()
        return loop


@pytest.mark.parametrize("strategy", ALL)
def test_proposes_valid_feasible_archs(strategy: str) -> None:
    h = Harness(strategy, budget_at(0.5))
    loop = h.run(8)
    assert loop.stats.trained == 8 == len(h.queried)
    for t in h.study.trials:
        SPACE.from_params(t.params)  # every proposal is a valid architecture of the space
    # Only screened-feasible candidates are trained.
    assert all(h.truth[a] <= budget_at(0.5) for a in h.queried)


@pytest.mark.parametrize("strategy", ALL)
def test_infeasible_recorded_and_search_goes_on(strategy: str) -> None:
    budget = budget_at(0.1)  # nine in ten candidates break it
    h = Harness(strategy, budget, seed=1)
    loop = h.run(6)
    assert loop.stats.trained == 6
    infeasible = [t for t in h.study.trials if t.user_attrs.get("state") == "infeasible"]
    for t in infeasible:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert max(t.constraints.values()) > 0
    assert all(h.truth[a] <= budget for a in h.queried)
    if strategy == "default":
        # ours screens before proposing: nothing infeasible is even asked
        assert loop.stats.infeasible == 0
    elif strategy in ("random", "kt-random"):
        # blind proposals meet a budget this tight rarely: the loop records them and goes on
        assert loop.stats.infeasible > 0


@pytest.mark.parametrize("strategy", ALL)
def test_resumes_from_the_study(strategy: str) -> None:
    budget = budget_at(0.5)
    first = Harness(strategy, budget, seed=2)
    first.run(4)
    # A new process: a fresh sampler on the same study picks up where the first stopped.
    second = Harness(strategy, budget, seed=2, study=first.study)
    loop = second.run(9)
    assert loop.stats.trained == 9
    assert len(first.queried) + len(second.queried) == 9
    trained = first.queried + second.queried
    assert len({str(SPACE.canonical(SPACE.parse(a))) for a in trained}) == len(trained)


def test_default_never_trains_a_network_twice() -> None:
    h = Harness("default", budget_at(0.5), seed=3)
    loop = h.run(40)
    canon = [str(SPACE.canonical(SPACE.parse(a))) for a in h.queried]
    assert len(set(canon)) == len(canon) == 40
    assert loop.stats.duplicates == 0 and loop.stats.infeasible == 0


def test_default_beats_random_on_average() -> None:
    """At 20 trainings the prior and the accuracy model pick better networks than chance."""
    budget = budget_at(0.25)
    best = {"default": [], "random": []}
    for seed in range(4):
        for name in best:
            h = Harness(name, budget, seed=seed)
            h.run(20)
            acc = load_data().accuracy["cifar10"]
            best[name].append(max(acc[load_data().index[a]] for a in h.queried))
    assert np.mean(best["default"]) > np.mean(best["random"])


def test_default_pareto_mode_spreads_over_latency() -> None:
    data = load_data()
    lat = data.device_latency(DEVICE)
    predictor = LookupPredictor(
        space="nb201", device=DEVICE, values={a: float(lat[data.index[a]]) for a in data.archs}
    )
    screen = Screen(SPACE, TASK, predictor, SizeModel(), Constraints())
    context = SearchContext(
        space=SPACE, seed=0, predict=screen, max_latency_ms=None, options={"pareto": True}
    )
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_strategy("default", context)
    )
    queried: list[str] = []
    executor = lookup_executor(lambda a: float(data.accuracy["cifar10"][data.index[a]]), queried)
    SearchLoop(study, SPACE, screen, executor, trainings=20).run()
    lats = sorted(float(lat[data.index[a]]) for a in queried)
    # targets cycle through latency levels: the trained set is not bunched at one end
    assert lats[-1] > 1.5 * lats[0]


def test_unknown_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match="valid strategies"):
        make_strategy("simulated-annealing", SearchContext(space=SPACE))
    assert {"default", "kt-bayesian", "kt-hyperband", "kt-random"} <= set(STRATEGIES)


def test_kt_bayesian_asks_its_gp_after_the_initial_points() -> None:
    """The pooled acquisition (not keras-tuner's 50 L-BFGS-B runs) proposes valid archs."""
    h = Harness("kt-bayesian", budget_at(0.5), seed=4)
    context = SearchContext(
        space=SPACE,
        seed=4,
        predict=h.screen,
        max_latency_ms=budget_at(0.5),
        options={"num_initial_points": 3},
    )
    h.study.sampler = make_strategy("kt-bayesian", context)
    loop = h.run(8)
    assert loop.stats.trained == 8
    oracle = h.study.sampler._oracle
    assert len(oracle.gpr.X_train_) >= 3  # the GP was fitted and asked
    assert all(h.truth[a] <= budget_at(0.5) for a in h.queried)


def test_feasible_probability_is_the_chance_the_true_latency_fits() -> None:
    from nas.strategies.default import feasible_probability

    p = feasible_probability(np.array([5.0, 10.0, 11.0, 20.0]), 10.0, 0.1)
    assert p[1] == pytest.approx(0.5)
    assert p[0] > 0.999 and p[3] < 1e-6
    assert np.all(np.diff(p) < 0)


def test_default_weighs_networks_predicted_over_the_budget_by_their_chance() -> None:
    """With an uncertain latency model the screen lets through networks predicted a little over
    the budget; the prior's picks stay under it, and a near-zero error keeps every pick under."""
    budget = budget_at(0.25)
    for error, over_allowed in ((1e-4, False), (0.15, True)):
        h = Harness("default", budget, seed=5)
        h.screen = Screen(
            SPACE, TASK, h.screen.latency, SizeModel(), Constraints(max_latency_ms=1.5 * budget)
        )
        context = SearchContext(
            space=SPACE, seed=5, predict=h.screen, max_latency_ms=budget, options={"latency_error": error}
        )
        h.study.sampler = make_strategy("default", context)
        h.run(25)
        over = [h.truth[a] > budget for a in h.queried]
        assert len(over) == 25 and not any(over[:10])  # the prior phase
        if not over_allowed:
            assert not any(over)
        assert all(h.truth[a] <= 1.5 * budget for a in h.queried)


def test_default_breaks_latency_ties_between_encodings_by_the_seed() -> None:
    """Encodings of one network priced alike are one choice as good as another: each seed picks
    its own (always one of the cheapest), so seeds are independent runs, and a seed repeats itself."""
    data = load_data()
    archs = [SPACE.parse(a) for a in _in_space()]
    # A device that prices every cell alike: every encoding of a network ties.
    flat = LookupPredictor(space="nb201", device="flat", values={a: 1.0 for a in data.archs})
    screen = Screen(SPACE, TASK, flat, SizeModel(), Constraints(max_latency_ms=2.0))

    def representatives(seed: int) -> dict[str, str]:
        sampler = make_strategy(
            "default", SearchContext(space=SPACE, seed=seed, predict=screen, max_latency_ms=2.0)
        )
        pool = sampler._make_pool(archs)
        return {c: str(pool.archs[i]) for c, i in pool.position.items()}

    first, again, other = representatives(0), representatives(0), representatives(1)
    assert first == again
    assert first.keys() == other.keys() and len(first) < len(archs)  # one per network
    assert sum(first[c] != other[c] for c in first) > len(first) // 10
    # With a device that prices encodings apart, the cheapest is kept whatever the seed.
    h = Harness("default", 10.0)
    cheapest: dict[str, float] = {}
    for a in archs:
        c = str(SPACE.canonical(a))
        cheapest[c] = min(cheapest.get(c, np.inf), h.truth[str(a)])
    for seed in (0, 1):
        pool = make_strategy("default", SearchContext(space=SPACE, seed=seed, predict=h.screen))._make_pool(
            archs
        )
        assert all(h.truth[str(pool.archs[i])] == cheapest[c] for c, i in pool.position.items())


def test_path_features_see_the_function_a_cell_computes() -> None:
    """``conv(conv(x)) + x`` wired through node 2 or straight from the input is one function; the
    path counts say so where the one-hot encodings differ, and tell other functions apart."""
    from nas.strategies.default import path_features

    space = get_space("nb201")
    via_node2 = space.parse("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|")
    direct = space.parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    one_conv = space.parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|skip_connect~1|none~2|")
    bottleneck = space.parse(
        "|nor_conv_1x1~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"
    )
    assert path_features(space, via_node2) == path_features(space, direct)
    assert space.to_params(via_node2) != space.to_params(direct)
    feats = [path_features(space, a) for a in (direct, one_conv, bottleneck)]
    assert all(sum(f) == 2 for f in feats)  # two input-output paths each
    assert len({tuple(f) for f in feats}) == 3
    assert path_features(get_space("fbnet"), get_space("fbnet").random(__import__("random").Random(0))) == []


def test_default_with_a_small_sampled_pool_keeps_each_pools_features_apart() -> None:
    """A large space's pool is sampled anew for each proposal; with a quarter of it (as
    ``nas specialize`` asks) a new pool often gets a freed one's ``id()``, and features cached
    by that id belonged to another pool (IndexError at the 20th-odd proposal, before the fix)."""
    import hashlib

    from nas.strategies.default import POOL_SCALE_OPTION
    from tests.test_budgets import quickstart_screen

    space, screen, _ = quickstart_screen()
    budget = float(np.quantile([p.latency_ms for p in screen([space.random(__import__("random").Random(i)) for i in range(500)])], 0.3))  # fmt: skip
    screen = Screen(space, screen.task, screen.latency, screen.size, Constraints(max_latency_ms=budget))
    context = SearchContext(
        space=space,
        seed=0,
        predict=screen,
        max_latency_ms=budget,
        n_trials=60,
        options={POOL_SCALE_OPTION: 0.25},
    )
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_strategy("default", context)
    )
    queried: list[str] = []

    def accuracy(arch: str) -> float:
        return 0.8 + int(hashlib.sha256(arch.encode()).hexdigest()[:6], 16) / 16**6 / 10

    loop = SearchLoop(study, space, screen, lookup_executor(accuracy, queried), trainings=60, max_asks=400)
    loop.run()
    assert len(queried) == 60 and loop.stats.infeasible == 0
