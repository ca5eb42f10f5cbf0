"""Memory: predict and evaluate over 60,000 images keep their extra memory bounded by the batch
size, not the dataset (issue 7).

The model is small, so that 60,000 images take seconds even on the NumPy engine, but has every
kind of layer:

    x uint8 (N, 28, 28, 1) -> Conv2D(2, 3x3, strides 2, same, relu) -> (N, 14, 14, 2)
      -> MaxPooling2D(2) -> (N, 7, 7, 2) -> Flatten -> Dense(10, softmax)

The bound, derived from the activation sizes of one batch of B images (float32, 4 bytes):

    the batch converted to float32            B * 28*28*1
    the zero-padded batch ("same": 1 row/col)  B * 29*29*1
    im2col's columns (NumPy engine)            B * 14*14 * 3*3*1
    conv output, ReLU output, a temporary      3 * B * 14*14*2
    pooled output and its bookkeeping          2 * B * 7*7*2

which is 2.38 million elements = 9.5 MB for B = 500, plus the results that must grow with N
(predict's (N, 10) float32 probabilities, 40 bytes an image; evaluate's labels converted once
to intp, 8 bytes an image) and 1 MiB for small objects. The dataset itself (784 bytes an image)
is never copied. Measured with tracemalloc (NumPy reports its allocations there, the C engine's
scratch memory included, as it is a NumPy array), and, for the C engine, whose C code could
also call malloc, as the growth of the process's peak resident memory (VmHWM) in a fresh
process. "Does not scale with N": the same measurement at N = 20,000 and N = 60,000 differs by
no more than the growth of the results.
"""
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, kernels

from processes import run_python

BATCH = 500
MIB = 1 << 20


def per_batch_bytes(batch=BATCH):
    elements = batch * (28 * 28 + 29 * 29 + 14 * 14 * 9 + 3 * 14 * 14 * 2 + 2 * 7 * 7 * 2)
    return 4 * elements


def model():
    minicnn.set_seed(0)
    m = Sequential([Conv2D(2, 3, strides=2, padding="same", activation="relu", input_shape=(28, 28, 1)),
                    MaxPooling2D(2), Flatten(), Dense(10, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    return m


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8),
            rng.integers(0, 10, 60_000).astype(np.uint8))


def peak_extra_bytes(call):
    """Peak of the memory `call` allocates on top of what exists when it starts."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, result


def test_the_stated_bound():
    assert per_batch_bytes() == 4 * 2_380_500           # 9.5 MB for B = 500


def test_predict_and_evaluate_memory_is_bounded_by_the_batch_not_the_dataset(backend, dataset):
    x, y = dataset
    m = model()
    m.evaluate(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0)   # first-call allocations
    peaks = {}
    for n in (20_000, 60_000):
        peaks["predict", n], probabilities = peak_extra_bytes(
            lambda: m.predict(x[:n], batch_size=BATCH, verbose=0))
        assert probabilities.shape == (n, 10) and probabilities.nbytes == 40 * n
        peaks["evaluate", n], _ = peak_extra_bytes(
            lambda: m.evaluate(x[:n], y[:n], batch_size=BATCH, verbose=0))
    for n in (20_000, 60_000):
        assert peaks["predict", n] < per_batch_bytes() + 40 * n + MIB, (n, peaks)
        assert peaks["evaluate", n] < per_batch_bytes() + 8 * n + MIB, (n, peaks)
    # Tripling the dataset adds only the growth of what is returned (predict) or kept (labels).
    assert peaks["predict", 60_000] - peaks["predict", 20_000] < 40 * 40_000 + MIB, peaks
    assert peaks["evaluate", 60_000] - peaks["evaluate", 20_000] < 8 * 40_000 + MIB, peaks
    assert max(peaks.values()) < 4 * x.size / 4              # a float32 copy of x would be 188 MB


def test_the_c_engines_scratch_memory_follows_the_batch_not_the_dataset(dataset):
    if "c" not in kernels.available_backends():
        pytest.skip("C engine not built here")
    from minicnn.kernels import c_engine

    x, _ = dataset
    m = model()
    sizes = {}

    def predict_in_a_fresh_thread():
        # The scratch buffer is per Python thread: a new thread starts without one, whatever
        # earlier tests left in this one.
        m.predict(x[:BATCH], batch_size=BATCH, verbose=0)
        sizes["one batch"] = {dtype: b.nbytes for dtype, b in c_engine._scratch.buffers.items()}
        m.predict(x[:10_000], batch_size=BATCH, verbose=0)
        sizes["20 batches"] = {dtype: b.nbytes for dtype, b in c_engine._scratch.buffers.items()}

    previous = kernels.get_backend()
    minicnn.set_backend("c")
    try:
        worker = threading.Thread(target=predict_in_a_fresh_thread)
        worker.start()
        worker.join()
    finally:
        minicnn.set_backend(previous)
    assert sizes["20 batches"] == sizes["one batch"]
    assert 0 < sum(sizes["one batch"].values()) < per_batch_bytes()


def test_resident_memory_stays_bounded_on_the_c_engine():
    """VmHWM (peak resident set) growth of a fresh process while it predicts and evaluates on
    20,000, then 60,000 images: anything C allocates with malloc shows here even though
    tracemalloc cannot see it. Bound: the tracemalloc bound above plus 8 MiB for the
    allocator's slack and the OpenMP threads' stacks; then tripling N may add only the results'
    growth (1.9 MB) and 2 MiB."""
    if "c" not in kernels.available_backends():
        pytest.skip("C engine not built here")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, minicnn
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_memory import model

        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        minicnn.set_backend("c")
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (60_000, 28, 28, 1), dtype=np.uint8)
        y = rng.integers(0, 10, 60_000).astype(np.uint8)
        m = model()
        m.evaluate(x[:{BATCH}], y[:{BATCH}], batch_size={BATCH}, verbose=0)
        marks = [hwm()]
        m.predict(x[:20_000], batch_size={BATCH}, verbose=0); marks.append(hwm())
        m.evaluate(x[:20_000], y[:20_000], batch_size={BATCH}, verbose=0); marks.append(hwm())
        m.predict(x, batch_size={BATCH}, verbose=0); marks.append(hwm())
        m.evaluate(x, y, batch_size={BATCH}, verbose=0); marks.append(hwm())
        print(*marks)

    """)
    result = run_python(["-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    start, predicted20, evaluated20, predicted60, evaluated60 = map(int, result.stdout.split())
    # Measured here, per step: +0.8, +0.0, +1.6, +0.0 MiB: the growth of predict's result alone.
    assert evaluated20 - start < per_batch_bytes() + 40 * 20_000 + 8 * MIB, result.stdout
    assert evaluated60 - evaluated20 < 40 * 40_000 + 8 * 40_000 + 2 * MIB, result.stdout
