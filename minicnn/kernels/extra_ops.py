"""The kernel face's average pooling and batch normalisation (issue 12's layers).

Re-exported by ``minicnn.kernels`` (its last line imports this module) and validated here
once for every engine, like the rest of the face:

    avgpool2d_forward / avgpool2d_backward                    windows over NHWC images
    global_avgpool2d_forward / global_avgpool2d_backward      (N, H, W, C) -> (N, C)
    batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, epsilon, training)
    batchnorm_backward(dy, cache, need_dx)                    x: (M, C), one column a channel

Each forward returns ``(y, cache)`` (batch normalisation in training also returns the batch's
mean and biased variance); the cache remembers its engine, so a backward runs where its
forward ran.

This module is imported by the face's package at the end of its initialisation and reads the
face's choice of engine (``_active``) through that package's module object, which is complete
by then: importing the package here would put the face on an import cycle with itself.
"""
import sys
from collections import namedtuple

import numpy as np

_face = sys.modules[__package__]

_OpCache = namedtuple("_OpCache", "kind engine y_shape dtype engine_cache")

__all__ = [
    "avgpool2d_forward", "avgpool2d_backward", "global_avgpool2d_forward",
    "global_avgpool2d_backward", "batchnorm_forward", "batchnorm_backward",
]


def _unpack(cache, kind, who):
    if not (isinstance(cache, _OpCache) and cache.kind == kind):
        raise TypeError(f"{who}: cache must be the one {kind}_forward returned, received {type(cache).__name__}")
    return cache


def _check_float_array(value, who, name, ndim):
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{who}: {name} must be a NumPy array, received {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{who}: {name} must be {ndim}-D, received shape {value.shape}")
    if value.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: {name} must be float32 or float64, received dtype {value.dtype}")
    if 0 in value.shape:
        raise ValueError(f"{who}: {name} must have no empty axis, received shape {value.shape}")


def avgpool2d_forward(x, pool_size, strides, pads):
    """Average pooling, NHWC: x (N, H, W, C) -> (y (N, OH, OW, C), cache).

    Each output is the mean of its window's cells inside the image: padding cells are neither
    summed nor counted (TensorFlow's "same"; PyTorch's count_include_pad=False).
    OH = 1 + (H + top + bottom - PH) // sh, OW likewise; pads (top, bottom, left, right).
    """
    who = "avgpool2d_forward"
    _face._check_image_batch(x, who)
    pool_size = _face._int_tuple(pool_size, 2, 1, who, "pool_size")
    strides, pads = _face._check_window(x, pool_size, strides, pads, who, "window")
    engine = _face._active
    y, cache = engine.avgpool2d_forward(x, pool_size, strides, pads)
    return y, _OpCache("avgpool2d", engine, y.shape, y.dtype, cache)


def avgpool2d_backward(dy, cache):
    """Gradient of avgpool2d_forward: dy (N, OH, OW, C) -> dx (N, H, W, C)."""
    cache = _unpack(cache, "avgpool2d", "avgpool2d_backward")
    _face._check_grad(dy, cache.y_shape, cache.dtype, "avgpool2d_backward")
    return cache.engine.avgpool2d_backward(dy, cache.engine_cache)


def global_avgpool2d_forward(x):
    """Mean over height and width: x (N, H, W, C) -> (y (N, C), cache)."""
    _face._check_image_batch(x, "global_avgpool2d_forward")
    engine = _face._active
    y, cache = engine.global_avgpool2d_forward(x)
    return y, _OpCache("global_avgpool2d", engine, y.shape, y.dtype, cache)


def global_avgpool2d_backward(dy, cache):
    """Gradient of global_avgpool2d_forward: dy (N, C) -> dx (N, H, W, C)."""
    cache = _unpack(cache, "global_avgpool2d", "global_avgpool2d_backward")
    _face._check_grad(dy, cache.y_shape, cache.dtype, "global_avgpool2d_backward")
    return cache.engine.global_avgpool2d_backward(dy, cache.engine_cache)


def batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, epsilon, training):
    """Batch normalisation of x: (M, C), one column per channel.

    training=True: y = gamma * (x - mean) / sqrt(var + epsilon) + beta with the batch's mean
    and BIASED variance (divided by M); returns (y, mean (C,), var (C,), cache). The moving
    statistics are not used and not updated here (the layer updates them).
    training=False: the same with moving_mean and moving_variance; returns (y, None, None, None).
    gamma and beta are (C,) arrays or None (scale=False / center=False).
    """
    who = "batchnorm_forward"
    _check_float_array(x, who, "x", 2)
    channels = x.shape[1]
    vectors = {"gamma": gamma, "beta": beta}
    if not training:
        vectors.update(moving_mean=moving_mean, moving_variance=moving_variance)
    for name, value in vectors.items():
        if value is None and name in ("gamma", "beta"):
            continue
        if not isinstance(value, np.ndarray) or value.shape != (channels,):
            got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"{who}: {name} must be an array of shape ({channels},), received {got}")
    _face._check_same_dtype(who, x=x, **vectors)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"{who}: epsilon must be a positive number, received {epsilon!r}")
    engine = _face._active
    if not training:
        return engine.batchnorm_forward_inference(x, gamma, beta, moving_mean, moving_variance,
                                                  float(epsilon)), None, None, None
    y, mean, var, cache = engine.batchnorm_forward_training(x, gamma, beta, float(epsilon))
    return y, mean, var, _OpCache("batchnorm", engine, y.shape, y.dtype, cache)


def batchnorm_backward(dy, cache, need_dx=True):
    """Gradients of a training batchnorm_forward: (dx (M, C) or None, dgamma (C,) or None,
    dbeta (C,) or None); dx includes the batch statistics' dependence on x."""
    cache = _unpack(cache, "batchnorm", "batchnorm_backward")
    _face._check_grad(dy, cache.y_shape, cache.dtype, "batchnorm_backward")
    return cache.engine.batchnorm_backward(dy, cache.engine_cache, bool(need_dx))

