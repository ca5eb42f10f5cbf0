"""Central finite differences in float64, in the manner of cs231n's gradient_check.py.

A layer is checked through the scalar f(x) = sum(layer(x) * dy) with a random upstream dy, so
no loss is needed. The error is ||analytic - numeric|| / (||analytic|| + ||numeric||), a
relative error over the whole array (element-wise relative errors blow up on entries that are
~0 in both).
"""
import numpy as np


def numeric_gradient(f, array, h=1e-6):
    """d f / d array by central differences, perturbing `array` in place and restoring it."""
    grad = np.zeros_like(array)
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + h
        plus = f()
        flat[i] = original - h
        minus = f()
        flat[i] = original
        flat_grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(analytic, numeric):
    denominator = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return 0.0 if denominator == 0 else np.linalg.norm(analytic - numeric) / denominator
