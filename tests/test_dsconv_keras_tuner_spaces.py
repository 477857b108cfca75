"""The ``dsconv`` space and the ``keras-tuner`` space (a user's ``build(hp)`` as a space)."""

from __future__ import annotations

import random
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from search_spaces import InputError, TaskShape, TrialFailedError, get_space

TASK = TaskShape((16, 16, 1), 10)

# -- dsconv ------------------------------------------------------------------------------------


def test_dsconv_round_trips_and_validates() -> None:
    space = get_space("dsconv", {"n_blocks": 3, "filters": [8, 16], "kernels": [3, 5]})
    rng = random.Random(0)
    for _ in range(20):
        arch = space.random(rng)
        assert space.parse(str(arch)) == arch
        assert space.from_params(space.to_params(arch)) == arch
    assert space.size() == (2 * 2 * 2) ** 3
    with pytest.raises(InputError, match="block 0 filters: expected one of"):
        space.parse("f12-k3-s1+f8-k3-s1+f8-k3-s1")
    with pytest.raises(InputError, match="must look like 'f16-k3-s1'"):
        space.parse("f8-k3+f8-k3-s1+f8-k3-s1")
    with pytest.raises(InputError, match="unknown option 'width'; valid options"):
        get_space("dsconv", {"width": 3})
    with pytest.raises(InputError, match="`strides` expected a non-empty subset of"):
        get_space("dsconv", {"strides": [3]})


def test_dsconv_builds_a_trainable_model_priced_block_by_block() -> None:
    space = get_space("dsconv", {"n_blocks": 3, "filters": [8, 16]})
    arch = space.parse("f8-k3-s1+f16-k5-s2+f16-k3-s1")
    model = space.build(arch, TASK)
    assert tuple(model.input_shape[1:]) == (16, 16, 1)
    assert model.output_shape[-1] == 10
    blocks = space.blocks(arch, TASK)
    assert [b.kind for b in blocks] == ["conv", "dsconv", "dsconv", "dsconv", "pool_dense"]
    assert (blocks[2].in_h, blocks[2].stride, blocks[3].in_h) == (8, 2, 4)
    # every block of every architecture is in the enumerated list a host table profiles
    every = set(space.all_blocks(TASK))
    rng = random.Random(1)
    for _ in range(30):
        assert set(space.blocks(space.random(rng), TASK)) <= every
    # closed-form kernel weights equal the built model's
    kernels = sum(int(w.size) for layer in model.layers for w in layer.get_weights() if w.ndim > 1)
    assert space.size_terms(arch, TASK).weights == kernels
    for b in blocks:
        assert space.block_model(b).output_shape[-1] == b.out_c


def test_dsconv_trains_on_real_digits() -> None:
    from nas.data import load_task

    data = load_task("digits")
    space = get_space(
        "dsconv", {"n_blocks": 2, "filters": [16], "kernels": [3], "stem_stride": 1, "dropout": 0.0}
    )
    arch = space.parse("f16-k3-s1+f16-k3-s2")
    model = space.build(arch, data.shape)
    from search_spaces.backend import keras

    model.compile(keras().optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=15, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(data.x_val, data.y_val, verbose=0)
    assert accuracy > 0.5  # chance is 0.1


# -- keras-tuner ---------------------------------------------------------------------------------

USER_MODULE = """
import tf_keras as keras

def build(hp):
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(hp.Choice("filters", [8, 16]), hp.Int("kernel", 3, 5, step=2), padding="same",
                            activation="relu")(inputs)
    if hp.Boolean("pool"):
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp.Choice("units", [16, 32]), activation="relu")(x)
    x = keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5, step=0.25))(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))

def broken(hp):
    hp.Choice("a", [1, 2])
    if hp.get("a") == 2:
        raise ValueError("a=2 is not supported")
    return build(hp)

def not_a_model(hp):
    hp.Choice("a", [1, 2])
    return "a string"
"""


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"user_models_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_keras_tuner_space_discovers_the_hyperparameters(user_module: str) -> None:
    space = get_space("keras-tuner", {"build": f"{user_module}:build"})
    choices = {c.name: c.values for c in space.choices()}
    assert choices == {
        "dropout": (0.0, 0.25, 0.5),
        "filters": (8, 16),
        "kernel": (3, 5),
        "pool": (False, True),
        "units": (16, 32),
    }
    assert space.size() == 48
    arch = space.from_params({"filters": 16, "kernel": 5, "pool": True, "units": 32, "dropout": 0.25})
    assert str(arch) == "dropout=0.25,filters=16,kernel=5,pool=True,units=32"  # sorted name=value
    assert space.parse(str(arch)) == arch
    with pytest.raises(InputError, match="kernel: expected one of"):
        space.parse("dropout=0.25,filters=16,kernel=4,pool=True,units=32")
    # optuna samples it like any space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = space.sample(study.ask())
    assert space.parse(str(sampled)) == sampled


def test_keras_tuner_space_builds_the_users_model_and_prices_its_layers(user_module: str) -> None:
    space = get_space("keras-tuner", {"build": f"{user_module}:build"})
    arch = space.parse("dropout=0.0,filters=16,kernel=5,pool=True,units=32")
    model = space.build(arch, TASK)
    conv = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"][0]
    assert conv.filters == 16 and conv.kernel_size == (5, 5)
    blocks = space.blocks(arch, TASK)
    assert [b.kind for b in blocks] == ["conv2d", "dense", "dense"]
    assert (blocks[0].in_h, blocks[0].out_c, blocks[0].kernel) == (16, 16, 5)
    assert blocks[1].in_c == 8 * 8 * 16 and blocks[1].out_c == 32  # pooled then flattened
    assert space.size_terms(arch, TASK).weights == sum(
        int(w.size) for layer in model.layers for w in layer.get_weights() if w.ndim > 1
    )
    assert space.block_model(blocks[0]).output_shape == (1, 16, 16, 16)
    every = space.all_blocks(TASK)  # 48 archs: small enough to list for a host table
    assert every is not None and set(blocks) <= set(every)
    with pytest.raises(TrialFailedError, match="input shape expected"):
        space.build(arch, TaskShape((8, 8, 1), 10))


def test_keras_tuner_space_failures_name_the_reason(user_module: str) -> None:
    broken = get_space("keras-tuner", {"build": f"{user_module}:broken"})
    defaults = {c.name: c.values[0] for c in broken.choices()}
    ok = broken.parse(str(broken.from_params({**defaults, "a": 1})))
    assert broken.build(ok, TASK).output_shape[-1] == 10
    with pytest.raises(TrialFailedError, match="raised ValueError: a=2 is not supported"):
        broken.build(broken.from_params({**defaults, "a": 2}), TASK)
    # a function that cannot build even with its defaults is bad input, named before any search
    with pytest.raises(
        InputError,
        match=r"user_models_\d+.py:\d+: build\(hp\) expected to return a tf_keras or Keras 3 Model, got builtins.str",
    ):
        get_space("keras-tuner", {"build": f"{user_module}:not_a_model"})
    with pytest.raises(InputError, match="`build` module 'no_such_module_xyz' not found"):
        get_space("keras-tuner", {"build": "no_such_module_xyz:build"})
    with pytest.raises(InputError, match="expected 'module:function'"):
        get_space("keras-tuner", {"build": "just_a_name"})
    with pytest.raises(InputError, match="unknown option 'bild'"):
        get_space("keras-tuner", {"bild": f"{user_module}:build"})


def test_keras_tuner_space_is_searched_by_a_keras_tuner_oracle(user_module: str) -> None:
    """The space's choices drive keras-tuner's own oracle through ``sample_hp``."""
    import keras_tuner as kt

    space = get_space("keras-tuner", {"build": f"{user_module}:build"})
    hp = kt.HyperParameters()
    default = space.sample_hp(hp)
    assert {p.name for p in hp.space} == {c.name for c in space.choices()}
    assert space.parse(str(default)) == default
