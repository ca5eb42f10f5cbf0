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


def avgpool2d(x, pool_size, strides, pads):
    """Mean of each window's cells inside the image (padding neither summed nor counted)."""
    n, h, w, c = x.shape
    ph, pw = pool_size
    sh, sw = strides
    top, bottom, left, right = pads
    oh = (h + top + bottom - ph) // sh + 1
    ow = (w + left + right - pw) // sw + 1
    y = np.zeros((n, oh, ow, c))
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                for ch in range(c):
                    cells = [x[b, p * sh + i - top, q * sw + j - left, ch]
                             for i in range(ph) for j in range(pw)
                             if 0 <= p * sh + i - top < h and 0 <= q * sw + j - left < w]
                    y[b, p, q, ch] = sum(cells) / len(cells)
    return y


def avgpool2d_backward(dy, x_shape, pool_size, strides, pads):
    n, h, w, c = x_shape
    ph, pw = pool_size
    sh, sw = strides
    top, _, left, _ = pads
    dx = np.zeros(x_shape)
    _, oh, ow, _ = dy.shape
    for b in range(n):
        for p in range(oh):
            for q in range(ow):
                inside = [(p * sh + i - top, q * sw + j - left) for i in range(ph) for j in range(pw)
                          if 0 <= p * sh + i - top < h and 0 <= q * sw + j - left < w]
                for ch in range(c):
                    for r, s in inside:
                        dx[b, r, s, ch] += dy[b, p, q, ch] / len(inside)
    return dx


def batchnorm(x, gamma, beta, epsilon, mean=None, variance=None):
    """x: (M, C). Batch statistics (biased variance) unless mean and variance are given.
    Returns (y, mean, variance)."""
    m, c = x.shape
    y = np.zeros((m, c))
    means, variances = np.zeros(c), np.zeros(c)
    for ch in range(c):
        column = [x[i, ch] for i in range(m)]
        mu = sum(column) / m if mean is None else mean[ch]
        var = sum((v - mu) ** 2 for v in column) / m if variance is None else variance[ch]
        means[ch], variances[ch] = mu, var
        for i in range(m):
            y[i, ch] = gamma[ch] * (x[i, ch] - mu) / np.sqrt(var + epsilon) + beta[ch]
    return y, means, variances


def batchnorm_backward(dy, x, gamma, epsilon):
    """(dx, dgamma, dbeta) of batchnorm with batch statistics, by the chain rule written out
    element by element: through x_hat, the variance and the mean."""
    m, c = x.shape
    dx = np.zeros((m, c))
    dgamma, dbeta = np.zeros(c), np.zeros(c)
    for ch in range(c):
        mu = sum(x[i, ch] for i in range(m)) / m
        var = sum((x[i, ch] - mu) ** 2 for i in range(m)) / m
        std = np.sqrt(var + epsilon)
        x_hat = [(x[i, ch] - mu) / std for i in range(m)]
        dx_hat = [dy[i, ch] * gamma[ch] for i in range(m)]
        dvar = sum(dx_hat[i] * (x[i, ch] - mu) * -0.5 * std ** -3 for i in range(m))
        dmu = sum(-dx_hat[i] / std for i in range(m)) + dvar * sum(-2 * (x[i, ch] - mu) for i in range(m)) / m
        for i in range(m):
            dx[i, ch] = dx_hat[i] / std + dvar * 2 * (x[i, ch] - mu) / m + dmu / m
            dgamma[ch] += dy[i, ch] * x_hat[i]
            dbeta[ch] += dy[i, ch]
    return dx, dgamma, dbeta
