from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces import InputError, TaskShape, get_space
from search_spaces.mbconv import MbconvArch, MbconvSpace

TASK = TaskShape((28, 28, 1), 10)
SPACE = get_space("mbconv")


@given(st.integers(0, 10**9))
@settings(max_examples=200, deadline=None)
def test_arch_string_round_trips(seed: int) -> None:
    arch = SPACE.random(random.Random(seed))
    text = str(arch)
    assert SPACE.parse(text) == arch
    assert hash(SPACE.parse(text)) == hash(arch)
    assert SPACE.from_params(SPACE.to_params(arch)) == arch


@given(st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_parser_never_crashes_with_anything_but_input_error(text: str) -> None:
    try:
        arch = SPACE.parse(text)
    except InputError:
        return
    assert isinstance(arch, MbconvArch)
    assert str(arch) == text.strip()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("d1-k3-e1-w16-se0-relu6", "expected 3 stages"),
        ("d1-k4-e1-w16-se0-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6", "kernel"),
        ("d1-k3-e1-w99-se0-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6", "width"),
        ("d1-k3-e1-w16-se2-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6", "se0 or se1"),
        ("d1-k3-e1-w16+d1", "must look like"),
        ("dx-k3-e1-w16-se0-relu6+d1-k3-e1-w16-se0-relu6+d1-k3-e1-w24-se0-relu6", "integer"),
    ],
)
def test_bad_arch_strings_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        SPACE.parse(text)


def test_options_are_validated_when_built() -> None:
    with pytest.raises(InputError, match="kernels"):
        get_space("mbconv", {"kernels": [4]})
    with pytest.raises(InputError, match="unknown option 'kernel'"):
        get_space("mbconv", {"kernel": [3]})
    with pytest.raises(InputError, match="one tuple per stage"):
        get_space("mbconv", {"widths": [[8]]})
    with pytest.raises(InputError, match="valid spaces"):
        get_space("nope")


def test_blocks_follow_the_network_and_are_enumerated() -> None:
    small = MbconvSpace(widths=((8, 16), (16, 24), (24, 40)), depths=(1, 2), kernels=(3, 5), expands=(1, 6))
    every = set(small.all_blocks(TASK))
    rng = random.Random(0)
    for _ in range(300):
        arch = small.random(rng)
        blocks = small.blocks(arch, TASK)
        assert set(blocks) <= every
        assert blocks[0].kind == "conv" and blocks[-1].kind == "pool_dense"
        assert len(blocks) == 2 + sum(s.depth for s in arch.stages)
        # each block's input is the previous block's output
        for a, b in zip(blocks[1:-1], blocks[2:-1], strict=False):
            assert b.in_c == a.out_c


def test_build_matches_blocks_and_size_terms() -> None:
    arch = SPACE.parse("d2-k5-e1-w16-se1-hswish+d2-k3-e4-w24-se0-relu6+d1-k7-e6-w48-se1-relu6")
    model = SPACE.build(arch, TASK)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    terms = SPACE.size_terms(arch, TASK)
    weights = sum(w.size for layer in model.layers for w in layer.get_weights() if w.ndim > 1)
    assert terms.weights == weights
    # every block builds alone for profiling, with the block's own input shape
    for block in SPACE.blocks(arch, TASK)[:3]:
        m = SPACE.block_model(block)
        assert m.input_shape[1:] == (block.in_h, block.in_w, block.in_c)
