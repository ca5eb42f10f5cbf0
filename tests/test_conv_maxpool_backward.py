"""A convolution's backward that takes the following max pool's gradient itself
(kernels.conv2d_backward_from_maxpool, Sequential's conv + max-pool fusion in backward).

It must give exactly the bits of the two backwards apart (the pool's, then the convolution's):
on both engines, every SIMD level, 1-4 threads, float32 and float64, with and without the
fused ReLU and the input gradient, with NaN, infinities and signed zeros in the gradient and
in the activations, on pools that tile the output and pools that leave cells out.
"""
import numpy as np
import pytest

import minicnn
from minicnn import Sequential, kernels
from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

C_BUILT = "c" in kernels.available_backends()
if C_BUILT:
    from minicnn.kernels import c_engine
    from minicnn.kernels.c_engine import ffi, lib
requires_c = pytest.mark.skipif(not C_BUILT, reason="C engine not built here")

# (batch, H, W, C_in, filters, kernel, pool, pool strides): tiling pools, windows that leave
# the last row/column out, gaps between windows, one-cell pools, 4x4 windows, filters below,
# at and above a vector, channels that take the Winograd kernel gradient and input gradient
GEOMETRIES = [
    (3, 8, 8, 2, 5, 3, (2, 2), (2, 2)),
    (1, 7, 9, 3, 16, 3, (2, 2), (2, 2)),
    (4, 12, 12, 1, 32, 3, (2, 2), (2, 2)),
    (2, 10, 11, 4, 33, 3, (3, 3), (3, 3)),
    (2, 10, 11, 4, 64, 3, (2, 2), (3, 3)),
    (2, 14, 14, 32, 64, 3, (2, 2), (2, 2)),
    (2, 9, 9, 20, 24, 5, (2, 3), (2, 4)),
    (5, 9, 9, 3, 7, 1, (4, 4), (4, 4)),
    (2, 6, 6, 3, 9, 3, (1, 1), (1, 1)),
]


def _gradients_both_ways(geometry, relu, need_dx, dtype, seed, specials):
    n, h, w, c, f, k, pool, strides = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    if specials:
        x[0, 0, 0, 0] = np.nan   # a NaN activation wins its window and is masked by the ReLU
    kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    forward = kernels.conv2d_relu_forward if relu else kernels.conv2d_forward
    y, cache = forward(x, kernel, bias, (1, 1), ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))
    pooled, pool_cache = kernels.maxpool2d_forward(y, pool, strides, (0, 0, 0, 0))
    dpool = rng.standard_normal(pooled.shape).astype(dtype)
    if specials:
        flat = dpool.reshape(-1)
        flat[::5] = -0.0
        flat[1], flat[2], flat[3] = np.inf, -np.inf, np.nan
    with np.errstate(invalid="ignore"):   # inf * 0 and NaN sums: the same on both paths
        fused = kernels.conv2d_backward_from_maxpool(dpool, cache, pool_cache, need_dx)
        apart = kernels.conv2d_backward(kernels.maxpool2d_backward(dpool, pool_cache), cache, need_dx)
    return fused, apart


def _assert_same_bits(fused, apart):
    for name, a, b in zip(("dx", "dkernel", "dbias"), fused, apart):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), f"{name} differs from the two backwards apart"


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-pool{g[6]}s{g[7]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backward_from_the_pool_gives_the_bits_of_the_two_backwards(backend, geometry, dtype):
    for relu in (True, False):
        for need_dx in (True, False):
            for specials in (False, True):
                _assert_same_bits(*_gradients_both_ways(geometry, relu, need_dx, dtype, 7, specials))


@requires_c
@pytest.mark.parametrize("level", c_engine.simd_levels() if C_BUILT else [])
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_every_simd_level_and_thread_count_gives_the_same_bits(level, threads):
    previous = kernels.get_backend()
    kernels.set_backend("c")
    c_engine.set_simd_level(level)
    c_engine.set_num_threads(threads, beyond_cpus=True)
    try:
        for geometry in GEOMETRIES:
            for dtype in (np.float32, np.float64):
                _assert_same_bits(*_gradients_both_ways(geometry, True, geometry[0] % 2 == 0, dtype, 3, True))
    finally:
        c_engine.set_num_threads(None)
        c_engine.set_simd_level(c_engine.simd_levels()[0])
        kernels.set_backend(previous)


def test_pools_it_cannot_take_are_refused_by_name(backend):
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3))
    kernel = np.ones((3, 3, 3, 4))
    y, cache = kernels.conv2d_relu_forward(x, kernel, None, (1, 1), (1, 1, 1, 1))
    for pool, strides, pads in [((2, 2), (1, 1), (0, 0, 0, 0)),      # overlapping windows
                                ((3, 3), (3, 3), (1, 1, 1, 1)),      # padding
                                ((5, 5), (5, 5), (0, 0, 0, 0))]:     # 25 cells
        pooled, pool_cache = kernels.maxpool2d_forward(y, pool, strides, pads)
        with pytest.raises(ValueError, match="overlap nor reach padding"):
            kernels.conv2d_backward_from_maxpool(np.ones_like(pooled), cache, pool_cache)
    # a pool over another array than this convolution's output
    other, other_cache = kernels.maxpool2d_forward(np.ones((2, 6, 6, 4)), (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="over this convolution's output"):
        kernels.conv2d_backward_from_maxpool(np.ones_like(other), cache, other_cache)
    pooled, pool_cache = kernels.maxpool2d_forward(y, (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(TypeError, match="maxpool2d_forward"):
        kernels.conv2d_backward_from_maxpool(np.ones_like(pooled), cache, cache)
    with pytest.raises(ValueError):   # dy of the convolution's shape, not the pool's
        kernels.conv2d_backward_from_maxpool(np.ones_like(y), cache, pool_cache)


@requires_c
def test_a_cache_from_the_other_engine_is_refused():
    previous = kernels.get_backend()
    x = np.ones((1, 4, 4, 1))
    try:
        kernels.set_backend("c")
        y, cache = kernels.conv2d_forward(x, np.ones((3, 3, 1, 2)), None, (1, 1), (1, 1, 1, 1))
        kernels.set_backend("numpy")
        pooled, pool_cache = kernels.maxpool2d_forward(y, (2, 2), (2, 2), (0, 0, 0, 0))
        with pytest.raises(ValueError, match="same engine"):
            kernels.conv2d_backward_from_maxpool(np.ones_like(pooled), cache, pool_cache)
    finally:
        kernels.set_backend(previous)


def _p(array, kind="double[]"):
    return ffi.from_buffer(kind, array, require_writable=True)


@requires_c
def test_the_entry_point_checks_every_length_and_the_pool_geometry():
    n, h, w, c, f = 2, 6, 6, 2, 3
    conv = ffi.new("mc_conv_geom *", dict(n=n, h=h, w=w, c=c, kh=3, kw=3, f=f, stride_h=1, stride_w=1,
                                          pad_top=1, pad_bottom=1, pad_left=1, pad_right=1))
    pool_fields = dict(n=n, h=h, w=w, c=f, pool_h=2, pool_w=2, stride_h=2, stride_w=2,
                       pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
    xpad, kernel = np.zeros(n * 8 * 8 * c), np.zeros(9 * c * f)
    dpool, pooled, argmax = np.zeros(n * 3 * 3 * f), np.zeros(n * 3 * 3 * f), np.zeros(n * 3 * 3 * f, np.int32)
    dx, dkernel, dbias = np.zeros(n * h * w * c), np.zeros(9 * c * f), np.zeros(f)
    work = np.zeros(lib.mc_conv2d_backward_workspace(conv, 8, 1, 1))

    def call(pool=None, **change):
        args = {**dict(xpad_len=xpad.size, kernel_len=kernel.size, dpool_len=dpool.size,
                       pooled_len=pooled.size, argmax_len=argmax.size, dx_len=dx.size,
                       dkernel_len=dkernel.size, dbias_len=f, work_len=work.size), **change}
        geometry = ffi.new("mc_pool_geom *", dict(pool_fields, **(pool or {})))
        return lib.mc_conv2d_backward_from_maxpool_f64(
            conv, geometry, _p(xpad), args["xpad_len"], _p(kernel), args["kernel_len"], _p(dpool),
            args["dpool_len"], _p(pooled), args["pooled_len"], _p(argmax, "int32_t[]"), args["argmax_len"],
            _p(dx), args["dx_len"], _p(dkernel), args["dkernel_len"], _p(dbias), args["dbias_len"],
            _p(work), args["work_len"])

    assert call() == lib.MC_OK
    lengths = dict(xpad_len=xpad.size, kernel_len=kernel.size, dpool_len=dpool.size, pooled_len=pooled.size,
                   argmax_len=argmax.size, dx_len=dx.size, dkernel_len=dkernel.size, dbias_len=f)
    for name, length in lengths.items():
        assert call(**{name: length - 1}) == lib.MC_ERR_SIZE, name
    assert call(work_len=work.size - 1) == lib.MC_ERR_SIZE
    for pool in (dict(stride_h=1), dict(pad_top=1), dict(h=h + 1), dict(c=f + 1), dict(n=n + 1),
                 dict(pool_h=5, pool_w=4, stride_h=5, stride_w=4)):
        assert call(pool) == lib.MC_ERR_GEOMETRY, pool


def _pool_model(name, dtype="float32"):
    minicnn.set_seed(11)
    return Sequential([
        Conv2D(8, 3, padding="same", activation="relu", input_shape=(10, 10, 2), dtype=dtype),
        MaxPooling2D(2),
        Conv2D(6, 3, padding="same"),                      # no activation: no mask
        MaxPooling2D(2, strides=3),                        # windows with gaps
        Conv2D(4, 1, activation="softmax"),                # not fused: the softmax's own backward
        MaxPooling2D(1),
        Conv2D(5, 1, activation="relu"),
        MaxPooling2D(2, strides=1, padding="same"),        # overlapping: not fused
        Flatten(),
        Dense(3, activation="softmax"),
    ], name=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sequential_hands_each_eligible_pool_gradient_to_its_convolution(backend, dtype, monkeypatch):
    """The model's backward takes the fused path exactly for the eligible pairs and gives the
    gradients of running every layer's backward on its own, bit for bit."""
    model = _pool_model("fused", dtype)
    x = np.random.default_rng(0).standard_normal((3, 10, 10, 2)).astype(dtype)
    dy = np.random.default_rng(1).standard_normal((3, 3)).astype(dtype)
    calls = []
    real = kernels.conv2d_backward_from_maxpool
    monkeypatch.setattr(kernels, "conv2d_backward_from_maxpool",
                        lambda dy, cache, pool_cache, need_dx=True: calls.append(need_dx) or real(dy, cache, pool_cache, need_dx))
    model.forward(x, training=True)
    dx_fused = model.backward(dy)
    grads_fused = [g.tobytes() for layer in model.layers for g in layer.grads.values()]
    assert calls == [True, True], "the pairs conv+relu/pool 2 and conv/pool 2 stride 3 take the fused path"
    g = dy
    for layer in reversed(model.layers):
        g = layer.backward(g)
    assert g.tobytes() == dx_fused.tobytes()
    assert grads_fused == [g.tobytes() for layer in model.layers for g in layer.grads.values()]
    calls.clear()
    model.forward(x, training=True)
    model.backward(dy, need_input_gradient=False)
    assert calls == [True, False], "the first convolution computes no input gradient"


def test_training_with_the_fusion_gives_the_same_weights(backend, monkeypatch):
    """Three epochs of the seed-like model with and without the fused backward: identical
    weights, bit for bit."""
    x = np.random.default_rng(2).random((40, 10, 10, 2)).astype("float32")
    y = np.random.default_rng(3).integers(0, 3, 40)
    weights = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(Conv2D, "takes_gradient_from", lambda self, following: False)
        model = _pool_model(f"fused_{fused}")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=True, verbose=0)
        weights.append([w.tobytes() for w in model.get_weights()])
    assert weights[0] == weights[1]
