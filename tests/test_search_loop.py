"""The search loop on a real SQLite study with real (tiny) trainings on the digits task."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from latency_models.predictor import TablePredictor
from latency_models.size import SizeModel
from nas.config import Constraints, FidelityConfig, TrainConfig
from nas.data import load_task
from nas.executors import InlineExecutor, JobResult, TrainJob, WorkerSetup
from nas.search import Screen, SearchLoop, smallest_achievable
from nas.strategies import SearchContext, make_strategy
from search_spaces import FatalError, InputError, get_space

from .test_predictor import OPTIONS
from .test_predictor import synthetic_table as mnist_table

DIGITS_OPTIONS = {**OPTIONS, "stem_width": 8}


def digits_table():
    """A table for the digits task's 8x8 inputs, priced by MACs (an input file like any user's)."""
    from latency_models.table import Entry, LatencyTable, TableMeta

    space = get_space("mbconv", DIGITS_OPTIONS)
    data = load_task("digits")
    entries = {}
    for b in space.all_blocks(data.shape):
        macs = b.in_h * b.in_w * (b.in_c * b.expand * (b.kernel**2 + b.out_c + b.in_c) + 1)
        entries[b] = Entry(1e-5 * macs + 0.002, 0.0, 10)
    return LatencyTable(TableMeta("synthetic"), entries)


class CountingExecutor(InlineExecutor):
    """The real inline executor, counting what it was asked to train."""

    def __init__(self, *args, stop_after: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.jobs: list[TrainJob] = []
        self.stop_after = stop_after

    def submit(self, job: TrainJob) -> None:
        if self.stop_after is not None and len(self.jobs) >= self.stop_after:
            raise KeyboardInterrupt  # the driver dies with a trial running
        self.jobs.append(job)
        super().submit(job)


def make_loop(
    tmp_path: Path,
    trainings: int,
    max_latency_ms: float,
    strategy: str = "tpe",
    lr: float = 3e-3,
    stop_after: int | None = None,
    max_failures: int = 5,
    epochs: int = 1,
    fidelity: FidelityConfig | None = None,
) -> tuple[SearchLoop, CountingExecutor]:
    space = get_space("mbconv", DIGITS_OPTIONS)
    data = load_task("digits")
    predictor = TablePredictor(
        space="mbconv",
        device="synthetic",
        table=digits_table(),
        task=data.shape,
        space_options=DIGITS_OPTIONS,
    )
    screen = Screen(space, data.shape, predictor, SizeModel(), Constraints(max_latency_ms=max_latency_ms))
    train = TrainConfig(
        epochs=1, final_epochs=1, batch_size=64, learning_rate=lr, optimizer="sgd" if lr > 1 else "adam"
    )
    setup = WorkerSetup("mbconv", DIGITS_OPTIONS, {"data": "digits"}, train.__dict__)
    executor = CountingExecutor(setup, data, stop_after=stop_after)
    sampler = make_strategy(strategy, SearchContext(space=space, seed=0, predict=screen))
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        study_name="s",
        load_if_exists=True,
        directions=["maximize", "minimize"],
        sampler=sampler,
    )
    loop = SearchLoop(
        study=study,
        space=space,
        screen=screen,
        executor=executor,
        trainings=trainings,
        epochs=epochs,
        fidelity=fidelity,
        max_failures_in_row=max_failures,
    )
    return loop, executor


def median_latency() -> float:
    import random

    space = get_space("mbconv", DIGITS_OPTIONS)
    data = load_task("digits")
    table = digits_table()
    prices = sorted(table.price(space.blocks(space.random(random.Random(i)), data.shape)) for i in range(300))
    return prices[len(prices) // 2]


def test_infeasible_candidates_are_recorded_and_never_trained(tmp_path: Path) -> None:
    budget = median_latency()
    loop, executor = make_loop(tmp_path, trainings=4, max_latency_ms=budget)
    stats = loop.run()
    trials = loop.study.get_trials()
    infeasible = [t for t in trials if t.user_attrs["state"] == "infeasible"]
    complete = [t for t in trials if t.user_attrs["state"] == "complete"]
    assert stats.trained == len(executor.jobs) == 4 == len(complete)
    assert infeasible, "a median budget must screen some candidates out"
    trained_archs = {j.arch for j in executor.jobs}
    for t in infeasible:
        assert t.user_attrs["arch"] not in trained_archs or any(
            c.user_attrs["arch"] == t.user_attrs["arch"] for c in complete
        )
        assert t.user_attrs["predicted_latency_ms"] > budget
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.constraints["max_latency_ms"] > 0
    for t in complete:
        assert t.user_attrs["predicted_latency_ms"] <= budget
        assert 0.0 <= t.values[0] <= 1.0 and t.values[1] == t.user_attrs["predicted_latency_ms"]
        assert t.user_attrs["pid"] > 0


def test_duplicates_reuse_the_result(tmp_path: Path) -> None:
    loop, executor = make_loop(tmp_path, trainings=2, max_latency_ms=1e9)
    loop.run()
    first = loop.study.get_trials()[0]
    loop.study.enqueue_trial(first.params)
    loop2, executor2 = make_loop(tmp_path, trainings=3, max_latency_ms=1e9)
    loop2.run()
    dup = [t for t in loop2.study.get_trials() if t.user_attrs["state"] == "duplicate"]
    assert dup and dup[0].values == first.values
    assert first.user_attrs["arch"] not in {j.arch for j in executor2.jobs}


def test_failures_are_recorded_and_stop_after_a_run_of_them(tmp_path: Path) -> None:
    loop, executor = make_loop(tmp_path, trainings=5, max_latency_ms=1e9, lr=1e9, max_failures=2)
    with pytest.raises(FatalError, match="2 trainings failed in a row"):
        loop.run()
    failed = [t for t in loop.study.get_trials() if t.user_attrs.get("state") == "failed"]
    assert len(failed) == 2
    assert all("diverged" in t.user_attrs["error"] for t in failed)


def test_resume_after_the_driver_dies_keeps_every_completed_trial(tmp_path: Path) -> None:
    loop, executor = make_loop(tmp_path, trainings=5, max_latency_ms=1e9, strategy="random", stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    before = {t.number: t.values for t in loop.study.get_trials() if t.user_attrs.get("state") == "complete"}
    assert len(before) == 2
    running = [t for t in loop.study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1
    lost_arch = running[0].user_attrs["arch"]

    loop2, executor2 = make_loop(tmp_path, trainings=5, max_latency_ms=1e9, strategy="random")
    loop2.run()
    after = {t.number: t.values for t in loop2.study.get_trials() if t.user_attrs.get("state") == "complete"}
    assert {n: after[n] for n in before} == before  # nothing lost, nothing changed
    assert len(executor2.jobs) == 3  # only the remaining trainings
    assert executor2.jobs[0].arch == lost_arch  # the interrupted trial was re-queued first
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in loop2.study.get_trials())


def test_budget_nothing_can_meet_is_detected_before_training() -> None:
    space = get_space("mbconv", DIGITS_OPTIONS)
    data = load_task("digits")
    predictor = TablePredictor(
        space="mbconv", device="s", table=digits_table(), task=data.shape, space_options=DIGITS_OPTIONS
    )
    screen = Screen(space, data.shape, predictor, SizeModel(), Constraints(max_latency_ms=1e-6))
    low = smallest_achievable(space, screen)
    assert low["max_latency_ms"] > 1e-6
    with pytest.raises(InputError, match="max_memory_kb"):
        Screen(space, data.shape, predictor, SizeModel(), Constraints(max_memory_kb=10))


def test_job_results_carry_where_they_ran() -> None:
    r = JobResult(1, "a", True, accuracy=0.5, host="h", pid=3, queued_s=0.1, run_s=2.0)
    assert r.as_attrs()["pid"] == 3 and "trial_number" not in r.as_attrs()


def test_mnist_table_prices_the_quickstart_space() -> None:
    assert len(mnist_table()) > 50


class DeferredExecutor(CountingExecutor):
    """Two jobs in flight at once: they run (for real) only when the loop polls."""

    capacity = 2

    def submit(self, job: TrainJob) -> None:
        self.jobs.append(job)
        self._queued = [*getattr(self, "_queued", []), job]

    def poll(self, timeout: float | None = None) -> list[JobResult]:
        queued, self._queued = getattr(self, "_queued", []), []
        return [run_job_inline(self, job) for job in queued]


def run_job_inline(executor: InlineExecutor, job: TrainJob) -> JobResult:
    from nas.executors import run_job

    return run_job(executor.setup, job, executor.data)


def test_a_network_asked_while_it_trains_is_not_trained_twice(tmp_path: Path) -> None:
    loop, _ = make_loop(tmp_path, trainings=2, max_latency_ms=1e9, strategy="random")
    space = loop.space
    arch = space.parse(str(space.random(__import__("random").Random(3))))
    loop.study.enqueue_trial(space.to_params(arch))
    loop.study.enqueue_trial(space.to_params(arch))
    executor = DeferredExecutor(loop.executor.setup, loop.executor.data)
    loop.executor = executor
    loop.run()
    trials = loop.study.get_trials()
    assert [j.arch for j in executor.jobs].count(str(arch)) == 1
    twin = [t for t in trials if t.user_attrs.get("duplicate_of") is not None]
    assert len(twin) == 1 and twin[0].values == trials[twin[0].user_attrs["duplicate_of"]].values


def test_single_fidelity_trains_every_candidate_at_training_epochs(tmp_path: Path) -> None:
    loop, executor = make_loop(tmp_path, trainings=2, max_latency_ms=1e9, strategy="random", epochs=2)
    stats = loop.run()
    assert [j.epochs for j in executor.jobs] == [2, 2]
    assert stats.epochs_spent == 4 == stats.budget_epochs and stats.by_epochs == {2: 2}
    for t in loop.study.get_trials():
        assert t.user_attrs["fidelity_epochs"] == 2
        assert t.user_attrs["fidelity_history"] == [{"epochs": 2, "accuracy": t.values[0]}]


def replay_promotions(jobs: list[TrainJob], accuracy: dict[tuple[int, int], float], eta: int) -> list[int]:
    """Trial numbers that successive halving promotes, replaying the trainings in order."""
    seen: dict[int, list[float]] = {}
    promoted = []
    for j in jobs:
        acc = accuracy[(j.trial_number, j.epochs)]
        ranked = sorted([*seen.get(j.epochs, []), acc], reverse=True)
        seen[j.epochs] = ranked
        if j.epochs == 1 and acc >= ranked[max(1, len(ranked) // eta) - 1]:
            promoted.append(j.trial_number)
    return promoted


def test_successive_halving_promotes_the_top_candidates_and_counts_epochs(tmp_path: Path) -> None:
    loop, executor = make_loop(
        tmp_path,
        trainings=3,
        max_latency_ms=median_latency(),
        strategy="random",
        epochs=3,
        fidelity=FidelityConfig(min_epochs=1, eta=3),
    )
    stats = loop.run()
    assert loop.rungs == (1, 3)
    spent = [j.epochs for j in executor.jobs]
    assert stats.epochs_spent == sum(spent) <= stats.budget_epochs == 9
    assert stats.by_epochs == {e: spent.count(e) for e in set(spent)}
    assert stats.trained == len(executor.jobs) > 3  # more candidates than full trainings
    trials = loop.study.get_trials()
    trained = [t for t in trials if t.user_attrs["state"] == "complete"]
    accuracy = {
        (t.number, h["epochs"]): h["accuracy"] for t in trained for h in t.user_attrs["fidelity_history"]
    }
    decided = replay_promotions(executor.jobs, accuracy, eta=3)
    assert decided[0] == executor.jobs[0].trial_number  # the first result is the best so far
    # a promotion that no longer fits the budget is skipped; the trial keeps its 1 epoch
    skipped = {t.number for t in trained if "promotion_skipped" in t.user_attrs}
    promoted = [n for n in decided if n not in skipped]
    assert skipped <= set(decided) and stats.promoted == len(promoted) > 0
    for t in trained:
        history = [h["epochs"] for h in t.user_attrs["fidelity_history"]]
        assert history == ([1, 3] if t.number in promoted else [1])
        assert t.user_attrs["fidelity_epochs"] == history[-1]
        assert t.values[0] == t.user_attrs["fidelity_history"][-1]["accuracy"]
    # screening is unchanged: nothing infeasible was trained, at any fidelity
    infeasible = {t.number for t in trials if t.user_attrs["state"] == "infeasible"}
    assert infeasible and not infeasible & {j.trial_number for j in executor.jobs}
    # the run ships a candidate trained at full fidelity
    from nas.runner import select_best

    assert select_best(loop.study).user_attrs["fidelity_epochs"] == 3


def test_a_promotion_killed_with_the_driver_is_trained_on_resume(tmp_path: Path) -> None:
    fidelity = FidelityConfig(min_epochs=1, eta=3)
    loop, executor = make_loop(tmp_path, 3, 1e9, strategy="random", epochs=3, fidelity=fidelity, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        loop.run()  # the first candidate is promoted; the driver dies submitting its 3 epochs
    (first,) = loop.study.get_trials()
    assert first.state == optuna.trial.TrialState.RUNNING
    assert [h["epochs"] for h in first.user_attrs["fidelity_history"]] == [1]

    loop2, executor2 = make_loop(tmp_path, 2, 1e9, strategy="random", epochs=3, fidelity=fidelity)
    stats = loop2.run()
    assert (executor2.jobs[0].trial_number, executor2.jobs[0].epochs) == (first.number, 3)
    again = loop2.study.get_trials()[first.number]
    assert again.user_attrs["state"] == "complete" and again.user_attrs["fidelity_epochs"] == 3
    assert again.user_attrs["fidelity_history"][0] == first.user_attrs["fidelity_history"][0]  # kept
    assert stats.epochs_spent == 1 + sum(j.epochs for j in executor2.jobs) <= 6
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in loop2.study.get_trials())
