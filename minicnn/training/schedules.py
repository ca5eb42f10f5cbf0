"""Learning rate schedules with Keras 3's names, arguments and formulas.

A schedule maps the optimizer's step count to a learning rate. Pass one as any optimizer's
`learning_rate`; the optimizer evaluates it once per step at `optimizer.iterations` BEFORE that
step's increment (Keras' rule), so step 0 uses schedule(0), and a model saved after k steps
resumes with schedule(k) -- the iterations travel in the model file, the schedule's config in
the optimizer's config.

    lr = minicnn.optimizers.schedules.CosineDecay(1e-3, decay_steps=10_000, alpha=0.01)
    model.compile(optimizer=minicnn.optimizers.Adam(learning_rate=lr), loss=...)
    lr(0), lr(5000)              # 0.001, 0.000505 (Python floats)

Keras evaluates the formulas in float32 tensors (the floatx of initial_learning_rate); minicnn
evaluates the same operations in the same order in Python floats (float64), so a value agrees
with Keras' to float32 rounding (about 6e-8 relative).
"""
import math

import numpy as np

from ..errors import check_bool, check_int, check_str, quote
from ..registry import Registry

REGISTRY = Registry("learning rate schedule")


class LearningRateSchedule:
    """Base class: `__call__(step) -> float` and `get_config()`; from_config(config) rebuilds.
    Subclass it (and register the class with REGISTRY) for a schedule that files can hold."""

    def __call__(self, step):
        raise NotImplementedError(f"{type(self).__name__} must override __call__(self, step)")

    def get_config(self):
        raise NotImplementedError(f"{type(self).__name__} must override get_config() to be saved")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={quote(value)}" for key, value in self.get_config().items() if key != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


@REGISTRY.register("exponential_decay")
class ExponentialDecay(LearningRateSchedule):
    """initial_learning_rate * decay_rate ** (step / decay_steps); with staircase=True the
    exponent is floor(step / decay_steps), so the rate drops every decay_steps steps."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        who = "ExponentialDecay"
        self.initial_learning_rate = _rate(initial_learning_rate, who, "initial_learning_rate")
        self.decay_steps = check_int(decay_steps, who, "decay_steps", low=1)
        self.decay_rate = _real(decay_rate, who, "decay_rate")
        if self.decay_rate <= 0:
            raise ValueError(f"{who}: decay_rate must be > 0, received {quote(decay_rate)}")
        self.staircase = check_bool(staircase, who, "staircase")
        self.name = check_str(name, who, "name")

    def __call__(self, step):
        p = float(step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


@REGISTRY.register("piecewise_constant_decay")
class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[i] while boundaries[i-1] < step <=
    boundaries[i], values[-1] once step > boundaries[-1]. Boundaries: strictly increasing
    integers (steps); one value more than boundaries."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        who = "PiecewiseConstantDecay"
        if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
            raise TypeError(f"{who}: boundaries and values must be lists, received "
                            f"{type(boundaries).__name__} and {type(values).__name__}")
        if len(boundaries) != len(values) - 1 or not boundaries:
            raise ValueError(f"{who}: boundaries must be a non-empty list one shorter than values; received "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [check_int(b, who, "each boundary") for b in boundaries]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{who}: boundaries must be strictly increasing, received {quote(list(boundaries))}")
        self.values = [_rate(v, who, "each value") for v in values]
        self.name = check_str(name, who, "name")

    def __call__(self, step):
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


@REGISTRY.register("cosine_decay")
class CosineDecay(LearningRateSchedule):
    """Cosine decay with an optional linear warmup (Loshchilov & Hutter's SGDR without restarts).

    warmup_target None: for step s = min(step, decay_steps),
        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)
    warmup_target set: s = min(step, warmup_steps + decay_steps); while s < warmup_steps
        lr = (warmup_target - initial_learning_rate) * (s / warmup_steps) + initial_learning_rate
    then the decay above from warmup_target over s - warmup_steps.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        who = "CosineDecay"
        self.initial_learning_rate = _rate(initial_learning_rate, who, "initial_learning_rate")
        self.decay_steps = check_int(decay_steps, who, "decay_steps", low=1)
        self.alpha = _real(alpha, who, "alpha")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"{who}: alpha must be in [0, 1], received {quote(alpha)}")
        self.name = check_str(name, who, "name")
        self.warmup_target = None if warmup_target is None else _rate(warmup_target, who, "warmup_target")
        self.warmup_steps = check_int(warmup_steps, who, "warmup_steps")
        if self.warmup_steps > 0 and self.warmup_target is None:
            raise ValueError(f"{who}: warmup_steps={self.warmup_steps} needs a warmup_target (the rate "
                             f"the warmup climbs to); Keras ignores the warmup silently in that case")

    def _decay(self, step, decay_from):
        cosine_decayed = 0.5 * (1.0 + math.cos(math.pi * (step / self.decay_steps)))
        return decay_from * ((1 - self.alpha) * cosine_decayed + self.alpha)

    def __call__(self, step):
        step = float(step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (step / self.warmup_steps) + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


# {'class_name': ..., 'config': ...} and back; only minicnn's own schedule classes
serialize = REGISTRY.serialize
deserialize = REGISTRY.deserialize


def _real(value, who, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{who}: {what} must be a number, received {quote(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{who}: {what} must be finite, received {quote(value)}")
    return value


def _rate(value, who, what):
    value = _real(value, who, what)
    if value < 0:
        raise ValueError(f"{who}: {what} must be >= 0 (a learning rate), received {quote(value)}")
    return value
