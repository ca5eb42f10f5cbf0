"""Learning rate schedules: Keras 3's formulas by hand (and against keras where importable),
their use by every optimizer at the step Keras uses, files, and resuming exactly."""
import math

import numpy as np
import pytest

import minicnn
from minicnn import Dense, Sequential
from minicnn.optimizers import SGD, Adam, AdamW, RMSprop
from minicnn.optimizers.schedules import (
    CosineDecay,
    ExponentialDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
)

from models import small_classifier, small_classifier_data

# Values by hand from Keras 3's learning_rate_schedule.py, in float64.
EXPONENTIAL = [
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5), 0, 0.1),
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5), 5, 0.1 * 0.5 ** 0.5),
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5), 10, 0.05),
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5), 25, 0.1 * 0.5 ** 2.5),
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True), 9, 0.1),
    (ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True), 25, 0.025),
]
PIECEWISE = [(step, value) for step, value in
             [(0, 1.0), (100, 1.0), (101, 0.5), (110, 0.5), (111, 0.1), (10 ** 6, 0.1)]]
COSINE = [
    (CosineDecay(0.2, decay_steps=100), 0, 0.2),
    (CosineDecay(0.2, decay_steps=100), 50, 0.1),
    (CosineDecay(0.2, decay_steps=100), 25, 0.2 * 0.5 * (1 + math.cos(math.pi / 4))),
    (CosineDecay(0.2, decay_steps=100), 100, 0.0),
    (CosineDecay(0.2, decay_steps=100), 250, 0.0),                       # clamped at decay_steps
    (CosineDecay(0.2, decay_steps=100, alpha=0.1), 50, 0.2 * (0.9 * 0.5 + 0.1)),
    (CosineDecay(0.2, decay_steps=100, alpha=0.1), 100, 0.2 * 0.1),
    # warmup from 0.0 to 1.0 over 10 steps, then cosine from 1.0 over 20 steps
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 0, 0.0),
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 4, 0.4),
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 10, 1.0),
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 20, 0.5),
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 30, 0.0),
    (CosineDecay(0.0, decay_steps=20, warmup_target=1.0, warmup_steps=10), 99, 0.0),
    (CosineDecay(0.5, decay_steps=20, alpha=0.2, warmup_target=1.0, warmup_steps=10), 5, 0.75),
]


@pytest.mark.parametrize("schedule, step, expected", EXPONENTIAL + COSINE)
def test_schedule_values_by_hand(schedule, step, expected):
    value = schedule(step)
    assert type(value) is float
    assert value == pytest.approx(expected, rel=1e-15, abs=1e-17)


@pytest.mark.parametrize("step, expected", PIECEWISE)
def test_piecewise_constant_by_hand(step, expected):
    schedule = PiecewiseConstantDecay([100, 110], [1.0, 0.5, 0.1])
    assert schedule(step) == expected


@pytest.mark.parametrize("schedule", [s for s, _, _ in EXPONENTIAL + COSINE]
                         + [PiecewiseConstantDecay([100, 110], [1.0, 0.5, 0.1])])
def test_schedules_match_keras_where_importable(schedule):
    keras = pytest.importorskip("keras")
    theirs = getattr(keras.optimizers.schedules, type(schedule).__name__).from_config(schedule.get_config())
    for step in (0, 1, 4, 5, 10, 20, 25, 30, 50, 100, 101, 111, 250):
        # Keras computes in float32: agreement to float32 rounding
        assert schedule(step) == pytest.approx(float(theirs(step)), rel=3e-7, abs=1e-9), step


@pytest.mark.parametrize("schedule", [s for s, _, _ in EXPONENTIAL[::3] + COSINE[::4]]
                         + [PiecewiseConstantDecay([3, 7], [0.3, 0.2, 0.1], name="steps")])
def test_config_round_trip_through_the_registry(schedule):
    description = minicnn.optimizers.schedules.serialize(schedule)
    assert description["class_name"] == type(schedule).__name__
    restored = minicnn.optimizers.schedules.deserialize(description)
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    assert [restored(s) for s in range(0, 40, 3)] == [schedule(s) for s in range(0, 40, 3)]


@pytest.mark.parametrize("make, error, message", [
    (lambda: ExponentialDecay(0.1, 0, 0.5), ValueError, "decay_steps"),
    (lambda: ExponentialDecay(0.1, 10.5, 0.5), TypeError, "decay_steps"),
    (lambda: ExponentialDecay(-0.1, 10, 0.5), ValueError, "initial_learning_rate"),
    (lambda: ExponentialDecay("0.1", 10, 0.5), TypeError, "initial_learning_rate"),
    (lambda: ExponentialDecay(0.1, 10, 0.0), ValueError, "decay_rate"),
    (lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"), TypeError, "staircase"),
    (lambda: CosineDecay(0.1, 10, alpha=1.5), ValueError, "alpha"),
    (lambda: CosineDecay(0.1, 10, warmup_steps=5), ValueError, "warmup_target"),
    (lambda: CosineDecay(0.1, 10, warmup_target=float("nan"), warmup_steps=5), ValueError, "warmup_target"),
    (lambda: CosineDecay(0.1, 10, warmup_target=1.0, warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: PiecewiseConstantDecay([10, 20], [1.0, 0.5]), ValueError, "one shorter"),
    (lambda: PiecewiseConstantDecay([20, 10], [1.0, 0.5, 0.1]), ValueError, "strictly increasing"),
    (lambda: PiecewiseConstantDecay([10], [1.0, -0.5]), ValueError, "each value"),
    (lambda: PiecewiseConstantDecay(10, [1.0, 0.5]), TypeError, "lists"),
    (lambda: minicnn.optimizers.schedules.deserialize({"class_name": "os.system", "config": {}}),
     ValueError, "unknown learning rate schedule"),
])
def test_bad_schedule_arguments_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


# -- optimizers with a schedule ------------------------------------------------------------------

def one_weight_model():
    model = Sequential([Dense(1, input_shape=(1,), dtype="float64", use_bias=False)])
    model.layers[0].params["kernel"][...] = 1.0
    return model


def test_each_step_uses_the_rate_at_iterations_before_the_increment():
    # SGD without momentum: p -= lr * g with g = 1, so each step moves p by exactly schedule(t)
    schedule = PiecewiseConstantDecay([0, 2], [0.5, 0.25, 0.125])
    model = one_weight_model()
    optimizer = SGD(learning_rate=schedule)
    moves = []
    for _ in range(5):
        assert optimizer.learning_rate == schedule(optimizer.iterations)
        before = model.layers[0].params["kernel"][0, 0]
        model.layers[0].grads["kernel"] = np.ones((1, 1))
        optimizer.apply(model)
        moves.append(before - model.layers[0].params["kernel"][0, 0])
    # steps 0..4 use schedule(0..4): 0.5 (step <= 0), 0.25, 0.25, 0.125, 0.125
    assert moves == [0.5, 0.25, 0.25, 0.125, 0.125]


@pytest.mark.parametrize("make", [lambda lr: SGD(lr, momentum=0.9), lambda lr: Adam(lr),
                                  lambda lr: AdamW(lr, weight_decay=0.1), lambda lr: RMSprop(lr)])
def test_a_schedule_equals_setting_its_value_before_each_step(make):
    schedule = CosineDecay(0.05, decay_steps=6, alpha=0.1, warmup_target=0.1, warmup_steps=3)
    rng = np.random.default_rng(7)
    grads = [rng.standard_normal((3, 2)) for _ in range(12)]
    scheduled, manual = make(schedule), make(1.0)
    models = []
    for optimizer in (scheduled, manual):
        model = Sequential([Dense(2, input_shape=(3,), dtype="float64", use_bias=False,
                                  kernel_initializer=minicnn.initializers.GlorotUniform(seed=1))])
        for step, g in enumerate(grads):
            if optimizer is manual:
                optimizer.learning_rate = schedule(step)
            model.layers[0].grads["kernel"] = g
            optimizer.apply(model)
        models.append(model)
    assert models[0].get_weights()[0].tobytes() == models[1].get_weights()[0].tobytes()


def test_learning_rate_of_a_schedule_cannot_be_set_and_reads_the_current_value():
    optimizer = Adam(ExponentialDecay(0.1, 10, 0.5))
    assert optimizer.learning_rate == 0.1
    optimizer.iterations = 10
    assert optimizer.learning_rate == 0.05
    with pytest.raises(TypeError, match="schedule"):
        optimizer.learning_rate = 0.01
    assert isinstance(optimizer.learning_rate_schedule, LearningRateSchedule)


def test_a_schedule_that_returns_garbage_is_reported():
    class Broken(LearningRateSchedule):
        def __call__(self, step):
            return float("nan") if step >= 1 else 0.1

    model = one_weight_model()
    optimizer = SGD(Broken())
    model.layers[0].grads["kernel"] = np.ones((1, 1))
    optimizer.apply(model)
    with pytest.raises(ValueError, match="step 1"):
        optimizer.apply(model)


def test_a_plain_function_is_refused_as_learning_rate():
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        Adam(learning_rate=lambda: 0.1)


def test_optimizer_config_holds_the_schedule():
    optimizer = AdamW(learning_rate=CosineDecay(1e-3, 100, alpha=0.05), weight_decay=0.01)
    config = optimizer.get_config()
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    assert config["weight_decay"] == 0.01
    restored = minicnn.optimizers.deserialize(minicnn.optimizers.serialize(optimizer))
    assert type(restored) is AdamW and restored.get_config() == config
    assert restored.learning_rate_schedule == optimizer.learning_rate_schedule


# -- files: save mid-training, load, continue ----------------------------------------------------

def make_model(optimizer):
    return small_classifier(optimizer, seed=3)


def data(n=40, seed=0):
    return small_classifier_data(n, seed)


OPTIMIZERS_WITH_SCHEDULES = {
    "adamw_cosine_warmup": lambda: AdamW(CosineDecay(0.0, 8, alpha=0.1, warmup_target=0.02, warmup_steps=4),
                                         weight_decay=0.05),
    "sgd_exponential": lambda: SGD(ExponentialDecay(0.1, 3, 0.7, staircase=True), momentum=0.9),
    "adam_piecewise": lambda: Adam(PiecewiseConstantDecay([4, 9], [0.02, 0.01, 0.002])),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS_WITH_SCHEDULES))
def test_save_load_continue_is_bit_identical_to_uninterrupted(tmp_path, name):
    make_optimizer = OPTIMIZERS_WITH_SCHEDULES[name]
    x, y = data()
    uninterrupted = make_model(make_optimizer())
    full = uninterrupted.fit(x, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0)

    first = make_model(make_optimizer())
    part_one = first.fit(x, y, epochs=1, batch_size=8, validation_split=0.2, verbose=0)
    path = first.save(tmp_path / "mid.npz")
    minicnn.set_seed(12345)
    resumed = minicnn.load_model(path)
    assert resumed.optimizer.get_config() == first.optimizer.get_config()
    assert resumed.optimizer.iterations == 4
    assert resumed.optimizer.learning_rate == first.optimizer.learning_rate
    part_two = resumed.fit(x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0)

    assert [w.tobytes() for w in resumed.get_weights()] == [w.tobytes() for w in uninterrupted.get_weights()]
    assert {k: part_one.history[k] + part_two.history[k] for k in full.history} == full.history
    # History records, per epoch, the rate after its last step (32 training images, 4 steps an epoch)
    schedule = uninterrupted.optimizer.learning_rate_schedule
    assert full.history["learning_rate"] == [schedule(4), schedule(8), schedule(12)]
    assert len(set(full.history["learning_rate"])) > 1


@pytest.mark.parametrize("change, message", [
    (lambda rate: rate.update(class_name="builtins.eval"), "unknown learning rate schedule 'builtins.eval'"),
    (lambda rate: rate["config"].update(decay_steps=1.5), "decay_steps"),
    (lambda rate: rate["config"].update(alpha="0.1"), "alpha"),
    (lambda rate: rate["config"].update(evil="os.system"), "evil"),
    (lambda rate: rate.update(config=[1, 2]), "must be a mapping"),
])
def test_a_damaged_schedule_in_a_file_is_refused_clearly(tmp_path, change, message):
    from minicnn import io

    model = make_model(AdamW(CosineDecay(1e-3, 100)))
    model.fit(*data(16), epochs=1, batch_size=8, verbose=0)
    contents = io.read(model.save(tmp_path / "good.npz"))
    change(contents.header["compile"]["optimizer"]["config"]["learning_rate"])
    io.write(tmp_path / "bad.npz", contents.header, contents.arrays)
    with pytest.raises(minicnn.ModelFileError, match="compile configuration is invalid") as caught:
        minicnn.load_model(tmp_path / "bad.npz")
    assert message in str(caught.value)
    assert minicnn.load_model(tmp_path / "bad.npz", compile=False).get_weights()[0].shape == (3, 3, 1, 3)


def test_setting_the_learning_rate():
    optimizer = SGD(0.1)
    optimizer.learning_rate = 0.05
    assert optimizer.learning_rate == 0.05 and optimizer.get_config()["learning_rate"] == 0.05
    for bad, error in (("fast", TypeError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError)):
        with pytest.raises(error, match="learning_rate"):
            optimizer.learning_rate = bad
    assert optimizer.learning_rate == 0.05
    optimizer.learning_rate = ExponentialDecay(0.1, 10, 0.5)      # a float may become a schedule, as in Keras
    assert optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"
