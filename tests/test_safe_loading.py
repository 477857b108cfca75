"""Files a hostile or careless user hands us: bounded parsing, no code run, numbers checked,
and latency tables that keep every field through CSV."""

from __future__ import annotations

import io
import json
import math
import os
import resource
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_models.predictor import LinearCorrection, TablePredictor, load_predictor
from latency_models.table import INVOKE_KEY, OVERHEAD_KEY, PERSISTENT_KEY, Entry, LatencyTable, TableMeta
from nas.config import load_config
from nas.data import _load_npz
from search_spaces import Block, InputError, TaskShape
from search_spaces.safeio import MAX_DEPTH, brief, loads_json, loads_yaml

from .conftest import assert_one_line_error

B1 = Block("mbconv", 14, 14, 16, 24, 3, 2, 6.0, True, "relu6")
B2 = Block("conv", 28, 28, 1, 16, 3, 2, act="relu6")
BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "space: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
)


# -- JSON and YAML --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text", [b"[" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 65 + b"]" * 65]
)
def test_deep_json_is_refused_before_parsing(text: bytes) -> None:
    with pytest.raises(InputError, match=f"nested at most {MAX_DEPTH} levels deep"):
        loads_json(text, "t.json")


def test_json_depth_ignores_brackets_in_strings_and_allows_our_files() -> None:
    assert loads_json(b'{"a": "' + b"[" * 1000 + b'"}', "t.json") == {"a": "[" * 1000}
    assert loads_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, "t.json") is not None


def test_huge_integer_in_json_is_one_line() -> None:
    with pytest.raises(InputError, match="numbers of at most 4300 digits"):
        loads_json(b"[" + b"9" * 5000 + b"]", "t.json")


def test_yaml_alias_bomb_costs_no_memory_and_one_short_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 500
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="at most 16 uses of YAML aliases") as e:
        load_config(path)
    assert len(str(e.value)) < 300
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KB


def test_a_few_aliases_still_load() -> None:
    assert loads_yaml("x: &x {a: 1}\ny: *x\n", "c.yaml") == {"x": {"a": 1}, "y": {"a": 1}}


def test_brief_bounds_any_value() -> None:
    nested: list = []
    for _ in range(10_000):
        nested = [nested]
    assert len(brief(nested)) < 100
    assert len(brief("x" * 10**6)) < 100


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "at least one section besides 'task'"),
        ("task:\n  data: digits\n", "at least one section besides 'task'"),
        ("search:\n  seed: -1\n", "search.seed: expected an int in [0, 2**32)"),
        ("task:\n  seed: -5\nsearch: {}\n", "task.seed: expected an int in [0, 2**32)"),
        ("search:\n  strategy: annealing\n", "search.strategy: expected one of ["),
        ("export:\n  pipeline: [int8, shrink]\n", "export.pipeline[1]: stage: unknown stage 'shrink'"),
        ("export:\n  pipeline: [distill]\n", "export.pipeline[0]: stage distill needs a teacher"),
        ("export:\n  formats: [tflite, coreml]\n", "export.formats[1]: format: unknown format 'coreml'"),
        ("export:\n  formats: [onnx]\n", "export.formats: expected a list including 'tflite'"),
        ("training:\n  learning_rate: 1e-2\n", "YAML reads exponents without a dot as text"),
    ],
)
def test_whole_job_is_checked_at_load(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(path)
    assert needle in str(e.value), str(e.value)
    assert str(e.value).count(str(path)) == 1  # the file is named once


# -- latency tables -------------------------------------------------------------------------
def _table(**extra: object) -> LatencyTable:
    return LatencyTable(
        TableMeta("pixel7", "litert", "2.3.0", "int8", 1, "profiled here", extra),
        {B1: Entry(0.5, 0.01, 100, 4096), B2: Entry(0.2, 0.0, 50, 1024)},
    )


FULL_EXTRA = {
    INVOKE_KEY: 0.05,
    "input_shape": [28, 28, 1],
    "num_classes": 10,
    "space": "mbconv",
    "space_options": {"stages": 2, "widths": [8, 16]},
    "machine": {"cpu": "x86", "cores": 2},
    "fingerprint": "abc123",
    PERSISTENT_KEY: {B1.key: 512, B2.key: 256},
    OVERHEAD_KEY: 128,
}


@pytest.mark.parametrize("key", sorted(FULL_EXTRA))
def test_csv_keeps_every_extra_field(tmp_path: Path, key: str) -> None:
    original = _table(**{key: FULL_EXTRA[key]})
    original.save(tmp_path / "t.csv")
    loaded = LatencyTable.load(tmp_path / "t.csv")
    assert loaded == original
    assert loaded.price([B1, B2, B1]) == original.price([B1, B2, B1])


@pytest.mark.parametrize("field", ["device", "runtime", "runtime_version", "dtype", "threads", "source"])
def test_csv_keeps_every_meta_field(tmp_path: Path, field: str) -> None:
    odd = {
        "device": " phone, with spaces ",
        "runtime": '"quoted"',
        "runtime_version": "2.3\n4",
        "dtype": "fp16",
        "threads": 4,
        "source": "# not a comment: really",
    }
    original = LatencyTable(replace(_table().meta, **{field: odd[field]}), _table().entries)
    original.save(tmp_path / "t.csv")
    assert LatencyTable.load(tmp_path / "t.csv") == original


def test_csv_prices_every_network_as_json_does(tmp_path: Path) -> None:
    original = _table(**FULL_EXTRA)
    original.save(tmp_path / "t.csv")
    original.save(tmp_path / "t.json")
    a, b = LatencyTable.load(tmp_path / "t.csv"), LatencyTable.load(tmp_path / "t.json")
    assert a == b == original
    for blocks in ([B1], [B2, B1], [B1, B1, B2, B2]):
        assert a.price(blocks) == b.price(blocks)
        assert a.memory(blocks) == b.memory(blocks)


_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
_floats = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    device=_names,
    source=st.text(max_size=20),
    invoke=st.floats(min_value=0, max_value=1, allow_nan=False),
    rows=st.lists(
        st.tuples(st.integers(1, 64), st.integers(1, 64), _floats, _floats, st.integers(1, 10**6)),
        min_size=1,
        max_size=6,
        unique_by=lambda r: (r[0], r[1]),
    ),
)
def test_any_table_round_trips_through_csv(
    tmp_path_factory: pytest.TempPathFactory, device: str, source: str, invoke: float, rows: list
) -> None:
    entries = {
        Block("conv", h, h, c, c, 3, 1, expand=1.5, act="relu6"): Entry(mean, std, count)
        for h, c, mean, std, count in rows
    }
    original = LatencyTable(TableMeta(device, source=source, extra={INVOKE_KEY: invoke}), entries)
    path = tmp_path_factory.mktemp("rt") / "t.csv"
    original.save(path)
    loaded = LatencyTable.load(path)
    assert loaded == original
    assert loaded.price(list(entries)) == original.price(list(entries))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["entries"][0].update(count=10**400), "count: expected a finite number"),
        (lambda d: d["entries"][0].update(count=2**60), "count: expected an integer below 2**53"),
        (lambda d: d["entries"][0].update(mean_ms=1e308 * 10), "mean_ms"),
        (lambda d: d.update(extra=[1, 2]), "extra: expected a mapping of metadata"),
        (lambda d: d.update(extra={"num_classes": "ten"}), "extra.num_classes: expected an int"),
        (lambda d: d.update(extra={"input_shape": [28, -1]}), "extra.input_shape[1]"),
        (lambda d: d.update(threads=10**30), "threads: expected an int in [1, 4096]"),
        (lambda d: d["entries"][0].update(kind={"a": 1}), "kind: expected a string"),
    ],
)
def test_bad_table_numbers_are_one_line(tmp_path: Path, mutate, needle: str) -> None:
    doc = json.loads(_table().to_json())
    mutate(doc)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc).replace("Infinity", "1e999"))
    with pytest.raises(InputError, match=None) as e:
        LatencyTable.load(path)
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_csv_with_bom_and_long_field(tmp_path: Path) -> None:
    text = _table().to_csv()
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert LatencyTable.load(bom) == _table()
    long = tmp_path / "long.csv"
    long.write_text(text + "conv,1,1,1,1,1,1,1,0," + "x" * 200_000 + ",,1\n")
    with pytest.raises(InputError, match=r"long.csv: line \d+: .*(characters|not valid CSV)"):
        LatencyTable.load(long)


# -- predictors -----------------------------------------------------------------------------
def _predictor_doc() -> dict:
    p = TablePredictor(space="mbconv", device="pixel7", table=_table(), task=TaskShape((28, 28, 1), 10))
    return json.loads(p.to_json())


@pytest.mark.parametrize(
    ("correction", "needle"),
    [
        ({"scale": float("nan")}, "correction.scale: expected a finite number > 0, got nan"),
        ({"scale": -3}, "correction.scale: expected a finite number > 0, got -3"),
        ({"scale": 0}, "correction.scale"),
        ({"scale": "1.0"}, "correction.scale"),
        ({"offset_ms": float("inf")}, "correction.offset_ms: expected a finite number"),
        ({"n_measurements": -1}, "correction.n_measurements"),
        ({"slope": 2}, "correction.slope: unknown key"),
    ],
)
def test_predictor_correction_is_checked_at_load(tmp_path: Path, correction: dict, needle: str) -> None:
    doc = _predictor_doc()
    doc["correction"].update(correction)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        load_predictor(path)
    assert needle in str(e.value) and str(e.value).startswith(str(path)), str(e.value)


def test_a_predictor_never_prices_a_network_at_or_below_zero() -> None:
    import random

    from search_spaces import get_space

    space, task = get_space("mbconv"), TaskShape((28, 28, 1), 10)
    arch = space.random(random.Random(0))
    table = LatencyTable(TableMeta("pixel7"), {b: Entry(0.1) for b in space.blocks(arch, task)})
    p = TablePredictor(space="mbconv", device="pixel7", table=table, task=task)
    assert p.predict([arch])[0] > 0
    negative = replace(p, correction=LinearCorrection(1.0, -100.0, 3))
    with pytest.raises(InputError, match="expected a latency > 0 ms"):
        negative.predict([arch])


def test_deep_predictor_is_one_line(run_nas, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("[" * 200_000)
    archs = tmp_path / "a.csv"
    archs.write_text("arch\nx\n")
    proc = run_nas(
        "latency",
        "predict",
        "--predictor",
        str(path),
        "--archs",
        str(archs),
        "--out",
        str(tmp_path / "o.csv"),
    )
    assert_one_line_error(proc, "p.json", "nested at most")
    assert not (tmp_path / "o.csv").exists()


# -- .npz tasks -----------------------------------------------------------------------------
def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


X = np.random.default_rng(0).random((40, 4)).astype(np.float32)
Y = np.arange(40) % 3


def test_npz_header_claiming_terabytes_is_refused_before_allocating(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**4)}
    )
    y = io.BytesIO()
    np.save(y, Y)
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", y.getvalue())
    with pytest.raises(InputError, match="header claims shape"):
        _load_npz(path)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(_npz(p, x=X, y=Y).read_bytes()[:300]), "truncated or damaged zip"),
        (lambda p: np.save(open(p, "wb"), X), "got a single .npy array"),
        (lambda p: _npz(p, x=np.float32(1), y=np.int64(1)), "got a single number (0-d)"),
        (lambda p: _npz(p, x=X, y=np.array([0, 1, 2, 1_000_000] * 10)), "1,000,001 classes"),
        (lambda p: _npz(p, x=X.astype(complex), y=Y), "complex"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(100)), "zip"),
    ],
)
def test_bad_npz_is_one_line(tmp_path: Path, make, needle: str) -> None:
    path = tmp_path / "d.npz"
    make(path)
    with pytest.raises(InputError) as e:
        _load_npz(path)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


# -- models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lambda_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model whose Lambda layer creates a marker file when its code runs, as .h5 and .keras."""
    from search_spaces.backend import keras

    k = keras()
    folder = tmp_path_factory.mktemp("models")
    marker = folder / "ran"
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]"
    inputs = k.Input((8, 8, 1))
    x = k.layers.Lambda(eval(code))(inputs)  # noqa: S307 - the hostile model under test
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(k.layers.Flatten()(x)))
    model.save(folder / "m.h5")
    model.save(folder / "m.keras")
    marker.unlink(missing_ok=True)
    return folder / "m.h5", folder / "m.keras", marker


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("as_teacher", [False, True])
def test_a_model_file_runs_no_code(
    run_nas, tmp_path: Path, lambda_models, which: int, as_teacher: bool
) -> None:
    path, marker = lambda_models[which], lambda_models[2]
    out = tmp_path / "out"
    if as_teacher:
        student = tmp_path / "s.keras"
        from search_spaces.backend import keras

        k = keras()
        inputs = k.Input((8, 8, 1))
        k.Model(inputs, k.layers.Dense(10)(k.layers.Flatten()(inputs))).save(student)
        args = [str(student), "--teacher", str(path)]
    else:
        args = [str(path)]
    proc = run_nas("compress", *args, "--task", "digits", "--pipeline", "int8", "--out", str(out))
    assert_one_line_error(proc, path.name)
    assert "--trust-model-code" in proc.stderr
    assert not marker.exists() and not out.exists()


def test_trust_model_code_lets_a_legacy_model_load(lambda_models) -> None:
    from compress.modelio import load_keras_model

    path, _, marker = lambda_models
    with pytest.raises(InputError, match="--trust-model-code"):
        load_keras_model(path)
    assert load_keras_model(path, trust_code=True) is not None
    marker.unlink(missing_ok=True)


def test_finite_latencies_only(tmp_path: Path) -> None:
    """No table entry, correction or prediction that is NaN, infinite or <= 0 gets through."""
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(InputError):
            Entry(bad)
        with pytest.raises(InputError):
            LinearCorrection(scale=bad)
    assert math.isfinite(LinearCorrection(2.0, -0.1, 3)(1.0))


def test_a_keras_config_naming_a_foreign_module_is_refused(tmp_path: Path) -> None:
    """tf_keras imports whatever ``module`` a .keras config names, in safe mode too."""
    from compress.modelio import check_model_file
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((8, 8, 1))
    model = k.Model(inputs, k.layers.Dense(10, activation="relu")(k.layers.Flatten()(inputs)))
    good = tmp_path / "good.keras"
    model.save(good)
    assert check_model_file(good) == "keras"
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"module": "keras.layers"', b'"module": "os"', 1)
            dst.writestr(item, data)
    with pytest.raises(InputError, match="imports module 'os'"):
        check_model_file(bad)
    assert check_model_file(bad, trust_code=True) == "keras"


def test_config_reads_the_predictor_at_load(tmp_path: Path) -> None:
    """A hand-edited predictor with a NaN scale stops `nas run` at load, before any work."""
    doc = _predictor_doc()
    doc["correction"]["scale"] = float("nan")
    (tmp_path / "p.json").write_text(json.dumps(doc))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("latency:\n  device: pixel7\n  predictor: p.json\n")
    with pytest.raises(InputError, match=r"p.json: correction.scale: expected a finite number > 0, got nan"):
        load_config(cfg)
