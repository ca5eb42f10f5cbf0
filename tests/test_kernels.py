"""The kernel face against the naive float64 loops, on every engine.

Tolerance: 1e-12 absolute on values of order 1 (float64). The grid covers non-square kernels,
odd sizes, strides 1, 2 and (2, 1), 'valid' and 'same', one and several channels, batch 1, and
a kernel as large as the input.
"""
import warnings

import numpy as np
import pytest

from minicnn import kernels

import naive

# (batch, height, width, channels, kernel_h, kernel_w, filters, strides, padding)
CONV_GRID = [
    (1, 5, 5, 1, 3, 3, 2, (1, 1), "valid"),
    (2, 7, 5, 3, 3, 2, 4, (1, 1), "same"),
    (2, 7, 5, 3, 3, 2, 4, (2, 2), "same"),
    (2, 7, 5, 3, 2, 3, 3, (2, 1), "valid"),
    (1, 6, 6, 4, 6, 6, 2, (1, 1), "valid"),      # kernel as large as the input -> 1x1
    (1, 4, 5, 2, 4, 5, 3, (1, 1), "same"),       # kernel as large as the input, padded
    (3, 8, 7, 3, 1, 1, 5, (2, 2), "same"),
    (2, 9, 9, 1, 5, 5, 3, (2, 2), "same"),
    (2, 8, 8, 3, 3, 3, 2, (3, 3), "valid"),
    (1, 5, 7, 2, 2, 2, 1, (2, 2), "same"),
    (1, 6, 4, 5, 3, 2, 2, (1, 2), "same"),
]

# (batch, height, width, channels, pool_h, pool_w, strides, padding)
POOL_GRID = [
    (2, 4, 4, 3, 2, 2, (2, 2), "valid"),
    (1, 5, 7, 2, 2, 2, (2, 2), "valid"),         # odd sizes floor
    (2, 7, 7, 1, 3, 3, (2, 2), "valid"),         # overlapping windows
    (1, 6, 5, 2, 3, 3, (1, 1), "valid"),
    (2, 6, 7, 2, 2, 3, (1, 2), "valid"),         # non-square window and stride
    (1, 5, 5, 3, 2, 2, (2, 2), "same"),
    (1, 7, 6, 2, 3, 3, (2, 2), "same"),
    (1, 3, 3, 1, 3, 3, (1, 1), "valid"),         # window as large as the input
]

TOL64 = 1e-12


def conv_case(case, rng, dtype=np.float64):
    n, h, w, c, kh, kw, f, strides, padding = case
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    pads = kernels.pads_2d(h, w, (kh, kw), strides, padding)
    return x, kernel, bias, strides, pads


def tie_free(rng, shape, dtype=np.float64):
    """Distinct values in random order, so every pooling window has a unique maximum."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0).astype(dtype)


@pytest.mark.parametrize("case", CONV_GRID, ids=str)
def test_conv2d_matches_naive_loops(backend, case, rng):
    x, kernel, bias, strides, pads = conv_case(case, rng)
    y, cache = kernels.conv2d_forward(x, kernel, bias, strides, pads)
    expected = naive.conv2d(x, kernel, bias, strides, pads)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=0, atol=TOL64)

    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    dx, dkernel, dbias = kernels.conv2d_backward(dy, cache)
    ref_dx, ref_dkernel, ref_dbias = naive.conv2d_backward(dy, x, kernel, strides, pads)
    assert dx.shape == x.shape and dkernel.shape == kernel.shape and dbias.shape == bias.shape
    np.testing.assert_allclose(dx, ref_dx, rtol=0, atol=TOL64)
    np.testing.assert_allclose(dkernel, ref_dkernel, rtol=0, atol=TOL64)
    np.testing.assert_allclose(dbias, ref_dbias, rtol=0, atol=TOL64)
    np.testing.assert_array_equal(dy, dy_before)  # backward never mutates dy


def test_conv2d_pads_follow_tensorflow_same_rule():
    # Written out independently in naive.same_pads; an odd total puts the extra at the end.
    for size, k, s in [(7, 3, 2), (8, 3, 2), (5, 2, 1), (4, 4, 1), (28, 3, 1), (9, 5, 2), (6, 1, 3)]:
        assert kernels.pads_2d(size, size, (k, k), (s, s), "same")[:2] == naive.same_pads(size, k, s)
    assert kernels.pads_2d(8, 8, (3, 3), (2, 2), "same") == (0, 1, 0, 1)


def test_conv2d_without_bias_and_without_input_gradient(backend, rng):
    x, kernel, _, strides, pads = conv_case(CONV_GRID[2], rng)
    y, cache = kernels.conv2d_forward(x, kernel, None, strides, pads)
    np.testing.assert_allclose(y, naive.conv2d(x, kernel, None, strides, pads), rtol=0, atol=TOL64)
    dx, dkernel, dbias = kernels.conv2d_backward(np.ones_like(y), cache, need_dx=False)
    assert dx is None and dbias is None
    np.testing.assert_allclose(dkernel, naive.conv2d_backward(np.ones_like(y), x, kernel, strides, pads)[1],
                               rtol=0, atol=TOL64)


@pytest.mark.parametrize("case", POOL_GRID, ids=str)
def test_maxpool2d_matches_naive_loops(backend, case, rng):
    n, h, w, c, ph, pw, strides, padding = case
    x = tie_free(rng, (n, h, w, c))
    pads = kernels.pads_2d(h, w, (ph, pw), strides, padding)
    y, cache = kernels.maxpool2d_forward(x, (ph, pw), strides, pads)
    expected, winners = naive.maxpool2d(x, (ph, pw), strides, pads)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)
    dy = rng.standard_normal(y.shape)
    dx = kernels.maxpool2d_backward(dy, cache)
    np.testing.assert_allclose(dx, naive.maxpool2d_backward(dy, x.shape, winners), rtol=0, atol=TOL64)


def test_maxpool2d_tie_rule_first_maximum_in_row_major_order_takes_the_gradient(backend):
    # One 3x3 window, stride 1, full of ties at several positions.
    x = np.array([[1.0, 5.0, 5.0],
                  [5.0, 2.0, 5.0],
                  [0.0, 5.0, 5.0]]).reshape(1, 3, 3, 1)
    y, cache = kernels.maxpool2d_forward(x, (3, 3), (1, 1), (0, 0, 0, 0))
    assert y.item() == 5.0
    dx = kernels.maxpool2d_backward(np.full((1, 1, 1, 1), 2.0), cache)
    expected = np.zeros((1, 3, 3, 1))
    expected[0, 0, 1, 0] = 2.0  # the first 5 in row-major order takes all of it
    np.testing.assert_array_equal(dx, expected)

    # Overlapping 2x2 windows over a constant image: each window's top-left element wins.
    x = np.ones((1, 3, 3, 1))
    y, cache = kernels.maxpool2d_forward(x, (2, 2), (1, 1), (0, 0, 0, 0))
    dx = kernels.maxpool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_maxpool2d_nan_propagates_and_takes_the_gradient(backend):
    x = np.array([[1.0, np.nan], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    y, cache = kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
    assert np.isnan(y.item())
    dx = kernels.maxpool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx.ravel(), [0, 1, 0, 0])


def test_maxpool2d_same_padding_never_picks_the_padding(backend):
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1) - 100.0  # all very negative
    pads = kernels.pads_2d(3, 3, (2, 2), (2, 2), "same")
    y, _ = kernels.maxpool2d_forward(x, (2, 2), (2, 2), pads)
    assert np.all(np.isfinite(y)) and y.max() < -100


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_equals_dtype_out(backend, dtype, rng):
    x, kernel, bias, strides, pads = conv_case(CONV_GRID[1], rng, dtype)
    y, cache = kernels.conv2d_forward(x, kernel, bias, strides, pads)
    grads = kernels.conv2d_backward(np.ones_like(y), cache)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    p, pcache = kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
    assert p.dtype == dtype and kernels.maxpool2d_backward(np.ones_like(p), pcache).dtype == dtype


def test_float32_agrees_with_float64(backend, rng):
    x, kernel, bias, strides, pads = conv_case(CONV_GRID[7], rng)
    y64, _ = kernels.conv2d_forward(x, kernel, bias, strides, pads)
    y32, _ = kernels.conv2d_forward(x.astype(np.float32), kernel.astype(np.float32),
                                    bias.astype(np.float32), strides, pads)
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)


def test_face_rejects_bad_arrays_with_clear_messages(rng):
    x = rng.standard_normal((2, 5, 5, 3))
    kernel = rng.standard_normal((3, 3, 3, 4))
    with pytest.raises(ValueError, match="4-D"):
        kernels.conv2d_forward(x[0], kernel, None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="3 channels but the kernel expects 2"):
        kernels.conv2d_forward(x, kernel[:, :, :2], None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="one dtype"):
        kernels.conv2d_forward(x.astype(np.float32), kernel, None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.conv2d_forward(x.astype(np.int64), kernel.astype(np.int64), None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        kernels.conv2d_forward(x[:, :2, :2], kernel, None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="strides"):
        kernels.conv2d_forward(x, kernel, None, (0, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="bias"):
        kernels.conv2d_forward(x, kernel, np.zeros(3), (1, 1), (0, 0, 0, 0))
    y, cache = kernels.conv2d_forward(x, kernel, None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"upstream gradient must have shape \(2, 3, 3, 4\)"):
        kernels.conv2d_backward(np.ones((2, 3, 3, 5)), cache)
    with pytest.raises(TypeError, match="upstream gradient must be float64"):
        kernels.conv2d_backward(np.ones(y.shape, np.float32), cache)


@pytest.mark.parametrize("call,error,message", [
    (lambda x, k: kernels.conv2d_forward(x, k, None, 1, (0, 0, 0, 0)), TypeError, r"strides must be a tuple of 2 integers >= 1, received 1"),
    (lambda x, k: kernels.conv2d_forward(x, k, None, (1.0, 1.0), (0, 0, 0, 0)), ValueError, r"strides must be 2 integers >= 1"),
    (lambda x, k: kernels.conv2d_forward(x, k, None, (2**40, 1), (0, 0, 0, 0)), ValueError, r"at most 16777216"),
    (lambda x, k: kernels.conv2d_forward(x, k, None, (1, 1), (2**31, 0, 0, 0)), ValueError, r"pads must be 4 integers >= 0"),
    (lambda x, k: kernels.conv2d_forward(x, k, None, (1, 1), (3, 0, 0, 0)), ValueError, r"every pad must be smaller than the 3x3 kernel"),
    (lambda x, k: kernels.conv2d_forward(x, k, [0.0] * 4, (1, 1), (0, 0, 0, 0)), TypeError, r"bias must be a NumPy array or None, received list"),
    (lambda x, k: kernels.conv2d_forward(x[:0], k, None, (1, 1), (0, 0, 0, 0)), ValueError, r"x must have no empty axis, received shape \(0, 5, 5, 3\)"),
    (lambda x, k: kernels.conv2d_forward(x, k[:, :, :, :0], None, (1, 1), (0, 0, 0, 0)), ValueError, r"without empty axes"),
    (lambda x, k: kernels.maxpool2d_forward(x, 2, (2, 2), (0, 0, 0, 0)), TypeError, r"pool_size must be a tuple"),
    (lambda x, k: kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 2, 0, 0)), ValueError, r"every pad must be smaller than the 2x2 window"),
    (lambda x, k: kernels.dense_forward(x.reshape(2, -1)[:, :0], k.reshape(27, 4)[:0], None), ValueError, r"x must have no empty axis"),
])
def test_face_refuses_malformed_geometry_on_every_engine(backend, call, error, message, rng):
    """Checked once at the face, so no engine sees (or overflows on) such arguments."""
    with pytest.raises(error, match=message):
        call(rng.standard_normal((2, 5, 5, 3)), rng.standard_normal((3, 3, 3, 4)))


def test_backward_refuses_a_cache_from_another_operation(backend, rng):
    x = rng.standard_normal((1, 4, 4, 1))
    _, pool_cache = kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="cache must be the one conv2d_forward or conv2d_relu_forward returned"):
        kernels.conv2d_backward(np.ones((1, 2, 2, 1)), pool_cache)
    with pytest.raises(TypeError, match="cache must be the one dense_forward returned"):
        kernels.dense_backward(np.ones((1, 2)), ("junk",))


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="'auto', 'c' or 'numpy'"):
        kernels.set_backend("cuda")


@pytest.mark.parametrize("value, default, expected", [
    ("", True, True), ("0", True, False), ("Off", True, False), ("no", True, False), ("TRUE", False, True),
    ("1", False, True), ("offf", True, True), ("yes please", False, False)])
def test_an_on_off_environment_variable_takes_only_on_off_words(monkeypatch, value, default, expected):
    """Bug: MINICNN_ADAPTIVE_THREADS=offf (or any word but 0/false/no/off) silently meant on."""
    from minicnn.config import environment_switch
    monkeypatch.setenv("MINICNN_TEST_SWITCH", value)
    known = value.strip().lower() in ("", "1", "true", "yes", "on", "0", "false", "no", "off")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert environment_switch("MINICNN_TEST_SWITCH", default) is expected
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == (
        [] if known else [f"MINICNN_TEST_SWITCH={value!r} is not one of 1, true, yes, on, 0, false, no, off; "
                          f"ignored (the default, {'on' if default else 'off'}, holds)"])
