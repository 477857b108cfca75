"""The ``strip`` export option: stripped .tflite files lose their strings, keep 16-byte aligned
buffers, and still run identically in LiteRT and TFLite Micro; the stage parses and carries over."""

from __future__ import annotations

import numpy as np
import pytest

from compress import Quantization, build_pipeline, parse_stage
from compress.strip import Strip, buffer_offsets, strip_tflite
from search_spaces import InputError


@pytest.fixture(scope="module")
def keras_model() -> object:
    from search_spaces import TaskShape, get_space
    from search_spaces.backend import set_seed

    set_seed(0)
    space = get_space("mbconv", {})
    arch = space.parse("d1-k3-e1-w8-se0-relu6+d1-k3-e3-w16-se1-relu6+d1-k5-e4-w24-se0-hswish")
    return space.build(arch, TaskShape((12, 12, 1), 4))


@pytest.fixture(scope="module")
def int8_model(keras_model: object) -> tuple[bytes, np.ndarray]:
    from latency_models.runtimes.litert import convert_tflite

    x = np.random.default_rng(1).random((16, 12, 12, 1), dtype=np.float32)
    return convert_tflite(keras_model, "int8", list(x)), x


def _strings(data: bytes) -> tuple[list[object], int]:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = [t.name for g in model.subgraphs for t in g.tensors]
    return names, len(model.signatureDefs or [])


def test_strip_removes_names_and_keeps_alignment(int8_model: tuple[bytes, np.ndarray]) -> None:
    data, _ = int8_model
    names, signatures = _strings(data)
    assert any(names) and signatures == 1  # the converter's file has names to strip
    stripped = strip_tflite(data)
    names, signatures = _strings(stripped)
    assert not any(names) and signatures == 0
    assert len(stripped) < len(data)
    assert all(offset % 16 == 0 for offset in buffer_offsets(stripped))
    assert strip_tflite(stripped) == stripped  # nothing left to strip


def test_stripped_file_runs_the_same(int8_model: tuple[bytes, np.ndarray]) -> None:
    from latency_models.runtimes.litert import LiteRTSession
    from latency_models.runtimes.tflm import TFLMSession

    data, x = int8_model
    stripped = strip_tflite(data)
    expected = LiteRTSession(data).run(x)
    np.testing.assert_array_equal(LiteRTSession(stripped).run(x), expected)
    np.testing.assert_array_equal(TFLMSession(stripped).run(x[:4]), TFLMSession(data).run(x[:4]))


def test_strip_stage_parses_and_carries_over_quantization() -> None:
    assert parse_stage("strip") == Strip("drop")
    assert parse_stage("strip:keep") == Strip("keep")
    with pytest.raises(InputError, match="stage strip: strings must be 'drop' or 'keep', got 'yes'"):
        parse_stage("strip:yes")
    strip, int8 = build_pipeline("strip,int8:50")
    after = int8.next_quantization(strip.next_quantization(Quantization()))
    assert after == Quantization("int8", 50, strip=True)
    after = strip.next_quantization(int8.next_quantization(Quantization()))
    assert after == Quantization("int8", 50, strip=True)
    assert Strip("keep").next_quantization(Quantization("int8")).strip is False
    with pytest.raises(InputError, match="quantization strip"):
        Quantization(strip="yes")  # type: ignore[arg-type]


def test_int8_per_channel_option_parses() -> None:
    assert parse_stage("int8:300:per_channel=0").quantization == Quantization("int8", 300, per_channel=False)
    assert parse_stage("int8").quantization.per_channel is True
    with pytest.raises(InputError, match="stage int8: per_channel must be 0 or 1, got 2"):
        parse_stage("int8:per_channel=2")
    with pytest.raises(InputError, match="quantization per_channel"):
        Quantization("fp16", per_channel=False)


def test_exporter_strips_int8_by_default_and_obeys_the_stage(keras_model: object, tmp_path) -> None:
    from compress import CompressData
    from compress.exporters import ExportContext, TFLiteExporter

    rng = np.random.default_rng(2)
    x, y = rng.random((24, 12, 12, 1), dtype=np.float32), np.arange(24) % 4
    ctx = ExportContext(keras_model, CompressData(x, y, x, y, x, y), runs=3)
    sizes = {}
    for label, quant in {
        "int8": Quantization("int8", 8),
        "int8 kept": Quantization("int8", 8, strip=False),
        "fp32": Quantization(),
        "fp32 stripped": Quantization(strip=True),
    }.items():
        folder = tmp_path / label.replace(" ", "_")
        folder.mkdir()
        exported = TFLiteExporter().export(quant, folder, ctx)
        names, _ = _strings((folder / exported.files[0]).read_bytes())
        sizes[label] = exported.size_bytes
        stripped = any(n.startswith("strings stripped") for n in exported.notes)
        assert stripped == (label in ("int8", "fp32 stripped")) == (not any(names)), (label, exported.notes)
    assert sizes["int8"] < sizes["int8 kept"] and sizes["fp32 stripped"] < sizes["fp32"]
