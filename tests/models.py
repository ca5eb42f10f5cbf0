"""The seed model, defined once for every test: the Keras tutorial's CNN.

    Conv2D(32, 3x3, same, relu) -> MaxPooling2D(2) -> Conv2D(64, 3x3, same, relu) ->
    MaxPooling2D(2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax)

Its facts (DESIGN.md): output shapes 28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 -> 3136 -> 128
-> 10, and 421,642 parameters. The arguments scale it down for gradient checks (the same
architecture on 8x8 images with 4 and 6 filters, in float64) without changing its shape.
Keras' spellings, only the import changed: activation=minicnn.nn.relu as in tutorial code.
"""
import numpy as np

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential


def seed_model(size=28, filters=(32, 64), units=128, classes=10, dtype=None, bias_initializer="zeros",
               **first_layer_kwargs):
    """The seed model for (size, size, 1) images; first_layer_kwargs go to the first Conv2D."""
    return Sequential([
        Conv2D(filters[0], (3, 3), padding="same", activation=minicnn.nn.relu, input_shape=(size, size, 1),
               dtype=dtype, bias_initializer=bias_initializer, **first_layer_kwargs),
        MaxPooling2D((2, 2), strides=2),
        Conv2D(filters[1], (3, 3), padding="same", activation=minicnn.nn.relu, bias_initializer=bias_initializer),
        MaxPooling2D((2, 2), strides=2),
        Flatten(),
        Dense(units, activation=minicnn.nn.relu, bias_initializer=bias_initializer),
        Dense(classes, activation=minicnn.nn.softmax),
    ])


def small_classifier(optimizer, seed):
    """A compiled 6x6x1 -> 3-class CNN that trains in milliseconds (the learning-rate tests)."""
    minicnn.set_seed(seed)
    model = Sequential([
        Conv2D(3, (3, 3), padding="same", activation="relu", input_shape=(6, 6, 1)),
        MaxPooling2D(2),
        Flatten(),
        Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def small_classifier_data(n, seed):
    """(x (n, 6, 6, 1) float32, y (n,)) for small_classifier: class k brightens rows 2k and 2k+1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    for k in range(3):
        x[y == k, 2 * k:2 * k + 2, :, 0] += 1.0
    return x, y
