"""LearningRateScheduler and ReduceLROnPlateau (Keras' logic step for step), the learning rate
in History and the progress lines, and rates that survive a model file."""
import types

import numpy as np
import pytest

import minicnn
from minicnn.callbacks import LearningRateScheduler, ReduceLROnPlateau
from minicnn.optimizers import SGD, Adam
from minicnn.optimizers.schedules import ExponentialDecay

from models import small_classifier, small_classifier_data


def attached(callback, optimizer):
    """The callback bound to a stand-in model that has only an optimizer, as its hooks need."""
    callback.set_model(types.SimpleNamespace(optimizer=optimizer))
    callback.on_train_begin()
    return callback


def run_plateau(callback, values, monitor="val_loss"):
    """Feed scripted values to on_epoch_end; returns (logged rates, rates after each epoch)."""
    logged, after = [], []
    for epoch, value in enumerate(values):
        logs = {monitor: value}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["learning_rate"])
        after.append(callback.model.optimizer.learning_rate)
    return logged, after


VAL_LOSS = [1.0, 0.9, 0.95, 0.96, 0.97, 0.97, 0.97, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]


def test_reduce_on_plateau_with_patience_cooldown_and_min_lr():
    # By hand with Keras' logic (patience 2, cooldown 2, factor 0.5, min_lr 0.2):
    # e0, e1 improve; e2, e3 wait 1, 2 -> 0.5, cooldown 2; e4 cooldown 2->1 (no wait);
    # e5 cooldown 1->0 then wait 1; e6 wait 2 -> 0.25; e7 improves (0.8); e8, e9 wait 1, 2 ->
    # max(0.125, 0.2) = 0.2; e10 cooldown; e11 wait 1; e12, e13 wait 2, 3 but 0.2 is not above
    # float32(min_lr), so no more reductions.
    callback = attached(ReduceLROnPlateau(factor=0.5, patience=2, cooldown=2, min_lr=0.2, min_delta=0.0),
                        SGD(1.0))
    logged, after = run_plateau(callback, VAL_LOSS)
    assert after == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert logged == [1.0] + after[:-1]          # logged before that epoch's reduction, as Keras
    assert callback.best == 0.8


def test_reduce_on_plateau_without_cooldown_reduces_sooner():
    callback = attached(ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.0), SGD(1.0))
    _, after = run_plateau(callback, VAL_LOSS[:7])
    # e3 -> 0.5; e4, e5 wait 1, 2 -> 0.25; e6 wait 1
    assert after == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_reduce_on_plateau_min_delta_and_max_mode_for_accuracy():
    # 'auto' watches val_accuracy upwards; +0.005 is not an improvement with min_delta 0.01
    callback = attached(ReduceLROnPlateau(monitor="val_accuracy", factor=0.1, patience=1, min_delta=0.01),
                        Adam(0.01))
    _, after = run_plateau(callback, [0.5, 0.505, 0.7, 0.6], monitor="val_accuracy")
    assert after == pytest.approx([0.01, 0.001, 0.001, 0.0001], rel=1e-15)


def test_reduce_on_plateau_warns_without_its_monitor():
    callback = attached(ReduceLROnPlateau(), SGD(0.1))
    with pytest.warns(RuntimeWarning, match="val_loss"):
        callback.on_epoch_end(0, {"loss": 1.0})


def test_reduce_on_plateau_refuses_to_set_a_scheduled_rate():
    callback = attached(ReduceLROnPlateau(patience=0), SGD(ExponentialDecay(0.1, 10, 0.5)))
    callback.on_epoch_end(0, {"val_loss": 1.0})      # the best so far: nothing to set
    with pytest.raises(TypeError, match="schedule"):
        callback.on_epoch_end(1, {"val_loss": 2.0})


def test_learning_rate_scheduler_direct():
    seen = []

    def halve_after_first(epoch, lr):
        seen.append((epoch, lr))
        return lr if epoch == 0 else lr * 0.5

    callback = attached(LearningRateScheduler(halve_after_first), SGD(0.1))
    for epoch in range(3):
        callback.on_epoch_begin(epoch)
    assert seen == [(0, 0.1), (1, 0.1), (2, 0.05)]
    assert callback.model.optimizer.learning_rate == 0.025
    old_form = attached(LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1)), SGD(0.1))
    old_form.on_epoch_begin(3)
    assert old_form.model.optimizer.learning_rate == 0.025


@pytest.mark.parametrize("schedule, error, message", [
    (lambda epoch, lr: 1, ValueError, "should be a float"),
    (lambda epoch, lr: "0.1", ValueError, "should be a float"),
    (lambda epoch, lr: float("nan"), ValueError, "finite"),
    (lambda epoch, lr: -0.1, ValueError, ">= 0"),
])
def test_learning_rate_scheduler_refuses_bad_rates(schedule, error, message):
    callback = attached(LearningRateScheduler(schedule), SGD(0.1))
    with pytest.raises(error, match=message):
        callback.on_epoch_begin(0)
    assert callback.model.optimizer.learning_rate == 0.1


def test_learning_rate_scheduler_refuses_a_scheduled_optimizer():
    callback = attached(LearningRateScheduler(lambda epoch, lr: lr), SGD(ExponentialDecay(0.1, 10, 0.5)))
    with pytest.raises(TypeError, match="schedule"):
        callback.on_epoch_begin(0)


@pytest.mark.parametrize("make, error, message", [
    (lambda: ReduceLROnPlateau(factor=1.0), ValueError, "factor"),
    (lambda: ReduceLROnPlateau(factor=-0.5), ValueError, "factor"),
    (lambda: ReduceLROnPlateau(factor="0.1"), TypeError, "factor"),
    (lambda: ReduceLROnPlateau(patience=-1), ValueError, "patience"),
    (lambda: ReduceLROnPlateau(patience=2.5), TypeError, "patience"),
    (lambda: ReduceLROnPlateau(cooldown=-1), ValueError, "cooldown"),
    (lambda: ReduceLROnPlateau(mode="up"), ValueError, "mode"),
    (lambda: ReduceLROnPlateau(min_lr=-1e-3), ValueError, "min_lr"),
    (lambda: ReduceLROnPlateau(min_lr=float("inf")), ValueError, "min_lr"),
    (lambda: ReduceLROnPlateau(monitor=""), TypeError, "monitor"),
    (lambda: LearningRateScheduler(0.1), TypeError, "schedule must be a function"),
    (lambda: LearningRateScheduler(lambda e, lr: lr, verbose="loud"), TypeError, "verbose"),
])
def test_bad_callback_arguments_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- in fit: History, progress lines, files ------------------------------------------------------

def make_model(optimizer):
    return small_classifier(optimizer, seed=5)


def data(n=40, seed=1):
    return small_classifier_data(n, seed)


def decay_from_epoch_one(epoch, lr):
    return lr if epoch == 0 else lr * 0.5


def test_history_holds_the_rate_of_each_epoch_and_the_line_shows_it(capsys):
    x, y = data()
    model = make_model(SGD(0.1, momentum=0.5))
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=2,
                        callbacks=[LearningRateScheduler(decay_from_epoch_one)])
    assert history.history["learning_rate"] == [0.1, 0.05, 0.025]
    assert model.optimizer.learning_rate == 0.025
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 3 and lines[1].endswith("learning_rate: 0.0500")


def test_a_small_rate_is_shown_in_scientific_notation(capsys):
    x, y = data()
    make_model(SGD(ExponentialDecay(1e-4, 5, 0.5))).fit(x, y, epochs=1, batch_size=8, verbose=2)
    # 5 steps: 1e-4 * 0.5 ** (5 / 5)
    assert capsys.readouterr().out.strip().endswith("learning_rate: 5.0000e-05")


def test_a_constant_rate_is_not_logged_as_in_keras():
    x, y = data()
    history = make_model(Adam(0.01)).fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert "learning_rate" not in history.history


def test_a_rate_changed_by_a_callback_is_saved_and_training_resumes_exactly(tmp_path):
    x, y = data()
    fit_args = {"batch_size": 8, "validation_split": 0.25, "verbose": 0}

    def callbacks():
        return [LearningRateScheduler(decay_from_epoch_one)]

    uninterrupted = make_model(Adam(0.02))
    full = uninterrupted.fit(x, y, epochs=3, callbacks=callbacks(), **fit_args)

    first = make_model(Adam(0.02))
    first.fit(x, y, epochs=2, callbacks=callbacks(), **fit_args)
    path = first.save(tmp_path / "two-epochs.npz")
    resumed = minicnn.load_model(path)
    assert resumed.optimizer.learning_rate == 0.01          # set by the callback, saved in the config
    rest = resumed.fit(x, y, epochs=3, initial_epoch=2, callbacks=callbacks(), **fit_args)
    assert rest.history["learning_rate"] == full.history["learning_rate"][2:] == [0.005]
    assert [w.tobytes() for w in resumed.get_weights()] == [w.tobytes() for w in uninterrupted.get_weights()]


def test_a_rate_reduced_on_plateau_is_saved(tmp_path):
    x, y = data()
    model = make_model(SGD(0.05))
    # patience 0 with an impossible min_delta: every epoch after the first reduces; History
    # holds each epoch's rate before its reduction
    history = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                        callbacks=[ReduceLROnPlateau(factor=0.5, patience=0, min_delta=100.0)])
    assert history.history["learning_rate"] == [0.05, 0.05, 0.025]
    assert model.optimizer.learning_rate == 0.0125
    assert minicnn.load_model(model.save(tmp_path / "m.npz")).optimizer.learning_rate == 0.0125


def test_the_progress_bar_shows_the_rate(capsys):
    pytest.importorskip("tqdm")
    x, y = data()
    make_model(SGD(ExponentialDecay(0.1, 5, 0.5))).fit(x, y, epochs=1, batch_size=8, verbose=1)
    assert "learning_rate: 0.0500" in capsys.readouterr().err


def test_keys_a_callback_adds_to_the_epoch_logs_reach_the_printed_line(capsys):
    """Keras' order (the user's callbacks, History, then the progress line): the line printed
    for an epoch once came first and missed what the others added."""
    class AddKey(minicnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["my_metric"] = 0.25 * (epoch + 1)

    rng = np.random.default_rng(0)
    model = minicnn.Sequential([minicnn.Dense(3, activation="softmax", input_shape=(4,))])
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(rng.random((20, 4)).astype(np.float32), rng.integers(0, 3, 20), epochs=2, verbose=2,
                        callbacks=[AddKey()])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert [line.endswith(f"my_metric: {value:.4f}") for line, value in zip(lines, (0.25, 0.5))] == [True, True]
    assert history.history["my_metric"] == [0.25, 0.5]
