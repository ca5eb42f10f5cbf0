"""The C engine: a thin, checking wrapper over the cffi extension ``minicnn._kernels``.

Importing this module raises ImportError when the extension was not built; the kernel face
(minicnn/kernels/__init__.py) catches that and falls back to the NumPy engine.

The kernel face has already checked every argument (shapes, dtypes, windows, dy against the
forward's output); this module only converts arrays to pointers. Every call into C goes
through ``_call``, the one door: each array argument is wrapped in
``_In`` (read by C) or ``_Out`` (written by C), which checks the dtype, C-contiguity,
writability and the exact number of elements the geometry implies before the pointer is
taken; C checks the same lengths again and returns an error code instead of touching memory
when they disagree. Inputs that are not C-contiguous are copied first (``_contiguous``);
outputs are always fresh arrays. Scratch memory ("workspace") is one growing buffer per dtype
and Python thread, reused from call to call, so steady-state training allocates only the
arrays it returns and the caches.

Functions: the face's four (conv2d_forward/backward, maxpool2d_forward/backward) plus
conv2d_relu_forward (ReLU fused into the kernel; conv2d_backward then masks dy in C) and
dense_forward/dense_backward (the fully connected products on the same threads as the
convolutions, so a training step never wakes OpenBLAS's pool; docs/architecture.md), and the
optimizer updates adam_update/sgd_update (in place on the parameter and its state).
Layout as everywhere in minicnn: images NHWC (N, H, W, C), kernels (KH, KW, C, F), dense
kernels (K, F).
Environment: MINICNN_SIMD=avx512|avx2|sse2 caps the SIMD level (default: the best the CPU
has); OMP_NUM_THREADS sets the threads (default: all cores), capped at the CPUs this process
may use and at 64.

Memory: on glibc, loading this engine raises malloc's trim and mmap thresholds
(``mc_keep_freed_memory``): freed activation arrays stay in the heap for the next batch
instead of being returned to the OS and page-faulted in again, which cost more than the
pooling itself at batch 32. The process then keeps up to 256 MiB of freed memory.
MINICNN_KEEP_FREED_MEMORY=0 turns this off; engine_info() reports it.
"""
import functools
import os
import threading
import warnings
from collections import namedtuple

import numpy as np

from .._kernels import ffi, lib
from ..config import environment_switch
from ..errors import check_int
from . import numpy_engine  # the optimizer updates' fallback for arrays C cannot update in place
from .geometry import window_output_shape

NAME = "c"

_SUFFIX = {np.dtype(np.float32): "_f32", np.dtype(np.float64): "_f64"}
_INT32 = np.dtype(np.int32)
_UINT8 = np.dtype(np.uint8)
_ERRORS = {
    1: "the geometry is invalid (shape, stride or padding: each at most 2**24, every array at most "
       "2**40 elements)",
    2: "a buffer length does not match the geometry",
    3: "a required buffer is missing",
    4: "a max pool's winner index points outside its image (the cache was changed after the forward)",
}
_SIMD_LEVELS = {"sse2": 0, "baseline": 0, "avx2": 1, "avx512": 2}
_ALGORITHMS = {"auto": 0, "direct": 1, "winograd": 2}


# ---- the one door into C ----

class _In:
    """An array C reads: must already have the dtype and exactly `size` elements."""

    __slots__ = ("name", "array", "dtype", "size", "optional")
    writable = False

    def __init__(self, name, array, dtype, size, optional=False):
        self.name, self.array, self.dtype, self.size, self.optional = name, array, dtype, size, optional


class _Out(_In):
    """An array C writes."""

    __slots__ = ()
    writable = True


_CTYPES = {np.dtype(np.float32): "float[]", np.dtype(np.float64): "double[]", _INT32: "int32_t[]",
           _UINT8: "uint8_t[]"}


def _pointer(arg, who):
    a = arg.array
    if a is None:
        if arg.optional:
            return ffi.NULL, 0
        raise ValueError(f"{who}: {arg.name} is required")
    # one test for the common case; the branches below only explain a failure
    if type(a) is np.ndarray and a.dtype == arg.dtype and a.size == arg.size:
        flags = a.flags
        if flags.c_contiguous and (flags.writeable or not arg.writable):
            return ffi.from_buffer(_CTYPES[arg.dtype], a, arg.writable), arg.size
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{who}: {arg.name} must be a NumPy array, received {type(a).__name__}")
    if a.dtype != arg.dtype:
        raise TypeError(f"{who}: {arg.name} must be {arg.dtype}, received {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{who}: {arg.name} must be C-contiguous")
    if arg.writable and not a.flags.writeable:
        raise ValueError(f"{who}: {arg.name} must be writable")
    if a.size != arg.size:
        raise ValueError(f"{who}: {arg.name} must have {arg.size} elements, received {a.size}")
    # an ndarray subclass that passed every test: C reads its buffer like any array's
    return ffi.from_buffer(_CTYPES[arg.dtype], a, require_writable=arg.writable), a.size


def _verified(array):
    """(pointer, length) of an array whose dtype, contiguity, writability and size are known to
    be right for C: allocated here with np.empty, or checked by the caller just before."""
    return ffi.from_buffer(_CTYPES[array.dtype], array, True), array.size


def _call(function_name, *args):
    """Check every array argument, expand it to (pointer, length), call C, raise on an error code."""
    c_args = []
    for arg in args:
        if type(arg) is _In or type(arg) is _Out:
            c_args.extend(_pointer(arg, function_name))
        else:
            c_args.append(arg)
    status = getattr(lib, function_name)(*c_args)
    if status != 0:
        # named as the kernel face names it: mc_maxpool2d_forward_f32 -> maxpool2d_forward
        raise _status_error(function_name[3:].rsplit("_", 1)[0], status)


def _status_error(who, status):
    """The ValueError for C's error code `status`, named after `who`."""
    return ValueError(f"{who}: {_ERRORS.get(status, f'error {status}')}")


def _refuse_plan_array(who, name, array, shape, dtype):
    """Raise for an array a plan cannot take (it takes exactly its planned shape, dtype and C
    order): TypeError for the wrong type or dtype, as the kernel face raises, else ValueError."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"{who}: {name} must be a {dtype} array, received {got}")
    raise ValueError(f"{who}: {name} must be a C-contiguous {dtype} array of shape {shape}, received "
                     f"shape {array.shape}{'' if array.flags.c_contiguous else ', not C-contiguous'}")


def _contiguous(array, dtype, name, who):
    """The array itself when C can read it, else a C-contiguous copy; never a silent cast."""
    if array is None:
        return None
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"{who}: {name} must be a {dtype} array, received {got}")
    return np.ascontiguousarray(array)


def _suffix(dtype, who):
    try:
        return _SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"{who}: the C engine runs float32 and float64, received {dtype}") from None


# ---- reusable scratch memory ----

_scratch = threading.local()


def _workspace(dtype, size, who):
    """A C-contiguous scratch array of exactly `size` elements, reused across calls."""
    if size < 0:
        raise ValueError(f"{who}: invalid geometry")
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buffer = buffers.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = buffers[dtype] = np.empty(max(int(size), 1024) * 5 // 4, dtype=dtype)
    return buffer[:size]


# ---- geometry ----

_GEOMETRY_CACHE_SIZE = 256
_geometries = {}


def _geometry(ctype, key, fields):
    """A read-only C geometry struct per distinct shape, built once (ffi.new costs microseconds)."""
    struct = _geometries.get(key)
    if struct is None:
        if len(_geometries) >= _GEOMETRY_CACHE_SIZE:
            _geometries.clear()
        struct = _geometries[key] = ffi.new(ctype, {k: int(v) for k, v in zip(fields, key[1:])})
    return struct


_CONV_FIELDS = ("n", "h", "w", "c", "kh", "kw", "f", "stride_h", "stride_w",
                "pad_top", "pad_bottom", "pad_left", "pad_right")
_POOL_FIELDS = ("n", "h", "w", "c", "pool_h", "pool_w", "stride_h", "stride_w",
                "pad_top", "pad_bottom", "pad_left", "pad_right")


def _conv_geometry(x_shape, kernel_shape, strides, pads):
    n, h, w, c = x_shape
    kh, kw, _, f = kernel_shape
    key = ("conv", n, h, w, c, kh, kw, f, strides[0], strides[1], pads[0], pads[1], pads[2], pads[3])
    return _geometry("mc_conv_geom *", key, _CONV_FIELDS)


# What each forward hands its backward. The convolution keeps its zero-padded copy of x (the
# kernel gradient reads it), so later changes to x cannot leak in; relu tells whether a ReLU
# was fused, relu_y is its output (C masks dy by relu_y > 0), or None: without the ReLU, or
# when the forward ran with the max pool after it (conv2d_maxpool_forward keeps no output).
ConvCache = namedtuple("ConvCache", "x_shape strides pads xpad kernel has_bias relu relu_y")
PoolCache = namedtuple("PoolCache", "x_shape pool_size strides pads argmax y")   # y: for conv2d_backward_from_maxpool
DenseCache = namedtuple("DenseCache", "x kernel has_bias relu_y")


# ---- the engine functions (same signatures as numpy_engine) ----

def conv2d_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """y = conv(x, kernel) + bias; x (N, H, W, C), kernel (KH, KW, C, F) -> y (N, OH, OW, F)."""
    return _conv_forward(x, kernel, bias, strides, pads, False, keep_cache)


def conv2d_backward(dy, cache, need_dx=True):
    """(dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,) or None) from dy (N, OH, OW, F)."""
    return _conv_backward(dy, cache, need_dx, relu_y=None)


def _conv_forward(x, kernel, bias, strides, pads, relu, keep_cache=True):
    """(y, ConvCache), or (y, None) when not keep_cache: C then pads a group of images at a time
    into its workspace instead of writing the padded batch the backward would read."""
    who = "conv2d_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    kernel = _contiguous(kernel, dtype, "kernel", who)
    bias = _contiguous(bias, dtype, "bias", who)
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    top, bottom, left, right = pads
    oh, ow = window_output_shape(h, w, (kh, kw), strides, pads)
    geometry = _conv_geometry(x.shape, kernel.shape, strides, pads)
    xpad = np.empty((n, h + top + bottom, w + left + right, c), dtype=dtype) if keep_cache else None
    y = np.empty((n, oh, ow, f), dtype=dtype)
    work = _workspace(dtype, lib.mc_conv2d_forward_workspace(geometry, dtype.itemsize, int(keep_cache)), who)
    _call(
        "mc_conv2d_forward" + sfx, geometry,
        _In("x", x, dtype, x.size), _In("kernel", kernel, dtype, kernel.size),
        _In("bias", bias, dtype, f, optional=True), int(bool(relu)),
        *(_verified(xpad) if keep_cache else (ffi.NULL, 0)), *_verified(y), *_verified(work),
    )
    if not keep_cache:
        return y, None
    # strides and pads arrive as tuples of ints: the face normalised them
    return y, ConvCache(x.shape, strides, pads, xpad, kernel, bias is not None, relu, y if relu else None)


def _conv_backward(dy, cache, need_dx, relu_y):
    who = "conv2d_backward"
    x_shape, strides, pads, xpad, kernel = cache.x_shape, cache.strides, cache.pads, cache.xpad, cache.kernel
    dtype = xpad.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    relu_y = cache.relu_y if relu_y is None else relu_y
    n, h, w, c = x_shape
    kh, kw, _, f = kernel.shape
    oh, ow = window_output_shape(h, w, (kh, kw), strides, pads)
    geometry = _conv_geometry(x_shape, kernel.shape, strides, pads)
    dx = np.empty(x_shape, dtype=dtype) if need_dx else None
    dkernel = np.empty(kernel.shape, dtype=dtype)
    dbias = np.empty((f,), dtype=dtype) if cache.has_bias else None
    size = lib.mc_conv2d_backward_workspace(geometry, dtype.itemsize, int(bool(need_dx)),
                                            int(relu_y is not None))
    work = _workspace(dtype, size, who)
    _call(
        "mc_conv2d_backward" + sfx, geometry,
        _In("xpad", xpad, dtype, xpad.size), _In("kernel", kernel, dtype, kernel.size),
        _In("dy", dy, dtype, n * oh * ow * f), _In("relu_y", relu_y, dtype, n * oh * ow * f, optional=True),
        *(_verified(dx) if need_dx else (ffi.NULL, 0)), *_verified(dkernel),
        *(_verified(dbias) if dbias is not None else (ffi.NULL, 0)), *_verified(work),
    )
    return dx, dkernel, dbias


def conv2d_maxpool_forward(x, kernel, bias, strides, pads, relu, pool_size, pool_strides, keep_cache=True):
    """maxpool2d_forward(conv2d_forward(x, ...)) (relu: conv2d_relu_forward) in one C call that
    runs the images in chunks, so the convolution's output is read by the pool while still in
    the caches and is never kept: returns (pooled, conv cache, pool cache), whose backward is
    conv2d_backward_from_maxpool ((pooled, None, None) when not keep_cache: no padded batch
    either). The same bits as the two forwards apart."""
    who = "conv2d_maxpool_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    kernel = _contiguous(kernel, dtype, "kernel", who)
    bias = _contiguous(bias, dtype, "bias", who)
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    top, bottom, left, right = pads
    oh, ow = window_output_shape(h, w, (kh, kw), strides, pads)
    no_pads = (0, 0, 0, 0)
    ph, pw = window_output_shape(oh, ow, pool_size, pool_strides, no_pads)
    geometry = _conv_geometry(x.shape, kernel.shape, strides, pads)
    pool_geometry = _pool_geometry((n, oh, ow, f), pool_size, pool_strides, no_pads)
    xpad = np.empty((n, h + top + bottom, w + left + right, c), dtype=dtype) if keep_cache else None
    pooled = np.empty((n, ph, pw, f), dtype=dtype)
    argmax = np.empty((n, ph, pw, f), dtype=np.int32)
    size = lib.mc_conv2d_forward_maxpool_workspace(geometry, pool_geometry, dtype.itemsize, int(keep_cache))
    work = _workspace(dtype, size, who)
    _call(
        "mc_conv2d_forward_maxpool" + sfx, geometry, pool_geometry,
        _In("x", x, dtype, x.size), _In("kernel", kernel, dtype, kernel.size),
        _In("bias", bias, dtype, f, optional=True), int(bool(relu)),
        *(_verified(xpad) if keep_cache else (ffi.NULL, 0)), *_verified(pooled), *_verified(argmax),
        *_verified(work),
    )
    if not keep_cache:
        return pooled, None, None
    argmax.flags.writeable = False   # the winners the backward indexes with (C checks them too)
    return (pooled, ConvCache(x.shape, strides, pads, xpad, kernel, bias is not None, bool(relu), None),
            PoolCache((n, oh, ow, f), pool_size, pool_strides, no_pads, argmax, pooled))


def conv2d_backward_from_maxpool(dy, cache, pool_cache, need_dx=True):
    """conv2d_backward(maxpool2d_backward(dy, pool_cache), cache, need_dx) in one C call, for a
    max pool (windows that neither overlap nor touch padding) over this convolution's output:
    each window's gradient is spread to its winner inside C, image by image, so the
    whole-batch gradient of the convolution's output is never written or read back (with a
    fused ReLU, the pool's own output is its mask at the winners). The same bits."""
    who = "conv2d_backward_from_maxpool"
    xpad, kernel = cache.xpad, cache.kernel
    dtype = xpad.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    x_shape, pool_size, strides, pads, argmax, pooled = pool_cache   # a PoolCache
    geometry = _conv_geometry(cache.x_shape, kernel.shape, cache.strides, cache.pads)
    pool_geometry = _pool_geometry(x_shape, pool_size, strides, pads)
    mask = pooled if cache.relu else None
    dx = np.empty(cache.x_shape, dtype=dtype) if need_dx else None
    dkernel = np.empty(kernel.shape, dtype=dtype)
    dbias = np.empty((kernel.shape[3],), dtype=dtype) if cache.has_bias else None
    work = _workspace(dtype, lib.mc_conv2d_backward_workspace(geometry, dtype.itemsize, int(bool(need_dx)), 1),
                      who)
    _call(
        "mc_conv2d_backward_from_maxpool" + sfx, geometry, pool_geometry,
        _In("xpad", xpad, dtype, xpad.size), _In("kernel", kernel, dtype, kernel.size),
        _In("dy", dy, dtype, argmax.size), _In("pooled", mask, dtype, argmax.size, optional=True),
        _In("argmax", argmax, _INT32, argmax.size),
        *(_verified(dx) if need_dx else (ffi.NULL, 0)), *_verified(dkernel),
        *(_verified(dbias) if dbias is not None else (ffi.NULL, 0)), *_verified(work),
    )
    return dx, dkernel, dbias


def conv2d_relu_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """relu(conv(x, kernel) + bias) with the ReLU applied in the kernel's epilogue.

    conv2d_backward on its cache masks dy by y > 0 inside C (no separate pass over y).
    """
    return _conv_forward(x, kernel, bias, strides, pads, True, keep_cache)


def dense_forward(x, kernel, bias, relu=False):
    """y = x @ kernel + bias (then max(y, 0) when relu): x (N, K), kernel (K, F) -> y (N, F).

    Runs on the C engine's own threads, so a training step never wakes OpenBLAS's pool (which
    spins against OpenMP's on the same cores: docs/architecture.md).
    """
    who = "dense_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    kernel = _contiguous(kernel, dtype, "kernel", who)
    bias = _contiguous(bias, dtype, "bias", who)
    n, k = x.shape
    f = kernel.shape[1]
    y = np.empty((n, f), dtype=dtype)
    work = _workspace(dtype, lib.mc_dense_forward_workspace(n, k, f, dtype.itemsize), who)
    _call(
        "mc_dense_forward" + sfx, n, k, f,
        _In("x", x, dtype, x.size), _In("kernel", kernel, dtype, kernel.size),
        _In("bias", bias, dtype, f, optional=True), int(bool(relu)),
        *_verified(y), *_verified(work),
    )
    return y, DenseCache(x, kernel, bias is not None, y if relu else None)


def dense_backward(dy, cache, need_dx=True):
    """(dx (N, K) or None, dkernel (K, F), dbias (F,) or None) from dy (N, F)."""
    who = "dense_backward"
    x, kernel, has_bias, relu_y = cache   # a DenseCache
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    n, k = x.shape
    f = kernel.shape[1]
    dx = np.empty((n, k), dtype=dtype) if need_dx else None
    dkernel = np.empty((k, f), dtype=dtype)
    dbias = np.empty((f,), dtype=dtype) if has_bias else None
    work = _workspace(dtype, lib.mc_dense_backward_workspace(n, k, f, dtype.itemsize), who)
    _call(
        "mc_dense_backward" + sfx, n, k, f,
        _In("x", x, dtype, x.size), _In("kernel", kernel, dtype, kernel.size),
        _In("dy", dy, dtype, n * f), _In("relu_y", relu_y, dtype, n * f, optional=True),
        *(_verified(dx) if need_dx else (ffi.NULL, 0)), *_verified(dkernel),
        *(_verified(dbias) if dbias is not None else (ffi.NULL, 0)), *_verified(work),
    )
    return dx, dkernel, dbias


def maxpool2d_forward(x, pool_size, strides, pads):
    """x (N, H, W, C) -> y (N, OH, OW, C); pads are -inf; ties go to the first maximum."""
    who = "maxpool2d_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    n, h, w, c = x.shape
    top, bottom, left, right = pads
    oh, ow = window_output_shape(h, w, pool_size, strides, pads)
    geometry = _pool_geometry(x.shape, pool_size, strides, pads)
    y = np.empty((n, oh, ow, c), dtype=dtype)
    argmax = np.empty((n, oh, ow, c), dtype=np.int32)
    _call(
        "mc_maxpool2d_forward" + sfx, geometry, _In("x", x, dtype, x.size),
        *_verified(y), *_verified(argmax),
    )
    argmax.flags.writeable = False   # the winners the backward indexes with (C checks them too)
    return y, PoolCache(x.shape, pool_size, strides, pads, argmax, y)


def maxpool2d_backward(dy, cache):
    """dy (N, OH, OW, C) -> dx (N, H, W, C): each gradient goes to its window's winner."""
    who = "maxpool2d_backward"
    x_shape, pool_size, strides, pads, argmax, _ = cache   # a PoolCache
    dtype = dy.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    geometry = _pool_geometry(x_shape, pool_size, strides, pads)
    dx = np.empty(x_shape, dtype=dtype)
    _call(
        "mc_maxpool2d_backward" + sfx, geometry, _In("dy", dy, dtype, argmax.size),
        _In("argmax", argmax, _INT32, argmax.size), *_verified(dx),
    )
    return dx


# ---- the ReLU layer (elementwise; the same bits as the NumPy engine on any thread split) ----

def relu_forward(x):
    """max(x, 0) elementwise, any shape; np.maximum's rule for NaN and -0.0."""
    who = "relu_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    y = np.empty(x.shape, dtype=dtype)
    _call("mc_relu_forward" + sfx, x.size, _In("x", x, dtype, x.size), *_verified(y))
    return y


def relu_backward(dy, y):
    """dy * (y > 0) elementwise for the y relu_forward returned."""
    who = "relu_backward"
    dtype = y.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    y = _contiguous(y, dtype, "y", who)
    dx = np.empty(y.shape, dtype=dtype)
    _call("mc_relu_backward" + sfx, y.size, _In("dy", dy, dtype, y.size), _In("y", y, dtype, y.size),
          *_verified(dx))
    return dx


# ---- dropout (elementwise; the mask depends on the key and the index only) ----

DropoutCache = namedtuple("DropoutCache", "mask scale")


def dropout_forward(x, key, threshold, scale):
    """(y, cache) for x of any shape: the numpy_engine.dropout_forward mask, drawn in C."""
    who = "dropout_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    y = np.empty(x.shape, dtype=dtype)
    mask = np.empty(x.shape, dtype=np.uint8)
    _call("mc_dropout_forward" + sfx, x.size, _In("x", x, dtype, x.size), int(key), int(threshold),
          float(scale), *_verified(y), *_verified(mask))
    return y, DropoutCache(mask, float(scale))


def dropout_backward(dy, cache):
    """dx = dy * (mask ? scale : 0)."""
    who = "dropout_backward"
    dtype = dy.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    mask = cache.mask
    dx = np.empty(dy.shape, dtype=dtype)
    _call("mc_dropout_backward" + sfx, dy.size, _In("dy", dy, dtype, mask.size),
          _In("mask", mask, _UINT8, mask.size), cache.scale, *_verified(dx))
    return dx


# ---- optimizer updates (in place; elementwise, so any thread split gives the same bits) ----

def _updatable(*arrays):
    return all(a is None or (a.flags.c_contiguous and a.flags.writeable) for a in arrays)


def adam_update(param, grad, m, v, lr_t, beta_1, beta_2, epsilon, scratch=None):
    """Keras' Adam step in place on param, m and v, in C; the same roundings as the NumPy
    engine's ufuncs. Arrays C cannot update in place (not C-contiguous) take the NumPy path."""
    who = "optimizer_adam_update"
    dtype = param.dtype
    sfx = _suffix(dtype, who)
    if not _updatable(param, m, v):
        return numpy_engine.adam_update(param, grad, m, v, lr_t, beta_1, beta_2, epsilon, scratch)
    grad = _contiguous(grad, dtype, "grad", who)
    n = param.size
    if m.dtype == v.dtype == dtype and m.size == v.size == n:   # _updatable checked the rest
        _call("mc_adam_update" + sfx, n, *_verified(param), _In("grad", grad, dtype, n), *_verified(m), *_verified(v),
              float(lr_t), float(beta_1), float(beta_2), float(epsilon))
        return
    _call(
        "mc_adam_update" + sfx, n, _Out("param", param, dtype, n), _In("grad", grad, dtype, n),
        _Out("m", m, dtype, n), _Out("v", v, dtype, n),
        float(lr_t), float(beta_1), float(beta_2), float(epsilon),
    )


def sgd_update(param, grad, velocity, learning_rate, momentum, nesterov, scratch=None):
    """Keras' SGD step (velocity None without momentum) in place, in C; NumPy's roundings."""
    who = "optimizer_sgd_update"
    dtype = param.dtype
    sfx = _suffix(dtype, who)
    if not _updatable(param, velocity):
        return numpy_engine.sgd_update(param, grad, velocity, learning_rate, momentum, nesterov, scratch)
    grad = _contiguous(grad, dtype, "grad", who)
    n = param.size
    _call(
        "mc_sgd_update" + sfx, n, _Out("param", param, dtype, n), _In("grad", grad, dtype, n),
        _Out("velocity", velocity, dtype, n, optional=True),
        float(learning_rate), float(momentum), int(bool(nesterov)),
    )


def _pool_geometry(x_shape, pool_size, strides, pads):
    n, h, w, c = x_shape
    key = ("pool", n, h, w, c, pool_size[0], pool_size[1], strides[0], strides[1],
           pads[0], pads[1], pads[2], pads[3])
    return _geometry("mc_pool_geom *", key, _POOL_FIELDS)


# ---- engine facts and knobs ----

def engine_info():
    """Engine name, the C compiler flags of the build, the SIMD level in use and the threads."""
    return {
        "engine": NAME,
        "compiler_flags": ffi.string(lib.mc_build_flags()).decode(),
        "simd": simd_level(),
        "conv_algorithm": algorithm(),
        "threads": int(lib.mc_max_threads()),
        "openmp": bool(lib.mc_have_openmp()),
        "keeps_freed_memory": _freed_memory_kept,
    }


def simd_level():
    """The SIMD level the kernels run with now: 'avx512', 'avx2' or 'sse2' ('baseline' off x86)."""
    return ffi.string(lib.mc_simd_name(lib.mc_simd_level())).decode()


def simd_levels():
    """Every level this CPU and build can run, best first."""
    best = lib.mc_simd_best()
    return [ffi.string(lib.mc_simd_name(level)).decode() for level in range(best, -1, -1)]


def set_simd_level(name):
    """Run the kernels with a lower SIMD level (tests, comparisons); returns the level set."""
    if name not in _SIMD_LEVELS:
        raise ValueError(f"SIMD level must be one of {sorted(_SIMD_LEVELS)}, received {name!r}")
    lib.mc_set_simd_level(_SIMD_LEVELS[name])
    return simd_level()


def set_algorithm(name):
    """The convolution algorithm: 'auto', 'direct' or 'winograd'.

    'auto': Winograd for the passes of stride-1 3x3 convolutions (F(2x2, 3x3), padding <= 2 per
    side) whose GEMMs reduce over enough channels (forward C_in >= 16; kernel gradient C_in and
    F >= 16 and one of them >= 64; input gradient F >= 16), and of stride-1 5x5 convolutions
    (F(2x2, 5x5), padding <= 4; forward C_in and F >= 32; kernel gradient both >= 48; input
    gradient F >= 32); the direct kernels otherwise. 'direct': never Winograd. 'winograd': every
    pass of every such 3x3 and 5x5 convolution (tests; others still run direct).
    Thresholds and their measurements: csrc/kernels.c, docs/performance.md."""
    if name not in _ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(_ALGORITHMS)}, received {name!r}")
    lib.mc_set_algorithm(_ALGORITHMS[name])
    return algorithm()


def algorithm():
    """The convolution algorithm policy in force: 'auto', 'direct' or 'winograd'."""
    return {v: k for k, v in _ALGORITHMS.items()}[lib.mc_get_algorithm()]


def set_num_threads(threads, beyond_cpus=False):
    """Threads for the C kernels; None or 0 restores the default (OMP_NUM_THREADS or all cores).

    Capped, like the default, at the CPUs this process may run on (its affinity mask) and at
    64: more threads would only wait for each other, and each one costs workspace.
    beyond_cpus=True lifts the cap at the CPUs (not the one at 64) until the next call: for
    tests and scripts/fuzz_engines.py, which must run 3 and 4 threads even on a 2-core machine
    (the threads then take turns on the cores).
    engine_info()["threads"] reports the number a call really uses."""
    if threads is not None:
        threads = check_int(threads, "set_num_threads", "threads", 0, 2**31)   # no 2.7, "3" or True
    lib.mc_allow_threads_beyond_cpus(int(bool(beyond_cpus)))
    lib.mc_set_num_threads(int(threads or 0))


def set_load_cap(threads):
    """At most `threads` threads run per call while other processes keep the remaining CPUs
    busy (minicnn/kernels/load.py); None or 0 removes the cap. The work stays split for the
    uncapped thread count, so the results are the same bits. Ignored while beyond_cpus is on."""
    lib.mc_set_load_cap(int(threads or 0))


def _simd_from_environment():
    requested = os.environ.get("MINICNN_SIMD", "").strip().lower()
    if not requested:
        return
    if requested not in _SIMD_LEVELS:
        warnings.warn(f"MINICNN_SIMD={requested!r} is not one of {sorted(_SIMD_LEVELS)}; ignored",
                      RuntimeWarning, stacklevel=2)
        return
    got = set_simd_level(requested)
    if _SIMD_LEVELS[got] < _SIMD_LEVELS[requested]:
        warnings.warn(f"MINICNN_SIMD={requested} is not supported here; running {got}",
                      RuntimeWarning, stacklevel=2)


_KEEP_FREED_BYTES = 256 * 1024 * 1024


def _keep_freed_memory_from_environment():
    if not environment_switch("MINICNN_KEEP_FREED_MEMORY"):
        return False
    return bool(lib.mc_keep_freed_memory(_KEEP_FREED_BYTES))


_simd_from_environment()
_freed_memory_kept = _keep_freed_memory_from_environment()



# ---- average pooling, global average pooling, batch normalisation (issue 12) ----

AvgPoolCache = namedtuple("AvgPoolCache", "x_shape pool_size strides pads")
BatchNormCache = namedtuple("BatchNormCache", "x_hat inv_std gamma has_beta relu_y")


def avgpool2d_forward(x, pool_size, strides, pads):
    """x (N, H, W, C) -> y (N, OH, OW, C): each window's mean over its cells inside the image."""
    who = "avgpool2d_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    n, h, w, c = x.shape
    pool_size, strides = tuple(int(p) for p in pool_size), tuple(int(s) for s in strides)
    pads = tuple(int(p) for p in pads)
    oh, ow = window_output_shape(h, w, pool_size, strides, pads)
    y = np.empty((n, oh, ow, c), dtype=dtype)
    _call("mc_avgpool2d_forward" + sfx, _pool_geometry(x.shape, pool_size, strides, pads),
          _In("x", x, dtype, x.size), _Out("y", y, dtype, y.size))
    return y, AvgPoolCache(x.shape, pool_size, strides, pads)


def avgpool2d_backward(dy, cache):
    """dy (N, OH, OW, C) -> dx (N, H, W, C): each output's dy / count to every cell it averaged."""
    who = "avgpool2d_backward"
    x_shape, pool_size, strides, pads = cache   # an AvgPoolCache
    dtype = dy.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    dx = np.empty(x_shape, dtype=dtype)
    _call("mc_avgpool2d_backward" + sfx, _pool_geometry(x_shape, pool_size, strides, pads),
          _In("dy", dy, dtype, dy.size), _Out("dx", dx, dtype, dx.size))
    return dx


def global_avgpool2d_forward(x):
    """x (N, H, W, C) -> y (N, C): average pooling with one window as large as the image."""
    y, cache = avgpool2d_forward(x, x.shape[1:3], (1, 1), (0, 0, 0, 0))
    return y.reshape(x.shape[0], x.shape[3]), cache


def global_avgpool2d_backward(dy, cache):
    """dy (N, C) -> dx (N, H, W, C), every pixel receiving dy / (H * W)."""
    return avgpool2d_backward(np.ascontiguousarray(dy).reshape(dy.shape[0], 1, 1, dy.shape[1]), cache)


def _vector(value, dtype, name, who, size):
    return None if value is None else _In(name, _contiguous(value, dtype, name, who), dtype, size)


def batchnorm_forward_training(x, gamma, beta, epsilon, relu=False):
    """x (M, C) -> (y (M, C), batch mean (C,), biased batch variance (C,), cache); relu=True
    applies the following ReLU layer to y in the same pass (and its mask in the backward)."""
    who = "batchnorm_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    m, c = x.shape
    y, x_hat = np.empty_like(x), np.empty_like(x)
    mean, var, inv_std = (np.empty(c, dtype=dtype) for _ in range(3))
    gamma = None if gamma is None else _contiguous(gamma, dtype, "gamma", who)
    _call("mc_batchnorm_forward_training" + sfx, m, c, _In("x", x, dtype, x.size),
          _In("gamma", gamma, dtype, c, optional=True),
          _In("beta", None if beta is None else _contiguous(beta, dtype, "beta", who), dtype, c, optional=True),
          float(epsilon), int(bool(relu)), *_verified(y), *_verified(mean), *_verified(var),
          *_verified(x_hat), *_verified(inv_std))
    return y, mean, var, BatchNormCache(x_hat, inv_std, gamma, beta is not None, y if relu else None)


def batchnorm_forward_inference(x, gamma, beta, mean, var, epsilon, relu=False):
    """y = (x - mean) / sqrt(var + epsilon) * gamma + beta, then max(y, 0) when relu; x (M, C),
    the rest (C,) or None."""
    who = "batchnorm_forward"
    dtype = x.dtype
    sfx = _suffix(dtype, who)
    x = _contiguous(x, dtype, "x", who)
    m, c = x.shape
    y = np.empty_like(x)
    optional = {name: None if v is None else _contiguous(v, dtype, name, who)
                for name, v in (("gamma", gamma), ("beta", beta))}
    _call("mc_batchnorm_forward_inference" + sfx, m, c, _In("x", x, dtype, x.size),
          _In("gamma", optional["gamma"], dtype, c, optional=True),
          _In("beta", optional["beta"], dtype, c, optional=True),
          _In("mean", _contiguous(mean, dtype, "mean", who), dtype, c),
          _In("var", _contiguous(var, dtype, "var", who), dtype, c),
          float(epsilon), int(bool(relu)), *_verified(y))
    return y


def batchnorm_backward(dy, cache, need_dx=True):
    """(dx (M, C) or None, dgamma (C,) or None, dbeta (C,) or None) for dy (M, C)."""
    who = "batchnorm_backward"
    x_hat, inv_std, gamma, has_beta, relu_y = cache   # a BatchNormCache
    dtype = dy.dtype
    sfx = _suffix(dtype, who)
    dy = _contiguous(dy, dtype, "dy", who)
    m, c = dy.shape
    # with the fused ReLU, C passes the masked dy through dx: it needs one even without need_dx
    dx = np.empty_like(dy) if need_dx or relu_y is not None else None
    dgamma, dbeta = np.empty(c, dtype=dtype), np.empty(c, dtype=dtype)
    _call("mc_batchnorm_backward" + sfx, m, c, _In("dy", dy, dtype, dy.size),
          _In("x_hat", x_hat, dtype, x_hat.size), _In("inv_std", inv_std, dtype, c),
          _In("gamma", gamma, dtype, c, optional=True), _In("relu_y", relu_y, dtype, dy.size, optional=True),
          _Out("dx", dx, dtype, dy.size, optional=True),
          _Out("dgamma", dgamma, dtype, c), _Out("dbeta", dbeta, dtype, c))
    return (dx if need_dx else None), dgamma if gamma is not None else None, dbeta if has_beta else None


# ---- inference plans: a whole forward bound to C once (the small-batch fast path) ----
#
# Why: at batch 1 the seed model's C work takes ~70 us, and the general path spent about as
# long again in Python around it: the face's checks, this wrapper's pointer conversions and
# allocations, layer after layer, on arrays the library made itself. A plan does that work
# once: the face checks every op (kernels.inference_plan) and the plan keeps the geometry
# structs and the weights' pointers; each thread binds its own activation buffers to pointers
# on first use. A call then only checks the input, asks C for the workspace each step needs
# under the current threads, SIMD level and algorithm (cheap; a grown need rebinds), and calls
# C: the same functions and arguments as the general path, so the same bits.
# The weights are bound by pointer: writes into them (set_weights, load_weights, optimizer
# steps) are seen; whoever caches a plan must drop it when a weight array is replaced
# (minicnn/training/trainer.py does).

# placeholders in a step's arguments: the input's and the output's pointers, known per call only,
# and the thread's workspace (pointer, length)
_INPUT, _OUTPUT, _WORK = object(), object(), object()
_DY = object()   # a training plan's: the gradient its backward starts from


class _Key:
    """A training plan's placeholder for the per-step key of its `index`-th dropout op."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class _Scratch:
    """A per-thread buffer of `shape` and `dtype` a plan binds (an activation, xpad, argmax)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


class _Unbindable(Exception):
    """A step this engine binds only by copying an array every call: no plan, the general path."""


def _weight_pointer(array, dtype):
    """(pointer, length) of a weight C reads in place ((NULL, 0) for None); _Unbindable for an
    array of another dtype or not C-contiguous, which the general path copies every call."""
    if array is None:
        return ffi.NULL, 0
    if type(array) is not np.ndarray or array.dtype != dtype or not array.flags.c_contiguous:
        raise _Unbindable
    return ffi.from_buffer(_CTYPES[dtype], array, False), array.size


class InferencePlan:
    """forward(x, training=False) for inputs of one shape and dtype, bound to C.

    Made by inference_plan from the face's checked steps; run(x) gives the general path's bits.
    Thread-safe: each Python thread gets its own buffers and workspace.
    """

    def __init__(self, x_shape, dtype, calls, queries, out_shape, final_shape, tail):
        self.x_shape, self.dtype = x_shape, dtype
        self._ctype = _CTYPES[dtype]
        self._calls = calls          # [(C function, arguments with _Scratch/_WORK/_INPUT/_OUTPUT)]
        self._queries = queries      # [(C query, its arguments)]: workspace elements a step needs now
        self._out_shape, self._final_shape, self._tail = out_shape, final_shape, tail
        self._threads = threading.local()

    def _bound(self, work_size):
        """This thread's calls, every argument but the per-call input and output resolved."""
        bound = getattr(self._threads, "bound", None)
        if bound is not None and bound[0] >= work_size:
            return bound[1]
        work = np.empty(max(work_size, 1), dtype=self.dtype)
        pointers = {}
        calls = []
        for function, args in self._calls:
            resolved = []
            for arg in args:
                if type(arg) is _Scratch:
                    if arg not in pointers:
                        buffer = np.empty(arg.shape, dtype=arg.dtype)
                        pointers[arg] = (ffi.from_buffer(_CTYPES[arg.dtype], buffer, True), buffer.size)
                    resolved.extend(pointers[arg])
                elif arg is _WORK:
                    resolved.extend((ffi.from_buffer(self._ctype, work, True), work.size))
                else:
                    resolved.append(arg)
            # the input's and output's places, filled in by run(); None: nothing to fill in
            fill = tuple(i for i, a in enumerate(resolved) if a is _INPUT or a is _OUTPUT) or None
            calls.append((function, tuple(resolved), fill))
        self._threads.bound = (work.size, calls)
        return calls

    def run(self, x):
        """The model's output for x (C-contiguous, exactly the planned shape and dtype): a new array."""
        if not (type(x) is np.ndarray and x.shape == self.x_shape and x.dtype == self.dtype
                and x.flags.c_contiguous):
            _refuse_plan_array("inference plan", "x", x, self.x_shape, self.dtype)
        calls = self._bound(max([query(*args) for query, args in self._queries], default=0))
        y = np.empty(self._out_shape, dtype=self.dtype)
        x_pointer = ffi.from_buffer(self._ctype, x, False)
        y_pointer = ffi.from_buffer(self._ctype, y, True)
        for function, args, fill in calls:
            if fill is not None:
                args = list(args)
                for i in fill:
                    args[i] = x_pointer if args[i] is _INPUT else y_pointer
            status = function(*args)
            if status != 0:
                raise _status_error("inference plan", status)
        if self._final_shape != self._out_shape:
            y = y.reshape(self._final_shape)
        for function in self._tail:
            y = function(y)
        return y


def inference_plan(steps, x_shape, dtype):
    """An InferencePlan for `steps`, or None when one cannot be bound (a weight C would need
    copied, a Python function before a C step, no C step at all).

    steps: [(op, x_shape, y_shape)] that the face checked by running each op (kernels.inference_plan
    lists the ops); x_shape, dtype: the input's.
    """
    try:
        return _bind_steps(steps, tuple(x_shape), np.dtype(dtype))
    except _Unbindable:
        return None


def _reshaped(y, shape):
    return y.reshape(shape)


def _bind_steps(steps, x_shape, dtype):
    sfx, itemsize = _SUFFIX[dtype], dtype.itemsize
    calls, queries, tail = [], [], []
    source = _INPUT          # what the next C step reads: the input, or a buffer
    last = out_shape = final_shape = None
    for op, in_shape, y_shape in steps:
        kind = op[0]
        if kind == "reshape":
            if tail:   # after a Python function (a softmax over channels, then Flatten): in turn
                tail.append(functools.partial(_reshaped, shape=y_shape))
            else:
                final_shape = y_shape
            continue
        if kind == "function":
            tail.append(op[1])
            continue
        if tail:
            raise _Unbindable   # Python between two C steps: not worth a plan
        out = _Scratch(y_shape, dtype)
        if kind == "conv2d":
            _, kernel, bias, strides, pads, relu = op
            geometry = _conv_geometry(in_shape, kernel.shape, strides, pads)
            # no padded copy kept: C pads a group of images at a time into the workspace
            args = [geometry, source, *_weight_pointer(kernel, dtype), *_weight_pointer(bias, dtype),
                    int(relu), ffi.NULL, 0, out, _WORK]
            queries.append((lib.mc_conv2d_forward_workspace, (geometry, itemsize, 0)))
        elif kind in ("maxpool2d", "avgpool2d"):
            _, pool_size, strides, pads = op
            geometry = _pool_geometry(in_shape, pool_size, strides, pads)
            argmax = [_Scratch(y_shape, np.int32)] if kind == "maxpool2d" else []
            args = [geometry, source, out, *argmax]
        elif kind == "dense":
            _, kernel, bias, relu = op
            n, k, f = in_shape[0], in_shape[1], kernel.shape[1]
            args = [n, k, f, source, *_weight_pointer(kernel, dtype), *_weight_pointer(bias, dtype),
                    int(relu), out, _WORK]
            queries.append((lib.mc_dense_forward_workspace, (n, k, f, itemsize)))
        elif kind == "batchnorm":
            _, gamma, beta, mean, var, epsilon, relu = op
            vectors = [p for vector in (gamma, beta, mean, var) for p in _weight_pointer(vector, dtype)]
            args = [int(np.prod(in_shape[:-1])), in_shape[-1], source, *vectors, float(epsilon), int(relu), out]
        elif kind == "relu":
            args = [int(np.prod(in_shape)), source, out]
        else:
            raise _Unbindable
        function = getattr(lib, f"mc_{kind}_forward{'_inference' if kind == 'batchnorm' else ''}{sfx}")
        # a buffer argument stands for (pointer, length); the input's length is known here
        args = [a for arg in args for a in ((arg, int(np.prod(x_shape))) if arg is _INPUT else (arg,))]
        calls.append((function, args))
        last = (args, out)
        source, out_shape = out, y_shape
        final_shape = y_shape
    if not calls:
        raise _Unbindable
    # the last C step writes the array run() returns, fresh each call
    args, out = last
    position = args.index(out)
    args[position:position + 1] = [_OUTPUT, int(np.prod(out_shape))]
    return InferencePlan(x_shape, dtype, calls, queries, tuple(out_shape), tuple(final_shape), tuple(tail))


# ---- training plans: a whole training step bound to C once (fit's fast path) ----
#
# Why: a training step of the seed model at batch 32 makes 16 C calls in ~4.5 ms, and the
# general path spent ~0.9 ms more in Python around them. Most of that is not the Python's own
# work (~0.35 ms when it runs in a loop) but its cold start: after a large C call the
# interpreter's code and objects have left the caches, and every distinct function it then
# runs pays for it again (a 10-iteration Python loop: 0.3 us in a loop, 7 us right after a C
# call; docs/performance.md, "A training step bound to C"). A plan binds the step once: the
# activations, the padded copies, the pool winners and the gradients are buffers it owns; each
# step only binds the input and the loss gradient, asks C for the workspace under the current
# threads, and calls C with the same functions and arguments as the general path, so the same
# bits. The weights and the optimizer's state are bound by pointer (updates in place are seen);
# whoever caches a plan must drop it when an array is replaced (minicnn/training/trainer.py).


class TrainingPlan:
    """forward(x, training=True), backward and the optimizer's update for inputs of one shape and
    dtype, bound to C. Made by training_plan from the face's checked ops. Not thread-safe: one
    fit uses it at a time.

    forward(x, keys=()) -> the last op's output (a buffer the plan reuses: copy what must
        outlive the step); keys: one 64-bit key per dropout op, in order, drawn for this step
    backward(dy): dy with respect to that output; fills the gradient buffers
    update(*scalars): the optimizer's C update of every bound parameter with this step's scalars
    gradients: [(op index, "kernel" or "bias", buffer)] in the ops' order
    """

    def __init__(self, x_shape, dtype, forward_calls, backward_calls, queries, output, gradients, keys=0):
        self.x_shape, self.dtype = x_shape, dtype
        self.keys = keys                        # dropout ops: keys forward needs each step
        self._ctype = _CTYPES[dtype]
        # [(C function, arguments, template, positions of _INPUT / _DY)]; the arguments are the
        # template's with the workspace bound (_bind_work), the positions filled in per call
        self._forward_calls = forward_calls
        self._backward_calls = backward_calls
        self._queries = queries                 # [(C query, its arguments)]: workspace elements
        self.output = output                    # the forward's output buffer
        self.gradients = gradients
        self._work = np.empty(0, dtype=dtype)
        self._bound_work = None                 # (pointer, length) the bound calls hold
        self._update_calls = []                 # [(C function, leading arguments)]
        self._x = self._x_pointer = None        # this step's input, from forward to backward

    def bind_updates(self, kind, updates):
        """kind "adam" or "sgd"; updates: [(param, grad buffer, state arrays)] with state (m, v)
        for Adam and (velocity,) or () for SGD, all C-contiguous and writable in param's dtype
        and size. Returns False, binding nothing, when one is not (the general path updates
        those through NumPy)."""
        function = getattr(lib, f"mc_{kind}_update{_SUFFIX[self.dtype]}")
        calls = []
        for param, grad, state in updates:
            n = param.size
            for array in (param, grad, *state):
                if (type(array) is not np.ndarray or array.dtype != self.dtype or array.size != n
                        or not array.flags.c_contiguous or not array.flags.writeable):
                    return False
            pointers = [_verified(param), (ffi.from_buffer(self._ctype, grad, False), n)]
            pointers += [_verified(array) for array in state] or ([(ffi.NULL, 0)] if kind == "sgd" else [])
            calls.append((function, (n, *(p for pair in pointers for p in pair))))
        self._update_calls = calls
        return True

    def _bind_work(self):
        """Rebind the workspace argument when the current threads need more than is bound."""
        need = max([query(*args) for query, args in self._queries], default=0)
        if self._bound_work is not None and need <= self._work.size:
            return
        self._work = np.empty(max(need, 1) * 5 // 4, dtype=self.dtype)
        work = (ffi.from_buffer(self._ctype, self._work, True), self._work.size)
        for calls in (self._forward_calls, self._backward_calls):
            for i, (function, _, template, fill) in enumerate(calls):
                args = []
                for arg in template:
                    args.extend(work if arg is _WORK else (arg,))
                fill = tuple(j for j, arg in enumerate(args)
                             if arg is _INPUT or arg is _DY or type(arg) is _Key) or None
                calls[i] = (function, tuple(args), template, fill)
        self._bound_work = work

    def forward(self, x, keys=()):
        if not (type(x) is np.ndarray and x.shape == self.x_shape and x.dtype == self.dtype
                and x.flags.c_contiguous):
            _refuse_plan_array("training plan", "x", x, self.x_shape, self.dtype)
        if len(keys) != self.keys or not all(type(k) is int and 0 <= k < 2**64 for k in keys):
            raise ValueError(f"training plan: expected {self.keys} dropout keys, ints in [0, 2**64), "
                             f"received {keys!r}")
        self._bind_work()
        self._x = x   # a dense layer first reads x again in the backward
        self._x_pointer = ffi.from_buffer(self._ctype, x, False)
        self._keys = keys
        self._run(self._forward_calls, None)
        return self.output

    def backward(self, dy):
        if not (type(dy) is np.ndarray and dy.shape == self.output.shape and dy.dtype == self.dtype
                and dy.flags.c_contiguous):
            _refuse_plan_array("training plan", "dy", dy, self.output.shape, self.dtype)
        if self._x is None:
            raise RuntimeError("training plan: backward needs a forward first")
        # the workspace forward bound serves the backward: the threads change only between steps
        self._run(self._backward_calls, ffi.from_buffer(self._ctype, dy, False))
        self._x = self._x_pointer = None

    def _run(self, calls, dy_pointer):
        for function, args, _, fill in calls:
            if fill is not None:
                args = list(args)
                for j in fill:
                    arg = args[j]
                    args[j] = (self._x_pointer if arg is _INPUT else dy_pointer if arg is _DY
                               else self._keys[arg.index])
            status = function(*args)
            if status != 0:
                raise _status_error("training plan", status)

    def update(self, *scalars):
        """Every bound parameter's update with this step's scalars (Adam: lr_t, beta_1, beta_2,
        epsilon; SGD: learning_rate, momentum, nesterov), in the order bind_updates got them."""
        for function, args in self._update_calls:
            status = function(*args, *scalars)
            if status != 0:
                raise _status_error("training plan", status)


def training_plan(steps, x_shape, dtype):
    """A TrainingPlan for `steps`, or None when one cannot be bound (a weight C would need
    copied). steps: [(op, x_shape, y_shape)] the face checked (kernels.training_plan lists the
    ops); the first op with weights computes no input gradient, and the ops before it have no
    backward (the general path's rule for need_input_gradient=False)."""
    try:
        return _bind_training(steps, tuple(x_shape), np.dtype(dtype))
    except _Unbindable:
        return None


def _buffer(shape, dtype):
    """A new array a plan owns, and its (pointer, length)."""
    array = np.empty(shape, dtype=dtype)
    return array, _verified(array)


def _bind_training(steps, x_shape, dtype):
    sfx, itemsize = _SUFFIX[dtype], dtype.itemsize
    weighted = [i for i, (op, _, _) in enumerate(steps) if op[0] in ("conv2d", "conv2d_maxpool", "dense")]
    if not weighted:
        raise _Unbindable   # nothing to train
    forward, queries = [], []
    keys = 0   # dropout ops so far
    source = (_INPUT, int(np.prod(x_shape)))   # what the next op reads: the input or a buffer
    bound = []   # per op: its input, output, padded copy and pool winners (or dropout's mask)
    output = None
    for op, in_shape, y_shape in steps:
        kind = op[0]
        xpad = argmax = None
        if kind == "reshape":
            bound.append((source, source, None, None))   # the same buffer, another shape
            output = output.reshape(y_shape) if output is not None else None
            continue
        output, out = _buffer(y_shape, dtype)
        if kind in ("conv2d", "conv2d_maxpool"):
            kernel, bias, strides, pads, relu = op[1:6]
            geometry = _conv_geometry(in_shape, kernel.shape, strides, pads)
            n, h, w, c = in_shape
            top, bottom, left, right = pads
            xpad = _buffer((n, h + top + bottom, w + left + right, c), dtype)[1]
            weights = [*_weight_pointer(kernel, dtype), *_weight_pointer(bias, dtype)]
            if kind == "conv2d":
                forward.append((getattr(lib, f"mc_conv2d_forward{sfx}"),
                                [geometry, *source, *weights, int(relu), *xpad, *out, _WORK]))
                queries.append((lib.mc_conv2d_forward_workspace, (geometry, itemsize, 1)))
            else:
                pool_geometry = _conv_pool_geometry(in_shape, op)
                argmax = _buffer(y_shape, np.int32)[1]
                forward.append((getattr(lib, f"mc_conv2d_forward_maxpool{sfx}"),
                                [geometry, pool_geometry, *source, *weights, int(relu), *xpad, *out, *argmax,
                                 _WORK]))
                queries.append((lib.mc_conv2d_forward_maxpool_workspace, (geometry, pool_geometry, itemsize, 1)))
        elif kind == "maxpool2d":
            geometry = _pool_geometry(in_shape, *op[1:4])
            argmax = _buffer(y_shape, np.int32)[1]
            forward.append((getattr(lib, f"mc_maxpool2d_forward{sfx}"), [geometry, *source, *out, *argmax]))
        elif kind == "dense":
            kernel, bias, relu = op[1:4]
            n, k, f = in_shape[0], in_shape[1], kernel.shape[1]
            weights = [*_weight_pointer(kernel, dtype), *_weight_pointer(bias, dtype)]
            forward.append((getattr(lib, f"mc_dense_forward{sfx}"),
                            [n, k, f, *source, *weights, int(relu), *out, _WORK]))
            queries.append((lib.mc_dense_forward_workspace, (n, k, f, itemsize)))
        elif kind == "relu":
            forward.append((getattr(lib, f"mc_relu_forward{sfx}"), [output.size, *source, *out]))
        elif kind == "dropout":
            argmax = _buffer(y_shape, np.uint8)[1]   # the mask, kept for the backward
            forward.append((getattr(lib, f"mc_dropout_forward{sfx}"),
                            [output.size, *source, _Key(keys), int(op[1]), float(op[2]), *out, *argmax]))
            keys += 1
        else:
            raise _Unbindable
        bound.append((source, out, xpad, argmax))
        source = out
    # the backward, last op first, down to the first op with weights (which computes no dx): dy
    # arrives as _DY, and each op's dx is the dy of the op before it
    backward, gradients = [], []
    dy = (_DY, output.size)
    for index in range(len(steps) - 1, weighted[0] - 1, -1):
        (op, in_shape, _), (x, out, xpad, argmax) = steps[index], bound[index]
        kind = op[0]
        if kind == "reshape":
            continue
        need_dx = index > weighted[0]
        dx = _buffer(in_shape, dtype)[1] if need_dx else (ffi.NULL, 0)
        if kind in ("maxpool2d", "relu", "dropout"):
            size = int(np.prod(in_shape))
            if kind == "maxpool2d":
                geometry = _pool_geometry(in_shape, *op[1:4])
                backward.append((getattr(lib, f"mc_maxpool2d_backward{sfx}"), [geometry, *dy, *argmax, *dx]))
            elif kind == "relu":   # dx = dy where the output is > 0
                backward.append((getattr(lib, f"mc_relu_backward{sfx}"), [size, *dy, *out, *dx]))
            else:                  # dx = dy * the mask * scale
                backward.append((getattr(lib, f"mc_dropout_backward{sfx}"), [size, *dy, *argmax, float(op[2]), *dx]))
            dy = dx
            continue
        kernel, bias = op[1], op[2]
        relu = op[3] if kind == "dense" else op[5]
        grads = [(index, "kernel", _buffer(kernel.shape, dtype))]
        if bias is not None:
            grads.append((index, "bias", _buffer(bias.shape, dtype)))
        gradients[:0] = [(i, key, array) for i, key, (array, _) in grads]
        dkernel = grads[0][2][1]
        dbias = grads[1][2][1] if bias is not None else (ffi.NULL, 0)
        weights = _weight_pointer(kernel, dtype)
        relu_y = out if relu else (ffi.NULL, 0)   # C masks dy by the fused ReLU's output > 0
        if kind == "dense":
            n, k, f = in_shape[0], in_shape[1], kernel.shape[1]
            backward.append((getattr(lib, f"mc_dense_backward{sfx}"),
                             [n, k, f, *x, *weights, *dy, *relu_y, *dx, *dkernel, *dbias, _WORK]))
            queries.append((lib.mc_dense_backward_workspace, (n, k, f, itemsize)))
        elif kind == "conv2d":
            geometry = _conv_geometry(in_shape, kernel.shape, op[3], op[4])
            backward.append((getattr(lib, f"mc_conv2d_backward{sfx}"),
                             [geometry, *xpad, *weights, *dy, *relu_y, *dx, *dkernel, *dbias, _WORK]))
            queries.append((lib.mc_conv2d_backward_workspace, (geometry, itemsize, int(need_dx), int(relu))))
        else:   # conv2d_maxpool: the pool's gradient goes to its winners inside C
            geometry = _conv_geometry(in_shape, kernel.shape, op[3], op[4])
            backward.append((getattr(lib, f"mc_conv2d_backward_from_maxpool{sfx}"),
                             [geometry, _conv_pool_geometry(in_shape, op), *xpad, *weights, *dy, *relu_y,
                              *argmax, *dx, *dkernel, *dbias, _WORK]))
            queries.append((lib.mc_conv2d_backward_workspace, (geometry, itemsize, int(need_dx), 1)))
        dy = dx
    calls = [[(function, None, tuple(args), None) for function, args in group] for group in (forward, backward)]
    return TrainingPlan(x_shape, dtype, calls[0], calls[1], queries, output, gradients, keys)


def _conv_pool_geometry(in_shape, op):
    """The pool geometry of a ("conv2d_maxpool", kernel, bias, strides, pads, relu, pool_size,
    pool_strides) op on inputs of in_shape."""
    kernel, strides, pads, pool_size, pool_strides = op[1], op[3], op[4], op[6], op[7]
    n, h, w, _ = in_shape
    oh, ow = window_output_shape(h, w, kernel.shape[:2], strides, pads)
    return _pool_geometry((n, oh, ow, kernel.shape[3]), pool_size, pool_strides, (0, 0, 0, 0))
