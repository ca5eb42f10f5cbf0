"""Cross-entropy: values by hand, Keras' clipping, the fused softmax gradient, extreme logits."""
import math

import numpy as np
import pytest

import minicnn
from minicnn import Dense, Sequential, Softmax
from minicnn.losses import EPSILON, CategoricalCrossentropy, SparseCategoricalCrossentropy

from gradcheck import numeric_gradient, relative_error

SCCE, CCE = SparseCategoricalCrossentropy, CategoricalCrossentropy


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_values_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    assert SCCE()([0, 2], p) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2, rel=1e-12)
    assert CCE()(np.eye(3)[[0, 2]], p) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2, rel=1e-12)
    soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert CCE()(soft, p) == pytest.approx(-(0.5 * math.log(0.7) + 0.5 * math.log(0.2) + math.log(0.5)) / 2, rel=1e-12)
    z = np.array([[2.0, 1.0, -1.0]])
    lse = math.log(math.exp(2) + math.exp(1) + math.exp(-1))
    assert SCCE(from_logits=True)([1], z) == pytest.approx(lse - 1.0, rel=1e-12)
    assert SCCE()([[1]], p[:1]) == pytest.approx(-math.log(0.2), rel=1e-12)   # (N, 1) labels


def test_probabilities_are_clipped_like_keras():
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert SCCE()([0, 0], p) == pytest.approx(-(math.log(EPSILON) + math.log(1 - EPSILON)) / 2, rel=1e-9)
    assert EPSILON == 1e-7


def test_rows_are_renormalised_like_keras():
    assert SCCE()([0], np.array([[2.0, 2.0]])) == pytest.approx(math.log(2), rel=1e-12)


@pytest.mark.parametrize("loss", [SCCE(), CCE(), SCCE(from_logits=True), CCE(from_logits=True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits_give_finite_values_and_gradients(loss, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, -1e4]], dtype=dtype)
    labels = np.array([1, 0, 2])
    targets = loss.prepare_targets(labels if loss.sparse else np.eye(3)[labels], 3, dtype)
    y_pred = z if loss.from_logits else softmax(z).astype(dtype)
    value, gradient = loss.value_and_gradient(targets, y_pred, fused_softmax=not loss.from_logits)
    assert math.isfinite(value)
    assert gradient.dtype == np.dtype(dtype)
    assert np.all(np.isfinite(gradient))
    if loss.from_logits:
        # per sample: 1e4 - (-1e4); (1e4 + log 2) - (-1e4); log 2 - (-1e4)
        assert value == pytest.approx((2e4 + (2e4 + math.log(2)) + (1e4 + math.log(2))) / 3, rel=1e-6)
    else:   # every sample's true class probability underflows: the clip caps the value at -log(1e-7)
        assert value == pytest.approx(-math.log(1e-7), rel=1e-5)
    # the fused gradient is exact even there: (softmax - onehot) / N
    expected = (softmax(z.astype(np.float64)) - np.eye(3)[labels]) / 3
    np.testing.assert_allclose(gradient, expected, atol=1e-7)


def test_probability_path_without_softmax_is_finite_for_zero_probabilities():
    p = np.array([[0.0, 1.0, 0.0]])
    value, gradient = SCCE().value_and_gradient(np.array([0]), p)
    assert math.isfinite(value) and np.all(np.isfinite(gradient))


@pytest.mark.parametrize("loss_class", [SCCE, CCE])
def test_fused_gradient_equals_softmax_backward_of_the_probability_gradient(loss_class):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    loss = loss_class()
    targets = loss.prepare_targets(labels if loss.sparse else np.eye(4)[labels], 4, "float64")
    layer = Softmax(dtype="float64")
    p = layer.forward(z, training=True)
    _, fused = loss.value_and_gradient(targets, p, fused_softmax=True)
    _, through_probabilities = loss.value_and_gradient(targets, p, fused_softmax=False)
    np.testing.assert_allclose(fused, layer.backward(through_probabilities), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("loss_class", [SCCE, CCE])
def test_gradient_matches_finite_differences(loss_class, from_logits):
    rng = np.random.default_rng(1)
    loss = loss_class(from_logits=from_logits)
    y_pred = rng.standard_normal((4, 5)) if from_logits else rng.uniform(0.05, 1.0, (4, 5))
    labels = rng.integers(0, 5, 4)
    if loss.sparse:
        targets = loss.prepare_targets(labels, 5, "float64")
    else:
        targets = rng.dirichlet(np.ones(5), 4)                   # soft targets
    _, analytic = loss.value_and_gradient(targets, y_pred)
    numeric = numeric_gradient(lambda: loss.value(targets, y_pred), y_pred)
    assert relative_error(analytic, numeric) < 1e-7


def test_gradient_through_an_active_clip_is_zero_there():
    p = np.array([[1e-9, 0.5, 0.5 - 1e-9]])
    _, gradient = CCE().value_and_gradient(np.array([[1.0, 0.0, 0.0]]), p)
    numeric = numeric_gradient(lambda: CCE().value(np.array([[1.0, 0.0, 0.0]]), p), p, h=1e-12)
    np.testing.assert_allclose(gradient, numeric, atol=1e-3)


def test_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 7)) * 3
    labels = rng.integers(0, 7, 6)
    tz = torch.tensor(z, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tz, torch.tensor(labels))
    expected.backward()
    value, gradient = SCCE(from_logits=True)(labels, z), SCCE(from_logits=True).gradient(labels, z)
    assert value == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(gradient, tz.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_model_backward_with_fused_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    model = Sequential([Dense(5, activation="relu", input_shape=(3,), dtype="float64"),
                        Dense(4, activation="softmax", dtype="float64")])
    x = rng.standard_normal((6, 3))
    labels = rng.integers(0, 4, 6)
    loss = SCCE()
    p = model.forward(x, training=True)
    _, dz = loss.value_and_gradient(labels, p, fused_softmax=True)
    model.backward(dz, need_input_gradient=False, dy_is_logits_gradient=True)
    for layer in model.layers:
        for key, param in layer.params.items():
            numeric = numeric_gradient(lambda: loss.value(labels, model.forward(x)), param)
            assert relative_error(layer.grads[key], numeric) < 1e-6, (layer.name, key)


@pytest.mark.parametrize("loss, y, message", [
    (SCCE(), [0, 1, 5], r"\[0, 3\).*\[0, 5\]"),
    (SCCE(), [0, -1, 2], r"\[0, 3\)"),
    (SCCE(), [0.0, 1.5, 2.0], "whole numbers"),
    (SCCE(), np.eye(3), "categorical_crossentropy"),
    (SCCE(), ["a", "b", "c"], "numeric"),
    (CCE(), np.eye(4)[:3], r"\(N, 3\)"),
    (CCE(), [0, 1, 2], "sparse_categorical_crossentropy"),
    (CCE(), [[0, 1, np.nan], [1, 0, 0], [0, 0, 1]], "NaN"),
])
def test_bad_targets_are_refused_naming_the_argument(loss, y, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        loss.prepare_targets(y, 3, "float32", argument="y")
    assert str(error.value).startswith("y")


def test_names_and_serialisation():
    assert type(minicnn.losses.get("sparse_categorical_crossentropy")) is SCCE
    assert type(minicnn.losses.get("categorical_crossentropy")) is CCE
    restored = minicnn.losses.deserialize(minicnn.losses.serialize(SCCE(from_logits=True)))
    assert type(restored) is SCCE and restored.from_logits
    with pytest.raises(ValueError, match="unknown loss"):
        minicnn.losses.get("mse")
    with pytest.raises(ValueError, match="unknown loss"):
        minicnn.losses.deserialize({"class_name": "Loss", "config": {}})
    np.testing.assert_allclose(minicnn.losses.sparse_categorical_crossentropy([0], [[0.5, 0.5]]), [math.log(2)])


def test_categorical_targets_must_not_be_negative():
    # Bug (issue 10): a negative target made the loss unbounded below, and fit trained on it.
    loss = CategoricalCrossentropy()
    y_pred = np.full((2, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match=r"y_true: categorical_crossentropy targets must be >= 0.*-0\.5"):
        loss(np.array([[1.5, -0.5, 0.0], [0, 1, 0]]), y_pred)
    model = Sequential([Dense(3, activation="softmax", input_shape=(2,))])
    model.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="fit: y: .*must be >= 0"):
        model.fit(np.zeros((2, 2)), np.array([[0, 2.0, -1.0], [0, 1, 0]]), verbose=0)
    assert loss(np.array([[0.25, 0.75, 0.0], [0, 1, 0]]), y_pred) == pytest.approx(np.log(3), rel=1e-6)
