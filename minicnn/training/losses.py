"""Cross-entropy losses with Keras' names, arguments and numerics.

Both losses are the mean over the batch of a per-sample cross-entropy between targets y and
predictions (N, C):

    from_logits=False (predictions are probabilities), Keras' recipe:
        p = y_pred / sum(y_pred)            (rows renormalised)
        p = clip(p, EPSILON, 1 - EPSILON)   (EPSILON = 1e-7, Keras' backend.epsilon())
        loss_i = -sum_j y_ij * log(p_ij)
    from_logits=True (predictions are logits z):
        loss_i = sum_j y_ij * (logsumexp(z_i) - z_ij)   max-subtracted, so +/-1e4 logits are fine

SparseCategoricalCrossentropy takes integer class labels (N,) (or (N, 1)); y is their one-hot.
CategoricalCrossentropy takes (N, C) targets (one-hot or soft).

The gradient the model backpropagates:
- the model ends in a softmax and from_logits=False (the usual case): the fused gradient with
  respect to the softmax's input, dz = (p * sum_j y_ij - y) / N, i.e. (p - onehot) / N. It is
  exact and stable for any logits; the softmax's own backward is skipped. (Clipping then only
  affects the reported value, which saturates at -log(1e-7) = 16.1 per sample: Keras, when it can
  see the logits, reports the unclipped value instead; the difference only shows for samples
  whose predicted probability of the true class is below 1e-7.)
- from_logits=True: dz = (softmax(z) * sum_j y_ij - y) / N.
- any other output with from_logits=False: the gradient of the recipe above, clip included
  (zero where the clip is active, as TensorFlow's clip_by_value).
"""
import warnings

import numpy as np

from ..errors import check_bool, check_str, quote
from ..layers.activations import ends_in_softmax, softmax
from ..registry import Registry

REGISTRY = Registry("loss")

EPSILON = 1e-7


class Loss:
    """Base class: `loss(y_true, y_pred)` is the batch mean as a Python float."""

    sparse = False

    def __init__(self, from_logits=False, name=None):
        who = type(self).__name__
        self.from_logits = check_bool(from_logits, who, "from_logits")
        self.name = check_str(name, who, "name") if name is not None else self.default_name

    # -- public, Keras-like -----------------------------------------------------------------
    def __call__(self, y_true, y_pred):
        """The batch mean loss as a Python float."""
        targets, y_pred = self._checked(y_true, y_pred)
        return self.value(targets, y_pred)

    def gradient(self, y_true, y_pred):
        """d(batch mean loss) / d(y_pred), shaped like y_pred: with respect to the logits when
        from_logits=True, to the probabilities (through Keras' clip) otherwise."""
        targets, y_pred = self._checked(y_true, y_pred)
        return self.value_and_gradient(targets, y_pred)[1]

    def _checked(self, y_true, y_pred):
        y_pred = np.asarray(y_pred)
        if y_pred.ndim != 2 or y_pred.dtype.kind != "f":
            raise ValueError(
                f"{type(self).__name__}: y_pred must be a float array (batch, classes), received "
                f"{y_pred.dtype} {y_pred.shape}"
            )
        targets = self.prepare_targets(y_true, y_pred.shape[1], y_pred.dtype, "y_true")
        if len(targets) != len(y_pred):
            raise ValueError(
                f"{type(self).__name__}: y_true has {len(targets)} samples but y_pred has {len(y_pred)}"
            )
        return targets, y_pred

    # -- what the training loop uses --------------------------------------------------------
    def prepare_targets(self, y, num_classes, dtype, argument="y"):
        """Validate all targets once (before any work) and return them in the form `value` and
        `value_and_gradient` take for a batch; raises ValueError/TypeError naming `argument`."""
        raise NotImplementedError

    def per_sample(self, targets, y_pred):
        """(N,) losses in y_pred's dtype."""
        raise NotImplementedError

    def value(self, targets, y_pred):
        """The batch mean as a Python float."""
        return float(np.mean(self.per_sample(targets, y_pred)))

    def value_and_gradient(self, targets, y_pred, fused_softmax=False):
        """(batch mean, gradient). With fused_softmax=True, y_pred is the output of the model's
        final softmax and the gradient is with respect to that softmax's INPUT (see the module
        docstring); otherwise it is with respect to y_pred. The gradient has y_pred's dtype."""
        value = self.value(targets, y_pred)
        n = y_pred.shape[0]
        if fused_softmax or self.from_logits:
            probabilities = y_pred if fused_softmax else softmax(y_pred, axis=1)
            return value, self._softmax_gradient(targets, probabilities, n)
        return value, self._clipped_probability_gradient(targets, y_pred, n)

    def fuses_softmax(self, model):
        """Whether training `model` uses the fused gradient: it ends in a softmax and the loss
        takes probabilities. Then value_and_gradient(..., fused_softmax=True) gives dL/dlogits
        and the model's backward skips its softmax (dy_is_logits_gradient=True)."""
        return not self.from_logits and ends_in_softmax(model.layers)

    def check_model_output(self, model):
        """Warn about the combinations Keras warns about; called by compile."""
        if self.from_logits and ends_in_softmax(model.layers):
            warnings.warn(
                f"{type(self).__name__}: from_logits=True but the model ends in a softmax, so its "
                f"outputs are probabilities, not logits. Was this intended?",
                UserWarning, stacklevel=4,
            )
        elif not self.from_logits and not ends_in_softmax(model.layers):
            last = model.layers[-1]
            warnings.warn(
                f"{type(self).__name__}: from_logits=False expects probabilities, but the model ends "
                f"in {last.describe()} (activation {quote(getattr(last, 'activation_name', 'none'))}), whose "
                f"outputs are not; use activation='softmax' or from_logits=True",
                UserWarning, stacklevel=4,
            )

    def get_config(self):
        return {"from_logits": self.from_logits, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"

    # -- pieces -----------------------------------------------------------------------------
    def _log_probabilities(self, y_pred):
        if self.from_logits:
            shifted = y_pred - y_pred.max(axis=1, keepdims=True)
            return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        p = y_pred / y_pred.sum(axis=1, keepdims=True)
        return np.log(np.clip(p, EPSILON, 1.0 - EPSILON))


@REGISTRY.register("sparse_categorical_crossentropy")
class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy for integer labels y (N,) in [0, classes) and predictions (N, classes)."""

    default_name = "sparse_categorical_crossentropy"
    sparse = True

    def prepare_targets(self, y, num_classes, dtype, argument="y"):
        y = _as_numeric_array(y, argument)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            hint = (" (they look one-hot: use loss='categorical_crossentropy')"
                    if y.ndim == 2 and y.shape[1] == num_classes else "")
            raise ValueError(
                f"{argument}: sparse_categorical_crossentropy expects integer class labels of shape "
                f"(N,) or (N, 1), received shape {y.shape}{hint}"
            )
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.floor(y)):
                bad = y[~np.isfinite(y) | (y != np.floor(y))][0]
                raise ValueError(
                    f"{argument}: class labels must be whole numbers in [0, {num_classes}), "
                    f"received {quote(bad)}"
                )
        if y.size:
            low, high = y.min(), y.max()
            if low < 0 or high >= num_classes:
                raise ValueError(
                    f"{argument}: class labels must lie in [0, {num_classes}) for a model with "
                    f"{num_classes} outputs, received values in [{low}, {high}]"
                )
        return y.astype(np.intp, copy=False)

    def per_sample(self, labels, y_pred):
        rows = np.arange(len(labels))
        return -self._log_probabilities(y_pred)[rows, labels]

    def value(self, labels, y_pred):
        """np.mean(per_sample(...)) with the same roundings, computed on each row's labelled
        entry only: the renormalisation, the clip and the log are elementwise, so picking first
        changes no bit, and a training step then runs a third of the NumPy calls (each ~5 us
        right after the C engine's large calls: docs/performance.md, "A training step bound
        to C"). np.mean's rounding: a pairwise sum in y_pred's dtype, divided in that dtype."""
        if self.from_logits or y_pred.dtype not in (np.float32, np.float64):
            return super().value(labels, y_pred)
        rows = np.arange(len(labels))
        p = y_pred[rows, labels] / np.add.reduce(y_pred, axis=1)
        np.maximum(p, EPSILON, out=p)              # np.clip(p, EPSILON, 1 - EPSILON), no NaN lost:
        np.minimum(p, 1.0 - EPSILON, out=p)        # maximum and minimum propagate NaN as clip does
        np.log(p, out=p)
        np.negative(p, out=p)
        return float(np.add.reduce(p) / len(labels))

    def _softmax_gradient(self, labels, probabilities, n):
        dz = probabilities.copy()
        dz[np.arange(n), labels] -= 1
        dz *= 1.0 / n
        return dz

    def _clipped_probability_gradient(self, labels, y_pred, n):
        onehot = np.zeros_like(y_pred)
        onehot[np.arange(n), labels] = 1
        return _clipped_gradient(onehot, y_pred, n)


@REGISTRY.register("categorical_crossentropy")
class CategoricalCrossentropy(Loss):
    """Cross-entropy for (N, classes) targets (one-hot or soft) and predictions (N, classes)."""

    default_name = "categorical_crossentropy"

    def prepare_targets(self, y, num_classes, dtype, argument="y"):
        y = _as_numeric_array(y, argument)
        if y.ndim != 2 or y.shape[1] != num_classes:
            hint = (" (they look like class labels: use loss='sparse_categorical_crossentropy')"
                    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1) else "")
            raise ValueError(
                f"{argument}: categorical_crossentropy expects one-hot targets of shape "
                f"(N, {num_classes}) for a model with {num_classes} outputs, received shape "
                f"{y.shape}{hint}"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{argument}: targets contain NaN or inf")
        if y.size and y.min() < 0:
            # A negative target weights a log-probability with the wrong sign: the loss is then
            # unbounded below and training pushes that class's probability towards zero forever.
            raise ValueError(f"{argument}: categorical_crossentropy targets must be >= 0 (one-hot or "
                             f"probabilities), received {quote(y.min().item())}")
        with np.errstate(over="ignore"):
            converted = y.astype(dtype, copy=False)
        if not np.all(np.isfinite(converted)):
            raise ValueError(f"{argument}: targets hold values beyond the {np.dtype(dtype).name} range "
                             f"of the model's outputs")
        return converted

    def per_sample(self, targets, y_pred):
        return -np.sum(targets * self._log_probabilities(y_pred), axis=1)

    def _softmax_gradient(self, targets, probabilities, n):
        dz = probabilities * targets.sum(axis=1, keepdims=True)
        dz -= targets
        dz *= 1.0 / n
        return dz

    def _clipped_probability_gradient(self, targets, y_pred, n):
        return _clipped_gradient(targets, y_pred, n)


def _clipped_gradient(targets, y_pred, n):
    """Gradient of mean_i -sum_j t_ij log(clip(p_ij / S_i)) with respect to p, S_i = sum_j p_ij."""
    total = y_pred.sum(axis=1, keepdims=True)
    normalised = y_pred / total
    inside = (normalised >= EPSILON) & (normalised <= 1.0 - EPSILON)
    clipped = np.clip(normalised, EPSILON, 1.0 - EPSILON)
    d_normalised = np.where(inside, -targets / (clipped * n), 0).astype(y_pred.dtype, copy=False)
    # p / S: d/dp_k = (h_k - sum_j h_j * p_j / S) / S
    return (d_normalised - np.sum(d_normalised * normalised, axis=1, keepdims=True)) / total


def _as_numeric_array(y, argument):
    try:
        array = np.asarray(y)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{argument}: expected a numeric array, could not convert {type(y).__name__}: {error}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{argument}: expected a numeric array, received dtype {array.dtype}")
    return array


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Per-sample losses (N,), Keras' function form."""
    y_pred = np.asarray(y_pred)
    loss = SparseCategoricalCrossentropy(from_logits=from_logits)
    return loss.per_sample(loss.prepare_targets(y_true, y_pred.shape[-1], y_pred.dtype, "y_true"), y_pred)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Per-sample losses (N,), Keras' function form."""
    y_pred = np.asarray(y_pred)
    loss = CategoricalCrossentropy(from_logits=from_logits)
    return loss.per_sample(loss.prepare_targets(y_true, y_pred.shape[-1], y_pred.dtype, "y_true"), y_pred)


def get(identifier):
    """A Loss from its Keras name, its class, or an instance."""
    return REGISTRY.get(identifier, Loss, "compile",
                        hint=" or an instance such as minicnn.losses.SparseCategoricalCrossentropy(from_logits=True)")


# {'class_name': ..., 'config': ...} and back; deserialize accepts only minicnn's own loss classes
serialize = REGISTRY.serialize
deserialize = REGISTRY.deserialize
