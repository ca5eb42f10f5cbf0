"""Keras 3's .keras archives and .weights.h5 files, both ways.

Three kinds of test: against real Keras where it is importable (KERAS_BACKEND=torch; skipped
otherwise), against the committed fixtures that real Keras made (tests/reference/keras/, made by
make_keras_fixtures.py; these need only h5py), and hostile or foreign files (h5py only).
Tolerance: 1e-5 absolute on probabilities / outputs; the measured differences are ~1e-7.
"""
import io as bytes_io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ModelFileError, ReLU, Sequential, Softmax
from minicnn.keras_format import weight_keys
from minicnn.layers import Linear
from models import seed_model

h5py = pytest.importorskip("h5py")

TOLERANCE = 1e-5
FIXTURES = Path(__file__).parent / "reference" / "keras"


def images(n, shape, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def with_random_biases(model):
    rng = np.random.default_rng(7)
    model.set_weights([w if w.ndim > 1 else rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def every_layer_model():
    """Every layer both libraries have, with the geometries that go wrong first."""
    return Sequential([
        Conv2D(5, (3, 2), strides=2, padding="same", activation="relu", input_shape=(10, 12, 3)),
        MaxPooling2D((3, 3), strides=2, padding="same"),
        Conv2D(4, (2, 3), padding="same", use_bias=False),
        ReLU(),
        Linear(),
        MaxPooling2D(2, strides=1, padding="valid"),
        Flatten(),
        Dense(7, activation="relu"),
        Dense(6, use_bias=False),
        Softmax(),
    ], name="every_layer")


# -- without Keras: minicnn's own round trips, and what minicnn writes ---------------------------

@pytest.mark.parametrize("build", [lambda: seed_model(size=12, filters=(3, 4), units=5), every_layer_model])
def test_keras_files_round_trip_through_minicnn(build, tmp_path):
    minicnn.set_seed(0)
    model = with_random_biases(build())
    x = images(9, model.input_shape)
    loaded = minicnn.load_model(model.save(tmp_path / "m.keras"))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    minicnn.set_seed(1)
    other = build()
    other.load_weights(model.save_weights(tmp_path / "w.weights.h5"))
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_archive_has_keras_layout(tmp_path):
    minicnn.set_seed(0)
    path = every_layer_model().save(tmp_path / "m.keras")
    assert path == str(tmp_path / "m.keras")   # no .npz appended
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
        config = json.loads(archive.read("config.json"))
        weights = h5py.File(bytes_io.BytesIO(archive.read("model.weights.h5")), "r")
    classes = [layer["class_name"] for layer in config["config"]["layers"]]
    assert classes == ["InputLayer", "Conv2D", "MaxPooling2D", "Conv2D", "ReLU", "Activation", "MaxPooling2D",
                       "Flatten", "Dense", "Dense", "Softmax"]
    assert config["config"]["layers"][0]["config"]["batch_shape"] == [None, 10, 12, 3]
    assert weight_keys(classes[1:]) == ["conv2d", "max_pooling2d", "conv2d_1", "re_lu", "activation",
                                        "max_pooling2d_1", "flatten", "dense", "dense_1", "softmax"]
    assert weights["layers/conv2d/vars/0"].shape == (3, 2, 3, 5) and weights["layers/conv2d/vars/1"].shape == (5,)
    assert list(weights["layers/conv2d_1/vars"]) == ["0"] and weights["layers/dense_1/vars/0"].shape == (7, 6)


def test_a_nan_model_is_not_written_as_a_keras_file(tmp_path):
    model = seed_model(size=8, filters=(2, 2), units=3)
    model.layers[0].params["kernel"][0, 0, 0, 0] = np.nan
    for save, name in ((model.save, "m.keras"), (model.save_weights, "w.weights.h5")):
        with pytest.raises(minicnn.errors.NonFiniteStateError, match="conv2d.*/kernel"):
            save(tmp_path / name)
    assert not list(tmp_path.iterdir())


# -- foreign and hostile files -------------------------------------------------------------------

def keras_layer(class_name, **config):
    return {"module": "keras.layers", "class_name": class_name, "config": {"name": class_name.lower(), **config},
            "registered_name": None}


def write_archive(path, layers, weights=None, input_shape=(4, 4, 1), model_class="Sequential", extra=()):
    config = {"module": "keras", "class_name": model_class, "registered_name": None,
              "config": {"name": "crafted", "layers": layers if input_shape is None else
                         [keras_layer("InputLayer", batch_shape=[None, *input_shape])] + layers}}
    buffer = bytes_io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers")
        for key, arrays in (weights or {}).items():
            group = h5.create_group(f"layers/{key}/vars")
            for index, array in enumerate(arrays):
                group.create_dataset(str(index), data=array)
    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "Duplicate name": what a hostile archive may do
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", buffer.getvalue())
        for name, data in extra:
            archive.writestr(name, data)
    return path


DENSE_WEIGHTS = {"flatten": [], "dense": [np.ones((16, 2), np.float32), np.zeros(2, np.float32)]}


def test_a_crafted_archive_loads_and_computes_what_its_weights_say(tmp_path):
    path = write_archive(tmp_path / "ok.keras", [keras_layer("Flatten"), keras_layer("Dense", units=2, activation="relu")],
                         DENSE_WEIGHTS)
    x = images(3, (4, 4, 1))
    np.testing.assert_allclose(minicnn.load_model(path).predict(x, verbose=0),
                               np.maximum(x.reshape(3, 16).sum(1, keepdims=True), 0).repeat(2, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layer, message", [
    (keras_layer("LSTM", units=3), r"layer 'lstm' \(class 'LSTM'\) has no minicnn equivalent"),
    (keras_layer("Conv1D", filters=2, kernel_size=3), r"layer 'conv1d' \(class 'Conv1D'\) has no minicnn"),
    (keras_layer("Lambda", function={"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA"}}),
     r"layer 'lambda' \(class 'Lambda'\) has no minicnn equivalent"),
    ({**keras_layer("Dense", units=2), "registered_name": "my_package>Dense"}, r"class 'Dense'\) has no minicnn"),
    (keras_layer("Conv2D", filters=2, kernel_size=[3, 3], dilation_rate=[2, 2]), r"dilation_rate=\[2, 2\]"),
    (keras_layer("Conv2D", filters=2, kernel_size=[3, 3], groups=2), r"groups=2"),
    (keras_layer("Conv2D", filters=2, kernel_size=[3, 3], data_format="channels_first"), r"data_format='channels_first'"),
    (keras_layer("Dense", units=2, kernel_regularizer={"class_name": "L2", "config": {"l2": 0.01}}), r"kernel_regularizer="),
    (keras_layer("Dense", units=2, kernel_constraint={"class_name": "MaxNorm"}), r"kernel_constraint="),
    (keras_layer("Dense", units=2, activation="tanh"), r"activation 'tanh' is not supported"),
    (keras_layer("Activation", activation="gelu"), r"activation 'gelu' has no minicnn layer"),
    (keras_layer("ReLU", max_value=6.0), r"max_value=6.0"),
    (keras_layer("Dense", units=2, dtype="mixed_float16"), r"dtype 'mixed_float16'"),
])
def test_layers_and_arguments_minicnn_lacks_are_refused_by_name(layer, message, tmp_path):
    path = write_archive(tmp_path / "bad.keras", [keras_layer("Flatten"), layer])
    with pytest.raises(ModelFileError, match=message) as error:
        minicnn.load_model(path)
    assert str(path) in str(error.value) and error.value.__cause__ is None


def test_an_input_shape_on_the_first_layer_and_frozen_layers_are_read(tmp_path):
    # no InputLayer: the first layer carries the input shape, as tf.keras writes it
    path = write_archive(tmp_path / "tf.keras", [keras_layer("Flatten", batch_input_shape=[None, 4, 4, 1]),
                                                 keras_layer("Dense", units=2, trainable=False)], DENSE_WEIGHTS,
                         input_shape=None)
    model = minicnn.load_model(path)
    assert model.input_shape == (4, 4, 1) and model.layers[1].trainable is False


def test_functional_models_are_refused(tmp_path):
    path = write_archive(tmp_path / "f.keras", [keras_layer("Flatten")], model_class="Functional")
    with pytest.raises(ModelFileError, match="'Functional'; minicnn reads Keras Sequential models only"):
        minicnn.load_model(path)


@pytest.mark.parametrize("weights, message", [
    ({"flatten": []}, r"no weights for Dense 'dense'"),
    ({"dense": [np.ones((16, 3), np.float32), np.zeros(3, np.float32)]}, r"expects weight 0 of shape \(16, 2\)"),
    ({"dense": [np.ones((16, 2), np.float32)]}, r"has 2 weight arrays"),
    ({"dense": [np.ones((16, 2), np.int64), np.zeros(2, np.float32)]}, r"dtype int64"),
    ({"dense": [np.full((16, 2), np.nan, np.float32), np.zeros(2, np.float32)]}, r"NaN or inf"),
])
def test_weights_that_do_not_fit_are_refused(weights, message, tmp_path):
    path = write_archive(tmp_path / "w.keras", [keras_layer("Flatten"), keras_layer("Dense", units=2)], weights)
    with pytest.raises(ModelFileError, match=message):
        minicnn.load_model(path)


def test_a_huge_declared_layer_costs_nothing_before_it_is_refused(tmp_path):
    path = write_archive(tmp_path / "huge.keras", [keras_layer("Flatten"), keras_layer("Dense", units=10 ** 7)],
                         DENSE_WEIGHTS)
    with pytest.raises(ModelFileError, match=r"expects weight 0 of shape \(16, 10000000\)"):
        minicnn.load_model(path)


def test_links_and_external_data_are_refused(tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as h5:
        h5["secret"] = np.ones((16, 2), np.float32)
    weights = tmp_path / "w.weights.h5"
    with h5py.File(weights, "w") as h5:
        h5.create_group("layers/flatten/vars")
        group = h5.create_group("layers/dense/vars")
        group["0"] = h5py.ExternalLink(str(outside), "/secret")
        group["1"] = np.zeros(2, np.float32)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2, kernel_initializer="zeros")])
    with pytest.raises(ModelFileError, match="ExternalLink"):
        model.load_weights(weights)
    raw = tmp_path / "raw.bin"
    np.ones((16, 2), np.float32).tofile(raw)
    with h5py.File(weights, "w") as h5:
        group = h5.create_group("layers/dense/vars")
        group.create_dataset("0", shape=(16, 2), dtype=np.float32, external=[(str(raw), 0, 128)])
        group["1"] = np.zeros(2, np.float32)
    with pytest.raises(ModelFileError, match="keeps its data outside the file"):
        model.load_weights(weights)
    assert not model.get_weights()[0].any()   # nothing was written


def test_a_zip_bomb_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(minicnn.keras_format, "MAX_JSON_BYTES", 1 << 20)
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b" " * (8 << 20))   # 8 MB of spaces deflate to ~8 KB
        archive.writestr("model.weights.h5", b"")
    assert path.stat().st_size < 64 << 10
    with pytest.raises(ModelFileError, match=r"config.json' declares 8388608 bytes"):
        minicnn.load_model(path)
    # A directory that lies about the size: inflating stops at the cap all the same.
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 4):   # patch the declared size in both headers
        if data[offset:offset + 4] == (8 << 20).to_bytes(4, "little"):
            data[offset:offset + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"inflates past|damaged"):
        minicnn.load_model(path)


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "not a zip file"),
    (b"PK\x03\x04 truncated", "damaged or truncated"),
])
def test_foreign_and_truncated_archives_raise(content, message, tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        minicnn.load_model(path)
    weights = tmp_path / "x.weights.h5"
    weights.write_bytes(content)
    with pytest.raises(ModelFileError, match="not an HDF5 file"):
        Sequential([Dense(2, input_shape=(3,))]).load_weights(weights)


def test_an_archive_with_two_configs_is_refused(tmp_path):
    path = write_archive(tmp_path / "two.keras", [keras_layer("Flatten")], extra=[("config.json", "{}")])
    with pytest.raises(ModelFileError, match="holds 2 entries named 'config.json'"):
        minicnn.load_model(path)


def test_an_archive_without_config_names_what_it_holds(tmp_path):
    path = tmp_path / "n.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(ModelFileError, match="has no 'config.json' .it holds 'model.weights.h5'"):
        minicnn.load_model(path)


# -- the committed fixtures that real Keras made -------------------------------------------------

def fixture_names():
    return sorted(p.stem for p in FIXTURES.glob("*.keras"))


@pytest.mark.parametrize("name", fixture_names())
def test_fixtures_made_by_keras_load_and_agree_with_keras(name):
    expected = np.load(FIXTURES / f"{name}.npz", allow_pickle=False)
    model = minicnn.load_model(FIXTURES / f"{name}.keras")
    np.testing.assert_allclose(model.predict(expected["x"], verbose=0), expected["keras_outputs"], rtol=0, atol=TOLERANCE)
    fresh = minicnn.load_model(FIXTURES / f"{name}.keras")
    fresh.set_weights([np.zeros_like(w) for w in fresh.get_weights()])
    fresh.load_weights(FIXTURES / f"{name}.weights.h5")
    np.testing.assert_allclose(fresh.predict(expected["x"], verbose=0), expected["keras_outputs"], rtol=0, atol=TOLERANCE)


def test_the_fixtures_cover_the_seed_model_and_every_layer():
    assert {"seed", "every_layer", "issue_12"} <= set(fixture_names())


# -- against real Keras --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def keras_seed_model(keras, size=28):
    L = keras.layers
    return keras.Sequential([
        keras.Input((size, size, 1)),
        L.Conv2D(32, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2), strides=2),
        L.Conv2D(64, (3, 3), padding="same", activation="relu"), L.MaxPooling2D((2, 2), strides=2),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax"),
    ])


def keras_every_layer_model(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input((10, 12, 3)),
        L.Conv2D(5, (3, 2), strides=2, padding="same", activation="relu"),
        L.MaxPooling2D((3, 3), strides=2, padding="same"),
        L.Conv2D(4, (2, 3), padding="same", use_bias=False),
        L.ReLU(), L.Activation("linear"),
        L.MaxPooling2D(2, strides=1, padding="valid"),
        L.Flatten(), L.Dense(7, activation="relu"), L.Dense(6, use_bias=False), L.Softmax(),
    ])


def randomized(keras_model):
    """Keras' own (Glorot) kernels, so that the softmax does not saturate and hide differences,
    with random biases so that a lost bias shows."""
    rng = np.random.default_rng(3)
    keras_model.set_weights([w if w.ndim > 1 else rng.normal(0, 0.3, w.shape).astype(np.float32)
                             for w in keras_model.get_weights()])
    return keras_model


def keras_predict(keras_model, x):
    return np.asarray(keras_model.predict(x, verbose=0))


PAIRS = [(keras_seed_model, lambda: seed_model()), (keras_every_layer_model, every_layer_model)]


@pytest.mark.parametrize("make_keras, make_minicnn", PAIRS)
def test_keras_archives_load_in_minicnn_and_agree(keras, make_keras, make_minicnn, tmp_path):
    keras_model = randomized(make_keras(keras))
    keras_model.save(tmp_path / "k.keras")
    model = minicnn.load_model(tmp_path / "k.keras")
    assert model.get_config()["layers"] and model.count_params() == keras_model.count_params()
    for n in (1, 257):
        x = images(n, model.input_shape, seed=n)
        np.testing.assert_allclose(model.predict(x, verbose=0), keras_predict(keras_model, x), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("make_keras, make_minicnn", PAIRS)
def test_minicnn_archives_load_in_keras_and_agree(keras, make_keras, make_minicnn, tmp_path):
    minicnn.set_seed(5)
    model = with_random_biases(make_minicnn())
    keras_model = keras.saving.load_model(model.save(tmp_path / "m.keras"))
    assert [type(l).__name__ for l in keras_model.layers] == [
        {"Linear": "Activation"}.get(type(l).__name__, type(l).__name__) for l in model.layers]
    for n in (1, 257):
        x = images(n, model.input_shape, seed=n)
        np.testing.assert_allclose(keras_predict(keras_model, x), model.predict(x, verbose=0), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("make_keras, make_minicnn", PAIRS)
def test_weights_files_move_both_ways(keras, make_keras, make_minicnn, tmp_path):
    keras_model = randomized(make_keras(keras))
    minicnn.set_seed(5)
    model = make_minicnn()
    x = images(33, model.input_shape)
    keras_model.save_weights(tmp_path / "k.weights.h5")
    model.load_weights(tmp_path / "k.weights.h5")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_predict(keras_model, x), rtol=0, atol=TOLERANCE)
    with_random_biases(model)
    keras_model.load_weights(model.save_weights(tmp_path / "m.weights.h5"))
    np.testing.assert_allclose(keras_predict(keras_model, x), model.predict(x, verbose=0), rtol=0, atol=TOLERANCE)


def test_a_compiled_and_trained_keras_model_loads_for_fine_tuning(keras, tmp_path):
    """The archive then also holds compile_config and the optimizer's variables; minicnn reads
    the architecture and weights, and the model trains on (compile it again, as the README says)."""
    keras_model = randomized(keras_every_layer_model(keras))
    keras_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = images(16, (10, 12, 3)), np.arange(16) % 6
    keras_model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    keras_model.save(tmp_path / "trained.keras")
    model = minicnn.load_model(tmp_path / "trained.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_predict(keras_model, x), rtol=0, atol=TOLERANCE)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


# -- the issue-12 layers ------------------------------------------------------------------------------

# 11x11 images: the 3x3 stride-2 "same" average pooling pads 1 on every side. With asymmetric
# padding (an even size) Keras 3.15's torch backend pads the tensor with zeros first and counts
# them in the border averages; TensorFlow (and minicnn, and ONNX's count_include_pad=0) average
# only the cells inside the image, so the real-Keras comparison keeps to symmetric padding
# (test_onnx.py covers the asymmetric case against minicnn).
def issue_12_model():
    L = minicnn.layers
    return Sequential([
        L.RandomFlip("horizontal", input_shape=(11, 11, 3)),
        L.RandomTranslation(0.2, 0.1, fill_mode="constant", interpolation="nearest"),
        Conv2D(6, 3, padding="same"),
        L.BatchNormalization(),
        ReLU(),
        L.AveragePooling2D((3, 3), strides=2, padding="same"),
        L.Dropout(0.5),
        L.BatchNormalization(axis=1, scale=False),
        L.AveragePooling2D(2, padding="valid"),
        L.GlobalAveragePooling2D(),
        Dense(5),
        L.BatchNormalization(center=False, epsilon=0.01),
        Softmax(),
    ], name="issue_12")


def keras_issue_12_model(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input((11, 11, 3)),
        L.RandomFlip("horizontal"),
        L.RandomTranslation(0.2, 0.1, fill_mode="constant", interpolation="nearest"),
        L.Conv2D(6, 3, padding="same"),
        L.BatchNormalization(),
        L.ReLU(),
        L.AveragePooling2D((3, 3), strides=2, padding="same"),
        L.Dropout(0.5),
        L.BatchNormalization(axis=1, scale=False),
        L.AveragePooling2D(2, padding="valid"),
        L.GlobalAveragePooling2D(),
        L.Dense(5),
        L.BatchNormalization(center=False, epsilon=0.01),
        L.Softmax(),
    ])


def with_random_statistics(weights, seed=11):
    """Kernels as they are; every vector random, positive where it is a variance (the last of a
    BatchNormalization's arrays: Keras' order gamma, beta, moving_mean, moving_variance)."""
    rng = np.random.default_rng(seed)
    return [w if w.ndim > 1 else rng.uniform(0.5, 2.0, w.shape).astype(np.float32) for w in weights]


def test_issue_12_layers_round_trip_through_minicnn(tmp_path):
    minicnn.set_seed(0)
    model = issue_12_model()
    model.set_weights(with_random_statistics(model.get_weights()))
    x = images(9, model.input_shape)
    loaded = minicnn.load_model(model.save(tmp_path / "m.keras"))
    assert loaded.get_config()["layers"] == model.get_config()["layers"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_issue_12_layers_move_both_ways_with_keras(keras, tmp_path):
    keras_model = keras_issue_12_model(keras)
    keras_model.set_weights(with_random_statistics(keras_model.get_weights()))
    keras_model.save(tmp_path / "k.keras")
    model = minicnn.load_model(tmp_path / "k.keras")
    x = images(257, model.input_shape)
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_predict(keras_model, x), rtol=0, atol=TOLERANCE)
    model.set_weights(with_random_statistics(model.get_weights(), seed=12))
    back = keras.saving.load_model(model.save(tmp_path / "m.keras"))
    np.testing.assert_allclose(keras_predict(back, x), model.predict(x, verbose=0), rtol=0, atol=TOLERANCE)
    keras_model.load_weights(model.save_weights(tmp_path / "m.weights.h5"))
    np.testing.assert_allclose(keras_predict(keras_model, x), model.predict(x, verbose=0), rtol=0, atol=TOLERANCE)


def test_keras_defaults_minicnn_cannot_honour_are_refused(tmp_path):
    """Keras' RandomTranslation defaults to fill_mode='reflect' with bilinear interpolation;
    minicnn shifts whole pixels with a constant fill, so it refuses rather than train differently."""
    path = write_archive(tmp_path / "t.keras", [keras_layer("RandomTranslation", height_factor=0.1, width_factor=0.1,
                                                            fill_mode="reflect", interpolation="bilinear")])
    with pytest.raises(ModelFileError, match="fill_mode"):
        minicnn.load_model(path)
    path = write_archive(tmp_path / "b.keras", [keras_layer("BatchNormalization", renorm=True)])
    with pytest.raises(ModelFileError, match="renorm=True"):
        minicnn.load_model(path)


def test_every_minicnn_layer_class_has_a_keras_class():
    from minicnn.keras_format import KERAS_TO_MINICNN, MINICNN_TO_KERAS

    assert set(MINICNN_TO_KERAS) == set(minicnn.layers.REGISTRY.names)
    assert {v for v in KERAS_TO_MINICNN.values() if v} | {"Linear"} == set(minicnn.layers.REGISTRY.names)


def test_an_entry_that_inflates_more_than_any_keras_file_is_refused_as_a_zip_bomb(tmp_path):
    """Bug: a 1.6 KB archive inflated to a gigabyte in memory before HDF5 refused it (the only
    cap was 8 GiB). Keras deflates JSON ~10x and weights hardly at all."""
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
        archive.writestr("model.weights.h5", bytes(16 << 20))   # 16 MB of zeros deflate to ~16 KB
    with pytest.raises(ModelFileError, match=r"model.weights.h5' declares 16777216 bytes from \d+ compressed, "
                                             r"more than 200x: refused as a zip bomb"):
        minicnn.load_model(path)


def test_weights_may_not_declare_more_than_their_file_holds(tmp_path):
    """Bug: a never-written HDF5 dataset holds only its fill value, so a few-KB file declared a
    gigabyte kernel and loading allocated and filled it."""
    layers = [keras_layer("Flatten"), keras_layer("Dense", units=4096)]
    config = json.loads(zipfile.ZipFile(write_archive(tmp_path / "model.keras", layers, input_shape=(16, 16, 1)))
                        .read("config.json"))
    buffer = bytes_io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers/flatten/vars")
        group = h5.create_group("layers/dense/vars")
        group.create_dataset("0", shape=(256, 4096), dtype="f4", chunks=(64, 64), fillvalue=0.5)   # 4 MB, unwritten
        group.create_dataset("1", data=np.zeros(4096, np.float32))
    path = tmp_path / "fill.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("model.weights.h5", buffer.getvalue())
    with pytest.raises(ModelFileError, match=r"the weights declare 4194304 bytes but the file has \d+"):
        minicnn.load_model(path)


def test_a_virtual_dataset_is_refused_before_hdf5_opens_its_sources(tmp_path):
    """Bug: the shape was asked first, and an unlimited virtual dataset makes HDF5 open the
    files it points at (a FIFO hung the load; another file's length came back in the error)."""
    source = tmp_path / "secret.h5"
    with h5py.File(source, "w") as h5:
        h5.create_dataset("data", data=np.ones(36, np.float32), maxshape=(None,))
    weights = tmp_path / "vds.weights.h5"
    layout = h5py.VirtualLayout(shape=(36,), dtype=np.float32)   # the source's length, not the kernel's
    layout[:] = h5py.VirtualSource(str(source), "data", shape=(36,))
    with h5py.File(weights, "w") as h5:
        h5.create_group("layers/flatten/vars")
        group = h5.create_group("layers/dense/vars")
        group.create_virtual_dataset("0", layout)
        group["1"] = np.zeros(2, np.float32)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2, kernel_initializer="zeros")])
    with pytest.raises(ModelFileError, match="keeps its data outside the file; refused") as error:
        model.load_weights(weights)
    assert "36" not in str(error.value)   # nothing read from the other file reaches the message


def test_a_config_nested_too_deeply_is_an_unreadable_config_not_a_traceback(tmp_path):
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "[" * 100_000 + "]" * 100_000)
        archive.writestr("model.weights.h5", b"")
    with pytest.raises(ModelFileError, match="has an unreadable config.json .RecursionError"):
        minicnn.load_model(path)
