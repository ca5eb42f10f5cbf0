"""Optimizers: Keras' update rules by hand, against PyTorch where importable, in place, saveable."""
import math
import os
import tracemalloc

import numpy as np
import pytest

import minicnn
from minicnn import Dense, Sequential
from minicnn import kernels
from minicnn.optimizers import SGD, Adam, AdamW, RMSprop
from minicnn.optimizers.schedules import PiecewiseConstantDecay


def make_model(dtype="float64", units=3, inputs=4, seed=0):
    model = Sequential([Dense(units, input_shape=(inputs,), dtype=dtype,
                              kernel_initializer=minicnn.initializers.GlorotUniform(seed=seed))])
    model.layers[0].params["bias"][...] = np.arange(units) * 0.1
    return model


def set_grads(model, rng):
    """Random gradients, as a backward would leave them (new arrays each step)."""
    for layer in model.layers:
        for key, param in layer.params.items():
            layer.grads[key] = rng.standard_normal(param.shape).astype(param.dtype)


def params_of(model):
    return [p.copy() for layer in model.layers for p in layer.params.values()]


# -- hand-computed steps -------------------------------------------------------------------------

def test_adam_first_step_by_hand():
    # g = 2, lr = 0.1: m = 0.2, v = 0.004, lr_t = 0.1 * sqrt(1 - 0.999) / (1 - 0.9) = 0.0316227766,
    # step = lr_t * m / (sqrt(v) + 1e-7) = 0.0316227766 * 0.2 / (0.0632455532 + 1e-7) = 0.09999984189
    model = make_model(units=1, inputs=1)
    layer = model.layers[0]
    layer.params["kernel"][...] = 1.0
    layer.params["bias"][...] = -1.0
    layer.grads["kernel"] = np.array([[2.0]])
    layer.grads["bias"] = np.array([-2.0])
    Adam(learning_rate=0.1).apply(model)
    assert layer.params["kernel"][0, 0] == pytest.approx(1.0 - 0.09999984189, abs=1e-11)
    assert layer.params["bias"][0] == pytest.approx(-1.0 + 0.09999984189, abs=1e-11)


def reference_adam(params, grads_per_step, lr, b1, b2, eps):
    """Keras' Adam written out plainly, float64."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
    return params


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-6)])
def test_adam_matches_the_written_out_rule_for_several_steps(dtype, tolerance):
    rng = np.random.default_rng(0)
    model = make_model(dtype)
    start = params_of(model)
    optimizer = Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-7)
    history = []
    for _ in range(6):
        set_grads(model, rng)
        history.append([g.astype(np.float64) for layer in model.layers for g in layer.grads.values()])
        optimizer.apply(model)
    expected = reference_adam(start, history, 0.01, 0.8, 0.99, 1e-7)
    for got, want in zip(params_of(model), expected):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    assert optimizer.iterations == 6


def reference_adamw(params, grads_per_step, rates, weight_decay, b1, b2, eps):
    """Keras 3's AdamW written out plainly, float64: each step first decays every parameter with
    that step's learning rate (p - p * wd * lr), then Keras' Adam update with the same rate."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, (grads, lr) in enumerate(zip(grads_per_step, rates), start=1):
        lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(grads):
            params[i] = params[i] - params[i] * weight_decay * lr
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
    return params


def test_adamw_first_step_by_hand():
    # p = 1, g = 2, lr = 0.1, wd = 0.5: decay p = 1 - 1 * 0.5 * 0.1 = 0.95, then Adam's first
    # step of 0.09999984189 (test_adam_first_step_by_hand): 0.85000015811
    model = make_model(units=1, inputs=1)
    layer = model.layers[0]
    layer.params["kernel"][...] = 1.0
    layer.params["bias"][...] = 0.0
    layer.grads["kernel"] = np.array([[2.0]])
    layer.grads["bias"] = np.array([0.0])
    AdamW(learning_rate=0.1, weight_decay=0.5).apply(model)
    assert layer.params["kernel"][0, 0] == pytest.approx(0.95 - 0.09999984189, abs=1e-11)
    assert layer.params["bias"][0] == 0.0


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 2e-6)])
@pytest.mark.parametrize("scheduled", [False, True])
def test_adamw_matches_the_written_out_rule(dtype, tolerance, scheduled):
    rng = np.random.default_rng(1)
    model = make_model(dtype)
    start = params_of(model)
    schedule = PiecewiseConstantDecay([1, 3], [0.02, 0.01, 0.005])
    optimizer = AdamW(learning_rate=schedule if scheduled else 0.02, weight_decay=0.3,
                      beta_1=0.8, beta_2=0.99, epsilon=1e-7)
    history, rates = [], []
    for step in range(6):
        set_grads(model, rng)
        history.append([g.astype(np.float64) for layer in model.layers for g in layer.grads.values()])
        rates.append(schedule(step) if scheduled else 0.02)
        optimizer.apply(model)
    expected = reference_adamw(start, history, rates, 0.3, 0.8, 0.99, 1e-7)
    for got, want in zip(params_of(model), expected):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_adamw_without_decay_is_adam_bit_for_bit():
    results = []
    for optimizer in (Adam(0.01), AdamW(0.01, weight_decay=0.0)):
        rng = np.random.default_rng(2)
        model = make_model("float32", units=6, inputs=9)
        for _ in range(5):
            set_grads(model, rng)
            optimizer.apply(model)
        results.append([p.tobytes() for p in params_of(model)])
    assert results[0] == results[1]


def test_adamw_is_bit_identical_on_both_engines():
    if "c" not in kernels.available_backends():
        pytest.skip(f"C engine not built here: {kernels.backend_info().get('c_engine_error')}")
    previous = kernels.get_backend()
    results = {}
    try:
        for engine in ("numpy", "c"):
            minicnn.set_backend(engine)
            rng = np.random.default_rng(4)
            model = make_model("float32", units=40, inputs=33)
            optimizer = AdamW(PiecewiseConstantDecay([2], [3e-3, 1e-3]), weight_decay=0.05)
            for _ in range(5):
                set_grads(model, rng)
                optimizer.apply(model)
            results[engine] = [p.tobytes() for p in params_of(model)] + \
                              [a.tobytes() for a in optimizer.get_state()["slots"].values()]
    finally:
        minicnn.set_backend(previous)
    assert results["numpy"] == results["c"]


def test_sgd_plain_momentum_and_nesterov_by_hand():
    # One parameter p0 = 1, gradients 1 then 3, lr 0.1, momentum 0.5.
    # plain:    p = 1 - 0.1 - 0.3 = 0.6
    # momentum: v1 = -0.1, p1 = 0.9; v2 = -0.05 - 0.3 = -0.35, p2 = 0.55
    # nesterov: p1 = 1 + 0.5 * -0.1 - 0.1 = 0.85; p2 = 0.85 + 0.5 * -0.35 - 0.3 = 0.375
    for optimizer, expected in ((SGD(0.1), 0.6), (SGD(0.1, momentum=0.5), 0.55),
                                (SGD(0.1, momentum=0.5, nesterov=True), 0.375)):
        model = make_model(units=1, inputs=1)
        layer = model.layers[0]
        layer.params["kernel"][...] = 1.0
        for g in (1.0, 3.0):
            layer.grads["kernel"] = np.array([[g]])
            layer.grads["bias"] = np.array([0.0])
            optimizer.apply(model)
        assert layer.params["kernel"][0, 0] == pytest.approx(expected, abs=1e-14), optimizer


def test_rmsprop_by_hand():
    # a = 0.1 * 4 = 0.4; p = 1 - 0.01 * 2 / sqrt(0.4 + 1e-7): Keras 3 adds epsilon under the root
    model = make_model(units=1, inputs=1)
    layer = model.layers[0]
    layer.params["kernel"][...] = 1.0
    layer.grads["kernel"] = np.array([[2.0]])
    layer.grads["bias"] = np.array([0.0])
    RMSprop(learning_rate=0.01).apply(model)
    assert layer.params["kernel"][0, 0] == pytest.approx(1 - 0.02 / math.sqrt(0.4 + 1e-7), abs=1e-14)
    # a tiny gradient, where the two rules part: Keras' moves the weight lr * g / sqrt(eps)
    layer.params["kernel"][...] = 1.0
    layer.grads["kernel"] = np.array([[5e-7]])
    RMSprop(learning_rate=0.01).apply(model)
    a = 0.1 * 5e-7 ** 2
    assert layer.params["kernel"][0, 0] == pytest.approx(1 - 0.01 * 5e-7 / math.sqrt(a + 1e-7), abs=1e-14)


# -- against PyTorch -----------------------------------------------------------------------------

def run_against_torch(make_minicnn, make_torch, steps=8, before_torch_step=None):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    model = make_model("float64", units=5, inputs=7)
    tensors = [torch.tensor(p, requires_grad=True) for p in params_of(model)]
    ours, theirs = make_minicnn(), make_torch(tensors)
    for t in range(1, steps + 1):
        set_grads(model, rng)
        for tensor, g in zip(tensors, [g for layer in model.layers for g in layer.grads.values()]):
            tensor.grad = torch.tensor(g)
        ours.apply(model)
        if before_torch_step:
            before_torch_step(theirs, t)
        theirs.step()
    for got, tensor in zip(params_of(model), tensors):
        np.testing.assert_allclose(got, tensor.detach().numpy(), rtol=1e-6, atol=1e-9)
    return model


def test_adam_matches_torch_with_epsilon_translated():
    torch = pytest.importorskip("torch")
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-7

    # Keras adds eps to sqrt(v); PyTorch to sqrt(v / (1 - b2^t)): eps_torch(t) = eps / sqrt(1 - b2^t).
    def translate_epsilon(optimizer, t):
        optimizer.param_groups[0]["eps"] = eps / math.sqrt(1 - b2 ** t)

    run_against_torch(lambda: Adam(lr, b1, b2, eps),
                      lambda ts: torch.optim.Adam(ts, lr=lr, betas=(b1, b2), eps=eps),
                      before_torch_step=translate_epsilon)


@pytest.mark.parametrize("scheduled", [False, True])
def test_adamw_matches_torch_with_epsilon_translated(scheduled):
    torch = pytest.importorskip("torch")
    wd, b1, b2, eps = 0.1, 0.9, 0.999, 1e-7
    schedule = PiecewiseConstantDecay([2, 5], [0.02, 0.01, 0.004])

    # Keras' epsilon as in the Adam test; a schedule's rate goes into torch's param group by hand
    def translate(optimizer, t):
        optimizer.param_groups[0]["eps"] = eps / math.sqrt(1 - b2 ** t)
        optimizer.param_groups[0]["lr"] = schedule(t - 1) if scheduled else 0.02

    run_against_torch(lambda: AdamW(schedule if scheduled else 0.02, weight_decay=wd, beta_1=b1, beta_2=b2,
                                    epsilon=eps),
                      lambda ts: torch.optim.AdamW(ts, lr=0.02, betas=(b1, b2), eps=eps, weight_decay=wd),
                      before_torch_step=translate)


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_matches_torch(momentum, nesterov):
    torch = pytest.importorskip("torch")
    run_against_torch(lambda: SGD(0.05, momentum=momentum, nesterov=nesterov),
                      lambda ts: torch.optim.SGD(ts, lr=0.05, momentum=momentum, nesterov=nesterov))


def test_rmsprop_matches_keras():
    """Keras 3's rule, sqrt(a + epsilon) (PyTorch's, sqrt(a) + eps, was here once: it parts from
    Keras' for gradients near sqrt(epsilon), so the gradients below include such ones)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(5)
    model = make_model("float64", units=5, inputs=7)
    variables = [keras.Variable(p.copy(), dtype="float64") for p in params_of(model)]
    # a rate float32 holds exactly: Keras keeps its learning rate in a float32 variable
    ours, theirs = RMSprop(2**-6, rho=0.9, epsilon=1e-7), keras.optimizers.RMSprop(2**-6, rho=0.9, epsilon=1e-7)
    layer = model.layers[0]   # one Dense: its kernel and bias, in params_of's order
    for step in range(8):
        set_grads(model, rng)
        for key in layer.grads:
            layer.grads[key] = layer.grads[key] * (1e-6 if step % 2 else 1.0)
        grads = [layer.grads[key] for key in layer.params]
        ours.apply(model)
        theirs.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], variables))
    for got, variable in zip(params_of(model), variables):
        np.testing.assert_allclose(got, keras.ops.convert_to_numpy(variable), rtol=1e-9, atol=1e-12)


# -- in place, no allocation, state ---------------------------------------------------------------

@pytest.mark.parametrize("make_optimizer", [Adam, lambda: AdamW(PiecewiseConstantDecay([1], [1e-3, 1e-4]))])
def test_update_is_in_place_and_allocates_no_parameter_sized_memory(make_optimizer):
    rng = np.random.default_rng(0)
    model = make_model("float32", units=400, inputs=500)       # kernel: 800 kB
    arrays_before = [p for layer in model.layers for p in layer.params.values()]
    optimizer = make_optimizer()
    set_grads(model, rng)
    optimizer.apply(model)   # the first step builds the state
    set_grads(model, rng)
    tracemalloc.start()
    try:
        optimizer.apply(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16_000, f"an {type(optimizer).__name__} step allocated {peak} bytes (params are 800 kB)"
    arrays_after = [p for layer in model.layers for p in layer.params.values()]
    assert all(a is b for a, b in zip(arrays_before, arrays_after))


def test_frozen_layers_are_not_updated():
    rng = np.random.default_rng(0)
    model = Sequential([Dense(3, input_shape=(4,), dtype="float64", trainable=False), Dense(2, dtype="float64")])
    frozen = model.layers[0].get_weights()
    set_grads(model, rng)
    SGD(0.1).apply(model)
    for before, after in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(before, after)


def test_two_runs_are_bit_identical_and_state_round_trips():
    def run(split_at=None):
        rng = np.random.default_rng(5)
        model = make_model("float32", units=6, inputs=9)
        optimizer = Adam(0.003)
        for step in range(10):
            if step == split_at:   # continue with a fresh optimizer carrying the saved state
                state = optimizer.get_state()
                optimizer = Adam.from_config(optimizer.get_config())
                optimizer.set_state(state, model)
            set_grads(model, rng)
            optimizer.apply(model)
        return params_of(model)

    first, second, resumed = run(), run(), run(split_at=4)
    for a, b, c in zip(first, second, resumed):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_state_is_keyed_by_layer_and_parameter():
    model = make_model()
    optimizer = Adam()
    optimizer.build(model)
    name = model.layers[0].name
    assert set(optimizer.get_state()["slots"]) == {(name, k, s) for k in ("kernel", "bias") for s in ("m", "v")}


def test_set_state_rejects_state_of_another_shape():
    model = make_model()
    optimizer = Adam()
    optimizer.build(model)
    state = optimizer.get_state()
    key = next(iter(state["slots"]))
    state["slots"][key] = np.zeros((99,))
    with pytest.raises(ValueError, match="must be"):
        Adam().set_state(state, model)


def test_a_built_optimizer_refuses_a_changed_model():
    model = make_model()
    optimizer = SGD(0.1, momentum=0.9)
    optimizer.build(model)
    model.add(Dense(2, dtype="float64"))
    with pytest.raises(ValueError, match="compile"):
        optimizer.build(model)


# -- names and arguments -------------------------------------------------------------------------

def test_get_by_keras_name_with_keras_defaults():
    adam = minicnn.optimizers.get("adam")
    assert (type(adam), adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (Adam, 0.001, 0.9, 0.999, 1e-7)
    sgd = minicnn.optimizers.get("SGD")
    assert (type(sgd), sgd.learning_rate, sgd.momentum, sgd.nesterov) == (SGD, 0.01, 0.0, False)
    assert type(minicnn.optimizers.get("rmsprop")) is RMSprop
    restored = minicnn.optimizers.deserialize(minicnn.optimizers.serialize(Adam(0.02, beta_1=0.5)))
    assert restored.get_config() == Adam(0.02, beta_1=0.5).get_config()
    adamw = minicnn.optimizers.get("adamw")
    assert (type(adamw), adamw.learning_rate, adamw.weight_decay, adamw.beta_1, adamw.beta_2, adamw.epsilon) == \
        (AdamW, 0.001, 0.004, 0.9, 0.999, 1e-7)
    restored = minicnn.optimizers.deserialize(minicnn.optimizers.serialize(AdamW(0.02, weight_decay=0.1)))
    assert type(restored) is AdamW and restored.get_config() == AdamW(0.02, weight_decay=0.1).get_config()


@pytest.mark.parametrize("make, message", [
    (lambda: minicnn.optimizers.get("adamax"), "unknown optimizer"),
    (lambda: Adam(learning_rate=-1), "learning_rate"),
    (lambda: Adam(learning_rate="fast"), "learning_rate"),
    (lambda: Adam(beta_1=1.0), "beta_1"),
    (lambda: SGD(momentum=-0.1), "momentum"),
    (lambda: Adam(epsilon=0), "epsilon"),
    (lambda: AdamW(weight_decay=-0.1), "weight_decay"),
    (lambda: AdamW(weight_decay="0.1"), "weight_decay"),
    (lambda: SGD(learning_rate=float("inf")), "learning_rate"),
    (lambda: minicnn.optimizers.deserialize({"class_name": "os.system", "config": {}}), "unknown optimizer"),
])
def test_bad_arguments_are_refused(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_an_optimizer_pickled_before_its_state_keys_were_kept_still_trains():
    """Optimizers pickled before `_slot_keys` existed lack it; the first step once raised an
    AttributeError. They take their state's keys as they stand, and follow renames after."""
    import pickle
    model = make_model(units=2, inputs=3)
    model.compile(Adam(0.01), minicnn.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.random.default_rng(0).random((8, 3)).astype(np.float64), np.arange(8) % 2
    model.fit(x, y, epochs=1, verbose=0)
    del model.optimizer._slot_keys                    # as an older pickle comes back
    copied = pickle.loads(pickle.dumps(model))
    copied.fit(x, y, epochs=1, verbose=0)
    copied.layers[0].name = "renamed"
    copied.fit(x, y, epochs=1, verbose=0)
    assert set(copied.optimizer.get_state()["slots"]) == {("renamed", key, slot) for key in ("kernel", "bias")
                                                          for slot in ("m", "v")}
