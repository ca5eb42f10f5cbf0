"""fit's fast path: the training step bound to the C engine once (minicnn/training/training_plan.py,
minicnn/kernels/c_engine.py "training plans").

A planned fit must give the general path's bytes (every layer's forward, the model's backward,
optimizer.apply) in the weights, the optimizer's state and the history, and must never run
stale: every way a model, its weights, its optimizer or the engine can change during a fit has
a test here that fails when the plan does not follow. Each comparison also asserts that the plan
ran (or, where it must not, that it did not), so none can pass by both sides taking the general
path.
"""
import contextlib
import warnings

import numpy as np
import pytest

import minicnn
from minicnn import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D,
                     ReLU, Sequential, kernels)
from minicnn.callbacks import Callback, LearningRateScheduler
from minicnn.layers import Softmax
from minicnn.training import training_plan

try:
    from minicnn.kernels import c_engine
except ImportError:   # not built: every test here is about the C engine's plan
    c_engine = None

pytestmark = [pytest.mark.skipif(c_engine is None, reason="C engine not built"),
              pytest.mark.usefixtures("c_backend")]


@pytest.fixture
def planned_steps(monkeypatch):
    """A list that receives each fit's count of planned steps when the fit ends."""
    counts = []
    close = training_plan.FitPlans.close

    def counting_close(self):
        counts.append(self.planned_steps)
        close(self)

    monkeypatch.setattr(training_plan.FitPlans, "close", counting_close)
    return counts


def _general_path_only(monkeypatch):
    monkeypatch.setattr(training_plan.FitPlans, "step", lambda self, *args: None)


@contextlib.contextmanager
def _on_path(monkeypatch, general):
    """The planned path, or with general=True the layers only; minicnn's generator reseeded."""
    with monkeypatch.context() as patch:
        if general:
            _general_path_only(patch)
        minicnn.set_seed(0)
        yield


# -- the models ----------------------------------------------------------------------------------
def _seed_like(dtype=None, input_shape=(12, 12, 1)):
    return [Conv2D(8, (3, 3), padding="same", activation="relu", input_shape=input_shape, dtype=dtype),
            MaxPooling2D((2, 2)),
            Conv2D(12, (3, 3), padding="same", activation="relu"),
            MaxPooling2D((2, 2)),
            Flatten(),
            Dense(16, activation="relu"),
            Dense(5, activation="softmax")]


def _lenet_like():
    return [Conv2D(6, (5, 5), activation="relu", input_shape=(16, 16, 1)), MaxPooling2D((2, 2)),
            Conv2D(16, (3, 3), activation="relu"), MaxPooling2D((2, 2)), Flatten(),
            Dense(12, activation="relu"), Dense(5, activation="softmax")]


def _unfused_pools():
    """Convolutions without a fused pool: a linear one (ReLU-free), strided ones, an overlapping
    pool and a "same" pool, neither of which fuses; no biases in two layers."""
    return [Conv2D(6, (3, 3), strides=2, padding="same", input_shape=(21, 19, 3)),
            MaxPooling2D((3, 3), strides=2, padding="same"),
            Conv2D(8, (3, 3), padding="valid", activation="relu", use_bias=False),
            MaxPooling2D((3, 3), strides=1),
            Conv2D(7, (1, 1), activation="relu"),
            Flatten(),
            Dense(9, use_bias=False),
            Dense(4, activation="softmax")]


def _dense_first():
    """The first layer with weights reads the input itself in the backward (dense's x)."""
    return [Flatten(input_shape=(6, 5, 2)), Dense(11, activation="relu"), Dense(3, activation="softmax")]


def _pool_first():
    """Layers before the first one with weights: no backward runs through them."""
    return [MaxPooling2D((2, 2), input_shape=(10, 10, 2)), Conv2D(5, (3, 3), activation="relu"),
            Flatten(), Dense(4, activation="softmax")]


def _relu_and_dropout_layers():
    """ReLU and Dropout layers of their own (a ReLU between a convolution and its pool, which
    then do not fuse), dropout with minicnn's generator (twice: the keys' order matters), with
    its own seed, and at rate 0."""
    return [Conv2D(6, (3, 3), padding="same", input_shape=(12, 12, 2)), ReLU(), MaxPooling2D((2, 2)),
            Dropout(0.25), Conv2D(8, (3, 3), activation="relu"), Flatten(), Dropout(0.1), Dense(12), ReLU(),
            Dropout(0.5, seed=3), Dropout(0.0), Dense(5, activation="softmax")]


ARCHITECTURES = {"seed": _seed_like, "lenet": _lenet_like, "unfused": _unfused_pools,
                 "dense_first": _dense_first, "pool_first": _pool_first, "relu_dropout": _relu_and_dropout_layers}


def _data(model_layers, n, classes, seed=0, dtype=np.float32):
    shape = model_layers[0].declared_input_shape
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)).astype(dtype), rng.integers(0, classes, n)


def _train(layers, optimizer, x, y, *, loss="sparse_categorical_crossentropy", batch_size=8, epochs=2,
           callbacks=list, seed=0, shuffle=True):
    """A fresh model trained by fit; optimizer and callbacks are factories (a callback keeps
    count of the steps it saw, so each fit needs its own)."""
    minicnn.set_seed(seed)
    model = Sequential(layers())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # from_logits on a linear output and the like
        model.compile(optimizer=optimizer() if callable(optimizer) else optimizer, loss=loss, metrics=["accuracy"])
        history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=shuffle,
                            callbacks=callbacks())
    return model, history


def _state_bytes(model):
    """Everything a step can change: every weight, the optimizer's state and step count."""
    state = model.optimizer.get_state()   # slots by layer name: the names differ between models
    return ([w.tobytes() for w in model.get_weights()],
            [(key[1:], array.tobytes()) for key, array in state["slots"].items()], state["iterations"])


def _assert_same_fit(monkeypatch, planned_steps, layers, optimizer, x, y, expect_planned=True, **fit):
    planned_model, planned_history = _train(layers, optimizer, x, y, **fit)
    used = planned_steps[-1]
    with monkeypatch.context() as patch:
        _general_path_only(patch)
        general_model, general_history = _train(layers, optimizer, x, y, **fit)
    assert (used > 0) == expect_planned, f"planned steps: {used}"
    assert _state_bytes(planned_model) == _state_bytes(general_model)
    assert repr(planned_history.history) == repr(general_history.history)   # every digit; nan equals nan
    return planned_model, general_model


# -- the same bytes ----------------------------------------------------------------------------
OPTIMIZERS = {
    "adam": lambda: minicnn.optimizers.Adam(learning_rate=0.01),
    "sgd": lambda: minicnn.optimizers.SGD(learning_rate=0.05),
    "momentum": lambda: minicnn.optimizers.SGD(learning_rate=0.05, momentum=0.9),
    "nesterov": lambda: minicnn.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_planned_fit_gives_the_general_paths_bytes(monkeypatch, planned_steps, architecture, optimizer):
    layers = ARCHITECTURES[architecture]
    classes = layers()[-1].units
    # 45 images in batches of 8: five full batches and a last one of 5, each with its own plan
    x, y = _data(layers(), 45, classes, seed=1)
    _assert_same_fit(monkeypatch, planned_steps, layers, OPTIMIZERS[optimizer], x, y)
    assert planned_steps[-2] == 2 * 6   # two epochs of six steps, every one planned


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_planned_fit_follows_the_threads_and_float64(monkeypatch, planned_steps, threads):
    c_engine.set_num_threads(threads, beyond_cpus=True)
    try:
        layers = lambda: _seed_like(dtype="float64")   # noqa: E731
        x, y = _data(layers(), 33, 5, seed=2, dtype=np.float64)
        _assert_same_fit(monkeypatch, planned_steps, layers, OPTIMIZERS["adam"], x, y, batch_size=1, epochs=1)
        _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x.astype(np.float32), y,
                         batch_size=16, epochs=1)
    finally:
        c_engine.set_num_threads(None)


@pytest.mark.parametrize("loss, last_activation", [
    ("from_logits", None), ("from_logits", "relu"), ("categorical", "softmax"), ("probabilities", None)])
def test_planned_fit_with_other_losses_and_outputs(monkeypatch, planned_steps, loss, last_activation):
    def layers():
        return _seed_like()[:-1] + [Dense(5, activation=last_activation)]
    x, y = _data(layers(), 30, 5, seed=3)
    if loss == "categorical":
        compiled, y = "categorical_crossentropy", np.eye(5, dtype=np.float32)[y]
    elif loss == "from_logits":
        compiled = minicnn.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:   # a linear output read as probabilities: the clipped gradient, not the fused one
        compiled = "sparse_categorical_crossentropy"
    _assert_same_fit(monkeypatch, planned_steps, layers, OPTIMIZERS["adam"], x, y, loss=compiled)


def test_schedules_and_callbacks_that_change_the_rate_reach_the_plan(monkeypatch, planned_steps):
    x, y = _data(_seed_like(), 40, 5, seed=4)
    schedule = lambda: minicnn.optimizers.Adam(   # noqa: E731
        learning_rate=minicnn.optimizers.schedules.CosineDecay(0.02, decay_steps=7, warmup_target=0.05,
                                                               warmup_steps=3))
    _assert_same_fit(monkeypatch, planned_steps, _seed_like, schedule, x, y, epochs=3)
    _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["momentum"], x, y, epochs=3,
                     callbacks=lambda: [LearningRateScheduler(lambda epoch, rate: rate * 0.5)])


class _AtSteps(Callback):
    """Calls change(model, step) before each step of the fit numbered in `steps` (counted
    across epochs, from 0)."""

    def __init__(self, steps, change):
        super().__init__()
        self.steps, self.change, self.seen = set(steps), change, 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen in self.steps:
            self.change(self.model, self.seen)
        self.seen += 1


def _replace_first_kernel(model, step):
    """A new array in place of the first layer's kernel (its values shifted)."""
    layer = model.layers[0]
    layer.params["kernel"] = layer.params["kernel"] + np.float32(0.01)


@pytest.mark.parametrize("steps", [[3], [2, 5, 8], range(40)])
def test_a_replaced_weight_array_makes_a_new_plan(monkeypatch, planned_steps, steps):
    """A plan bound to the old array would keep training it and leave the new one untouched.
    Replacing arrays at every step stops planning after MAX_BUILDS_PER_FIT builds."""
    x, y = _data(_seed_like(), 64, 5, seed=5)
    _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y,
                     callbacks=lambda: [_AtSteps(steps, _replace_first_kernel)])
    if len(steps) == 40:   # a build per step until the cap, then the layers
        assert planned_steps[-2] == training_plan.MAX_BUILDS_PER_FIT


def _change_dropout_rates(model, step):
    """0.25 -> 0.1, 0.1 -> 0.2, 0.5 -> 0 and 0 -> 0.4."""
    for layer, rate in zip([layer for layer in model.layers if isinstance(layer, Dropout)], (0.1, 0.2, 0.0, 0.4)):
        layer.rate = rate


def test_a_changed_dropout_rate_makes_a_new_plan(monkeypatch, planned_steps):
    """A plan bound to rate 0 (no op at all) or to another rate's threshold and scale would
    keep dropping the old way."""
    x, y = _data(_relu_and_dropout_layers(), 40, 5, seed=13)
    _assert_same_fit(monkeypatch, planned_steps, _relu_and_dropout_layers, OPTIMIZERS["adam"], x, y,
                     callbacks=lambda: [_AtSteps([3], _change_dropout_rates)])
    assert planned_steps[-2] == 10


def _freeze_first_layer(model, step):
    model.layers[0].trainable = False


def test_a_layer_frozen_during_fit_leaves_the_plan(monkeypatch, planned_steps):
    """From the freeze on, the general path's backward stops at the first trainable layer; the
    plan, which computes every layer's gradients, must not run."""
    x, y = _data(_seed_like(), 48, 5, seed=6)
    _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y, epochs=1,
                     callbacks=lambda: [_AtSteps([2], _freeze_first_layer)])
    assert planned_steps[-2] == 2


def test_recompiling_and_switching_the_engine_between_fits(monkeypatch, planned_steps):
    x, y = _data(_seed_like(), 24, 5, seed=7)

    def run(general):
        with monkeypatch.context() as patch:
            if general:
                _general_path_only(patch)
            model, _ = _train(_seed_like, OPTIMIZERS["adam"], x, y, epochs=1)
            model.compile(optimizer=OPTIMIZERS["momentum"](), loss="sparse_categorical_crossentropy")
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            minicnn.set_backend("numpy")
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            minicnn.set_backend("c")
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
            return _state_bytes(model)

    assert run(general=False) == run(general=True)
    assert planned_steps[-8:] == [3, 3, 0, 3] + [0] * 4


def _numpy_engine_for_steps_2_and_3(model, step):
    minicnn.set_backend("numpy" if step in (2, 3) else "c")


def test_a_plan_refused_on_another_engine_is_made_again_back_on_c(monkeypatch, planned_steps):
    """Steps 2 and 3 on the NumPy engine (no plans there), then C again: the plan is made anew
    for the remaining steps instead of the refusal standing for the rest of the fit."""
    x, y = _data(_seed_like(), 48, 5, seed=14)
    try:
        _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y, epochs=2,
                         callbacks=lambda: [_AtSteps(range(12), _numpy_engine_for_steps_2_and_3)])
    finally:
        minicnn.set_backend("c")
    assert planned_steps[-2] == 12 - 2


def test_a_setting_changed_during_fit_makes_a_new_plan(monkeypatch, planned_steps):
    """A setting changed during the fit reaches the next step: here from_logits on a softmax
    output (its own backward runs, so no plan) becomes a linear output at step 2, which a plan
    takes from then on."""
    def to_linear_output(model, step):
        model.layers[-1].activation_name = "linear"
        model.layers[-1].activation = None
    loss = lambda: minicnn.losses.SparseCategoricalCrossentropy(from_logits=True)   # noqa: E731
    x, y = _data(_seed_like(), 40, 5, seed=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # from_logits on a softmax output
        planned, general = [_train_with(general, loss=loss(), x=x, y=y, monkeypatch=monkeypatch,
                                        callbacks=[_AtSteps([2], to_linear_output)]) for general in (False, True)]
    assert planned == general
    assert planned_steps[-2] == 3   # steps 2, 3 and 4 of five


def _train_with(general, *, x, y, callbacks, monkeypatch, loss="sparse_categorical_crossentropy"):
    with _on_path(monkeypatch, general):
        model = Sequential(_seed_like())
        model.compile(optimizer=OPTIMIZERS["adam"](), loss=loss)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        return _state_bytes(model)


def test_two_models_sharing_an_optimizer_each_update_their_own_weights(monkeypatch, planned_steps):
    """Two models with the same layer names (a copy from get_config) share one optimizer, and a
    callback in B's fit trains A for one batch. Each later step of B's fit must update B's
    weights: the general path's optimizer once went on updating A's, with A's old gradients,
    and the plan (which kept B's) gave other bytes."""
    x, y = _data(_seed_like(), 32, 5, seed=16)

    def run(general):
        with _on_path(monkeypatch, general):
            a = Sequential(_seed_like())
            b = Sequential.from_config(a.get_config())
            b.set_weights(a.get_weights())
            optimizer = OPTIMIZERS["adam"]()
            a.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
            b.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
            a_after_its_step = []

            def train_a(model, step):
                a.train_on_batch(x[:8], y[:8])
                a_after_its_step.extend(w.copy() for w in a.get_weights())

            b_before = [w.copy() for w in b.get_weights()]
            b.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[_AtSteps([1], train_a)])
            # A changed only in its own step; B's last kernel moved in every one of its steps
            assert all(np.array_equal(w, kept) for w, kept in zip(a.get_weights(), a_after_its_step))
            assert not np.array_equal(b.get_weights()[-2], b_before[-2])
            return [w.tobytes() for w in a.get_weights() + b.get_weights()], _state_bytes(b)

    assert run(general=False) == run(general=True)
    assert planned_steps[-2:] == [4, 0]   # B's fit, planned and not; A's one step is no fit


def test_a_model_cannot_share_an_optimizer_built_for_other_parameters():
    optimizer = OPTIMIZERS["adam"]()
    a = Sequential(_seed_like())
    a.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    a.fit(*_data(_seed_like(), 8, 5), batch_size=8, verbose=0)   # builds the optimizer for a
    other = Sequential(_lenet_like())
    other.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"another model, has .*; compile each model, and a changed model "
                                         r"again, with a new optimizer"):
        other.fit(*_data(_lenet_like(), 8, 5), batch_size=8, verbose=0)


def test_a_step_whose_optimizer_refuses_leaves_its_gradients_in_the_layers(monkeypatch, planned_steps):
    """The schedule gives NaN at the first step, so begin_step raises after the backward: the
    layers hold that step's gradients on both paths."""
    class NaNFirst(minicnn.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return float("nan") if step == 0 else 0.01

        def get_config(self):
            return {}

    x, y = _data(_seed_like(), 16, 5, seed=17)

    def run(general):
        with _on_path(monkeypatch, general):
            model = Sequential(_seed_like())
            model.compile(optimizer=minicnn.optimizers.Adam(NaNFirst()), loss="sparse_categorical_crossentropy")
            with pytest.raises(ValueError, match="gave nan at step 0"):
                model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
            return _state_bytes(model), [layer.grads[key].tobytes() for layer in model.layers
                                         for key in sorted(layer.grads)]

    assert run(general=False) == run(general=True)
    assert planned_steps[-2] == 1


@pytest.mark.parametrize("layers, optimizer", [
    (lambda: _seed_like()[:2] + [BatchNormalization()] + _seed_like()[2:], "adam"),
    (lambda: _seed_like()[:1] + [AveragePooling2D((2, 2))] + _seed_like()[2:], "adam"),
    (lambda: _seed_like()[:-1] + [Dense(5), Softmax()], "adam"),
    (_seed_like, "adamw"),
    (_seed_like, "rmsprop"),
    (lambda: _seed_like()[:-1] + [Dense(5, activation="softmax", trainable=False)], "adam"),
])
def test_what_is_not_planned_trains_through_the_layers(monkeypatch, planned_steps, layers, optimizer):
    x, y = _data(_seed_like(), 20, 5, seed=8)
    _assert_same_fit(monkeypatch, planned_steps, layers, optimizer, x, y, expect_planned=False)


def test_a_subclassed_layer_is_not_planned(monkeypatch, planned_steps):
    class Doubling(Dense):
        def _forward(self, x, training):
            return 2 * super()._forward(x, training)

    layers = lambda: _seed_like()[:-1] + [Doubling(5, activation="softmax")]   # noqa: E731
    x, y = _data(_seed_like(), 20, 5, seed=9)
    _assert_same_fit(monkeypatch, planned_steps, layers, "adam", x, y, expect_planned=False)


def test_numpy_engine_is_not_planned(planned_steps):
    minicnn.set_backend("numpy")
    x, y = _data(_seed_like(), 16, 5)
    _train(_seed_like, "adam", x, y, epochs=1)
    assert planned_steps[-1] == 0


# -- what fit leaves behind ------------------------------------------------------------------------
def test_after_a_planned_fit_the_grads_are_the_last_steps_and_no_cache_is_left(monkeypatch, planned_steps):
    x, y = _data(_seed_like(), 24, 5, seed=10)
    planned, general = _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y,
                                        epochs=1, shuffle=False)
    for a, b in zip(planned.layers, general.layers):
        assert sorted(a.grads) == sorted(b.grads)
        for key in a.grads:
            assert a.grads[key].tobytes() == b.grads[key].tobytes()
    # a backward needs its forward: the planned fit kept no layer's cache, stale or not
    with pytest.raises(RuntimeError, match="backward needs a forward with training=True"):
        planned.backward(np.ones((8, 5), np.float32), need_input_gradient=False)
    # and a new forward makes backward work again, as after predict
    planned.forward(x[:8], training=True)
    planned.backward(np.ones((8, 5), np.float32), need_input_gradient=False)


def _poison_output_layer(model, step):
    """NaN into the last layer's kernel, in place."""
    model.layers[-1].params["kernel"][0, 0] = np.nan


def test_a_non_finite_loss_stops_a_planned_fit_before_its_update(monkeypatch, planned_steps):
    """The plan reads the weights in place, so it sees the NaN; the loss is NaN, and neither the
    backward nor the update of that step may run: every other weight stays as it was."""
    x, y = _data(_seed_like(), 40, 5, seed=11)
    with pytest.warns(RuntimeWarning, match="the loss became nan in epoch 1, batch 2"):
        _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y,
                         callbacks=lambda: [_AtSteps([2], _poison_output_layer)])
    assert planned_steps[-2] == 3


def test_train_on_batch_runs_the_layers(planned_steps):
    x, y = _data(_seed_like(), 8, 5)
    model, _ = _train(_seed_like, "adam", x, y, epochs=1)
    model.train_on_batch(x, y)   # no FitPlans: nothing is counted, and it works
    assert planned_steps == [1]


# -- the plan object refuses what it cannot run ------------------------------------------------------
def _plan_for(layers, batch):
    model = Sequential(layers())
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model)
    ops, _ = training_plan._training_ops(model.layers, True)
    return model, kernels.training_plan(ops, (batch,) + model.input_shape, np.float32)


def test_a_plan_checks_its_input_and_gradient():
    model, plan = _plan_for(_seed_like, 4)
    with pytest.raises(ValueError, match=r"x must be a C-contiguous float32 array of shape \(4, 12, 12, 1\)"):
        plan.forward(np.zeros((3, 12, 12, 1), np.float32))
    # the wrong dtype is a TypeError, as the kernel face raises on the general path
    with pytest.raises(TypeError, match="x must be a float32 array, received float64"):
        plan.forward(np.zeros((4, 12, 12, 1), np.float64))
    with pytest.raises(ValueError, match=r"x must be a C-contiguous float32 .*, not C-contiguous"):
        plan.forward(np.zeros((4, 12, 24, 1), np.float32)[:, :, ::2])
    with pytest.raises(RuntimeError, match="backward needs a forward first"):
        plan.backward(np.zeros((4, 5), np.float32))
    plan.forward(np.zeros((4, 12, 12, 1), np.float32))
    with pytest.raises(ValueError, match=r"dy must be a C-contiguous float32 array of shape \(4, 5\)"):
        plan.backward(np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError, match="dy must be a float32 array, received float64"):
        plan.backward(np.zeros((4, 5), np.float64))
    model, plan = _plan_for(_relu_and_dropout_layers, 2)
    x = np.zeros((2, 12, 12, 2), np.float32)
    with pytest.raises(ValueError, match=r"expected 3 dropout keys, ints in \[0, 2\*\*64\), received \[1\]"):
        plan.forward(x, [1])
    with pytest.raises(ValueError, match="expected 3 dropout keys"):
        plan.forward(x, [1, 2, 2**64])
    plan.forward(x, [1, 2, 2**64 - 1])


def test_a_plan_binds_no_update_it_cannot_run_in_place():
    model, plan = _plan_for(_seed_like, 4)
    kernel = model.layers[0].params["kernel"]
    grad = plan.gradients[0][2]
    state = (np.zeros_like(kernel), np.zeros_like(kernel))
    read_only = np.zeros_like(kernel)
    read_only.flags.writeable = False
    assert not plan.bind_updates("adam", [(kernel, grad, (state[0], read_only))])
    assert not plan.bind_updates("adam", [(kernel, grad, (state[0], np.zeros(kernel.shape, np.float64)))])
    assert not plan.bind_updates("adam", [(np.zeros(2 * kernel.size, np.float32)[::2], grad, state)])
    assert plan.bind_updates("adam", [(kernel, grad, state)])


def _change_threads(model, step):
    c_engine.set_num_threads(1 + step % 4, beyond_cpus=True)


def test_the_plans_workspace_follows_the_threads(monkeypatch, planned_steps):
    """More threads between two steps need a larger workspace (here 2.9x from 1 to 4 threads
    for the convolution's forward), and change the kernel gradients' sums: the plan asks C for
    both every step, as the general path does. The load monitor is off, so 4 threads run."""
    def layers():
        return [Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=(14, 14, 16)),
                MaxPooling2D((2, 2)), Flatten(), Dense(5, activation="softmax")]

    x, y = _data(layers(), 64, 5, seed=12)
    adaptive = kernels.adaptive_threads()
    kernels.set_adaptive_threads(False)
    try:
        _assert_same_fit(monkeypatch, planned_steps, layers, OPTIMIZERS["adam"], x, y, batch_size=16,
                         callbacks=lambda: [_AtSteps(range(10**6), _change_threads)])
    finally:
        c_engine.set_num_threads(None)
        kernels.set_adaptive_threads(adaptive)
    assert planned_steps[-2] == 8


def test_renamed_layers_keep_their_own_optimizer_state(monkeypatch, planned_steps):
    """The optimizer keeps its state by layer name (get_state, model files). A layer renamed
    during or after a fit once gave a bare KeyError, and two same-shaped layers that swapped
    names silently swapped their Adam moments. Renaming changes nothing in the numbers."""
    def rename(model, step):
        conv, dense = model.layers[0], model.layers[5]
        conv.name, dense.name = dense.name, conv.name    # a swap: each key now names the other
        model.layers[6].name = "head"

    x, y = _data(_seed_like(), 40, 5, seed=18)
    kept = _train(_seed_like, OPTIMIZERS["adam"], x, y)[0]
    renamed = _assert_same_fit(monkeypatch, planned_steps, _seed_like, OPTIMIZERS["adam"], x, y,
                               callbacks=lambda: [_AtSteps([4], rename)])[0]
    assert [w.tobytes() for w in renamed.get_weights()] == [w.tobytes() for w in kept.get_weights()]
    assert ("head", "kernel", "m") in renamed.optimizer.get_state()["slots"]
    assert planned_steps[-2] == 10
    renamed.layers[1].name = renamed.layers[0].name   # a pool: no state, but the names must stay unique
    renamed.layers[2].name = renamed.layers[0].name
    with pytest.raises(ValueError, match=r"two layers are named '.*'; layer names must be unique"):
        renamed.fit(x, y, batch_size=8, epochs=1, verbose=0)
