"""The nb201 and fbnet spaces: parsing, canonical forms against NAS-Bench-201's own grouping,
parameters round trips, and real trainable tf_keras models whose blocks and sizes agree."""

from __future__ import annotations

import csv
import gzip
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from search_spaces import InputError, TaskShape, get_space
from search_spaces.fbnet import FBNET_OPS, NUM_LAYERS, FbnetSpace
from search_spaces.nb201 import OPS, Nb201Arch, Nb201Space, functional_string, unique_string

ROOT = Path(__file__).resolve().parent.parent
ACCURACY = ROOT / "nas" / "data" / "nb201" / "accuracy_200ep.csv.gz"
DATA = Path(__file__).resolve().parent / "data"
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_registry_builds_both_spaces() -> None:
    assert isinstance(get_space("nb201"), Nb201Space)
    assert isinstance(get_space("fbnet"), FbnetSpace)
    assert get_space("nb201", {"channels": 4}).channels == 4
    with pytest.raises(InputError, match="unknown option 'width'; valid options"):
        get_space("nb201", {"width": 3})


def test_nb201_size_and_round_trips() -> None:
    space = Nb201Space()
    assert space.size() == 15625
    arch = space.parse(EXAMPLE)
    assert str(arch) == EXAMPLE
    assert space.from_params(space.to_params(arch)) == arch
    rng = random.Random(3)
    for _ in range(200):
        a = space.random(rng)
        assert space.parse(str(a)) == a
        assert space.from_params(space.to_params(a)) == a


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|", "expected 3 nodes"),
        (
            "|conv~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
            "unknown operation 'conv'",
        ),
        (
            "|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
            "node 1 edge 0 expected 'op~0'",
        ),
        (
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
            "node 2 expected 2 edges",
        ),
        (
            "nor_conv_3x3~0+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
            "wrapped in '|'",
        ),
    ],
)
def test_nb201_parse_names_the_fault(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        Nb201Space().parse(text)


def test_nb201_narrowed_ops_reject_others() -> None:
    space = Nb201Space(ops=("skip_connect", "nor_conv_3x3"))
    with pytest.raises(InputError, match="expected one of"):
        space.parse(EXAMPLE)
    assert space.size() == 64


def test_nb201_canonical_matches_the_benchmarks_unique_strings() -> None:
    """All 15,625 cells: our canonical form induces exactly NATS-Bench's 6,466 groups."""
    space = Nb201Space()
    with gzip.open(ACCURACY, "rt") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15625
    by_unique: dict[str, set[str]] = {}
    by_canonical: dict[str, set[str]] = {}
    for row in rows:
        arch = space.parse(row["ArchitectureString"])
        assert unique_string(arch) == row["UniqueString"]
        canon = str(space.canonical(arch))
        by_unique.setdefault(row["UniqueString"], set()).add(canon)
        by_canonical.setdefault(canon, set()).add(row["UniqueString"])
    assert len(by_unique) == 6466
    assert all(len(v) == 1 for v in by_unique.values())
    assert all(len(v) == 1 for v in by_canonical.values())


def test_nb201_functional_string_merges_twins_and_only_coarsens_the_groups() -> None:
    """Cells computing the same function share a functional string; it never splits a group."""
    space = Nb201Space()
    twin_a = space.parse("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|nor_conv_3x3~1|skip_connect~2|")
    twin_b = space.parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    assert unique_string(twin_a) != unique_string(twin_b)
    assert functional_string(twin_a) == functional_string(twin_b) == "((0)@nor_conv_3x3)@nor_conv_3x3+0"
    # A cell whose output sees no live edge computes zero, whatever its dead edges hold.
    dead = space.parse("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|none~1|none~2|")
    assert functional_string(dead) == "#"
    by_unique: dict[str, set[str]] = {}
    for combo in itertools.product(OPS, repeat=6):
        arch = Nb201Arch(combo)
        by_unique.setdefault(unique_string(arch), set()).add(functional_string(arch))
    assert all(len(v) == 1 for v in by_unique.values())
    assert len({f for v in by_unique.values() for f in v}) == 5390


def test_nb201_canonical_is_idempotent_member_of_its_class() -> None:
    space = Nb201Space()
    rng = random.Random(5)
    for _ in range(300):
        a = space.random(rng)
        c = space.canonical(a)
        assert space.canonical(c) == c
        assert unique_string(c) == unique_string(a)
        assert str(c) <= str(a) or tuple(OPS.index(o) for o in c.ops) <= tuple(OPS.index(o) for o in a.ops)


def test_fbnet_parses_every_arch_of_the_data_sample() -> None:
    space = FbnetSpace()
    with gzip.open(DATA / "fbnet_lat_sample.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        arch = space.parse(row["arch_str"])
        assert str(arch) == row["arch_str"]
        assert [FBNET_OPS.index(o) for o in arch.ops] == [int(i) for i in row["op_idx_list"].split("-")]
        assert space.from_params(space.to_params(arch)) == arch
    assert space.size() == 9**NUM_LAYERS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k3_e1 " * 21, "expected 22 space-separated block names, got 21"),
        ("k3_e1 " * 21 + "k7_e6", "layer 21: unknown block 'k7_e6'; valid blocks"),
        ("", "got 0"),
    ],
)
def test_fbnet_parse_names_the_fault(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        FbnetSpace().parse(text)


def test_fbnet_options_are_validated() -> None:
    with pytest.raises(InputError, match="`strides` expected 7 values"):
        FbnetSpace(strides=(1, 2))
    with pytest.raises(InputError, match="`width_mult` expected"):
        FbnetSpace(width_mult=0)


def _weights(model) -> int:  # noqa: ANN001 - a tf_keras model
    return sum(int(w.size) for layer in model.layers for w in layer.get_weights() if w.ndim > 1)


@pytest.mark.parametrize("space_name", ["nb201", "fbnet"])
def test_build_gives_models_whose_weights_match_size_terms(space_name: str) -> None:
    space = get_space(space_name)
    task = TaskShape((28, 28, 1), 10)
    rng = random.Random(11)
    archs = [space.random(rng) for _ in range(2)]
    archs.append(
        space.parse(
            "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
            if space_name == "nb201"
            else " ".join(["skip"] * 22)
        )
    )
    for arch in archs:
        model = space.build(arch, task)
        assert model.input_shape == (None, 28, 28, 1)
        assert model.output_shape == (None, 10)
        assert _weights(model) == space.size_terms(arch, task).weights
        blocks = space.blocks(arch, task)
        assert blocks[0].in_h == 28 and blocks[-1].out_c == 10


def test_blocks_list_only_computing_ops_for_nb201() -> None:
    space = Nb201Space(cells_per_stage=2)
    task = TaskShape((32, 32, 3), 10)
    # Node 2 is all-zero, so the conv on edge 2->3 computes nothing and is not priced.
    arch = space.parse("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    kinds = [b.kind for b in space.blocks(arch, task)]
    assert kinds.count("nor_conv_3x3") == 3 * 2  # only edge 1<-0, 2 cells per stage, 3 stages
    assert kinds.count("nor_conv_1x1") == 3 * 2
    assert kinds.count("resblock") == 2


@pytest.mark.slow
@pytest.mark.parametrize("space_name", ["nb201", "fbnet"])
def test_a_model_learns_real_digits(space_name: str) -> None:
    """Real training on scikit-learn's 8x8 digits, upsampled to 16x16: loss must drop clearly."""
    from sklearn.datasets import load_digits

    from search_spaces.backend import keras, set_seed

    set_seed(0)
    digits = load_digits()
    x = digits.images[:600].astype("float32") / 16.0
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[..., None]
    y = digits.target[:600]
    # fbnet is 22 layers deep: keep the stem at full resolution and give it an epoch more.
    space = get_space(space_name) if space_name == "nb201" else get_space("fbnet", {"stem_stride": 1})
    arch = space.parse(EXAMPLE) if space_name == "nb201" else space.parse("k3_e3 " * 22)
    model = space.build(arch, TaskShape((16, 16, 1), 10))
    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    hist = model.fit(x, y, epochs=4 if space_name == "nb201" else 5, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.8 * hist.history["loss"][0]
    assert hist.history["accuracy"][-1] > 0.25  # chance is 0.1
