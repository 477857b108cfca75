"""A file the runtime refuses to prepare: LiteRT's XNNPACK delegate refuses an int8 tensor whose
range is degenerate, such as a squeeze-excite unit whose ReLU is zero on every calibration
sample. Random weights (profiling and calibration models) hit it about once in 150 quickstart
networks; it must be one clear error, and random-weight files must be made again, not crash."""

from __future__ import annotations

import random

import numpy as np
import pytest

from latency_models.profile import convert_runnable
from latency_models.runtimes import ModelNotRunnable, get_runtime


def _se_model(dead: bool):
    from search_spaces.backend import keras

    k = keras()
    k.backend.clear_session()
    inputs = k.Input((8, 8, 4), batch_size=1)
    x = k.layers.Conv2D(8, 1, activation="relu")(inputs)
    pooled = k.layers.GlobalAveragePooling2D(keepdims=True)(x)
    reduced = k.layers.Conv2D(2, 1, activation="relu", name="reduce")(pooled)
    gate = k.layers.Conv2D(8, 1, activation="sigmoid")(reduced)
    x = k.layers.GlobalAveragePooling2D()(k.layers.Multiply()([x, gate]))
    model = k.Model(inputs, k.layers.Dense(10)(x))
    # The pooled ReLU outputs are >= 0: negative weights and bias keep "reduce" at zero on every
    # sample, positive ones keep it alive (random ones leave both units dead about 1 time in 4).
    sign = -1.0 if dead else 1.0
    w, b = model.get_layer("reduce").get_weights()
    model.get_layer("reduce").set_weights([sign * (np.abs(w) + 0.1), np.full_like(b, sign * 0.1)])
    return model


REP = list(np.random.default_rng(0).random((16, 8, 8, 4), dtype=np.float32))


def test_litert_refusing_a_file_is_one_clear_error() -> None:
    rt = get_runtime("litert")
    rt.load(rt.convert(_se_model(dead=False), "int8", REP), threads=1)
    with pytest.raises(ModelNotRunnable) as e:
        rt.load(rt.convert(_se_model(dead=True), "int8", REP), threads=1)
    message = str(e.value)
    assert message.startswith("LiteRT could not prepare the model") and "\n" not in message
    assert "zero on every calibration sample" in message


def test_a_refused_random_weight_file_is_made_again_from_other_weights() -> None:
    rt = get_runtime("litert")
    attempts: list[int] = []

    def make(attempt: int):
        attempts.append(attempt)
        return _se_model(dead=attempt == 0)

    artifact = convert_runnable(rt, make, "int8", REP)
    assert attempts == [0, 1]
    rt.load(artifact, threads=1)
    with pytest.raises(ModelNotRunnable, match="the same with 2 sets of random weights"):
        convert_runnable(rt, lambda attempt: _se_model(dead=True), "int8", REP, tries=2)


def test_a_candidate_whose_file_cannot_be_made_is_recorded_and_the_others_verified(
    tmp_path, monkeypatch
) -> None:
    """Verification skips a candidate whose export fails (a file the runtime refuses, a stage
    that fails on it) with the reason in its record, and goes on with the next candidates."""
    from types import SimpleNamespace

    from compress import StageError
    from nas import verify
    from nas.config import Constraints, parse_config
    from nas.data import load_task

    config = parse_config(
        {
            "task": {"data": "mnist5k"},
            "space": {"name": "mbconv"},
            "latency": {"device": "host", "runtime": "onnxruntime"},
        },
        base_dir=tmp_path,
    )
    trials = [
        SimpleNamespace(number=n, values=[0.9], user_attrs={"arch": "a", "predicted_latency_ms": 1.0})
        for n in (3, 4)
    ]
    space = SimpleNamespace(parse=lambda text: text)
    monkeypatch.setattr(verify, "_trained", lambda *args: (None, "fake weights"))

    def export(config, model, cdata, target, formats):
        if target.name == "trial-3":
            raise StageError("export tflite: LiteRT could not prepare the model")
        target.mkdir(parents=True)
        (target / "m.tflite").write_bytes(b"x" * 100)
        return SimpleNamespace(
            exports=[SimpleNamespace(format="tflite", files=["m.tflite"], dtype="int8", accuracy=0.8)]
        )

    monkeypatch.setattr(verify, "_export", export)
    said: list[str] = []
    data = load_task("mnist5k")
    out = verify.verify_candidates(
        config, space, data, trials, Constraints(max_size_kb=1.0), tmp_path / "verify", said.append
    )
    by_trial = {v.trial: v for v in out}
    assert not by_trial[3].fits and by_trial[3].size_bytes is None
    assert by_trial[3].reasons == (
        "its file could not be made: export tflite: LiteRT could not prepare the model",
    )
    assert by_trial[4].fits and by_trial[4].size_bytes == 100
    assert any("candidate 3 cannot ship" in line for line in said)
    assert verify.order(out) == [by_trial[4]]


def test_profiling_makes_a_refused_block_again(monkeypatch) -> None:
    """A block file LiteRT refuses is converted again (fresh random weights) and timed."""
    from latency_models.profile import profile_blocks
    from latency_models.runtimes.litert import LiteRT
    from search_spaces import TaskShape, get_space

    space = get_space(
        "mbconv", {"strides": [1], "widths": [[8]], "depths": [1], "kernels": [3], "expands": [1]}
    )
    block = space.blocks(space.random(random.Random(0)), TaskShape((8, 8, 1), 10))[0]
    real_load, calls = LiteRT.load, []

    def refuse_first(self, artifact, threads=1):
        calls.append(artifact.data)
        if len(calls) == 1:
            raise ModelNotRunnable("LiteRT could not prepare the model: refused (test)")
        return real_load(self, artifact, threads=threads)

    monkeypatch.setattr(LiteRT, "load", refuse_first)
    entries = profile_blocks(space, [block], "litert", "int8", timing=(5, 1, 0.0))
    assert entries[block].mean_ms > 0 and len(calls) == 2
