"""The C engine's average pooling and batch normalisation against the NumPy engine, and their
C entry points' own checks.

Parity tolerances as test_c_engine.py: float64 within 1e-12 and float32 within 1e-5 of the
largest magnitude of the NumPy engine's array. Every case runs at every SIMD level the CPU
supports and on 1 to 4 threads (the larger cases are above the C engine's threshold for
waking a second thread, 2^17 operations).
"""
import os

import numpy as np
import pytest

from minicnn import kernels
from minicnn.kernels import numpy_engine
from minicnn.kernels.geometry import pads_2d

C_BUILT = "c" in kernels.available_backends()
pytestmark = pytest.mark.skipif(not C_BUILT, reason=f"C engine not built here: "
                                f"{kernels.backend_info().get('c_engine_error')}")
if C_BUILT:
    from minicnn.kernels import c_engine
    from minicnn._kernels import ffi, lib
    SIMD_LEVELS = c_engine.simd_levels()
else:
    SIMD_LEVELS = ["unbuilt"]

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture(params=[(level, threads) for level in SIMD_LEVELS for threads in (1, 2, 3, 4)],
                ids=lambda p: f"{p[0]}-{p[1]}threads")
def c_settings(request):
    level, threads = request.param
    c_engine.set_simd_level(level)
    c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
    try:
        yield request.param
    finally:
        c_engine.set_simd_level(SIMD_LEVELS[0])
        c_engine.set_num_threads(None)


def assert_parity(actual, expected, dtype, what):
    assert actual.dtype == expected.dtype == dtype and actual.shape == expected.shape, what
    scale = max(float(np.max(np.abs(expected))), 1e-30) if expected.size else 1.0
    error = float(np.max(np.abs(actual.astype(np.float64) - expected))) / scale if expected.size else 0.0
    assert error <= TOLERANCE[dtype], f"{what}: scaled error {error:.3g}"


AVG_CASES = [   # (input shape, pool_size, strides, padding)
    ((1, 1, 1, 1), (1, 1), (1, 1), "valid"),
    ((1, 5, 5, 3), (2, 2), (2, 2), "valid"),
    ((3, 7, 6, 5), (3, 3), (2, 2), "same"),
    ((2, 9, 8, 17), (2, 3), (1, 2), "same"),
    ((1, 6, 7, 33), (3, 2), (3, 1), "valid"),
    ((2, 5, 5, 4), (5, 5), (1, 1), "same"),          # windows larger than the image's rest
    ((1, 4, 3, 2), (4, 3), (3, 3), "valid"),         # one window: the whole image
    ((4, 40, 40, 16), (3, 3), (1, 1), "same"),       # large enough for several threads
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, pool_size, strides, padding", AVG_CASES, ids=str)
def test_average_pooling_c_matches_numpy(c_settings, shape, pool_size, strides, padding, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    pads = pads_2d(shape[1], shape[2], pool_size, strides, padding)
    y_numpy, cache_numpy = numpy_engine.avgpool2d_forward(x, pool_size, strides, pads)
    y_c, cache_c = c_engine.avgpool2d_forward(x, pool_size, strides, pads)
    assert_parity(y_c, y_numpy, dtype, "y")
    dy = rng.standard_normal(y_numpy.shape).astype(dtype)
    assert_parity(c_engine.avgpool2d_backward(dy, cache_c), numpy_engine.avgpool2d_backward(dy, cache_numpy),
                  dtype, "dx")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (16, 32, 32, 8)], ids=str)
def test_global_average_pooling_c_matches_numpy(c_settings, shape, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    y_numpy, cache_numpy = numpy_engine.global_avgpool2d_forward(x)
    y_c, cache_c = c_engine.global_avgpool2d_forward(x)
    assert_parity(y_c, y_numpy, dtype, "y")
    dy = rng.standard_normal(y_numpy.shape).astype(dtype)
    assert_parity(c_engine.global_avgpool2d_backward(dy, cache_c),
                  numpy_engine.global_avgpool2d_backward(dy, cache_numpy), dtype, "dx")


BN_SHAPES = [(1, 1), (2, 3), (7, 5), (64, 17), (129, 33), (8192, 16)]   # (M, C); the last is threaded


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn+relu"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("center, scale", [(True, True), (False, True), (True, False), (False, False)])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_normalization_c_matches_numpy(c_settings, shape, center, scale, dtype, relu):
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    c = shape[1]
    gamma = rng.standard_normal(c).astype(dtype) if scale else None
    beta = rng.standard_normal(c).astype(dtype) if center else None
    expected = numpy_engine.batchnorm_forward_training(x, gamma, beta, 1e-3, relu)
    got = c_engine.batchnorm_forward_training(x, gamma, beta, 1e-3, relu)
    for name, a, b in zip(("y", "mean", "var"), got[:3], expected[:3]):
        assert_parity(a, b, dtype, name)
    if relu:   # exactly the ReLU layer's rule on the C engine's own pre-ReLU output
        plain = c_engine.batchnorm_forward_training(x, gamma, beta, 1e-3)[0]
        assert got[0].tobytes() == c_engine.relu_forward(plain).tobytes()
    dy = rng.standard_normal(shape).astype(dtype)
    if relu:   # no gradient where the engines' outputs are within rounding of 0 (their masks may differ)
        dy[np.abs(expected[0]) <= 4 * TOLERANCE[dtype] * max(1.0, float(np.abs(expected[0]).max()))] = 0
    for need_dx in (True, False):
        got_grads = c_engine.batchnorm_backward(dy, got[3], need_dx)
        expected_grads = numpy_engine.batchnorm_backward(dy, expected[3], need_dx)
        for name, a, b in zip(("dx", "dgamma", "dbeta"), got_grads, expected_grads):
            assert (a is None) == (b is None), name
            if b is not None:
                assert_parity(a, b, dtype, name)
    if relu:   # the fused backward is the ReLU layer's backward, then batch normalisation's, bit for bit
        plain_cache = c_engine.batchnorm_forward_training(x, gamma, beta, 1e-3)[3]
        for need_dx in (True, False):
            fused = c_engine.batchnorm_backward(dy, got[3], need_dx)
            separate = c_engine.batchnorm_backward(c_engine.relu_backward(dy, got[0]), plain_cache, need_dx)
            for a, b in zip(fused, separate):
                assert (a is None and b is None) or a.tobytes() == b.tobytes()
    mean, var = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.1).astype(dtype)
    assert_parity(c_engine.batchnorm_forward_inference(x, gamma, beta, mean, var, 1e-3, relu),
                  numpy_engine.batchnorm_forward_inference(x, gamma, beta, mean, var, 1e-3, relu), dtype, "y")


BN_PART_ROWS = 1024   # csrc/tmpl_batchnorm.h DN_BN_PART_ROWS: rows per part of the column sums


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_normalization_sums_in_parts_match_numpy_and_ignore_the_team(dtype):
    """With BN_PART_ROWS rows per laid-out thread, the column sums (mean, variance, dbeta,
    dgamma) run in one part per thread and add the parts in order: NumPy's numbers within the
    parity tolerance at 1-4 threads, and a load cap that runs fewer threads than are laid out
    gives the same bits (the parts follow the layout, never the team)."""
    m, c = 4 * BN_PART_ROWS + 5, 24
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((m, c)) * 3 + 2).astype(dtype)
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    dy = rng.standard_normal((m, c)).astype(dtype)
    expected = numpy_engine.batchnorm_forward_training(x, gamma, beta, 1e-3)
    expected_grads = numpy_engine.batchnorm_backward(dy, expected[3], True)

    def run():
        got = c_engine.batchnorm_forward_training(x, gamma, beta, 1e-3)
        return got, c_engine.batchnorm_backward(dy, got[3], True)

    names = ("y", "mean", "var", "dx", "dgamma", "dbeta")
    try:
        for threads in (1, 2, 3, 4):
            c_engine.set_num_threads(threads, beyond_cpus=True)
            got, grads = run()
            for name, a, b in zip(names, tuple(got[:3]) + tuple(grads), tuple(expected[:3]) + tuple(expected_grads)):
                assert_parity(a, b, dtype, f"{name} at {threads} threads")
        if len(os.sched_getaffinity(0)) >= 2:
            c_engine.set_num_threads(2)          # laid out for two, as on a quiet machine
            full, full_grads = run()
            c_engine.set_load_cap(1)             # one of them runs, as beside a busy neighbour
            capped, capped_grads = run()
            for name, a, b in zip(names, tuple(capped[:3]) + tuple(capped_grads), tuple(full[:3]) + tuple(full_grads)):
                assert a.tobytes() == b.tobytes(), name
    finally:
        c_engine.set_load_cap(None)
        c_engine.set_num_threads(None)


def test_layers_run_these_operators_in_c():
    """The face dispatches to the C functions (not to a NumPy fallback) on the C engine."""
    previous = kernels.get_backend()
    kernels.set_backend("c")
    try:
        x = np.ones((1, 4, 4, 2))
        _, cache = kernels.avgpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
        assert type(cache.engine_cache) is c_engine.AvgPoolCache
        _, _, _, cache = kernels.batchnorm_forward(x.reshape(-1, 2), None, None, None, None, 1e-3, True)
        assert type(cache.engine_cache) is c_engine.BatchNormCache
    finally:
        kernels.set_backend(previous)


def _p(array):
    return ffi.from_buffer("double[]", array, require_writable=True)


def test_average_pooling_entry_points_check_every_length_and_the_pads():
    x, y, dx = np.zeros(2 * 5 * 4 * 3), np.zeros(2 * 3 * 2 * 3), np.zeros(2 * 5 * 4 * 3)
    geometry = ffi.new("mc_pool_geom *", dict(n=2, h=5, w=4, c=3, pool_h=2, pool_w=2, stride_h=2,
                                              stride_w=2, pad_top=0, pad_bottom=1, pad_left=0, pad_right=0))
    assert lib.mc_avgpool2d_forward_f64(geometry, _p(x), x.size, _p(y), y.size) == lib.MC_OK
    assert lib.mc_avgpool2d_forward_f64(geometry, _p(x), x.size - 1, _p(y), y.size) == lib.MC_ERR_SIZE
    y[:] = 7.0
    assert lib.mc_avgpool2d_forward_f64(geometry, _p(x), x.size, _p(y), y.size + 1) == lib.MC_ERR_SIZE
    assert (y == 7.0).all(), "a refused call wrote"
    assert lib.mc_avgpool2d_backward_f64(geometry, _p(y), y.size, _p(dx), dx.size - 1) == lib.MC_ERR_SIZE
    assert lib.mc_avgpool2d_backward_f64(geometry, ffi.NULL, y.size, _p(dx), dx.size) == lib.MC_ERR_NULL
    geometry.pad_bottom = 2   # a window of padding alone: nothing to average
    assert lib.mc_avgpool2d_forward_f64(geometry, _p(x), x.size, _p(y), y.size) == lib.MC_ERR_GEOMETRY
    geometry.pad_bottom, geometry.stride_h = 1, 0
    assert lib.mc_avgpool2d_forward_f64(geometry, _p(x), x.size, _p(y), y.size) == lib.MC_ERR_GEOMETRY


def test_batch_normalization_entry_points_check_every_length():
    m, c = 6, 4
    x, y, x_hat = np.zeros(m * c), np.zeros(m * c), np.zeros(m * c)
    vectors = [np.zeros(c) for _ in range(5)]
    gamma, beta, mean, var, inv_std = vectors

    def training(x_len=m * c, gamma_len=c, y_len=m * c, mean_len=c, x_hat_len=m * c, epsilon=1e-3, rows=m):
        return lib.mc_batchnorm_forward_training_f64(rows, c, _p(x), x_len, _p(gamma), gamma_len, _p(beta), c,
                                                     epsilon, 0, _p(y), y_len, _p(mean), mean_len, _p(var), c,
                                                     _p(x_hat), x_hat_len, _p(inv_std), c)

    assert training() == lib.MC_OK
    for change in (dict(x_len=m * c - 1), dict(gamma_len=c + 1), dict(y_len=0), dict(mean_len=c - 1),
                   dict(x_hat_len=m * c + 1)):
        y[:] = 5.0
        assert training(**change) == lib.MC_ERR_SIZE, change
        assert (y == 5.0).all(), "a refused call wrote"
    assert training(rows=0, x_len=0, y_len=0, x_hat_len=0) == lib.MC_ERR_GEOMETRY
    assert training(epsilon=0.0) == lib.MC_ERR_GEOMETRY
    assert lib.mc_batchnorm_forward_inference_f64(m, c, _p(x), m * c, ffi.NULL, 0, ffi.NULL, 0, _p(mean), c,
                                                  _p(var), c - 1, 1e-3, 0, _p(y), m * c) == lib.MC_ERR_SIZE
    assert lib.mc_batchnorm_forward_inference_f64(m, c, _p(x), m * c, ffi.NULL, 3, ffi.NULL, 0, _p(mean), c,
                                                  _p(var), c, 1e-3, 1, _p(y), m * c) == lib.MC_ERR_SIZE
    dgamma, dbeta = np.zeros(c), np.zeros(c)
    def backward(relu_y=ffi.NULL, relu_y_len=0, dx=ffi.NULL, dx_len=0, dgamma_pointer=_p(dgamma)):
        return lib.mc_batchnorm_backward_f64(m, c, _p(y), m * c, _p(x_hat), m * c, _p(inv_std), c, ffi.NULL, 0,
                                             relu_y, relu_y_len, dx, dx_len, dgamma_pointer, c, _p(dbeta), c)

    assert backward() == lib.MC_OK
    assert backward(relu_y=_p(y), relu_y_len=m * c, dx=_p(x), dx_len=m * c) == lib.MC_OK
    assert backward(dx=_p(x), dx_len=m * c - 1) == lib.MC_ERR_SIZE
    assert backward(relu_y=_p(y), relu_y_len=m * c - 1, dx=_p(x), dx_len=m * c) == lib.MC_ERR_SIZE  # the ReLU's y
    assert backward(relu_y=ffi.NULL, relu_y_len=m * c) == lib.MC_ERR_SIZE
    assert backward(relu_y=_p(y), relu_y_len=m * c) == lib.MC_ERR_NULL      # the fused ReLU needs dx
    assert backward(dgamma_pointer=ffi.NULL) == lib.MC_ERR_NULL


# -- the ReLU layer's passes: bit for bit, special values included -------------------------------

RELU_SHAPES = [(1,), (7,), (3, 5), (2, 9, 8, 17), (2, 128, 64, 9)]   # the last: several chunks, 2 threads


@pytest.mark.parametrize("shape", RELU_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_passes_equal_the_numpy_engine_bit_for_bit(c_settings, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    special = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45], dtype=dtype)
    flat_x, flat_dy = x.reshape(-1), dy.reshape(-1)
    flat_x[:len(special)] = special[:flat_x.size]
    flat_dy[-len(special):] = special[-flat_dy.size:] if flat_dy.size < len(special) else special
    y_c, y_numpy = c_engine.relu_forward(x), numpy_engine.relu_forward(x)
    assert y_c.dtype == dtype and y_c.shape == shape
    # the bytes: NaN where NaN, +0.0 (never -0.0) where x <= 0
    assert y_c.tobytes() == y_numpy.tobytes()
    with np.errstate(invalid="ignore"):     # inf * 0 is NaN on both engines
        dx_c, dx_numpy = c_engine.relu_backward(dy, y_c), numpy_engine.relu_backward(dy, y_numpy)
    assert dx_c.tobytes() == dx_numpy.tobytes()


def test_relu_entry_points_refuse_wrong_lengths_and_null():
    x = np.ones(10, np.float32)
    y = np.empty(10, np.float32)
    px, py = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y, require_writable=True)
    assert lib.mc_relu_forward_f32(10, px, 10, py, 10) == 0
    assert lib.mc_relu_forward_f32(10, px, 9, py, 10) != 0
    assert lib.mc_relu_forward_f32(10, px, 10, py, 11) != 0
    assert lib.mc_relu_forward_f32(0, px, 0, py, 0) != 0
    assert lib.mc_relu_forward_f32(10, ffi.NULL, 10, py, 10) != 0
    assert lib.mc_relu_backward_f32(10, px, 10, px, 10, ffi.NULL, 10) != 0
    assert lib.mc_relu_backward_f32(10, px, 10, px, 10, py, 9) != 0
    with pytest.raises(ValueError, match="dy must have 9 elements, received 10"):
        c_engine.relu_backward(np.ones(10, np.float32), np.ones(9, np.float32))


# -- dropout: the mask is a function of (key, index) only ---------------------------------------

def splitmix64_reference(key, i):
    """SplitMix64's output function in Python integers, from its published definition."""
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def test_the_dropout_bits_are_splitmix64():
    for key in (0, 1, 2**63 + 12345, 2**64 - 1):
        bits = numpy_engine.dropout_bits(key, 50)
        assert [int(b) for b in bits] == [splitmix64_reference(key, i) for i in range(50)]
    # SplitMix64 seeded with 0: its first output is the published 0xE220A8397B1DCDAF
    assert splitmix64_reference(0, 0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 9, 8, 17), (4, 128, 64, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.9])
def test_dropout_passes_equal_the_numpy_engine_bit_for_bit(c_settings, shape, dtype, rate):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[:5] = np.array([-0.0, np.nan, np.inf, -np.inf, -1.0], dtype=dtype)[:flat.size]
    key = int(rng.integers(0, 2**64, dtype=np.uint64))
    threshold = round(rate * numpy_engine.DROPOUT_ONE)
    scale = float(dtype(1 / (1 - rate)))
    with np.errstate(invalid="ignore"):          # inf * 0 is NaN on both engines
        y_c, cache = c_engine.dropout_forward(x, key, threshold, scale)
        y_numpy, multiplier = numpy_engine.dropout_forward(x, key, threshold, scale)
        assert y_c.tobytes() == y_numpy.tobytes()
        assert np.array_equal(cache.mask.astype(bool), multiplier != 0)
        dy = rng.standard_normal(shape).astype(dtype)
        assert c_engine.dropout_backward(dy, cache).tobytes() == numpy_engine.dropout_backward(dy, multiplier).tobytes()


def test_dropout_entry_points_refuse_bad_thresholds_lengths_and_null():
    x, y, mask = np.ones(10, np.float32), np.empty(10, np.float32), np.empty(10, np.uint8)
    px, py = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y, require_writable=True)
    pm = ffi.from_buffer("uint8_t[]", mask, require_writable=True)
    assert lib.mc_dropout_forward_f32(10, px, 10, 7, 1 << 23, 2.0, py, 10, pm, 10) == lib.MC_OK
    assert lib.mc_dropout_forward_f32(10, px, 10, 7, -1, 2.0, py, 10, pm, 10) == lib.MC_ERR_GEOMETRY
    assert lib.mc_dropout_forward_f32(10, px, 10, 7, (1 << 24) + 1, 2.0, py, 10, pm, 10) == lib.MC_ERR_GEOMETRY
    assert lib.mc_dropout_forward_f32(10, px, 10, 7, 0, 1.0, py, 10, pm, 9) == lib.MC_ERR_SIZE
    assert lib.mc_dropout_forward_f32(10, px, 10, 7, 0, 1.0, py, 10, ffi.NULL, 10) == lib.MC_ERR_NULL
    assert lib.mc_dropout_backward_f32(10, px, 10, pm, 10, 2.0, py, 11) == lib.MC_ERR_SIZE
    assert lib.mc_dropout_backward_f32(10, px, 10, ffi.NULL, 10, 2.0, py, 10) == lib.MC_ERR_NULL
    assert lib.mc_dropout_backward_f32(0, px, 0, pm, 0, 2.0, py, 0) == lib.MC_ERR_GEOMETRY


@pytest.mark.parametrize("dtype, sfx", [(np.float32, "f32"), (np.float64, "f64")])
def test_max_pool_backward_never_writes_through_a_winner_outside_the_image(dtype, sfx):
    """The winners come back from the caller (a cache's argmax): one changed to 10**9 was a
    segfault. C checks each before dx is written through it; -1 (no cell inside) adds nothing."""
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(dtype)
    y, cache = c_engine.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
    assert not cache.argmax.flags.writeable       # the forward's winners cannot be changed by accident
    geometry = c_engine._pool_geometry(x.shape, (2, 2), (2, 2), (0, 0, 0, 0))
    dy, dx = np.ones_like(y), np.empty_like(x)
    ctype = "float[]" if dtype == np.float32 else "double[]"
    backward = getattr(lib, f"mc_maxpool2d_backward_{sfx}")
    pdy, pdx = ffi.from_buffer(ctype, dy), ffi.from_buffer(ctype, dx, require_writable=True)
    for outside in (x[0].size, 10**9, -2, -2**31):
        argmax = cache.argmax.copy()
        argmax[1, 1, 0, 2] = outside
        pa = ffi.from_buffer("int32_t[]", argmax)
        assert backward(geometry, pdy, dy.size, pa, argmax.size, pdx, dx.size) == lib.MC_ERR_INDEX
    argmax = cache.argmax.copy()
    argmax[0, 0, 0, 0] = -1                        # a window with no winner: nothing added, no error
    pa = ffi.from_buffer("int32_t[]", argmax)
    assert backward(geometry, pdy, dy.size, pa, argmax.size, pdx, dx.size) == lib.MC_OK
    assert dx.sum() == dy.size - 1
    forced = cache._replace(argmax=np.full_like(cache.argmax, 10**9))
    with pytest.raises(ValueError, match="maxpool2d_backward: a max pool's winner index points outside its image"):
        c_engine.maxpool2d_backward(dy, forced)


def test_optimizer_updates_refuse_arrays_that_share_memory_and_skip_empty_ones(backend):
    buffer = np.zeros(4097, np.float32)
    with pytest.raises(ValueError, match="optimizer_sgd_update: param and grad share memory"):
        kernels.optimizer_sgd_update(buffer[1:], buffer[:-1], None, 0.1, 0.0, False)
    p, g, m = np.ones(8, np.float32), np.ones(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="optimizer_adam_update: m and v share memory"):
        kernels.optimizer_adam_update(p, g, m, m, 0.1, 0.9, 0.999, 1e-7)
    with pytest.raises(ValueError, match="param and velocity share memory"):
        kernels.optimizer_sgd_update(p, g, p[::-1], 0.1, 0.9, False)
    with pytest.raises(TypeError, match="learning_rate must be a number, received '0.1'"):
        kernels.optimizer_sgd_update(p, g, None, "0.1", 0.0, False)
    empty = np.ones(0, np.float32)
    kernels.optimizer_sgd_update(empty, empty.copy(), None, 0.1, 0.0, False)   # nothing to do, no error
    kernels.optimizer_adam_update(empty, empty.copy(), empty.copy(), empty.copy(), 0.1, 0.9, 0.999, 1e-7)


def test_numpy_scalars_are_numbers_and_the_engine_limits_are_named(backend):
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    y32, _ = kernels.dropout_forward(x, np.float32(0.5), 7)
    y64, _ = kernels.dropout_forward(x, 0.5, 7)
    assert y32.tobytes() == y64.tobytes()
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    kernels.batchnorm_forward(x, ones, zeros, zeros, ones, np.float32(1e-3), training=False)
    with pytest.raises(ValueError, match=r"strides must be 2 integers >= 1 \(at most 16777216\)"):
        kernels.maxpool2d_forward(np.ones((1, 4, 4, 1), np.float32), (2, 2), (2**24 + 1, 1), (0, 0, 0, 0))


def test_a_geometry_c_refuses_is_named_as_the_face_names_it():
    wide = np.zeros((1, 1, 2**24 + 1, 1), np.float32)      # wider than the engine's 2**24
    with pytest.raises(ValueError, match=r"^maxpool2d_forward: the geometry is invalid .*each at most 2\*\*24"):
        c_engine.maxpool2d_forward(wide, (1, 1), (1, 1), (0, 0, 0, 0))


@pytest.mark.parametrize("bad", [2.7, "3", True, -1])
def test_set_num_threads_takes_only_a_count(bad):
    with pytest.raises((TypeError, ValueError), match="set_num_threads: threads must be an integer"):
        c_engine.set_num_threads(bad)
