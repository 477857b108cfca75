"""``nas compress`` bad input: exit code 2, one line naming what is wrong, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_one_line_error


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) tf_keras model saved as .keras, for argument checks."""
    from search_spaces import TaskShape, get_space

    space = get_space("mbconv", {"strides": [1, 2], "widths": [[8], [16]], "stem_width": 8})
    model = space.build(
        space.parse("d1-k3-e1-w8-se0-relu6+d1-k3-e3-w16-se0-relu6"), TaskShape((28, 28, 1), 10)
    )
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model.save(path)
    return path


def test_bad_inputs_exit_2_with_one_line(run_nas, saved_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["--task", "mnist5k", "--out", str(out)]
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("not a model")
    cases = [
        (["missing.keras", *base, "--pipeline", "int8"], ("MODEL missing.keras: file not found.",)),
        ([str(not_keras), *base, "--pipeline", "int8"], ("expected a saved tf_keras model",)),
        (
            [str(saved_model), *base, "--pipeline", "int8,shrink"],
            ("unknown stage 'shrink'; valid stages:", "'prune'"),
        ),
        (
            [str(saved_model), *base, "--pipeline", "int8", "--formats", "tflite,coreml"],
            ("unknown format 'coreml'; valid formats:",),
        ),
        (
            [str(saved_model), *base, "--pipeline", "prune:1.5"],
            ("stage prune: sparsity must be in (0, 1), got 1.5.",),
        ),
        (
            [str(saved_model), *base, "--pipeline", "lowrank:rank=0"],
            ("stage lowrank: rank must be an int >= 1, got 0.",),
        ),
        (
            [str(saved_model), *base, "--pipeline", "distill"],
            ("stage distill: needs a teacher model (--teacher)",),
        ),
        (
            [str(saved_model), "--task", "mnist1d", "--out", str(out), "--pipeline", "int8"],
            ("model: expected input shape",),
        ),
    ]
    for args, needles in cases:
        proc = run_nas("compress", *args)
        assert_one_line_error(proc, *needles)
        assert not out.exists()


def test_teacher_with_other_classes_is_refused(run_nas, saved_model: Path, tmp_path: Path) -> None:
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((28, 28, 1))
    teacher = k.Model(inputs, k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(inputs)))
    teacher_path = tmp_path / "teacher.keras"
    teacher.save(teacher_path)
    out = tmp_path / "out"
    proc = run_nas(
        "compress",
        str(saved_model),
        "--task",
        "mnist5k",
        "--pipeline",
        "distill",
        "--teacher",
        str(teacher_path),
        "--out",
        str(out),
    )
    assert_one_line_error(proc, "teacher: expected 10 classes")
    assert not out.exists()


@pytest.mark.slow
def test_compress_command_writes_report(run_nas, saved_model: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "out"
    proc = run_nas(
        "compress",
        str(saved_model),
        "--task",
        "mnist5k",
        "--pipeline",
        "finetune:2:learning_rate=0.005,int8:50",
        "--formats",
        "tflite,tflm",
        "--out",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "compress_report.json").read_text())
    assert [r["stage"] for r in report["rows"]] == [
        "original",
        "finetune:epochs=2:learning_rate=0.005",
        "int8:calibration=50",
    ]
    assert report["rows"][-1]["files"] == ["model_int8.tflite", "model_data.cc", "model_data.h"]
    assert report["rows"][-1]["accuracy"] > 0.2  # twice chance after 2 epochs of a tiny untrained model
    for name in report["files"]:
        assert (out / name).is_file()


def test_failing_stage_stops_with_one_line_and_no_output(run_nas, tmp_path: Path) -> None:
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((28, 28, 1))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.LayerNormalization(name="odd_norm")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "odd.keras"
    k.Model(inputs, k.layers.Dense(10, activation="softmax")(x)).save(path)
    out = tmp_path / "out"
    proc = run_nas(
        "compress", str(path), "--task", "mnist5k", "--pipeline", "qat", "--out", str(out), "--quiet"
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "stage qat: layer 'odd_norm' (LayerNormalization) cannot be quantized" in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cache")) == ["odd.keras"]
