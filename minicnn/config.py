"""Global defaults, named as in Keras: the float type new layers use."""
import numpy as np

from .errors import quote

_FLOATX = "float32"
_ALLOWED = ("float32", "float64")


def floatx():
    """Default dtype name for new parameters: 'float32' unless set_floatx changed it."""
    return _FLOATX


def set_floatx(value):
    """Set the default dtype of layers created afterwards ('float32' or 'float64')."""
    global _FLOATX
    _FLOATX = standardize_dtype(value, "set_floatx")


def standardize_dtype(value, who):
    """Turn None, a name or a NumPy dtype into 'float32'/'float64', or raise naming `who`."""
    if value is None:
        return _FLOATX
    try:
        name = np.dtype(value).name
    except TypeError:
        name = None
    if name not in _ALLOWED:
        raise ValueError(f"{who}: dtype must be 'float32' or 'float64', received {quote(value)}")
    return name
