"""Each real runtime converts a tf_keras model, runs it with the model's own outputs and times it;
TFLM reports the arena it really needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latency_models.profile import random_representative
from latency_models.runtimes import RUNTIMES, get_runtime
from search_spaces import Block, InputError, get_space

BLOCK = Block("mbconv", 12, 12, 8, 16, kernel=3, stride=2, expand=3, se=True, act="hswish")


@pytest.fixture(scope="module")
def model():
    return get_space("mbconv").block_model(BLOCK)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((3, 12, 12, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(model, batch):
    return model(batch).numpy()


SAMPLES = random_representative((12, 12, 8), n=16)


# Runtimes that are optional extras (module to find): tested where installed (`make test` installs them).
_EXTRAS = {"tvm": "tvm", "executorch": "executorch"}


def _runtime(name: str, dtype: str):
    """The registered runtime ``name`` (every one is tested: adding it to RUNTIMES is enough)."""
    import importlib.util

    if name in _EXTRAS and importlib.util.find_spec(_EXTRAS[name]) is None:
        pytest.skip(f"runtime {name}: its extra is not installed")
    rt = get_runtime(name)
    assert rt.name == name and isinstance(rt.version(), str) and rt.version()
    if dtype not in rt.dtypes:
        pytest.skip(f"runtime {name} has no {dtype}")
    return rt


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_fp32_runs_exactly_what_keras_computes(name, model, batch, reference):
    rt = _runtime(name, "fp32")
    session = rt.load(rt.convert(model, "fp32"), threads=1)
    out = session.run(batch)
    assert out.shape == reference.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, reference, atol=1e-4)
    t = session.time(batch[0], runs=5, warmup=1, min_total_s=0.0)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.runs >= 5
    # what profiling converts computes the same
    profiled = rt.load(rt.convert_for_profiling(model, "fp32"), threads=1)
    np.testing.assert_allclose(profiled.run(batch), reference, atol=1e-4)


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_int8_stays_close_to_fp32(name, model, batch, reference):
    rt = _runtime(name, "int8")
    session = rt.load(rt.convert(model, "int8", SAMPLES), threads=1)
    out = session.run(batch)
    assert out.shape == reference.shape
    # int8 activations with a per-tensor scale: errors of a few quantization steps of the range.
    tolerance = 0.05 * float(np.abs(reference).max()) + 1e-3
    assert float(np.abs(out - reference).max()) < tolerance


def test_threads_are_pinned_in_the_session(model):
    rt = get_runtime("onnxruntime")
    session = rt.load(rt.convert(model, "fp32"), threads=2)
    assert session.session.get_session_options().intra_op_num_threads == 2
    ov = get_runtime("openvino")
    compiled = ov.load(ov.convert(model, "fp32"), threads=2).compiled
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2


def test_tflm_arena_is_what_the_interpreter_needs(model):
    from tflite_micro.python.tflite_micro import runtime

    from latency_models.runtimes.tflm import _captured_stderr, arena_use

    artifact = get_runtime("tflm").convert(model, "int8", SAMPLES)
    use = arena_use(artifact)
    assert use.total == use.head + use.tail > 0
    # Activations alone: 12x12x24 expanded int8 tensor at least.
    assert use.head >= 12 * 12 * 24
    runtime.Interpreter.from_bytes(artifact.data, arena_size=use.total + 64)
    with pytest.raises((RuntimeError, ValueError)):
        _captured_stderr(
            lambda: runtime.Interpreter.from_bytes(artifact.data, arena_size=use.total - use.head // 2)
        )


@pytest.mark.parametrize("name,suffix", [("onnxruntime", ".onnx"), ("openvino", ".xml"), ("tflm", ".tflite")])
def test_load_file_runs_a_file_on_disk(name, suffix, model, batch, reference, tmp_path: Path):
    import importlib

    rt = get_runtime(name)
    artifact = rt.convert(model, "fp32")
    path = tmp_path / f"m{suffix}"
    if artifact.parts:
        for part, data in artifact.parts:
            (tmp_path / f"m{Path(part).suffix}").write_bytes(data)
    else:
        path.write_bytes(artifact.data)
    module = importlib.import_module(f"latency_models.runtimes.{name}")
    np.testing.assert_allclose(module.load_file(path, threads=1).run(batch), reference, atol=1e-4)


@pytest.mark.parametrize("name,suffix", [("onnxruntime", ".onnx"), ("openvino", ".xml"), ("tflm", ".tflite")])
def test_load_file_names_a_bad_file(name, suffix, tmp_path: Path):
    import importlib

    module = importlib.import_module(f"latency_models.runtimes.{name}")
    with pytest.raises(InputError, match="not found"):
        module.load_file(tmp_path / f"missing{suffix}")
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(InputError):
        module.load_file(bad)


def test_unknown_dtype_lists_the_valid_ones(model):
    with pytest.raises(InputError, match="supports"):
        get_runtime("onnxruntime").convert(model, "fp16")
