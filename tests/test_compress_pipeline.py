"""End-to-end compression on a real tiny model: rows measured from exported files, targets,
exporters (tflite, tflm C array, onnx, openvino) re-loaded from disk, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compress import StageError, compress_and_export
from compress.exporters import EXPORTERS, c_array, parse_c_array
from search_spaces import InputError

pytest_plugins = ["tests.test_compress_fixtures"]  # the shared real data and trained tiny model


@pytest.mark.slow
def test_pipeline_rows_are_measured_from_files(tiny, cdata, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = compress_and_export(tiny, cdata, "prune:0.5:epochs=1,int8:100", ["tflite"], out)
    rows = report.rows
    assert [r.stage for r in rows] == [
        "original",
        "prune:sparsity=0.5:epochs=1",
        "int8:calibration=100",
    ]
    original, pruned, int8 = rows
    assert original.dtype == "fp32" and int8.dtype == "int8"
    # Pruning leaves the file size alone but zeros compress; int8 shrinks the file (on a model this
    # tiny, per-channel quantization parameters are a large share of it).
    assert pruned.size_bytes == original.size_bytes and pruned.gzip_bytes < 0.9 * original.gzip_bytes
    assert pruned.sparsity > 0.2 and original.sparsity < 0.05
    assert int8.size_bytes < 0.9 * original.size_bytes
    assert original.macs == pruned.macs == int8.macs > 0
    assert all(r.latency_ms > 0 for r in rows)
    assert int8.files == ("model_int8.tflite",) and not original.files
    saved = json.loads((out / "compress_report.json").read_text())
    assert saved["files"] == ["model_int8.tflite"]
    assert [r["stage"] for r in saved["rows"]] == [r.stage for r in rows]
    assert sorted(p.name for p in out.iterdir()) == ["compress_report.json", "model_int8.tflite"]
    # The exported file itself gives the reported accuracy when run again.
    from latency_models.runtimes.litert import LiteRTSession

    session = LiteRTSession((out / "model_int8.tflite").read_bytes())
    acc = float(np.mean(np.argmax(session.run(cdata.x_test), 1) == cdata.y_test))
    assert acc == pytest.approx(int8.accuracy)
    assert abs(int8.accuracy - original.accuracy) < 0.15


@pytest.mark.slow
def test_all_formats_export_and_agree(tiny, cdata, tmp_path: Path) -> None:
    """Every format in the registry (adding an exporter is enough for it to be tested here): its
    files are written, re-loaded in their own runtime and measured, and their accuracy is the
    model's within int8's loss."""
    out = tmp_path / "all"
    report = compress_and_export(tiny, cdata, ["int8:100"], sorted(EXPORTERS), out)
    by = {e.format: e for e in report.exports}
    assert set(by) == set(EXPORTERS)
    for fmt, exported in by.items():
        assert exported.files and all((out / name).stat().st_size > 0 for name in exported.files), fmt
        assert exported.size_bytes > 0 and exported.latency_ms > 0, fmt
        assert abs(exported.accuracy - report.rows[-1].accuracy) <= 0.05, fmt
    for fmt in ("onnx", "openvino"):
        assert by[fmt].agreement is not None and by[fmt].agreement >= 0.99
    assert by["tflm"].arena_bytes and by["tflm"].arena_bytes > 1000
    assert "compiles" in by["tflm"].notes[0]
    assert parse_c_array((out / "model_data.cc").read_text()) == (out / "model_int8.tflite").read_bytes()
    assert abs(by["tflm"].accuracy - by["tflite"].accuracy) < 0.02
    for name in ("model.onnx", "model.xml", "model.bin", "model_data.h"):
        assert (out / name).stat().st_size > 0


def test_c_array_round_trip() -> None:
    data = bytes(range(256)) * 3 + b"\x00\x07"
    source, header = c_array(data)
    assert parse_c_array(source) == data
    assert "g_model_data_len" in header and f"= {len(data)};" in source


@pytest.mark.slow
def test_target_size_stops_at_the_first_stage_that_fits(tiny, cdata, tmp_path: Path) -> None:
    first = compress_and_export(tiny, cdata, "fp16,int8:50", ["tflite"], tmp_path / "a")
    sizes = {r.stage: r.size_bytes for r in first.rows[1:]}
    target_kb = sizes["int8:calibration=50"] / 1024
    expected = next(stage for stage, size in sizes.items() if size <= target_kb * 1024)
    report = compress_and_export(
        tiny,
        cdata,
        "fp16,int8:50,dynamic",
        ["tflite"],
        tmp_path / "b",
        target_size_kb=target_kb,
        max_accuracy_drop=50,
    )
    assert report.target is not None and report.target.met, report.target
    assert report.target.stage == expected
    stages = [r.stage for r in report.rows]
    assert stages == ["original", *list(sizes)[: list(sizes).index(expected) + 1]]
    assert "dynamic" not in stages
    assert report.exports[0].size_bytes <= target_kb * 1024


@pytest.mark.slow
def test_unreachable_target_says_what_was_reached(tiny, cdata, tmp_path: Path) -> None:
    report = compress_and_export(tiny, cdata, "fp16", ["tflite"], tmp_path / "c", target_size_kb=1.0)
    assert report.target is not None and not report.target.met
    assert "not met" in report.target.reason and "fp16" in report.target.reason


@pytest.mark.slow
def test_mixed_precision_keeps_bad_layers_float(tiny, cdata, tmp_path: Path) -> None:
    report = compress_and_export(tiny, cdata, ["mixed:max_error=0.05"], ["tflite"], tmp_path / "m")
    export = report.exports[0]
    assert export.files == ("model_int8_mixed.tflite",)
    assert any(n.startswith("kept float") for n in export.notes), export.notes
    assert export.accuracy > 0.5


def test_failing_stage_names_layer_and_writes_nothing(cdata, tmp_path: Path) -> None:
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((28, 28, 1))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.LayerNormalization(name="odd_norm")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))
    out = tmp_path / "fail"
    with pytest.raises(StageError, match=r"stage qat: layer 'odd_norm'"):
        compress_and_export(model, cdata, "int8:20,qat", ["tflite"], out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind either


def test_bad_arguments_fail_before_any_work(tiny, cdata, tmp_path: Path) -> None:
    from search_spaces.backend import keras

    k = keras()
    cases = [
        (
            dict(formats=["tflite", "coreml"]),
            "unknown format 'coreml'; valid formats: ['executorch', 'onnx', 'openvino', 'tflite', 'tflm', 'tvm']",
        ),
        (dict(pipeline="prune:1.5"), "stage prune: sparsity must be in (0, 1), got 1.5."),
        (dict(target_size_kb=-1), "target_size_kb: expected a number > 0, got -1."),
        (dict(max_accuracy_drop=-0.5), "max_accuracy_drop: expected a number >= 0"),
    ]
    for overrides, message in cases:
        kwargs = {
            "model": tiny,
            "data": cdata,
            "pipeline": "int8",
            "formats": ["tflite"],
            "out_dir": tmp_path / "x",
        }
        kwargs.update(overrides)
        with pytest.raises(InputError) as err:
            compress_and_export(**kwargs)
        assert message in str(err.value)
    inputs = k.Input((16,))
    wrong_input = k.Model(inputs, k.layers.Dense(10, activation="softmax")(inputs))
    with pytest.raises(
        InputError, match=r"model: expected input shape \(28, 28, 1\) \(the task's\), got \(16,\)"
    ):
        compress_and_export(wrong_input, cdata, "int8", ["tflite"], tmp_path / "x")
    inputs = k.Input((28, 28, 1))
    teacher = k.Model(inputs, k.layers.Dense(12, activation="softmax")(k.layers.Flatten()(inputs)))
    with pytest.raises(InputError, match="teacher: expected 10 classes"):
        compress_and_export(tiny, cdata, "distill", ["tflite"], tmp_path / "x", teacher=teacher)
    assert list(tmp_path.iterdir()) == []
