"""Finite-difference gradient checks (float64, random upstream gradient, relative error < 1e-7)
for every layer's input and parameter gradients, and for a whole small seed model with its
softmax + cross-entropy loss, on every engine."""
import numpy as np
import pytest

from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Softmax

from gradcheck import numeric_gradient, relative_error
from models import seed_model

MAX_RELATIVE_ERROR = 1e-7


def check_layer(layer, x, rng):
    """Assert the analytic dx and every parameter gradient of `layer` match finite differences."""
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    analytic = {"x": dx, **{key: layer.grads[key].copy() for key in layer.params}}

    def f():
        return float(np.sum(layer.forward(x, training=True) * dy))

    errors = {"x": relative_error(analytic["x"], numeric_gradient(f, x))}
    for key, param in layer.params.items():
        errors[key] = relative_error(analytic[key], numeric_gradient(f, param))
    assert max(errors.values()) < MAX_RELATIVE_ERROR, errors
    return errors


CONV_CASES = [
    dict(filters=3, kernel_size=(3, 2), strides=1, padding="same", input=(2, 5, 4, 2)),
    dict(filters=2, kernel_size=3, strides=2, padding="same", input=(2, 7, 6, 3)),
    dict(filters=4, kernel_size=(2, 3), strides=(2, 1), padding="valid", input=(1, 6, 5, 1)),
    dict(filters=2, kernel_size=(4, 4), strides=1, padding="valid", input=(2, 4, 4, 3)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c['kernel_size']}-{c['strides']}-{c['padding']}")
def test_conv2d_gradients(backend, case, rng):
    case = dict(case)
    shape = case.pop("input")
    layer = Conv2D(**case, dtype="float64", bias_initializer="glorot_uniform")
    check_layer(layer, rng.standard_normal(shape), rng)


def test_conv2d_with_relu_gradients(backend, rng):
    layer = Conv2D(3, 3, padding="same", activation="relu", dtype="float64", bias_initializer="glorot_uniform")
    check_layer(layer, rng.standard_normal((2, 5, 5, 2)), rng)


@pytest.mark.parametrize("pool_size,strides,padding", [
    ((2, 2), None, "valid"), ((3, 3), (2, 2), "valid"), ((2, 3), (1, 2), "valid"), ((3, 3), (2, 2), "same"),
])
def test_maxpool2d_gradients_tie_free(backend, pool_size, strides, padding, rng):
    layer = MaxPooling2D(pool_size, strides=strides, padding=padding, dtype="float64")
    # Distinct values spaced far wider than the finite-difference step: no window has a tie.
    x = rng.permutation(2 * 7 * 6 * 2).reshape(2, 7, 6, 2) * 0.01
    check_layer(layer, x.astype(np.float64), rng)


def test_dense_gradients(rng):
    layer = Dense(5, dtype="float64", bias_initializer="glorot_uniform")
    check_layer(layer, rng.standard_normal((3, 7)), rng)


def test_dense_softmax_gradients(rng):
    layer = Dense(4, activation="softmax", dtype="float64")
    check_layer(layer, rng.standard_normal((3, 6)), rng)


def test_relu_gradients_away_from_the_kink(rng):
    x = rng.standard_normal((3, 4, 5, 2))
    x[np.abs(x) < 1e-3] = 0.5  # the kink at 0 is not differentiable
    check_layer(ReLU(dtype="float64"), x, rng)


def test_softmax_backward_is_the_jacobian_vector_product(rng):
    check_layer(Softmax(dtype="float64"), rng.standard_normal((4, 6)) * 3, rng)
    # ... and it equals J^T dy with the explicit Jacobian diag(y) - y y^T.
    layer = Softmax(dtype="float64")
    logits = rng.standard_normal((2, 5))
    y = layer.forward(logits, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    for row in range(2):
        jacobian = np.diag(y[row]) - np.outer(y[row], y[row])
        np.testing.assert_allclose(dx[row], jacobian.T @ dy[row], rtol=0, atol=1e-15)


def test_flatten_gradient_is_the_inverse_reshape(rng):
    layer = Flatten(dtype="float64")
    x = rng.standard_normal((2, 3, 4, 5))
    y = layer.forward(x, training=True)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(y[1], x[1].ravel())  # row-major over (H, W, C), as Keras
    check_layer(layer, x, rng)


def small_seed_model():
    """The seed model's architecture on 8x8 images, float64, with random biases."""
    return seed_model(size=8, filters=(4, 6), units=8, dtype="float64", bias_initializer="glorot_uniform")


def cross_entropy(probabilities, labels):
    return -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused-softmax-ce", "through-softmax"])
def test_whole_seed_model_with_softmax_cross_entropy(backend, fused):
    rng = np.random.default_rng(7)
    model = small_seed_model()
    x = rng.standard_normal((3, 8, 8, 1))
    labels = np.array([1, 7, 3])
    probabilities = model.forward(x, training=True)
    onehot = np.eye(10)[labels]
    if fused:  # dL/dlogits = (p - onehot) / N, skipping the softmax's own backward
        model.backward((probabilities - onehot) / len(labels), dy_is_logits_gradient=True)
    else:      # dL/dp = -onehot / (N p), then the softmax's Jacobian-vector product
        model.backward(-onehot / (len(labels) * probabilities))
    analytic = [layer.grads[key].copy() for layer in model.layers for key in layer.params]

    def loss():
        return cross_entropy(model.forward(x, training=True), labels)

    numeric = [numeric_gradient(loss, layer.params[key]) for layer in model.layers for key in layer.params]
    errors = [relative_error(a, n) for a, n in zip(analytic, numeric)]
    assert len(errors) == 8 and max(errors) < MAX_RELATIVE_ERROR, errors
