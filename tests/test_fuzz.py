"""Fuzzing the kernel face and every public layer with hypothesis, on both engines.

Random shapes, strides, paddings, pool sizes, batch sizes, memory layouts and dtypes (float32,
float64, float16, integers, bool, complex, object). The only acceptable outcomes:
  * a clean ValueError or TypeError, raised the same way on both engines, or
  * a result equal to the NumPy engine's (itself checked against tests/naive.py in
    test_kernels.py; here too, on the smallest cases) -- never a crash, never another exception.
Each test is bounded (max_examples) so that the whole file runs in well under a minute.
"""
import contextlib

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Sequential, Softmax, kernels

import naive

ENGINES = kernels.available_backends()
FLOATS = [np.float32, np.float64]
OTHER_DTYPES = [np.float16, np.int32, np.uint8, bool, np.complex64, object]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def engine(name):
    previous = kernels.get_backend()
    minicnn.set_backend(name)
    try:
        yield
    finally:
        minicnn.set_backend(previous)


def tolerance(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-4)


def layout(array, how):
    """The same values as `array`, handed over C-contiguous, Fortran-ordered, as a strided view
    or read-only."""
    if how == "contiguous" or array.ndim == 0:
        return array
    if how == "fortran":
        return np.asfortranarray(array)
    if how == "strided":
        big = np.zeros(tuple(2 * s for s in array.shape), array.dtype)
        view = big[(slice(None, None, 2),) * array.ndim]
        view[...] = array
        return view
    frozen = array.copy()
    frozen.flags.writeable = False
    return frozen


LAYOUT = st.sampled_from(["contiguous", "fortran", "strided", "read-only"])


def run_on_every_engine(compute):
    """compute() on each engine: either all raise the same clean exception type, or all return;
    returns {engine: result} (an exception instance where it raised)."""
    outcomes = {}
    for name in ENGINES:
        with engine(name):
            try:
                outcomes[name] = compute()
            except (ValueError, TypeError) as error:
                outcomes[name] = error
    kinds = {name: type(o).__name__ if isinstance(o, Exception) else "result" for name, o in outcomes.items()}
    assert len(set(kinds.values())) == 1, f"engines disagree: {kinds} {outcomes}"
    event(kinds["numpy"])                          # --hypothesis-show-statistics shows the mix
    return outcomes


def assert_same(results, dtype, reference="numpy"):
    for name, result in results.items():
        if isinstance(result, Exception):
            continue
        for got, want in zip(result, results[reference]):
            if want is None:
                assert got is None
            else:
                assert got.dtype == want.dtype and got.shape == want.shape, name
                np.testing.assert_allclose(got, want, **tolerance(dtype), err_msg=name)


# -- the kernel face ---------------------------------------------------------------------------

conv_problems = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9),
    "c": st.sampled_from([1, 2, 3, 5, 16, 17]), "f": st.integers(1, 6),
    "kh": st.integers(1, 4), "kw": st.integers(1, 4),
    "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "pads": st.tuples(*[st.integers(0, 3)] * 4),
    "bias": st.booleans(), "need_dx": st.booleans(), "relu": st.booleans(),
    "dtype": st.sampled_from(FLOATS * 3 + OTHER_DTYPES),
    "layout": LAYOUT, "seed": st.integers(0, 2 ** 31),
})


@FUZZ
@given(conv_problems)
def test_conv2d_face_fuzz(p):
    rng = np.random.default_rng(p["seed"])
    dtype = p["dtype"]
    x = rng.uniform(-1, 1, (p["n"], p["h"], p["w"], p["c"])).astype(dtype)
    kernel = rng.uniform(-1, 1, (p["kh"], p["kw"], p["c"], p["f"])).astype(dtype)
    bias = rng.uniform(-1, 1, p["f"]).astype(dtype) if p["bias"] else None
    # Pads as large as the kernel are refused by the face (tests/test_kernels.py); here they
    # stay under it, as every padding mode makes them.
    strides = (p["sh"], p["sw"])
    pads = tuple(min(pd, k - 1) for pd, k in zip(p["pads"], (p["kh"], p["kh"], p["kw"], p["kw"])))
    fits = p["h"] + pads[0] + pads[1] >= p["kh"] and p["w"] + pads[2] + pads[3] >= p["kw"]
    forward = kernels.conv2d_relu_forward if p["relu"] else kernels.conv2d_forward
    given_x, given_kernel = layout(x, p["layout"]), layout(kernel, p["layout"])
    x_before = given_x.copy()

    def compute():
        y, cache = forward(given_x, given_kernel, bias, strides, pads)
        dy = layout(np.random.default_rng(p["seed"] + 1).uniform(-1, 1, y.shape).astype(dtype), p["layout"])
        dy_before = dy.copy()
        dx, dkernel, dbias = kernels.conv2d_backward(dy, cache, need_dx=p["need_dx"])
        np.testing.assert_array_equal(dy, dy_before)            # dy is never written
        return y, dx, dkernel, dbias

    results = run_on_every_engine(compute)
    np.testing.assert_array_equal(given_x, x_before)            # nor is x
    outcome = results["numpy"]
    if dtype not in FLOATS:
        assert isinstance(outcome, TypeError) and str(np.dtype(dtype)) in str(outcome)
        return
    if not fits:
        assert isinstance(outcome, ValueError) and "does not fit" in str(outcome)
        return
    assert not isinstance(outcome, Exception), outcome
    assert_same(results, dtype)
    y = outcome[0]
    if p["n"] * y.size * p["kh"] * p["kw"] * p["c"] < 4000:     # the naive loops, where cheap
        reference = naive.conv2d(x.astype(np.float64), kernel.astype(np.float64), bias, strides, pads)
        np.testing.assert_allclose(y, np.maximum(reference, 0) if p["relu"] else reference, **tolerance(dtype))


pool_problems = st.fixed_dictionaries({
    "n": st.integers(1, 3), "h": st.integers(1, 9), "w": st.integers(1, 9), "c": st.integers(1, 5),
    "ph": st.integers(1, 4), "pw": st.integers(1, 4), "sh": st.integers(1, 3), "sw": st.integers(1, 3),
    "pads": st.tuples(*[st.integers(0, 1)] * 4),
    "ties": st.booleans(),
    "dtype": st.sampled_from(FLOATS * 3 + OTHER_DTYPES),
    "layout": LAYOUT, "seed": st.integers(0, 2 ** 31),
})


@FUZZ
@given(pool_problems)
def test_maxpool2d_face_fuzz(p):
    rng = np.random.default_rng(p["seed"])
    dtype = p["dtype"]
    shape = (p["n"], p["h"], p["w"], p["c"])
    values = rng.integers(0, 3, shape) if p["ties"] else rng.uniform(-1, 1, shape)   # many ties
    x = values.astype(dtype)
    pool, strides = (p["ph"], p["pw"]), (p["sh"], p["sw"])
    # A window lying wholly in the padding is a case Keras never makes: pads stay under the window.
    pads = tuple(min(pd, k - 1) for pd, k in zip(p["pads"], (p["ph"], p["ph"], p["pw"], p["pw"])))
    fits = p["h"] + pads[0] + pads[1] >= p["ph"] and p["w"] + pads[2] + pads[3] >= p["pw"]
    given_x = layout(x, p["layout"])

    def compute():
        y, cache = kernels.maxpool2d_forward(given_x, pool, strides, pads)
        dy = np.random.default_rng(p["seed"] + 1).uniform(-1, 1, y.shape).astype(dtype)
        return y, kernels.maxpool2d_backward(layout(dy, p["layout"]), cache)

    results = run_on_every_engine(compute)
    outcome = results["numpy"]
    if dtype not in FLOATS:
        assert isinstance(outcome, TypeError)
        return
    if not fits:
        assert isinstance(outcome, ValueError)
        return
    assert not isinstance(outcome, Exception), outcome
    for name, (y, dx) in results.items():          # max pooling moves values: exact, ties included
        np.testing.assert_array_equal(y, outcome[0], err_msg=name)
        # dx too, up to the order in which overlapping windows (stride < pool) add up.
        np.testing.assert_allclose(dx, outcome[1], **tolerance(dtype), err_msg=name)
    reference, _ = naive.maxpool2d(x.astype(np.float64), pool, strides, pads)
    np.testing.assert_array_equal(outcome[0], reference.astype(dtype))


dense_problems = st.fixed_dictionaries({
    "n": st.integers(1, 40), "k": st.integers(1, 70), "f": st.integers(1, 40),
    "bias": st.booleans(), "relu": st.booleans(), "need_dx": st.booleans(),
    "dtype": st.sampled_from(FLOATS * 3 + OTHER_DTYPES),
    "layout": LAYOUT, "seed": st.integers(0, 2 ** 31),
})


@FUZZ
@given(dense_problems)
def test_dense_face_fuzz(p):
    rng = np.random.default_rng(p["seed"])
    dtype = p["dtype"]
    x = layout(rng.uniform(-1, 1, (p["n"], p["k"])).astype(dtype), p["layout"])
    kernel = layout(rng.uniform(-1, 1, (p["k"], p["f"])).astype(dtype), p["layout"])
    bias = rng.uniform(-1, 1, p["f"]).astype(dtype) if p["bias"] else None

    def compute():
        y, cache = kernels.dense_forward(x, kernel, bias, relu=p["relu"])
        dy = rng.uniform(-1, 1, y.shape).astype(dtype)
        return (y,) + tuple(kernels.dense_backward(dy, cache, need_dx=p["need_dx"]))

    rng_state = rng.bit_generator.state

    def same_dy_every_time():
        rng.bit_generator.state = rng_state
        return compute()

    results = run_on_every_engine(same_dy_every_time)
    if dtype not in FLOATS:
        assert all(isinstance(r, TypeError) for r in results.values()), results
        return
    assert not any(isinstance(r, Exception) for r in results.values()), results
    assert_same(results, dtype)
    want = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64) + (0 if bias is None else bias)
    np.testing.assert_allclose(results["numpy"][0], np.maximum(want, 0) if p["relu"] else want, **tolerance(dtype))


# -- every public layer, alone and in a model ----------------------------------------------------

def layer_strategy():
    return st.one_of(
        st.builds(lambda f, k, s, pad, act: ("Conv2D", dict(filters=f, kernel_size=k, strides=s, padding=pad, activation=act)),
                  st.integers(1, 5), st.tuples(st.integers(1, 4), st.integers(1, 4)),
                  st.tuples(st.integers(1, 3), st.integers(1, 3)), st.sampled_from(["valid", "same"]),
                  st.sampled_from([None, "relu", "softmax"])),
        st.builds(lambda k, s, pad: ("MaxPooling2D", dict(pool_size=k, strides=s, padding=pad)),
                  st.tuples(st.integers(1, 4), st.integers(1, 4)),
                  st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
                  st.sampled_from(["valid", "same"])),
        st.just(("ReLU", {})), st.just(("Softmax", {})), st.just(("Flatten", {})),
    )


CLASSES = {"Conv2D": Conv2D, "MaxPooling2D": MaxPooling2D, "ReLU": ReLU, "Softmax": Softmax,
           "Flatten": Flatten, "Dense": Dense}


@settings(FUZZ, max_examples=300)
@given(
    spec=st.lists(layer_strategy(), min_size=1, max_size=4),
    head=st.one_of(st.none(), st.integers(1, 6)),
    batch=st.integers(1, 4), h=st.integers(1, 10), w=st.integers(1, 10), c=st.integers(1, 4),
    dtype=st.sampled_from(FLOATS * 3 + OTHER_DTYPES),
    model_dtype=st.sampled_from(["float32", "float64"]),
    how=LAYOUT, seed=st.integers(0, 2 ** 31),
)
def test_random_layer_stacks_fuzz(spec, head, batch, h, w, c, dtype, model_dtype, how, seed):
    """A random stack (optionally ending in Flatten + Dense) gets a random input straight into
    Sequential.forward/backward: clean errors (same on both engines), or equal results."""
    layers_spec = list(spec) + ([("Flatten", {}), ("Dense", dict(units=head, activation="softmax"))] if head else [])
    x = layout(np.random.default_rng(seed).uniform(-2, 2, (batch, h, w, c)).astype(dtype), how)

    def compute():
        minicnn.set_seed(seed)
        model = Sequential([CLASSES[name](dtype=model_dtype, **kwargs) for name, kwargs in layers_spec])
        y = model.forward(x, training=True)
        dy = np.random.default_rng(seed + 1).uniform(-1, 1, y.shape).astype(model_dtype)
        dx = model.backward(dy)
        grads = [g for layer in model.layers for g in layer.grads.values()]
        return [y, dx] + grads

    results = run_on_every_engine(compute)
    outcome = results["numpy"]
    if np.dtype(dtype) != np.dtype(model_dtype):   # refused: for its dtype, or its shape first
        assert isinstance(outcome, Exception), "another dtype was computed with"
        assert isinstance(outcome, ValueError) or "dtype" in str(outcome), outcome
        return
    if isinstance(outcome, Exception):             # a window that does not fit, a rank that does not
        assert isinstance(outcome, ValueError), outcome
        assert "does not fit" in str(outcome) or "received" in str(outcome), outcome
        return
    assert_same(results, np.dtype(model_dtype))


@settings(FUZZ, max_examples=100)
@given(
    n=st.integers(1, 30), batch=st.integers(1, 40),
    dtype=st.sampled_from([np.uint8, np.int64, np.float16, np.float32, np.float64, bool, np.complex64, object]),
    labels=st.sampled_from(["ok"] * 4 + ["float-whole", "out-of-range", "negative", "fractional"]),
    how=LAYOUT, seed=st.integers(0, 2 ** 31),
)
def test_predict_and_evaluate_fuzz(n, batch, dtype, labels, how, seed):
    rng = np.random.default_rng(seed)
    x = layout(rng.integers(0, 256, (n, 5, 5, 1)).astype(dtype), how)
    y = {"ok": rng.integers(0, 3, n), "float-whole": rng.integers(0, 3, n).astype(float),
         "out-of-range": np.full(n, 3), "negative": np.full(n, -1), "fractional": np.full(n, 0.5)}[labels]

    def compute():
        minicnn.set_seed(0)
        model = Sequential([Conv2D(2, 2, activation="relu", input_shape=(5, 5, 1)), MaxPooling2D(2),
                            Flatten(), Dense(3, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
        probabilities = model.predict(x, batch_size=batch, verbose=0)
        loss, accuracy = model.evaluate(x, y, batch_size=batch, verbose=0)
        return probabilities, np.array(loss), np.array(accuracy)

    results = run_on_every_engine(compute)
    outcome = results["numpy"]
    if np.dtype(dtype).kind not in "biuf":
        assert isinstance(outcome, TypeError) and "predict: x" in str(outcome)
    elif labels not in ("ok", "float-whole"):
        assert isinstance(outcome, ValueError) and str(outcome).startswith("evaluate: y:")
    else:
        assert not isinstance(outcome, Exception), outcome
        assert np.isfinite(outcome[0]).all() and outcome[0].shape == (n, 3)
        assert_same(results, np.float32)
