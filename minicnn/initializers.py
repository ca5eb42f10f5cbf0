"""Weight initializers with Keras' names and formulas.

For a Conv2D kernel (KH, KW, C_in, F): fan_in = KH*KW*C_in and fan_out = KH*KW*F.
For a Dense kernel (in, units): fan_in = in, fan_out = units.
"""
import numpy as np

from .errors import check_int, quote
from .seeding import generator


def compute_fans(shape):
    """(fan_in, fan_out) of a kernel shape, Keras' rule."""
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = int(np.prod(shape[:-2]))
    return shape[-2] * receptive_field, shape[-1] * receptive_field


class Initializer:
    """Callable `init(shape, dtype) -> array`; `seed` makes one initializer repeatable."""

    name = "initializer"

    def __init__(self, seed=None):
        self.seed = None if seed is None else check_int(seed, type(self).__name__, "seed")

    def _rng(self):
        return np.random.default_rng(self.seed) if self.seed is not None else generator()

    def __call__(self, shape, dtype="float32"):
        raise NotImplementedError

    def get_config(self):
        return {"seed": self.seed}


class Zeros(Initializer):
    name = "zeros"

    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


class Ones(Initializer):
    name = "ones"

    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


class GlorotUniform(Initializer):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""

    name = "glorot_uniform"

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return self._rng().uniform(-limit, limit, size=shape).astype(dtype)


class GlorotNormal(Initializer):
    """Truncated normal (cut at 2 std), std = sqrt(2 / (fan_in + fan_out)) / .87962566103423978."""

    name = "glorot_normal"

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        return _truncated_normal(self._rng(), np.sqrt(2.0 / (fan_in + fan_out)), shape, dtype)


class HeNormal(Initializer):
    """Truncated normal (cut at 2 std), std = sqrt(2 / fan_in) / .87962566103423978."""

    name = "he_normal"

    def __call__(self, shape, dtype="float32"):
        fan_in, _ = compute_fans(shape)
        return _truncated_normal(self._rng(), np.sqrt(2.0 / fan_in), shape, dtype)


class HeUniform(Initializer):
    """U(-limit, limit), limit = sqrt(6 / fan_in)."""

    name = "he_uniform"

    def __call__(self, shape, dtype="float32"):
        fan_in, _ = compute_fans(shape)
        limit = np.sqrt(6.0 / fan_in)
        return self._rng().uniform(-limit, limit, size=shape).astype(dtype)


def _truncated_normal(rng, target_std, shape, dtype):
    # Keras divides by the std of a unit normal truncated at +/-2 so the result keeps target_std.
    std = target_std / 0.87962566103423978
    values = rng.normal(0.0, std, size=shape)
    outside = np.abs(values) > 2 * std
    while outside.any():
        values[outside] = rng.normal(0.0, std, size=int(outside.sum()))
        outside = np.abs(values) > 2 * std
    return values.astype(dtype)


_BY_NAME = {cls.name: cls for cls in (Zeros, Ones, GlorotUniform, GlorotNormal, HeNormal, HeUniform)}


def get(identifier, who="initializer"):
    """An Initializer from a name ('glorot_uniform', 'he_normal', 'zeros', ...) or an instance."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if callable(identifier) and not isinstance(identifier, type):
        return _CallableInitializer(identifier)
    raise ValueError(
        f"{who}: unknown initializer {quote(identifier)}; expected one of {sorted(_BY_NAME)} "
        f"or an Initializer instance"
    )


class _CallableInitializer(Initializer):
    """Wraps a user function fn(shape, dtype) -> array."""

    name = "callable"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __call__(self, shape, dtype="float32"):
        return np.asarray(self.fn(shape, dtype), dtype=dtype)


def serialize(initializer):
    """A JSON-ready description: {'class_name': ..., 'config': ...}."""
    if isinstance(initializer, _CallableInitializer):
        raise ValueError("a custom initializer function cannot be saved in a model file")
    return {"class_name": initializer.name, "config": initializer.get_config()}


def deserialize(description):
    """Inverse of serialize; only minicnn's own initializer classes are accepted."""
    name = description.get("class_name") if isinstance(description, dict) else None
    if not isinstance(name, str) or name not in _BY_NAME:
        raise ValueError(f"unknown initializer {quote(name)}; expected one of {sorted(_BY_NAME)}")
    config = description.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"initializer config must be a mapping, received {type(config).__name__}")
    return _BY_NAME[name](**config)


zeros, ones = Zeros, Ones
glorot_uniform, glorot_normal = GlorotUniform, GlorotNormal
he_normal, he_uniform = HeNormal, HeUniform
