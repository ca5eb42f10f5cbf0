"""What every error message shares: ModelFileError, and one rule for quoting what a user or a
file gave us, so that a 10 MB layer name cannot make a 10 MB message.

A leaf: imports nothing from minicnn.
"""
import math

import numpy as np

QUOTE_LIMIT = 100


def shorten(text, limit=QUOTE_LIMIT):
    """str(text), cut to at most `limit` characters ending in '...' when longer."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quote(value, limit=QUOTE_LIMIT):
    """repr(value) for a message, cut like shorten(). Strings longer than limit are cut before
    repr builds them, so the cost is bounded too."""
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    return shorten(repr(value), limit)


class ModelFileError(ValueError):
    """A file that is not a (readable, intact, supported) minicnn model file."""

    # The problem text can quote a file's content (an unknown class name, a bad config); a
    # generous cap keeps every message readable whatever the file holds.
    PROBLEM_LIMIT = 2000

    def __init__(self, path, problem):
        problem = shorten(problem, self.PROBLEM_LIMIT)
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def check_int(value, who, what, low=0, high=2 ** 63):
    """value as an int in [low, high); bools and floats (even 28.0) are refused, as JSON and
    Python both let them pass for numbers."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: {what} must be an integer, received {quote(value)} ({type(value).__name__})")
    if not low <= value < high:
        raise ValueError(f"{who}: {what} must be an integer in [{low}, {_power(high)}), received {quote(value)}")
    return int(value)


def check_bool(value, who, what):
    """value as a bool; 'yes', 1 and None are refused instead of read by truthiness."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{who}: {what} must be True or False, received {quote(value)} ({type(value).__name__})")
    return bool(value)


def check_str(value, who, what):
    if not isinstance(value, str) or not value:
        raise TypeError(f"{who}: {what} must be a non-empty string, received {quote(value)}")
    return value


def _power(high):
    exponent = math.log2(high) if high > 0 else 0
    return f"2**{int(exponent)}" if high > 2 ** 20 and exponent == int(exponent) else str(high)


class NonFiniteStateError(ValueError):
    """save()/save_weights() refused a model whose weights or optimizer state hold NaN or inf;
    `names` lists them, e.g. ['dense/kernel']. Nothing was written."""

    def __init__(self, names, message):
        super().__init__(message)
        self.names = list(names)
