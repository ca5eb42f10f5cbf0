"""Naive float64 reference implementations: the ground truth for the engines.

Written for obviousness, not speed: explicit loops over output positions and windows, no
im2col, no shared code with minicnn. Layout NHWC, kernel (KH, KW, C, F).
"""
import numpy as np


def pad_zeros(x, pads):
    top, bottom, left, right = pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def conv2d(x, kernel, bias, strides, pads):
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    xp = pad_zeros(x, pads)
    oh = (xp.shape[1] - kh) // sh + 1
    ow = (xp.shape[2] - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                for k in range(f):
                    total = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            for ch in range(c):
                                total += xp[b, p * sh + i, q * sw + j, ch] * kernel[i, j, ch, k]
                    y[b, p, q, k] = total + (bias[k] if bias is not None else 0.0)
    return y


def conv2d_backward(dy, x, kernel, strides, pads):
    """(dx, dkernel, dbias) by looping over every output position and window element."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    top, _, left, _ = pads
    xp = pad_zeros(x, pads)
    dxp = np.zeros_like(xp)
    dkernel = np.zeros_like(kernel)
    _, oh, ow, _ = dy.shape
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                for k in range(f):
                    g = dy[b, p, q, k]
                    for i in range(kh):
                        for j in range(kw):
                            for ch in range(c):
                                dxp[b, p * sh + i, q * sw + j, ch] += g * kernel[i, j, ch, k]
                                dkernel[i, j, ch, k] += g * xp[b, p * sh + i, q * sw + j, ch]
    dbias = dy.sum(axis=(0, 1, 2))
    return dxp[:, top:top + h, left:left + w, :], dkernel, dbias


def maxpool2d(x, pool_size, strides, pads):
    """(y, dx_routing) where routing[b, p, q, ch] = (row, col) of the winner in x."""
    n, h, w, c = x.shape
    ph, pw = pool_size
    sh, sw = strides
    top, bottom, left, right = pads
    oh = (h + top + bottom - ph) // sh + 1
    ow = (w + left + right - pw) // sw + 1
    y = np.zeros((n, oh, ow, c))
    winners = np.zeros((n, oh, ow, c, 2), dtype=int)
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                for ch in range(c):
                    best, best_at = -np.inf, None
                    for i in range(ph):
                        for j in range(pw):
                            r, s = p * sh + i - top, q * sw + j - left
                            if 0 <= r < h and 0 <= s < w and (best_at is None or x[b, r, s, ch] > best):
                                best, best_at = x[b, r, s, ch], (r, s)
                    y[b, p, q, ch] = best
                    winners[b, p, q, ch] = best_at
    return y, winners


def maxpool2d_backward(dy, x_shape, winners):
    dx = np.zeros(x_shape)
    n, oh, ow, c = dy.shape
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                for ch in range(c):
                    r, s = winners[b, p, q, ch]
                    dx[b, r, s, ch] += dy[b, p, q, ch]
    return dx


def dense(x, kernel, bias):
    n, d = x.shape
    units = kernel.shape[1]
    y = np.zeros((n, units))
    for b in range(n):
        for u in range(units):
            y[b, u] = sum(x[b, k] * kernel[k, u] for k in range(d)) + (bias[u] if bias is not None else 0.0)
    return y


def dense_backward(dy, x, kernel):
    n, d = x.shape
    units = kernel.shape[1]
    dx = np.zeros_like(x)
    dkernel = np.zeros_like(kernel)
    for b in range(n):
        for u in range(units):
            for k in range(d):
                dx[b, k] += dy[b, u] * kernel[k, u]
                dkernel[k, u] += dy[b, u] * x[b, k]
    return dx, dkernel, dy.sum(axis=0)


def same_pads(size, kernel, stride):
    """TensorFlow's 'same' padding, written out independently of minicnn.kernels.geometry."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
