"""Dropout."""
import math

import numpy as np

from .. import kernels, seeding
from ..errors import quote
from .base import REGISTRY, Layer, keeps_caches


def check_seed(seed, who):
    """None (draw from minicnn's generator, which set_seed reseeds) or a non-negative int."""
    if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
                             or seed < 0):
        raise ValueError(f"{who}: seed must be None or a non-negative integer, received {quote(seed)}")
    return None if seed is None else int(seed)


class RandomLayer(Layer):
    """A layer that draws random numbers: from its own generator when given seed=, else from
    minicnn's (minicnn.set_seed makes runs repeatable)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = check_seed(seed, self.describe())
        self._own_generator = None if self.seed is None else np.random.default_rng(self.seed)

    def _generator(self):
        return self._own_generator if self._own_generator is not None else seeding.generator()

    def get_generator_state(self):
        """Where the layer's own generator (seed=) is, or None when it draws from minicnn's
        (a model file keeps both: Trainer.get_training_state)."""
        return None if self._own_generator is None else seeding.generator_state(self._own_generator)

    def set_generator_state(self, state):
        """Put the layer's own generator where get_generator_state found it."""
        if self._own_generator is None:
            raise ValueError(f"{self.describe()}: has no generator of its own (seed=None) to set")
        seeding.restore_generator(self._own_generator, state, self.describe())

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@REGISTRY.register()
class Dropout(RandomLayer):
    """Inverted dropout: when training, each element is zeroed with probability `rate` and the
    kept ones are multiplied by 1 / (1 - rate), so the expected output equals the input; when
    not training, the identity. Any input shape (N, ...); dx = dy * the same mask.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        who = self.describe()
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)) \
                or not math.isfinite(rate) or not 0 <= rate < 1:
            raise ValueError(f"{who}: rate must be a number in [0, 1), received {quote(rate)}")
        if noise_shape is not None:
            raise ValueError(f"{who}: noise_shape is not supported (only None), received {quote(noise_shape)}")
        self.rate = float(rate)
        self._cache = None       # the kernel face's mask of the last training forward
        self._identity = False   # rate 0 in training: dx = dy

    def _forward(self, x, training):
        self._cache, self._identity = None, False
        if not training:
            self._identity = keeps_caches(training)   # kept for a backward: dx = dy
            return x
        if self.rate == 0.0:
            self._identity = True
            return x
        y, self._cache = kernels.dropout_forward(x, self.rate, self.step_key())
        return y

    def step_key(self):
        """This step's key, drawn from the layer's generator (set_seed or seed=): one 64-bit
        key decides every element (the kernel face hashes (key, index), the same on every
        engine and thread count). Kept cells are multiplied by exactly 1/(1 - rate) rounded to
        the dtype. fit's training plans draw it here too, in layer order, as the forward does."""
        return int(self._generator().integers(0, 2**64, dtype=np.uint64))

    def inference_ops(self):
        return []   # the identity when not training

    def _backward(self, dy, need_input_gradient=True):
        if self._cache is None and not self._identity:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, dy.shape[:1] + self.input_shape)
        if not need_input_gradient:
            return None
        return dy if self._identity else kernels.dropout_backward(dy, self._cache)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
