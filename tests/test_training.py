"""compile / fit / evaluate / predict: the Keras workflow, its checks, callbacks and repeatability."""
import math
import re
import tracemalloc
import warnings

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.callbacks import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN

from models import seed_model


def bars(n, seed, size=28, classes=10):
    """uint8 images: class k is a bright 8x3 bar at one of 10 places (jittered) on noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 80, (n, size, size, 1)).astype(np.uint8)
    scale = size / 28
    for i in range(n):
        r = int((2 + 12 * (y[i] // 5)) * scale) + rng.integers(0, 4)
        c = int((1 + 5 * (y[i] % 5)) * scale) + rng.integers(0, 2)
        x[i, r:r + int(8 * scale), c:c + max(1, int(3 * scale)), 0] = 255
    return x, y


def small_model(classes=3, dtype=None, size=8):
    return Sequential([
        Conv2D(4, 3, activation="relu", input_shape=(size, size, 1), dtype=dtype),
        MaxPooling2D(2),
        Flatten(),
        Dense(classes, activation="softmax", dtype=dtype),
    ])


def small_data(n=96, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    for k in range(classes):
        x[y == k, 2 * k:2 * k + 3, :, 0] += 1.5
    return x, y


def compiled_small(seed=0, optimizer="adam", metrics=("accuracy",), **kwargs):
    minicnn.set_seed(seed)
    model = small_model(**kwargs)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


def weights_bytes(model):
    return [w.tobytes() for w in model.get_weights()]


# -- the seed model learns ---------------------------------------------------------------------

def test_seed_model_learns_a_synthetic_task(backend):
    minicnn.set_seed(1)
    x_train, y_train = bars(320, seed=0)
    x_test, y_test = bars(200, seed=1)
    model = seed_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert model.count_params() == 421_642
    history = model.fit(x_train / np.float32(255), y_train, epochs=2, batch_size=32, verbose=0)
    assert history.epoch == [0, 1]
    assert history.history["loss"][1] < history.history["loss"][0]
    loss, accuracy = model.evaluate(x_test / np.float32(255), y_test, verbose=0)
    assert accuracy >= 0.9, f"test accuracy {accuracy:.3f} after 2 epochs (loss {loss:.3f})"
    probabilities = model.predict(x_test[:50] / np.float32(255), verbose=0)
    assert probabilities.shape == (50, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


# -- History, logs, validation -----------------------------------------------------------------

def test_history_has_keras_keys_and_validation_split_takes_the_last_fraction():
    x, y = small_data(100)
    model = compiled_small()
    history = model.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.epoch == [0, 1] and len(history.epoch_times) == 2
    assert all(isinstance(v, float) for values in history.history.values() for v in values)
    # validation ran on x[75:] with the weights at the end of the last epoch
    assert model.evaluate(x[75:], y[75:], batch_size=16, verbose=0) == [
        history.history["val_loss"][-1], history.history["val_accuracy"][-1]]
    assert model.history is history


def test_validation_data_and_metric_names_follow_the_loss():
    x, y = small_data(60)
    minicnn.set_seed(0)
    model = small_model()
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["acc"])
    onehot = np.eye(3)[y]
    history = model.fit(x, onehot, epochs=1, validation_data=(x[:20], onehot[:20]), verbose=0)
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert isinstance(model.compiled_metrics[0], minicnn.metrics.CategoricalAccuracy)
    assert model.metrics_names == ["loss", "acc"]


def test_integer_images_train_exactly_like_their_float_conversion():
    x, y = bars(64, seed=3, size=8, classes=3)
    runs = []
    for images in (x, x.astype(np.float32)):
        model = compiled_small()
        history = model.fit(images, y, epochs=2, batch_size=16, verbose=0)
        runs.append((weights_bytes(model), history.history))
    assert runs[0] == runs[1]


def test_fit_never_copies_the_dataset():
    x, _ = bars(4000, seed=0, size=28, classes=3)            # uint8, 3.1 MB (float32 would be 12.5 MB)
    y = np.zeros(4000, dtype=np.int64)
    minicnn.set_seed(0)
    model = Sequential([Conv2D(2, 3, input_shape=(28, 28, 1)), Flatten(), Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    tracemalloc.start()
    try:
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        predictions = model.predict(x, batch_size=32, verbose=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert predictions.shape == (4000, 3)
    assert peak < 3_000_000, f"fit + predict peaked at {peak / 1e6:.1f} MB for a 3.1 MB uint8 dataset"


def test_evaluate_and_batch_methods_return_keras_shapes():
    x, y = small_data(40)
    model = compiled_small()
    assert len(model.evaluate(x, y, verbose=0)) == 2
    as_dict = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(as_dict) == {"loss", "accuracy"}
    loss_only = compiled_small(metrics=())
    assert isinstance(loss_only.evaluate(x, y, verbose=0), float)
    before = weights_bytes(model)
    test_loss, _ = model.test_on_batch(x[:8], y[:8])
    assert weights_bytes(model) == before
    train_loss, _ = model.train_on_batch(x[:8], y[:8])
    assert train_loss == test_loss           # the loss is computed before the update
    assert weights_bytes(model) != before and model.optimizer.iterations == 1
    np.testing.assert_array_equal(model.predict_on_batch(x[:8]), model.predict(x[:8], verbose=0))


def test_predict_works_in_batches_of_any_size():
    x, _ = small_data(70)
    model = compiled_small()
    whole = model.predict(x, batch_size=70, verbose=0)
    for batch_size in (1, 7, 32, 1000):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size, verbose=0), whole, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("built", [True, False])
def test_inference_in_cache_sized_chunks_gives_each_images_own_numbers(backend, built, monkeypatch):
    """predict, evaluate and predict_on_batch run a large batch a few images at a time; with
    training=False every layer treats images separately, so each output equals the image's
    own forward pass: bit for bit on the C engine, within BLAS's blocking on NumPy's."""
    minicnn.set_seed(3)
    layers = [Conv2D(8, 3, padding="same", activation="relu"), minicnn.layers.BatchNormalization(),
              MaxPooling2D(2), minicnn.layers.Dropout(0.5), Flatten(), Dense(10, activation="softmax")]
    if built:
        layers[0] = Conv2D(8, 3, padding="same", activation="relu", input_shape=(20, 20, 3))
    model = Sequential(layers)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((300, 20, 20, 3), dtype=np.float32)
    y = rng.integers(0, 10, 300)
    model.fit(x, y, batch_size=50, epochs=1, verbose=0)       # moving statistics away from 0/1
    # 16 images of the largest activation (20x20x8 float32) per chunk: 300 = 18 chunks + 12
    monkeypatch.setattr(minicnn.training.trainer, "INFERENCE_CHUNK_BYTES", 16 * 20 * 20 * 8 * 4)
    assert model._inference_chunk_images() == 16
    per_image = np.concatenate([model.forward(x[i:i + 1], training=False) for i in range(300)])
    tolerance = {"rtol": 0, "atol": 0} if backend == "c" else {"rtol": 1e-6, "atol": 1e-7}
    batches = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, training=False: batches.append(len(x)) or forward(x, training))
    np.testing.assert_allclose(model.predict(x, batch_size=300, verbose=0), per_image, **tolerance)
    assert batches == [16] * 18 + [12]
    np.testing.assert_allclose(model.predict_on_batch(x), per_image, **tolerance)
    loss = model.evaluate(x, y, batch_size=300, verbose=0)[0]
    expected = -np.mean(np.log(per_image[np.arange(300), y].astype(np.float64)))
    assert loss == pytest.approx(expected, rel=1e-5)


# -- repeatability -----------------------------------------------------------------------------

def test_set_seed_makes_two_runs_bit_identical():
    x, y = small_data(64)

    def run():
        model = compiled_small(seed=42)
        history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
        return weights_bytes(model), history.history

    first, second = run(), run()
    assert first == second
    third = compiled_small(seed=43)
    third.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert weights_bytes(third) != first[0]


def test_fit_in_pieces_equals_one_fit():
    x, y = small_data(64)
    whole = compiled_small(seed=7)
    whole.fit(x, y, epochs=3, batch_size=16, verbose=0)
    pieces = compiled_small(seed=7)
    for _ in range(3):
        pieces.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert weights_bytes(whole) == weights_bytes(pieces)


def test_shuffle_changes_the_order_every_epoch_and_false_keeps_it():
    x, y = small_data(48)
    seen = {}
    for shuffle in (True, False):
        model = compiled_small(seed=3)
        batches = []
        original = model._train_step

        def spy(x_batch, targets, fused, *plans, original=original, batches=batches):
            batches.append(x_batch.copy())
            return original(x_batch, targets, fused, *plans)

        model._train_step = spy
        model.fit(x, y, epochs=2, batch_size=48, shuffle=shuffle, verbose=0)
        seen[shuffle] = batches
    assert not np.array_equal(seen[True][0], seen[True][1])
    assert sorted(map(bytes, seen[True][0].reshape(48, -1))) == sorted(map(bytes, x.reshape(48, -1)))
    np.testing.assert_array_equal(seen[False][0], x)
    np.testing.assert_array_equal(seen[False][1], x)


# -- bad input is refused before any work -----------------------------------------------------

def bad_input_cases():
    x, y = small_data(12)
    nan_last = x.copy()
    nan_last[-1, 3, 3, 0] = np.nan
    inf_first = x.copy()
    inf_first[0, 0, 0, 0] = np.inf
    return [
        ("lengths differ", x, y[:-1], ValueError, r"same number of samples.*12 in x and 11 in y"),
        ("label out of range", x, np.where(y == 0, 3, y), ValueError, r"\[0, 3\)"),
        ("negative label", x, np.where(y == 0, -1, y), ValueError, r"\[0, 3\)"),
        ("non-integer label", x, y + 0.5, ValueError, "whole numbers"),
        ("wrong image shape", x[:, :7], y, ValueError, r"\(N, 8, 8, 1\).*\(12, 7, 8, 1\)"),
        ("missing channel axis", x[..., 0], y, ValueError, r"np\.newaxis"),
        ("NaN in the last image", nan_last, y, ValueError, "NaN or inf.*sample 11"),
        ("inf", inf_first, y, ValueError, "NaN or inf.*sample 0"),
        ("empty x", x[:0], y[:0], ValueError, "empty"),
        ("float64 beyond float32", x.astype(np.float64) * 1e300, y, ValueError, "range"),
        ("object dtype", x.astype(object), y, TypeError, "dtype object"),
        ("complex dtype", x.astype(np.complex64), y, TypeError, "complex64"),
        ("strings", np.full((12, 8, 8, 1), "a"), y, TypeError, "<U1"),
        ("one-hot y for sparse loss", x, np.eye(3)[y], ValueError, "categorical_crossentropy"),
        ("y missing", x, None, ValueError, "y is required"),
    ]


@pytest.mark.parametrize("case", bad_input_cases(), ids=lambda case: case[0])
def test_bad_input_to_fit_and_evaluate_raises_before_any_work(case):
    _, x, y, error, message = case
    model = compiled_small()
    model.build()
    before = weights_bytes(model)
    with pytest.raises(error, match=message) as raised:
        model.fit(x, y, epochs=1, verbose=0)
    assert re.match(r"fit: (x|y)\b", str(raised.value)), str(raised.value)
    assert weights_bytes(model) == before and model.optimizer.iterations == 0
    with pytest.raises(error, match=message):
        model.evaluate(x, y, verbose=0)


def test_bad_input_to_predict_and_bad_arguments():
    x, y = small_data(12)
    model = compiled_small()
    for bad, error in ((x[:0], ValueError), (x[:, :, :5], ValueError), (np.full_like(x, np.nan), ValueError),
                       (x.astype(complex), TypeError), ([[1, 2], [3]], TypeError)):
        with pytest.raises(error, match="predict: x"):
            model.predict(bad, verbose=0)
    for kwargs, message in (({"batch_size": 0}, "batch_size"), ({"epochs": -1}, "epochs"),
                            ({"validation_split": 1.0}, "validation_split"), ({"verbose": 3}, "verbose"),
                            ({"validation_data": (x,)}, "validation_data"),
                            ({"validation_split": 0.95}, "leaves 0 for training")):
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, **kwargs)
    with pytest.raises(ValueError, match=r"validation_data\[1\]"):
        model.fit(x, y, validation_data=(x, y[:-1]), verbose=0)
    assert model.optimizer.iterations == 0
    with pytest.raises(RuntimeError, match="compile"):
        small_model().fit(x, y, verbose=0)


def test_read_only_and_non_contiguous_inputs_are_used_without_being_written():
    x, y = small_data(32)
    view = np.asfortranarray(x)
    view.flags.writeable = False
    model = compiled_small()
    model.fit(view, y, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(view, x)


# -- progress output -------------------------------------------------------------------------

def test_verbose_levels(capsys):
    x, y = small_data(40)
    compiled_small().fit(x, y, epochs=2, batch_size=8, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    compiled_small().fit(x, y, epochs=2, batch_size=8, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2") and "loss: " in lines[0] and "accuracy: " in lines[0]
    pytest.importorskip("tqdm")
    compiled_small().fit(x, y, epochs=1, batch_size=8, verbose=1)
    err = capsys.readouterr().err
    assert "Epoch 1/1" in err and "5/5" in err and "loss: " in err and "accuracy: " in err


# -- callbacks -----------------------------------------------------------------------------------

def test_callback_hooks_run_in_keras_order_with_logs():
    x, y = small_data(24)
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            calls.append(("train_begin", self.params["epochs"], self.params["steps"]))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch))

        def on_batch_begin(self, batch, logs=None):          # Keras 1 spelling still works
            calls.append(("batch_begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            calls.append(("batch_end", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            calls.append(("train_end",))

    compiled_small().fit(x, y, epochs=2, batch_size=12, validation_split=0.5, verbose=0, callbacks=[Recorder()])
    batch_end = ("batch_end", 0, ["accuracy", "loss"])
    epoch_end = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert calls == [("train_begin", 2, 1),
                     ("epoch_begin", 0), ("batch_begin", 0), batch_end, ("epoch_end", 0, epoch_end),
                     ("epoch_begin", 1), ("batch_begin", 0), batch_end, ("epoch_end", 1, epoch_end),
                     ("train_end",)]


def test_stop_training_from_a_callback_stops_after_that_batch():
    x, y = small_data(40)

    class StopAtThirdBatch(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    model = compiled_small()
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[StopAtThirdBatch()])
    assert history.epoch == [0] and model.optimizer.iterations == 3


def test_early_stopping_with_patience_and_restore_best_weights():
    x, y = small_data(48)
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((logs["val_loss"], self.model.get_weights()))

    model = compiled_small(optimizer=minicnn.optimizers.SGD(learning_rate=5.0))   # diverges: val_loss climbs
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(x, y, epochs=30, batch_size=8, validation_split=0.25, verbose=0,
                        callbacks=[Snapshot(), stopper])
    losses = history.history["val_loss"]
    best = int(np.argmin(losses))
    assert len(losses) == best + 3 < 30, losses          # stops `patience` epochs after the best
    assert stopper.stopped_epoch == best + 2 and stopper.best_epoch == best
    for restored, kept in zip(model.get_weights(), snapshots[best][1]):
        np.testing.assert_array_equal(restored, kept)


def test_early_stopping_min_delta_and_mode():
    stopper = EarlyStopping(monitor="val_accuracy", min_delta=0.1, patience=1)
    assert stopper.mode == "max"

    class FakeModel:
        stop_training = False

    model = FakeModel()
    stopper.set_model(model)
    stopper.on_train_begin()
    stopper.on_epoch_end(0, {"val_accuracy": 0.5})
    stopper.on_epoch_end(1, {"val_accuracy": 0.65})     # +0.15 > min_delta: an improvement
    assert stopper.best == 0.65 and not model.stop_training
    stopper.on_epoch_end(2, {"val_accuracy": 0.7})      # +0.05: not one
    assert stopper.best == 0.65 and model.stop_training and stopper.stopped_epoch == 2


def test_model_checkpoint_names_files_by_epoch_and_saves_the_best_only(tmp_path):
    x, y = small_data(48)
    every = ModelCheckpoint(tmp_path / "every-{epoch:02d}-{loss:.3f}")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    weights = ModelCheckpoint(tmp_path / "w-{epoch}.npz", save_weights_only=True)
    model = compiled_small()
    history = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                        callbacks=[every, best, weights])
    names = sorted(p.name for p in tmp_path.iterdir())
    losses = history.history["loss"]
    assert [n for n in names if n.startswith("every")] == [f"every-{e + 1:02d}-{losses[e]:.3f}.npz" for e in range(3)]
    assert "best.npz" in names and {"w-1.npz", "w-2.npz", "w-3.npz"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    final = minicnn.load_model(tmp_path / f"every-03-{losses[2]:.3f}.npz")
    assert weights_bytes(final) == weights_bytes(model)
    assert final.optimizer.iterations == model.optimizer.iterations


def test_a_nan_loss_stops_training_before_the_update():
    x, y = small_data(32)
    model = compiled_small()
    model.build()
    kernel = model.layers[-1].params["kernel"]
    kernel[...] = 3e38     # finite weights whose outputs overflow: inf - inf = NaN in the softmax
    before = weights_bytes(model)
    with pytest.warns(RuntimeWarning, match="loss became nan.*last finite"), np.errstate(all="ignore"):
        history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[TerminateOnNaN()])
    assert history.epoch == [0] and math.isnan(history.history["loss"][0])
    assert model.optimizer.iterations == 0 and weights_bytes(model) == before


def test_callbacks_must_be_callback_instances():
    x, y = small_data(8)
    with pytest.raises(TypeError, match="Callback"):
        compiled_small().fit(x, y, verbose=0, callbacks=[lambda: None])


def test_compile_by_names_and_objects():
    model = small_model()
    model.compile(optimizer=minicnn.optimizers.SGD(0.1, momentum=0.9), loss=minicnn.losses.SparseCategoricalCrossentropy(),
                  metrics=["sparse_categorical_accuracy"])
    assert model.metrics_names == ["loss", "sparse_categorical_accuracy"]
    with pytest.raises(ValueError, match="unknown metric"):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["auc"])
    with pytest.raises(ValueError, match="does not fit"):
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["categorical_accuracy"])
    with pytest.raises(ValueError, match="loss"):
        model.compile(optimizer="adam")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(optimizer="adam", loss=minicnn.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert any("from_logits=True" in str(w.message) for w in caught)
    linear_output = Sequential([Dense(3, input_shape=(4,))])
    with pytest.warns(UserWarning, match="expects probabilities.*from_logits=True"):
        linear_output.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


def test_from_logits_model_trains():
    x, y = small_data(96)
    minicnn.set_seed(0)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), MaxPooling2D(2), Flatten(), Dense(3)])
    model.compile(optimizer=minicnn.optimizers.Adam(0.01),
                  loss=minicnn.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] >= 0.9


def test_callback_arguments_of_the_wrong_type_are_refused():
    # Bug (issue 10's class): start_from_epoch=1.5 was truncated to 1, min_delta="0.1" parsed.
    for kwargs, message in [({"start_from_epoch": 1.5}, "start_from_epoch must be an integer"),
                            ({"min_delta": "0.1"}, "min_delta must be a number"),
                            ({"baseline": "low"}, "baseline must be a number"),
                            ({"restore_best_weights": "yes"}, "restore_best_weights must be True or False")]:
        with pytest.raises(TypeError, match=message):
            EarlyStopping(**kwargs)
    with pytest.raises(TypeError, match="initial_value_threshold must be a number"):
        ModelCheckpoint("x.npz", initial_value_threshold="0.5")
    assert EarlyStopping(min_delta=-0.5, baseline=1, start_from_epoch=np.int64(2)).start_from_epoch == 2


def test_backward_stops_at_the_first_layer_with_trainable_weights(backend):
    """A training step needs no gradient below the first trainable layer: an augmentation layer
    in front of the first convolution is not run backward, and that convolution computes no dx
    (the recipe's model spent a whole input gradient there). Gradients stay those of a model
    without the augmentation layer."""
    from minicnn.layers import RandomFlip

    minicnn.set_seed(3)
    flip = RandomFlip("horizontal", seed=1)
    model = Sequential([flip, Conv2D(4, 3, padding="same", activation="relu"),
                        Flatten(), Dense(3, activation="softmax")])
    model.build((None, 6, 6, 1))
    x = np.random.default_rng(0).random((2, 6, 6, 1)).astype("float32")
    model.forward(x, training=True)
    calls = []

    def refuse(dy, need_input_gradient=True):
        raise AssertionError("RandomFlip.backward ran although no weight needs its gradient")

    flip.backward = refuse
    conv_backward = model.layers[1].backward

    def spy(dy, need_input_gradient=True):
        calls.append(need_input_gradient)
        return conv_backward(dy, need_input_gradient=need_input_gradient)

    model.layers[1].backward = spy
    dlogits = np.full((2, 3), 0.1, dtype="float32")
    assert model.backward(dlogits, need_input_gradient=False, dy_is_logits_gradient=True) is None
    assert calls == [False]
    kernel_gradient = model.layers[1].grads["kernel"].copy()
    del flip.backward, model.layers[1].backward          # back to the classes' methods
    # the full backward of the same forward (with dx, through the flip): the same kernel gradient
    assert model.backward(dlogits, need_input_gradient=True, dy_is_logits_gradient=True).shape == x.shape
    np.testing.assert_array_equal(model.layers[1].grads["kernel"], kernel_gradient)


def test_predict_never_returns_a_view_of_the_input():
    """One batch is returned without a copy only when the forward made a new array: a model
    whose output is a reshaped view of its input still gives the caller its own array."""
    x = np.random.default_rng(0).random((5, 4, 4, 2), dtype=np.float32)
    reshaping = Sequential([Flatten(input_shape=(4, 4, 2))])
    out = reshaping.predict(x, verbose=0)
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x.reshape(5, -1))
    out[:] = -1                                   # the caller may write to it
    assert (x >= 0).all()


def test_the_model_checks_its_input_once_and_still_runs_a_layers_own_forward():
    """Sequential checks the input at the first layer and then calls the built layers' passes
    directly (their inputs are the previous layers' outputs); a layer class that overrides
    forward itself still has that forward called."""
    calls = []

    class Recording(Flatten):
        def forward(self, x, training=False):
            calls.append(x.shape)
            return super().forward(x, training)

    model = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Recording(), Dense(3)])
    x = np.random.default_rng(0).random((4, 5, 5, 1), dtype=np.float32)
    model.forward(x)
    assert calls == [(4, 3, 3, 2)]
    with pytest.raises(TypeError, match="input dtype must be float32"):
        model.forward(x.astype(np.float64))          # the first layer's check
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 5, 5, 1\)"):
        model.forward(x[:, :4])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_layer_frozen_by_a_callback_is_not_updated_for_the_rest_of_the_fit(backend, optimizer):
    """Bug: the optimizer kept updating a layer frozen mid-fit with the last gradient it held
    (its backward no longer made one): plain SGD moved it by 4 * lr * that stale gradient.
    Keras leaves a layer frozen mid-fit as it is."""
    class FreezeFirstLayerAtEpoch1(minicnn.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.layers[0].trainable = False
                self.frozen = [w.copy() for w in self.model.layers[0].get_weights()]

    rng = np.random.default_rng(1)
    x, y = rng.random((64, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 64)
    minicnn.set_seed(0)
    model = Sequential([Conv2D(4, (3, 3), activation="relu", input_shape=(8, 8, 1)), MaxPooling2D(), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy")
    dense_before = model.layers[-1].get_weights()[0].copy()
    freeze = FreezeFirstLayerAtEpoch1()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[freeze])
    assert all(np.array_equal(w, kept) for w, kept in zip(model.layers[0].get_weights(), freeze.frozen))
    assert not np.array_equal(model.layers[-1].get_weights()[0], dense_before)   # the rest trained on


class _TopK(minicnn.metrics.Metric):
    """A metric with an argument of its own (and a required one when k is None)."""
    sparse = True

    def __init__(self, k, name="topk"):
        self.k = k
        super().__init__(name)

    def update(self, labels, y_pred):
        top = np.argsort(-y_pred, axis=1, kind="stable")[:, :self.k]
        self.correct += int((top == labels[:, None]).any(axis=1).sum())
        self.count += len(labels)


def test_evaluate_and_validation_keep_a_custom_metrics_own_arguments():
    """Bug: evaluate and fit's validation rebuilt each metric as type(m)(name=m.name): TopK(k=1)
    reported top-5 accuracy, and a metric whose argument is required raised a TypeError."""
    rng = np.random.default_rng(2)
    x, y = rng.random((40, 6, 6, 1)).astype(np.float32), rng.integers(0, 8, 40)
    minicnn.set_seed(0)
    model = Sequential([Flatten(input_shape=(6, 6, 1)), Dense(8, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=[_TopK(1), _TopK(3, name="top3")])
    probabilities = model.predict(x, verbose=0)
    top1 = float(np.mean(probabilities.argmax(axis=1) == y))
    top3 = float(np.mean((np.argsort(-probabilities, axis=1, kind="stable")[:, :3] == y[:, None]).any(axis=1)))
    assert top1 != top3
    assert model.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        {"loss": model.evaluate(x, y, verbose=0, return_dict=True)["loss"], "topk": top1, "top3": top3})
    history = model.fit(x, y, epochs=1, batch_size=40, verbose=0, validation_data=(x, y))
    after = model.predict(x, verbose=0)
    assert history.history["val_topk"] == [float(np.mean(after.argmax(axis=1) == y))]


@pytest.mark.parametrize("metric, loss", [
    (lambda: minicnn.metrics.SparseCategoricalAccuracy(), "categorical_crossentropy"),
    (lambda: minicnn.metrics.CategoricalAccuracy(), "sparse_categorical_crossentropy"),
])
def test_a_metric_object_that_does_not_fit_the_loss_is_refused_at_compile(metric, loss):
    """Bug: the string names were refused at compile, the objects only by a NumPy broadcasting
    error in fit, after the first update."""
    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match=r"compile: metric .* takes .* but the loss .* gives .*metrics=\['accuracy'\]"):
        model.compile("adam", loss, metrics=[metric()])


def test_a_nan_value_never_improves_for_early_stopping():
    """minicnn's rule, documented where it parts from Keras 3 (which takes a NaN first value as
    the best, so that nothing later beats it and training stops at epoch 2 here)."""
    values = [float("nan"), 1.0, 0.9, 0.95, 0.96, 0.5, 0.4]

    class Inject(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = values[epoch]

    rng = np.random.default_rng(0)
    model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    stopper = EarlyStopping(patience=2)
    history = model.fit(rng.random((20, 4)).astype(np.float32), rng.integers(0, 3, 20), epochs=len(values),
                        verbose=0, callbacks=[Inject(), stopper])
    assert len(history.history["loss"]) == 5 and stopper.stopped_epoch == 4   # best 0.9 at epoch 2


def test_a_custom_metric_that_leaves_sparse_at_its_default_is_taken_with_any_loss():
    """Only minicnn's own accuracies are checked against the loss's targets: a subclass that
    never set `sparse` (it may not care) was refused with the default sparse loss."""
    class Seen(minicnn.metrics.Metric):
        def update(self, targets, y_pred):
            self.count += len(targets)

    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=[Seen("seen")])
    rng = np.random.default_rng(0)
    history = model.fit(rng.random((6, 2, 2, 1)).astype(np.float32), np.arange(6) % 3, epochs=1, verbose=0)
    assert history.history["seen"] == [0.0]
