"""The convolution's forward without a cache (keep_cache=False: predict, evaluate, inference
plans): no backward follows, so the C engine never writes the padded batch. It pads a group of
images at a time into its workspace (about MC_FORWARD_GROUP_BYTES of frames) and convolves them
while they are in the caches, or, without padding, reads x itself. Every output must be the
kept forward's, bit for bit: on both algorithms, every SIMD level, 1-3 threads, batch 1, and
batches that span several groups.
"""
import numpy as np
import pytest

from minicnn import Conv2D, MaxPooling2D, Sequential, kernels
from minicnn.kernels.geometry import pads_2d

C_BUILT = "c" in kernels.available_backends()
requires_c = pytest.mark.skipif(not C_BUILT, reason="C engine not built here")
if C_BUILT:
    from minicnn.kernels import c_engine

# csrc/kernels.c MC_FORWARD_GROUP_BYTES: the cases below check that they span several groups
FORWARD_GROUP_BYTES = 1 << 20

# (batch, h, w, c, f, kernel, strides, padding): stride 2 "same" (pads only bottom/right),
# stride-1 3x3 and 5x5 "same" (Winograd-eligible), "valid" (no frame: x read in place), and
# frames of 38x38x80 (f32: 462 KB, two per group; f64: one per group)
GEOMETRIES = [
    (5, 36, 36, 80, 12, (3, 3), (2, 2), "same"),
    (4, 36, 36, 80, 20, (3, 3), (1, 1), "same"),
    (3, 34, 34, 80, 6, (5, 5), (1, 1), "same"),
    (5, 36, 36, 80, 7, (3, 3), (1, 1), "valid"),
    (1, 14, 14, 32, 64, (3, 3), (2, 2), "same"),
    (3, 28, 28, 1, 32, (3, 3), (2, 2), "same"),
    (2, 9, 7, 3, 5, (2, 4), (1, 3), "same"),
]


def frames_per_group(x, kernel, strides, padding):
    top, bottom, left, right = pads_2d(x.shape[1], x.shape[2], kernel.shape[:2], strides, padding)
    frame = (x.shape[1] + top + bottom) * (x.shape[2] + left + right) * x.shape[3] * x.itemsize
    return max(1, FORWARD_GROUP_BYTES // frame)


def case_arrays(geometry, dtype, seed=0):
    n, h, w, c, f, kernel_size, strides, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    pads = pads_2d(h, w, kernel_size, strides, padding)
    return x, kernel, bias, strides, pads


def test_the_geometries_span_several_groups_and_read_x_in_place():
    """The cases below reach what they are meant to: several groups of frames, and "valid"."""
    spans = [len(range(0, g[0], frames_per_group(*case_arrays(g, dtype)[:2], g[6], g[7])))
             for g in GEOMETRIES for dtype in (np.float32, np.float64)]
    assert max(spans) >= 3 and sum(s > 1 for s in spans) >= 5
    assert any(g[7] == "valid" for g in GEOMETRIES)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[:5]}-{g[5]}-s{g[6]}-{g[7]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_the_forward_without_a_cache_gives_the_kept_forwards_bits(backend, geometry, dtype, relu):
    x, kernel, bias, strides, pads = case_arrays(geometry, dtype)
    forward = kernels.conv2d_relu_forward if relu else kernels.conv2d_forward
    kept, cache = forward(x, kernel, bias, strides, pads)
    alone, none = forward(x, kernel, bias, strides, pads, keep_cache=False)
    assert cache is not None and none is None
    assert alone.dtype == kept.dtype and alone.shape == kept.shape
    assert alone.tobytes() == kept.tobytes()


@requires_c
@pytest.mark.parametrize("algorithm", ["direct", "winograd"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=lambda g: f"{g[:5]}-{g[5]}-s{g[6]}-{g[7]}")
def test_every_algorithm_and_thread_count_and_simd_level(geometry, algorithm, threads):
    kernels.set_backend("c")
    before = c_engine.engine_info()["threads"]
    c_engine.set_algorithm(algorithm)
    c_engine.set_num_threads(threads, beyond_cpus=True)
    try:
        for level in c_engine.simd_levels():
            c_engine.set_simd_level(level)
            for dtype in (np.float32, np.float64):
                x, kernel, bias, strides, pads = case_arrays(geometry, dtype, seed=threads)
                kept = kernels.conv2d_relu_forward(x, kernel, bias, strides, pads)[0]
                alone = kernels.conv2d_relu_forward(x, kernel, bias, strides, pads, keep_cache=False)[0]
                assert alone.tobytes() == kept.tobytes(), (level, dtype)
                # and each image as it comes alone (the groups never mix images)
                first = kernels.conv2d_relu_forward(x[:1], kernel, bias, strides, pads, keep_cache=False)[0]
                assert first.tobytes() == kept[:1].tobytes(), (level, dtype)
    finally:
        c_engine.set_simd_level(c_engine.simd_levels()[0])
        c_engine.set_num_threads(before)
        c_engine.set_algorithm("auto")


@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=lambda g: f"{g[:5]}-{g[5]}-s{g[6]}-{g[7]}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_forward_with_its_max_pool_without_a_cache(backend, geometry, dtype):
    x, kernel, bias, strides, pads = case_arrays(geometry, dtype)
    kept = kernels.conv2d_maxpool_forward(x, kernel, bias, strides, pads, (2, 2), (2, 2), relu=True)
    alone = kernels.conv2d_maxpool_forward(x, kernel, bias, strides, pads, (2, 2), (2, 2), relu=True,
                                           keep_cache=False)
    assert kept[1] is not None and kept[2] is not None and alone[1:] == (None, None)
    assert alone[0].tobytes() == kept[0].tobytes()


def test_a_layer_keeps_no_cache_outside_training_and_the_same_bits(backend):
    model = Sequential([Conv2D(8, 3, strides=2, padding="same", activation="relu", input_shape=(20, 20, 3)),
                        Conv2D(6, 3, padding="same"), MaxPooling2D(2)])
    x = np.random.default_rng(1).standard_normal((3, 20, 20, 3)).astype(np.float32)
    trained = model.forward(x, training=True)
    assert all(layer._cache is not None for layer in model.layers)
    inferred = model.forward(x, training=False)
    assert all(layer._cache is None for layer in model.layers)
    assert inferred.tobytes() == trained.tobytes()


@requires_c
def test_c_refuses_an_xpad_length_without_xpad_and_a_workspace_sized_for_keeping_it():
    """xpad NULL must come with length 0 and the workspace of the keep_xpad = 0 query (which
    holds a group's frames); C writes nothing when either is wrong."""
    ffi, lib = c_engine.ffi, c_engine.lib
    geometry = c_engine._conv_geometry((2, 6, 6, 3), (3, 3, 3, 4), (2, 2), (0, 1, 0, 1))
    x = np.ones((2, 6, 6, 3), np.float32)
    kernel = np.ones((3, 3, 3, 4), np.float32)
    y = np.full(2 * 3 * 3 * 4, 7.0, np.float32)
    keeping, inference = (lib.mc_conv2d_forward_workspace(geometry, 4, keep) for keep in (1, 0))
    assert inference > keeping > 0   # the frames of a group (here the whole batch: 2 x 7 x 7 x 3)
    assert inference - keeping >= 2 * 7 * 7 * 3
    work = np.zeros(inference, np.float32)

    def p(a):
        return ffi.from_buffer("float[]", a)

    def forward(xpad_len=0, work_len=work.size):
        return lib.mc_conv2d_forward_f32(geometry, p(x), x.size, p(kernel), kernel.size, ffi.NULL, 0, 0,
                                         ffi.NULL, xpad_len, p(y), y.size, p(work), work_len)

    assert forward(xpad_len=2 * 7 * 7 * 3) == lib.MC_ERR_SIZE
    assert forward(work_len=keeping) == lib.MC_ERR_SIZE
    assert np.all(y == 7.0), "C wrote to a buffer it rejected"
    assert forward() == lib.MC_OK
    out = y.reshape(2, 3, 3, 4)
    assert np.all(out[:, :2, :2] == 27.0)   # windows of ones inside: 3 x 3 taps x 3 channels
    assert np.all(out[:, 2, 2] == 12.0)     # the corner's window: 2 x 2 taps inside the padding
    # "valid" padding needs no frames: the same workspace either way
    valid = c_engine._conv_geometry((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), (0, 0, 0, 0))
    assert lib.mc_conv2d_forward_workspace(valid, 4, 0) == lib.mc_conv2d_forward_workspace(valid, 4, 1)
