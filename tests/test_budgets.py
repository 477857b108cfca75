"""Budgets that travel (relative forms resolved on the device's latency model) and the
verification rules that decide whether a measured file may be shipped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from latency_models.predictor import TablePredictor
from latency_models.runtimes import RepeatedTiming
from latency_models.size import SizeModel
from latency_models.table import Entry, LatencyTable, TableMeta
from nas.budgets import ResolvedBudgets, resolve
from nas.config import Constraints, parse_config
from nas.search import Screen
from nas.verify import SPREAD_FACTOR, check, pick
from search_spaces import InputError, TaskShape, get_space

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TASK = TaskShape((28, 28, 1), 10)


def quickstart_screen(scale: float = 1.0) -> tuple[object, Screen, Constraints]:
    """The quickstart's space priced by a MAC-proportional table for 28x28 inputs, every entry
    multiplied by ``scale`` (a device ``1/scale`` times as fast)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    config = parse_config(doc, base_dir=QUICKSTART.parent)
    space = get_space(config.space.name, config.space.options)
    entries = {}
    for b in space.all_blocks(TASK):
        macs = b.in_h * b.in_w * (b.in_c * max(b.expand, 1.0) * (b.kernel**2 + b.out_c + b.in_c) + 1)
        entries[b] = Entry(scale * (2e-8 * macs + 5e-4), 0.0, 10)
    table = LatencyTable(TableMeta("synthetic"), entries)
    predictor = TablePredictor(
        space=space.name, device="synthetic", table=table, task=TASK, space_options=dict(config.space.options)
    )
    return space, Screen(space, TASK, predictor, SizeModel(), Constraints()), config.constraints


def test_quickstart_budget_binds_on_a_3x_faster_and_a_3x_slower_device() -> None:
    resolved = {}
    for scale in (1 / 3, 1.0, 3.0):
        space, screen, constraints = quickstart_screen(scale)
        assert constraints.relative(), "the quickstart's latency budget must be relative"
        budgets = resolve(constraints, space, screen)
        screen = replace(screen, constraints=budgets.constraints)
        rng = np.random.default_rng(0)
        archs = [space.random(__import__("random").Random(int(s))) for s in rng.integers(0, 1 << 30, 2000)]
        preds = screen(archs)
        over_latency = np.mean([p.violations[0] > 0 for p in preds])
        assert over_latency >= 0.5, f"scale {scale}: only {over_latency:.0%} over the latency budget"
        assert 0 < budgets.feasible_share < 1
        resolved[scale] = budgets.constraints.max_latency_ms
    # The same quantile on a device 3x as fast / slow: the budget moves with the device (the
    # table's additive entries keep it from being exactly 3x, but close).
    assert resolved[3.0] / resolved[1.0] == pytest.approx(3.0, rel=0.02)
    assert resolved[1.0] / resolved[1 / 3] == pytest.approx(3.0, rel=0.02)


def test_times_smallest_and_round_trip() -> None:
    space, screen, _ = quickstart_screen()
    budgets = resolve(Constraints(max_latency_times_smallest=1.5, max_size_kb=40), space, screen)
    assert budgets.constraints.max_latency_ms == pytest.approx(1.5 * budgets.smallest["max_latency_ms"])
    assert budgets.constraints.max_size_kb == 40
    again = ResolvedBudgets.from_dict(budgets.as_dict())
    assert again.constraints == budgets.constraints
    assert "1.5 x the smallest achievable" in budgets.how["max_latency_ms"]


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        (
            {"max_latency_quantile": 0.0},
            "constraints.max_latency_quantile: expected a number in (0, 1), got 0.0.",
        ),
        (
            {"max_latency_quantile": 1.0},
            "constraints.max_latency_quantile: expected a number in (0, 1), got 1.0.",
        ),
        (
            {"max_latency_times_smallest": 0.5},
            "constraints.max_latency_times_smallest: expected a number >= 1",
        ),
        (
            {"max_latency_ms": 0.1, "max_latency_quantile": 0.3},
            "constraints.max_latency_quantile: one budget per quantity, but max_latency_ms is set too",
        ),
        ({"max_size_quantile": "0.3"}, "constraints.max_size_quantile: expected a number"),
    ],
)
def test_bad_relative_budgets_are_one_line(constraints: dict, message: str) -> None:
    with pytest.raises(InputError) as e:
        parse_config({"constraints": constraints})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unreachable_budgets_name_the_smallest_achievable() -> None:
    space, screen, _ = quickstart_screen()
    with pytest.raises(InputError, match=r"constraints.max_latency_ms: .* the smallest achievable is"):
        resolve(Constraints(max_latency_ms=1e-6), space, screen)
    # Each budget alone is reachable, together nothing fits: named, with both smallest values.
    fast = resolve(Constraints(max_latency_quantile=0.01), space, screen)
    small_kb = resolve(Constraints(max_size_quantile=0.01), space, screen).constraints.max_size_kb
    with pytest.raises(InputError):
        resolve(
            Constraints(max_latency_ms=fast.constraints.max_latency_ms * 1.0001, max_size_kb=small_kb * 0.2),
            space,
            screen,
        )
    with pytest.raises(InputError, match="max_memory_quantile: needs a latency table with memory_bytes"):
        resolve(Constraints(max_memory_quantile=0.5), space, screen)


def timing(median: float, spread: float) -> RepeatedTiming:
    return RepeatedTiming(median, spread, (median - spread, median, median + spread), 150)


def test_check_demands_a_margin_of_three_spreads() -> None:
    budgets = Constraints(max_latency_ms=1.0, max_size_kb=10)
    ok, reasons = check(timing(0.90, 0.03), 10 * 1024, budgets)
    assert ok and len(reasons) == 2
    ok, reasons = check(timing(0.95, 0.03), 100, budgets)  # under, but 0.05 < 3 x 0.03
    assert not ok and "too close to call" in reasons[0]
    ok, _ = check(timing(1.01, 0.0), 100, budgets)
    assert not ok
    ok, reasons = check(timing(0.5, 0.0), 10 * 1024 + 1, budgets)
    assert not ok and "file 10241 bytes > budget" in reasons[1]
    ok, reasons = check(None, 100, budgets)  # another device: the prediction stands, and says so
    assert ok and "not measured here" in reasons[0]
    assert SPREAD_FACTOR == 3.0


def fake_trial(number: int, accuracy: float, latency: float, state: str = "complete", epochs: int = 3):
    attrs = {
        "state": state,
        "arch": f"a{number}",
        "canonical": f"a{number}",
        "predicted_latency_ms": latency,
        "exact_size_bytes": 1000,
        "fidelity_epochs": epochs,
    }
    return SimpleNamespace(number=number, values=[accuracy, latency], user_attrs=attrs)


def test_pick_takes_the_top_three_and_more_near_the_budget() -> None:
    budgets = Constraints(max_latency_ms=1.0)
    trials = [
        fake_trial(0, 0.90, 0.5),
        fake_trial(1, 0.95, 0.95),  # near the budget: one more candidate
        fake_trial(2, 0.93, 0.6),
        fake_trial(3, 0.92, 0.7),
        fake_trial(4, 0.91, 0.4),
        fake_trial(5, 0.99, 0.3, epochs=1),  # a lower fidelity: not comparable
        fake_trial(6, 0.99, 0.3, state="infeasible"),
    ]
    assert [t.number for t in pick(trials, budgets, k=3)] == [1, 2, 3, 4]
    assert [t.number for t in pick(trials, Constraints(max_latency_ms=10.0), k=3)] == [1, 2, 3]
    assert [t.number for t in pick(trials, budgets, k=3, limit=2)] == [1, 2]
    assert pick([], budgets) == []


def test_exact_sizes_are_kept_across_runs_of_the_same_space(tmp_path: Path, monkeypatch) -> None:
    """Near the size budget a candidate's file is converted to know its exact size; a later run
    of the same space and task reads it from the cache instead of converting again."""
    import random

    from latency_models.runtimes.litert import LiteRT
    from nas.data import TaskSpec, load_task
    from nas.runner import exact_size_fn

    monkeypatch.setenv("EDGE_NAS_CACHE", str(tmp_path / "cache"))
    options = {"widths": [[8], [8], [16]], "depths": [1], "kernels": [3], "expands": [1, 3]}
    space = get_space("mbconv", options)
    data = load_task(TaskSpec("digits"))
    arch = space.random(random.Random(0))
    first = exact_size_fn(space, data, "int8", options)(arch)
    assert first > 1000 and list((tmp_path / "cache" / "sizes").glob("*.json"))

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(LiteRT, "convert", no_conversion)
    assert exact_size_fn(space, data, "int8", options)(arch) == first
    # another task (or space options) is another cache: it must convert
    with pytest.raises(AssertionError, match="converted again"):
        exact_size_fn(space, data, "int8", {**options, "kernels": [3, 5]})(arch)


def test_the_guard_band_never_screens_out_nearly_everything() -> None:
    """A guard wider than the budget's room (tiny networks timed on a noisy machine) is narrowed
    so that 5% of random architectures meeting the other budgets stay under the guarded budget;
    a guard with room to spare is kept as it is."""
    import random

    from nas.calibration import GUARD_KEEPS_SHARE, _guard_leaving_candidates

    space, screen, constraints = quickstart_screen()
    budgets = resolve(Constraints(max_latency_quantile=0.06, max_size_kb=40), space, screen).constraints
    said: list[str] = []
    guard = _guard_leaving_candidates(space, screen, budgets, 0.9, said.append)
    assert 0 <= guard < 0.9 and said and "narrowed" in said[0]
    guarded = replace(
        screen, constraints=replace(budgets, max_latency_ms=budgets.max_latency_ms * (1 - guard))
    )
    archs = [space.random(random.Random(s)) for s in range(2000)]
    share = np.mean([p.feasible for p in guarded(archs)])
    assert share >= GUARD_KEEPS_SHARE * 0.6, share  # another sample than the guard's own
    assert _guard_leaving_candidates(space, screen, budgets, 0.001, said.append) == 0.001
