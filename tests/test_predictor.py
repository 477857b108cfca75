from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from latency_models.predictor import LinearCorrection, TablePredictor, load_predictor
from latency_models.size import SizeModel
from latency_models.table import Entry, LatencyTable, TableMeta
from search_spaces import InputError, SizeTerms, TaskShape, get_space

TASK = TaskShape((28, 28, 1), 10)
OPTIONS = {"widths": [[8, 16], [16, 24], [24, 40]], "depths": [1, 2], "kernels": [3, 5], "expands": [1, 6]}


def synthetic_table() -> LatencyTable:
    """A table whose costs follow the blocks' MACs (an input file, like any user's table)."""
    space = get_space("mbconv", OPTIONS)
    entries = {}
    for b in space.all_blocks(TASK):
        macs = b.in_h * b.in_w * (b.in_c * b.expand * (b.kernel**2 + b.out_c + b.in_c) + 1)
        entries[b] = Entry(1e-6 * macs + 0.003, 0.0, 10)
    return LatencyTable(TableMeta("synthetic"), entries)


def test_linear_correction_recovers_overhead() -> None:
    raw = np.array([0.1, 0.2, 0.4, 0.8])
    fit = LinearCorrection.fit(raw, 1.1 * raw + 0.05)
    assert fit.scale == pytest.approx(1.1) and fit.offset_ms == pytest.approx(0.05)
    one = LinearCorrection.fit([0.3], [0.4])
    assert one.scale == 1.0 and one.offset_ms == pytest.approx(0.1)


def test_table_predictor_prices_sums_and_round_trips(tmp_path: Path) -> None:
    space = get_space("mbconv", OPTIONS)
    table = synthetic_table()
    p = TablePredictor(space="mbconv", device="synthetic", table=table, task=TASK, space_options=OPTIONS)
    archs = [space.random(random.Random(i)) for i in range(50)]
    raw = p.predict(archs)
    expected = [sum(table.entries[b].mean_ms for b in space.blocks(a, TASK)) for a in archs]
    assert np.allclose(raw, expected)
    corrected = p.with_correction(archs[:5], [1.2 * r + 0.01 for r in raw[:5]])
    assert np.allclose(corrected.predict(archs), 1.2 * raw + 0.01)
    corrected.save(tmp_path / "p.json")
    loaded = load_predictor(tmp_path / "p.json")
    assert np.allclose(loaded.predict(archs), corrected.predict(archs))
    assert "pickle" not in (tmp_path / "p.json").read_text()


def test_predictor_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text('{"format": "edge-nas-latency-predictor", "version": 1, "kind": "magic"}')
    with pytest.raises(InputError, match="unknown predictor kind 'magic'; valid kinds"):
        load_predictor(f)
    f.write_text('{"format": "something"}')
    with pytest.raises(InputError, match="format"):
        load_predictor(f)


def test_size_model_fit_is_exact_on_linear_data() -> None:
    terms = [
        SizeTerms(w, c, t) for w, c, t in [(1000, 50, 10), (5000, 120, 20), (20000, 300, 31), (800, 40, 12)]
    ]
    sizes = [t.weights + 20 * t.channels + 100 * t.tensors + 2500 for t in terms]
    m = SizeModel.fit(terms, sizes)
    for t, s in zip(terms, sizes, strict=True):
        assert m.predict(t) == pytest.approx(s, rel=1e-6)
