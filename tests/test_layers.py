"""Layer contract, Keras-compatible arguments, shapes, dtypes, weights and error messages."""
import json

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Sequential, Softmax, initializers

import naive
from models import seed_model


def test_seed_model_shapes_and_parameter_count():
    model = seed_model()
    shapes = [layer.output_shape for layer in model.layers]
    assert shapes == [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (3136,), (128,), (10,)]
    assert [layer.count_params() for layer in model.layers] == [320, 0, 18496, 0, 0, 401536, 1290]
    assert model.count_params() == 421_642


def test_summary_prints_keras_style_rows():
    model = seed_model()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    header = next(line for line in lines if "Layer (type)" in line)
    assert "Output Shape" in header and "Param #" in header
    conv_row = next(line for line in lines if f"({'Conv2D'})" in line)
    assert "(None, 28, 28, 32)" in conv_row and conv_row.rstrip().endswith("320")
    assert any("(None, 7, 7, 64)" in line and "MaxPooling2D" in line for line in lines)
    assert any("(None, 3136)" in line and "Flatten" in line for line in lines)
    assert any("(None, 128)" in line and line.rstrip().endswith("401,536") for line in lines)
    assert "Total params: 421,642" in text and "Trainable params: 421,642" in text


def test_summary_of_an_empty_or_unbuilt_model_says_what_to_do():
    with pytest.raises(ValueError, match="has no layers to summarise; add some first"):
        Sequential().summary()        # once: "call build()", which then refused a model with no layers
    with pytest.raises(ValueError, match=r"not built yet; give the first layer input_shape=\.\.\. or call build\(\)"):
        Sequential([Dense(2)]).summary()


def test_forward_backward_shapes_and_float32_default():
    model = seed_model()
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    y = model.forward(x, training=True)
    assert y.shape == (3, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    for layer in model.layers:
        for key, param in layer.params.items():
            assert param.dtype == np.float32
            assert layer.grads[key].shape == param.shape and layer.grads[key].dtype == np.float32


def test_set_floatx_changes_the_default_dtype():
    try:
        minicnn.set_floatx("float64")
        layer = Dense(3)
        layer.build((4,))
        assert layer.params["kernel"].dtype == np.float64
        assert layer.forward(np.ones((2, 4))).dtype == np.float64
    finally:
        minicnn.set_floatx("float32")
    assert minicnn.floatx() == "float32"
    with pytest.raises(ValueError, match="float32' or 'float64"):
        minicnn.set_floatx("float16")


def test_layers_refuse_input_of_another_dtype_instead_of_upcasting():
    layer = Dense(3)
    layer.build((4,))
    with pytest.raises(TypeError, match=r"Dense 'dense.*input dtype must be float32.*received float64"):
        layer.forward(np.ones((2, 4)))


def test_get_and_set_weights_follow_keras_order_and_shapes():
    model = seed_model()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (3136, 128), (128,), (128, 10), (10,)]
    new = [np.full_like(w, i + 1) for i, w in enumerate(weights)]
    kernel_object = model.layers[0].params["kernel"]
    model.set_weights(new)
    assert model.layers[0].params["kernel"] is kernel_object  # written in place, never rebound
    for got, expected in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, expected)
    got = model.get_weights()
    got[0][...] = -5  # get_weights returns copies
    assert model.layers[0].params["kernel"][0, 0, 0, 0] == 1
    with pytest.raises(ValueError, match=r"weight .kernel. must have shape \(3, 3, 1, 32\), received \(3, 3, 2, 32\)"):
        model.set_weights([np.zeros((3, 3, 2, 32))] + new[1:])
    with pytest.raises(ValueError, match="expected 8 weight arrays, received 7"):
        model.set_weights(new[:-1])


def test_dense_and_conv_layers_match_naive_references_through_the_layer_api(rng):
    dense = Dense(4, dtype="float64")
    x = rng.standard_normal((3, 5))
    dense.build((5,))
    dense.set_weights([rng.standard_normal((5, 4)), rng.standard_normal(4)])
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(dense.forward(x, training=True), naive.dense(x, kernel, bias), rtol=0, atol=1e-12)
    dy = rng.standard_normal((3, 4))
    dx = dense.backward(dy)
    ref_dx, ref_dkernel, ref_dbias = naive.dense_backward(dy, x, kernel)
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense.grads["kernel"], ref_dkernel, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense.grads["bias"], ref_dbias, rtol=0, atol=1e-12)


def test_relu_backward_does_not_mutate_dy(rng):
    layer = ReLU(dtype="float64")
    x = rng.standard_normal((4, 3))
    layer.forward(x, training=True)
    dy = rng.standard_normal((4, 3))
    before = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, before)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


def test_softmax_is_stable_for_huge_logits():
    layer = Softmax(dtype="float64")
    y = layer.forward(np.array([[1e4, -1e4, 0.0], [1000.0, 1000.0, 1000.0]]))
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=0, atol=1e-15)


def test_activation_argument_accepts_strings_none_and_nn_functions():
    for activation, expected in [("relu", "relu"), (None, "linear"), ("linear", "linear"),
                                 (minicnn.nn.relu, "relu"), (minicnn.nn.softmax, "softmax"), ("Softmax", "softmax")]:
        assert Dense(2, activation=activation).activation_name == expected
    np.testing.assert_array_equal(minicnn.nn.relu(np.array([-1.0, 2.0])), [0.0, 2.0])
    np.testing.assert_allclose(minicnn.nn.softmax(np.array([[0.0, 0.0]])), [[0.5, 0.5]])


@pytest.mark.parametrize("make,message", [
    (lambda: Conv2D(8, 3, padding="full"), r"Conv2D 'conv2d.*padding must be 'valid' or 'same', received 'full'"),
    (lambda: Conv2D(8, 3, activation="foo"), r"Conv2D 'conv2d.*unknown activation 'foo'"),
    (lambda: Conv2D(8, 0), r"Conv2D 'conv2d.*kernel_size must be >= 1, received 0"),
    (lambda: Conv2D(8, (3, 3, 3)), r"kernel_size must be an int or a tuple of 2 ints, received \(3, 3, 3\)"),
    (lambda: Conv2D(0, 3), r"filters must be a positive integer, received 0"),
    (lambda: Conv2D(4, 3, strides=0), r"strides must be >= 1, received 0"),
    (lambda: Conv2D(4, 3, data_format="channels_first"), r"channels_last"),
    (lambda: Conv2D(4, 3, kernel_initializer="nope"), r"unknown initializer 'nope'"),
    (lambda: MaxPooling2D(0), r"MaxPooling2D 'max_pooling2d.*pool_size must be >= 1, received 0"),
    (lambda: MaxPooling2D(2, padding="full"), r"padding must be 'valid' or 'same', received 'full'"),
    (lambda: Dense(-3), r"Dense 'dense.*units must be a positive integer, received -3"),
    (lambda: Dense(3, activation=np.tanh), r"unknown activation"),
    (lambda: Dense(3, dtype="int32"), r"dtype must be 'float32' or 'float64', received 'int32'"),
])
def test_bad_hyperparameters_raise_naming_the_layer_and_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_input_shapes_raise_naming_layer_expected_and_received():
    conv = Conv2D(4, 3, input_shape=(8, 8, 3))
    model = Sequential([conv, Flatten(), Dense(2)])
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d.*expected input of shape \(batch, 8, 8, 3\), received \(2, 8, 8, 1\)"):
        model.forward(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 8, 8, 3\), received \(8, 8, 3\)"):
        model.forward(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"Dense 'dense.*put a Flatten\(\) layer before Dense"):
        Dense(3).build((4, 4, 2))
    with pytest.raises(ValueError, match=r"Conv2D.*expected inputs of shape \(height, width, channels\)"):
        Conv2D(2, 3).build((10, 10))
    with pytest.raises(ValueError, match=r"kernel_size \(5, 5\) does not fit input \(3, 3, 1\)"):
        Conv2D(2, 5).build((3, 3, 1))
    with pytest.raises(TypeError, match="must be a NumPy array, received list"):
        Dense(2).forward([[1.0, 2.0]])


def test_built_layer_rejects_a_different_channel_count():
    layer = Conv2D(4, 3)
    layer.forward(np.zeros((1, 6, 6, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 6, 6, 3\), received \(1, 6, 6, 2\)"):
        layer.forward(np.zeros((1, 6, 6, 2), np.float32))


def test_glorot_uniform_and_he_normal_follow_keras_formulas():
    shape = (3, 3, 32, 64)
    fan_in, fan_out = 3 * 3 * 32, 3 * 3 * 64
    assert initializers.compute_fans(shape) == (fan_in, fan_out)
    limit = np.sqrt(6 / (fan_in + fan_out))
    w = initializers.get("glorot_uniform")(shape)
    assert w.dtype == np.float32 and np.abs(w).max() <= limit
    assert abs(w.std() - limit / np.sqrt(3)) < 0.02 * limit  # uniform std = limit / sqrt(3)
    he = initializers.HeNormal(seed=3)((200, 300), "float64")
    std = np.sqrt(2 / 200)
    assert np.abs(he).max() <= 2 * std / 0.87962566103423978 + 1e-12  # truncated at 2 sigma
    assert abs(he.std() - std) < 0.03 * std
    assert not initializers.get("zeros")((3,)).any()
    np.testing.assert_array_equal(initializers.HeNormal(seed=3)((5, 4)), initializers.HeNormal(seed=3)((5, 4)))


def test_set_seed_makes_initialization_repeatable():
    minicnn.set_seed(42)
    first = seed_model().get_weights()
    minicnn.set_seed(42)
    second = seed_model().get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_sequential_add_and_lazy_build():
    model = Sequential()
    model.add(Dense(3, activation="relu"))
    model.add(Dense(2))
    assert not model.built
    y = model.forward(np.ones((4, 5), np.float32))
    assert model.built and y.shape == (4, 2) and model.layers[0].params["kernel"].shape == (5, 3)
    with pytest.raises(TypeError, match="add\\(\\) takes a minicnn layer, received str"):
        model.add("dense")
    with pytest.raises(ValueError, match="only the first layer may declare input_shape"):
        model.add(Dense(2, input_shape=(3,)))


def test_trained_layers_reused_in_a_new_model_keep_and_share_their_weights():
    """Keras' transfer-learning idiom, Sequential(base.layers[:-1] + [new head]): the shared
    layers were once built again, which drew new weights for both models."""
    minicnn.set_seed(0)
    base = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), MaxPooling2D(), Flatten(),
                       Dense(3, activation="softmax")])
    base.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 16)
    base.fit(x, y, epochs=2, verbose=0)
    weights, outputs = [w.copy() for w in base.get_weights()], base.predict(x, verbose=0)
    kernel = base.layers[0].params["kernel"]
    new = Sequential(base.layers[:-1] + [Dense(2, activation="softmax")])
    assert new.layers[0].params["kernel"] is kernel                    # shared, not copied or redrawn
    assert all(np.array_equal(a, b) for a, b in zip(base.get_weights(), weights))
    assert np.array_equal(base.predict(x, verbose=0), outputs)
    base.build((None, 8, 8, 1))                                          # again, the same shape: nothing
    assert base.layers[0].params["kernel"] is kernel and np.array_equal(kernel, weights[0])


def test_a_built_layer_refuses_to_be_built_for_another_shape():
    minicnn.set_seed(0)
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(2)])
    model.build((None, 8, 8, 1))
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"cannot be built again for \(9, 9, 1\)"):
        model.build((None, 9, 9, 1))
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d.*already built for inputs of shape \(8, 8, 1\) and "
                                         r"cannot be built again for \(7, 7, 1\).*use a new layer"):
        Sequential([model.layers[0]]).build((None, 7, 7, 1))
    with pytest.raises(ValueError, match=r"Flatten .*already built for inputs of shape \(6, 6, 2\)"):
        Sequential([Conv2D(2, 3, input_shape=(7, 7, 1)), model.layers[1]])
    assert model.input_shape == (8, 8, 1)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    model.predict(np.zeros((1, 8, 8, 1), np.float32), verbose=0)     # the model still works


def test_filters_and_units_take_numpy_integers():
    conv, dense = Conv2D(np.int64(4), 3), Dense(np.int32(2))
    assert (conv.filters, dense.units) == (4, 2) and type(conv.filters) is int and type(dense.units) is int
    json.dumps([conv.get_config(), dense.get_config()])   # plain ints in the config
    with pytest.raises(ValueError, match="filters must be a positive integer, received np.int64\\(0\\)"):
        Conv2D(np.int64(0), 3)


def test_model_layers_follow_the_first_layers_dtype():
    model = Sequential([Conv2D(2, 3, dtype="float64", input_shape=(5, 5, 1)), MaxPooling2D(), Flatten(),
                        Dense(3, activation="softmax")])
    assert {layer.dtype for layer in model.layers} == {"float64"}
    assert model.layers[-1].activation.dtype == "float64"
    y = model.forward(np.ones((2, 5, 5, 1)))
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match=r"Dense 'dense.*has dtype float32 but the model computes in float64"):
        model.add(Dense(2, dtype="float32"))


def test_softmax_refuses_the_batch_axis_however_it_is_written():
    for axis in (0, -2):
        with pytest.raises(ValueError, match=f"axis {axis} is not a feature axis"):
            Softmax(axis=axis).build((5,))
    np.testing.assert_allclose(Softmax(axis=-1).forward(np.ones((2, 4), np.float32)).sum(axis=1), 1.0)


def test_set_weights_writes_nothing_when_any_weight_is_not_finite():
    model = Sequential([Dense(3, input_shape=(4,)), Dense(2)])
    before = model.get_weights()
    bad = [np.ones_like(w) for w in before]
    bad[2][0, 0] = np.nan  # the second layer's kernel
    with pytest.raises(ValueError, match="dense.*contains NaN or inf"):
        model.set_weights(bad)
    for got, expected in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, expected)  # the first layer was not touched either


def test_a_training_forward_hands_on_read_only_outputs_and_leaves_the_input_alone():
    """A backward reads what a training forward returned (a ReLU's or softmax's output, the C
    engine's fused ReLU mask): written in place, it silently changed the gradients (dkernel
    all zeros after y -= 100). Read-only, the write raises; predict's outputs stay writable, and
    a layer that passes its input on never makes the caller's array read-only."""
    minicnn.set_seed(0)
    model = Sequential([minicnn.Dropout(0.0, input_shape=(6, 6, 1)), Conv2D(2, 3, activation="relu"), Flatten(),
                        Dense(4, activation="relu"), Dense(3, activation="softmax")])
    x = np.random.default_rng(0).random((2, 6, 6, 1)).astype(np.float32)
    y = model.forward(x, training=True)
    with pytest.raises(ValueError, match="read-only"):
        y -= 100
    hidden = model.layers[3].forward(model.layers[2].forward(model.layers[1].forward(x, training=True)), training=True)
    with pytest.raises(ValueError, match="read-only"):
        hidden[...] = 0
    assert x.flags.writeable                                       # Dropout(0) returned x itself
    model.backward(np.ones_like(y))
    prediction = model.predict(x, verbose=0)
    prediction *= 2                                                 # inference keeps no caches
    assert model.forward(x, training=False).flags.writeable


def test_a_refused_build_or_add_leaves_the_model_as_it_was():
    """Building all or nothing: a wrong first input that a later layer refuses once left the
    earlier layers built for it, so the right input then failed; and add() kept a layer it
    refused (built for another shape) in the model."""
    model = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(), Conv2D(4, 3), Flatten(), Dense(2)])
    with pytest.raises(ValueError, match="does not fit input"):
        model.predict(np.zeros((1, 5, 5, 1), np.float32), verbose=0)
    assert not any(layer.built for layer in model.layers)
    assert model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0).shape == (1, 2)
    other = Dense(2)
    Sequential([Dense(5, input_shape=(7,)), other])
    head = Sequential([Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="already built for inputs of shape"):
        head.add(other)
    assert len(head.layers) == 1 and head.output_shape == (3,)
    assert head.predict(np.zeros((1, 4), np.float32), verbose=0).shape == (1, 3)
