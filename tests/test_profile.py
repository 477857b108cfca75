"""Per-block profiling, the host table cache and whole-model timing on the real LiteRT runtime."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from latency_models.profile import (
    cache_dir,
    host_table,
    invoke_overhead_ms,
    machine_fingerprint,
    measure_archs,
    profile_blocks,
    table_path,
)
from latency_models.table import INVOKE_KEY, LatencyTable
from search_spaces import SPACES, InputError, TaskShape, get_space

TASK = TaskShape((16, 16, 1), 10)
FAST = (5, 2, 0.0)


@pytest.fixture(scope="module")
def space():
    return get_space("mbconv", {"widths": [[8], [8], [16]], "depths": [1], "kernels": [3], "expands": [1, 3]})


@pytest.fixture(scope="module")
def arch(space):
    return space.random(random.Random(1))


def test_profile_blocks_times_each_distinct_block_once(space, arch):
    blocks = space.blocks(arch, TASK)
    calls: list[tuple[int, int]] = []
    entries = profile_blocks(
        space, blocks + blocks[:2], progress=lambda i, n: calls.append((i, n)), timing=FAST
    )
    assert set(entries) == set(blocks)
    assert calls[-1] == (len(set(blocks)), len(set(blocks)))
    for entry in entries.values():
        assert entry.mean_ms > 0 and entry.count >= 5 and entry.memory_bytes is None


def test_host_table_profiles_only_what_the_cache_lacks(space, arch, tmp_path: Path):
    blocks = space.blocks(arch, TASK)
    first: list[tuple[int, int]] = []
    table = host_table(
        space, TASK, blocks[:2], cache_dir=tmp_path, progress=lambda i, n: first.append((i, n))
    )
    assert first[-1] == (2, 2)
    assert table.meta.device == "host" and table.meta.runtime == "litert" and table.meta.dtype == "int8"
    assert table.meta.extra["machine"] == machine_fingerprint()
    assert 0 < table.meta.extra[INVOKE_KEY] < min(e.mean_ms for e in table.entries.values())
    second: list[tuple[int, int]] = []
    table = host_table(space, TASK, blocks, cache_dir=tmp_path, progress=lambda i, n: second.append((i, n)))
    missing = len(set(blocks) - set(blocks[:2]))
    assert second[-1] == (missing, missing)
    assert table.price(blocks) > 0
    third: list[tuple[int, int]] = []
    host_table(space, TASK, blocks, cache_dir=tmp_path, progress=lambda i, n: third.append((i, n)))
    assert third == [(0, 0)]
    saved = LatencyTable.load(table_path(space, "litert", "int8", 1, tmp_path))
    assert set(blocks) <= set(saved.entries)


def test_invoke_cost_is_what_chaining_two_models_saves():
    """t(A) + t(B) - t(A then B): positive, and on LiteRT well under a millisecond."""
    cost = invoke_overhead_ms("litert", "int8", timing=FAST, rounds=3)
    assert 0 < cost < 0.05


def test_damaged_cache_is_rebuilt(space, arch, tmp_path: Path):
    path = table_path(space, "litert", "int8", 1, tmp_path)
    path.write_text("{not json")
    table = host_table(space, TASK, space.blocks(arch, TASK)[:1], cache_dir=tmp_path)
    assert len(table) == 1 and LatencyTable.load(path).entries == table.entries


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EDGE_NAS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGE_NAS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "edge-nas" / "tables"


def test_measure_archs_times_whole_models(space, arch):
    (t,) = measure_archs(space, TASK, [arch], timing=FAST)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms and t.runs >= 5


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"dtype": "int4"}, {"runtime": "tvm"}])
def test_bad_settings_are_input_errors(space, arch, kwargs):
    with pytest.raises(InputError):
        profile_blocks(space, space.blocks(arch, TASK), **kwargs)


@pytest.mark.slow  # a dozen TF conversions: minutes on a loaded machine
def test_tflm_table_predicts_the_whole_model_arena(space, tmp_path: Path):
    from latency_models.profile import measure_arenas, predict_arena_bytes

    archs = [space.random(random.Random(s)) for s in (3, 4)]
    blocks = [b for a in archs for b in space.blocks(a, TASK)]
    table = host_table(space, TASK, blocks, runtime="tflm", cache_dir=tmp_path, timing=FAST)
    assert all(table.lookup(b).memory_bytes for b in blocks)
    assert table.meta.extra["tflm_model_overhead_bytes"] > 0
    for arch, measured in zip(archs, measure_arenas(space, TASK, archs), strict=True):
        predicted = predict_arena_bytes(table, space.blocks(arch, TASK))
        assert abs(predicted - measured) <= 0.05 * measured


def _space_for(name: str):
    if name == "keras-tuner":
        from tests.test_keras_tuner_patterns import KT_MNIST

        return get_space(name, {"build": f"{KT_MNIST}:build"})
    return get_space(name)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_profiling_conversion_runs_like_the_shipped_one(name: str) -> None:
    """Blocks are converted without the SavedModel round trip (8x faster): every space's blocks
    must come out with the same operators and tensor shapes as the shipped conversion, and no
    signature table, else the fast path is not being taken."""
    from ai_edge_litert.interpreter import Interpreter

    from latency_models.profile import _model_input_shape, random_representative
    from latency_models.runtimes import get_runtime

    space = _space_for(name)
    task = TaskShape((32, 32, 3), 10)
    blocks = space.blocks(space.random(random.Random(2)), task)
    rt = get_runtime("litert")
    for block in (blocks[0], blocks[len(blocks) // 2]):
        try:
            model = space.block_model(block)
        except NotImplementedError:  # a space priced only by published tables (nb201, fbnet)
            pytest.skip(f"space {name} has no block models to profile")
        samples = random_representative(_model_input_shape(model))
        shipped, profiled = (
            Interpreter(model_content=convert(model, "int8", samples).data)
            for convert in (rt.convert, rt.convert_for_profiling)
        )

        def graph(i: Interpreter) -> list[tuple[str, tuple[int, ...]]]:
            ops = [d["op_name"] for d in i._get_ops_details()]
            return ops + [tuple(d["shape"]) for d in i.get_tensor_details() if len(d["shape"]) > 1]

        assert shipped.get_signature_list() and not profiled.get_signature_list(), block
        assert sorted(map(str, graph(shipped))) == sorted(map(str, graph(profiled))), block
