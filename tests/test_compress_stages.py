"""Stage strings, argument checks and the shared stage contract, on real tiny models and data."""

from __future__ import annotations

import numpy as np
import pytest

from compress import STAGES, CompressData, StageError, Trainer, parse_stage
from compress.registry import build_pipeline
from search_spaces import InputError

pytest_plugins = ["tests.test_compress_fixtures"]  # the shared real data and trained tiny model


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("prune:1.5", "stage prune: sparsity must be in (0, 1), got 1.5."),
        ("prune:0", "stage prune: sparsity must be in (0, 1), got 0.0."),
        ("lowrank:rank=0", "stage lowrank: rank must be an int >= 1, got 0."),
        ("lowrank:energy=1.5", "stage lowrank: energy must be in (0, 1], got 1.5."),
        ("structured:1", "stage structured: ratio must be in (0, 1), got 1.0."),
        ("int8:0", "stage int8: calibration must be an int >= 1, got 0."),
        ("int8:ten", "stage int8: calibration must be an int, got 'ten'."),
        ("qat:epochs=0", "stage qat: epochs must be an int >= 1, got 0."),
        ("distill", "stage distill: needs a teacher model (--teacher), got None."),
        (
            "prune:speed=3",
            "stage prune: unknown argument 'speed'; valid arguments: ['epochs', 'min_weights', 'rounds', 'sparsity'].",
        ),
        ("fp16:2", "stage fp16: takes no bare argument, got '2'; valid arguments: []."),
    ],
)
def test_bad_stage_arguments_name_the_rule(spec: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        parse_stage(spec)
    assert str(err.value) == message


def test_unknown_stage_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match=r"unknown stage 'prun'; valid stages: \[.*'prune'.*'structured'"):
        build_pipeline("prune:0.5,prun")


def test_specs_round_trip_and_defaults() -> None:
    stages = build_pipeline("prune:0.6:epochs=3,structured,int8:500,lowrank:rank=4,mixed:0.5")
    assert [s.spec for s in stages] == [
        "prune:sparsity=0.6:epochs=3",
        "structured:ratio=0.3",
        "int8:calibration=500",
        "lowrank:rank=4",
        "mixed:max_error=0.5",
    ]
    assert [build_pipeline(s.spec)[0].spec for s in stages] == [s.spec for s in stages]
    assert stages[2].quantization.dtype == "int8" and stages[2].quantization.calibration == 500
    assert stages[4].quantization.max_error == 0.5
    assert stages[0].quantization is None


def test_every_registered_stage_builds_with_defaults() -> None:
    teacher_trainer = Trainer(teacher=object())
    for name in STAGES:
        stage = parse_stage(name, teacher_trainer)
        assert stage.name == name and stage.spec.startswith(name)


def test_compress_data_checks_shapes_and_labels() -> None:
    x = np.zeros((4, 3), np.float32)
    y = np.arange(4)
    with pytest.raises(InputError, match="data train: expected as many labels"):
        CompressData(x, y[:3], x, y, x, y)
    with pytest.raises(InputError, match="data x_val: expected input shape"):
        CompressData(x, y, np.zeros((4, 5)), y, x, y)
    with pytest.raises(InputError, match="data y_test: expected 1-D integer class labels"):
        CompressData(x, y, x, y, x, y.astype(float))
    data = CompressData(x.astype(np.float64), y, x, y, x, y)
    assert data.x_train.dtype == np.float32 and data.num_classes == 4


# -- the stage contract on a real trained model ------------------------------------------------


@pytest.mark.slow
def test_contract_every_model_changing_stage(tiny, cdata) -> None:
    """Each stage returns a new model with the task's input/output shape, leaves the original's
    weights alone, and the result still predicts well above chance."""
    before = [w.copy() for w in tiny.get_weights()]
    for spec in ("prune:0.5:epochs=1", "structured:0.3:epochs=1", "lowrank:rank=4", "finetune:1"):
        stage = parse_stage(spec, Trainer(seed=1))
        out = stage.apply(tiny, cdata)
        assert out is not tiny
        assert out.input_shape == tiny.input_shape and out.output_shape == tiny.output_shape
        acc = float(np.mean(np.argmax(out.predict(cdata.x_test, verbose=0), 1) == cdata.y_test))
        assert acc > 0.3, (spec, acc)
    for a, b in zip(before, tiny.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_magnitude_pruning_reaches_its_sparsity(tiny, cdata) -> None:
    from compress.pruning import weight_sparsity

    out = parse_stage("prune:0.6:epochs=1:min_weights=64").apply(tiny, cdata)
    pruned = [
        w
        for layer in out.layers
        if type(layer).__name__ in ("Conv2D", "Dense")
        for w in layer.get_weights()[:1]
        if w.size >= 64
    ]
    assert pruned and all(abs(float(np.mean(w == 0)) - 0.6) < 0.02 for w in pruned)
    assert weight_sparsity(out) > 0.3


def test_structured_pruning_removes_filters(tiny, cdata) -> None:
    out = parse_stage("structured:0.5:epochs=1").apply(tiny, cdata)
    before = {layer.name: layer for layer in tiny.layers}
    shrunk = [
        layer.name
        for layer in out.layers
        if type(layer).__name__ == "Conv2D" and layer.filters < before[layer.name].filters
    ]
    assert shrunk, "no Conv2D lost filters"
    assert out.count_params() < 0.8 * tiny.count_params()


def test_lowrank_factors_into_two_layers(tiny, cdata) -> None:
    out = parse_stage("lowrank:rank=2:epochs=0").apply(tiny, cdata)
    names = {layer.name for layer in out.layers}
    assert "classifier_lr_a" in names and "classifier_lr_b" in names
    a = out.get_layer("classifier_lr_a").get_weights()[0]
    assert a.shape[1] == 2
    # Before fine-tuning the product of the factors is the rank-2 SVD of the original kernel.
    w = tiny.get_layer("classifier").get_weights()[0]
    b = out.get_layer("classifier_lr_b").get_weights()[0]
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(a @ b, (u[:, :2] * s[:2]) @ vt[:2], atol=1e-5)


def test_choose_rank_by_energy() -> None:
    from compress.lowrank import choose_rank

    s = np.array([3.0, 2.0, 1.0, 0.5])
    total = np.sum(s**2)
    assert choose_rank(s, None, 9 / total) == 1
    assert choose_rank(s, None, 13 / total) == 2
    assert choose_rank(s, None, 1.0) == 4
    assert choose_rank(s, 10, None) == 4


def test_qat_on_an_unsupported_layer_names_it(cdata) -> None:
    from search_spaces.backend import keras

    k = keras()
    inputs = k.Input((28, 28, 1))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.LayerNormalization(name="odd_norm")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inputs, k.layers.Dense(10, activation="softmax")(x))
    with pytest.raises(
        StageError, match=r"stage qat: layer 'odd_norm' \(LayerNormalization\) cannot be quantized"
    ):
        parse_stage("qat").apply(model, cdata)


def test_distillation_trains_toward_the_teacher(tiny, cdata) -> None:
    """With alpha=0 only the teacher's soft targets teach: the student moves toward the teacher."""
    from search_spaces import TaskShape, get_space

    space = get_space("mbconv", {"strides": [1, 2], "widths": [[8], [16]], "stem_width": 8, "dropout": 0.0})
    student = space.build(
        space.parse("d1-k3-e1-w8-se0-relu6+d1-k3-e3-w16-se0-relu6"), TaskShape((28, 28, 1), 10)
    )
    teacher_pred = np.argmax(tiny.predict(cdata.x_test, verbose=0), 1)
    before = float(np.mean(np.argmax(student.predict(cdata.x_test, verbose=0), 1) == teacher_pred))
    out = parse_stage("distill:4:alpha=0.0:learning_rate=0.01", Trainer(teacher=tiny, batch_size=32)).apply(
        student, cdata
    )
    after = float(np.mean(np.argmax(out.predict(cdata.x_test, verbose=0), 1) == teacher_pred))
    assert after > max(0.5, before + 0.3), (before, after)


def test_contract_quantization_stages_only_choose_the_export() -> None:
    """Post-training stages leave the model alone and tell the exporters how to quantize."""
    model = object()
    expected = {"dynamic": "dynamic", "fp16": "fp16", "int8": "int8", "mixed": "int8"}
    for name, dtype in expected.items():
        stage = parse_stage(name)
        assert stage.apply(model, None) is model  # type: ignore[arg-type]
        assert stage.quantization is not None and stage.quantization.dtype == dtype
    assert parse_stage("mixed:0.2").quantization.max_error == 0.2
    assert parse_stage("int8").quantization.max_error is None
    assert parse_stage("qat").quantization.dtype == "int8"
