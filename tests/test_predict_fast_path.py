"""predict's small-batch fast path: the inference plan (minicnn/kernels/c_engine.py, "inference
plans"; minicnn/training/trainer.py, _CachedPlan).

The plan must give the general path's bytes (model.forward(x, training=False), layer by layer),
and must never run stale: every way a model, its weights or the engine's settings can change
between two predictions has a test here that fails when the plan does not follow.
"""
import threading

import numpy as np
import pytest

import minicnn
from minicnn import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                     GlobalAveragePooling2D, MaxPooling2D, ReLU, Sequential, kernels)
from minicnn.layers import RandomFlip, Softmax
from minicnn.training import trainer

from models import seed_model

try:
    from minicnn.kernels import c_engine
except ImportError:   # not built: every test here is about the C engine's plan
    c_engine = None

pytestmark = [pytest.mark.skipif(c_engine is None, reason="C engine not built"),
              pytest.mark.usefixtures("c_backend")]


def _images(n, size=28, channels=1, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(dtype)


def _plan(model, x):
    """The plan predict used for x (None when it ran the layers one by one)."""
    cached = trainer._inference_plans[model][(x.shape, np.dtype(model.dtype))]
    return cached.plan


def _assert_fast_equals_general(model, x):
    """predict (the plan) and forward (the layers one by one) give the same bytes, and predict
    did run a plan."""
    fast = model.predict(x, verbose=0)
    assert _plan(model, x) is not None
    general = model.forward(x.astype(model.dtype), training=False)
    assert fast.dtype == general.dtype and fast.shape == general.shape
    assert fast.tobytes() == general.tobytes()
    return fast


def _normalising_model(dtype=None):
    """Every layer kind a plan binds, besides the seed model's: batch normalisation (fused with
    the ReLU layer after it, and alone on Dense outputs), dropout, augmentation, average and
    global average pooling, a separate Softmax layer."""
    minicnn.set_seed(3)
    model = Sequential([
        RandomFlip(input_shape=(12, 12, 2), dtype=dtype),
        Conv2D(6, (3, 3), padding="same"),
        BatchNormalization(),
        ReLU(),
        AveragePooling2D((2, 2), padding="same"),
        Dropout(0.3),
        Conv2D(8, (3, 3), strides=2, activation="relu"),
        GlobalAveragePooling2D(),
        Dense(7),
        BatchNormalization(),
        Dense(5),
        Softmax(),
    ])
    # moving statistics other than 0 and 1, so the batch normalisation computes something
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, BatchNormalization):
            features = layer.state["moving_mean"].shape
            layer.set_weights([rng.uniform(0.5, 2, features), rng.normal(0, 0.3, features),
                               rng.normal(0, 0.5, features), rng.uniform(0.5, 2, features)])
    return model


# -- the same bytes --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 8])
def test_seed_model_fast_path_gives_the_general_paths_bytes(n):
    minicnn.set_seed(0)
    _assert_fast_equals_general(seed_model(), _images(n))


@pytest.mark.parametrize("n", [1, 5])
def test_float64_seed_model_fast_path_gives_the_general_paths_bytes(n):
    minicnn.set_seed(1)
    model = seed_model(dtype="float64")
    fast = _assert_fast_equals_general(model, _images(n, dtype=np.float64))
    assert fast.dtype == np.float64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 4])
def test_batch_norm_dropout_and_average_pooling_fast_path_gives_the_general_paths_bytes(dtype, n):
    model = _normalising_model(dtype)
    _assert_fast_equals_general(model, _images(n, size=12, channels=2, dtype=dtype, seed=n))


def test_uint8_images_are_converted_once_and_give_the_general_paths_bytes():
    minicnn.set_seed(0)
    model = seed_model()
    images = (np.random.default_rng(2).random((2, 28, 28, 1)) * 255).astype(np.uint8)
    _assert_fast_equals_general(model, images)


def test_a_read_only_input_and_a_view_into_a_larger_array_give_the_general_paths_bytes():
    minicnn.set_seed(0)
    model = seed_model()
    images = _images(6)
    images.setflags(write=False)
    _assert_fast_equals_general(model, images[2:3])
    _assert_fast_equals_general(model, images[3:5])


def test_evaluate_of_a_small_batch_uses_the_plan_and_the_general_paths_numbers():
    minicnn.set_seed(0)
    model = seed_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _images(4), np.array([0, 3, 9, 1])
    loss = model.evaluate(x, y, batch_size=4, verbose=0)
    assert _plan(model, x) is not None
    general = model.loss.value(model.loss.prepare_targets(y, 10, model.dtype, "y"), model.forward(x))
    assert loss[0] == general


def test_larger_batches_run_the_general_path():
    minicnn.set_seed(0)
    model = seed_model()
    model.predict(_images(trainer.MIN_INFERENCE_CHUNK + 1), verbose=0)
    assert model not in trainer._inference_plans


# -- never stale -----------------------------------------------------------------------------

def test_set_weights_is_seen_by_the_next_prediction():
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(1)
    before = _assert_fast_equals_general(model, x)
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(0, 0.1, w.shape) for w in model.get_weights()])
    after = _assert_fast_equals_general(model, x)
    assert after.tobytes() != before.tobytes()


def test_load_weights_is_seen_by_the_next_prediction(tmp_path):
    minicnn.set_seed(0)
    source = seed_model()
    path = source.save_weights(str(tmp_path / "w.npz"))
    minicnn.set_seed(9)
    model = seed_model()
    x = _images(1)
    before = _assert_fast_equals_general(model, x)
    model.load_weights(path)
    after = _assert_fast_equals_general(model, x)
    assert after.tobytes() != before.tobytes()
    assert after.tobytes() == source.predict(x, verbose=0).tobytes()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_an_optimizer_step_is_seen_by_the_next_prediction(optimizer):
    minicnn.set_seed(0)
    model = seed_model()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x = _images(2)
    before = _assert_fast_equals_general(model, x)
    model.train_on_batch(_images(4, seed=4), np.array([1, 2, 3, 4]))
    after = _assert_fast_equals_general(model, x)
    assert after.tobytes() != before.tobytes()


def test_moving_statistics_updated_by_training_are_seen_by_the_next_prediction():
    model = _normalising_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = _images(2, size=12, channels=2)
    before = _assert_fast_equals_general(model, x)
    model.fit(_images(8, size=12, channels=2, seed=8), np.arange(8) % 5, batch_size=8, epochs=1, verbose=0)
    after = _assert_fast_equals_general(model, x)
    assert after.tobytes() != before.tobytes()


def test_a_replaced_weight_array_makes_a_new_plan():
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(1)
    before = _assert_fast_equals_general(model, x)
    first_plan = _plan(model, x)
    dense = model.layers[5]
    dense.params["kernel"] = dense.params["kernel"] * 2   # a new array, not a write into the old one
    after = _assert_fast_equals_general(model, x)
    assert _plan(model, x) is not first_plan
    assert after.tobytes() != before.tobytes()


def test_a_changed_layer_setting_makes_a_new_plan():
    """A plan copies settings into its calls (batch normalisation's epsilon, a Softmax layer's
    axis): one set between two predictions must reach the next one, and an unchanged model must
    keep its plan (a forward sets only private attributes)."""
    model = _normalising_model()
    x = _images(1, size=12, channels=2)
    before = _assert_fast_equals_general(model, x)
    first_plan = _plan(model, x)
    model.predict(x, verbose=0)
    model.forward(x, training=True)   # the caches a training forward sets leave the plan current
    _assert_fast_equals_general(model, x)
    assert _plan(model, x) is first_plan
    model.layers[2].epsilon = 0.5
    after = _assert_fast_equals_general(model, x)
    assert _plan(model, x) is not first_plan
    assert after.tobytes() != before.tobytes()


def test_a_function_before_a_reshape_runs_before_it():
    """Bug: a reshape after a Python function (a softmax over a convolution's channels, then
    Flatten) ran before it, so the softmax spread over the whole flattened vector."""
    minicnn.set_seed(2)
    model = Sequential([Conv2D(3, (3, 3), activation="softmax", input_shape=(5, 5, 2)), Flatten()])
    fast = _assert_fast_equals_general(model, _images(1, size=5, channels=2))
    np.testing.assert_allclose(fast.reshape(1, 9, 3).sum(axis=-1), 1.0, rtol=1e-6)


def test_a_replaced_weight_of_another_dtype_is_refused_like_the_general_path():
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(1)
    model.predict(x, verbose=0)
    layer = model.layers[0]
    layer.params["bias"] = layer.params["bias"].astype(np.float64)
    with pytest.raises(TypeError, match="one dtype"):
        model.forward(x, training=False)
    with pytest.raises(TypeError, match="one dtype"):
        model.predict(x, verbose=0)


def test_a_weight_the_engine_would_copy_runs_the_general_path():
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(1)
    dense = model.layers[5]
    dense.params["kernel"] = np.asfortranarray(dense.params["kernel"])
    fast = model.predict(x, verbose=0)
    assert _plan(model, x) is None
    assert fast.tobytes() == model.forward(x, training=False).tobytes()


def test_each_dtype_has_its_own_plan():
    minicnn.set_seed(1)
    model32, model64 = seed_model(), seed_model(dtype="float64")
    model64.set_weights(model32.get_weights())
    x = _images(1)
    y32, y64 = model32.predict(x, verbose=0), model64.predict(x, verbose=0)
    assert (y32.dtype, y64.dtype) == (np.float32, np.float64)
    assert _plan(model64, x).dtype == np.float64
    assert y64.tobytes() == model64.forward(x.astype(np.float64)).tobytes()


def test_adding_or_removing_a_layer_makes_a_new_plan():
    minicnn.set_seed(0)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(6, activation="relu")])
    x = _images(1, size=4)
    _assert_fast_equals_general(model, x)
    model.add(Dense(3))
    assert _assert_fast_equals_general(model, x).shape == (1, 3)
    model.layers.pop()
    assert _assert_fast_equals_general(model, x).shape == (1, 6)


def test_set_backend_switches_the_engine_between_two_predictions(monkeypatch):
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(1)
    _assert_fast_equals_general(model, x)
    runs = []
    original_run = c_engine.InferencePlan.run
    monkeypatch.setattr(c_engine.InferencePlan, "run", lambda plan, x: runs.append(1) or original_run(plan, x))
    minicnn.set_backend("numpy")
    on_numpy = model.predict(x, verbose=0)
    assert runs == [] and _plan(model, x) is None
    assert on_numpy.tobytes() == model.forward(x, training=False).tobytes()
    minicnn.set_backend("c")
    _assert_fast_equals_general(model, x)
    assert runs == [1]


@pytest.fixture
def restore_engine_settings():
    yield
    c_engine.set_num_threads(None)
    c_engine.set_algorithm("auto")
    c_engine.set_simd_level(c_engine.simd_levels()[0])
    c_engine.set_load_cap(None)


def _convolution_heavy_model():
    """A model whose largest workspace is a convolution's (the seed model's is its first Dense's,
    which neither the threads nor the algorithm change)."""
    minicnn.set_seed(0)
    return Sequential([Conv2D(64, (3, 3), padding="same", activation="relu", input_shape=(14, 14, 32)),
                       GlobalAveragePooling2D(), Dense(3)])


def _workspace_need(model, x):
    return max(query(*args) for query, args in _plan(model, x)._queries)


def test_more_threads_between_two_predictions_grow_the_workspace(restore_engine_settings):
    model = _convolution_heavy_model()
    x = _images(1, size=14, channels=32)
    c_engine.set_num_threads(1)
    _assert_fast_equals_general(model, x)
    one_thread = _workspace_need(model, x)
    c_engine.set_num_threads(4, beyond_cpus=True)
    if c_engine.engine_info()["openmp"]:
        assert _workspace_need(model, x) > one_thread   # the test's point: a plan that kept its
    else:                                               # first workspace would now be refused
        # a build without OpenMP runs every call on one thread whatever the setting, so its
        # plans must not ask for per-thread scratch it will never use
        assert _workspace_need(model, x) == one_thread
    _assert_fast_equals_general(model, x)


def test_the_algorithm_policy_between_two_predictions(restore_engine_settings):
    model = _convolution_heavy_model()
    x = _images(1, size=14, channels=32)
    results, needs = {}, {}
    for name in ("direct", "winograd", "auto"):
        c_engine.set_algorithm(name)
        results[name] = _assert_fast_equals_general(model, x).tobytes()
        needs[name] = _workspace_need(model, x)
    # the policy changes the bits and the workspace: the test's point
    assert results["direct"] != results["winograd"] and needs["direct"] < needs["winograd"]


def test_every_simd_level_between_two_predictions(restore_engine_settings):
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(2)
    for level in c_engine.simd_levels():
        c_engine.set_simd_level(level)
        _assert_fast_equals_general(model, x)


def test_an_adaptive_thread_cap_between_two_predictions(restore_engine_settings):
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(3)
    c_engine.set_num_threads(4, beyond_cpus=True)
    _assert_fast_equals_general(model, x)
    c_engine.set_num_threads(4)
    c_engine.set_load_cap(1)
    _assert_fast_equals_general(model, x)


def test_a_subclass_that_overrides_forward_runs_the_general_path():
    class Doubled(Dense):
        def _forward(self, x, training):
            return super()._forward(x, training) * 2

    minicnn.set_seed(0)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Doubled(3), Dense(2)])
    x = _images(1, size=4)
    fast = model.predict(x, verbose=0)
    assert _plan(model, x) is None
    assert fast.tobytes() == model.forward(x, training=False).tobytes()


def test_an_unhashable_model_subclass_runs_the_general_path():
    class ComparableSequential(Sequential):
        def __eq__(self, other):
            return self is other

    minicnn.set_seed(0)
    model = ComparableSequential([Flatten(input_shape=(4, 4, 1)), Dense(3)])
    x = _images(2, size=4)
    assert model.predict(x, verbose=0).tobytes() == model.forward(x, training=False).tobytes()


def test_a_model_without_c_work_runs_the_general_path():
    model = Sequential([Flatten(input_shape=(3, 3, 1)), Dropout(0.5), Softmax()])
    x = _images(2, size=3)
    fast = model.predict(x, verbose=0)
    assert _plan(model, x) is None
    assert fast.tobytes() == model.forward(x, training=False).tobytes()


# -- the plan's own door ---------------------------------------------------------------------

def test_a_plan_refuses_an_input_it_was_not_made_for():
    minicnn.set_seed(0)
    model = seed_model()
    x = _images(2)
    model.predict(x, verbose=0)
    plan = _plan(model, x)
    for wrong in (_images(1), np.asfortranarray(_images(2, size=28)).transpose(0, 2, 1, 3)):
        with pytest.raises(ValueError, match="inference plan: x must be a C-contiguous float32 array"):
            plan.run(wrong)
    for wrong, received in ((x.astype(np.float64), "float64"), (x.tolist(), "list")):
        with pytest.raises(TypeError, match=f"inference plan: x must be a float32 array, received {received}"):
            plan.run(wrong)


def test_inference_plan_checks_ops_like_the_general_path():
    kernel = np.zeros((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="channels but the kernel expects"):
        kernels.inference_plan([("conv2d", kernel, None, (1, 1), (0, 0, 0, 0), False)], (1, 5, 5, 3), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.inference_plan([("maxpool2d", (4, 4), (1, 1), (0, 0, 0, 0))], (1, 3, 3, 1), np.float32)
    with pytest.raises(ValueError, match="unknown op"):
        kernels.inference_plan([("transpose",)], (1, 3, 3, 1), np.float32)


# -- re-entrancy -----------------------------------------------------------------------------

def test_two_threads_predicting_with_one_model_never_share_buffers():
    minicnn.set_seed(0)
    model = seed_model()
    inputs = [_images(1, seed=s) for s in range(2)]
    expected = [model.forward(x, training=False).tobytes() for x in inputs]
    assert expected[0] != expected[1]
    model.predict(inputs[0], verbose=0)
    plan = _plan(model, inputs[0])
    failures, ready = [], threading.Barrier(2)

    def predict_many(which):
        ready.wait()
        for _ in range(150):
            if model.predict(inputs[which], verbose=0).tobytes() != expected[which]:
                failures.append(which)

    threads = [threading.Thread(target=predict_many, args=(which,)) for which in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert _plan(model, inputs[0]) is plan   # both threads ran the one plan, each on its own buffers


def test_softmax_gives_the_bits_of_np_max_and_np_sum():
    from minicnn.layers.activations import softmax
    rng = np.random.default_rng(11)
    for shape, axis in [((1, 10), -1), ((6, 300), -1), ((3, 5, 40), 1), ((9, 4), 0)]:
        for dtype in (np.float32, np.float64, np.int64):
            x = rng.normal(0, 30, shape).astype(dtype)
            e = x - np.max(x, axis=axis, keepdims=True)
            e = np.exp(e.astype(np.float64) if e.dtype.kind != "f" else e)
            expected = e / np.sum(e, axis=axis, keepdims=True)
            assert softmax(x, axis).tobytes() == expected.tobytes()


def test_a_dropped_model_drops_its_plans():
    import gc
    import weakref

    minicnn.set_seed(0)
    model = seed_model()
    model.predict(_images(1), verbose=0)
    gc.collect()   # models dropped by earlier tests leave the cache now, not during the count
    alive, cached = weakref.ref(model), len(trainer._inference_plans)
    del model
    gc.collect()
    assert alive() is None   # the plan cache holds no reference to the model
    assert len(trainer._inference_plans) == cached - 1


def test_threads_predicting_larger_batches_with_one_model_get_the_sequential_answers():
    """Bug: the general path (batches over 8) handed a convolution its fused pool through a layer
    attribute, set and reset around the call; another thread's reset made a convolution run
    without its pool, and GlobalAveragePooling2D took the unpooled maps: wrong probabilities,
    silently. The pool is now an argument. A short switch interval widens any such window."""
    import sys
    minicnn.set_seed(0)
    x = _images(120, size=12)
    model = Sequential([Conv2D(8, 3, padding="same", activation="relu", input_shape=(12, 12, 1)),
                        MaxPooling2D(), GlobalAveragePooling2D(), Dense(5, activation="softmax")])
    expected = model.predict(x, batch_size=1000, verbose=0)
    wrong, errors = [], []

    def predict(batch):
        for step in range(60):
            start = (step * 7) % (len(x) - batch)
            try:
                got = model.predict(x[start:start + batch], batch_size=batch, verbose=0)
                if not np.array_equal(got, expected[start:start + batch]):
                    wrong.append(batch)
            except Exception as error:   # noqa: BLE001 (any error is a failure, reported below)
                errors.append(repr(error))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=predict, args=(batch,)) for batch in (9, 20, 33, 50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert (wrong, errors) == ([], [])
