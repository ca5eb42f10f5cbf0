"""Make the Keras fixtures: tiny models saved by real Keras 3, with inputs and Keras' outputs.

Usage, from the repository root, with a Python that has keras 3 and torch (the project's
git-ignored .venv-torch: .venv-torch/bin/pip install keras h5py):

    KERAS_BACKEND=torch .venv-torch/bin/python tests/reference/keras/make_keras_fixtures.py

For each model NAME it writes, next to this script:

    NAME.keras        keras_model.save(...)            (config.json, metadata.json, model.weights.h5)
    NAME.weights.h5   keras_model.save_weights(...)
    NAME.npz          x (N, H, W, C) float32 inputs and keras_outputs = keras_model.predict(x)

tests/test_keras_files.py loads each archive and weights file in minicnn and compares its
predictions with keras_outputs (<= 1e-5), so the suite checks the Keras door without Keras.
The weights are drawn from a fixed seed (not trained): what matters is that every number moves.
"""
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402  (the backend must be chosen before keras is imported)
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
L = keras.layers


def seed():
    """The seed model's architecture, scaled down to 12x12 images (a few KB)."""
    return keras.Sequential([
        keras.Input((12, 12, 1)),
        L.Conv2D(3, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2), strides=2),
        L.Conv2D(4, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2), strides=2),
        L.Flatten(), L.Dense(5, activation="relu"), L.Dense(10, activation="softmax"),
    ], name="seed")


def every_layer():
    """Every layer both libraries have, stride-2 'same' on even sizes, non-square kernels, odd pools."""
    return keras.Sequential([
        keras.Input((10, 12, 3)),
        L.Conv2D(5, (3, 2), strides=2, padding="same", activation="relu"),
        L.MaxPooling2D((3, 3), strides=2, padding="same"),
        L.Conv2D(4, (2, 3), padding="same", use_bias=False),
        L.ReLU(), L.Activation("linear"),
        L.MaxPooling2D(2, strides=1, padding="valid"),
        L.Flatten(), L.Dense(7, activation="relu"), L.Dense(6, use_bias=False), L.Activation("softmax"),
    ], name="every_layer")


def issue_12():
    """The layers of issue 12 (their inference behaviour). 9x9 images keep "same" average
    pooling symmetric: Keras' torch backend counts asymmetric zero padding in its averages."""
    return keras.Sequential([
        keras.Input((9, 9, 2)),
        L.RandomFlip("horizontal"), L.RandomTranslation(0.2, 0.1, fill_mode="constant", interpolation="nearest"),
        L.Conv2D(4, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.AveragePooling2D((3, 3), strides=2, padding="same"), L.Dropout(0.5),
        L.BatchNormalization(axis=1, scale=False), L.GlobalAveragePooling2D(),
        L.Dense(3), L.BatchNormalization(center=False, epsilon=0.01), L.Softmax(),
    ], name="issue_12")


def main():
    rng = np.random.default_rng(2026)
    for make in (seed, every_layer, issue_12):
        model = make()
        # vectors (biases, batch-normalisation statistics) positive, so every variance is valid
        model.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) if w.ndim > 1
                           else rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in model.get_weights()])
        x = rng.uniform(-1, 1, (4, *model.input_shape[1:])).astype(np.float32)
        name = make.__name__
        model.save(HERE / f"{name}.keras")
        model.save_weights(HERE / f"{name}.weights.h5")
        np.savez(HERE / f"{name}.npz", x=x, keras_outputs=np.asarray(model.predict(x, verbose=0)))
        print(f"{name}: keras {keras.__version__}, {model.count_params()} parameters")


if __name__ == "__main__":
    main()
