"""Measurement, arch-list and reference CSVs: strict reading (file, line, problem), atomic writing,
and property-based tests of the arch-string parsers and the readers."""

from __future__ import annotations

import csv
import gzip
import math
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latency_models.measurements import read_arch_list, read_measurements, read_reference, write_latencies
from search_spaces import InputError
from search_spaces.fbnet import FBNET_OPS, NUM_LAYERS, FbnetSpace
from search_spaces.nb201 import OPS, Nb201Arch, Nb201Space

DATA = Path(__file__).resolve().parent / "data"
NB = Nb201Space()
FB = FbnetSpace()
A1 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
A2 = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_measurements_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    write_latencies(out, [A1, A2], [12.5, 0.1 + 0.2])
    m = read_measurements(out, NB)
    assert m.texts == (A1, A2)
    assert m.archs == (NB.parse(A1), NB.parse(A2))
    assert list(m.latency_ms) == [12.5, 0.1 + 0.2]  # repr keeps every digit
    assert out.read_text().splitlines()[0] == "arch,latency_ms"


def test_extra_columns_and_blank_lines_are_fine(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.csv", f"arch,latency_ms,p10_ms\n\n{A1},3.5,3.1\n\n{A2},4,3.9\n")
    m = read_measurements(p, NB)
    assert list(m.latency_ms) == [3.5, 4.0]


def test_agreeing_duplicates_are_kept_once(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.csv", f"arch,latency_ms\n{A1},3.5\n{A2},4\n{A1},3.5\n")
    assert len(read_measurements(p, NB)) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "empty file"),
        ("arch,latency_ms\n", "expected at least one measurement"),
        (f"arch,ms\n{A1},3\n", "line 1: expected a column 'latency_ms'"),
        (f"name,latency_ms\n{A1},3\n", "line 1: expected a column 'arch'"),
        (
            f"arch,latency_ms\n{A1},3\n{A2},nan\n",
            "line 3: latency_ms: expected a finite latency > 0 ms, got 'nan'",
        ),
        (f"arch,latency_ms\n{A1},-1\n", "line 2: latency_ms: expected a finite latency > 0 ms, got '-1'"),
        (f"arch,latency_ms\n{A1},0\n", "line 2: latency_ms: expected a finite latency > 0 ms, got '0'"),
        (f"arch,latency_ms\n{A1},inf\n", "line 2: latency_ms: expected a finite latency > 0 ms"),
        (f"arch,latency_ms\n{A1},fast\n", "line 2: latency_ms: expected a number of ms, got 'fast'"),
        (f"arch,latency_ms\n{A1},3\n{A1},4\n", "line 3: arch .* was measured at 3.0 ms on line 2"),
        (f"arch,latency_ms\n{A1}\n", "line 2: expected 2 fields, got 1"),
        ("arch,latency_ms\n|conv~0|+|a~0|b~1|+|c~0|d~1|e~2|,3\n", "line 2: arch .*unknown operation 'conv'"),
        ("arch,latency_ms\nk3_e1,3\n", "line 2: arch 'k3_e1': expected 3 nodes"),
    ],
)
def test_bad_measurements_name_file_line_and_problem(tmp_path: Path, body: str, message: str) -> None:
    p = _write(tmp_path / "m.csv", body)
    with pytest.raises(InputError, match=message) as info:
        read_measurements(p, NB)
    text = str(info.value)
    assert text.startswith(str(p)) and "\n" not in text


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_measurements(tmp_path / "nope.csv", NB)


def test_arch_list_keeps_order_and_duplicates(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.csv", f"arch\n{A2}\n{A1}\n{A2}\n")
    a = read_arch_list(p, NB)
    assert a.texts == (A2, A1, A2)
    with pytest.raises(
        InputError, match="line 3: expected an arch string in column 'arch', got an empty cell"
    ):
        read_arch_list(_write(tmp_path / "b.csv", f"arch,x\n{A1},1\n,2\n"), NB)
    with pytest.raises(InputError, match="expected at least one architecture"):
        read_arch_list(_write(tmp_path / "c.csv", "arch\n"), NB)


def test_reference_reads_devices_and_validates(tmp_path: Path) -> None:
    p = _write(tmp_path / "r.csv", f"arch,pixel3,raspi4\n{A1},3.5,9\n{A2},1.25,4\n")
    r = read_reference(p, NB)
    assert r.devices == ("pixel3", "raspi4")
    assert r.matrix.tolist() == [[3.5, 9.0], [1.25, 4.0]]
    cases = [
        ("arch\n" + A1 + "\n", "line 1: expected at least one device column"),
        (f"arch,a,a\n{A1},1,2\n", "line 1: device 'a' appears more than once"),
        (f"arch,a,b\n{A1},1,-2\n", "line 2: b: expected a finite latency > 0 ms, got '-2'"),
        (f"arch,a,b\n{A1},1,2\n{A1},1,3\n", "line 3: arch .* repeats line 2 with different latencies"),
        (f"arch,a,b\n{A1},1\n", "line 2: expected 3 fields, got 2"),
    ]
    for body, message in cases:
        with pytest.raises(InputError, match=message):
            read_reference(_write(tmp_path / "bad.csv", body), NB)


def _nb201_reference(tmp_path: Path) -> tuple[Path, int]:
    """The vendored sample of real NB201 latencies written as a reference CSV (x 40 rows by repeats)."""
    with gzip.open(DATA / "nb201_lat_sample.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    devices = [c for c in rows[0] if c not in ("arch_idx", "arch_str")]
    out = tmp_path / "ref.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", *devices])
        for row in rows:
            w.writerow([row["arch_str"], *(row[d] for d in devices)])
    return out, len(rows)


def test_real_reference_sample_loads(tmp_path: Path) -> None:
    path, n = _nb201_reference(tmp_path)
    r = read_reference(path, NB)
    assert len(r) == n and len(r.devices) == 27
    assert (r.matrix > 0).all()


def test_fifteen_thousand_rows_load_fast(tmp_path: Path) -> None:
    """Every NB201 cell as an arch list and a measurement file (a size check, not a timing test)."""
    rng = random.Random(0)
    archs = list(dict.fromkeys(str(NB.random(rng)) for _ in range(15000)))
    write_latencies(tmp_path / "m.csv", archs, [1.0 + i % 7 for i in range(len(archs))])
    t0 = time.perf_counter()
    m = read_measurements(tmp_path / "m.csv", NB)
    elapsed = time.perf_counter() - t0
    assert len(m) == len(archs) > 8000
    # Generous: a loaded CI box; the benchmark reports the real rate.
    assert elapsed < 10


# -- properties -----------------------------------------------------------------------------------
nb_ops = st.lists(st.sampled_from(OPS), min_size=6, max_size=6)
fb_ops = st.lists(st.sampled_from(FBNET_OPS), min_size=NUM_LAYERS, max_size=NUM_LAYERS)


@settings(deadline=None)  # a loaded machine, and the first canonical() builds its table
@given(nb_ops)
def test_nb201_string_round_trip(ops: list[str]) -> None:
    arch = Nb201Arch(tuple(ops))
    assert NB.parse(str(arch)) == arch
    assert NB.parse(f"  {arch}\n") == arch
    assert NB.canonical(NB.canonical(arch)) == NB.canonical(arch)


@settings(deadline=None)  # a loaded machine, and the first canonical() builds its table
@given(fb_ops)
def test_fbnet_string_round_trip(ops: list[str]) -> None:
    text = " ".join(ops)
    assert str(FB.parse(text)) == text
    assert FB.parse("  " + "   ".join(ops) + " ") == FB.parse(text)


@settings(deadline=None)  # a loaded machine, and the first canonical() builds its table
@given(st.text(max_size=120))
def test_nb201_parser_rejects_garbage_with_input_error_only(text: str) -> None:
    try:
        arch = NB.parse(text)
    except InputError as e:
        assert "\n" not in str(e).strip("\n") or "\n" in text
    else:
        assert str(arch) == text.strip()


@settings(deadline=None)  # a loaded machine, and the first canonical() builds its table
@given(st.text(alphabet=st.sampled_from(list("k3_e15gskip 26")), max_size=200))
def test_fbnet_parser_rejects_garbage_with_input_error_only(text: str) -> None:
    try:
        arch = FB.parse(text)
    except InputError:
        return
    assert str(arch) == " ".join(text.split())


latency = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(st.lists(st.tuples(nb_ops, latency), min_size=1, max_size=30))
def test_measurement_files_round_trip(tmp_path: Path, rows: list[tuple[list[str], float]]) -> None:
    seen: dict[str, float] = {}
    for ops, value in rows:
        seen.setdefault(str(Nb201Arch(tuple(ops))), value)
    path = tmp_path / "m.csv"
    write_latencies(path, list(seen), list(seen.values()))
    m = read_measurements(path, NB)
    assert m.texts == tuple(seen)
    assert list(m.latency_ms) == list(seen.values())


bad_value = st.sampled_from(["nan", "NaN", "-1", "0", "0.0", "-0", "inf", "-inf", "", "x", "1e400"])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(st.lists(latency, min_size=1, max_size=20), bad_value, st.integers(min_value=0, max_value=19))
def test_one_bad_latency_is_found_on_its_line(
    tmp_path: Path, good: list[float], bad: str, where: int
) -> None:
    rng = random.Random(len(good))
    archs = list(dict.fromkeys(str(NB.random(rng)) for _ in range(len(good))))
    values = [repr(v) for v in good[: len(archs)]]
    where = where % len(values)
    values[where] = bad
    path = tmp_path / "m.csv"
    path.write_text("arch,latency_ms\n" + "".join(f"{a},{v}\n" for a, v in zip(archs, values, strict=True)))
    with pytest.raises(InputError, match=f"line {where + 2}: latency_ms"):
        read_measurements(path, NB)
    assert math.isfinite(len(values))
