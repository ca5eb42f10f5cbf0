"""One random generator for the library, so `set_seed(n)` makes runs repeatable.

Initializers and shuffling draw from `generator()` unless they were given a seed of their own.
"""
import numpy as np

from .errors import quote

_generator = np.random.default_rng()


def set_seed(seed):
    """Reseed minicnn's generator: same seed, engine and thread count -> bit-identical weights
    and history (the C engine's kernel gradients sum their parts in the order of the threads
    it lays the work out for; the NumPy engine does not depend on threads)."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_seed: seed must be a non-negative integer, received {quote(seed)}")
    _generator = np.random.default_rng(int(seed))


def generator():
    """The library-wide numpy.random.Generator."""
    return _generator


# A generator's position as plain JSON (a model file's training state): PCG64's 128-bit state
# and increment as hex strings, which every JSON reader keeps exactly.
_STATE_BITS = 128


def generator_state(gen):
    """The position of `gen` (a numpy Generator on PCG64, as default_rng makes) as a dict of
    strings and small ints; restore_generator puts it back."""
    state = gen.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise ValueError(f"generator_state: expected a PCG64 generator, received {state.get('bit_generator')!r}")
    return {"bit_generator": "PCG64", "state": hex(state["state"]["state"]), "inc": hex(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def restore_generator(gen, saved, who="restore_generator"):
    """Put `gen` where generator_state(...) found a generator; every field is checked first
    (the dict may come from a file)."""
    if not isinstance(saved, dict) or saved.get("bit_generator") != "PCG64":
        raise ValueError(f"{who}: expected a PCG64 generator state, received {quote(saved)}")
    numbers = {}
    for key in ("state", "inc"):
        text = saved.get(key)
        try:
            value = int(text, 16) if isinstance(text, str) else -1
        except ValueError:
            value = -1
        if not 0 <= value < 2 ** _STATE_BITS:
            raise ValueError(f"{who}: the generator's {key} must be a hex string of at most "
                             f"{_STATE_BITS} bits, received {quote(text)}")
        numbers[key] = value
    has_uint32, uinteger = saved.get("has_uint32"), saved.get("uinteger")
    if has_uint32 not in (0, 1) or isinstance(has_uint32, bool) or isinstance(uinteger, bool) \
            or not isinstance(uinteger, int) or not 0 <= uinteger < 2 ** 32:
        raise ValueError(f"{who}: has_uint32 must be 0 or 1 and uinteger in [0, 2**32), received "
                         f"{quote(has_uint32)} and {quote(uinteger)}")
    gen.bit_generator.state = {"bit_generator": "PCG64", "state": numbers,
                               "has_uint32": has_uint32, "uinteger": uinteger}
