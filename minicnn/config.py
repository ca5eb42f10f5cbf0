"""Global defaults, named as in Keras: the float type new layers use; and how minicnn reads an
on/off environment variable."""
import os
import warnings

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


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def environment_switch(name, default=True):
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off in any case, unset or empty
    for the default. Another value (a typo: "offf") is ignored with a RuntimeWarning naming it."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _ON or value in _OFF:
        return value in _ON
    warnings.warn(f"{name}={os.environ[name]!r} is not one of {', '.join(_ON + _OFF)}; ignored "
                  f"(the default, {'on' if default else 'off'}, holds)", RuntimeWarning, stacklevel=2)
    return default
