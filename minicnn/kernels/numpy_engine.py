"""The pure-NumPy engine: im2col convolution and max pooling.

Layout: images NHWC (N, H, W, C), kernels (KH, KW, C, F) as in Keras.
Output size: OH = 1 + (H + pad_top + pad_bottom - KH) // stride_h (same for W).

The only Python loops run over the KH x KW kernel offsets (or the pooling window offsets);
each iteration moves a whole strided slice of every image, pixel and channel at once, in the
manner of deep-learning-from-scratch's im2col. col2im *adds* overlapping contributions: it is
the adjoint of im2col, not its inverse, which is exactly what the input gradient needs.

Every function keeps the input dtype: float32 in, float32 out; float64 in, float64 out.
"""
from collections import namedtuple

import numpy as np

from .geometry import window_output_shape

NAME = "numpy"


def _pad(x, pads, value=0.0):
    top, bottom, left, right = pads
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


# What each forward hands its backward (opaque to everything but this engine).
ConvCache = namedtuple("ConvCache", "x_shape cols kernel strides pads has_bias relu_positive")
PoolCache = namedtuple("PoolCache", "x_shape winner pool_size strides pads")
DenseCache = namedtuple("DenseCache", "x kernel has_bias relu_positive")


def im2col(x, kh, kw, strides, pads):
    """Gather every receptive field into a row.

    x: (N, H, W, C) -> cols: (N, OH, OW, KH, KW, C). Reshaped to (N*OH*OW, KH*KW*C) its rows
    line up with the kernel reshaped to (KH*KW*C, F), so the convolution is one GEMM.
    """
    xp = _pad(x, pads)
    n, _, _, c = xp.shape
    sh, sw = strides
    oh, ow = window_output_shape(x.shape[1], x.shape[2], (kh, kw), strides, pads)
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :]
    return cols


def col2im(dcols, x_shape, strides, pads):
    """Adjoint of im2col: scatter-add (N, OH, OW, KH, KW, C) back onto (N, H, W, C)."""
    n, h, w, c = x_shape
    top, bottom, left, right = pads
    _, oh, ow, kh, kw, _ = dcols.shape
    sh, sw = strides
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += dcols[:, :, :, i, j, :]
    return dxp[:, top:top + h, left:left + w, :]


def conv2d_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """y[n, p, q, f] = bias[f] + sum_{i, j, c} xpad[n, p*sh + i, q*sw + j, c] * kernel[i, j, c, f].

    x: (N, H, W, C); kernel: (KH, KW, C, F); bias: (F,) or None; strides: (sh, sw);
    pads: (top, bottom, left, right). Returns y: (N, OH, OW, F) and the cache for backward
    (None when not keep_cache).
    """
    kh, kw, c, f = kernel.shape
    cols = im2col(x, kh, kw, strides, pads)
    n, oh, ow = cols.shape[:3]
    y = cols.reshape(n * oh * ow, kh * kw * c) @ kernel.reshape(kh * kw * c, f)
    if bias is not None:
        y += bias
    y = y.reshape(n, oh, ow, f)
    if not keep_cache:
        return y, None
    return y, ConvCache(x.shape, cols, kernel, strides, pads, bias is not None, None)


def conv2d_relu_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """max(conv2d_forward(...), 0); the cache keeps the mask y > 0 so conv2d_backward applies
    the ReLU's gradient (dy where y > 0, else 0) before its own."""
    y, cache = conv2d_forward(x, kernel, bias, strides, pads, keep_cache)
    np.maximum(y, 0, out=y)
    return y, cache._replace(relu_positive=y > 0) if keep_cache else None


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of conv2d_forward.

    dy: (N, OH, OW, F). Returns (dx (N, H, W, C) or None, dkernel (KH, KW, C, F),
    dbias (F,) or None). The recipe of Darknet and cs231n: bias gradient, weight-gradient GEMM,
    input-gradient GEMM, col2im.
    """
    x_shape, cols, kernel, strides, pads, has_bias, relu_positive = cache   # a ConvCache
    if relu_positive is not None:
        dy = dy * relu_positive
    kh, kw, c, f = kernel.shape
    n, oh, ow, _ = dy.shape
    dy2d = dy.reshape(n * oh * ow, f)
    dbias = dy2d.sum(axis=0) if has_bias else None
    dkernel = (cols.reshape(n * oh * ow, kh * kw * c).T @ dy2d).reshape(kernel.shape)
    dx = None
    if need_dx:
        dcols = (dy2d @ kernel.reshape(kh * kw * c, f).T).reshape(n, oh, ow, kh, kw, c)
        dx = col2im(dcols, x_shape, strides, pads)
    return dx, dkernel, dbias


_BITS = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _select_bits(dst, src, take, scratch):
    """dst = where(take, src, dst) by bits (dst ^= (dst ^ src) & mask): exact for every value,
    NaN payloads and -0.0 included, and 5-10x faster than np.copyto(where=) on strided views."""
    bits = _BITS[dst.dtype]
    d = dst.view(bits)
    np.bitwise_xor(d, src.view(bits), out=scratch)
    np.bitwise_and(scratch, take, out=scratch)
    np.bitwise_xor(d, scratch, out=d)


def _mask(condition, bits, out=None):
    """A boolean array as all-ones / all-zeros integers of `bits`' width."""
    return np.negative(condition.view(np.int8), dtype=bits, out=out)


def maxpool2d_forward(x, pool_size, strides, pads):
    """y[n, p, q, c] = max over the window at (p*sh, q*sw) of the (-inf padded) input.

    x: (N, H, W, C) -> y: (N, OH, OW, C). The cache records, for every output, which window
    offset (row-major index into the PH x PW window) won. Ties go to the first maximum in that
    order, and a NaN in a window wins (it propagates), as in PyTorch.

    One pass per window offset over strided views of every output at once: strictly greater
    keeps the first maximum; the winner's value is copied by bits (exact) and its offset k,
    larger than every earlier one, by a maximum.
    """
    ph, pw = pool_size
    sh, sw = strides
    xp = _pad(x, pads, value=-np.inf)
    oh, ow = window_output_shape(x.shape[1], x.shape[2], pool_size, strides, pads)
    y = xp[:, 0:sh * oh:sh, 0:sw * ow:sw, :].copy()
    winner = np.zeros(y.shape, dtype=np.uint8 if ph * pw < 256 else np.int32)
    if y.size == 0:
        return y, PoolCache(x.shape, winner, pool_size, strides, pads)
    bits = _BITS[y.dtype]
    take = np.empty(y.shape, dtype=bits)
    scratch = np.empty(y.shape, dtype=bits)
    better = np.empty(y.shape, dtype=bool)
    step = np.empty(y.shape, dtype=winner.dtype)
    # NaN needs its own rule (a NaN beats any number, then stays): only when x has one.
    y_is_nan = np.isnan(y) if np.isnan(np.max(xp)) else None
    for k in range(1, ph * pw):
        i, j = divmod(k, pw)
        window = xp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :]
        np.greater(window, y, out=better)          # False where y is NaN: it stays
        if y_is_nan is not None:
            window_is_nan = np.isnan(window)
            better |= window_is_nan & ~y_is_nan
            y_is_nan |= window_is_nan
        _select_bits(y, window, _mask(better, bits, out=take), scratch)
        np.multiply(better, k, out=step, dtype=step.dtype)
        np.maximum(winner, step, out=winner)       # k exceeds every earlier winner
    return y, PoolCache(x.shape, winner, pool_size, strides, pads)


def maxpool2d_backward(dy, cache):
    """Route each output gradient to the input position that won its window.

    dy: (N, OH, OW, C) -> dx: (N, H, W, C). Overlapping windows (stride < pool) add up.
    Each offset adds dy where it won and +0.0 elsewhere (a bit mask, like np.where(.., dy, 0)).
    """
    x_shape, winner, (ph, pw), (sh, sw), pads = cache   # a PoolCache
    n, h, w, c = x_shape
    top, bottom, left, right = pads
    oh, ow = dy.shape[1:3]
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dy.dtype)
    bits = _BITS[dy.dtype]
    dy_bits = np.ascontiguousarray(dy).view(bits)
    routed = np.empty(dy.shape, dtype=bits)
    won = np.empty(dy.shape, dtype=bool)
    for k in range(ph * pw):
        i, j = divmod(k, pw)
        np.equal(winner, k, out=won)
        _mask(won, bits, out=routed)
        np.bitwise_and(routed, dy_bits, out=routed)
        dxp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += routed.view(dy.dtype)
    return dxp[:, top:top + h, left:left + w, :]


def conv2d_maxpool_forward(x, kernel, bias, strides, pads, relu, pool_size, pool_strides, keep_cache=True):
    """The convolution's forward, then the max pool's (the C engine does both in one call)."""
    y, cache = (conv2d_relu_forward if relu else conv2d_forward)(x, kernel, bias, strides, pads, keep_cache)
    pooled, pool_cache = maxpool2d_forward(y, pool_size, pool_strides, (0, 0, 0, 0))
    return (pooled, cache, pool_cache) if keep_cache else (pooled, None, None)


def conv2d_backward_from_maxpool(dy, cache, pool_cache, need_dx=True):
    """The max pool's backward, then the convolution's (the C engine does both in one pass)."""
    return conv2d_backward(maxpool2d_backward(dy, pool_cache), cache, need_dx)


def dense_forward(x, kernel, bias, relu):
    """y = x @ kernel + bias (then max(y, 0) when relu). x: (N, K), kernel: (K, F) -> y: (N, F)."""
    y = x @ kernel
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y, DenseCache(x, kernel, bias is not None, y > 0 if relu else None)


def dense_backward(dy, cache, need_dx):
    """(dx = dz kernel^T or None, dkernel = x^T dz, dbias = sum of dz or None), dz = dy masked
    by the ReLU when the forward applied one."""
    x, kernel, has_bias, relu_positive = cache   # a DenseCache
    if relu_positive is not None:
        dy = dy * relu_positive
    dx = dy @ kernel.T if need_dx else None
    return dx, x.T @ dy, dy.sum(axis=0) if has_bias else None


def engine_info():
    return {"engine": NAME, "compiler_flags": None, "simd": None, "threads": None}


# -- the ReLU layer ------------------------------------------------------------------------------

def relu_forward(x):
    """max(x, 0) elementwise; NaN stays NaN and -0.0 becomes +0.0 (np.maximum's rule)."""
    return np.maximum(x, 0)


def relu_backward(dy, y):
    """dy * (y > 0): the gradient at exactly 0 is 0; a product, so a NaN dy stays NaN."""
    return dy * (y > 0)


# -- dropout --------------------------------------------------------------------------------------

DROPOUT_ONE = 1 << 24     # the mask's levels: a threshold of rate * 2^24
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def dropout_bits(key, n):
    """SplitMix64's output for key + (i + 1) * 0x9E3779B97F4A7C15, i = 0 .. n-1 (uint64, wrapping
    as in C): the C engine's mc_dropout_bits, element for element."""
    z = np.arange(1, n + 1, dtype=np.uint64)
    z *= _GOLDEN
    z += np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def dropout_forward(x, key, threshold, scale):
    """(y, multiplier): element i kept when the top 24 bits of dropout_bits(key)[i] reach
    threshold; multiplier = scale there and 0 elsewhere (x's dtype), y = x * multiplier."""
    keep = (dropout_bits(key, x.size) >> np.uint64(40)).astype(np.int64) >= threshold
    multiplier = keep.reshape(x.shape) * x.dtype.type(scale)
    return x * multiplier, multiplier


def dropout_backward(dy, multiplier):
    """dx = dy * the forward's multiplier."""
    return dy * multiplier


# -- optimizer updates (the reference sequence of ufuncs; the C engine rounds identically) ------

def adam_update(param, grad, m, v, lr_t, beta_1, beta_2, epsilon, scratch=None):
    """Keras' Adam step in place on param, m and v; scratch: a buffer shaped like param (None:
    one is allocated). Each Python-float coefficient is rounded once to the array's dtype."""
    if scratch is None:
        scratch = np.empty_like(param)
    m *= beta_1
    np.multiply(grad, 1.0 - beta_1, out=scratch)
    m += scratch                                   # m = b1 m + (1 - b1) g
    v *= beta_2
    np.multiply(grad, grad, out=scratch)
    scratch *= 1.0 - beta_2
    v += scratch                                   # v = b2 v + (1 - b2) g^2
    np.sqrt(v, out=scratch)
    scratch += epsilon
    np.divide(m, scratch, out=scratch)
    scratch *= lr_t
    param -= scratch                               # p -= lr_t m / (sqrt(v) + eps)


def sgd_update(param, grad, velocity, learning_rate, momentum, nesterov, scratch=None):
    """Keras' SGD step in place on param (and velocity, None without momentum)."""
    if scratch is None:
        scratch = np.empty_like(param)
    np.multiply(grad, learning_rate, out=scratch)  # lr * g
    if velocity is None:
        param -= scratch
        return
    velocity *= momentum
    velocity -= scratch                            # v = momentum * v - lr * g
    if nesterov:
        param -= scratch
        np.multiply(velocity, momentum, out=scratch)
        param += scratch                           # p += momentum * v - lr * g
    else:
        param += velocity


# ---- average pooling, global average pooling, batch normalisation (issue 12) ----

AvgPoolCache = namedtuple("AvgPoolCache", "x_shape pool_size strides pads counts")
BatchNormCache = namedtuple("BatchNormCache", "x_hat inv_std gamma has_beta relu_y")


def _window_counts(size, window, stride, pad_before, out):
    """How many of each window's cells along one axis lie inside the input: (out,) ints."""
    start = np.arange(out) * stride - pad_before
    return np.minimum(start + window, size) - np.maximum(start, 0)


def avgpool2d_forward(x, pool_size, strides, pads):
    """y[n, p, q, c] = mean of the window at (p*sh, q*sw) over its cells INSIDE the image.

    x: (N, H, W, C) -> y: (N, OH, OW, C). Padding cells are neither summed nor counted
    (TensorFlow's "same", PyTorch's count_include_pad=False). One pass per window offset.
    """
    ph, pw = pool_size
    sh, sw = strides
    xp = _pad(x, pads)
    oh, ow = window_output_shape(x.shape[1], x.shape[2], pool_size, strides, pads)
    total = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=x.dtype)
    for i in range(ph):
        for j in range(pw):
            total += xp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :]
    counts = np.multiply.outer(_window_counts(x.shape[1], ph, sh, pads[0], oh),
                               _window_counts(x.shape[2], pw, sw, pads[2], ow)).astype(x.dtype)
    total /= counts[:, :, None]
    return total, AvgPoolCache(x.shape, pool_size, strides, pads, counts)


def avgpool2d_backward(dy, cache):
    """Each window's dy / count, added to every cell of the window inside the image.

    dy: (N, OH, OW, C) -> dx: (N, H, W, C)."""
    x_shape, (ph, pw), (sh, sw), pads, counts = cache   # an AvgPoolCache
    n, h, w, c = x_shape
    top, bottom, left, right = pads
    oh, ow = dy.shape[1:3]
    share = dy / counts[:, :, None]
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            dxp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += share
    return dxp[:, top:top + h, left:left + w, :]


def global_avgpool2d_forward(x):
    """x: (N, H, W, C) -> (y: (N, C) the mean over H and W, cache: x's shape)."""
    return x.mean(axis=(1, 2), dtype=x.dtype), x.shape


def global_avgpool2d_backward(dy, x_shape):
    """dy: (N, C) -> dx: (N, H, W, C), every pixel receiving dy / (H * W)."""
    n, h, w, c = x_shape
    share = dy / dy.dtype.type(h * w)
    return np.broadcast_to(share[:, None, None, :], x_shape).copy()


def batchnorm_forward_training(x, gamma, beta, epsilon, relu=False):
    """Normalise each column of x: (M, C) by its batch mean and biased variance.

    y = gamma * (x - mean) / sqrt(var + epsilon) + beta  (gamma, beta: (C,) or None), then
    relu_forward(y) when relu (the ReLU layer that follows, fused; its mask in the backward).
    Returns (y, mean (C,), var (C,), cache)."""
    mean = x.mean(axis=0, dtype=x.dtype)
    centered = x - mean
    var = np.mean(centered * centered, axis=0, dtype=x.dtype)
    inv_std = 1 / np.sqrt(var + x.dtype.type(epsilon))
    x_hat = centered * inv_std
    y = x_hat * gamma if gamma is not None else x_hat.copy()
    if beta is not None:
        y += beta
    if relu:
        y = relu_forward(y)
    return y, mean, var, BatchNormCache(x_hat, inv_std, gamma, beta is not None, y if relu else None)


def batchnorm_forward_inference(x, gamma, beta, mean, var, epsilon, relu=False):
    """y = gamma * (x - mean) / sqrt(var + epsilon) + beta with given statistics, then
    relu_forward(y) when relu; x: (M, C)."""
    inv_std = 1 / np.sqrt(var + x.dtype.type(epsilon))
    scale = inv_std * gamma if gamma is not None else inv_std
    y = (x - mean) * scale
    if beta is not None:
        y += beta
    return relu_forward(y) if relu else y


def batchnorm_backward(dy, cache, need_dx=True):
    """Gradients of batchnorm_forward_training for dy: (M, C):
    (dx (M, C) or None, dgamma (C,) or None, dbeta (C,) or None), with the batch statistics'
    own dependence on x included:
        dx = gamma * inv_std / M * (M dy - sum(dy) - x_hat * sum(dy * x_hat))."""
    x_hat, inv_std, gamma, has_beta, relu_y = cache   # a BatchNormCache
    if relu_y is not None:
        dy = relu_backward(dy, relu_y)
    m = dy.shape[0]
    dbeta = dy.sum(axis=0)
    dgamma = np.sum(dy * x_hat, axis=0)
    dx = None
    if need_dx:
        scale = inv_std if gamma is None else gamma * inv_std
        dx = (dy - dbeta / dy.dtype.type(m) - x_hat * (dgamma / dy.dtype.type(m))) * scale
    return dx, dgamma if gamma is not None else None, dbeta if has_beta else None
