from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_models.table import INVOKE_KEY, Entry, LatencyTable, MissingEntryError, TableMeta
from search_spaces import Block, InputError

from .conftest import assert_one_line_error

B1 = Block("mbconv", 14, 14, 16, 24, 3, 2, 6.0, True, "relu6")
B2 = Block("conv", 28, 28, 1, 16, 3, 2, act="relu6")


def table() -> LatencyTable:
    return LatencyTable(
        TableMeta("pixel7", "litert", "2.3.0", "int8", 1),
        {B1: Entry(0.5, 0.01, 100), B2: Entry(0.2, 0.0, 50)},
    )


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    table().save(path)
    loaded = LatencyTable.load(path)
    assert loaded.entries == table().entries
    assert loaded.meta.device == "pixel7" and loaded.meta.threads == 1
    assert loaded.price([B1, B2, B1]) == pytest.approx(1.2)


def test_price_counts_the_invoke_cost_once() -> None:
    """A profiled table records the per-invoke cost every block paid once on its own; a network
    pays it once in all."""
    base = table()
    t = LatencyTable(replace(base.meta, extra={INVOKE_KEY: 0.05}), base.entries)
    assert t.price([B1, B2, B1]) == pytest.approx(1.2 - 2 * 0.05)
    assert t.price([B2]) == pytest.approx(0.2)
    assert LatencyTable._from_json(t.to_json(), "t.json").price([B1, B2]) == pytest.approx(0.65)


@pytest.mark.parametrize("bad", [-0.1, "fast", float("nan"), True])
def test_bad_invoke_cost_is_an_input_error(bad: object) -> None:
    with pytest.raises(InputError, match=r"extra.invoke_overhead_ms: expected a finite number"):
        TableMeta("dev", extra={INVOKE_KEY: bad})


def test_missing_entry_names_block_and_nearest() -> None:
    other = Block("mbconv", 14, 14, 16, 24, 5, 2, 6.0, True, "relu6")
    with pytest.raises(
        MissingEntryError,
        match=r"no entry for block mbconv-14x14x16-o24-k5.*nearest entries: mbconv-14x14x16-o24-k3",
    ):
        table().price([other])


def _csv(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("# device: dev\n" + body)
    return p


HEADER = "kind,in_h,in_w,in_c,out_c,kernel,stride,expand,se,act,mean_ms\n"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("kind,in_h,in_w\nconv,1,1\n", "missing column(s)"),
        (HEADER + "conv,28,28,1,16,3,2,1,0,relu6,-1\n", "line 3: mean_ms"),
        (HEADER + "conv,28,28,1,16,3,2,1,0,relu6,nan\n", "mean_ms"),
        (HEADER + "conv,28,28,1,16,3,2,1,0,relu6,0\n", "mean_ms"),
        (
            HEADER + "conv,28,28,1,16,3,2,1,0,relu6,1\nconv,28,28,1,16,3,2,1,0,relu6,2\n",
            "line 4: duplicate block",
        ),
        (HEADER + "conv,28,28,x,16,3,2,1,0,relu6,1\n", "in_c"),
        (HEADER, "no rows"),
    ],
)
def test_bad_csv_tables(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        LatencyTable.load(_csv(tmp_path, body))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_rows_that_agree_are_fine(tmp_path: Path) -> None:
    p = _csv(tmp_path, HEADER + "conv,28,28,1,16,3,2,1,0,relu6,1\nconv,28,28,1,16,3,2,1,0,relu6,1\n")
    assert len(LatencyTable.load(p)) == 1


def test_bad_json_tables(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    doc = json.loads(table().to_json())
    doc["version"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="version 99 is not supported"):
        LatencyTable.load(p)
    doc = json.loads(table().to_json())
    del doc["entries"][0]["mean_ms"]
    p.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"entry 0: missing field\(s\) \['mean_ms'\]"):
        LatencyTable.load(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        LatencyTable.load(p)
    with pytest.raises(InputError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")


@given(
    st.lists(
        st.tuples(
            st.integers(1, 64), st.integers(1, 512), st.sampled_from([1, 3, 5, 7]), st.floats(1e-4, 1e3)
        ),
        min_size=1,
        max_size=30,
        unique_by=lambda t: t[:3],
    )
)
@settings(max_examples=50, deadline=None)
def test_property_csv_and_json_round_trip(rows: list[tuple[int, int, int, float]]) -> None:
    import tempfile

    entries = {Block("mbconv", h, h, c, c, k, 1, 3.0): Entry(ms, 0.0, 3) for h, c, k, ms in rows}
    t = LatencyTable(TableMeta("d"), entries)
    with tempfile.TemporaryDirectory() as d:
        for suffix in (".csv", ".json"):
            t.save(Path(d) / f"t{suffix}")
            back = LatencyTable.load(Path(d) / f"t{suffix}")
            assert back.entries.keys() == entries.keys()
            for b, e in entries.items():
                assert math.isclose(back.entries[b].mean_ms, e.mean_ms, rel_tol=1e-12)


def test_cli_reports_a_bad_table_in_one_line(run_nas, tmp_path: Path) -> None:
    bad = _csv(tmp_path, HEADER + "conv,28,28,1,16,3,2,1,0,relu6,-3\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"latency:\n  device: phone\n  table: {bad}\nsearch:\n  trainings: 2\n")
    proc = run_nas("run", str(cfg), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, "t.csv", "mean_ms")
    assert not (tmp_path / "out" / "report.json").exists()
