"""Bad input, faults and untrusted files (issue 7).

Every door a user hands data through -- the layers, Sequential.forward/backward, fit/evaluate/
predict, the kernel face, load_data, load_model, the image preprocessing -- either refuses what
it cannot use with a TypeError (wrong kind of thing or dtype) or ValueError (wrong shape, value,
range), whose message names the argument, what was expected and what was received; or it works,
with exactly the answer a plain C-contiguous, writable copy would give, never writing to the
caller's arrays. Both engines run the engine-dependent tests (the `backend` fixture).

Already covered elsewhere and not repeated here: bad x/y to fit/evaluate (test_training's
bad_input_cases), the face's shape checks (test_kernels), the C wrapper's buffer checks
(test_c_engine), damaged/foreign/pickled model files and a SIGKILLed save (test_model_io).
"""
import math
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Sequential, Softmax
from minicnn import images, kernels
from minicnn.callbacks import Callback, ModelCheckpoint
from minicnn.datasets import fashion_mnist as fm

from processes import run_python


# Each public layer with an input it accepts, as (factory, input shape).
LAYERS = {
    "Conv2D": (lambda: Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="relu"), (2, 7, 6, 2)),
    "MaxPooling2D": (lambda: MaxPooling2D((2, 3), strides=(1, 2), padding="same"), (2, 7, 6, 2)),
    "Flatten": (Flatten, (2, 7, 6, 2)),
    "Dense": (lambda: Dense(4, activation="softmax"), (2, 9)),
    "ReLU": (ReLU, (2, 5, 3)),
    "Softmax": (Softmax, (2, 5, 3)),
}


def inputs(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def strided_copy(a):
    """A non-contiguous view holding a's values: every other element of a larger array, on
    every axis but the first (on the only axis of a vector)."""
    first = 1 if a.ndim == 1 else 0
    big = np.zeros(a.shape[:1 - first] + tuple(2 * s for s in a.shape[1 - first:]), a.dtype)
    view = big[(slice(None),) * (1 - first) + (slice(None, None, 2),) * (a.ndim - 1 + first)]
    view[...] = a
    return view


def _frozen(a):
    a.flags.writeable = False
    return a


# Ways to hand over the same values; each must give exactly the contiguous array's result.
LAYOUTS = {
    "fortran": np.asfortranarray,
    "transposed view": lambda a: np.ascontiguousarray(np.swapaxes(a, 0, -1)).swapaxes(0, -1),
    "strided view": strided_copy,
    "read-only": lambda a: _frozen(a.copy()),
    "read-only strided": lambda a: _frozen(strided_copy(a)),
}


# -- layers -------------------------------------------------------------------------------------

BAD_LAYER_INPUTS = [
    # (name, make bad input from a good float32 x, error, what the message must quote)
    ("object", lambda x: x.astype(object), TypeError, "object"),
    ("complex", lambda x: x.astype(np.complex64), TypeError, "complex64"),
    ("strings", lambda x: x.astype(str), TypeError, "<U"),
    ("bool", lambda x: x > 0, TypeError, "bool"),
    ("integers", lambda x: x.astype(np.int32), TypeError, "int32"),
    ("float16", lambda x: x.astype(np.float16), TypeError, "float16"),
    ("float64 into float32", lambda x: x.astype(np.float64), TypeError, "float64"),
    ("a list", lambda x: x.tolist(), TypeError, "list"),
    ("a scalar", lambda x: np.float32(1.0), TypeError, "float32"),
    ("empty batch", lambda x: x[:0], ValueError, "(0,"),
]


@pytest.mark.parametrize("bad", BAD_LAYER_INPUTS, ids=lambda case: case[0])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layers_refuse_unusable_input_naming_layer_expected_and_received(kind, bad):
    make, shape = LAYERS[kind]
    _, corrupt, error, received = bad
    for built in (False, True):                    # before and after the layer has its shape
        layer = make()
        if built:
            layer.forward(inputs(shape))
        with pytest.raises(error) as raised:
            layer.forward(corrupt(inputs(shape)))
        message = str(raised.value)
        assert layer.describe() in message and received in message, message
        if error is TypeError and "dtype" in message:
            assert "float32" in message, message   # what was expected


@pytest.mark.parametrize("kind", ["Conv2D", "MaxPooling2D", "Dense"])
def test_layers_refuse_a_wrong_rank_or_shape_naming_both_shapes(kind):
    make, shape = LAYERS[kind]
    wrong_rank = inputs(shape[:-1]) if len(shape) > 2 else inputs(shape + (3,))
    with pytest.raises(ValueError, match=re.escape(str(wrong_rank.shape[1:]))):
        make().forward(wrong_rank)
    layer = make()
    layer.forward(inputs(shape))
    wrong_size = inputs(shape[:-1] + (shape[-1] + 1,))
    with pytest.raises(ValueError) as raised:
        layer.forward(wrong_size)
    assert str(wrong_size.shape) in str(raised.value) and layer.describe() in str(raised.value)


def test_dtype_hint_suggests_only_dtypes_a_layer_can_have():
    # Bug: the hint said "create the layer with dtype='object'", a dtype no layer accepts.
    x = inputs((2, 3))
    with pytest.raises(TypeError) as raised:
        Dense(2).forward(x.astype(object))
    assert "x.astype('float32')" in str(raised.value) and "dtype='object'" not in str(raised.value)
    with pytest.raises(TypeError, match=r"create the layer with dtype='float64'"):
        Dense(2).forward(x.astype(np.float64))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layers_give_the_same_result_for_any_layout_and_never_write_their_inputs(backend, kind, layout):
    make, shape = LAYERS[kind]
    x = inputs(shape)
    minicnn.set_seed(5)
    reference = make()
    y = reference.forward(x, training=True)
    dy = inputs(y.shape, seed=1)
    dx = reference.backward(dy)

    x_in, dy_in = LAYOUTS[layout](x), LAYOUTS[layout](dy)
    minicnn.set_seed(5)
    layer = make()
    np.testing.assert_array_equal(layer.forward(x_in, training=True), y)
    np.testing.assert_array_equal(layer.backward(dy_in), dx)
    for key in reference.grads:
        np.testing.assert_array_equal(layer.grads[key], reference.grads[key])
    np.testing.assert_array_equal(x_in, x)          # neither input was written
    np.testing.assert_array_equal(dy_in, dy)


@pytest.mark.parametrize("make, shape", [(ReLU, (4, 4, 3)), (Softmax, (4, 4, 3)),
                                         (lambda: Dense(3, activation="softmax"), (5,)),
                                         (lambda: Conv2D(2, 1, activation="relu"), (4, 4, 3))])
def test_backward_before_a_training_forward_is_a_clear_runtime_error(make, shape):
    # Bug: a built ReLU or Softmax (every model built from input_shape has them) raised
    # AttributeError: 'Softmax' object has no attribute '_y'.
    layer = make()
    layer.build(shape)
    with pytest.raises(RuntimeError, match="forward with training=True"):
        layer.backward(np.ones((2,) + layer.output_shape, np.float32))
    layer.forward(inputs((2,) + shape), training=False)          # inference keeps nothing
    with pytest.raises(RuntimeError, match="forward with training=True"):
        layer.backward(np.ones((2,) + layer.output_shape, np.float32))


def test_sequential_forward_and_backward_check_what_they_are_given():
    model = Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(),
                        Dense(3, activation="softmax")])
    with pytest.raises(RuntimeError, match="forward with training=True"):
        model.backward(np.ones((2, 3), np.float32))
    x = inputs((2, 6, 6, 1))
    for bad, error, message in [
        (x.astype(np.float64), TypeError, "received float64"),
        (x[:, :5], ValueError, r"expected input of shape \(batch, 6, 6, 1\), received \(2, 5, 6, 1\)"),
        (x.tolist(), TypeError, "received list"),
        (x[:0], ValueError, "non-empty batch"),
    ]:
        with pytest.raises(error, match=message):
            model.forward(bad)
    model.forward(x, training=True)
    for dy, error, message in [
        (np.ones((2, 4), np.float32), ValueError, r"must have shape \(2, 3\), received \(2, 4\)"),
        (np.ones((3, 3), np.float32), ValueError, r"must have shape \(2, 3\), received \(3, 3\)"),
        (np.ones((2, 3)), TypeError, "must be float32, received float64"),
        (None, ValueError, "received NoneType"),
    ]:
        with pytest.raises(error, match=message):
            model.backward(dy)
        with pytest.raises(error, match=message):
            model.backward(dy, dy_is_logits_gradient=True)
    with pytest.raises(ValueError, match="needs a final softmax"):
        Sequential([Dense(2, input_shape=(3,))]).backward(np.ones((1, 2), np.float32), dy_is_logits_gradient=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_through_every_layer_and_never_come_out_finite(backend):
    """Layers compute on what they are given (fit/predict refuse NaN/inf in data): a
    non-finite input must reach every output that depends on it, on either engine."""
    for bad in (np.nan, np.inf, -np.inf):
        x = inputs((1, 6, 6, 2)) + 5.0           # positive, so ReLU keeps every value
        x[0, 2, 3, 1] = bad
        conv = Conv2D(2, 3, padding="same", kernel_initializer="ones")
        y = conv.forward(x)
        touched = np.zeros(y.shape, bool)
        touched[0, 1:4, 2:5] = True                          # every 3x3 window that holds it
        assert not np.isfinite(y[touched]).any() and np.isfinite(y[~touched]).all()
        pooled = MaxPooling2D(2).forward(x)
        touched = np.zeros(pooled.shape, bool)
        touched[0, 1, 1, 1] = bad != -np.inf                 # -inf never wins a max
        assert not np.isfinite(pooled[touched]).any() and np.isfinite(pooled[~touched]).all()
        dense = Dense(3, kernel_initializer="ones")
        assert not np.isfinite(dense.forward(x.reshape(1, -1))).any()
        assert np.isnan(Softmax().forward(np.array([[1.0, np.nan, 2.0]], np.float32))).all()


# -- fit / evaluate / predict -----------------------------------------------------------------

def small_model(seed=0, loss="sparse_categorical_crossentropy"):
    minicnn.set_seed(seed)
    model = Sequential([Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(2),
                        Flatten(), Dense(3, activation="softmax")])
    model.compile("adam", loss, ["accuracy"])
    return model


def uint8_images(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, n)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_predict_and_evaluate_give_the_same_answer_for_any_layout_and_never_write(backend, layout):
    x, y = uint8_images()
    model = small_model()
    expected = model.predict(x, batch_size=7, verbose=0)
    expected_eval = model.evaluate(x, y, batch_size=7, verbose=0)
    x_in, y_in = LAYOUTS[layout](x), LAYOUTS[layout](y[:, None])
    np.testing.assert_array_equal(model.predict(x_in, batch_size=7, verbose=0), expected)
    assert model.evaluate(x_in, y_in, batch_size=7, verbose=0) == expected_eval
    np.testing.assert_array_equal(x_in, x)
    np.testing.assert_array_equal(y_in[:, 0], y)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int64, np.float16, np.float64, bool])
def test_integer_bool_and_other_float_images_predict_like_their_float32_values(dtype):
    x, _ = uint8_images()
    x = (x // 2).astype(dtype) if dtype is not bool else x > 128
    model = small_model()
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x.astype(np.float32), verbose=0))


@pytest.mark.parametrize("x, error, message", [
    (np.zeros((2, 6, 6, 1), dtype="datetime64[s]"), TypeError, "dtype datetime64"),
    (np.zeros((2, 6, 6, 1), dtype=[("a", "f4")]), TypeError, "real numbers"),
    (np.zeros((2, 6, 6, 1), dtype="V4"), TypeError, "real numbers"),
    (b"pixels", TypeError, r"dtype \|S6"),
    ([[1, 2], [3]], TypeError, "could not convert list"),
    (np.float32(3), ValueError, r"received shape \(\)"),
    (None, ValueError, "is required"),
    (np.zeros((2, 0, 6, 1)), ValueError, "empty"),
    (np.full((2, 6, 6, 1), 1e39), ValueError, "beyond the float32 range"),
])
def test_predict_refuses_what_is_not_a_batch_of_real_images(x, error, message):
    with pytest.raises(error, match=f"predict: x.*{message}"):
        small_model().predict(x, verbose=0)


@pytest.mark.parametrize("y, error, message", [
    (np.array([0, 1, 2, 3] * 5), ValueError, r"must lie in \[0, 3\).*\[0, 3\]"),
    (np.full(20, 2 ** 64 - 1, np.uint64), ValueError, r"\[0, 3\)"),
    (np.full(20, -1, np.int8), ValueError, r"\[0, 3\)"),
    (np.full(20, np.nan), ValueError, "whole numbers"),
    (np.full(20, 1e20), ValueError, r"\[0, 3\)"),
    (np.full(20, 1.5, np.float16), ValueError, "whole numbers"),
    (np.array(["0"] * 20), TypeError, "dtype <U1"),
    (np.zeros(20, complex), TypeError, "complex128"),
    (np.zeros(20, object), TypeError, "object"),
    (np.zeros((20, 2)), ValueError, r"shape \(20, 2\)"),
    (1, ValueError, r"shape \(\)"),
])
def test_sparse_labels_out_of_range_or_not_integers_are_refused_naming_y(y, error, message):
    x, _ = uint8_images()
    with pytest.raises(error, match=f"evaluate: y: .*{message}"):
        small_model().evaluate(x, y, verbose=0)


def test_labels_as_lists_or_bools_work():
    x, y = uint8_images()
    model = small_model()
    expected = model.evaluate(x, y, verbose=0)
    assert model.evaluate(x, list(y), verbose=0) == expected
    assert model.evaluate(x, y.astype(np.float32), verbose=0) == expected
    assert model.evaluate(x, (y > 0).astype(int), verbose=0) == model.evaluate(x, y > 0, verbose=0)


def test_one_hot_targets_beyond_the_model_dtype_are_named_as_such():
    # Bug: 1e40 is finite, but its float32 cast is inf, and the error said "NaN or inf".
    x, y = uint8_images()
    model = small_model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="y: targets hold values beyond the float32 range"):
        model.evaluate(x, np.eye(3)[y] * 1e40, verbose=0)
    with pytest.raises(ValueError, match="y: targets contain NaN or inf"):
        model.evaluate(x, np.where(np.eye(3)[y] == 1, np.inf, 0), verbose=0)
    with pytest.raises(TypeError, match="y: expected a numeric array, received dtype <U"):
        model.evaluate(x, np.eye(3)[y].astype(str), verbose=0)


def test_fit_arguments_are_checked_before_any_step():
    x, y = uint8_images()
    model = small_model()
    for kwargs, error, message in [
        ({"callbacks": 5}, TypeError, "fit: callbacks must be a list of .*Callback.*received int"),
        ({"callbacks": ModelCheckpoint("m.npz")}, TypeError, "received ModelCheckpoint"),
        ({"epochs": 1.5}, ValueError, "epochs must be a non-negative integer, received 1.5"),
        ({"batch_size": 2.0}, ValueError, "batch_size must be a positive integer, received 2.0"),
        ({"validation_split": float("nan")}, ValueError, r"validation_split must be in \[0, 1\)"),
        ({"shuffle": "batch"}, ValueError, "shuffle must be True or False"),
    ]:
        with pytest.raises(error, match=message):
            model.fit(x, y, verbose=0, **kwargs)
    assert model.optimizer.iterations == 0


# -- the kernel face ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.complex64, object, bool, np.int32, ">f8", "<U3"])
def test_the_face_refuses_other_dtypes_before_any_engine_sees_them(backend, dtype):
    x = np.ones((1, 4, 4, 2)).astype(dtype)
    kernel = np.ones((2, 2, 2, 3)).astype(dtype)
    for call in (lambda: kernels.conv2d_forward(x, kernel, None, (1, 1), (0, 0, 0, 0)),
                 lambda: kernels.conv2d_relu_forward(x, kernel, None, (1, 1), (0, 0, 0, 0)),
                 lambda: kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0)),
                 lambda: kernels.dense_forward(x.reshape(1, -1), np.ones((32, 2)).astype(dtype), None)):
        with pytest.raises(TypeError, match=re.escape(str(np.dtype(dtype)))):
            call()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_face_gives_the_same_result_for_any_layout_and_never_writes(backend, layout):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 6, 5))
    kernel = rng.standard_normal((3, 2, 5, 4))
    bias = rng.standard_normal(4)
    pads = (1, 1, 0, 1)
    y, cache = kernels.conv2d_forward(x, kernel, bias, (2, 1), pads)
    dy = rng.standard_normal(y.shape)
    expected = kernels.conv2d_backward(dy, cache)
    pooled, pool_cache = kernels.maxpool2d_forward(x, (2, 2), (2, 1), (0, 1, 0, 0))
    dpool = kernels.maxpool2d_backward(np.ones_like(pooled), pool_cache)
    x2d, dense_kernel = x.reshape(2, -1), rng.standard_normal((210, 3))
    dense_y, dense_cache = kernels.dense_forward(x2d, dense_kernel, bias[:3], relu=True)
    dense_dy = rng.standard_normal(dense_y.shape)
    dense_grads = kernels.dense_backward(dense_dy, dense_cache)

    make = LAYOUTS[layout]
    originals = (x, kernel, bias, dy, x2d, dense_kernel, dense_dy, np.ones_like(pooled))
    given = [make(a) for a in originals]
    x_, kernel_, bias_, dy_, x2d_, dense_kernel_, dense_dy_, dpooled_ = given
    y2, cache2 = kernels.conv2d_forward(x_, kernel_, bias_, (2, 1), pads)
    np.testing.assert_array_equal(y2, y)
    for got, want in zip(kernels.conv2d_backward(dy_, cache2), expected):
        np.testing.assert_array_equal(got, want)
    y3, cache3 = kernels.conv2d_relu_forward(x_, kernel_, bias_, (2, 1), pads)
    np.testing.assert_array_equal(y3, np.maximum(y, 0))
    pooled2, pool_cache2 = kernels.maxpool2d_forward(x_, (2, 2), (2, 1), (0, 1, 0, 0))
    np.testing.assert_array_equal(pooled2, pooled)
    np.testing.assert_array_equal(kernels.maxpool2d_backward(dpooled_, pool_cache2), dpool)
    dense_y2, dense_cache2 = kernels.dense_forward(x2d_, dense_kernel_, make(bias[:3]), relu=True)
    # The NumPy engine hands Fortran-ordered operands to BLAS as they are, which sums in another
    # order: equal to the last few bits only (reported; the model path is always contiguous).
    same = np.testing.assert_array_equal if backend == "c" else \
        lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    same(dense_y2, dense_y)
    for got, want in zip(kernels.dense_backward(dense_dy_, dense_cache2), dense_grads):
        same(got, want)
    for original, handed in zip(originals, given):
        np.testing.assert_array_equal(handed, original)     # nothing was written


# -- images -----------------------------------------------------------------------------------------

def trousers(height=40, width=30):
    picture = np.full((height, width), 255, np.uint8)      # white background, dark item
    picture[5:35, 8:13] = 30
    picture[5:35, 17:22] = 30
    picture[5:10, 8:22] = 30
    return picture


@pytest.mark.parametrize("dtype", [object, np.complex64, "<U3", "S3", "datetime64[s]"])
def test_prepare_image_refuses_other_dtypes_with_a_type_error_naming_the_image(dtype):
    with pytest.raises(TypeError, match=re.escape(f"image: pixels must be bool, integers or floats, "
                                                  f"received dtype {np.dtype(dtype)}")):
        images.prepare_image(trousers().astype(dtype))


def test_prepare_image_on_ragged_lists_names_the_image():
    with pytest.raises(ValueError, match="image: expected an array of pixels, could not convert list"):
        images.prepare_image([[0, 255], [0]])


def test_huge_float_pixels_are_white_not_reported_as_infinite():
    # Bug: float64 values beyond float32's range were cast first and then refused as "NaN or
    # infinite"; a float picture above 1 is read as 0..255, so above 255 is white.
    picture = trousers().astype(np.float64)
    expected = images.prepare_image(picture)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # no overflow warning either
        np.testing.assert_array_equal(images.prepare_image(np.where(picture == 255, 1e300, picture)), expected)
    with pytest.raises(ValueError, match="NaN or infinite"):
        images.prepare_image(np.where(picture == 255, np.inf, picture))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_prepare_image_gives_the_same_result_for_any_layout_and_never_writes(layout):
    for picture in (trousers(), np.dstack([trousers()] * 3), trousers().astype(np.float32) / 255):
        expected = images.prepare_image(picture)
        given = LAYOUTS[layout](picture)
        np.testing.assert_array_equal(images.prepare_image(given), expected)
        np.testing.assert_array_equal(given, picture)


def test_a_decompression_bomb_is_a_value_error_and_load_images_goes_on(tmp_path, monkeypatch):
    # Bug: Pillow's DecompressionBombError is an Exception of its own, so it escaped both
    # load_image (documented to raise ValueError) and load_images (documented not to stop).
    Image = pytest.importorskip("PIL.Image")
    bomb, good = tmp_path / "bomb.png", tmp_path / "good.png"
    Image.fromarray(trousers(200, 150)).save(bomb)
    Image.fromarray(trousers()).save(good)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)     # 200 x 150 is then over twice the limit
    with pytest.raises(ValueError, match=f"{re.escape(str(bomb))}: the picture is too large"):
        images.load_image(bomb)
    (_, first), (_, second) = images.load_images([bomb, good])
    assert isinstance(first, ValueError) and second.shape == (28, 28)


# -- load_data's arguments ---------------------------------------------------------------------------

@pytest.fixture
def no_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.delenv("MINICNN_DATA_URLS", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"base_urls": ["file:///etc"]}, ValueError, "base_urls must hold http:// or https:// URLs, received 'file:///etc'"),
    ({"base_urls": "ftp://example.org/data"}, ValueError, "http:// or https://"),
    ({"base_urls": ["example.org"]}, ValueError, "received 'example.org'"),
    ({"base_urls": [5]}, TypeError, "base_urls must hold URL strings, received 5"),
    ({"base_urls": 5}, TypeError, "base_urls must be a URL string or a list of them, received int"),
    ({"timeout": "5"}, TypeError, "timeout must be a number of seconds, received '5'"),
    ({"timeout": 0}, ValueError, "timeout must be a positive, finite number"),
    ({"timeout": float("inf")}, ValueError, "timeout must be a positive, finite number"),
    ({"retries": "3"}, TypeError, "retries must be an integer"),
    ({"retries": 0}, ValueError, "retries must be at least 1"),
    ({"path": 5}, TypeError, "path must be a directory"),
])
def test_load_data_refuses_bad_arguments_before_any_request(no_data, kwargs, error, message):
    # Bug: file://, ftp:// or bare-word URLs were retried with back-off (3 s each), then lost in
    # "could not be downloaded"; bad timeout/retries/path failed inside requests or Python.
    with pytest.raises(error, match=re.escape(message)):
        fm.load_data(progress=False, **kwargs)


def test_minicnn_data_urls_with_another_scheme_is_named(no_data, monkeypatch):
    monkeypatch.setenv("MINICNN_DATA_URLS", "https://example.org/a file:///etc/shadow")
    with pytest.raises(ValueError, match="MINICNN_DATA_URLS must hold http:// or https:// URLs, received 'file:///etc/shadow'"):
        fm.load_data(progress=False)


# -- model files ---------------------------------------------------------------------------------------

def test_load_model_refuses_a_non_path():
    for bad in (5, None, ["model.npz"]):
        with pytest.raises(TypeError, match="filepath must be a path"):
            minicnn.load_model(bad)


def test_a_tiny_file_declaring_a_huge_architecture_costs_no_time_or_memory(tmp_path):
    """Bug: building the architecture ran the initializers before the weights were compared, so
    a 2 KB file declaring Dense(8000) on 8000 features took 2 s and 730 MB (and a larger one
    any amount) before load_model said "weights do not fit". The bound below: the file is
    refused in < 1 s with < 40 MB of peak memory growth, for a declared 1 GB kernel."""
    script = textwrap.dedent(f"""
        import json, time, numpy as np, minicnn
        from minicnn import Dense, Sequential

        def high_water_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024

        path = Sequential([Dense(2, input_shape=(3,))]).save({str(tmp_path / 'small.npz')!r})
        with np.load(path) as npz:
            entries = {{name: npz[name] for name in npz.files}}
        header = json.loads(entries["minicnn_header"].tobytes())
        config = header["model"]["layers"][0]["config"]
        config.update(units=16000, input_shape=[16000])       # a 16000 x 16000 float32 kernel
        header["model"]["build_input_shape"] = [16000]
        entries["minicnn_header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        np.savez({str(tmp_path / 'huge.npz')!r}, **entries)
        before, start = high_water_mb(), time.perf_counter()
        try:
            minicnn.load_model({str(tmp_path / 'huge.npz')!r})
        except minicnn.ModelFileError as error:
            print("refused:", error)
        print(time.perf_counter() - start, high_water_mb() - before)
    """)
    result = run_python(["-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    refused, numbers = result.stdout.strip().splitlines()
    assert "weights do not fit its architecture" in refused and "(16000, 16000)" in refused
    seconds, megabytes = map(float, numbers.split())
    assert seconds < 1.0 and megabytes < 40, (seconds, megabytes)
    assert (tmp_path / "huge.npz").stat().st_size < 4096


def test_loaded_layers_keep_their_own_initializers(tmp_path):
    model = Sequential([Conv2D(2, 3, kernel_initializer="he_normal", bias_initializer="ones",
                               input_shape=(5, 5, 1)), Flatten(), Dense(2, kernel_initializer="glorot_normal")])
    loaded = minicnn.load_model(model.save(tmp_path / "m.npz"))
    assert loaded.get_config() == model.get_config()
    assert [w.tobytes() for w in loaded.get_weights()] == [w.tobytes() for w in model.get_weights()]


# -- training faults ---------------------------------------------------------------------------------

class AtEpoch(Callback):
    """Runs `action(model)` at the beginning of one epoch (0-based)."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.action(self.model)


def diverging_run(tmp_path, action):
    """Two epochs, a checkpoint after each at one fixed path; `action` at the start of the second."""
    x, y = uint8_images(48)
    x = x.astype(np.float32)                     # pixels left in 0..255 (no /255): big gradients
    model = Sequential([Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(2),
                        Flatten(), Dense(3, activation="softmax")])
    minicnn.set_seed(0)
    model.compile(minicnn.optimizers.SGD(1e-5), "sparse_categorical_crossentropy")
    path = tmp_path / "checkpoint.npz"
    saved = {}

    def remember(model):
        saved["bytes"] = path.read_bytes()
        saved["weights"] = [w.copy() for w in model.get_weights()]
        action(model)

    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
                            callbacks=[ModelCheckpoint(path), AtEpoch(1, remember)])
    return model, path, saved, history, [str(w.message) for w in caught], x


def test_a_nan_loss_stops_training_and_the_last_checkpoint_loads_and_predicts(tmp_path):
    def overflow_the_outputs(model):
        model.layers[-1].params["kernel"][...] = 3e38     # finite weights, inf - inf in the softmax

    model, path, saved, history, messages, x = diverging_run(tmp_path, overflow_the_outputs)
    assert math.isnan(history.history["loss"][1])
    assert any("loss became nan in epoch 2, batch 0" in m and "last finite ones" in m for m in messages), messages
    # The epoch that diverged is not checkpointed: its finite weights give NaN outputs.
    assert any(m.startswith("ModelCheckpoint: epoch 2 not saved") and "its loss is nan" in m for m in messages)
    assert path.read_bytes() == saved["bytes"]
    checkpoint = minicnn.load_model(path)              # epoch 1's model, loadable and useful
    probabilities = checkpoint.predict(x, verbose=0)
    assert np.isfinite(probabilities).all() and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    checkpoint.fit(x, np.arange(len(x)) % 3, epochs=1, batch_size=8, verbose=0)   # and trains on
    assert all(np.isfinite(w).all() for w in checkpoint.get_weights())


def test_an_overflowing_update_is_reported_and_never_replaces_the_last_good_checkpoint(tmp_path):
    # Bug: an update that overflowed (huge gradient x learning rate) left inf weights behind a
    # finite loss; the stop message still said "the weights are the last finite ones", and
    # ModelCheckpoint then replaced the good checkpoint with one load_model refuses.
    def absurd_learning_rate(model):
        model.optimizer.learning_rate = 3e38

    model, path, saved, history, messages, x = diverging_run(tmp_path, absurd_learning_rate)
    assert not all(np.isfinite(w).all() for w in model.get_weights())
    assert any("the weights hold NaN or inf; reload the last checkpoint" in m for m in messages), messages
    assert any(m.startswith("ModelCheckpoint: epoch 2 not saved") and "previous checkpoint is kept" in m
               for m in messages), messages
    model.stop_training = False
    model.layers[0].params["kernel"][...] = np.nan     # and with a finite loss in the logs:
    checkpoint_callback = ModelCheckpoint(path)
    checkpoint_callback.set_model(model)
    with pytest.warns(RuntimeWarning, match="conv2d.*/kernel hold NaN or inf"):
        checkpoint_callback.on_epoch_end(2, {"loss": 0.5})
    assert path.read_bytes() == saved["bytes"]
    checkpoint = minicnn.load_model(path)
    for loaded, before in zip(checkpoint.get_weights(), saved["weights"]):
        np.testing.assert_array_equal(loaded, before)
    assert np.isfinite(checkpoint.predict(x, verbose=0)).all()
    with pytest.raises(ValueError, match="hold NaN or inf .*nothing was written"):
        model.save(path)
    with pytest.raises(ValueError, match="hold NaN or inf"):
        model.save_weights(tmp_path / "weights.npz")
    assert path.read_bytes() == saved["bytes"] and not (tmp_path / "weights.npz").exists()


# -- the direction of imports (issue 11) -----------------------------------------------------------

def minicnn_imports():
    """{module: ({minicnn modules it imports at the top}, {those it imports inside functions})}."""
    import ast

    package = Path(minicnn.__file__).resolve().parent
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    found = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        top, nested = set(), set()
        tree = ast.parse(path.read_text())
        functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inside = {id(node) for function in functions for node in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[:len(here.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                           for alias in node.names}
            elif isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            else:
                continue
            targets = {t for t in targets if t.split(".")[0] == "minicnn" and t != name}
            (nested if id(node) in inside else top).update(targets)
        found[name] = (top, nested)
    return found


def test_imports_run_one_way():
    imports = minicnn_imports()
    graph = {name: top | nested for name, (top, nested) in imports.items()}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for target in graph.get(todo.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    cycles = sorted(name for name in graph if name in reachable(name))
    assert not cycles, f"modules on an import cycle: {cycles}"
    # __main__ defers its imports so that `python -m minicnn --help` starts fast, not to dodge a cycle.
    nested = {name: sorted(n) for name, (_, n) in imports.items() if n and name != "minicnn.__main__"}
    assert not nested, f"function-local imports: {nested}"
    assert imports["minicnn.io"][0] <= {"minicnn.errors", "minicnn.version"}
    for name in graph:
        reached = reachable(name)
        if name.startswith(("minicnn.training", "minicnn.saving", "minicnn.layers", "minicnn.io")):
            assert "minicnn.model" not in reached, f"{name} imports the model"
        if name.startswith(("minicnn.layers", "minicnn.training.callbacks")):
            assert not reached & {"minicnn.saving", "minicnn.io", "minicnn.training.trainer"}, name


def test_keras_spelled_modules_are_real_modules_sharing_the_training_classes():
    import sys

    for name in ("optimizers", "losses", "metrics", "callbacks"):
        public = getattr(minicnn, name)
        training = getattr(minicnn.training, name)
        assert public.__name__ == f"minicnn.{name}" and public is not training
        assert sys.modules[f"minicnn.{name}"] is public
        assert all(getattr(public, item) is getattr(training, item) for item in public.__all__)


def test_sizes_beyond_the_engines_largest_dimension_are_refused_when_the_layer_is_made():
    # Bug: strides=2**31 was accepted and failed only at the first forward, in a message naming
    # conv2d_forward rather than the layer; Dense(2**31) was accepted and then killed by the OS.
    cases = [(lambda: Conv2D(4, 3, strides=2**31, padding="same", name="c"), "Conv2D 'c': strides must be at most"),
             (lambda: Conv2D(2**25, 3, name="c"), "Conv2D 'c': filters must be at most"),
             (lambda: MaxPooling2D(pool_size=2**24 + 1, name="c"), "MaxPooling2D 'c': pool_size must be at most"),
             (lambda: Dense(2**31, name="c"), "Dense 'c': units must be at most")]
    for make, words in cases:
        with pytest.raises(ValueError) as caught:
            make()
        message = str(caught.value)
        assert message.startswith(words) and "16,777,216" in message, message


def test_a_weight_larger_than_memory_is_a_memory_error_naming_the_layer():
    model = Sequential([Flatten(input_shape=(28, 28, 1))])
    with pytest.raises(MemoryError, match=r"Dense 'too_big': weight 'kernel' of shape \(784, 16777216\) needs 49\.0 GiB"):
        model.add(Dense(2**24, name="too_big"))
