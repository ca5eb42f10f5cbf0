"""Issue 12's layers: AveragePooling2D, GlobalAveragePooling2D, BatchNormalization, Dropout,
RandomFlip, RandomTranslation.

References: the float64 loops in naive.py (|error| <= 1e-12 in float64, relative 1e-5 in
float32), finite differences (gradcheck.py, relative error < 1e-7 as test_gradients.py), and the
layer contract (dtype in = dtype out, dy never mutated, clear errors). The PyTorch fixtures are
in test_reference.py.
"""
import numpy as np
import pytest

import minicnn
import naive
from gradcheck import numeric_gradient, relative_error
from minicnn import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                     GlobalAveragePooling2D, MaxPooling2D, RandomFlip, RandomTranslation, ReLU,
                     Sequential)
from minicnn.layers import REGISTRY

MAX_RELATIVE_ERROR = 1e-7      # finite differences, as test_gradients.py
F64_ATOL = 1e-12               # float64 against the naive loops
F32_RTOL = 1e-5                # float32 against the naive loops, relative to the output's scale


def assert_matches(actual, expected, dtype, what):
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    if dtype == np.float64:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=F64_ATOL, err_msg=what)
    else:
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(actual, expected, rtol=0, atol=F32_RTOL * scale, err_msg=what)


def check_gradients(make_layer, x, rng, params=()):
    """Finite differences through sum(layer(x) * dy) for a layer that `make_layer()` creates
    afresh for every evaluation (random layers with a seed then draw the same mask/shift each
    time); `params` are weights set on every fresh layer and checked too."""
    def fresh():
        layer = make_layer()
        layer.build(x.shape[1:])
        if params:
            layer.set_weights(params)
        return layer

    layer = fresh()
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    assert np.array_equal(dy, dy_before), "backward mutated dy"
    analytic = {"x": dx, **{key: layer.grads[key].copy() for key in layer.params}}
    keys = [key for key in layer.weight_names if key in layer.params]

    def f():
        current = fresh()
        if params:
            current.set_weights(weights)
        return float(np.sum(current.forward(x, training=True) * dy))

    weights = [w.copy() for w in params]
    errors = {"x": relative_error(analytic["x"], numeric_gradient(f, x))}
    for key in layer.params:
        errors[key] = relative_error(analytic[key], numeric_gradient(f, weights[keys.index(key)]))
    assert max(errors.values()) < MAX_RELATIVE_ERROR, errors
    return errors


# ---- AveragePooling2D -----------------------------------------------------------------------

AVG_CASES = [   # (input shape, pool_size, strides, padding)
    ((1, 5, 5, 1), (2, 2), None, "valid"),
    ((2, 7, 6, 3), (3, 3), (2, 2), "valid"),
    ((2, 7, 6, 3), (3, 3), (2, 2), "same"),
    ((1, 6, 7, 2), (2, 3), (1, 2), "same"),
    ((3, 9, 5, 4), (3, 2), (3, 1), "same"),
    ((1, 4, 4, 5), (4, 4), (1, 1), "same"),
    ((2, 8, 9, 2), (1, 3), (3, 3), "valid"),
    ((1, 5, 3, 17), (2, 2), (1, 1), "same"),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, pool_size, strides, padding", AVG_CASES, ids=str)
def test_average_pooling_matches_naive_loops(backend, shape, pool_size, strides, padding, dtype, rng):
    layer = AveragePooling2D(pool_size, strides=strides, padding=padding, dtype=np.dtype(dtype).name)
    layer.build(shape[1:])
    x = rng.standard_normal(shape).astype(dtype)
    x_before = x.copy()
    y = layer.forward(x, training=True)
    strides = layer.strides
    pads = naive.same_pads(shape[1], pool_size[0], strides[0]) + naive.same_pads(shape[2], pool_size[1], strides[1]) \
        if padding == "same" else (0, 0, 0, 0)
    expected = naive.avgpool2d(x.astype(np.float64), pool_size, strides, pads)
    assert_matches(y, expected, dtype, "y")
    assert y.shape[1:] == layer.output_shape
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    assert_matches(dx, naive.avgpool2d_backward(dy.astype(np.float64), shape, pool_size, strides, pads), dtype, "dx")
    assert np.array_equal(dy, dy_before) and np.array_equal(x, x_before)


def test_average_pooling_same_border_windows_average_only_cells_inside():
    # 3x3 windows, stride 1, 'same' on a 2x2 image: every window covers all 4 cells, so the
    # mean is the image mean (counting the padding would give 4/9 of it).
    x = np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2, 1)
    y = AveragePooling2D(3, strides=1, padding="same", dtype="float64")(x)
    np.testing.assert_array_equal(y, np.full((1, 2, 2, 1), 3.0))


@pytest.mark.parametrize("pool_size, strides, padding", [
    ((2, 2), None, "valid"), ((3, 2), (2, 1), "same"), ((3, 3), (2, 3), "same"), ((2, 3), (1, 1), "valid"),
])
def test_average_pooling_gradients(backend, pool_size, strides, padding, rng):
    x = rng.standard_normal((2, 7, 6, 2))
    check_gradients(lambda: AveragePooling2D(pool_size, strides=strides, padding=padding, dtype="float64"), x, rng)


# ---- GlobalAveragePooling2D -----------------------------------------------------------------

@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_global_average_pooling_matches_loops(backend, keepdims, dtype, rng):
    x = rng.standard_normal((3, 5, 7, 4)).astype(dtype)
    layer = GlobalAveragePooling2D(keepdims=keepdims, dtype=np.dtype(dtype).name)
    y = layer.forward(x, training=True)
    expected = np.zeros((3, 4))
    for b in range(3):
        for c in range(4):
            expected[b, c] = sum(float(x[b, i, j, c]) for i in range(5) for j in range(7)) / 35
    assert layer.output_shape == ((1, 1, 4) if keepdims else (4,))
    assert_matches(y, expected.reshape((3,) + layer.output_shape), dtype, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert_matches(dx, np.broadcast_to(dy.reshape(3, 1, 1, 4).astype(np.float64) / 35, x.shape), dtype, "dx")


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_gradients(backend, keepdims, rng):
    check_gradients(lambda: GlobalAveragePooling2D(keepdims=keepdims, dtype="float64"),
                    rng.standard_normal((2, 3, 4, 3)), rng)


# ---- BatchNormalization ---------------------------------------------------------------------

def columns(x, axis):
    """x with `axis` moved last, as (M, C)."""
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


BN_CASES = [   # (input shape, axis)
    ((6, 5), -1), ((1, 3), 1), ((2, 4, 3, 5), -1), ((3, 2, 5, 4), 3), ((2, 4, 3, 5), 1), ((2, 3, 4, 2), -3),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, axis", BN_CASES, ids=str)
def test_batch_normalization_training_matches_naive_loops(backend, shape, axis, dtype, rng):
    layer = BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3, dtype=np.dtype(dtype).name)
    layer.build(shape[1:])
    channels = shape[axis]
    gamma, beta = rng.standard_normal(channels), rng.standard_normal(channels)
    moving_mean, moving_variance = rng.standard_normal(channels), rng.random(channels) + 0.5
    layer.set_weights([gamma, beta, moving_mean, moving_variance])
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    y = layer.forward(x, training=True)
    y64, mean, variance = naive.batchnorm(columns(x.astype(np.float64), axis), gamma, beta, 1e-3)
    assert_matches(y, np.moveaxis(y64.reshape(np.moveaxis(x, axis, -1).shape), -1, axis), dtype, "y")
    # Keras' rule: moving = moving * momentum + batch * (1 - momentum), biased batch variance.
    expected_mean = moving_mean.astype(dtype) * 0.9 + mean * 0.1
    expected_variance = moving_variance.astype(dtype) * 0.9 + variance * 0.1
    new = layer.get_weights()
    assert_matches(new[2], expected_mean, dtype, "moving_mean")
    assert_matches(new[3], expected_variance, dtype, "moving_variance")
    dy = rng.standard_normal(shape).astype(dtype)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    dx64, dgamma, dbeta = naive.batchnorm_backward(columns(dy.astype(np.float64), axis),
                                                   columns(x.astype(np.float64), axis), gamma, 1e-3)
    assert_matches(dx, np.moveaxis(dx64.reshape(np.moveaxis(x, axis, -1).shape), -1, axis), dtype, "dx")
    assert_matches(layer.grads["gamma"], dgamma, dtype, "dgamma")
    assert_matches(layer.grads["beta"], dbeta, dtype, "dbeta")
    assert np.array_equal(dy, dy_before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, axis", BN_CASES[:4], ids=str)
def test_batch_normalization_inference_uses_the_moving_statistics(backend, shape, axis, dtype, rng):
    layer = BatchNormalization(axis=axis, dtype=np.dtype(dtype).name)
    layer.build(shape[1:])
    channels = shape[axis]
    weights = [rng.standard_normal(channels), rng.standard_normal(channels),
               rng.standard_normal(channels), rng.random(channels) + 0.5]
    layer.set_weights(weights)
    x = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x, training=False)
    expected, _, _ = naive.batchnorm(columns(x.astype(np.float64), axis), weights[0], weights[1], 1e-3,
                                     mean=weights[2], variance=weights[3])
    assert_matches(y, np.moveaxis(expected.reshape(np.moveaxis(x, axis, -1).shape), -1, axis), dtype, "y")
    for before, after in zip(weights, layer.get_weights()):
        np.testing.assert_array_equal(after, before.astype(dtype))   # nothing moved
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("shape, axis", [((5, 3), -1), ((2, 3, 3, 2), -1), ((2, 3, 4, 2), 1)], ids=str)
def test_batch_normalization_gradients(backend, center, scale, shape, axis, rng):
    channels = shape[axis]
    weights = ([rng.standard_normal(channels)] if scale else []) + \
              ([rng.standard_normal(channels)] if center else []) + \
              [rng.standard_normal(channels), rng.random(channels) + 0.5]
    errors = check_gradients(
        lambda: BatchNormalization(axis=axis, center=center, scale=scale, epsilon=1e-3, dtype="float64"),
        rng.standard_normal(shape) * 2, rng, params=weights)
    assert set(errors) == {"x"} | ({"gamma"} if scale else set()) | ({"beta"} if center else set())


def test_batch_normalization_weights_follow_keras_order_and_omit_what_is_off():
    for center, scale, names in [(True, True, ["gamma", "beta", "moving_mean", "moving_variance"]),
                                 (False, True, ["gamma", "moving_mean", "moving_variance"]),
                                 (True, False, ["beta", "moving_mean", "moving_variance"])]:
        layer = BatchNormalization(center=center, scale=scale)
        layer.build((4, 4, 3))
        weights = layer.get_weights()
        assert len(weights) == len(names)
        initial = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
        for name, weight in zip(names, weights):
            np.testing.assert_array_equal(weight, np.full(3, initial[name], np.float32))
        assert sorted(layer.params) == sorted(set(names) & {"gamma", "beta"})   # the trainable ones
        assert layer.count_params() == 3 * len(names) and layer.count_non_trainable_params() == 6


def test_moving_statistics_are_never_touched_by_the_optimizer():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 3)) * 2 + 5).astype(np.float32)
    y = np.array([0, 1] * 4)
    for optimizer in ("sgd", "adam", "rmsprop"):
        model = Sequential([BatchNormalization(input_shape=(3,), momentum=0.5), Dense(2, activation="softmax")])
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        model.train_on_batch(x, y)
        bn = model.layers[0]
        # Only the layer's own update: 0.5 * initial + 0.5 * the batch's statistics.
        np.testing.assert_allclose(bn.state["moving_mean"], 0.5 * x.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(bn.state["moving_variance"], 0.5 + 0.5 * x.var(axis=0), rtol=1e-6)
        assert not np.array_equal(bn.params["gamma"], np.ones(3, np.float32)), "gamma was not trained"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_relu_after_batch_normalization_runs_in_its_pass_with_the_same_bits(backend, dtype, monkeypatch):
    """Sequential runs BatchNormalization + ReLU as one pass (and the ReLU's backward as part of
    the normalisation's); outputs, input gradient and weight gradients equal running the layers
    one by one, bit for bit, for image and vector inputs, training and inference."""
    name = np.dtype(dtype).name
    minicnn.set_seed(5)

    def layers():
        return [Conv2D(6, 3, padding="same", input_shape=(7, 7, 2), dtype=name), BatchNormalization(),
                minicnn.layers.ReLU(), Flatten(), Dense(8), BatchNormalization(axis=1), minicnn.layers.ReLU(),
                Dense(3)]
    model = Sequential(layers())
    x = np.random.default_rng(0).standard_normal((5, 7, 7, 2)).astype(dtype)
    dy = np.random.default_rng(1).standard_normal((5, 3)).astype(dtype)
    relu_calls = []
    real_relu = minicnn.kernels.relu_forward
    monkeypatch.setattr(minicnn.kernels, "relu_forward", lambda x: relu_calls.append(x.shape) or real_relu(x))

    for training in (True, False):
        y_fused = model.forward(x, training=training)
        assert relu_calls == [], "the ReLU layers ran a pass of their own"
        if training:
            dx_fused = model.backward(dy)
            grads_fused = [g.tobytes() for layer in model.layers for g in layer.grads.values() if g is not None]
        h = x                                  # the same layers, one at a time: no fusion
        for layer in model.layers:
            h = layer.forward(h, training=training)
        assert len(relu_calls) == 2
        relu_calls.clear()
        assert h.tobytes() == y_fused.tobytes()
        if training:
            g = dy
            for layer in reversed(model.layers):
                g = layer.backward(g)
            assert g.tobytes() == dx_fused.tobytes()
            assert grads_fused == [g.tobytes() for layer in model.layers for g in layer.grads.values() if g is not None]


# ---- Dropout --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_scales_kept_values_exactly_and_preserves_the_mean(backend, dtype):
    rate = 0.3
    x = np.random.default_rng(2).random((1000, 1000)).astype(dtype) + 1
    layer = Dropout(rate, seed=7, dtype=np.dtype(dtype).name)
    y = layer.forward(x, training=True)
    assert y.dtype == dtype
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept] * dtype(1 / (1 - rate)))
    # 1e6 cells: the kept fraction's standard deviation is 4.6e-4, so 3e-3 is > 6 sigma.
    assert abs(kept.mean() - (1 - rate)) < 3e-3
    assert abs(y.mean() / x.mean() - 1) < 5e-3
    dy = np.random.default_rng(3).standard_normal(x.shape).astype(dtype)
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx[kept], dy[kept] * dtype(1 / (1 - rate)))
    assert not dx[~kept].any()


def test_dropout_gradients_with_a_fixed_mask(rng):
    check_gradients(lambda: Dropout(0.4, seed=11, dtype="float64"), rng.standard_normal((3, 4, 5, 2)), rng)


@pytest.mark.parametrize("make", [
    lambda: Dropout(0.5), lambda: RandomFlip("horizontal_and_vertical"), lambda: RandomTranslation(0.4, 0.4),
], ids=["Dropout", "RandomFlip", "RandomTranslation"])
def test_random_layers_are_identities_when_not_training(make, rng):
    x = rng.standard_normal((4, 6, 5, 2)).astype(np.float32)
    layer = make()
    y = layer.forward(x, training=False)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(x))
    assert not np.array_equal(layer.forward(x, training=True), x)   # but active when training


# ---- RandomFlip and RandomTranslation -------------------------------------------------------

@pytest.mark.parametrize("mode", RandomFlip.MODES)
def test_random_flip_flips_whole_images_and_its_gradient_is_the_adjoint(mode, rng):
    x = rng.standard_normal((64, 4, 5, 2))
    layer = RandomFlip(mode, seed=3, dtype="float64")
    y = layer.forward(x, training=True)
    seen = set()
    for image, out in zip(x, y):
        options = {"none": image, "h": image[:, ::-1], "v": image[::-1], "hv": image[::-1, ::-1]}
        match = [name for name, candidate in options.items() if np.array_equal(out, candidate)]
        assert match, "an output image is not a flip of its input"
        seen.add(match[0])
    allowed = {"horizontal": {"none", "h"}, "vertical": {"none", "v"},
               "horizontal_and_vertical": {"none", "h", "v", "hv"}}[mode]
    assert seen == allowed
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    # Adjoint: <flip(x), dy> == <x, flip^T(dy)>.
    assert abs(np.sum(y * dy) - np.sum(x * dx)) < 1e-10
    check_gradients(lambda: RandomFlip(mode, seed=3, dtype="float64"), rng.standard_normal((6, 3, 4, 1)), rng)


def test_random_translation_shifts_by_the_drawn_whole_pixels_with_constant_fill():
    x = np.arange(2 * 8 * 10 * 1, dtype=np.float64).reshape(2, 8, 10, 1) + 1
    # A fixed range: exactly 0.25 * 8 = 2 rows down and -0.1 * 10 = 1 column left.
    layer = RandomTranslation((0.25, 0.25), (-0.1, -0.1), fill_value=-5.0, dtype="float64")
    y = layer.forward(x, training=True)
    expected = np.full_like(x, -5.0)
    expected[:, 2:, :9] = x[:, :6, 1:]
    np.testing.assert_array_equal(y, expected)


def test_random_translation_draws_within_the_factors_and_its_gradient_is_the_adjoint(rng):
    x = rng.standard_normal((200, 10, 10, 1)) + 10     # no zero: every shifted cell is visible
    layer = RandomTranslation(0.3, (0.0, 0.2), seed=5, dtype="float64")
    y = layer.forward(x, training=True)
    down, right = layer._shifts
    assert down.min() >= -3 and down.max() <= 3 and right.min() >= 0 and right.max() <= 2
    assert len(set(down)) == 7 and len(set(right)) == 3
    for image in range(len(x)):
        d, r = down[image], right[image]
        np.testing.assert_array_equal(y[image, max(d, 0):10 + min(d, 0), max(r, 0):10 + min(r, 0)],
                                      x[image, max(-d, 0):10 - max(d, 0), max(-r, 0):10 - max(r, 0)])
        assert np.count_nonzero(y[image] == 0) == 100 - (10 - abs(d)) * (10 - abs(r))
    dy = rng.standard_normal(y.shape)
    assert abs(np.sum(y * dy) - np.sum(x * layer.backward(dy))) < 1e-9
    check_gradients(lambda: RandomTranslation(0.5, 0.5, seed=9, dtype="float64"),
                    rng.standard_normal((5, 4, 5, 2)), rng)


# ---- every new layer: contract, errors, configs, files, training ----------------------------

def new_layers():
    return [AveragePooling2D(), GlobalAveragePooling2D(), BatchNormalization(), Dropout(0.5),
            RandomFlip(), RandomTranslation(0.2, 0.2)]


@pytest.mark.parametrize("index", range(6))
def test_dtype_in_is_dtype_out_and_other_dtypes_are_refused(backend, index, rng):
    for dtype in ("float32", "float64"):
        layer = new_layers()[index]
        layer.adopt_dtype(dtype)
        x = rng.standard_normal((2, 6, 4, 3)).astype(dtype)
        for training in (False, True):
            y = layer.forward(x, training=training)
            assert y.dtype == dtype
        dx = layer.backward(np.ones_like(y))
        assert dx.dtype == dtype and dx.shape == x.shape
        other = "float64" if dtype == "float32" else "float32"
        with pytest.raises(TypeError, match="dtype"):
            layer.forward(x.astype(other))
        with pytest.raises(TypeError, match=dtype):
            layer.backward(np.ones_like(y, dtype=other))


@pytest.mark.parametrize("make, message", [
    (lambda: Dropout(1.0), r"Dropout 'dropout.*rate must be a number in \[0, 1\), received 1\.0"),
    (lambda: Dropout(-0.1), r"rate must be .*-0\.1"),
    (lambda: Dropout("0.5"), r"rate must be"),
    (lambda: Dropout(0.5, seed=-1), r"seed must be .*-1"),
    (lambda: BatchNormalization(momentum=2), r"BatchNormalization .*momentum must be in \[0, 1\], received 2"),
    (lambda: BatchNormalization(epsilon=0), r"epsilon must be > 0, received 0"),
    (lambda: BatchNormalization(axis=1.5), r"axis must be an integer, received 1\.5"),
    (lambda: BatchNormalization(center="yes"), r"center must be True or False"),
    (lambda: AveragePooling2D(pool_size=0), r"AveragePooling2D .*pool_size must be >= 1, received 0"),
    (lambda: AveragePooling2D(padding="full"), r"padding must be 'valid' or 'same', received 'full'"),
    (lambda: GlobalAveragePooling2D(keepdims=1), r"keepdims must be True or False"),
    (lambda: RandomFlip("diagonal"), r"RandomFlip .*mode must be one of .*received 'diagonal'"),
    (lambda: RandomTranslation(1.5, 0.1), r"height_factor must lie in \[-1, 1\].*1\.5"),
    (lambda: RandomTranslation(0.1, (0.3, 0.1)), r"width_factor must lie .*low <= high"),
    (lambda: RandomTranslation(0.1, 0.1, fill_mode="reflect"), r"fill_mode must be 'constant'.*'reflect'"),
])
def test_bad_arguments_name_the_layer_and_what_it_received(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize("layer, shape, message", [
    (AveragePooling2D(), (5,), r"AveragePooling2D .*\(height, width, channels\).*\(5,\)"),
    (AveragePooling2D(pool_size=3), (2, 2, 1), r"pool_size \(3, 3\) does not fit"),
    (GlobalAveragePooling2D(), (4, 4), r"GlobalAveragePooling2D .*\(4, 4\)"),
    (BatchNormalization(axis=2), (5,), r"axis 2 is out of range for inputs of rank 2"),
    (BatchNormalization(axis=0), (4, 4, 3), r"axis 0 is out of range"),
    (BatchNormalization(axis=-5), (4, 4, 3), r"axis -5 is out of range"),
    (RandomFlip(), (4, 4), r"RandomFlip .*\(height, width, channels\)"),
])
def test_bad_input_shapes_are_refused(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.build(shape)


@pytest.mark.parametrize("index", range(6))
def test_configs_round_trip_through_the_registry(index):
    layer = [AveragePooling2D((3, 2), strides=(1, 2), padding="same"), GlobalAveragePooling2D(keepdims=True),
             BatchNormalization(axis=1, momentum=0.8, epsilon=1e-5, center=False), Dropout(0.25, seed=3),
             RandomFlip("vertical", seed=1), RandomTranslation((-0.2, 0.1), 0.3, fill_value=2.0, seed=4)][index]
    config = {"class_name": type(layer).__name__, "config": layer.get_config()}
    clone = REGISTRY.deserialize(config)
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()


def every_layer_model(dtype="float32"):
    return Sequential([
        RandomFlip("horizontal", input_shape=(8, 8, 1)),
        RandomTranslation(0.125, 0.125),
        Conv2D(6, 3, padding="same"),
        BatchNormalization(momentum=0.5),   # moving statistics that settle within a few steps
        ReLU(),
        AveragePooling2D(padding="same"),
        Conv2D(8, 3, padding="same", activation="relu"),
        MaxPooling2D(),
        Dropout(0.2),
        GlobalAveragePooling2D(),
        BatchNormalization(momentum=0.5),
        Dense(3, activation="softmax"),
    ])


def toy_data(n=48):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.random((n, 8, 8, 1)).astype(np.float32) * 0.3
    for i, label in enumerate(y):   # each class lights its own band of rows
        x[i, 2 * label:2 * label + 3] += 1.0
    return x, y


def test_a_model_with_every_new_layer_learns_on_both_engines(backend):
    minicnn.set_seed(1)
    model = every_layer_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = toy_data()
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=12, batch_size=16, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert after < 0.6 * before, (before, after)


def test_set_seed_makes_two_runs_bit_identical(backend):
    runs = []
    for _ in range(2):
        minicnn.set_seed(42)
        model = every_layer_model()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        history = model.fit(*toy_data(), epochs=2, batch_size=16, verbose=0)
        runs.append((history.history["loss"], model.get_weights()))
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_model_files_keep_the_moving_statistics_and_predictions(tmp_path):
    minicnn.set_seed(3)
    model = every_layer_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = toy_data()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    moving = model.layers[3].state["moving_variance"].copy()
    assert not np.array_equal(moving, np.ones_like(moving)), "the moving statistics never moved"
    model.save(tmp_path / "m.npz")
    loaded = minicnn.load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.layers[3].state["moving_variance"], moving)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # ... and the restored optimizer continues training without touching them.
    loaded.fit(x, y, epochs=1, batch_size=48, verbose=0)


def test_summary_counts_the_moving_statistics_as_non_trainable():
    model = every_layer_model()
    lines = []
    model.summary(print_fn=lines.append)
    # Conv 6*9+6=60, BN(6) 24, Conv 8*54+8=440, BN(8) 32, Dense 8*3+3=27.
    assert "Total params: 583" in lines
    assert "Trainable params: 555" in lines
    assert "Non-trainable params: 28" in lines
    assert model.count_params() == 583
    assert any(line.startswith(" batch_normalization") and line.rstrip().endswith(" 24") for line in lines)


def test_a_built_layer_with_only_non_trainable_weights_keeps_its_dtype():
    layer = BatchNormalization(center=False, scale=False)
    layer.build((3,))
    assert len(layer.params) == 0 and layer.count_params() == 6
    with pytest.raises(RuntimeError, match="cannot change dtype"):
        layer.adopt_dtype("float64")
