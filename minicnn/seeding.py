"""One random generator for the library, so `set_seed(n)` makes runs repeatable.

Initializers and shuffling draw from `generator()` unless they were given a seed of their own.
"""
import numpy as np

from .errors import quote

_generator = np.random.default_rng()


def set_seed(seed):
    """Reseed minicnn's generator: same seed, same engine -> bit-identical weights and history."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_seed: seed must be a non-negative integer, received {quote(seed)}")
    _generator = np.random.default_rng(int(seed))


def generator():
    """The library-wide numpy.random.Generator."""
    return _generator
