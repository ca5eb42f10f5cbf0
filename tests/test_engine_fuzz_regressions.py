"""Regressions of issue 10: the C engine crashed the Python process on valid input.

The backward pass took the Winograd input gradient's per-thread workspace from regions only
the direct kernel gradient had set up, for min(threads, batch) threads: with dx on Winograd,
dkernel direct (auto mode, C_in < 16 <= filters) and a batch smaller than the thread count, the
second thread's buffer was NULL or stale. Now every per-thread region comes from one workspace
plan that covers every thread (csrc/tmpl_conv_plan.h).

Every geometry of the report is rerun here in auto mode on every SIMD level, in float32 and
float64, with 1-4 threads, fused ReLU on and off, against the NumPy engine (the parity
tolerances of test_c_engine.py: 1e-12 relative for float64, 1e-5 for float32). The cases run
in child processes through scripts/fuzz_engines.py, so a crash fails the test with the
geometry that crashed instead of killing pytest. Thread counts above the CPUs this process may
use run on that many (the engine's cap), so on a two-core machine 3 and 4 run as 2.
"""
import importlib.util
import json
import os
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import processes
from minicnn import kernels

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_BUILT = "c" in kernels.available_backends()
requires_c = pytest.mark.skipif(
    not C_BUILT, reason=f"C engine not built here: {kernels.backend_info().get('c_engine_error')}"
)


def load_fuzz():
    spec = importlib.util.spec_from_file_location(
        "fuzz_engines", os.path.join(REPO_ROOT, "scripts", "fuzz_engines.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = load_fuzz()

# (N, H, W, C_in) -> filters, 3x3 'same': the geometries issue 10 reported
REPORTED = [
    ((1, 28, 28, 1), 32),
    ((1, 13, 13, 6), 16),
    ((1, 16, 16, 1), 64),
    ((1, 28, 28, 15), 16),
    ((2, 28, 28, 1), 32),    # batch 2 with 3 threads
    ((3, 28, 28, 1), 32),    # batch 3 with 4 threads
]


def reported_cases(shape, filters):
    from minicnn.kernels.geometry import pads_2d
    n, h, w, c = shape
    levels = kernels._engines["c"].simd_levels()
    cases = []
    for simd in levels:
        for dtype in ("float32", "float64"):
            for threads in (1, 2, 3, 4):
                for relu in (False, True):
                    cases.append(dict(
                        index=len(cases), seed=len(cases), dtype=dtype, threads=threads, simd=simd,
                        op="conv", n=n, h=h, w=w, c=c, f=filters, kernel=(3, 3), strides=(1, 1),
                        padding="same", pads=pads_2d(h, w, (3, 3), (1, 1), "same"),
                        bias=True, need_dx=True, relu=relu))
    return cases


@requires_c
@pytest.mark.parametrize("shape, filters", REPORTED, ids=lambda v: str(v))
def test_reported_geometries_match_numpy_engine_without_crashing(shape, filters):
    cases = reported_cases(shape, filters)
    results = fuzz.run_cases(cases, timeout=300)
    _, crashes, mismatches = fuzz.summarize(cases, results, 0)
    report = [f"CRASH {fuzz.describe(case)}: {why.strip()}" for case, why in crashes]
    report += [f"MISMATCH {fuzz.describe(case)}: {problems}" for case, problems in mismatches]
    assert not report, "\n".join(report)
    # the geometry reaches the branch that crashed: Winograd dx beside the direct kernel gradient
    if shape[3] < 16:
        branches = {name for result in results.values() for name in result["branches"]}
        assert "conv fwd=direct dkernel=direct dx=winograd" in branches


def run_python(code, **env):
    """`python -c code` in a child importing the minicnn under test (tests/processes.py)."""
    return processes.run_python(["-c", textwrap.dedent(code)], capture_output=True, text=True,
                                timeout=300, env=env)


@requires_c
def test_fit_on_33_images_with_a_last_batch_of_one():
    """The training run of the report: the last batch holds one image, on two threads."""
    proc = run_python("""
        import json, numpy as np, minicnn
        from minicnn import Conv2D, Dense, Flatten, Sequential
        from minicnn.kernels import c_engine
        minicnn.set_backend("c")
        c_engine.set_num_threads(2)
        rng = np.random.default_rng(0)
        x = rng.random((33, 28, 28, 1)).astype("float32")
        y = np.eye(10, dtype="float32")[rng.integers(0, 10, 33)]
        model = Sequential([
            Conv2D(8, 3, padding="same", activation="relu", input_shape=(28, 28, 1)),
            Conv2D(32, 3, padding="same", activation="relu"),
            Flatten(),
            Dense(10, activation="softmax"),
        ])
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        print(json.dumps(history.history["loss"]))
    """, MINICNN_BACKEND="c")
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    losses = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(losses) == 1 and np.isfinite(losses[0]) and losses[0] > 0, losses


@requires_c
@pytest.mark.parametrize("shape, filters", REPORTED[:4], ids=lambda v: str(v))
def test_workspace_query_sizes_exactly_what_the_call_lays_out(shape, filters):
    """The query and the call use one plan: its size runs, one element less is refused. In a
    child (each combination printed before it runs), since a wrong plan crashes."""
    proc = run_python(f"""
        import itertools, numpy as np
        from minicnn.kernels import c_engine
        from minicnn._kernels import ffi, lib
        n, h, w, c = {shape!r}
        filters = {filters!r}
        geometry = c_engine._conv_geometry((n, h, w, c), (3, 3, c, filters), (1, 1), (1, 1, 1, 1))
        rng = np.random.default_rng(3)
        xpad = rng.standard_normal((n, h + 2, w + 2, c))
        kernel = rng.standard_normal((3, 3, c, filters))
        dy = rng.standard_normal((n, h, w, filters))

        def pointer(a):
            return (ffi.from_buffer("double[]", a), a.size) if a is not None else (ffi.NULL, 0)

        for need_dx, relu, threads in itertools.product((True, False), (True, False), (1, 2, 4)):
            c_engine.set_num_threads(threads, beyond_cpus=True)
            size = lib.mc_conv2d_backward_workspace(geometry, 8, int(need_dx), int(relu))
            assert size > 0, size
            for work_len, expected in ((size, 0), (size - 1, 2)):
                print("need_dx", need_dx, "relu", relu, "threads", threads, "work_len", work_len, flush=True)
                work = np.zeros(work_len)
                dx = np.empty((n, h, w, c)) if need_dx else None
                dkernel, dbias = np.empty((3, 3, c, filters)), np.empty(filters)
                status = lib.mc_conv2d_backward_f64(
                    geometry, *pointer(xpad), *pointer(kernel), *pointer(dy),
                    *pointer(np.abs(dy) if relu else None), *pointer(dx), *pointer(dkernel),
                    *pointer(dbias), *pointer(work))
                assert status == expected, (work_len, size, status)
        print("all sizes checked")
    """)
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}; last combination: "
        f"{(proc.stdout.strip().splitlines() or ['none'])[-1]}\n{proc.stderr[-2000:]}")
    assert proc.stdout.strip().endswith("all sizes checked"), proc.stdout


@requires_c
def test_threads_are_capped_at_the_cpus_this_process_may_use():
    """OMP_NUM_THREADS=100000 once asked for a 7.6 GB workspace and crashed inside libgomp."""
    proc = run_python("""
        import os, numpy as np
        from minicnn import kernels
        from minicnn.kernels import c_engine
        kernels.set_backend("c")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = kernels.backend_info()["threads"]
        assert 1 <= threads <= min(cpus, 64), (threads, cpus)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((3, 28, 28, 1)).astype("float32")
        kernel = rng.standard_normal((3, 3, 1, 32)).astype("float32")
        y, cache = kernels.conv2d_forward(x, kernel, None, (1, 1), (1, 1, 1, 1))
        dx, dkernel, _ = kernels.conv2d_backward(np.ones_like(y), cache)
        kernels.set_backend("numpy")
        y_ref, cache_ref = kernels.conv2d_forward(x, kernel, None, (1, 1), (1, 1, 1, 1))
        dx_ref, dkernel_ref, _ = kernels.conv2d_backward(np.ones_like(y_ref), cache_ref)
        for got, want in ((y, y_ref), (dx, dx_ref), (dkernel, dkernel_ref)):
            scale = max(float(np.abs(want).max()), 1.0)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
        c_engine.set_num_threads(100000)
        capped = c_engine.engine_info()["threads"]
        assert capped == threads, (capped, threads)
        print("threads", threads, "cpus", cpus)
    """, OMP_NUM_THREADS="100000")
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("threads "), proc.stdout


# ---- the property version: small enough to run in-process, wide enough for every branch ----

@st.composite
def auto_mode_conv_cases(draw):
    """Convolutions whose auto-mode branches include Winograd for every pass (C_in and filters
    on both sides of 16 and of 32, stride-1 3x3 kernels half the time and 5x5 a quarter), on 1-4
    threads and batches below the thread count; the other quarter any kernel 1-5 and stride 1-3."""
    from minicnn.kernels.geometry import pads_2d
    n = draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    shape = draw(st.integers(0, 3))
    if shape < 2:
        kernel, strides = (3, 3), (1, 1)
    elif shape == 2:
        kernel, strides = (5, 5), (1, 1)
    else:
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["same", "valid"]))
    if kernel[0] > h or kernel[1] > w:
        padding = "same"
    channels = st.one_of(st.integers(1, 15), st.integers(16, 40))
    return dict(
        index=0, seed=draw(st.integers(0, 2**31 - 1)), dtype=draw(st.sampled_from(["float32", "float64"])),
        threads=draw(st.integers(1, 4)), simd=draw(st.sampled_from(SIMD_LEVELS)), op="conv", n=n, h=h,
        w=w, c=draw(channels), f=draw(channels), kernel=kernel, strides=strides, padding=padding,
        pads=pads_2d(h, w, kernel, strides, padding), bias=draw(st.booleans()),
        need_dx=draw(st.booleans()), relu=draw(st.booleans()))


SIMD_LEVELS = kernels._engines["c"].simd_levels() if C_BUILT else ["unbuilt"]


@requires_c
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(auto_mode_conv_cases())
def test_auto_mode_property_matches_numpy_engine(case):
    from minicnn.kernels import c_engine
    previous = kernels.get_backend()
    try:
        problems, branches = fuzz.run_case(case)
    finally:
        c_engine.set_num_threads(0)
        c_engine.set_simd_level(SIMD_LEVELS[0])
        kernels.set_backend(previous)
    for name in branches:
        event(name)                      # --hypothesis-show-statistics shows the branch mix
    assert not problems, f"{fuzz.describe(case)}: {problems}"
