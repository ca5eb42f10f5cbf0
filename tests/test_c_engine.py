"""The C engine against the NumPy engine, its build fallbacks and its checking wrapper.

Parity tolerances (stated once): float64 agrees with the NumPy engine to 1e-12 and float32 to
1e-5, relative to the largest magnitude of the reference array (sums are added in a different
order, so entries that cancel to ~0 can only be compared on that scale); float32 stride-1 5x5
convolutions that may run Winograd F(2x2, 5x5) to 3e-5 (its 6x6 transforms round more: ~1e-5
seen). Max pooling picks the same winners, so its forward output is compared exactly.

Every parity test runs once per SIMD level the CPU supports (avx512 / avx2 / sse2 here), so
all three compiled code paths are exercised on one machine, and the convolution tests once per
algorithm: the direct kernels and Winograd (F(2x2, 3x3) and F(2x2, 5x5), used for stride-1 3x3
and 5x5 convolutions).

Tests that need the extension are skipped, with the reason, only where it was not built; CI
runs with MINICNN_BACKEND=c, where importing minicnn without it fails instead.
"""
import os
import subprocess
import sys
import textwrap

import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

from minicnn import kernels
from minicnn.kernels import numpy_engine
from minicnn.kernels.geometry import pads_2d

C_BUILT = "c" in kernels.available_backends()
requires_c = pytest.mark.skipif(
    not C_BUILT,
    reason=f"C engine not built here: {kernels.backend_info().get('c_engine_error')}",
)
if C_BUILT:
    from minicnn.kernels import c_engine
    SIMD_LEVELS = c_engine.simd_levels()
else:
    c_engine = None
    SIMD_LEVELS = ["unbuilt"]

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
WINO5_TOLERANCE = {np.float64: 1e-12, np.float32: 3e-5}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=SIMD_LEVELS)
def simd(request):
    """Run the C kernels at one SIMD level, then restore the best one."""
    if not C_BUILT:
        pytest.skip(f"C engine not built here: {kernels.backend_info().get('c_engine_error')}")
    c_engine.set_simd_level(request.param)
    try:
        yield request.param
    finally:
        c_engine.set_simd_level(SIMD_LEVELS[0])


@pytest.fixture(params=["direct", "winograd"])
def algorithm(request):
    """Force one convolution algorithm, then restore the automatic choice."""
    if not C_BUILT:
        pytest.skip(f"C engine not built here: {kernels.backend_info().get('c_engine_error')}")
    c_engine.set_algorithm(request.param)
    try:
        yield request.param
    finally:
        c_engine.set_algorithm("auto")


def assert_close(actual, expected, dtype, what, tolerance=TOLERANCE):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(float(np.max(np.abs(expected))), 1.0) if expected.size else 1.0
    tol = tolerance[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def conv_tolerance(kernel_shape, strides, pads):
    """WINO5_TOLERANCE where Winograd F(2x2, 5x5) may run (stride 1, 5x5, padding <= 4)."""
    if tuple(kernel_shape[:2]) == (5, 5) and tuple(strides) == (1, 1) and max(pads) <= 4:
        return WINO5_TOLERANCE
    return TOLERANCE


def run_conv_both(rng, dtype, x_shape, kernel_shape, strides, pads, use_bias=True, need_dx=True):
    """The C engine's forward and backward against the NumPy engine's; returns the C results."""
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    bias = rng.standard_normal(kernel_shape[3]).astype(dtype) if use_bias else None
    tolerance = conv_tolerance(kernel_shape, strides, pads)
    y_ref, cache_ref = numpy_engine.conv2d_forward(x, kernel, bias, strides, pads)
    y, cache = c_engine.conv2d_forward(x, kernel, bias, strides, pads)
    assert_close(y, y_ref, dtype, "y", tolerance)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    grads_ref = numpy_engine.conv2d_backward(dy, cache_ref, need_dx)
    grads = c_engine.conv2d_backward(dy.copy(), cache, need_dx)
    for name, got, want in zip(("dx", "dkernel", "dbias"), grads, grads_ref):
        if want is None:
            assert got is None, f"{name} should be None"
        else:
            assert_close(got, want, dtype, name, tolerance)
    return (y, *grads)


def conv_geometry(h, w, kernel_size, strides, padding):
    if padding in ("same", "valid"):
        return pads_2d(h, w, kernel_size, strides, padding)
    return padding


# (N, H, W, C_in), (KH, KW), F, strides, padding: non-square kernels, odd sizes, strides 1, 2
# and (2, 1), valid and same, one and several input channels, batch 1, a kernel as large as
# the input, filter counts that are and are not multiples of the vector width, and the seed
# model's two layers.
CONV_GRID = [
    ((2, 7, 5, 3), (3, 2), 4, (1, 1), "same"),
    ((2, 7, 5, 3), (3, 2), 4, (1, 1), "valid"),
    ((1, 9, 7, 1), (3, 3), 5, (2, 2), "same"),
    ((3, 9, 8, 3), (3, 2), 17, (2, 1), "same"),
    ((2, 8, 9, 4), (2, 3), 33, (2, 1), "valid"),
    ((1, 5, 5, 3), (5, 5), 7, (1, 1), "valid"),
    ((2, 5, 4, 2), (5, 4), 70, (1, 1), "valid"),
    ((1, 6, 6, 2), (1, 1), 3, (3, 3), "valid"),
    ((2, 11, 10, 5), (3, 4), 33, (3, 2), (2, 1, 0, 3)),
    ((1, 4, 4, 1), (2, 2), 1, (1, 1), (3, 0, 0, 2)),
    ((2, 28, 28, 1), (3, 3), 32, (1, 1), "same"),
    ((2, 14, 14, 32), (3, 3), 64, (1, 1), "same"),
    ((4, 6, 7, 65), (3, 3), 129, (2, 2), "same"),
    ((3, 7, 9, 65), (3, 3), 129, (1, 1), "same"),     # Winograd with odd sizes and wide blocks
    ((2, 3, 3, 9), (3, 3), 10, (1, 1), "valid"),      # one output pixel: one partial tile
    ((2, 5, 6, 9), (3, 3), 17, (1, 1), (2, 2, 2, 2)), # the most padding Winograd takes
    ((2, 5, 6, 9), (3, 3), 17, (1, 1), (0, 2, 1, 0)),
    ((1, 8, 8, 64), (3, 3), 64, (1, 1), "same"),      # enough work for 2 threads, 1 tile block
    ((2, 9, 7, 5), (5, 5), 17, (1, 1), "same"),       # Winograd F(2x2, 5x5): odd sizes
    ((2, 6, 5, 9), (5, 5), 17, (1, 1), (4, 4, 4, 4)), # the most padding it takes
    ((3, 11, 13, 33), (5, 5), 65, (1, 1), (1, 3, 0, 4)),
]


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CONV_GRID, ids=str)
def test_conv2d_matches_numpy_engine(simd, algorithm, case, dtype):
    x_shape, kernel_size, filters, strides, padding = case
    pads = conv_geometry(x_shape[1], x_shape[2], kernel_size, strides, padding)
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    run_conv_both(rng, dtype, x_shape, (*kernel_size, x_shape[3], filters), strides, pads)


# One input channel at stride 1: whole tiles of pixels within one output row read consecutive
# input elements and run the single-pointer igemm (mk_igemm_body's UNIT); tiles that cross a
# row, short ones and every other geometry run the general one. Widths at, around and twice
# the tiles' heights (12 and 6 for one vector; 8 and 4, 6 and 3 for wider blocks), filter
# counts that fill 1 to 4 vectors or part of one, strides whose column step is 1 or not.
UNIT_STEP_GRID = [
    ((3, 5, 12, 1), (1, 1), 6, (1, 1), "valid"),
    ((2, 6, 13, 1), (3, 3), 16, (1, 1), "same"),
    ((2, 7, 30, 1), (5, 5), 6, (1, 1), "valid"),     # LeNet's first layer's shape of row
    ((2, 4, 29, 1), (3, 3), 33, (1, 1), "same"),
    ((1, 5, 27, 1), (3, 2), 64, (1, 1), "valid"),
    ((2, 5, 11, 1), (2, 5), 70, (1, 1), "same"),
    ((2, 9, 26, 1), (3, 3), 5, (2, 1), "same"),      # row stride 2, column step still 1
    ((2, 9, 26, 1), (3, 3), 5, (1, 2), "same"),      # column step 2: the general kernel
]


@requires_c
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", UNIT_STEP_GRID, ids=str)
def test_one_input_channel_tiles_give_each_images_own_bits(simd, case, dtype, threads):
    """Against the NumPy engine, and bit for bit against each image convolved alone: a batch's
    tiles run on across images, so the same pixel falls in a whole one-row tile in one call and
    in a tile that crosses rows (the general kernel) in the other."""
    x_shape, kernel_size, filters, strides, padding = case
    pads = conv_geometry(x_shape[1], x_shape[2], kernel_size, strides, padding)
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    c_engine.set_num_threads(threads, beyond_cpus=True)
    try:
        y = run_conv_both(rng, dtype, x_shape, (*kernel_size, 1, filters), strides, pads)[0]
        x = rng.standard_normal(x_shape).astype(dtype)
        kernel = rng.standard_normal((*kernel_size, 1, filters)).astype(dtype)
        bias = rng.standard_normal(filters).astype(dtype)
        batch = c_engine.conv2d_relu_forward(x, kernel, bias, strides, pads)[0]
        alone = [c_engine.conv2d_relu_forward(x[i:i + 1], kernel, bias, strides, pads)[0]
                 for i in range(len(x))]
    finally:
        c_engine.set_num_threads(None)
    assert batch.tobytes() == np.concatenate(alone).tobytes()
    assert y.shape[2] >= 11   # the test's point: rows as wide as a tile or wider


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_conv2d_without_bias_and_without_input_gradient(simd, algorithm, dtype):
    rng = np.random.default_rng(7)
    run_conv_both(rng, dtype, (3, 9, 7, 3), (3, 3, 3, 8), (1, 1), (1, 1, 1, 1),
                  use_bias=False, need_dx=False)


@requires_c
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_count_changes_nothing_but_the_order_of_one_sum(threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 10, 9, 6))
    kernel = rng.standard_normal((3, 3, 6, 20))
    bias = rng.standard_normal(20)
    dy = rng.standard_normal((5, 10, 9, 20))
    c_engine.set_num_threads(1)
    try:
        y1, cache1 = c_engine.conv2d_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1))
        g1 = c_engine.conv2d_backward(dy, cache1)
        c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
        y, cache = c_engine.conv2d_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1))
        g = c_engine.conv2d_backward(dy, cache)
    finally:
        c_engine.set_num_threads(None)
    # forward and dx split whole output rows between threads: bitwise identical
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(g[0], g1[0])
    # dkernel and dbias sum per-thread partial gradients: equal up to rounding
    assert_close(g[1], g1[1], np.float64, "dkernel")
    assert_close(g[2], g1[2], np.float64, "dbias")


@requires_c
def test_results_do_not_depend_on_earlier_calls_sharing_the_workspace():
    """The reused scratch buffer grows and shrinks between shapes without leaking state."""
    rng = np.random.default_rng(11)
    for shape, kernel_shape in [((4, 16, 16, 8), (3, 3, 8, 64)), ((1, 3, 3, 1), (2, 2, 1, 2)),
                                ((4, 16, 16, 8), (3, 3, 8, 64))]:
        run_conv_both(rng, np.float32, shape, kernel_shape, (1, 1), (1, 1, 1, 1))


# ---- max pooling ----

POOL_GRID = [
    ((2, 8, 8, 3), (2, 2), (2, 2), "valid"),
    ((1, 7, 9, 2), (2, 2), (2, 2), "same"),
    ((2, 7, 5, 4), (3, 2), (2, 1), "valid"),
    ((2, 6, 6, 1), (3, 3), (1, 1), "same"),          # overlapping windows add their gradients
    ((1, 5, 5, 17), (5, 5), (1, 1), "valid"),        # window as large as the input
    ((3, 28, 28, 32), (2, 2), (2, 2), "valid"),      # the seed model's pools
    ((3, 14, 14, 64), (2, 2), (2, 2), "valid"),
]


def run_pool_both(x, pool_size, strides, pads, rng):
    dtype = x.dtype.type
    y_ref, cache_ref = numpy_engine.maxpool2d_forward(x, pool_size, strides, pads)
    y, cache = c_engine.maxpool2d_forward(x, pool_size, strides, pads)
    assert y.dtype == x.dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref)  # same winners, same values, NaN where NaN
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx_ref = numpy_engine.maxpool2d_backward(dy, cache_ref)
    dx = c_engine.maxpool2d_backward(dy, cache)
    assert_close(dx, dx_ref, dtype, "dx")


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", POOL_GRID, ids=str)
def test_maxpool2d_matches_numpy_engine(simd, case, dtype):
    x_shape, pool_size, strides, padding = case
    pads = conv_geometry(x_shape[1], x_shape[2], pool_size, strides, padding)
    rng = np.random.default_rng(5)
    run_pool_both(rng.standard_normal(x_shape).astype(dtype), pool_size, strides, pads, rng)


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_maxpool2d_ties_nan_infinities_and_padding_like_numpy_engine(dtype):
    """Small integers make ties everywhere; NaN and -inf test the two special rules. 3 channels
    run the window kernel's scalar lanes only, 37 its vectors and a tail; the 5x4 and 4x5
    windows (20 cells) take two kernel calls, the second continuing from the first's maximum
    (MC_POOL_WINDOW_CELLS = 16), with and without a padding cell first."""
    rng = np.random.default_rng(9)
    for channels in (3, 37):
        x = rng.integers(-2, 3, size=(2, 9, 8, channels)).astype(dtype)
        x[rng.random(x.shape) < 0.08] = np.nan
        x[rng.random(x.shape) < 0.15] = -np.inf
        for pool_size, strides, pads in [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 1, 1, 1)),
                                         ((3, 2), (2, 1), (2, 0, 1, 1)), ((2, 2), (1, 1), (1, 0, 0, 1)),
                                         ((5, 4), (1, 1), (2, 2, 1, 2)), ((4, 5), (3, 2), (0, 0, 0, 0))]:
            run_pool_both(x, pool_size, strides, pads, rng)


@requires_c
def test_maxpool2d_window_entirely_in_padding_drops_its_gradient_like_numpy_engine():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 2, 2))
    run_pool_both(x, (1, 1), (1, 1), (1, 1, 1, 1), rng)


# ---- property-based parity ----

@st.composite
def conv_problems(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 6))
    f = draw(st.integers(1, 24))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, kh - pads[0] - pads[1]), 9))
    w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 9))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, h, w, c), (kh, kw, c, f), (sh, sw), pads, dtype, seed


@requires_c
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems(), st.booleans(), st.booleans(), st.sampled_from(["direct", "winograd"]))
def test_conv2d_property_matches_numpy_engine(problem, use_bias, need_dx, algorithm):
    x_shape, kernel_shape, strides, pads, dtype, seed = problem
    c_engine.set_algorithm(algorithm)
    try:
        run_conv_both(np.random.default_rng(seed), dtype, x_shape, kernel_shape, strides, pads,
                      use_bias=use_bias, need_dx=need_dx)
    finally:
        c_engine.set_algorithm("auto")


@requires_c
@pytest.mark.parametrize("k", [3, 5])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(1, 20),
       st.integers(1, 40), st.tuples(*[st.integers(0, 4)] * 4), st.sampled_from([np.float32, np.float64]),
       st.sampled_from(SIMD_LEVELS), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_winograd_property_matches_numpy_engine(k, n, h, w, c, f, pads, dtype, simd, threads, seed):
    """Stride-1 k x k convolutions (k = 3, 5), the Winograd path's whole domain, with every
    padding it takes (0 .. k - 1 per side), every SIMD level and 1-4 threads."""
    pads = tuple(min(p, k - 1) for p in pads)
    if h + pads[0] + pads[1] < k or w + pads[2] + pads[3] < k:
        return
    c_engine.set_algorithm("winograd")
    c_engine.set_simd_level(simd)
    c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
    try:
        run_conv_both(np.random.default_rng(seed), dtype, (n, h, w, c), (k, k, c, f), (1, 1), pads)
    finally:
        c_engine.set_algorithm("auto")
        c_engine.set_simd_level(SIMD_LEVELS[0])
        c_engine.set_num_threads(None)


# (N, H, W, C_in), F, pads: Winograd F(2x2, 5x5) at batch 1, odd sizes, one partial tile,
# every padding 0..4, filter counts off the vector width, and a block of wide GEMMs
WINO5_GRID = [
    ((1, 5, 5, 3), 7, (0, 0, 0, 0)),
    ((1, 1, 1, 4), 5, (4, 0, 2, 2)),
    ((2, 9, 7, 5), 17, (2, 2, 2, 2)),
    ((3, 6, 9, 16), 40, (1, 3, 0, 4)),
    ((2, 7, 6, 9), 33, (4, 4, 4, 4)),
    ((2, 11, 13, 33), 65, (3, 1, 4, 0)),
    ((1, 14, 14, 64), 128, (2, 2, 2, 2)),
]


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("case", WINO5_GRID, ids=str)
def test_winograd5_matches_numpy_engine_and_direct(simd, threads, case, dtype):
    """Every pass of F(2x2, 5x5) (forward, kernel and bias gradient, input gradient) against the
    NumPy engine and against the direct algorithm, at every SIMD level and 1-4 threads."""
    x_shape, filters, pads = case
    kernel_shape = (5, 5, x_shape[3], filters)
    seed = zlib.crc32(str(case).encode())
    results = {}
    c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
    try:
        for name in ("winograd", "direct"):
            c_engine.set_algorithm(name)
            results[name] = run_conv_both(np.random.default_rng(seed), dtype, x_shape, kernel_shape,
                                          (1, 1), pads)
    finally:
        c_engine.set_algorithm("auto")
        c_engine.set_num_threads(None)
    for what, wino, direct in zip(("y", "dx", "dkernel", "dbias"), results["winograd"], results["direct"]):
        assert_close(wino, direct, dtype, f"{what}: winograd vs direct", WINO5_TOLERANCE)


def test_winograd_matrices_are_derived_exactly_and_match_the_c_constants():
    """scripts/winograd_matrices.py derives B^T, G and A^T in exact rationals and checks the
    identity; the C's G tables (csrc/tmpl_winograd.h) and the 5x5 transforms' matrices
    (csrc/tmpl_microkernel.h) are the script's, and a NumPy F(2x2, 5x5) built from them is the
    direct correlation."""
    import json
    import re
    from fractions import Fraction
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "winograd_matrices.py"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    mats = {name: {key: [[Fraction(v) for v in row] for row in m[key]] for key in ("BT", "G", "AT")}
            for name, m in json.loads(out).items()}
    assert json.loads(out)["F(2,5)"]["exact"] and json.loads(out)["F(2,3)"]["exact"]

    def c_value(text):
        parts = [p.strip() for p in text.split("/")]
        value = Fraction(parts[0])
        return value / Fraction(parts[1]) if len(parts) == 2 else value

    with open(os.path.join(REPO_ROOT, "csrc", "tmpl_winograd.h")) as fh:
        source = fh.read()
    for name, table, (rows, cols) in (("F(2,3)", "wino_g3", (4, 3)), ("F(2,5)", "wino_g5", (6, 5))):
        body = re.search(r"DN\(" + table + r"\)\[[^]]*\] = \{(.*?)\};", source, re.S).group(1)
        values = [c_value(v) for v in body.replace("\n", " ").split(",")]
        c_rows = [values[r * cols:(r + 1) * cols] for r in range(rows)]
        for c_row, row in zip(c_rows, mats[name]["G"]):
            if name == "F(2,5)":
                assert c_row == row, (name, c_row, row)
            else:   # F(2,3)'s row signs were chosen apart from the script's (B^T, A^T match them)
                assert c_row in (row, [-v for v in row]), (name, c_row, row)
    with open(os.path.join(REPO_ROOT, "csrc", "tmpl_microkernel.h")) as fh:
        micro = fh.read()
    for key, label in (("BT", "B^T"), ("AT", "A^T")):
        text = re.search(re.escape(label) + r" = \[([^]]*)\]", micro.split("F(2x2, 5x5) transforms")[1]).group(1)
        c_rows = [[c_value(v) for v in row.split()] for row in text.replace("*", " ").split(";")]
        assert c_rows == mats["F(2,5)"][key], (key, c_rows)

    # the 2-D algorithm in NumPy (float64) against the direct correlation, on one 6x6 tile
    BT, G, AT = (np.array([[float(v) for v in row] for row in mats["F(2,5)"][k]]) for k in ("BT", "G", "AT"))
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((5, 5))
    wino = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    direct = np.array([[np.sum(d[i:i + 5, j:j + 5] * g) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(wino, direct, rtol=1e-12, atol=1e-12)


@st.composite
def pool_problems(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, ph - pads[0] - pads[1]), 9))
    w = draw(st.integers(max(1, pw - pads[2] - pads[3]), 9))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, h, w, c), (ph, pw), (sh, sw), pads, dtype, seed


@requires_c
@settings(max_examples=120, deadline=None)
@given(pool_problems(), st.booleans())
def test_maxpool2d_property_matches_numpy_engine(problem, with_ties):
    x_shape, pool_size, strides, pads, dtype, seed = problem
    rng = np.random.default_rng(seed)
    if with_ties:
        x = rng.integers(-1, 2, size=x_shape).astype(dtype)
    else:
        x = rng.standard_normal(x_shape).astype(dtype)
    run_pool_both(x, pool_size, strides, pads, rng)


# ---- the checking wrapper ----

@requires_c
def test_wrapper_copies_non_contiguous_inputs():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 9, 8, 10))
    x = base[:, ::2, :, 1:7:2]                       # strided view, (3, 5, 8, 3)
    kernel = np.asfortranarray(rng.standard_normal((3, 2, 3, 5)))
    bias = rng.standard_normal(10)[::2]
    y_ref, cache_ref = numpy_engine.conv2d_forward(x, kernel, bias, (1, 2), (1, 1, 0, 1))
    y, cache = c_engine.conv2d_forward(x, kernel, bias, (1, 2), (1, 1, 0, 1))
    assert_close(y, y_ref, np.float64, "y")
    dy = rng.standard_normal(y.shape[::-1]).T       # a transposed (F-ordered) gradient
    for got, want in zip(c_engine.conv2d_backward(dy, cache), numpy_engine.conv2d_backward(dy, cache_ref)):
        assert_close(got, want, np.float64, "gradient")
    y, cache = c_engine.maxpool2d_forward(x, (2, 2), (2, 2), (0, 1, 0, 0))
    y_ref, cache_ref = numpy_engine.maxpool2d_forward(x, (2, 2), (2, 2), (0, 1, 0, 0))
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape[::-1]).T
    assert_close(c_engine.maxpool2d_backward(dy, cache), numpy_engine.maxpool2d_backward(dy, cache_ref),
                 np.float64, "dx")


@requires_c
def test_wrapper_never_casts_dtypes():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(TypeError, match="float32"):
        c_engine.conv2d_forward(x, np.zeros((2, 2, 2, 3), np.float64), None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="float32 and float64"):
        c_engine.maxpool2d_forward(x.astype(np.float16), (2, 2), (2, 2), (0, 0, 0, 0))


@requires_c
def test_the_one_door_rejects_bad_buffers_before_c_sees_them():
    geometry = c_engine._pool_geometry((1, 4, 4, 2), (2, 2), (2, 2), (0, 0, 0, 0))
    good_x = np.zeros((1, 4, 4, 2), np.float32)
    y = np.zeros((1, 2, 2, 2), np.float32)
    argmax = np.zeros((1, 2, 2, 2), np.int32)
    In, Out, call = c_engine._In, c_engine._Out, c_engine._call
    f32 = np.dtype(np.float32)

    def forward(x=good_x, y=y, argmax=argmax, x_size=32):
        call("mc_maxpool2d_forward_f32", geometry, In("x", x, f32, x_size),
             Out("y", y, f32, 8), Out("argmax", argmax, np.dtype(np.int32), 8))

    forward()
    with pytest.raises(TypeError, match="x must be float32"):
        forward(x=good_x.astype(np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        forward(x=np.zeros((1, 4, 8, 2), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match="must have 32 elements, received 30"):
        forward(x=np.zeros(30, np.float32), x_size=32)
    readonly = y.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        forward(y=readonly)
    with pytest.raises(TypeError, match="NumPy array"):
        forward(x=[0.0] * 32)


@requires_c
def test_c_checks_lengths_itself_and_writes_nothing_on_mismatch():
    """Even past the Python checks, C refuses lengths that disagree with the geometry."""
    ffi, lib = c_engine.ffi, c_engine.lib
    geometry = c_engine._conv_geometry((1, 4, 4, 2), (3, 3, 2, 5), (1, 1), (1, 1, 1, 1))
    x = np.ones((1, 4, 4, 2), np.float32)
    kernel = np.ones((3, 3, 2, 5), np.float32)
    xpad = np.full(1 * 6 * 6 * 2, 7.0, np.float32)
    y = np.full(1 * 4 * 4 * 5, 7.0, np.float32)
    work = np.zeros(lib.mc_conv2d_forward_workspace(geometry, 4, 1), np.float32)

    def p(a):
        return ffi.from_buffer("float[]", a)

    def forward(y_len=y.size, work_len=work.size, kernel_len=kernel.size):
        return lib.mc_conv2d_forward_f32(geometry, p(x), x.size, p(kernel), kernel_len, ffi.NULL, 0, 0,
                                         p(xpad), xpad.size, p(y), y_len, p(work), work_len)

    assert forward(y_len=y.size - 1) == lib.MC_ERR_SIZE
    assert forward(work_len=work.size - 1) == lib.MC_ERR_SIZE   # the query's size is the plan's
    assert forward(kernel_len=kernel.size + 1) == lib.MC_ERR_SIZE
    assert np.all(y == 7.0) and np.all(xpad == 7.0), "C wrote to a buffer it rejected"
    assert forward() == lib.MC_OK
    assert np.all(y > 0)
    bad = c_engine._conv_geometry((1, 4, 4, 2), (9, 3, 2, 5), (1, 1), (0, 0, 0, 0))
    assert lib.mc_conv2d_forward_workspace(bad, 4, 1) == -1
    assert lib.mc_conv2d_forward_f32(bad, p(x), x.size, p(kernel), kernel.size, ffi.NULL, 0, 0,
                                     p(xpad), xpad.size, p(y), y.size, p(work), work.size) == lib.MC_ERR_GEOMETRY
    negative = c_engine._conv_geometry((1, 4, 4, 2), (3, 3, 2, 5), (0, 1), (0, 0, 0, 0))
    assert lib.mc_conv2d_forward_workspace(negative, 4, 1) == -1


@requires_c
def test_engine_info_reports_build_simd_and_threads():
    info = c_engine.engine_info()
    assert info["engine"] == "c"
    flags = info["compiler_flags"].split()
    assert "-O3" in flags
    assert not any(f in flags for f in ("-ffast-math", "-Ofast", "-march=native"))
    assert info["simd"] in SIMD_LEVELS
    assert info["threads"] >= 1
    assert info["openmp"] == ("-fopenmp" in flags)
    assert info["conv_algorithm"] in ("auto", "direct", "winograd")
    kernels.set_backend("c")
    try:
        assert kernels.backend_info()["engine"] == "c"
    finally:
        kernels.set_backend(os.environ.get("MINICNN_BACKEND", "auto"))


@requires_c
def test_simd_level_can_be_capped_but_never_raised():
    assert c_engine.set_simd_level("sse2") == "sse2"
    try:
        assert c_engine.simd_level() == "sse2"
    finally:
        assert c_engine.set_simd_level(SIMD_LEVELS[0]) == SIMD_LEVELS[0]
    with pytest.raises(ValueError, match="SIMD level"):
        c_engine.set_simd_level("avx9000")


@requires_c
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_fused_relu_matches_separate_relu(algorithm, dtype):
    """The C forward can apply ReLU in its epilogue and mask the gradient in its backward."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 7, 6, 3)).astype(dtype)
    kernel = rng.standard_normal((3, 3, 3, 20)).astype(dtype)
    bias = rng.standard_normal(20).astype(dtype)
    x[0, 0, 0, 0] = np.nan                              # NaN must propagate through the ReLU
    y_ref, cache_ref = numpy_engine.conv2d_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1))
    y_ref = np.maximum(y_ref, 0)
    y, cache = c_engine._conv_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1), relu=True)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    finite = ~np.isnan(y_ref)
    assert_close(y[finite], y_ref[finite], dtype, "y")
    x[0, 0, 0, 0] = 0
    y_ref, cache_ref = numpy_engine.conv2d_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1))
    y, cache = c_engine._conv_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1), relu=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = numpy_engine.conv2d_backward(np.where(y_ref > 0, dy, 0).astype(dtype), cache_ref)
    got = c_engine._conv_backward(dy, cache, True, relu_y=None)
    for name, g, w in zip(("dx", "dkernel", "dbias"), got, want):
        assert_close(g, w, dtype, name)


# ---- fused conv + ReLU and dense through the face, on both engines ----

@pytest.fixture(params=["numpy", "c"])
def engine(request):
    if request.param not in kernels.available_backends():
        pytest.skip(f"C engine not built here: {kernels.backend_info().get('c_engine_error')}")
    previous = kernels.get_backend()
    kernels.set_backend(request.param)
    try:
        yield request.param
    finally:
        kernels.set_backend(previous)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape, kernel_shape, strides, pads", [
    ((2, 7, 6, 3), (3, 3, 3, 20), (1, 1), (1, 1, 1, 1)),
    ((3, 14, 14, 32), (3, 3, 32, 64), (1, 1), (1, 1, 1, 1)),
    ((2, 9, 8, 2), (3, 2, 2, 5), (2, 1), (1, 1, 0, 1)),
    ((3, 28, 28, 1), (3, 3, 1, 32), (1, 1), (1, 1, 1, 1)),
])
@pytest.mark.parametrize("need_dx", [True, False])
def test_face_conv2d_relu_equals_conv_then_relu(engine, dtype, shape, kernel_shape, strides, pads, need_dx):
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    bias = rng.standard_normal(kernel_shape[3]).astype(dtype)
    z, cache_ref = numpy_engine.conv2d_forward(x, kernel, bias, strides, pads)
    y_ref = np.maximum(z, 0)
    y, cache = kernels.conv2d_relu_forward(x, kernel, bias, strides, pads)
    assert_close(y, y_ref, dtype, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = numpy_engine.conv2d_backward(dy * (y_ref > 0), cache_ref, need_dx)
    got = kernels.conv2d_backward(dy, cache, need_dx)
    for name, g, w in zip(("dx", "dkernel", "dbias"), got, want):
        if w is None:
            assert g is None
        else:
            assert_close(g, w, dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("n, k, f", [(32, 3136, 128), (32, 128, 10), (1, 1, 1), (7, 300, 17), (130, 40, 129)])
@pytest.mark.parametrize("relu", [False, True])
def test_face_dense_matches_matmul(engine, dtype, n, k, f, relu):
    rng = np.random.default_rng(n * k + f)
    x = rng.standard_normal((n, k)).astype(dtype)
    kernel = rng.standard_normal((k, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    z = x @ kernel + bias
    y_ref = np.maximum(z, 0) if relu else z
    y, cache = kernels.dense_forward(x, kernel, bias, relu=relu)
    assert_close(y, y_ref, dtype, "y")
    dy = rng.standard_normal((n, f)).astype(dtype)
    g = dy * (y_ref > 0) if relu else dy
    dx, dkernel, dbias = kernels.dense_backward(dy, cache)
    assert_close(dx, g @ kernel.T, dtype, "dx")
    assert_close(dkernel, x.T @ g, dtype, "dkernel")
    assert_close(dbias, g.sum(axis=0), dtype, "dbias")
    y, cache = kernels.dense_forward(x, kernel, None)
    dx, dkernel, dbias = kernels.dense_backward(dy, cache, need_dx=False)
    assert dx is None and dbias is None
    assert_close(dkernel, x.T @ dy, dtype, "dkernel without bias")


def test_face_dense_rejects_bad_arguments_with_clear_messages(engine):
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="kernel must be 2-D \\(5, units\\)"):
        kernels.dense_forward(x, np.zeros((6, 3), np.float32), None)
    with pytest.raises(TypeError, match="share one dtype"):
        kernels.dense_forward(x, np.zeros((5, 3), np.float64), None)
    with pytest.raises(ValueError, match="bias must have shape \\(3,\\)"):
        kernels.dense_forward(x, np.zeros((5, 3), np.float32), np.zeros(4, np.float32))
    y, cache = kernels.dense_forward(x, np.zeros((5, 3), np.float32), None)
    with pytest.raises(ValueError, match="upstream gradient must have shape"):
        kernels.dense_backward(np.zeros((4, 4), np.float32), cache)


@requires_c
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 70), st.booleans(), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([1, 2]), st.integers(0, 2**31 - 1))
def test_dense_property_matches_matmul(n, k, f, relu, use_bias, dtype, threads, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(dtype)
    kernel = rng.standard_normal((k, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype) if use_bias else None
    c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
    try:
        y, cache = c_engine.dense_forward(x, kernel, bias, relu)
        dy = rng.standard_normal((n, f)).astype(dtype)
        dx, dkernel, dbias = c_engine.dense_backward(dy, cache)
    finally:
        c_engine.set_num_threads(None)
    z = x @ kernel + (bias if use_bias else 0)
    y_ref = np.maximum(z, 0) if relu else z
    g = dy * (y_ref > 0) if relu else dy
    assert_close(y, y_ref.astype(dtype), dtype, "y")
    assert_close(dx, g @ kernel.T, dtype, "dx")
    assert_close(dkernel, x.T @ g, dtype, "dkernel")
    if use_bias:
        assert_close(dbias, g.sum(axis=0), dtype, "dbias")


DENSE_ROW_SPLIT = 128   # csrc/tmpl_dense.h DN_DENSE_ROW_SPLIT: from here the forward splits rows


@requires_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n, k, f", [(DENSE_ROW_SPLIT - 1, 300, 130), (DENSE_ROW_SPLIT, 300, 130),
                                     (DENSE_ROW_SPLIT + 7, 3136, 128), (300, 77, 10), (257, 200, 200)])
def test_dense_forward_bits_do_not_depend_on_threads(dtype, n, k, f):
    """Below DENSE_ROW_SPLIT rows the threads split the columns, from it the rows (then each
    reads only its rows of x): every output's sum runs over K in the same order either way."""
    rng = np.random.default_rng(n + k + f)
    x = rng.standard_normal((n, k)).astype(dtype)
    kernel = rng.standard_normal((k, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    outputs = []
    for threads in (1, 2, 3):
        c_engine.set_num_threads(threads, beyond_cpus=True)
        try:
            outputs.append(c_engine.dense_forward(x, kernel, bias, True)[0])
        finally:
            c_engine.set_num_threads(None)
    assert_close(outputs[0], np.maximum(x @ kernel + bias, 0), dtype, "y")
    for y in outputs[1:]:
        assert y.tobytes() == outputs[0].tobytes()


# ---- building and falling back ----

_HIDE_EXTENSION = """
import importlib.abc, sys
class _HideKernels(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "minicnn._kernels":
            raise ImportError("minicnn._kernels hidden by the test")
        return None
sys.meta_path.insert(0, _HideKernels())
"""


def run_python(code, **env_overrides):
    env = dict(os.environ)
    env.pop("MINICNN_BACKEND", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", _HIDE_EXTENSION + textwrap.dedent(code)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_package_imports_and_trains_on_numpy_when_the_extension_is_absent():
    result = run_python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import minicnn
        assert any("pure-NumPy engine" in str(w.message) for w in caught), [str(w.message) for w in caught]
        import numpy as np
        from minicnn import Conv2D, MaxPooling2D, Flatten, Dense
        info = minicnn.backend_info()
        assert info["engine"] == "numpy" and info["available"] == ["numpy"], info
        assert "hidden by the test" in info["c_engine_error"]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 8, 8, 1))
        target = rng.standard_normal((8, 3))
        layers = [Conv2D(4, (3, 3), padding="same", activation="relu", input_shape=(8, 8, 1), dtype="float64"),
                  MaxPooling2D((2, 2), dtype="float64"), Flatten(dtype="float64"), Dense(3, dtype="float64")]
        shape = (8, 8, 1)
        for layer in layers:
            shape = layer.build(shape)
        losses = []
        for step in range(30):
            out = x
            for layer in layers:
                out = layer.forward(out, training=True)
            losses.append(float(np.mean((out - target) ** 2)))
            grad = 2 * (out - target) / out.size
            for layer in reversed(layers):
                grad = layer.backward(grad)
            for layer in layers:
                for key in layer.params:
                    layer.params[key] -= 0.1 * layer.grads[key]
        assert losses[-1] < 0.7 * losses[0], losses
        print("trained", losses[0], losses[-1])
    """)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "trained" in result.stdout


def test_forcing_the_c_engine_without_the_extension_raises_a_clear_import_error():
    result = run_python("""
        try:
            import minicnn
        except ImportError as error:
            print("IMPORT-ERROR:", error)
        else:
            raise SystemExit("importing minicnn with MINICNN_BACKEND=c and no extension succeeded")
    """, MINICNN_BACKEND="c")
    assert result.returncode == 0, result.stderr + result.stdout
    message = result.stdout
    assert "IMPORT-ERROR:" in message
    assert "C engine" in message and "pip install" in message
    assert "hidden by the test" in message


def test_the_builder_declares_exactly_the_public_header():
    """cffi's declarations are read from the header, so C and Python cannot drift apart."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "csrc"))
    try:
        import build_kernels
    finally:
        sys.path.pop(0)
    cdef = build_kernels.cdef_from_header()
    for name in ("mc_conv2d_forward_f32", "mc_conv2d_backward_f64", "mc_maxpool2d_forward_f32",
                 "mc_maxpool2d_backward_f64", "mc_conv_geom"):
        assert name in cdef
    assert "#" not in cdef, "the cdef section must not contain preprocessor lines"


# -- optimizer updates: C against the NumPy engine's ufuncs ----------------------------------------

UPDATE_SIZES = [1, 7, 16, 33, 4096, 3 * 4096 + 5, 200_003]   # vector tails, chunk edges


def _update_arrays(size, dtype, seed):
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(size).astype(dtype)
    grad = rng.standard_normal(size).astype(dtype) * dtype(0.1)
    m = rng.standard_normal(size).astype(dtype) * dtype(0.01)
    v = np.abs(rng.standard_normal(size)).astype(dtype) * dtype(1e-4)
    grad[::11] = 0                       # v may then be tiny: epsilon matters
    return param, grad, m, v


def _assert_update_parity(got, want, dtype):
    tolerance = {np.float32: 1e-6, np.float64: 1e-12}[dtype]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance * np.abs(w).max())


@requires_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", UPDATE_SIZES)
def test_adam_update_matches_numpy_engine(simd, size, dtype):
    for step, (lr_t, b1, b2, eps) in enumerate([(0.001 * 0.0316 / 0.1, 0.9, 0.999, 1e-7),
                                                (0.05, 0.8, 0.99, 1e-3)]):
        want = _update_arrays(size, dtype, seed=size + step)
        got = tuple(a.copy() for a in want)
        numpy_engine.adam_update(*want, lr_t, b1, b2, eps)
        c_engine.adam_update(*got, lr_t, b1, b2, eps)
        _assert_update_parity(got, want, dtype)


@requires_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", UPDATE_SIZES)
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_update_matches_numpy_engine(simd, size, dtype, momentum, nesterov):
    param, grad, velocity, _ = _update_arrays(size, dtype, seed=size)
    velocity = velocity if momentum else None
    want = (param, velocity)
    got = (param.copy(), None if velocity is None else velocity.copy())
    numpy_engine.sgd_update(want[0], grad, want[1], 0.01, momentum, nesterov)
    c_engine.sgd_update(got[0], grad, got[1], 0.01, momentum, nesterov)
    _assert_update_parity([a for a in got if a is not None], [a for a in want if a is not None], dtype)


@requires_c
def test_adam_update_is_bit_identical_to_numpy_engine_with_gcc():
    # kernels.c turns FMA contraction off for the updates under GCC: every operation rounds
    # like NumPy's ufuncs, so switching engines mid-training changes no bit.
    if "clang" in c_engine.engine_info()["compiler_flags"]:
        pytest.skip("FMA contraction is only switched off under GCC")
    want = _update_arrays(10_001, np.float32, seed=3)
    got = tuple(a.copy() for a in want)
    numpy_engine.adam_update(*want, 0.0123, 0.9, 0.999, 1e-7)
    c_engine.adam_update(*got, 0.0123, 0.9, 0.999, 1e-7)
    for g, w in zip(got, want):
        assert g.tobytes() == w.tobytes()


@requires_c
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_adam_update_does_not_depend_on_threads(threads):
    size = 3 * (1 << 15) + 4099   # above the size where a second thread is woken (2^15)
    want = _update_arrays(size, np.float64, seed=9)
    numpy_engine.adam_update(*want, 0.01, 0.9, 0.999, 1e-7)
    got = _update_arrays(size, np.float64, seed=9)
    c_engine.set_num_threads(threads, beyond_cpus=True)   # 3-4 threads even on 2 cores
    try:
        c_engine.adam_update(*got, 0.01, 0.9, 0.999, 1e-7)
    finally:
        c_engine.set_num_threads(None)
    _assert_update_parity(got, want, np.float64)


@requires_c
def test_updates_of_arrays_c_cannot_touch_in_place_fall_back_to_numpy():
    base = _update_arrays(64, np.float64, seed=1)
    strided = tuple(np.repeat(a[:, None], 2, axis=1)[:, 0] for a in base)   # non-contiguous views
    assert not strided[0].flags.c_contiguous
    want = tuple(a.copy() for a in base)
    numpy_engine.adam_update(*want, 0.01, 0.9, 0.999, 1e-7)
    c_engine.adam_update(*strided, 0.01, 0.9, 0.999, 1e-7)
    _assert_update_parity(strided, want, np.float64)


@requires_c
def test_update_lengths_are_checked_by_c_too():
    param, grad, m, v = _update_arrays(10, np.float32, seed=0)
    before = param.copy()
    status = c_engine.lib.mc_adam_update_f32(
        10, c_engine.ffi.from_buffer("float[]", param), 10, c_engine.ffi.from_buffer("float[]", grad), 9,
        c_engine.ffi.from_buffer("float[]", m), 10, c_engine.ffi.from_buffer("float[]", v), 10,
        0.01, 0.9, 0.999, 1e-7)
    assert status == 2 and param.tobytes() == before.tobytes()


@pytest.mark.parametrize("engine", ["numpy", "c"])
def test_face_optimizer_updates_reject_bad_arguments(engine):
    if engine not in kernels.available_backends():
        pytest.skip("C engine not built here")
    previous = kernels.get_backend()
    kernels.set_backend(engine)
    try:
        p, g, m, v = _update_arrays(6, np.float32, seed=0)
        with pytest.raises(ValueError, match="shape"):
            kernels.optimizer_adam_update(p, g[:5], m, v, 0.01, 0.9, 0.999, 1e-7)
        with pytest.raises(TypeError, match="one dtype"):
            kernels.optimizer_adam_update(p, g.astype(np.float64), m, v, 0.01, 0.9, 0.999, 1e-7)
        frozen = m.copy()
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="writable"):
            kernels.optimizer_adam_update(p, g, frozen, v, 0.01, 0.9, 0.999, 1e-7)
        with pytest.raises(TypeError, match="float32 or float64"):
            kernels.optimizer_sgd_update(p.astype(np.int64), g.astype(np.int64), None, 0.1, 0.0, False)
    finally:
        kernels.set_backend(previous)


@requires_c
@pytest.mark.parametrize("algorithm", ["direct", "winograd"])
@pytest.mark.parametrize("geometry", [
    ((3, 9, 8, 5), (3, 3, 5, 20), (2, 2), "same"),    # stride 2: dy's frame has margins per phase
    ((2, 8, 8, 24), (3, 3, 24, 18), (1, 1), "same"),  # Winograd-eligible, ragged filters
    ((2, 7, 9, 3), (5, 4, 3, 7), (1, 2), "same"),
])
def test_no_pass_reads_scratch_it_did_not_write(algorithm, geometry):
    """The reused workspace filled with NaN before every call (MC_DEBUG builds do this inside C,
    see poison_workspace) gives the bits of a zero-filled one: no step of a forward or backward
    reads a margin or region it did not write itself."""
    x_shape, kernel_shape, strides, padding = geometry
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    bias = rng.standard_normal(kernel_shape[3]).astype(np.float32)
    pads = pads_2d(x_shape[1], x_shape[2], kernel_shape[:2], strides, padding)
    kernels.set_backend("c")
    c_engine.set_algorithm(algorithm)

    def run(fill):
        def filled():   # the thread's reused workspace, every element `fill`, before a call
            c_engine._workspace(np.dtype(np.float32), 1, "test")
            c_engine._scratch.buffers[np.dtype(np.float32)][:] = fill

        results = []
        for relu in (False, True):
            forward = kernels.conv2d_relu_forward if relu else kernels.conv2d_forward
            filled()
            y, cache = forward(x, kernel, bias, strides, pads)
            filled()
            inference = forward(x, kernel, bias, strides, pads, keep_cache=False)[0]
            dy = rng.standard_normal(y.shape).astype(np.float32)
            filled()
            results += [y, inference, *kernels.conv2d_backward(dy, cache, True)]
            filled()
            pooled, conv_cache, pool_cache = kernels.conv2d_maxpool_forward(
                x, kernel, bias, strides, pads, (2, 2), (2, 2), relu=relu)
            filled()
            results += [pooled, *kernels.conv2d_backward_from_maxpool(
                rng.standard_normal(pooled.shape).astype(np.float32), conv_cache, pool_cache, True)]
        return results

    try:
        state = rng.bit_generator.state
        clean = run(0.0)
        rng.bit_generator.state = state
        poisoned = run(np.nan)
    finally:
        c_engine.set_algorithm("auto")
    for a, b in zip(clean, poisoned):
        assert np.all(np.isfinite(b)) and a.tobytes() == b.tobytes()
