"""keras-tuner ``build(hp)`` functions as keras-tuner's documentation writes them: an unbuilt
``Sequential``, conditional hyperparameters (a loop over ``hp.Int("num_layers")``,
``conditional_scope``), a compiled model, Keras 3 (translated to tf_keras), and user errors
reported as one line with the user's own file and line."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from search_spaces import InputError, TaskShape, TrialFailedError, get_space

from .conftest import assert_one_line_error

KT_MNIST = Path(__file__).resolve().parent.parent / "examples" / "kt_mnist.py"
MNIST = TaskShape((28, 28, 1), 10)


def _space(func: str):
    return get_space("keras-tuner", {"build": f"{KT_MNIST}:{func}"})


def test_loop_conditional_hyperparameters_are_discovered_and_only_active_ones_are_in_the_arch() -> None:
    space = _space("build")
    assert {c.name: c.values for c in space.choices()} == {
        "dropout": (False, True),
        "lr": (0.001, 0.003),
        "num_layers": (1, 2),
        "units_0": (16, 32),
        "units_1": (16, 32),  # exists only when num_layers is 2: found by re-running build(hp)
    }
    conds = space.conditions()
    assert [(c.parent, c.values) for c in conds["units_1"]] == [("num_layers", (2,))]
    assert not conds["units_0"] and not conds["num_layers"]
    one = space.from_params({"dropout": False, "lr": 0.001, "num_layers": 1, "units_0": 32, "units_1": 16})
    assert str(one) == "dropout=False,lr=0.001,num_layers=1,units_0=32"
    two = space.from_params({"dropout": True, "lr": 0.003, "num_layers": 2, "units_0": 16, "units_1": 32})
    assert str(two) == "dropout=True,lr=0.003,num_layers=2,units_0=16,units_1=32"
    for arch in (one, two):
        assert space.parse(str(arch)) == arch
        assert space.from_params(space.to_params(arch)) == arch
    with pytest.raises(InputError, match=r"expected only active hyperparameters, got inactive \['units_1'\]"):
        space.parse("dropout=False,lr=0.001,num_layers=1,units_0=32,units_1=16")
    with pytest.raises(InputError, match=r"missing \['units_1'\]"):
        space.parse("dropout=False,lr=0.001,num_layers=2,units_0=32")
    # the built network is the one the arch says: two hidden layers of 16 and 32 units
    model = space.build(two, MNIST)
    dense = [layer.units for layer in model.layers if type(layer).__name__ == "Dense"]
    assert dense == [16, 32, 10]
    assert [b.out_c for b in space.blocks(two, MNIST)] == [16, 32, 10]


@pytest.mark.parametrize(
    "func", ["build", "build_model", "build_scoped", "build_functional", "build_tf_keras"]
)
def test_pricing_without_building_reads_what_the_built_model_has(func: str) -> None:
    """A candidate is priced from the model build(hp) returns, without building its weights or
    translating it (``read_unbuilt``): the same blocks and size terms as the built tf_keras
    model, for every documented pattern (unbuilt Sequential, functional, tf_keras)."""
    import random

    import keras_tuner as kt

    from search_spaces.keras_layers import read_built, read_unbuilt

    space = _space(func)
    rng = random.Random(0)
    for _ in range(6):
        arch = space.random(rng)
        hp = kt.HyperParameters()
        hp.values.update(space.to_params(arch))
        fast = read_unbuilt(space._call(hp), MNIST.input_shape, MNIST.num_classes)
        assert fast is not None, f"{func}: {arch} was not read without building"
        assert fast == read_built(space.build(arch, MNIST)), f"{func}: {arch}"
    # a model that does not give the task's classes is left to the build, which says what is wrong
    hp = kt.HyperParameters()
    hp.values.update(space.to_params(arch))
    assert read_unbuilt(space._call(hp), MNIST.input_shape, 7) is None


def test_the_getting_started_space_is_profiled_on_a_sample_of_its_blocks() -> None:
    """245,760 settings cannot list every block up front: the host profile takes the blocks of
    the smallest and largest settings and of seeded random ones, the same on every call."""
    from latency_models.block_sample import SAMPLED_BLOCKS, blocks_to_profile

    space = _space("build_model")
    assert space.size() > 100_000 and space.all_blocks(MNIST) is None
    blocks, complete = blocks_to_profile(space, MNIST)
    assert not complete and SAMPLED_BLOCKS <= len(blocks) < SAMPLED_BLOCKS + 8
    assert blocks == blocks_to_profile(space, MNIST)[0]
    units = {b.out_c for b in blocks if b.in_c == 784}
    assert {32, 512} <= units  # the extremes of the first layer's range
    small, complete = blocks_to_profile(_space("build"), MNIST)
    assert complete and set(small) == set(_space("build").all_blocks(MNIST))


def test_conditional_scope_keeps_keras_tuner_semantics() -> None:
    space = _space("build_scoped")
    conds = space.conditions()
    assert [(c.parent, c.values) for c in conds["mlp_units"]] == [("model_type", ("mlp",))]
    assert [(c.parent, c.values) for c in conds["cnn_filters"]] == [("model_type", ("cnn",))]
    mlp = space.from_params({"model_type": "mlp", "mlp_units": 32, "cnn_filters": 8})
    cnn = space.from_params({"model_type": "cnn", "mlp_units": 32, "cnn_filters": 8})
    assert str(mlp) == "mlp_units=32,model_type=mlp" and str(cnn) == "cnn_filters=8,model_type=cnn"
    kinds = [type(layer).__name__ for layer in space.build(cnn, MNIST).layers]
    assert "Conv2D" in kinds and "Flatten" not in kinds


def test_unbuilt_keras3_sequential_is_built_on_the_task_and_trained_with_the_users_optimizer() -> None:
    """Keras 3, no input shape, compiled with Adam(lr) and categorical cross-entropy: built on
    the task's shape, translated to tf_keras, trained on real digits with the user's optimizer
    and learning rate and our sparse loss (the labels are integers)."""
    from nas.config import TrainConfig
    from nas.data import load_task
    from nas.train import train_candidate
    from search_spaces.backend import keras

    space = _space("build")
    arch = space.parse("dropout=False,lr=0.003,num_layers=1,units_0=32")
    model = space.build(arch, MNIST)
    assert isinstance(model, keras().Model) and model.input_shape == (None, 28, 28, 1)
    assert model.edge_nas_compile.optimizer == "Adam"
    assert dict(model.edge_nas_compile.config)["learning_rate"] == pytest.approx(0.003)
    data = load_task("mnist5k")
    config = TrainConfig(epochs=1, batch_size=64, learning_rate=0.1, max_train_samples=1000)
    result, trained = train_candidate(space, arch, data, config, seed=0)
    assert type(trained.optimizer).__name__ == "Adam"
    assert float(trained.optimizer.learning_rate) == pytest.approx(0.003)  # not training.learning_rate
    assert result.accuracy > 0.6  # chance is 0.1


def test_keras3_functional_model_translates_with_the_same_outputs_on_real_data() -> None:
    import keras
    import keras_tuner as kt

    from nas.data import load_task
    from search_spaces.keras3 import ATOL, RTOL, to_tf_keras

    sys.path.insert(0, str(KT_MNIST.parent))
    import kt_mnist

    hp = kt.HyperParameters()
    k3 = kt_mnist.build_functional(hp)
    assert isinstance(k3, keras.Model)
    # non-trivial weights: one real training step moves BN statistics and kernels
    x = load_task("mnist5k").x_test[:64]
    k3.compile("adam", "sparse_categorical_crossentropy")
    k3.fit(x, np.arange(64) % 10, epochs=1, verbose=0)
    tfk = to_tf_keras(k3, (28, 28, 1), check=x)
    expected = np.asarray(k3(x, training=False))
    got = tfk.predict(x, verbose=0)
    assert np.all(np.abs(got - expected) <= ATOL + RTOL * np.abs(expected))
    assert [type(layer).__name__ for layer in tfk.layers][1:4] == ["Conv2D", "BatchNormalization", "ReLU"]


def test_untranslatable_keras3_layers_are_named_in_one_line() -> None:
    import keras

    from search_spaces.keras3 import to_tf_keras

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    inputs = keras.Input((8, 8, 1))
    x = Doubler(name="doubler")(inputs)
    x = keras.ops.relu(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    with pytest.raises(TrialFailedError) as e:
        to_tf_keras(model, (8, 8, 1), where="m.py:3: build(hp)")
    text = str(e.value)
    assert "\n" not in text and text.startswith(
        "m.py:3: build(hp): Keras 3 layers with no tf_keras translation"
    )
    assert "doubler (Doubler: no tf_keras layer of that name)" in text
    assert "keras.ops operation" in text and "dense" not in text.split("translation:")[1]


USER = """
import tf_keras as keras


def build(hp):
    units = hp.Choice("units", [8, 16])
    if units == 16:
        raise ValueError("16 units are not supported")
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])


def defaults_fail(hp):
    hp.Choice("units", [8, 16])
    return keras.Sequential([keras.layers.Dense(10)])([1, 2, 3])


def needs_a_pair(hp):
    a = hp.Boolean("a")
    b = hp.Boolean("b")
    if a and b:
        hp.Choice("hidden", [4, 8])
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
"""


@pytest.fixture()
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(textwrap.dedent(USER))
    yield path
    sys.modules.pop("edge_nas_user_my_models", None)


def test_a_failing_build_names_the_users_file_and_line(user_file: Path) -> None:
    space = get_space("keras-tuner", {"build": f"{user_file}:build"})
    with pytest.raises(TrialFailedError) as e:
        space.build(space.parse("units=16"), MNIST)
    assert str(e.value) == f"{user_file}:8: build(hp) raised ValueError: 16 units are not supported"
    with pytest.raises(InputError, match=rf"discovering hyperparameters: {user_file}:14: build\(hp\) raised"):
        get_space("keras-tuner", {"build": f"{user_file}:defaults_fail"})


def test_a_hyperparameter_discovery_could_not_reach_fails_that_trial_by_name(user_file: Path) -> None:
    space = get_space("keras-tuner", {"build": f"{user_file}:needs_a_pair"})
    assert {c.name for c in space.choices()} == {"a", "b"}  # only both True registers "hidden"
    with pytest.raises(TrialFailedError, match=r"registered hyperparameter\(s\) \['hidden'\]"):
        space.build(space.parse("a=True,b=True"), MNIST)


def test_cli_reports_a_broken_user_module_in_one_line(run_nas, tmp_path: Path) -> None:
    (tmp_path / "bad_models.py").write_text("import tf_keras\n\nx = 1 / 0\n\ndef build(hp):\n    pass\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("space: {name: keras-tuner, options: {build: bad_models.py:build}}\n")
    proc = run_nas("run", str(cfg), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, f"{tmp_path / 'bad_models.py'}:3: importing", "ZeroDivisionError")
    assert not (tmp_path / "out").exists()


def test_nas_compress_takes_a_saved_keras3_model(run_nas, tmp_path: Path) -> None:
    """A trained Keras 3 ``.keras`` file: loaded in safe mode, translated (outputs checked on the
    task's test inputs), compressed and exported; the int8 file keeps the Keras 3 accuracy."""
    import json

    import keras_tuner as kt

    from nas.data import load_task

    sys.path.insert(0, str(KT_MNIST.parent))
    import kt_mnist

    data = load_task("mnist5k")
    k3 = kt_mnist.build(kt.HyperParameters())  # the unbuilt Sequential: fit builds it
    k3.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    k3.fit(data.x_train, data.y_train, epochs=3, batch_size=64, verbose=0)
    accuracy = float(np.mean(np.argmax(k3.predict(data.x_test, verbose=0), axis=1) == data.y_test))
    assert accuracy > 0.5
    k3.save(tmp_path / "k3.keras")
    out = tmp_path / "out"
    proc = run_nas(
        "compress", str(tmp_path / "k3.keras"), "--task", "mnist5k", "--pipeline", "int8",
        "--formats", "tflite", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "compress_report.json").read_text())
    exported = report["exports"][0]
    assert abs(exported["accuracy"] - accuracy) < 0.03


def test_a_user_layer_failing_inside_training_names_the_users_line(tmp_path: Path) -> None:
    (tmp_path / "layer_models.py").write_text(
        textwrap.dedent(
            """
            import tf_keras as keras


            class Picky(keras.layers.Layer):
                def call(self, x, training=None):
                    if training:
                        raise RuntimeError("no training please")
                    return x


            def build(hp):
                return keras.Sequential([keras.layers.Flatten(), Picky(), keras.layers.Dense(hp.Choice("u", [10]))])
            """
        )
    )
    from nas.config import TrainConfig
    from nas.data import load_task
    from nas.train import train_candidate

    space = get_space("keras-tuner", {"build": f"{tmp_path / 'layer_models.py'}:build"})
    with pytest.raises(TrialFailedError) as e:
        train_candidate(space, space.parse("u=10"), load_task("digits"), TrainConfig(epochs=1), seed=0)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(
        f"{tmp_path / 'layer_models.py'}:8: training failed: RuntimeError: no training please"
    )
    sys.modules.pop("edge_nas_user_layer_models", None)


HYPERMODEL = """
import keras
import keras_tuner
from keras import layers


class MyHyperModel(keras_tuner.HyperModel):
    def build(self, hp):
        model = keras.Sequential()
        model.add(layers.Flatten())
        model.add(layers.Dense(units=hp.Int("units", min_value=32, max_value=512, step=32), activation="relu"))
        model.add(layers.Dense(10, activation="softmax"))
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32]), **kwargs)


class NeedsArguments(keras_tuner.HyperModel):
    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def build(self, hp):
        return keras.Sequential([layers.Flatten(), layers.Dense(self.classes)])


hypermodel = MyHyperModel()
"""


def test_a_hypermodel_class_or_instance_is_a_space(tmp_path: Path) -> None:
    """keras-tuner's "Tune model training" form: a HyperModel subclass (or an instance of it)
    names the space; its build(hp) is searched (its fit is not: training follows the config)."""
    (tmp_path / "hm.py").write_text(HYPERMODEL)
    for name in ("MyHyperModel", "hypermodel"):
        space = get_space("keras-tuner", {"build": f"{tmp_path / 'hm.py'}:{name}"})
        assert [c.name for c in space.choices()] == ["units"]
        assert [b.out_c for b in space.blocks(space.parse("units=64"), MNIST)] == [64, 10]
    with pytest.raises(InputError, match=r"hm.py:NeedsArguments\(\) raised TypeError.*name an instance"):
        get_space("keras-tuner", {"build": f"{tmp_path / 'hm.py'}:NeedsArguments"})


def test_log_sampling_with_a_step_multiplies_by_it(tmp_path: Path) -> None:
    """keras-tuner's ``sampling="log"`` with a step is a geometric grid, as its documentation
    says: Int(16, 128, step=2) is 16, 32, 64, 128 and Float(1e-4, 1e-2, step=10) 1e-4, 1e-3, 1e-2."""
    (tmp_path / "logs.py").write_text(
        textwrap.dedent(
            """
            import keras
            from keras import layers


            def build(hp):
                model = keras.Sequential([layers.Flatten()])
                model.add(layers.Dense(hp.Int("units", 16, 128, step=2, sampling="log"), activation="relu"))
                model.add(layers.Dropout(hp.Float("dropout", 0.0, 0.5, step=0.1)))
                model.add(layers.Dense(10, activation="softmax"))
                model.compile(optimizer=keras.optimizers.Adam(hp.Float("lr", 1e-4, 1e-2, step=10, sampling="log")))
                return model
            """
        )
    )
    space = get_space("keras-tuner", {"build": f"{tmp_path / 'logs.py'}:build"})
    values = {c.name: c.values for c in space.choices()}
    assert values["units"] == (16, 32, 64, 128) and all(type(v) is int for v in values["units"])
    assert values["lr"] == (1e-4, 1e-3, 1e-2)
    assert values["dropout"] == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def test_a_nested_augmentation_sequential_translates() -> None:
    """Keras's image-classification tutorial form: a ``keras.Sequential`` of RandomFlip and
    RandomRotation inside a functional model, then Rescaling, BatchNormalization and a
    SeparableConv2D. It translates layer by layer (weights copied per nested layer) and the
    tf_keras model gives the same inference outputs."""
    import keras
    from keras import layers

    from search_spaces.keras3 import ATOL, RTOL, to_tf_keras

    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])
    inputs = keras.Input(shape=(8, 8, 1))
    x = layers.Rescaling(1.0 / 255)(augment(inputs))
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(x)
    outputs = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.layers[4].set_weights([w + 0.5 for w in model.layers[4].get_weights()])  # BN: not identity
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32) * 255
    twin = to_tf_keras(model, (8, 8, 1), check=x)
    expected = np.asarray(model(x, training=False))
    assert np.all(np.abs(twin.predict(x, verbose=0) - expected) <= ATOL + RTOL * np.abs(expected))
    assert [type(layer).__name__ for layer in twin.layers[1].layers] == ["RandomFlip", "RandomRotation"]
