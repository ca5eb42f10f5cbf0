"""The seed model, defined once for every test: the Keras tutorial's CNN.

    Conv2D(32, 3x3, same, relu) -> MaxPooling2D(2) -> Conv2D(64, 3x3, same, relu) ->
    MaxPooling2D(2) -> Flatten -> Dense(128, relu) -> Dense(10, softmax)

Its facts (DESIGN.md): output shapes 28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 -> 3136 -> 128
-> 10, and 421,642 parameters. The arguments scale it down for gradient checks (the same
architecture on 8x8 images with 4 and 6 filters, in float64) without changing its shape.
Keras' spellings, only the import changed: activation=minicnn.nn.relu as in tutorial code.
"""
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
