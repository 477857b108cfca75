"""The search-space contract (``search_spaces._base.SearchSpace``), checked on every space the
registry holds: adding a space to ``search_spaces.SPACES`` is all it takes for it to be tested
here, and a space that breaks the contract fails (the last test registers one that does)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from search_spaces import SPACES, Block, InputError, SearchSpace, TaskShape, get_space

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TASK = TaskShape((32, 32, 3), 10)
# Options a space needs to exist at all (everything else is the space's defaults).
REQUIRED_OPTIONS: dict[str, dict[str, Any]] = {
    "keras-tuner": {"build": f"{EXAMPLES / 'kt_mnist.py'}:build"},
}


def check_space(space: SearchSpace, task: TaskShape = TASK, n: int = 4) -> None:
    """Every promise of ``SearchSpace``'s docstring, on ``n`` random architectures (one built)."""
    rng = random.Random(0)
    choices = space.choices()
    assert choices, f"{space.name}: no choices"
    assert space.size() >= 1
    all_blocks = space.all_blocks(task)
    for _ in range(n):
        arch = space.random(rng)
        hash(arch)
        assert space.parse(str(arch)) == arch, f"{space.name}: parse(str(arch)) != arch for {arch}"
        params = space.to_params(arch)
        assert set(params) == {c.name for c in choices}, f"{space.name}: to_params names"
        assert space.from_params(params) == arch, f"{space.name}: from_params(to_params(arch)) != arch"
        assert space.sample(optuna.trial.FixedTrial(params)) == arch, f"{space.name}: sample(trial)"
        canonical = space.canonical(arch)
        assert space.canonical(canonical) == canonical, f"{space.name}: canonical is not idempotent"
        blocks = space.blocks(arch, task)
        assert blocks and all(isinstance(b, Block) for b in blocks), f"{space.name}: blocks"
        check_what_is_known_before_training(space, arch)
        if all_blocks is not None:
            missing = set(blocks) - set(all_blocks)
            assert not missing, f"{space.name}: all_blocks lacks {sorted(map(str, missing))[:2]}"
    for extreme in (space.cheapest(), space.largest()):
        assert extreme is None or space.parse(str(extreme)) == extreme, f"{space.name}: cheapest/largest"
    # Building is the slow part (seconds for the larger spaces): one network.
    model = space.build(arch, task)
    assert tuple(model.inputs[0].shape[1:]) == task.input_shape, f"{space.name}: input shape"
    assert int(model.outputs[0].shape[-1]) == task.num_classes, f"{space.name}: output size"
    assert space.size_terms(arch, task).weights > 0, f"{space.name}: size terms"
    with pytest.raises(InputError) as bad:
        space.parse("not an architecture \x00")
    assert "\n" not in str(bad.value) and len(str(bad.value)) < 250, f"{space.name}: parse error"


def check_what_is_known_before_training(space: SearchSpace, arch: Any) -> None:
    """The optional hooks a strategy and the latency models use instead of the space's name."""
    import numpy as np

    features = space.structure_features(arch)
    assert all(0.0 <= float(v) <= 1.0 for v in features), f"{space.name}: structure_features in [0, 1]"
    assert len(space.structure_features(space.canonical(arch))) == len(features)
    assert all(float(v) >= 0.0 for v in space.path_features(arch)), f"{space.name}: path_features"
    choices = space.choices()
    values = [tuple(c.values) for c in choices]
    params = space.to_params(arch)
    codes = np.array([[v.index(params[c.name]) for c, v in zip(choices, values, strict=True)]])
    live = space.live_choices(codes, values)
    assert live is None or np.asarray(live).shape == codes.shape, f"{space.name}: live_choices shape"
    for group in space.choice_groups():
        assert group and all(0 <= p < len(choices) for p in group), f"{space.name}: choice_groups"
        assert len({values[p] for p in group}) == 1, f"{space.name}: a choice group mixes values"


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_registered_space_keeps_the_contract(name: str) -> None:
    check_space(get_space(name, REQUIRED_OPTIONS.get(name)))


def test_one_cost_order_gives_the_cheapest_and_the_largest_network() -> None:
    """``SearchSpace.value_cost`` is the one ordering behind the budgets' smallest achievable value
    and the calibration networks: numbers by value, ``none`` < ``skip_connect`` < other ops."""
    nb201 = get_space("nb201")
    assert str(nb201.cheapest()) == "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    assert set(nb201.to_params(nb201.largest()).values()) == {"nor_conv_1x1"}
    mbconv = get_space("mbconv")
    cheap, large = mbconv.to_params(mbconv.cheapest()), mbconv.to_params(mbconv.largest())
    for c in mbconv.choices():
        assert cheap[c.name] == min(c.values, key=mbconv.value_cost), c.name
        assert large[c.name] == max(c.values, key=mbconv.value_cost), c.name
    assert {v for k, v in cheap.items() if k.endswith("_act")} <= {"relu6"}


@dataclass(frozen=True)
class _Forgetful(SearchSpace):
    """A space whose architecture strings lose a decision: parse(str(arch)) != arch."""

    name = "forgetful"

    def choices(self) -> tuple[Any, ...]:
        from search_spaces import Choice

        return (Choice("a", (1, 2)), Choice("b", (3, 4)))

    def from_params(self, params: Any) -> str:
        return f"{params['a']}-{params['b']}"

    def to_params(self, arch: Any) -> dict[str, Any]:
        a, b = str(arch).split("-")
        return {"a": int(a), "b": int(b)}

    def parse(self, text: str) -> str:
        a = text.split("-")[0]
        if not a.isdigit():
            raise InputError(f"arch: expected 'a-b', got {text[:20]!r}.")
        return f"{a}-3"  # forgets b

    def build(self, arch: Any, task: TaskShape) -> Any:
        raise NotImplementedError

    def blocks(self, arch: Any, task: TaskShape) -> list[Block]:
        return []


def test_a_space_that_breaks_the_contract_fails_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SPACES, "forgetful", f"{__name__}:_Forgetful")
    with pytest.raises(AssertionError, match="parse"):
        check_space(get_space("forgetful"), n=8)
