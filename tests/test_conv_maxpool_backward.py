"""A convolution and the max pool after it as one operation each way: the forward
(kernels.conv2d_maxpool_forward, in chunks of images, keeping no convolution output) and the
convolution's backward that takes the pool's gradient itself (conv2d_backward_from_maxpool);
Sequential's conv + max-pool fusion.

Both must give exactly the bits of the two layers' passes apart: on both engines, every SIMD
level, 1-4 threads, float32 and float64, with and without the fused ReLU and the input
gradient, with NaN, infinities and signed zeros in the gradient and in the activations, on
pools that tile the output and pools that leave cells out, on batches of several chunks.
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
    (23, 28, 28, 1, 32, 3, (2, 2), (2, 2)),     # the seed's first layer: 3 chunks of 10, 10, 3
    # 5x5 on Winograd (forward and dx; the kernel gradient too in the second): chunks of 8 + 1
    # images (float64: 4 + 4 + 1), all on the kernel the first chunk transformed
    (9, 16, 16, 32, 128, 5, (2, 2), (2, 2)),
    (3, 12, 11, 48, 48, 5, (2, 2), (2, 2)),
]


def _both_ways(geometry, relu, need_dx, dtype, seed, specials):
    """[pooled, the pool's dx, dx, dkernel, dbias] three ways: both passes fused, the layers'
    passes apart, and the fused backward after the forwards apart."""
    n, h, w, c, f, k, pool, strides = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    if specials:
        x[0, 0, 0, 0] = np.nan   # a NaN activation wins its window and is masked by the ReLU
    kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    pads = ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)
    forward = kernels.conv2d_relu_forward if relu else kernels.conv2d_forward
    y, cache = forward(x, kernel, bias, (1, 1), pads)
    pooled, pool_cache = kernels.maxpool2d_forward(y, pool, strides, (0, 0, 0, 0))
    pooled_fused, cache_fused, pool_cache_fused = kernels.conv2d_maxpool_forward(
        x, kernel, bias, (1, 1), pads, pool, strides, relu=relu)
    dpool = rng.standard_normal(pooled.shape).astype(dtype)
    if specials:
        flat = dpool.reshape(-1)
        flat[::5] = -0.0
        flat[1], flat[2], flat[3] = np.inf, -np.inf, np.nan
    with np.errstate(invalid="ignore"):   # inf * 0 and NaN sums: the same on both paths
        fused = kernels.conv2d_backward_from_maxpool(dpool, cache_fused, pool_cache_fused, need_dx)
        from_unfused_forward = kernels.conv2d_backward_from_maxpool(dpool, cache, pool_cache, need_dx)
        apart = kernels.conv2d_backward(kernels.maxpool2d_backward(dpool, pool_cache), cache, need_dx)
        # the fused forward's pool cache serves the pool's own backward too
        pool_grads = [kernels.maxpool2d_backward(dpool, c) for c in (pool_cache_fused, pool_cache)]
    return ([pooled_fused, pool_grads[0], *fused], [pooled, pool_grads[1], *apart],
            [pooled, pool_grads[1], *from_unfused_forward])


def _assert_same_bits(fused, apart, *more):
    if more:
        _assert_same_bits(fused, *more)
    for name, a, b in zip(("pooled", "pool's dx", "dx", "dkernel", "dbias"), fused, apart):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), f"{name} differs from the two backwards apart"


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:5])) + f"-pool{g[6]}s{g[7]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_passes_give_the_bits_of_the_two_layers_passes(backend, geometry, dtype):
    for relu in (True, False):
        for need_dx in (True, False):
            for specials in (False, True):
                _assert_same_bits(*_both_ways(geometry, relu, need_dx, dtype, 7, specials))


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
                _assert_same_bits(*_both_ways(geometry, True, geometry[0] % 2 == 0, dtype, 3, True))
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
    for pool, strides in [((2, 2), (1, 1)), ((5, 5), (5, 5))]:
        with pytest.raises(ValueError, match="must not overlap and have at most 16 cells"):
            kernels.conv2d_maxpool_forward(x, kernel, None, (1, 1), (1, 1, 1, 1), pool, strides, relu=True)
    with pytest.raises(ValueError, match="does not fit the convolution's output"):
        kernels.conv2d_maxpool_forward(x, kernel, None, (1, 1), (0, 0, 0, 0), (1, 7), (1, 7))
    pooled, under_cache, pool_cache = kernels.conv2d_maxpool_forward(x, kernel, None, (1, 1), (1, 1, 1, 1),
                                                                     (2, 2), (2, 2), relu=True)
    with pytest.raises(TypeError, match="its backward is conv2d_backward_from_maxpool"):
        kernels.conv2d_backward(np.ones((2, 8, 8, 4)), under_cache)
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


@requires_c
def test_the_fused_forward_entry_point_checks_every_length_and_the_pool_geometry():
    n, h, w, c, f = 2, 6, 6, 2, 3
    conv = ffi.new("mc_conv_geom *", dict(n=n, h=h, w=w, c=c, kh=3, kw=3, f=f, stride_h=1, stride_w=1,
                                          pad_top=1, pad_bottom=1, pad_left=1, pad_right=1))
    pool_fields = dict(n=n, h=h, w=w, c=f, pool_h=2, pool_w=2, stride_h=2, stride_w=2,
                       pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)
    x, kernel, bias, xpad = np.zeros(n * h * w * c), np.zeros(9 * c * f), np.zeros(f), np.zeros(n * 8 * 8 * c)
    pooled, argmax = np.zeros(n * 3 * 3 * f), np.zeros(n * 3 * 3 * f, np.int32)
    work = np.zeros(lib.mc_conv2d_forward_maxpool_workspace(conv, ffi.new("mc_pool_geom *", pool_fields), 8, 1))
    lengths = dict(x_len=x.size, kernel_len=kernel.size, bias_len=f, xpad_len=xpad.size, pooled_len=pooled.size,
                   argmax_len=argmax.size, work_len=work.size)

    def call(pool=None, **change):
        args = {**lengths, **change}
        geometry = ffi.new("mc_pool_geom *", dict(pool_fields, **(pool or {})))
        return lib.mc_conv2d_forward_maxpool_f64(
            conv, geometry, _p(x), args["x_len"], _p(kernel), args["kernel_len"], _p(bias), args["bias_len"], 1,
            _p(xpad), args["xpad_len"], _p(pooled), args["pooled_len"], _p(argmax, "int32_t[]"),
            args["argmax_len"], _p(work), args["work_len"])

    assert call() == lib.MC_OK
    for name, length in lengths.items():
        assert call(**{name: length - 1}) == lib.MC_ERR_SIZE, name
    for pool in (dict(stride_w=1), dict(pad_left=1), dict(w=w - 1), dict(c=f - 1), dict(n=n - 1),
                 dict(pool_h=4, pool_w=5, stride_h=4, stride_w=5)):
        assert call(pool) == lib.MC_ERR_GEOMETRY, pool
        assert lib.mc_conv2d_forward_maxpool_workspace(conv, ffi.new("mc_pool_geom *", dict(pool_fields, **pool)), 8, 1) == -1


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
def test_sequential_runs_each_eligible_pair_as_one_call_each_way(backend, dtype, monkeypatch):
    """The model's forward and backward take the fused path exactly for the eligible pairs and
    give the outputs and gradients of running every layer on its own, bit for bit."""
    model = _pool_model("fused", dtype)
    x = np.random.default_rng(0).standard_normal((3, 10, 10, 2)).astype(dtype)
    dy = np.random.default_rng(1).standard_normal((3, 3)).astype(dtype)
    calls = []
    originals = {name: getattr(kernels, name) for name in ("conv2d_maxpool_forward", "conv2d_backward_from_maxpool")}
    for name, real in originals.items():
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    for training in (True, False):
        y_fused = model.forward(x, training=training)
        assert calls == ["conv2d_maxpool_forward"] * 2, "conv+relu/pool 2 and conv/pool 2 stride 3 run fused"
        calls.clear()
        if training:
            dx_fused = model.backward(dy)
            assert calls == ["conv2d_backward_from_maxpool"] * 2
            calls.clear()
            grads_fused = [g.tobytes() for layer in model.layers for g in layer.grads.values()]
        h = x                                  # the same layers, one at a time: no fusion
        for layer in model.layers:
            h = layer.forward(h, training=training)
        assert calls == [] and h.tobytes() == y_fused.tobytes()
        if training:
            g = dy
            for layer in reversed(model.layers):
                g = layer.backward(g)
            assert g.tobytes() == dx_fused.tobytes()
            assert grads_fused == [g.tobytes() for layer in model.layers for g in layer.grads.values()]
    model.forward(x, training=True)
    calls.clear()
    real = originals["conv2d_backward_from_maxpool"]
    monkeypatch.setattr(kernels, "conv2d_backward_from_maxpool",
                        lambda dy, cache, pool_cache, need_dx=True: calls.append(need_dx) or real(dy, cache, pool_cache, need_dx))
    model.backward(dy, need_input_gradient=False)
    assert calls == [True, False], "the first convolution computes no input gradient"
    # after the fused forward, the convolution's own backward says what to call instead
    model.forward(x, training=True)
    with pytest.raises(TypeError, match="conv2d_backward_from_maxpool"):
        model.layers[0].backward(np.ones((3, 10, 10, 8), dtype))


def test_a_model_of_one_pair_checks_its_input_once_fused():
    """The pair as the model's first layers still gets the input check of a first layer."""
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(2)])
    model.forward(np.zeros((1, 6, 6, 1), "float32"))
    with pytest.raises(ValueError, match="6, 6, 1"):
        model.forward(np.zeros((1, 6, 5, 1), "float32"))


def test_training_with_the_fusion_gives_the_same_weights(backend, monkeypatch):
    """Three epochs of the seed-like model with and without the fused backward: identical
    weights, bit for bit."""
    x = np.random.default_rng(2).random((40, 10, 10, 2)).astype("float32")
    y = np.random.default_rng(3).integers(0, 3, 40)
    weights = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(Conv2D, "fuses_following_maxpool", lambda self, following: False)
        model = _pool_model(f"fused_{fused}")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=16, epochs=3, shuffle=True, verbose=0)
        weights.append([w.tobytes() for w in model.get_weights()])
    assert weights[0] == weights[1]
