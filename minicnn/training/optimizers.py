"""Optimizers with Keras' names, defaults and update rules.

An optimizer walks a model's trainable layers and updates each `layer.params[key]` IN PLACE
from `layer.grads[key]`; layers know nothing of training. Its state (Adam's m and v, SGD's
velocity) is kept per parameter, keyed by (layer name, param key), so it can be saved with the
model and training can resume exactly where it stopped.

Every update works on preallocated arrays: the state arrays are made once, and one scratch
buffer per dtype (as large as the largest parameter) holds the temporaries, so a step allocates
no parameter-sized memory. Adam and SGD run through the kernel face
(kernels.optimizer_adam_update / optimizer_sgd_update: one pass in C on the C engine, a fixed
sequence of NumPy ufuncs on the NumPy engine, both with the same roundings); RMSprop is NumPy
ufuncs. The same seed gives bit-identical parameters.

    opt = Adam(learning_rate=1e-3)
    opt.apply(model)              # one step from the grads the last backward left in the layers
    state = opt.get_state()       # {'iterations': ..., 'slots': {(layer, key, slot): array}}

learning_rate is a float or a schedule (minicnn.optimizers.schedules, Keras' classes). A
schedule is evaluated once per step at `iterations` before that step's increment, as Keras
does; `opt.learning_rate` reads the rate the NEXT step will use (a float either way), and
setting it replaces a float rate (what LearningRateScheduler and ReduceLROnPlateau do) but is
refused while the rate is a schedule, as in Keras. get_config() holds the current float rate or
the schedule's description, so a saved model resumes with the same rates.
"""
import math

import numpy as np

from .. import kernels
from ..errors import check_bool, check_int, check_str, quote, shorten
from ..registry import Registry
from . import schedules

REGISTRY = Registry("optimizer")


class Optimizer:
    """Base class. Subclasses name their per-parameter state in `slot_names` and implement
    `_update(param, grad, slots, scratch, coefficients)` for one parameter, where
    `coefficients` is what `_step_coefficients()` returned once for the whole step."""

    slot_names = ()
    _model_id = None   # id() of the model the optimizer was built (or last re-bound) for
    _slot_keys = None  # the (layer name, key) the state is kept under, in _variables' order

    def __init__(self, learning_rate=0.001, name=None):
        who = type(self).__name__
        self.name = check_str(name, who, "name") if name is not None else who.lower()
        self.iterations = 0          # steps taken; Keras' optimizer.iterations
        self._schedule = None        # a LearningRateSchedule, or None for a float rate
        self._learning_rate = None   # the float rate when there is no schedule
        self.learning_rate = learning_rate
        self._variables = None       # [(layer, key)] in update order, once built
        self._slots = {}             # (layer name, key) -> {slot name: array}
        self._scratch = {}           # dtype -> 1-D buffer as large as the largest param

    # -- binding to a model -----------------------------------------------------------------
    def build(self, model):
        """Create zeroed state for every trainable parameter of `model` (done by the first
        `apply` too). A built optimizer refuses a model whose parameters differ; one whose
        parameters have the same names and shapes (the same model with its layers replaced, or
        another model sharing this optimizer) takes its place, with the same state."""
        variables = _trainable_variables(model)
        if self._variables is not None:
            if _signature(variables) != _signature(self._variables):
                changed = ("the model now has" if id(model) == self._model_id
                           else f"model '{shorten(getattr(model, 'name', '?'))}', another model, has")
                raise ValueError(
                    f"{type(self).__name__}: this optimizer was built for parameters "
                    f"{_describe(self._variables)} but {changed} {_describe(variables)}; "
                    f"compile each model, and a changed model again, with a new optimizer"
                )
            self._variables = variables   # same names and shapes: follow the current layers
            self._model_id = id(model)
            self._follow_renamed_layers()
            return
        slots = {}
        for layer, key in variables:
            param = layer.params[key]
            slots[(layer.name, key)] = {name: np.zeros_like(param) for name in self.slot_names}
            size = self._scratch.get(param.dtype, np.empty(0, param.dtype)).size
            if param.size > size:
                self._scratch[param.dtype] = np.empty(param.size, dtype=param.dtype)
        self._slots = slots
        self._slot_keys = list(slots)   # the (layer name, key) of each variable, in order
        self._variables = variables
        self._model_id = id(model)

    def _follow_renamed_layers(self):
        """The state is keyed by layer name (get_state, model files); a layer renamed since the
        build keeps its own state under its new name (two layers that swap names swap keys,
        not moments). Cheap when nothing changed: one list of names per step."""
        names = [(layer.name, key) for layer, key in self._variables]
        if names == self._slot_keys:
            return
        if self._slot_keys is None:   # built before the keys were kept (an older pickle)
            self._slot_keys = list(self._slots)
            if names == self._slot_keys:
                return
        if len(set(names)) != len(names):
            twice = next(name for index, (name, key) in enumerate(names) if (name, key) in names[:index])
            raise ValueError(f"{type(self).__name__}: two layers are named {quote(twice)}; layer names "
                             f"must be unique (the optimizer state is kept by name)")
        self._slots = {new: self._slots[old] for new, old in zip(names, self._slot_keys)}
        self._slot_keys = names

    @property
    def built(self):
        return self._variables is not None

    # -- the learning rate ------------------------------------------------------------------
    @property
    def learning_rate(self):
        """The rate the next step uses: the float, or the schedule's value at `iterations`."""
        if self._schedule is None:
            return self._learning_rate
        return self._scheduled_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        who = type(self).__name__
        if isinstance(value, schedules.LearningRateSchedule):
            self._schedule, self._learning_rate = value, None
            return
        if self._schedule is not None:
            raise TypeError(
                f"{who}: this optimizer's learning_rate is a schedule ({type(self._schedule).__name__}), "
                f"so it cannot be set to {quote(value)}; create the optimizer with a float learning_rate "
                f"to change its rate during training (LearningRateScheduler, ReduceLROnPlateau)"
            )
        if callable(value):
            raise TypeError(f"{who}: learning_rate must be a float or a minicnn.optimizers.schedules."
                            f"LearningRateSchedule, received the callable {quote(value)}")
        self._learning_rate = _learning_rate(value, who)

    @property
    def learning_rate_schedule(self):
        """The schedule the rate comes from, or None for a float rate."""
        return self._schedule

    def _scheduled_rate(self):
        rate = self._schedule(self.iterations)
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)) \
                or not math.isfinite(rate) or rate < 0:
            raise ValueError(
                f"{type(self).__name__}: the learning rate schedule {type(self._schedule).__name__} gave "
                f"{quote(rate)} at step {self.iterations}; expected a finite number >= 0"
            )
        return float(rate)

    # -- the step ---------------------------------------------------------------------------
    def apply(self, model):
        """One update of every trainable parameter from the gradients its layer holds now."""
        coefficients = self.begin_step(model)
        for layer, key in self._variables:
            if not layer.trainable:
                # frozen during a fit (a callback): its backward made no gradient, and the last
                # one it holds is stale. Keras leaves it as it is; a new fit asks for compile.
                continue
            param = layer.params[key]
            grad = layer.grads[key]
            if grad is None:
                raise RuntimeError(
                    f"{type(self).__name__}: {layer.describe()} has no gradient for '{key}'; "
                    f"run a forward with training=True and a backward first"
                )
            scratch = self._scratch[param.dtype]   # keyed by the dtype object: .name is slow
            # A view on the front of the shared buffer, shaped like the parameter: no allocation.
            self._update(param, grad, self._slots[(layer.name, key)],
                         scratch[:param.size].reshape(param.shape), coefficients)

    def begin_step(self, model):
        """Start one update: build for `model` if needed, take this step's learning rate and
        count the step; returns what `_update` needs for every parameter of it (apply's first
        half; fit's training plans run the second half in C)."""
        if self._variables is None or id(model) != self._model_id:
            # another model sharing this optimizer: update its parameters, not the last ones
            self.build(model)
        else:
            self._follow_renamed_layers()
        # Keras' order: the rate of this step comes from iterations before the increment.
        learning_rate = self._learning_rate if self._schedule is None else self._scheduled_rate()
        self.iterations += 1
        return self._step_coefficients(learning_rate)

    def _step_coefficients(self, learning_rate):
        """What `_update` needs for every parameter of this step, computed once (iterations has
        already been incremented: it is the step's 1-based t)."""
        return learning_rate

    def _update(self, param, grad, slots, scratch, coefficients):
        raise NotImplementedError

    # -- saving -----------------------------------------------------------------------------
    def get_config(self):
        rate = self._learning_rate if self._schedule is None else schedules.serialize(self._schedule)
        return {"name": self.name, "learning_rate": rate}

    @classmethod
    def from_config(cls, config):
        """Inverse of get_config; a learning_rate given as {'class_name', 'config'} is rebuilt
        from minicnn's registered schedules only."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"])
        return cls(**config)

    def get_state(self):
        """{'iterations': int, 'slots': {(layer name, param key, slot name): array}} (copies)."""
        if self._variables is not None:
            self._follow_renamed_layers()
        return {
            "iterations": self.iterations,
            "slots": {(layer, key, slot): array.copy()
                      for (layer, key), named in self._slots.items() for slot, array in named.items()},
        }

    def set_state(self, state, model):
        """Restore `get_state()`'s result for `model` (builds first); every slot is checked
        before any is written."""
        self.build(model)
        arrays = dict(state["slots"])
        expected = {(layer, key, slot) for (layer, key), named in self._slots.items() for slot in named}
        if set(arrays) != expected:
            missing = sorted(expected - set(arrays))
            extra = sorted(set(arrays) - expected)
            raise ValueError(
                f"{type(self).__name__}: optimizer state does not fit the model (missing {missing[:4]}, "
                f"unexpected {extra[:4]})"
            )
        for (layer, key, slot), value in arrays.items():
            target = self._slots[(layer, key)][slot]
            value = np.asarray(value)
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(
                    f"{type(self).__name__}: state '{slot}' of {layer}/{key} must be "
                    f"{target.dtype}{target.shape}, received {value.dtype}{value.shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{type(self).__name__}: state '{slot}' of {layer}/{key} contains NaN or inf")
        iterations = check_int(state["iterations"], type(self).__name__, "optimizer_iterations")
        for (layer, key, slot), value in arrays.items():
            self._slots[(layer, key)][slot][...] = value
        self.iterations = int(iterations)

    def __repr__(self):
        config = self.get_config()
        if self._schedule is not None:
            config["learning_rate"] = self._schedule
        args = ", ".join(f"{k}={v!r}" if k == "learning_rate" else f"{k}={quote(v)}"
                         for k, v in config.items() if k != "name")
        return f"{type(self).__name__}({args})"


@REGISTRY.register("sgd")
class SGD(Optimizer):
    """Stochastic gradient descent, Keras' formulation.

        momentum == 0:   p -= lr * g
        otherwise:       v = momentum * v - lr * g
                         p += v                          (nesterov=False)
                         p += momentum * v - lr * g      (nesterov=True)

    PyTorch's SGD (buf = momentum * buf + g; p -= lr * buf, nesterov: p -= lr * (g + momentum *
    buf)) gives the same trajectory for a constant learning rate: v = -lr * buf.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name=None):
        super().__init__(learning_rate, name)
        momentum = _float(momentum, "SGD", "momentum")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1], received {quote(momentum)}")
        self.momentum = momentum
        self.nesterov = check_bool(nesterov, "SGD", "nesterov")
        self.slot_names = ("momentum",) if momentum > 0 else ()

    def _update(self, param, grad, slots, scratch, lr):
        # the kernel face's in-place step (numpy_engine.sgd_update spells out the ufuncs)
        kernels.optimizer_sgd_update(param, _like(grad, param), slots.get("momentum"), lr,
                                     self.momentum, self.nesterov, scratch)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


@REGISTRY.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba) exactly as Keras computes it, epsilon included:

        t   = iterations + 1
        m   = beta_1 * m + (1 - beta_1) * g
        v   = beta_2 * v + (1 - beta_2) * g**2
        lr_t = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        p  -= lr_t * m / (sqrt(v) + epsilon)

    epsilon (1e-7, Keras' default) is added to sqrt(v) of the *uncorrected* v: Keras 2's
    "epsilon hat" placement. PyTorch adds its eps to sqrt(v_hat) = sqrt(v / (1 - beta_2**t)), so
    the same trajectory in PyTorch needs eps_torch(t) = epsilon / sqrt(1 - beta_2**t), a value
    that changes every step (set param_group['eps'] before each step; tests/test_optimizers.py
    does exactly that). With a fixed eps the two differ by O(eps) relative, mostly in the
    first steps.
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name=None):
        super().__init__(learning_rate, name)
        for what, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            value = _float(value, "Adam", what)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Adam: {what} must be in [0, 1), received {quote(value)}")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = _positive_float(epsilon, "Adam", "epsilon")

    def _step_coefficients(self, learning_rate):
        t = self.iterations
        return learning_rate * math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)

    def _update(self, param, grad, slots, scratch, lr_t):
        # the kernel face's in-place step: one pass in C on the C engine; the NumPy engine's
        # numpy_engine.adam_update spells out the ufuncs, with the same roundings
        kernels.optimizer_adam_update(param, _like(grad, param), slots["m"], slots["v"], lr_t,
                                      self.beta_1, self.beta_2, self.epsilon, scratch)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


@REGISTRY.register("adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly as Keras 3 computes it:
    before each step's Adam update (the Adam class above, epsilon included), every trainable
    parameter decays with the step's CURRENT learning rate (a schedule's value at this step):

        p = p - p * weight_decay * learning_rate          (Keras' _apply_weight_decay)
        then Adam's update of p from the same gradient

    The decay is three in-place NumPy operations in that order (the same roundings on every
    engine); the Adam part runs through the kernel face as Adam does. PyTorch's AdamW computes
    p *= 1 - lr * weight_decay (the same value up to rounding) and adds its eps after the bias
    correction (see Adam). Biases decay too, as in Keras without exclude_from_weight_decay.
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name=None):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, name)
        self.weight_decay = _float(weight_decay, "AdamW", "weight_decay")
        if self.weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, received {quote(weight_decay)}")

    def _step_coefficients(self, learning_rate):
        return learning_rate, super()._step_coefficients(learning_rate)

    def _update(self, param, grad, slots, scratch, coefficients):
        learning_rate, lr_t = coefficients
        np.multiply(param, self.weight_decay, out=scratch)
        scratch *= learning_rate
        param -= scratch                                  # p = p - p * wd * lr, Keras' order
        super()._update(param, grad, slots, scratch, lr_t)

    def get_config(self):
        config = super().get_config()
        return {"name": config.pop("name"), "learning_rate": config.pop("learning_rate"),
                "weight_decay": self.weight_decay, **config}


@REGISTRY.register("rmsprop")
class RMSprop(Optimizer):
    """RMSprop, Keras 3's formulation (keras/src/optimizers/rmsprop.py):

        a  = rho * a + (1 - rho) * g**2
        p -= learning_rate * g / sqrt(a + epsilon)

    PyTorch's RMSprop (alpha=rho) adds eps after the square root instead, lr * g / (sqrt(a) +
    eps): the two part where a is near epsilon (a gradient of 5e-7 moved a weight 0.0194 by
    PyTorch's rule, 1.6e-5 by Keras').
    """

    slot_names = ("rms",)

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=1e-7, name=None):
        super().__init__(learning_rate, name)
        rho = _float(rho, "RMSprop", "rho")
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"RMSprop: rho must be in [0, 1), received {quote(rho)}")
        self.rho = rho
        self.epsilon = _positive_float(epsilon, "RMSprop", "epsilon")

    def _update(self, param, grad, slots, scratch, lr):
        a = slots["rms"]
        a *= self.rho
        np.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - self.rho
        a += scratch
        np.add(a, self.epsilon, out=scratch)
        np.sqrt(scratch, out=scratch)
        np.divide(grad, scratch, out=scratch)
        scratch *= lr
        param -= scratch

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


def get(identifier):
    """An Optimizer from 'adam' / 'adamw' / 'sgd' / 'rmsprop' (Keras' defaults), a class, or an
    instance."""
    return REGISTRY.get(identifier, Optimizer, "compile",
                        hint=" or an instance such as minicnn.optimizers.Adam(learning_rate=1e-3)")


# {'class_name': ..., 'config': ...} and back; deserialize accepts only minicnn's own optimizer classes
serialize = REGISTRY.serialize
deserialize = REGISTRY.deserialize


# -- helpers -----------------------------------------------------------------------------------

def _like(grad, param):
    """The gradient as param's dtype and shape (layers already give exactly that)."""
    if type(grad) is np.ndarray and grad.dtype == param.dtype and grad.shape == param.shape:
        return grad
    return np.broadcast_to(np.asarray(grad, dtype=param.dtype), param.shape)


def _trainable_variables(model):
    return [(layer, key) for layer in model.layers if layer.trainable for key in layer.params]


def _signature(variables):
    return [(layer.name, key, layer.params[key].shape, layer.params[key].dtype) for layer, key in variables]


def _describe(variables):
    names = [f"{shorten(layer.name)}/{key}" for layer, key in variables]
    return "[" + ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") + "]"


def _float(value, who, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {what} must be a number, received {quote(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{who}: {what} must be finite, received {quote(value)}")
    return value


def _learning_rate(value, who):
    """A float learning rate: finite and >= 0 (0 freezes training, as in Keras)."""
    value = _float(value, who, "learning_rate")
    if value < 0:
        raise ValueError(f"{who}: learning_rate must be >= 0, received {quote(value)}")
    return value


def _positive_float(value, who, what):
    value = _float(value, who, what)
    if value <= 0:
        raise ValueError(f"{who}: {what} must be > 0, received {quote(value)}")
    return value

