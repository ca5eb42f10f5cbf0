"""The Trainer: compile, fit, evaluate, predict and the training loop, for any model that has
layers, forward and backward (Keras' Model inherits its Trainer the same way; cs231n calls it
the Solver). Sequential inherits it; the trainer knows nothing else about the model.

One training step:

    y_pred = forward(x_batch, training=True)
    loss, dy = loss.value_and_gradient(...)     fused softmax + cross-entropy when the model
                                                ends in a softmax: dy = (p - onehot) / N
    backward(dy, need_input_gradient=False, dy_is_logits_gradient=fused)
    optimizer.apply(model)                      params updated in place from grads

In fit, a model of layers the engine can bind runs the same step through a training plan
(training_plan.py): the same C calls with the same arguments, prepared once per batch shape.
"""
import copy
import math
import warnings
import weakref

import numpy as np

from .. import kernels, seeding
from ..errors import check_int, quote, shorten
from ..layers.regularization import RandomLayer
from . import callbacks as callbacks_module
from . import data, losses, metrics as metrics_module, optimizers, training_plan


# Inference runs in chunks whose largest activation is about this size (see _inference_forward):
# 28x28x32 float32 activations of 320 images. 8 MiB was best when every convolution also wrote
# its chunk's padded copy; since inference keeps none (csrc/tmpl_conv.h pads ~1 MiB at a time),
# 32 MiB is 1.02-1.25x faster than 8 on every bench_train architecture, 64 no better
# (docs/performance.md, "Inference without the padded copy").
INFERENCE_CHUNK_BYTES = 32 * 2**20
MIN_INFERENCE_CHUNK = 8


class Trainer:
    """compile / fit / evaluate / predict for a model with `layers`, `forward`, `backward`,
    `build`, `built`, `input_shape`, `output_shape`, `dtype` and `get_weights`."""

    def __init__(self):
        self.optimizer = None
        self.loss = None
        self.compiled_metrics = []
        self.stop_training = False
        self.history = None
        # Shuffling: one seed drawn from minicnn's generator at the first shuffled epoch, then
        # epoch k of this model's life uses permutation(seed, k). Both travel in model files, so
        # a resumed run shuffles exactly as an uninterrupted one would.
        self._shuffle_seed = None
        self._epochs_seen = 0

    # -- training, Keras' way ---------------------------------------------------------------
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose how fit trains: optimizer ('adam', 'sgd', 'rmsprop' or an instance), loss
        ('sparse_categorical_crossentropy', 'categorical_crossentropy' or an instance) and
        metrics (['accuracy'], chosen to fit the loss as Keras does). Compiling again starts a
        fresh optimizer state unless the same optimizer instance is passed."""
        if loss is None:
            raise ValueError(
                f"Sequential '{shorten(self.name)}': compile needs a loss, e.g. "
                f"loss='sparse_categorical_crossentropy'"
            )
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, (str, metrics_module.Metric)):
            metrics = [metrics]
        self.compiled_metrics = [metrics_module.get(m, self.loss) for m in metrics]
        names = [m.name for m in self.compiled_metrics]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"Sequential '{shorten(self.name)}': metric names must be unique and not 'loss', received {names}")
        if self.layers:
            self.loss.check_model_output(self)

    @property
    def compiled(self):
        return self.loss is not None

    @property
    def metrics_names(self):
        """['loss', 'accuracy', ...]: the order of evaluate's list."""
        return ["loss"] + [m.name for m in self.compiled_metrics]

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            validation_batch_size=None):
        """Train for `epochs` passes over (x, y); returns a History (`.history`, `.epoch`).

        x: (N, H, W, C) images of any real dtype, converted to the model's dtype one batch at a
        time (no scaling). y: integer labels (N,) for sparse_categorical_crossentropy, one-hot
        (N, classes) for categorical_crossentropy. Everything is checked before the first step.
        validation_split takes the LAST fraction of x and y (before shuffling), as Keras;
        validation_data=(x_val, y_val) takes precedence over it.
        shuffle=True: a new order every epoch, drawn from minicnn's generator (set_seed). The
        model draws one seed at its first shuffled epoch and derives epoch k's order from
        (seed, k), so fit(epochs=1) twice equals fit(epochs=2), and a saved model continues with
        the order an uninterrupted run would have used.
        verbose: 0 silent, 1 (or 'auto') a progress bar per epoch, 2 one line per epoch.
        History and the progress show 'learning_rate' (the rate after the epoch's last step:
        the rate the next step would use) when the optimizer's rate is a schedule or a callback
        such as LearningRateScheduler or ReduceLROnPlateau changes it.
        A batch whose loss is NaN or inf stops training before its update reaches the weights,
        with a RuntimeWarning that also says when an earlier update had already overflowed
        (non-finite weights behind a finite loss); ModelCheckpoint skips such an epoch.
        """
        who = "fit"
        self._require_compiled(who)
        batch_size, validation_batch_size, verbose, validation_split = data.check_fit_arguments(
            batch_size, validation_batch_size, verbose, epochs, initial_epoch, shuffle,
            validation_split, callbacks, who)
        x, targets = self._check_data(x, y, who)
        x_val = targets_val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(
                    f"{who}: validation_data must be a tuple (x_val, y_val), received "
                    f"{type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
                )
            x_val, targets_val = self._check_data(*validation_data, who, "validation_data[0]", "validation_data[1]")
        elif validation_split > 0:
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))
            if split_at == 0 or split_at == len(x):
                raise ValueError(
                    f"{who}: validation_split={validation_split} of {len(x)} samples leaves "
                    f"{split_at} for training and {len(x) - split_at} for validation; both need at least one"
                )
            x, x_val = x[:split_at], x[split_at:]
            targets, targets_val = targets[:split_at], targets[split_at:]

        steps = -(-len(x) // batch_size)
        progress = callbacks_module.ProgressLogger(verbose) if verbose else None
        history = callbacks_module.History()
        # Keras' order: the user's callbacks, then History, then the progress line, which so
        # shows what the others added to an epoch's logs
        callback_list = callbacks_module.CallbackList(
            list(callbacks or []) + [history] + ([progress] if progress else []),
            self, {"epochs": int(epochs), "steps": steps, "verbose": verbose},
        )
        self.history = history
        self.stop_training = False
        self.optimizer.build(self)
        # The rate is logged (History, progress) when it can change: a schedule, or a callback
        # that sets it (Keras 3 logs it in those callbacks only; a constant rate is not logged).
        log_learning_rate = (self.optimizer.learning_rate_schedule is not None
                             or any(getattr(c, "changes_learning_rate", False) for c in callbacks or []))
        if progress is not None:
            progress.shows_learning_rate = log_learning_rate
        callback_list.on_train_begin()
        logs = {}
        # the training step bound to the engine once, for this fit only (training_plan.py)
        plans = training_plan.FitPlans(self)
        try:
            for epoch in range(int(initial_epoch), int(epochs)):
                callback_list.on_epoch_begin(epoch)
                order = self._epoch_order(len(x)) if shuffle else None
                self._epochs_seen += 1
                logs = self._train_epoch(x, targets, order, batch_size, epoch, callback_list, progress, plans)
                if x_val is not None:
                    val_logs = self._evaluate_arrays(x_val, targets_val, validation_batch_size)
                    logs.update({"val_" + key: value for key, value in val_logs.items()})
                if log_learning_rate:
                    logs["learning_rate"] = self.optimizer.learning_rate
                callback_list.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
        finally:
            plans.close()
        callback_list.on_train_end(logs)
        return history

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """Loss and metrics over (x, y), computed in batches with training=False.

        Returns the loss alone when no metrics were compiled, else [loss, metric, ...] in
        `metrics_names` order (a dict with return_dict=True), as Keras."""
        who = "evaluate"
        self._require_compiled(who)
        batch_size = data.check_batch_size(batch_size, who)
        verbose = data.check_verbose(verbose, who)
        x, targets = self._check_data(x, y, who)
        results = self._evaluate_arrays(x, targets, batch_size, verbose)
        return self._format_results(results, return_dict)

    def predict(self, x, batch_size=None, verbose="auto"):
        """Model outputs for x (probabilities (N, classes) for a softmax model), computed
        batch_size images at a time with training=False, so memory stays bounded for any N:
        only the (N, classes) result grows with N."""
        who = "predict"
        batch_size = data.check_batch_size(batch_size, who)
        verbose = data.check_verbose(verbose, who)
        x = self._check_inputs(x, who)
        n = len(x)
        outputs = None
        bar = _progress_bar(-(-n // batch_size), "predict", verbose)
        for start in range(0, n, batch_size):
            y = self._inference_forward(data.batch(x, slice(start, start + batch_size), self.dtype))
            if len(y) == n and bar is None and y.flags.owndata:
                return y        # one batch that made a new array (not a view of x): no copy
            if outputs is None:
                outputs = np.empty((n,) + y.shape[1:], dtype=y.dtype)
            outputs[start:start + len(y)] = y
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return outputs

    def predict_on_batch(self, x):
        """Model outputs for one batch, no batching."""
        x = self._check_inputs(x, "predict_on_batch")
        return self._inference_forward(data.batch(x, slice(None), self.dtype))

    def train_on_batch(self, x, y, return_dict=False):
        """One training step on exactly this batch; returns its loss (and metrics)."""
        who = "train_on_batch"
        self._require_compiled(who)
        x, targets = self._check_data(x, y, who)
        self.optimizer.build(self)
        for metric in self.compiled_metrics:
            metric.reset()
        loss_value, y_pred = self._train_step(data.batch(x, slice(None), self.dtype), targets,
                                              self.loss.fuses_softmax(self))
        for metric in self.compiled_metrics:
            metric.update(targets, y_pred)
        results = {"loss": loss_value, **{m.name: m.result() for m in self.compiled_metrics}}
        return self._format_results(results, return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        """Loss (and metrics) of one batch with training=False; no update."""
        who = "test_on_batch"
        self._require_compiled(who)
        x, targets = self._check_data(x, y, who)
        results = self._evaluate_arrays(x, targets, len(x))
        return self._format_results(results, return_dict)


    def get_training_state(self):
        """What fit needs besides weights and optimizer to continue exactly where it stopped:
        {'shuffle_seed': int or None, 'epochs_seen': int,
         'layer_generators': {layer name: position} of the random layers (Dropout, RandomFlip,
             RandomTranslation) with a seed= of their own,
         'minicnn_generator': the position of minicnn's generator (set_seed's) when a random
             layer draws from it, else None}.
        The positions are seeding.generator_state dicts, plain JSON."""
        random = [layer for layer in self.layers if isinstance(layer, RandomLayer)]
        return {"shuffle_seed": self._shuffle_seed, "epochs_seen": self._epochs_seen,
                "layer_generators": {layer.name: layer.get_generator_state()
                                     for layer in random if layer.seed is not None},
                "minicnn_generator": (seeding.generator_state(seeding.generator())
                                      if any(layer.seed is None for layer in random) else None)}

    def set_training_state(self, state):
        """Inverse of get_training_state; every value is checked before any is set. The two
        generator entries may be missing (files from before they were kept: the random layers
        then draw on from where their generators are). Restoring 'minicnn_generator' moves
        minicnn's generator itself, so that the random layers drawing from it continue as in
        one run."""
        who = "set_training_state"
        seed = state.get("shuffle_seed")
        if seed is not None:
            seed = check_int(seed, who, "shuffle_seed")
        epochs = check_int(state.get("epochs_seen"), who, "epochs_seen")
        layer_generators = state.get("layer_generators") or {}
        own = {layer.name: layer for layer in self.layers if isinstance(layer, RandomLayer) and layer.seed is not None}
        if not isinstance(layer_generators, dict) or not set(layer_generators) <= set(own):
            raise ValueError(f"{who}: layer_generators must name random layers with a seed of this model "
                             f"({sorted(own)}), received {quote(layer_generators)}")
        shared = state.get("minicnn_generator")
        for saved in list(layer_generators.values()) + ([shared] if shared is not None else []):
            seeding.restore_generator(np.random.default_rng(), saved, who)   # checked, nothing set yet
        self._shuffle_seed, self._epochs_seen = seed, epochs
        for name, saved in layer_generators.items():
            own[name].set_generator_state(saved)
        if shared is not None:
            seeding.restore_generator(seeding.generator(), shared, who)


    # -- the training machinery -------------------------------------------------------------
    def _require_compiled(self, who):
        if not self.compiled:
            raise RuntimeError(
                f"Sequential '{shorten(self.name)}': {who} needs a compiled model; call "
                f"model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])"
            )

    def _check_inputs(self, x, who, argument="x"):
        """Validate x once (dtype, shape, empty, NaN/inf); builds the model from x if needed."""
        if not self.layers:
            raise ValueError(f"Sequential '{shorten(self.name)}': {who} on a model with no layers")
        x = data.as_input_array(x, who, argument)
        if not self.built:
            self.build((None,) + x.shape[1:])
        data.check_input_shape(x, self.input_shape, who, argument)
        data.check_finite(x, self.dtype, who, argument)
        return x

    def _check_data(self, x, y, who, x_name="x", y_name="y"):
        """(x, prepared targets), both checked before any work is done."""
        x = self._check_inputs(x, who, x_name)
        if y is None:
            raise ValueError(f"{who}: {y_name} is required, received None")
        if len(self.output_shape) != 1:
            raise ValueError(
                f"{who}: {type(self.loss).__name__} needs a model whose output is (batch, classes), "
                f"but this model outputs (batch, {', '.join(map(str, self.output_shape))}); add Flatten and Dense"
            )
        try:
            targets = self.loss.prepare_targets(y, self.output_shape[0], self.dtype, y_name)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{who}: {error}") from None
        data.check_same_length(x, targets, who, x_name, y_name)
        return x, targets

    def _epoch_order(self, n):
        if self._shuffle_seed is None:
            self._shuffle_seed = int(seeding.generator().integers(2 ** 63))
        return np.random.default_rng([self._shuffle_seed, self._epochs_seen]).permutation(n)

    def _train_step(self, x_batch, targets, fused, plans=None):
        """forward, loss, backward, update. A non-finite loss skips backward and update.
        plans (fit's training_plan.FitPlans): the step bound to the engine when it can be."""
        kernels.adapt_threads_to_load()
        if plans is not None:
            planned = plans.step(x_batch, targets, fused)
            if planned is not None:
                return planned
        y_pred = self.forward(x_batch, training=True)
        loss_value, dy = self.loss.value_and_gradient(targets, y_pred, fused)
        if math.isfinite(loss_value):
            self.backward(dy, need_input_gradient=False, dy_is_logits_gradient=fused)
            self.optimizer.apply(self)
        return loss_value, y_pred

    def _train_epoch(self, x, targets, order, batch_size, epoch, callback_list, progress, plans=None):
        """One pass over x in batches; returns the epoch's logs (batch-size weighted means)."""
        n = len(x)
        dtype = self.dtype
        fused = self.loss.fuses_softmax(self)
        metrics = self.compiled_metrics
        for metric in metrics:
            metric.reset()
        batch_hooks = callback_list.wants_batch_logs
        refresh_every = progress.refresh_every if progress is not None else 0
        loss_sum = 0.0
        seen = 0

        def running_logs():
            return {"loss": loss_sum / seen, **{m.name: m.result() for m in metrics}}

        for step, start in enumerate(range(0, n, batch_size)):
            index = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
            if batch_hooks:
                callback_list.on_train_batch_begin(step, {})
            batch_targets = targets[index]
            loss_value, y_pred = self._train_step(data.batch(x, index, dtype), batch_targets, fused, plans)
            count = len(batch_targets)
            loss_sum += loss_value * count
            seen += count
            for metric in metrics:
                metric.update(batch_targets, y_pred)
            if not math.isfinite(loss_value):
                # The loss is checked every step, the weights only now: an update that overflowed
                # (a huge gradient times the learning rate) leaves non-finite weights behind a
                # still-finite loss, and the message must not claim otherwise.
                if all(np.isfinite(w).all() for w in self.get_weights()):
                    state = "so the weights are the last finite ones"
                else:
                    state = ("but an earlier update already overflowed: the weights hold NaN or inf; "
                             "reload the last checkpoint (ModelCheckpoint never saves such weights)")
                warnings.warn(
                    f"fit: the loss became {loss_value} in epoch {epoch + 1}, batch {step}; training "
                    f"stopped before that batch's update, {state}. "
                    f"Lower the learning rate or check the data.", RuntimeWarning, stacklevel=3,
                )
                self.stop_training = True
            if batch_hooks:
                callback_list.on_train_batch_end(step, running_logs())
            if refresh_every and (step + 1) % refresh_every == 0:
                progress.advance(step + 1, running_logs())
            if self.stop_training:
                break
        logs = running_logs()
        if progress is not None:
            progress.advance(step + 1, logs)
        return logs

    def _inference_forward(self, x_batch):
        """forward(x_batch, training=False), computed a cache-sized chunk of images at a time.

        With training=False every layer treats each image on its own (batch normalisation uses
        its moving statistics, dropout and augmentation pass through), so the chunks give the
        same numbers as one call; what changes is where the activations live. predict's
        batch_size bounds memory, but a batch of 1000 28x28 images makes a 100 MB first
        activation that streams through main memory layer after layer, while chunks of
        INFERENCE_CHUNK_BYTES stay in the caches: 1.6-1.9x faster at batch 1000 here
        (docs/performance.md, "Inference")."""
        kernels.adapt_threads_to_load()
        n = len(x_batch)
        if n <= MIN_INFERENCE_CHUNK:
            plan = self._inference_plan(x_batch)
            return self.forward(x_batch, training=False) if plan is None else plan.run(x_batch)
        # An unbuilt model learns its shapes from the first chunk.
        done = min(n, self._inference_chunk_images() if self.built else MIN_INFERENCE_CHUNK)
        first = self.forward(x_batch[:done], training=False)
        if done == n:
            return first
        y = np.empty((n,) + first.shape[1:], dtype=first.dtype)
        y[:done] = first
        chunk = self._inference_chunk_images()
        for start in range(done, n, chunk):
            y[start:start + chunk] = self.forward(x_batch[start:start + chunk], training=False)
        return y

    def _inference_plan(self, x_batch):
        """The inference plan for batches shaped like x_batch, or None (the layers then run one
        by one): see _CachedPlan."""
        if not self.built:
            return None
        try:
            plans = _inference_plans.get(self)
        except TypeError:   # a subclass that defines __eq__ without __hash__: no cache for it
            return None
        if plans is None:
            plans = _inference_plans[self] = {}
        key = (x_batch.shape, x_batch.dtype)
        cached = plans.get(key)
        if cached is None or not cached.current(self.layers):
            if len(plans) >= _PLANS_PER_MODEL:
                plans.clear()
            cached = plans[key] = _CachedPlan(self.layers, x_batch.shape, x_batch.dtype)
        return cached.plan

    def _inference_chunk_images(self):
        """Images per inference chunk: the largest activation of one chunk stays near
        INFERENCE_CHUNK_BYTES, and a chunk has at least MIN_INFERENCE_CHUNK images (the engine
        splits a batch between its threads)."""
        shapes = [self.input_shape] + [layer.output_shape for layer in self.layers]
        largest = max(math.prod(shape) for shape in shapes if shape) * np.dtype(self.dtype).itemsize
        return max(MIN_INFERENCE_CHUNK, INFERENCE_CHUNK_BYTES // max(largest, 1))

    def _evaluate_arrays(self, x, targets, batch_size, verbose=0):
        """{'loss': ..., metric: ...} over checked arrays, in batches, training=False."""
        # copies of the compiled metrics, reset: a subclass's own arguments (a k) come along
        metrics = [copy.deepcopy(m) for m in self.compiled_metrics]
        for metric in metrics:
            metric.reset()
        loss_sum = 0.0
        bar = _progress_bar(-(-len(x) // batch_size), "evaluate", verbose)
        for start in range(0, len(x), batch_size):
            index = slice(start, start + batch_size)
            batch_targets = targets[index]
            y_pred = self._inference_forward(data.batch(x, index, self.dtype))
            loss_sum += self.loss.value(batch_targets, y_pred) * len(batch_targets)
            for metric in metrics:
                metric.update(batch_targets, y_pred)
            if bar is not None:
                bar.update(1)
        results = {"loss": loss_sum / len(x), **{m.name: m.result() for m in metrics}}
        if bar is not None:
            bar.set_postfix_str(callbacks_module._format_logs(results))
            bar.close()
        elif verbose == 2:
            print(callbacks_module._format_logs(results))
        return results

    def _format_results(self, results, return_dict):
        if return_dict:
            return dict(results)
        values = [results[name] for name in self.metrics_names]
        return values[0] if len(values) == 1 else values


# Small batches (one image above all) run through an inference plan: the whole forward bound to
# the engine once, instead of each layer's checks and pointer conversions on every call, which
# cost a single image as much time as its C work (minicnn/kernels/c_engine.py, "inference
# plans"; docs/performance.md, "Single-image prediction"). Each model keeps its plans here, by
# batch shape and dtype; weakly, so a dropped model drops them, and outside the model, so that
# copying or pickling a model never meets a C pointer.
_inference_plans = weakref.WeakKeyDictionary()
_PLANS_PER_MODEL = 16


class _CachedPlan:
    """A model's plan (None: the layers cannot be planned on this engine) with what it was made
    from. It is used only while it is current: the same engine, the same layers with the same
    settings (Layer._settings_version: bn.epsilon = 1e-2 is copied into the plan's calls), and
    every weight array the same object. Writes into the weights (set_weights, load_weights,
    optimizer steps, the moving statistics) need nothing, the plan reads the arrays themselves;
    an array replaced by another, a layer added, removed or given a new setting, or set_backend
    make a new plan. The threads,
    the SIMD level and the algorithm are C's to read at every call (the plan asks C for the
    workspace each time), so they never make a plan stale."""

    __slots__ = ("plan", "engine", "layers", "settings", "weights")

    def __init__(self, layers, x_shape, dtype):
        self.engine = kernels.get_backend()
        self.layers = tuple(layers)
        self.settings = [layer._settings_version for layer in self.layers]
        self.weights = [(layer, kind, key, array) for layer in self.layers
                        for kind in ("params", "state") for key, array in getattr(layer, kind).items()]
        ops = []
        for layer in self.layers:
            layer_ops = _own_inference_ops(layer)
            if layer_ops is None:
                self.plan = None
                return
            ops.extend(layer_ops)
        self.plan = kernels.inference_plan(ops, x_shape, dtype)

    def current(self, layers):
        if self.engine != kernels.get_backend() or self.layers != tuple(layers) \
                or self.settings != [layer._settings_version for layer in self.layers]:
            return False
        for layer, kind, key, array in self.weights:
            if getattr(layer, kind).get(key) is not array:
                return False
        return True


def _own_inference_ops(layer):
    """layer.inference_ops(), or None when a subclass overrides the forward that those ops
    describe (it computes something else: only the general path runs it)."""
    mro = type(layer).__mro__
    describer = next(cls for cls in mro if "inference_ops" in vars(cls))
    if any({"forward", "_forward", "forward_with_relu"} & vars(cls).keys() for cls in mro[:mro.index(describer)]):
        return None
    return layer.inference_ops()


def _progress_bar(total, description, verbose):
    """A tqdm bar for evaluate/predict when verbose == 1, else None."""
    tqdm = callbacks_module._tqdm() if verbose == 1 else None
    return None if tqdm is None else tqdm(total=total, desc=description, unit="step", dynamic_ncols=True)

