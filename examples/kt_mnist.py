# A keras-tuner search space written the way keras-tuner's "Getting started" guide writes it
# (Keras 3, an unbuilt Sequential with no input shape, a conditional number of layers, a compiled
# model), searched for this machine's latency by examples/keras_tuner.yaml. Importing it costs
# nothing; the search it drives costs about 3-5 minutes on 2 CPU cores.
"""keras-tuner's documented ``build(hp)`` patterns, for ``space: {name: keras-tuner}``.

``build_model`` is keras-tuner's "Getting started" function, the one examples/keras_tuner.yaml
searches; ``build`` is a small version of it (32 settings); the others are the rest of the
patterns in keras-tuner's documentation (a ``conditional_scope`` model choice, a functional model,
a tf_keras model), which the tests and ``benchmarks/keras_tuner_patterns.py`` search too.
"""

import keras
from keras import layers


def build(hp):
    model = keras.Sequential()
    model.add(layers.Flatten())
    # Tune the number of layers: units_1 exists only when num_layers is 2.
    for i in range(hp.Int("num_layers", 1, 2)):
        model.add(layers.Dense(units=hp.Choice(f"units_{i}", [16, 32]), activation="relu"))
    if hp.Boolean("dropout"):
        model.add(layers.Dropout(rate=0.25))
    model.add(layers.Dense(10, activation="softmax"))
    learning_rate = hp.Choice("lr", [1e-3, 3e-3])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_model(hp):
    """keras-tuner's "Getting started" function as its guide writes it: 1-3 Dense layers of
    32-512 units each, a shared activation, optional dropout, a log-uniform learning rate
    (245,760 settings: too many to list every layer up front, so the host profile samples them)."""
    model = keras.Sequential()
    model.add(layers.Flatten())
    # Tune the number of layers.
    for i in range(hp.Int("num_layers", 1, 3)):
        model.add(
            layers.Dense(
                # Tune number of units separately.
                units=hp.Int(f"units_{i}", min_value=32, max_value=512, step=32),
                activation=hp.Choice("activation", ["relu", "tanh"]),
            )
        )
    if hp.Boolean("dropout"):
        model.add(layers.Dropout(rate=0.25))
    model.add(layers.Dense(10, activation="softmax"))
    learning_rate = hp.Float("lr", min_value=1e-4, max_value=1e-2, sampling="log")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_scoped(hp):
    """Model selection with ``hp.conditional_scope`` (keras-tuner's documented form)."""
    model_type = hp.Choice("model_type", ["mlp", "cnn"])
    model = keras.Sequential()
    with hp.conditional_scope("model_type", ["mlp"]):
        if model_type == "mlp":
            model.add(layers.Flatten())
            model.add(layers.Dense(hp.Choice("mlp_units", [16, 32]), activation="relu"))
    with hp.conditional_scope("model_type", ["cnn"]):
        if model_type == "cnn":
            model.add(layers.Conv2D(hp.Choice("cnn_filters", [4, 8]), 3, strides=2, activation="relu"))
            model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dense(10, activation="softmax"))
    return model


def build_functional(hp):
    """A functional Keras 3 model with batch normalization and a residual add."""
    inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(hp.Choice("filters", [8, 16]), 3, strides=2, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(hp.Choice("filters", [8, 16]), 3, padding="same", activation="relu")(x)
    x = layers.Add()([x, y])
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def build_tf_keras(hp):
    """The same kind of model in tf_keras (Keras 2), which needs no translation."""
    import tf_keras

    model = tf_keras.Sequential()
    model.add(tf_keras.layers.Conv2D(hp.Choice("filters", [4, 8]), 3, strides=2, activation="relu"))
    model.add(tf_keras.layers.Flatten())
    model.add(tf_keras.layers.Dense(10, activation="softmax"))
    return model
