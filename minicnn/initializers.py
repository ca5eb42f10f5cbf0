"""Weight initializers with Keras' names and formulas.

For a Conv2D kernel (KH, KW, C_in, F): fan_in = KH*KW*C_in and fan_out = KH*KW*F.
For a Dense kernel (in, units): fan_in = in, fan_out = units.
"""
import numpy as np

from .errors import check_int
from .registry import Registry
from .seeding import generator


def compute_fans(shape):
    """(fan_in, fan_out) of a kernel shape, Keras' rule."""
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = int(np.prod(shape[:-2]))
    return shape[-2] * receptive_field, shape[-1] * receptive_field


REGISTRY = Registry("initializer")


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

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@REGISTRY.register("zeros", name="zeros")
class Zeros(Initializer):
    name = "zeros"

    def __call__(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)


@REGISTRY.register("ones", name="ones")
class Ones(Initializer):
    name = "ones"

    def __call__(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)


@REGISTRY.register("glorot_uniform", name="glorot_uniform")
class GlorotUniform(Initializer):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""

    name = "glorot_uniform"

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return self._rng().uniform(-limit, limit, size=shape).astype(dtype)


@REGISTRY.register("glorot_normal", name="glorot_normal")
class GlorotNormal(Initializer):
    """Truncated normal (cut at 2 std), std = sqrt(2 / (fan_in + fan_out)) / .87962566103423978."""

    name = "glorot_normal"

    def __call__(self, shape, dtype="float32"):
        fan_in, fan_out = compute_fans(shape)
        return _truncated_normal(self._rng(), np.sqrt(2.0 / (fan_in + fan_out)), shape, dtype)


@REGISTRY.register("he_normal", name="he_normal")
class HeNormal(Initializer):
    """Truncated normal (cut at 2 std), std = sqrt(2 / fan_in) / .87962566103423978."""

    name = "he_normal"

    def __call__(self, shape, dtype="float32"):
        fan_in, _ = compute_fans(shape)
        return _truncated_normal(self._rng(), np.sqrt(2.0 / fan_in), shape, dtype)


@REGISTRY.register("he_uniform", name="he_uniform")
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


class _CallableInitializer(Initializer):
    """Wraps a user function fn(shape, dtype) -> array."""

    name = "callable"

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __call__(self, shape, dtype="float32"):
        return np.asarray(self.fn(shape, dtype), dtype=dtype)


def get(identifier, who="initializer"):
    """An Initializer from a name ('glorot_uniform', 'he_normal', 'zeros', ...), a class, an
    instance, a serialized description (what get_config of a layer holds), or a function
    fn(shape, dtype) -> array."""
    if isinstance(identifier, dict):
        return REGISTRY.deserialize(identifier)
    if callable(identifier) and not isinstance(identifier, (type, Initializer)):
        return _CallableInitializer(identifier)
    return REGISTRY.get(identifier, Initializer, who, hint=" or an Initializer instance")


def serialize(initializer):
    """A JSON-ready description: {'class_name': 'glorot_uniform', 'config': {'seed': None}}."""
    if isinstance(initializer, _CallableInitializer):
        raise ValueError("a custom initializer function cannot be saved in a model file")
    return REGISTRY.serialize(initializer)


def deserialize(description):
    """Inverse of serialize; only minicnn's own initializer classes are accepted."""
    return REGISTRY.deserialize(description)


zeros, ones = Zeros, Ones
glorot_uniform, glorot_normal = GlorotUniform, GlorotNormal
he_normal, he_uniform = HeNormal, HeUniform
