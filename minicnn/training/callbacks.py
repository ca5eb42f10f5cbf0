"""Callbacks with Keras' names and hooks, and the History that fit returns.

    class PrintEpochs(minicnn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(epoch, logs["loss"])

Hooks (all optional): on_train_begin/end(logs), on_epoch_begin/end(epoch, logs),
on_train_batch_begin/end(batch, logs) (on_batch_begin/end are the Keras 1 spellings and are
called by the defaults). `self.model` is the model being trained, `self.params` holds
{'epochs', 'steps', 'verbose'}; set `self.model.stop_training = True` to stop after the current
batch. Batch hooks cost time on every step, so fit only calls those of callbacks that override
them.
"""
import inspect
import math
import os
import sys
import time
import warnings

import numpy as np

from ..errors import NonFiniteStateError, check_bool, check_int, check_str, quote


class Callback:
    """Base class for user callbacks; every hook does nothing."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def _overrides(self, *names):
        return any(getattr(type(self), name) is not getattr(Callback, name) for name in names)


class CallbackList:
    """Calls each hook on every callback in order; batch hooks only on those that define them."""

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"fit: callbacks must be minicnn.callbacks.Callback instances, received "
                    f"{type(callback).__name__}"
                )
            callback.set_model(model)
            callback.set_params(params)
        self.batch_begin = [c for c in self.callbacks if c._overrides("on_train_batch_begin", "on_batch_begin")]
        self.batch_end = [c for c in self.callbacks if c._overrides("on_train_batch_end", "on_batch_end")]

    @property
    def wants_batch_logs(self):
        return bool(self.batch_begin or self.batch_end)

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        for callback in self.batch_begin:
            callback.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        for callback in self.batch_end:
            callback.on_train_batch_end(batch, logs)


class History(Callback):
    """What fit returns: `.history` maps each log key ('loss', 'accuracy', 'val_loss', ...) to
    its per-epoch values, `.epoch` lists the epoch indices, `.epoch_times` the wall seconds of
    each epoch (kept apart from `.history` so that two seeded runs have identical histories)."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []
        self.epoch_times = []
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        self.epoch_times.append(time.perf_counter() - self._started)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={sorted(self.history)}>"


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("minicnn: tqdm is not installed, so verbose=1 prints one line per epoch "
                      "instead of a progress bar (pip install tqdm)", RuntimeWarning, stacklevel=3)
        return None
    return tqdm


def _format_logs(logs):
    return " - ".join(f"{key}: {_format_value(key, value)}" for key, value in logs.items())


def _format_value(key, value):
    # A learning rate is often 1e-4 or less: Keras' progress bar rule (4 decimals above 1e-3,
    # else scientific) keeps it readable; other values keep 4 decimals.
    if key == "learning_rate" and abs(value) <= 1e-3:
        return f"{value:.4e}"
    return f"{value:.4f}"


class ProgressLogger(Callback):
    """What verbose=1 and verbose=2 show (fit adds it; like Keras' ProgbarLogger).

    verbose=1: one tqdm bar per epoch with ETA and the running loss and metrics. The running
    values are refreshed every `refresh_every` steps, not every step, so the bar costs the
    training loop almost nothing. verbose=2: one line per epoch when it ends.
    """

    def __init__(self, verbose=1, refresh_every=16, file=None):
        super().__init__()
        self.verbose = verbose
        self.refresh_every = refresh_every
        self.file = file
        self.shows_learning_rate = False   # fit sets it when the rate can change during training
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._started = time.perf_counter()
        if self.verbose == 1:
            tqdm = _tqdm()
            if tqdm is None:           # a declared dependency, but do not die without it
                self.verbose = 2
                return
            self._bar = tqdm(total=self.params["steps"], unit="step", file=self.file or sys.stderr,
                             desc=f"Epoch {epoch + 1}/{self.params['epochs']}", dynamic_ncols=True,
                             leave=True)

    def advance(self, steps_done, running_logs):
        """Called by fit every `refresh_every` steps (and at the end) with the running values."""
        if self._bar is not None:
            if self.shows_learning_rate:
                running_logs = {**running_logs, "learning_rate": self.model.optimizer.learning_rate}
            self._bar.set_postfix_str(_format_logs(running_logs), refresh=False)
            self._bar.update(steps_done - self._bar.n)

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.set_postfix_str(_format_logs(logs), refresh=False)
            self._bar.close()
            self._bar = None
        elif self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.params['epochs']} - {seconds:.1f}s - {_format_logs(logs)}",
                  file=self.file or sys.stdout, flush=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:   # training stopped mid-epoch
            self._bar.close()
            self._bar = None


def _number(value, who, what):
    """A real number as float; '0.1' and True are refused instead of converted."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {what} must be a number, received {quote(value)}")
    return float(value)


def _monitor_mode(monitor, mode, who):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', received {quote(mode)}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class EarlyStopping(Callback):
    """Stop when `monitor` has stopped improving (Keras' EarlyStopping).

    An epoch improves when its value beats the best so far by more than min_delta (lower for
    mode 'min', higher for 'max'; 'auto' means 'max' for accuracies). After `patience` epochs
    without improvement training stops. restore_best_weights=True puts back the weights of the
    best epoch when training ends, as Keras 3 does (also when patience never ran out); the
    optimizer state is not rewound. `baseline`: training stops unless the value beats it within
    `patience` epochs. `start_from_epoch`: epochs to wait before watching at all.
    A NaN value never improves. Keras 3 differs there (left so on purpose): it takes the first
    value as the best whatever it is, so a NaN first epoch stays the best and no later epoch
    beats it.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(_number(min_delta, "EarlyStopping", "min_delta"))
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, received {quote(patience)}")
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = _monitor_mode(monitor, mode, "EarlyStopping")
        self.baseline = None if baseline is None else _number(baseline, "EarlyStopping", "baseline")
        self.restore_best_weights = check_bool(restore_best_weights, "EarlyStopping", "restore_best_weights")
        self.start_from_epoch = check_int(start_from_epoch, "EarlyStopping", "start_from_epoch")
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(
                f"EarlyStopping: monitor '{self.monitor}' is not among the logs {sorted(logs or {})}; "
                f"give fit validation data for val_ values", RuntimeWarning, stacklevel=2,
            )
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._is_improvement(value, self.best):
            self.best = value
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model at the end of every epoch, or only when `monitor` improved.

    filepath may hold format fields: the epoch (1-based, as Keras) and any log value, e.g.
    "ckpt/model-{epoch:02d}-{val_loss:.2f}.npz". The file is written atomically (see
    minicnn.saving). save_weights_only=False writes the whole model with its optimizer state, so
    minicnn.load_model(path) continues training exactly where it stopped. An epoch that
    diverged -- its loss became NaN or inf, or the weights hold NaN or inf, which load_model
    would refuse -- is not written, so the previous checkpoint stays as it was; a
    RuntimeWarning says so.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: only save_freq='epoch' is supported, received {quote(save_freq)}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = check_bool(save_best_only, "ModelCheckpoint", "save_best_only")
        self.save_weights_only = check_bool(save_weights_only, "ModelCheckpoint", "save_weights_only")
        self.mode = _monitor_mode(monitor, mode, "ModelCheckpoint")
        if initial_value_threshold is not None:
            self.best = _number(initial_value_threshold, "ModelCheckpoint", "initial_value_threshold")
        else:
            self.best = math.inf if self.mode == "min" else -math.inf
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            raise KeyError(
                f"ModelCheckpoint: filepath {quote(self.filepath)} names {error} which is not among the "
                f"logs {sorted(logs)} of epoch {epoch + 1}"
            ) from None
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                warnings.warn(
                    f"ModelCheckpoint: can save best model only with '{self.monitor}' available, "
                    f"skipping (logs hold {sorted(logs)})", RuntimeWarning, stacklevel=2,
                )
                return
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self._warn_not_saved(epoch, path, f"its loss is {loss}")
            return
        try:
            if self.save_weights_only:
                saved = self.model.save_weights(path)
            else:
                saved = self.model.save(path)
        except NonFiniteStateError as refusal:
            # save() refuses weights load_model could not read; the last good file stays.
            self._warn_not_saved(epoch, path, f"{', '.join(refusal.names[:4])} hold NaN or inf")
            return
        self.last_saved = saved
        if self.save_best_only:
            if self.verbose > 0:
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{value:.5f}, saving model to {path}")
            self.best = value
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}")

    @staticmethod
    def _warn_not_saved(epoch, path, problem):
        """An epoch that diverged (its loss is NaN or inf, or the weights are: load_model would
        refuse them; the finite weights of an epoch whose loss became NaN are those of a run
        blowing up) is not written: the last good checkpoint is worth more."""
        warnings.warn(
            f"ModelCheckpoint: epoch {epoch + 1} not saved to {path}: {problem} (training "
            f"diverged); the previous checkpoint is kept", RuntimeWarning, stacklevel=3,
        )


class TerminateOnNaN(Callback):
    """Stop training when a batch loss is NaN or inf (Keras' TerminateOnNaN).

    minicnn's fit already stops by itself on a non-finite loss, before that batch's update
    reaches the weights; this callback exists so Keras code that lists it runs unchanged.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


def _optimizer_of(callback, who):
    optimizer = getattr(callback.model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise ValueError(f"{who}: the model has no optimizer with a learning_rate; compile it first")
    return optimizer


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the beginning of every epoch (Keras'
    LearningRateScheduler): lr = schedule(epoch, lr), epoch counted from 0 and lr the current
    rate (a schedule that takes one argument is called schedule(epoch), Keras' old form). The
    result must be a float (Python or NumPy), finite and >= 0. The optimizer's learning_rate
    must be a float, not a schedule object (setting it would be refused). The rate each epoch
    ended with is logged as 'learning_rate'; the rate set last is part of the optimizer's
    config, so it is saved with the model.
    """

    changes_learning_rate = True

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function (epoch, lr) -> lr, "
                            f"received {quote(schedule)}")
        self.schedule = schedule
        self.verbose = check_int(verbose, "LearningRateScheduler", "verbose")
        self._takes_rate = _accepts_two_arguments(schedule)

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = _optimizer_of(self, "LearningRateScheduler")
        if self._takes_rate:
            learning_rate = self.schedule(epoch, float(optimizer.learning_rate))
        else:
            learning_rate = self.schedule(epoch)
        if not isinstance(learning_rate, (float, np.floating)):
            raise ValueError(f"LearningRateScheduler: the output of the schedule function should be a "
                             f"float; epoch {epoch} gave {quote(learning_rate)} ({type(learning_rate).__name__})")
        optimizer.learning_rate = float(learning_rate)   # the optimizer checks finite and >= 0
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(learning_rate)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(_optimizer_of(self, "LearningRateScheduler").learning_rate)


def _accepts_two_arguments(function):
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):      # builtins without a signature: the (epoch, lr) form
        return True
    try:
        signature.bind(0, 0.0)
    except TypeError:
        return False
    return True


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has stopped improving (Keras'
    ReduceLROnPlateau, the same logic step for step).

    At each epoch end: while in cooldown the cooldown counter counts down and `wait` stays 0.
    A value better than the best so far by more than min_delta (lower for mode 'min', higher
    for 'max'; 'auto' is 'max' when the name contains 'acc') becomes the best and resets
    `wait`. Otherwise, outside cooldown, `wait` grows; when it reaches `patience` and the rate
    is above min_lr, the rate becomes max(rate * factor, min_lr), the cooldown starts
    (`cooldown` epochs) and `wait` restarts. The optimizer's learning_rate must be a float, not
    a schedule object. The rate is logged as 'learning_rate' (before any reduction, as Keras);
    the reduced rate is part of the optimizer's config, so a saved model keeps it. One step
    differs: a NaN value never improves, where Keras 3 takes a NaN first value as the best
    (EarlyStopping's note).
    """

    changes_learning_rate = True

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        who = "ReduceLROnPlateau"
        self.monitor = check_str(monitor, who, "monitor")
        self.factor = _number(factor, who, "factor")
        if not 0.0 <= self.factor < 1.0:
            raise ValueError(f"{who}: factor must be in [0, 1) (new_lr = lr * factor), received {quote(factor)}")
        self.patience = check_int(patience, who, "patience")
        self.verbose = check_int(verbose, who, "verbose")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{who}: mode must be 'auto', 'min' or 'max', received {quote(mode)}")
        self.mode = mode
        self.min_delta = _number(min_delta, who, "min_delta")
        self.cooldown = check_int(cooldown, who, "cooldown")
        self.min_lr = _number(min_lr, who, "min_lr")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0) or not math.isfinite(self.min_delta):
            raise ValueError(f"{who}: min_lr must be finite and >= 0 and min_delta finite, received "
                             f"min_lr={quote(min_lr)}, min_delta={quote(min_delta)}")
        self._reset()

    def _reset(self):
        # Keras: 'auto' means 'max' only when the monitored name contains "acc"
        self._maximize = self.mode == "max" or (self.mode == "auto" and "acc" in self.monitor)
        self.best = -math.inf if self._maximize else math.inf
        self.cooldown_counter = 0
        self.wait = 0

    def _improves(self, current):
        if self._maximize:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = _optimizer_of(self, "ReduceLROnPlateau")
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"ReduceLROnPlateau: learning rate reduction is conditioned on '{self.monitor}', which is "
                f"not among the logs {sorted(logs)}; give fit validation data for val_ values",
                RuntimeWarning, stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improves(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(optimizer.learning_rate)
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
