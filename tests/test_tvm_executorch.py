"""Apache TVM and ExecuTorch: real compiles and real runtimes. The ONNX -> PyTorch converter
matches ONNX Runtime op by op, both exporters write files that reload in their own runtime and
agree with the fp32 .tflite, a layer no converter knows is named with its step while the other
formats are still written, and a cross target is saved but not run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm", reason="the tvm extra: pip install -e '.[tvm]'")
pytest.importorskip("executorch", reason="the executorch extra: pip install -e '.[executorch]'")

from compress import ExportFailed, compress_and_export  # noqa: E402
from latency_models.runtimes import ConversionError, get_runtime  # noqa: E402
from search_spaces import Block, InputError, get_space  # noqa: E402

pytest_plugins = ["tests.test_compress_fixtures"]

BLOCKS = [
    Block("mbconv", 12, 12, 8, 16, kernel=3, stride=2, expand=3, se=True, act="hswish"),
    Block("mbconv", 12, 12, 8, 8, kernel=5, stride=1, expand=1, se=False, act="relu6"),
]


def _odd_model():
    """A model with a layer tf2onnx writes as an op neither TVM nor our PyTorch mapping has."""
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((28, 28, 1))
    x = k.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = k.layers.Lambda(lambda t: k.backend.cumsum(t, axis=1), name="odd_cumsum")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"se{int(b.se)}-{b.act}")
def test_onnx_to_torch_matches_onnxruntime(block: Block) -> None:
    import torch

    from latency_models.runtimes.onnx_torch import onnx_to_torch
    from latency_models.runtimes.onnxruntime import OnnxSession, keras_to_onnx

    model = get_space("mbconv").block_model(block)
    data = keras_to_onnx(model)
    x = np.random.default_rng(1).standard_normal((1, 12, 12, 8)).astype(np.float32)
    expected = OnnxSession(data).run(x)
    with torch.no_grad():
        got = onnx_to_torch(data)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_op_is_named_with_its_layer_and_step() -> None:
    from latency_models.runtimes.onnx_torch import onnx_to_torch
    from latency_models.runtimes.onnxruntime import keras_to_onnx
    from latency_models.runtimes.tvm import compile_onnx

    data = keras_to_onnx(_odd_model())
    with pytest.raises(ConversionError, match=r"step onnx -> pytorch: layer 'odd_cumsum' .*op CumSum"):
        onnx_to_torch(data)
    # TVM's frontend knows CumSum: it compiles what our PyTorch mapping cannot.
    library, suffix = compile_onnx(data)
    assert suffix == ".so" and library[:4] == b"\x7fELF"


def test_bad_tvm_target_is_one_line() -> None:
    from latency_models.runtimes.tvm import check_target

    with pytest.raises(InputError, match="expected an LLVM CPU target"):
        check_target("cuda")
    assert check_target("llvm -mtriple=aarch64-linux-gnu").attrs["mtriple"] == "aarch64-linux-gnu"


def test_runtimes_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    for name in ("tvm", "executorch"):
        with pytest.raises(InputError, match=r"supports \['fp32'\]"):
            get_runtime(name).convert(None, "int8")
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program")
    from latency_models.runtimes import executorch, tvm

    with pytest.raises(InputError, match="not a program ExecuTorch can load"):
        executorch.load_file(bad)
    with pytest.raises(InputError, match="not found"):
        tvm.load_file(tmp_path / "missing.so")


def test_exports_reload_in_their_runtimes_and_agree(tiny, cdata, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = compress_and_export(
        tiny,
        cdata,
        [],
        ["tflite", "tvm", "executorch"],
        out,
        tvm_target="llvm -mtriple=aarch64-linux-gnu",
    )
    by = {e.format: e for e in report.exports}
    tflite = by["tflite"]
    assert by["tvm"].files == ("model_tvm.so", "model_tvm_aarch64-linux-gnu.tar")
    assert by["executorch"].files == ("model_fp32.pte",)
    for fmt in ("tvm", "executorch"):
        e = by[fmt]
        assert e.dtype == "fp32" and e.agreement is not None and e.agreement >= 0.99
        assert abs(e.accuracy - tflite.accuracy) <= 0.005 and e.latency_ms > 0
    assert (out / "model_tvm_aarch64-linux-gnu.tar").stat().st_size > 1000
    assert any("not run here" in n for n in by["tvm"].notes)
    # The files on disk are what was measured: reload them and predict again.
    from latency_models.runtimes import executorch, tvm

    for session in (tvm.load_file(out / "model_tvm.so"), executorch.load_file(out / "model_fp32.pte")):
        acc = float(np.mean(np.argmax(session.run(cdata.x_test), 1) == cdata.y_test))
        assert acc == pytest.approx(by["tflite"].accuracy, abs=0.005)
    saved = json.loads((out / "compress_report.json").read_text())
    assert {e["format"] for e in saved["exports"]} == {"tflite", "tvm", "executorch"}
    assert saved["failed"] == {}
    assert {"apache-tvm", "executorch", "torch"} <= set(saved["meta"]["versions"])


@pytest.mark.slow
def test_executorch_int8_stays_within_floor(tiny, cdata, tmp_path: Path) -> None:
    report = compress_and_export(tiny, cdata, ["int8:100"], ["tflite", "executorch", "tvm"], tmp_path / "q")
    by = {e.format: e for e in report.exports}
    assert by["executorch"].dtype == "int8" and by["executorch"].files == ("model_int8.pte",)
    assert by["executorch"].size_bytes < 0.5 * (tmp_path / "q" / "model_tvm.so").stat().st_size
    assert by["executorch"].accuracy >= by["tflite"].accuracy - 0.015
    assert by["tvm"].dtype == "fp32" and any("no QNN" in n for n in by["tvm"].notes)


def test_failed_format_is_named_and_the_others_are_written(cdata, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        ExportFailed, match=r"export executorch: step onnx -> pytorch: layer 'odd_cumsum'"
    ) as err:
        compress_and_export(_odd_model(), cdata, [], ["tflite", "executorch", "onnx"], out)
    assert sorted(p.name for p in out.iterdir()) == [
        "compress_report.json",
        "model.onnx",
        "model_fp32.tflite",
    ]
    saved = json.loads((out / "compress_report.json").read_text())
    assert list(saved["failed"]) == ["executorch"] and "odd_cumsum" in saved["failed"]["executorch"]
    assert [e.format for e in err.value.report.exports] == ["tflite", "onnx"]


@pytest.mark.parametrize("name", ["tvm", "executorch"])
def test_runtime_times_a_block(name: str) -> None:
    model = get_space("mbconv").block_model(BLOCKS[1])
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 8)).astype(np.float32)
    import gc

    rt = get_runtime(name)
    session = rt.load(rt.convert(model, "fp32"), threads=1)
    gc.collect()  # a session must hold what its runtime needs (an ExecuTorch method its program)
    np.testing.assert_allclose(session.run(x), model(x).numpy(), atol=1e-4)
    t = session.time(x[0], runs=5, warmup=1, min_total_s=0.0)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms


def test_missing_extra_names_the_pip_install(monkeypatch) -> None:
    import importlib.util

    from compress.exporters import get_exporter

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tvm" else real(n, *a))
    with pytest.raises(
        InputError, match=r"format tvm: tvm is not installed here; run: pip install 'edge-nas\[tvm\]'"
    ):
        get_exporter("tvm")


def test_config_takes_the_new_formats_and_a_tvm_target() -> None:
    from nas.config import ExportConfig

    cfg = ExportConfig(formats=("tflite", "tvm", "executorch"), tvm_target="llvm -mtriple=aarch64-linux-gnu")
    assert cfg.tvm_target and "executorch" in cfg.formats
    with pytest.raises(InputError, match="export.tvm_target: expected export.formats to include 'tvm'"):
        ExportConfig(formats=("tflite",), tvm_target="llvm")


@pytest.mark.parametrize("runtime", ["tvm", "executorch"])
def test_latency_profile_and_measure_cli(runtime: str, tmp_path: Path) -> None:
    from latency_models.table import LatencyTable
    from nas.cli import main

    small = '{"strides": [1, 2], "widths": [[8], [16]], "stem_width": 8, "head_width": 16}'
    base = ["--space", "mbconv", "--space-options", small, "--input-shape", "16,16,1", "--num-classes", "4"]
    base += ["--runtime", runtime, "--dtype", "fp32"]
    archs, table_path, measured = tmp_path / "a.csv", tmp_path / "t.json", tmp_path / "m.csv"
    archs.write_text("arch\nd1-k3-e1-w8-se0-relu6+d1-k3-e3-w16-se0-relu6\n")
    assert (
        main(["latency", "profile", *base, "--archs", str(archs), "--no-cache", "--out", str(table_path)])
        == 0
    )
    table = LatencyTable.load(table_path)
    assert table.meta.runtime == runtime and len(table) >= 2
    assert all(e.mean_ms > 0 for e in table.entries.values())
    assert main(["latency", "measure", *base, "--archs", str(archs), "--out", str(measured)]) == 0
    row = measured.read_text().splitlines()[1].split(",")
    assert float(row[1]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["tvm", "executorch"])
def test_search_for_a_device_that_runs_this_runtime(runtime: str, run_nas, tmp_path: Path) -> None:
    """``latency.runtime`` picks the runtime the search profiles and the shipped file is timed with."""
    from tests.test_e2e_run import TINY

    cfg = tmp_path / "tiny.yaml"
    text = TINY.replace(
        "  calibration_models: 4", f"  calibration_models: 2\n  runtime: {runtime}\n  dtype: fp32"
    )
    # fp32 files, as the fp32 latency table (strip: a stage that leaves the weights as they are)
    extra = f"  calibration_samples: 100\n  pipeline: [strip]\n  formats: [tflite, {runtime}]"
    text = text.replace("  calibration_samples: 100", extra)
    cfg.write_text(text.replace("trainings: 3", "trainings: 2"))
    out = tmp_path / "run"
    proc = run_nas("run", str(cfg), "--out", str(out), timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["best"]["latency_runtime"] == runtime and report["best"]["measured_latency_ms"] > 0
    assert runtime in {e["format"] for e in report["compression"]["exports"]}
    assert (out / "export" / ("model_tvm.so" if runtime == "tvm" else "model_fp32.pte")).is_file()


def test_cli_writes_what_converts_and_names_what_does_not(run_nas, tmp_path: Path) -> None:
    from search_spaces.backend import keras
    from tests.conftest import assert_one_line_error

    k = keras()
    inputs = k.Input((28, 28, 1))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.LayerNormalization(name="odd_norm")(x)  # ReduceProd/Sqrt: no PyTorch mapping
    x = k.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "odd.keras"
    k.Model(inputs, k.layers.Dense(10, activation="softmax")(x)).save(path)
    out = tmp_path / "out"
    proc = run_nas(
        "compress", str(path), "--task", "mnist5k", "--pipeline", "strip", "--formats", "tflite,executorch",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert_one_line_error(proc, "export executorch: step onnx -> pytorch: layer 'odd_norm'")
    assert sorted(p.name for p in out.iterdir()) == ["compress_report.json", "model_fp32.tflite"]
    assert "model_fp32.tflite" in proc.stdout
