"""The kernel face: the only door from the layers to the number crunching.

Two engines sit behind it with the same functions and the same numerics:

    numpy   pure NumPy im2col (numpy_engine.py), always available
    c       the cffi extension ``minicnn._kernels`` built from csrc/ (c_engine.py)

Layers call the functions below and never know which engine runs. The engine is chosen by
``MINICNN_BACKEND=auto|c|numpy`` at import (auto = C when it was built) and can be changed with
``set_backend``; ``backend_info`` says which one runs, with its build flags and threads.

The functions: conv2d_forward / conv2d_relu_forward (ReLU fused into the epilogue) /
conv2d_backward, maxpool2d_forward / maxpool2d_backward, dense_forward (optional fused ReLU) /
dense_backward, avgpool2d_forward / avgpool2d_backward, global_avgpool2d_forward /
global_avgpool2d_backward, batchnorm_forward / batchnorm_backward, relu_forward / relu_backward
(the ReLU layer), dropout_forward / dropout_backward, and the in-place optimizer
steps optimizer_adam_update / optimizer_sgd_update. Every engine implements all of them. The fused and dense entry points exist for
speed: a separate ReLU costs a pass over the activations each way, and running the dense
products on the C engine's own threads keeps OpenBLAS's spinning pool from fighting them for the
two cores (docs/architecture.md, "The C engine").

Every forward returns ``(y, cache)``; the cache is opaque and remembers the engine that made
it, so a backward always runs on the engine of its forward.

Arrays are validated here, once, for every engine (rank, dtype agreement, shapes, channel
counts, window fits, dy against the forward's output): the engines trust these checks. The C
wrapper only converts arrays to pointers, refusing a buffer whose dtype, contiguity,
writability or length would be wrong for C, and C checks the lengths once more.
"""
import os
import warnings
from collections import namedtuple

import numpy as np

from ..config import environment_switch
from . import load, numpy_engine
from .geometry import output_shape_2d, pads_2d, window_output_shape  # noqa: F401  (output_shape_2d, pads_2d: re-exported for layers/tests)

_BACKEND_ENV = "MINICNN_BACKEND"
_BUILD_HINT = (
    "build it with `pip install -e .` (or `pip install .`) from the minicnn source tree; this "
    "needs a C compiler, Python's headers (python3-dev) and cffi. Use MINICNN_BACKEND=numpy (or minicnn.set_backend('numpy')) "
    "to run on the pure-NumPy engine instead"
)

_engines = {"numpy": numpy_engine}
_c_engine_error = None
try:
    from . import c_engine as _c_engine
    _engines["c"] = _c_engine
except (ImportError, AttributeError, OSError) as error:
    # Not built, built for another platform, or a stale build missing a symbol: fall back to
    # NumPy (loudly, see _select_from_environment) rather than fail to import minicnn at all.
    _c_engine_error = error

_active = numpy_engine


def available_backends():
    """Names of the engines that can run here, e.g. ['c', 'numpy']."""
    return sorted(_engines)


def set_backend(name):
    """Select the engine: 'auto' (C when built, else NumPy), 'c' or 'numpy'.

    Raises ImportError for 'c' when the extension was not built, and ValueError for an
    unknown name.
    """
    global _active
    if not isinstance(name, str) or name.lower() not in ("auto", "c", "numpy"):
        raise ValueError(f"backend must be 'auto', 'c' or 'numpy', received {name!r}")
    name = name.lower()
    if name == "auto":
        name = "c" if "c" in _engines else "numpy"
    if name not in _engines:
        raise ImportError(
            f"the C engine (minicnn._kernels) is not available ({_c_engine_error}); {_BUILD_HINT}"
        )
    _active = _engines[name]


def get_backend():
    """Name of the engine that runs now: 'c' or 'numpy'."""
    return _active.NAME


def backend_info():
    """What runs: engine name, compiler flags, SIMD level, threads, and why C is missing if it is."""
    info = dict(_active.engine_info())
    info["available"] = available_backends()
    if _active is not numpy_engine:
        info["adaptive_threads"] = _adaptive_threads
        info["threads_left_by_others"] = _load_cap
    if _c_engine_error is not None:
        info["c_engine_error"] = str(_c_engine_error)
    return info


_ADAPTIVE_THREADS_ENV = "MINICNN_ADAPTIVE_THREADS"
_adaptive_threads = environment_switch(_ADAPTIVE_THREADS_ENV)
_load_monitor = None
_load_cap = None


def set_adaptive_threads(enabled):
    """Whether training, evaluation and prediction cap the C engine's threads at the CPUs other
    processes leave free (on by default; MINICNN_ADAPTIVE_THREADS=0 turns it off at import).
    Off, every call runs the threads set_num_threads or OMP_NUM_THREADS ask for, even when
    another process keeps those CPUs busy (load.py says why that is slow)."""
    global _adaptive_threads, _load_cap
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_adaptive_threads: enabled must be True or False, received {enabled!r}")
    _adaptive_threads = bool(enabled)
    if not _adaptive_threads and "c" in _engines:
        _engines["c"].set_load_cap(None)
        _load_cap = None


def adaptive_threads():
    """True when the C engine's threads follow the machine's load (set_adaptive_threads)."""
    return _adaptive_threads


def adapt_threads_to_load():
    """Between steps: cap the C engine's threads at the CPUs other processes leave free, measured
    at most every load.INTERVAL_SECONDS (the trainer calls this before every batch)."""
    global _load_monitor, _load_cap
    if not _adaptive_threads or _active is numpy_engine:
        return
    if _load_monitor is None:
        _load_monitor = load.LoadMonitor()
    cap = _load_monitor.poll()
    if cap != _load_cap:
        _active.set_load_cap(cap)
        _load_cap = cap


def _select_from_environment():
    requested = os.environ.get(_BACKEND_ENV, "auto").strip() or "auto"
    set_backend(requested)  # ImportError if 'c' was forced and is missing: that is the point
    if requested.lower() == "auto" and "c" not in _engines:
        warnings.warn(
            f"minicnn is running on its pure-NumPy engine because the C engine could not be "
            f"loaded ({_c_engine_error}); {_BUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )


# The C engine takes strides, pads and dimensions up to 2**24 (MC_DIM_MAX in csrc/kernels.c, and
# the layers' LARGEST_DIMENSION): no real geometry comes near it, and no index arithmetic can
# overflow below it. Larger strides and pads are refused here, on every engine, naming the limit.
_LARGEST = 2**24


# The checks below run on every kernel call, so each starts with the test that passes for good
# arguments and only then explains a failure: a training step makes ~25 calls, and these
# checks once cost 5 us of a 13 us convolution call at batch 1 (docs/performance.md, "Python").
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_image_batch(x, who, name="x"):
    if type(x) is np.ndarray and x.ndim == 4 and x.dtype in _FLOAT_DTYPES and 0 not in x.shape:
        return
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: {name} must be a NumPy array, received {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(
            f"{who}: {name} must be 4-D (batch, height, width, channels), received shape {x.shape}"
        )
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: {name} must be float32 or float64, received dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{who}: {name} must have no empty axis, received shape {x.shape}")


def _check_optional_vector(value, who, name):
    if value is not None and not isinstance(value, np.ndarray):
        raise TypeError(f"{who}: {name} must be a NumPy array or None, received {type(value).__name__}")


def _check_same_dtype(who, **arrays):
    first, *others = (a.dtype for a in arrays.values() if a is not None)
    if all(dtype == first for dtype in others):
        return
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{name}={dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{who}: all arrays must share one dtype, received {listed}")


def _check_grad(dy, expected_shape, dtype, who):
    if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected_shape):
        got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
        raise ValueError(f"{who}: upstream gradient must have shape {tuple(expected_shape)}, received {got}")
    if dy.dtype != dtype:
        raise TypeError(f"{who}: upstream gradient must be {dtype}, received {dy.dtype}")


def _int_tuple(value, length, minimum, who, name):
    """value as a tuple of `length` Python ints in [minimum, 2**24], or a clear error."""
    if type(value) is tuple and len(value) == length:
        for v in value:
            if type(v) is not int or v < minimum or v > _LARGEST:
                break
        else:
            return value
    description = f"{length} integers >= {minimum}"
    if not isinstance(value, (tuple, list, np.ndarray)):
        raise TypeError(f"{who}: {name} must be a tuple of {description}, received {value!r}")
    values = tuple(value)
    if len(values) != length or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and minimum <= v <= _LARGEST
        for v in values
    ):
        raise ValueError(f"{who}: {name} must be {description} (at most {_LARGEST}), received {value!r}")
    return tuple(int(v) for v in values)


def _check_window(x, window, strides, pads, who, what):
    """Normalise strides and pads; the window must fit the padded input, and no pad may be as
    large as the window (such padding would only add outputs made of padding alone)."""
    strides = _int_tuple(strides, 2, 1, who, "strides")
    pads = _int_tuple(pads, 4, 0, who, "pads")
    kh, kw = window
    if max(pads[0], pads[1]) >= kh or max(pads[2], pads[3]) >= kw:
        raise ValueError(f"{who}: every pad must be smaller than the {kh}x{kw} {what}, received pads {pads}")
    if x.shape[1] + pads[0] + pads[1] < kh or x.shape[2] + pads[2] + pads[3] < kw:
        raise ValueError(
            f"{who}: a {kh}x{kw} {what} does not fit the padded input {x.shape[1:3]} with pads {pads}"
        )
    return strides, pads


def _check_conv_arguments(x, kernel, bias, strides, pads, who):
    """Validate a convolution's arguments; returns (strides, pads) as tuples of ints."""
    _check_image_batch(x, who)
    if not isinstance(kernel, np.ndarray) or kernel.ndim != 4 or 0 in kernel.shape:
        raise ValueError(
            f"{who}: kernel must be a 4-D array (KH, KW, C_in, F) without empty axes, "
            f"received {getattr(kernel, 'shape', type(kernel).__name__)!r}"
        )
    _check_optional_vector(bias, who, "bias")
    _check_same_dtype(who, x=x, kernel=kernel, bias=bias)
    kh, kw, c, f = kernel.shape
    if x.shape[3] != c:
        raise ValueError(f"{who}: x has {x.shape[3]} channels but the kernel expects {c}")
    if bias is not None and bias.shape != (f,):
        raise ValueError(f"{who}: bias must have shape ({f},), received {bias.shape}")
    return _check_window(x, (kh, kw), strides, pads, who, "kernel")


# What every forward returns beside y: opaque to the caller. It remembers the engine that made
# it (a backward always runs there), the output's shape and dtype (to check dy once, here) and
# that engine's own cache.
class _Cache(namedtuple("_Cache", "kind engine y_shape dtype engine_cache")):
    __slots__ = ()

    def __reduce__(self):
        # the engine is a module, which neither pickle nor deepcopy takes: by name (a layer
        # copied between a training forward and its backward carries its cache along)
        name = next((name for name, engine in _engines.items() if engine is self.engine), None)
        if name is None:
            raise TypeError(f"a forward cache of an unknown engine ({self.engine!r}) cannot be copied")
        return _cache_from_engine_name, (self.kind, name, self.y_shape, self.dtype, self.engine_cache)


def _cache_from_engine_name(kind, engine_name, y_shape, dtype, engine_cache):
    engine = _engines.get(engine_name)
    if engine is None:
        raise ValueError(f"a forward cache made by the {engine_name!r} engine, which is not available here "
                         f"({_c_engine_error}); run the forward again on this machine")
    return _Cache(kind, engine, y_shape, dtype, engine_cache)


def _unpack_cache(cache, kind, who, also=None):
    """The face cache of a `kind` (or `also`) forward, or a TypeError naming what was expected."""
    if not (isinstance(cache, _Cache) and cache.kind in (kind, also)):
        made_by = {"conv2d": "conv2d_forward or conv2d_relu_forward"}.get(kind, f"{kind}_forward")
        if isinstance(cache, _Cache) and cache.kind == "conv2d_under_maxpool":
            raise TypeError(f"{who}: this convolution's forward ran with its max pool (conv2d_maxpool_forward), "
                            f"which keeps no output of its own; its backward is conv2d_backward_from_maxpool")
        raise TypeError(f"{who}: cache must be the one {made_by} returned, received {type(cache).__name__}")
    return cache


def conv2d_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """2-D convolution (cross-correlation, as in every framework), NHWC.

    x: (N, H, W, C); kernel: (KH, KW, C, F); bias: (F,) or None; strides: (sh, sw);
    pads: (top, bottom, left, right) zero padding. Returns (y, cache) with
    y: (N, OH, OW, F), OH = 1 + (H + top + bottom - KH) // sh, OW likewise.
    keep_cache=False (inference: no backward follows) returns (y, None), the same y: the
    engine then keeps nothing for a backward (the C engine never writes the padded batch).
    """
    strides, pads = _check_conv_arguments(x, kernel, bias, strides, pads, "conv2d_forward")
    y, cache = _active.conv2d_forward(x, kernel, bias, strides, pads, bool(keep_cache))
    return y, _Cache("conv2d", _active, y.shape, y.dtype, cache) if keep_cache else None


def conv2d_backward(dy, cache, need_dx=True):
    """Gradients of conv2d_forward: returns (dx or None, dkernel, dbias or None).

    dy: (N, OH, OW, F) like the forward output. need_dx=False skips the input gradient
    (the first layer of a model never needs it).
    """
    cache = _unpack_cache(cache, "conv2d", "conv2d_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "conv2d_backward")
    return cache.engine.conv2d_backward(dy, cache.engine_cache, need_dx)


def maxpool2d_forward(x, pool_size, strides, pads):
    """Max pooling, NHWC: x (N, H, W, C) -> (y (N, OH, OW, C), cache).

    pads (top, bottom, left, right) are filled with -inf, so they never win.
    Ties: the first maximum in row-major window order takes the whole gradient (PyTorch's rule);
    a NaN in a window propagates to the output.
    """
    who = "maxpool2d_forward"
    _check_image_batch(x, who)
    pool_size = _int_tuple(pool_size, 2, 1, who, "pool_size")
    strides, pads = _check_window(x, pool_size, strides, pads, who, "window")
    y, cache = _active.maxpool2d_forward(x, pool_size, strides, pads)
    return y, _Cache("maxpool2d", _active, y.shape, y.dtype, cache)


def maxpool2d_backward(dy, cache):
    """Gradient of maxpool2d_forward: dy (N, OH, OW, C) -> dx (N, H, W, C)."""
    cache = _unpack_cache(cache, "maxpool2d", "maxpool2d_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "maxpool2d_backward")
    return cache.engine.maxpool2d_backward(dy, cache.engine_cache)


def maxpool_follows_conv_exactly(pool_size, strides, pads):
    """Whether conv2d_backward_from_maxpool takes a max pool of this geometry: windows that
    neither overlap nor reach padding, of at most 16 cells (the C engine's limit)."""
    return (pads == (0, 0, 0, 0) and strides[0] >= pool_size[0] and strides[1] >= pool_size[1]
            and pool_size[0] * pool_size[1] <= 16)


def conv2d_maxpool_forward(x, kernel, bias, strides, pads, pool_size, pool_strides, relu=False,
                           keep_cache=True):
    """maxpool2d_forward((conv2d_relu_forward if relu else conv2d_forward)(x, kernel, bias,
    strides, pads)[0], pool_size, pool_strides, (0, 0, 0, 0)) as one operation, bit for bit;
    returns (pooled, conv cache, pool cache), or (pooled, None, None) with keep_cache=False.

    Shapes as the two forwards; the pool (see maxpool_follows_conv_exactly) has no padding.
    The C engine runs the images in chunks whose convolution output is read by the pool while
    still in the caches and never kept, so the convolution's backward is
    conv2d_backward_from_maxpool(dy, conv cache, pool cache); maxpool2d_backward takes the pool
    cache as usual.
    """
    who = "conv2d_maxpool_forward"
    strides, pads = _check_conv_arguments(x, kernel, bias, strides, pads, who)
    pool_size = _int_tuple(pool_size, 2, 1, who, "pool_size")
    pool_strides = _int_tuple(pool_strides, 2, 1, who, "pool_strides")
    if not maxpool_follows_conv_exactly(pool_size, pool_strides, (0, 0, 0, 0)):
        raise ValueError(f"{who}: the pool's windows must not overlap and have at most 16 cells; received "
                         f"pool_size {pool_size}, pool_strides {pool_strides}")
    y_shape = (x.shape[0], *window_output_shape(x.shape[1], x.shape[2], kernel.shape[:2], strides, pads),
               kernel.shape[3])
    if y_shape[1] < pool_size[0] or y_shape[2] < pool_size[1]:
        raise ValueError(f"{who}: a {pool_size[0]}x{pool_size[1]} pool does not fit the convolution's "
                         f"output {y_shape[1:3]}")
    pooled, cache, pool_cache = _active.conv2d_maxpool_forward(x, kernel, bias, strides, pads, bool(relu),
                                                               pool_size, pool_strides, bool(keep_cache))
    if not keep_cache:
        return pooled, None, None
    return (pooled, _Cache("conv2d_under_maxpool", _active, y_shape, pooled.dtype, cache),
            _Cache("maxpool2d", _active, pooled.shape, pooled.dtype, pool_cache))


def conv2d_backward_from_maxpool(dy, cache, pool_cache, need_dx=True):
    """conv2d_backward(maxpool2d_backward(dy, pool_cache), cache, need_dx), bit for bit, for a
    max pool over the convolution's output (see maxpool_follows_conv_exactly); returns
    (dx or None, dkernel, dbias or None).

    dy: the gradient of the pool's output. The C engine spreads it to each window's winner
    inside the convolution's backward, image by image, instead of writing and reading back the
    whole batch's gradient of the convolution's output.
    """
    who = "conv2d_backward_from_maxpool"
    cache = _unpack_cache(cache, "conv2d", who, also="conv2d_under_maxpool")
    pool_cache = _unpack_cache(pool_cache, "maxpool2d", who)
    _check_grad(dy, pool_cache.y_shape, pool_cache.dtype, who)
    pool = pool_cache.engine_cache
    if pool_cache.engine is not cache.engine or pool.x_shape != cache.y_shape:
        raise ValueError(f"{who}: the pool's cache must come from a max pool over this convolution's "
                         f"output {cache.y_shape} on the same engine, received one over {pool.x_shape}")
    if not maxpool_follows_conv_exactly(pool.pool_size, pool.strides, pool.pads):
        raise ValueError(f"{who}: the pool's windows must neither overlap nor reach padding and have "
                         f"at most 16 cells; received pool_size {pool.pool_size}, strides {pool.strides}, "
                         f"pads {pool.pads}")
    return cache.engine.conv2d_backward_from_maxpool(dy, cache.engine_cache, pool, need_dx)


def conv2d_relu_forward(x, kernel, bias, strides, pads, keep_cache=True):
    """max(conv2d_forward(x, kernel, bias, strides, pads), 0) as one operation; returns (y, cache)
    ((y, None) with keep_cache=False, as conv2d_forward).

    Shapes as conv2d_forward. conv2d_backward(dy, cache, need_dx) then takes dy with respect
    to the ReLU's output and applies the ReLU's gradient itself: dy where y > 0, else 0 (the
    gradient at exactly 0 is 0, as in Keras and PyTorch). NaN propagates forward like np.maximum.
    The cache may read y itself (the C engine's mask): leave it unchanged until the backward
    (the layers hand it on read-only while they keep the cache).
    """
    strides, pads = _check_conv_arguments(x, kernel, bias, strides, pads, "conv2d_relu_forward")
    y, cache = _active.conv2d_relu_forward(x, kernel, bias, strides, pads, bool(keep_cache))
    return y, _Cache("conv2d", _active, y.shape, y.dtype, cache) if keep_cache else None


def dense_forward(x, kernel, bias, relu=False):
    """y = x @ kernel + bias, then max(y, 0) when relu; returns (y, cache).

    x: (N, K); kernel: (K, F) as in Keras; bias: (F,) or None -> y: (N, F). The cache reads x,
    and with relu y itself (the C engine's mask): leave both unchanged until the backward (the
    layers hand y on read-only while they keep the cache).
    """
    who = "dense_forward"
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"{who}: x must be 2-D (batch, features), received {getattr(x, 'shape', x)!r}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: x must be float32 or float64, received dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{who}: x must have no empty axis, received shape {x.shape}")
    if (not isinstance(kernel, np.ndarray) or kernel.ndim != 2 or kernel.shape[0] != x.shape[1]
            or kernel.shape[1] == 0):
        raise ValueError(
            f"{who}: kernel must be 2-D ({x.shape[1]}, units) with units >= 1, received "
            f"{getattr(kernel, 'shape', type(kernel).__name__)!r}"
        )
    _check_optional_vector(bias, who, "bias")
    _check_same_dtype(who, x=x, kernel=kernel, bias=bias)
    if bias is not None and bias.shape != (kernel.shape[1],):
        raise ValueError(f"{who}: bias must have shape ({kernel.shape[1]},), received {bias.shape}")
    y, cache = _active.dense_forward(x, kernel, bias, bool(relu))
    return y, _Cache("dense", _active, y.shape, y.dtype, cache)


def dense_backward(dy, cache, need_dx=True):
    """Gradients of dense_forward: (dx (N, K) or None, dkernel (K, F), dbias (F,) or None).

    dy: (N, F), with respect to the output (after the ReLU when relu=True).
    """
    cache = _unpack_cache(cache, "dense", "dense_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "dense_backward")
    return cache.engine.dense_backward(dy, cache.engine_cache, need_dx)


def _check_update_arrays(who, param, grad, **state):
    """param, grad and the state arrays: ndarrays of one float dtype and param's shape; param and
    the state writable (they are updated in place); no two sharing memory (the engines read and
    write them element by element in different orders, so an overlap gives each engine its own
    wrong answer)."""
    if type(param) is np.ndarray and param.dtype in _FLOAT_DTYPES and param.flags.writeable:
        shape, dtype = param.shape, param.dtype
        if type(grad) is np.ndarray and grad.dtype == dtype and grad.shape == shape and all(
                type(a) is np.ndarray and a.dtype == dtype and a.shape == shape and a.flags.writeable
                for a in state.values()):
            _check_apart(who, {"param": param, "grad": grad, **state})
            return
    arrays = {"param": param, "grad": grad, **state}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{who}: {name} must be a NumPy array, received {type(a).__name__}")
    if param.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: param must be float32 or float64, received dtype {param.dtype}")
    _check_same_dtype(who, **arrays)
    for name, a in arrays.items():
        if a.shape != param.shape:
            raise ValueError(f"{who}: {name} must have param's shape {param.shape}, received {a.shape}")
        if name != "grad" and not a.flags.writeable:
            raise ValueError(f"{who}: {name} must be writable (it is updated in place)")
    _check_apart(who, arrays)


def _is_number(value):
    """A real number, a NumPy scalar too; not a bool, nor a "0.1" that float() would read."""
    return type(value) is float or (not isinstance(value, (bool, np.bool_)) and
                                    isinstance(value, (int, float, np.integer, np.floating)))


def _check_numbers(who, **values):
    for name, value in values.items():
        if not _is_number(value):
            raise TypeError(f"{who}: {name} must be a number, received {value!r}")


def _check_apart(who, arrays):
    names = list(arrays)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            # bounds only (~0.2 us a pair): separate allocations never overlap
            if np.may_share_memory(arrays[first], arrays[second]):
                raise ValueError(f"{who}: {first} and {second} share memory; param, grad and the "
                                 f"optimizer state must be separate arrays")


def dropout_forward(x, rate, key):
    """Inverted dropout of x (float32/float64, any shape) for one training step: each element
    kept or zeroed by the top 24 bits of a SplitMix64 hash of (key, its index), kept with
    probability 1 - rate (to 2^-24), kept ones multiplied by 1 / (1 - rate) rounded to x's dtype.
    key: an int in [0, 2^64), drawn by the layer once per step. Returns (y, cache); the same
    key gives the same mask on every engine and thread count."""
    who = "dropout_forward"
    _check_float_array(x, who, "x")
    if not _is_number(rate) or not 0 <= rate < 1:
        raise ValueError(f"{who}: rate must be a number in [0, 1), received {rate!r}")
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < 2**64:
        raise ValueError(f"{who}: key must be an integer in [0, 2**64), received {key!r}")
    threshold, scale = _dropout_constants(float(rate), x.dtype)
    y, cache = _active.dropout_forward(x, int(key), threshold, scale)
    return y, _Cache("dropout", _active, y.shape, y.dtype, cache)


def _dropout_constants(rate, dtype):
    """(threshold, scale) of a dropout rate: an element is kept when the top 24 bits of its
    hash are >= threshold = round(rate * 2^24), and a kept one is multiplied by scale =
    1 / (1 - rate) rounded to the dtype (dropout_forward and the training plans share them)."""
    return round(rate * numpy_engine.DROPOUT_ONE), float(np.dtype(dtype).type(1.0 / (1.0 - rate)))


def dropout_backward(dy, cache):
    """dx = dy * the forward's mask * 1 / (1 - rate)."""
    cache = _unpack_cache(cache, "dropout", "dropout_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "dropout_backward")
    return cache.engine.dropout_backward(dy, cache.engine_cache)


def relu_forward(x):
    """y = max(x, 0) elementwise for a float32/float64 array of any shape (the ReLU layer); NaN
    stays NaN and -0.0 becomes +0.0, as with np.maximum(x, 0)."""
    _check_float_array(x, "relu_forward", "x")
    return _active.relu_forward(x)


def relu_backward(dy, y):
    """dx = dy * (y > 0) for y = relu_forward(x): the gradient at exactly 0 is 0 (Keras and
    PyTorch); a product, so a NaN in dy stays NaN."""
    who = "relu_backward"
    _check_float_array(y, who, "y")
    _check_grad(dy, y.shape, y.dtype, who)
    return _active.relu_backward(dy, y)


def optimizer_adam_update(param, grad, m, v, lr_t, beta_1, beta_2, epsilon, scratch=None):
    """One Adam step, Keras' rule, IN PLACE on param and its moments m and v:

        m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
        param -= lr_t m / (sqrt(v) + epsilon)

    lr_t is the step's bias-corrected rate (minicnn/training/optimizers.py computes it once per
    step). Each coefficient is rounded once to the dtype and every operation rounds on its own,
    so all engines give the NumPy engine's bits. scratch (param's shape and dtype) spares the
    NumPy engine an allocation; the C engine needs none.
    """
    _check_update_arrays("optimizer_adam_update", param, grad, m=m, v=v)
    _check_numbers("optimizer_adam_update", lr_t=lr_t, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    if param.size == 0:
        return   # nothing to update, on every engine
    if scratch is not None and (scratch.shape != param.shape or scratch.dtype != param.dtype):
        scratch = None
    _active.adam_update(param, grad, m, v, lr_t, beta_1, beta_2, epsilon, scratch)


def optimizer_sgd_update(param, grad, velocity, learning_rate, momentum, nesterov, scratch=None):
    """One SGD step, Keras' rule, IN PLACE: velocity None: param -= lr g; else velocity =
    momentum velocity - lr g and param += velocity (nesterov: param += momentum velocity - lr g)."""
    state = {} if velocity is None else {"velocity": velocity}
    _check_update_arrays("optimizer_sgd_update", param, grad, **state)
    _check_numbers("optimizer_sgd_update", learning_rate=learning_rate, momentum=momentum)
    if param.size == 0:
        return   # nothing to update, on every engine
    if scratch is not None and (scratch.shape != param.shape or scratch.dtype != param.dtype):
        scratch = None
    _active.sgd_update(param, grad, velocity, learning_rate, momentum, nesterov, scratch)


# -- average pooling and batch normalisation --------------------------------------------------

def _check_float_array(value, who, name, ndim=None):
    """A float32/float64 array without empty axes, of `ndim` dimensions (any when None)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{who}: {name} must be a NumPy array, received {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
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
    _check_image_batch(x, who)
    pool_size = _int_tuple(pool_size, 2, 1, who, "pool_size")
    strides, pads = _check_window(x, pool_size, strides, pads, who, "window")
    engine = _active
    y, cache = engine.avgpool2d_forward(x, pool_size, strides, pads)
    return y, _Cache("avgpool2d", engine, y.shape, y.dtype, cache)


def avgpool2d_backward(dy, cache):
    """Gradient of avgpool2d_forward: dy (N, OH, OW, C) -> dx (N, H, W, C)."""
    cache = _unpack_cache(cache, "avgpool2d", "avgpool2d_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "avgpool2d_backward")
    return cache.engine.avgpool2d_backward(dy, cache.engine_cache)


def global_avgpool2d_forward(x):
    """Mean over height and width: x (N, H, W, C) -> (y (N, C), cache)."""
    _check_image_batch(x, "global_avgpool2d_forward")
    engine = _active
    y, cache = engine.global_avgpool2d_forward(x)
    return y, _Cache("global_avgpool2d", engine, y.shape, y.dtype, cache)


def global_avgpool2d_backward(dy, cache):
    """Gradient of global_avgpool2d_forward: dy (N, C) -> dx (N, H, W, C)."""
    cache = _unpack_cache(cache, "global_avgpool2d", "global_avgpool2d_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "global_avgpool2d_backward")
    return cache.engine.global_avgpool2d_backward(dy, cache.engine_cache)


def batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, epsilon, training, relu=False):
    """Batch normalisation of x: (M, C), one column per channel.

    training=True: y = gamma * (x - mean) / sqrt(var + epsilon) + beta with the batch's mean
    and BIASED variance (divided by M); returns (y, mean (C,), var (C,), cache). The moving
    statistics are not used and not updated here (the layer updates them).
    training=False: the same with moving_mean and moving_variance; returns (y, None, None, None).
    gamma and beta are (C,) arrays or None (scale=False / center=False).
    relu=True also applies a ReLU to y in the same pass (relu_forward's rule), and the backward
    then takes dy with respect to that ReLU's output: the two layers' results, bit for bit.
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
    _check_same_dtype(who, x=x, **vectors)
    if not _is_number(epsilon) or not epsilon > 0:
        raise ValueError(f"{who}: epsilon must be a positive number, received {epsilon!r}")
    engine = _active
    if not training:
        return engine.batchnorm_forward_inference(x, gamma, beta, moving_mean, moving_variance,
                                                  float(epsilon), bool(relu)), None, None, None
    y, mean, var, cache = engine.batchnorm_forward_training(x, gamma, beta, float(epsilon), bool(relu))
    return y, mean, var, _Cache("batchnorm", engine, y.shape, y.dtype, cache)


def batchnorm_backward(dy, cache, need_dx=True):
    """Gradients of a training batchnorm_forward: (dx (M, C) or None, dgamma (C,) or None,
    dbeta (C,) or None); dx includes the batch statistics' dependence on x."""
    cache = _unpack_cache(cache, "batchnorm", "batchnorm_backward")
    _check_grad(dy, cache.y_shape, cache.dtype, "batchnorm_backward")
    return cache.engine.batchnorm_backward(dy, cache.engine_cache, bool(need_dx))


_select_from_environment()


# -- inference plans (the small-batch fast path; c_engine.py, "inference plans", says why) ------

def inference_plan(ops, x_shape, dtype):
    """A prepared forward(x, training=False) for inputs of x_shape (batch axis included) and
    dtype, or None when the active engine has none for these ops: the caller then runs its
    layers one by one. plan.run(x) returns the general path's bits.

    ops, in order (the arrays are the layers' own, read in place by the plan):
        ("conv2d", kernel, bias, strides, pads, relu)      ("dense", kernel, bias, relu)
        ("maxpool2d" or "avgpool2d", pool_size, strides, pads)
        ("batchnorm", gamma, beta, moving_mean, moving_variance, epsilon, relu)  on (..., C)
        ("relu",)   ("reshape", shape without the batch axis)   ("function", f): y = f(y)
    A batchnorm followed by a relu becomes one op, as Sequential.forward runs those layers.
    Every op is checked here the general path's way, by running it once through this face on
    zeros, before the engine binds any pointer.
    """
    make = getattr(_active, "inference_plan", None)
    if make is None:
        return None
    fused = []
    for op in ops:
        if op[0] == "relu" and fused and fused[-1][0] == "batchnorm" and not fused[-1][-1]:
            fused[-1] = fused[-1][:-1] + (True,)
        else:
            fused.append(tuple(op))
    x = np.zeros(x_shape, dtype=dtype)
    steps = []
    for op in fused:
        y = _run_inference_op(op, x)
        steps.append((op, x.shape, y.shape))
        x = y
    return make(steps, tuple(x_shape), dtype)


def training_plan(ops, x_shape, dtype):
    """A prepared training step for inputs of x_shape (batch axis included) and dtype: forward
    with training=True, backward and the optimizer's update bound to the engine once, or None
    when the active engine has none for these ops (the caller then runs its layers one by one).
    The same calls as the general path, so the same bits.

    ops, in order (the arrays are the layers' own, read and updated in place by the plan):
        ("conv2d", kernel, bias, strides, pads, relu)     ("dense", kernel, bias, relu)
        ("conv2d_maxpool", kernel, bias, strides, pads, relu, pool_size, pool_strides)
        ("maxpool2d", pool_size, strides, pads)            ("reshape", shape without the batch axis)
        ("relu",)                                          ("dropout", rate): rate in (0, 1), its
                                                           key passed to plan.forward per step
    The first op with weights computes no input gradient and the ops before it no backward, as
    Sequential.backward(need_input_gradient=False) runs them. Every op is checked here the
    general path's way, by running its forward once through this face on zeros, before the
    engine binds any pointer: on one image (no check depends on the batch, and fit makes a plan
    per call). plan.forward(x, keys), plan.backward(dy), plan.update(*scalars) after
    plan.bind_updates(kind, updates): see c_engine.TrainingPlan.
    """
    make = getattr(_active, "training_plan", None)
    if make is None:
        return None
    batch = _int_tuple((x_shape[0],), 1, 1, "training_plan", "the batch")[0]
    x = np.zeros((1, *x_shape[1:]), dtype=dtype)
    steps = []
    for op in ops:
        op = tuple(op)
        if op[0] == "conv2d_maxpool":
            _, kernel, bias, strides, pads, relu, pool_size, pool_strides = op
            y = conv2d_maxpool_forward(x, kernel, bias, strides, pads, pool_size, pool_strides, relu,
                                       keep_cache=False)[0]
        elif op[0] in ("conv2d", "maxpool2d", "dense", "reshape", "relu"):
            y = _run_inference_op(op, x)
        elif op[0] == "dropout":
            y = dropout_forward(x, op[1], 0)[0]
            op = ("dropout", *_dropout_constants(op[1], dtype))   # the engine's (threshold, scale)
        else:
            raise ValueError(f"training_plan: unknown op {op[0]!r}")
        steps.append((op, (batch, *x.shape[1:]), (batch, *y.shape[1:])))
        x = y
    return make(steps, tuple(x_shape), dtype)


def _run_inference_op(op, x):
    kind = op[0]
    if kind == "conv2d":
        _, kernel, bias, strides, pads, relu = op
        return (conv2d_relu_forward if relu else conv2d_forward)(x, kernel, bias, strides, pads,
                                                                 keep_cache=False)[0]
    if kind in ("maxpool2d", "avgpool2d"):
        return (maxpool2d_forward if kind == "maxpool2d" else avgpool2d_forward)(x, *op[1:])[0]
    if kind == "dense":
        return dense_forward(x, *op[1:])[0]
    if kind == "batchnorm":
        _, gamma, beta, mean, var, epsilon, relu = op
        columns = x.reshape(-1, x.shape[-1])
        return batchnorm_forward(columns, gamma, beta, mean, var, epsilon, False, relu)[0].reshape(x.shape)
    if kind == "relu":
        return relu_forward(x)
    if kind == "reshape":
        return x.reshape((x.shape[0],) + tuple(op[1]))
    if kind == "function":
        return op[1](x)
    raise ValueError(f"inference_plan: unknown op {kind!r}")
