"""Property-based tests of every parser a user reaches: arbitrary bytes, and valid files with
bytes flipped, inserted or cut, give a valid result or an ``InputError`` of one short line,
never another exception (a traceback at the CLI). A quick run by default; ``-m slow`` runs many
more examples."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latency_models.measurements import read_arch_list, read_measurements, read_reference
from latency_models.ofa import load_ofa_yaml
from latency_models.predictor import TablePredictor, load_predictor
from latency_models.table import Entry, LatencyTable, TableMeta
from nas.config import load_config
from nas.data import _load_npz
from search_spaces import InputError, TaskShape, get_space
from search_spaces.safeio import load_json

ROOT = Path(__file__).resolve().parent.parent
OFA = ROOT / "latency_models" / "data" / "ofa"
OPTIONS = {"strides": [1, 2], "widths": [[8, 16], [16, 24]], "depths": [1], "kernels": [3], "expands": [1, 6]}
SPACE = get_space("mbconv", OPTIONS)
TASK = TaskShape((8, 8, 1), 10)


def _table() -> LatencyTable:
    blocks = SPACE.all_blocks(TASK)
    return LatencyTable(
        TableMeta("phone", "litert", "2", "int8", 1, "t", {"invoke_overhead_ms": 0.001, "num_classes": 10}),
        {b: Entry(0.01 + i / 1000, 0.001, 5, 100 + i) for i, b in enumerate(blocks)},
    )


def _archs() -> list[str]:
    rng = random.Random(0)
    return list(dict.fromkeys(str(SPACE.random(rng)) for _ in range(6)))


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(0).random((40, 4, 4, 1)).astype(np.float32), y=np.arange(40) % 3)
    return buf.getvalue()


def _config() -> bytes:
    return (
        "task: {data: digits, seed: 0}\nspace:\n  name: mbconv\n  options: " + json.dumps(OPTIONS) + "\n"
        "constraints: {max_size_kb: 24}\nsearch: {strategy: random, trainings: 2}\n"
        "training: {epochs: 1, final_epochs: 1}\nexport: {pipeline: [int8], formats: [tflite]}\n"
    ).encode()


def _net_config(path: Path) -> Any:
    space = get_space("ofa-mbv3", {"width_mult": 1.0})
    return space.from_net_config(load_json(path, "net.config"), str(path))


# name -> (valid bytes, file suffix, parse(path))
PARSERS: dict[str, tuple[bytes, str, Callable[[Path], Any]]] = {
    "config": (_config(), ".yaml", load_config),
    "table-json": (_table().to_json().encode(), ".json", LatencyTable.load),
    "table-csv": (_table().to_csv().encode(), ".csv", LatencyTable.load),
    "predictor": (
        TablePredictor(space="mbconv", device="phone", table=_table(), task=TASK, space_options=OPTIONS)
        .to_json()
        .encode(),
        ".json",
        load_predictor,
    ),
    "measurements": (
        ("arch,latency_ms\n" + "".join(f"{a},{0.1 + i / 10}\n" for i, a in enumerate(_archs()))).encode(),
        ".csv",
        lambda p: read_measurements(p, SPACE),
    ),
    "arch-list": (
        ("arch\n" + "".join(f"{a}\n" for a in _archs())).encode(),
        ".csv",
        lambda p: read_arch_list(p, SPACE),
    ),
    "reference": (
        ("arch,d1,d2\n" + "".join(f"{a},{i + 1},{i + 2}\n" for i, a in enumerate(_archs()))).encode(),
        ".csv",
        lambda p: read_reference(p, SPACE),
    ),
    "npz-task": (_npz(), ".npz", _load_npz),
    "ofa-yaml": (
        "\n".join((OFA / "note10_160_lookup_table.yaml").read_text().splitlines()[:60]).encode() + b"\n",
        ".yaml",
        load_ofa_yaml,
    ),
    "ofa-net-config": (
        sorted((OFA / "specialized").glob("*.net.config"))[0].read_bytes(),
        ".net.config",
        _net_config,
    ),
}


def _check(name: str, data: bytes, folder: Path) -> None:
    _, suffix, parse = PARSERS[name]
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    try:
        parse(path)
    except InputError as e:
        message = str(e).replace(str(path), "FILE")  # the limit is on what we add to the user's path
        assert "\n" not in message and 0 < len(message) < 250, message[:500]
    # any other exception fails the test: it would be a traceback at the CLI


_edits = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "cut"]),
        st.floats(0, 1),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


def _mutate(valid: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    data = bytearray(valid)
    for op, where, chunk in edits:
        i = int(where * max(len(data) - 1, 0))
        if op == "flip" and data:
            data[i : i + len(chunk)] = chunk
        elif op == "insert":
            data[i:i] = chunk
        elif op == "delete":
            del data[i : i + len(chunk)]
        elif op == "cut":
            del data[i:]
    return bytes(data)


_TOKENS = [
    b"[",
    b"{",
    b"}",
    b"]",
    b"&a ",
    b"*a",
    b"nan",
    b"-1",
    b"1e999",
    b"\x00",
    b",",
    b":",
    b"\n",
    b'"',
    b"#",
    b"9" * 50,
]
_structured = st.lists(st.sampled_from(_TOKENS), max_size=200).map(b"".join)
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_valid_baseline_parses(name: str, tmp_path: Path) -> None:
    valid, suffix, parse = PARSERS[name]
    path = tmp_path / f"input{suffix}"
    path.write_bytes(valid)
    assert parse(path) is not None


@pytest.mark.parametrize("name", sorted(PARSERS))
@QUICK
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(name: str, data: bytes, tmp_path: Path) -> None:
    _check(name, data, tmp_path)


@pytest.mark.parametrize("name", sorted(PARSERS))
@QUICK
@given(edits=_edits)
def test_mutated_valid_file(name: str, edits: list, tmp_path: Path) -> None:
    _check(name, _mutate(PARSERS[name][0], edits), tmp_path)


@pytest.mark.parametrize("name", sorted(PARSERS))
@QUICK
@given(data=_structured)
def test_structure_tokens(name: str, data: bytes, tmp_path: Path) -> None:
    _check(name, data, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PARSERS))
@LONG
@given(edits=_edits, tail=_structured)
def test_mutated_valid_file_long(name: str, edits: list, tail: bytes, tmp_path: Path) -> None:
    _check(name, _mutate(PARSERS[name][0], edits) + tail, tmp_path)


def _json_leaves(doc: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _json_leaves(v, (*path, k))] + [path]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _json_leaves(v, (*path, i))] + [path]
    return [path]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.mark.parametrize("name", ["table-json", "predictor", "ofa-net-config"])
@QUICK
@given(pick=st.floats(0, 1), value=_values)
def test_any_json_field_replaced_by_any_value(name: str, pick: float, value: Any, tmp_path: Path) -> None:
    """Every field of a valid JSON file, replaced by a value of another type or range."""
    doc = json.loads(PARSERS[name][0])
    leaves = [p for p in _json_leaves(doc) if p]
    path = leaves[int(pick * (len(leaves) - 1))]
    cur = doc
    for key in path[:-1]:
        cur = cur[key]
    cur[path[-1]] = value
    _check(name, json.dumps(doc).encode(), tmp_path)
