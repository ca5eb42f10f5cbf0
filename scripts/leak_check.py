#!/usr/bin/env python3
"""Long randomized run of the C engine through the kernel face, watching for leaks.

    python scripts/leak_check.py                  # 180 s, bound 16 MiB
    python scripts/leak_check.py --seconds 600 --bound-mib 16 --seed 7

Each iteration draws a random problem -- conv2d (plain or with the fused ReLU), max pooling or
dense; float32 or float64; random batch, size, channels, kernel, strides, padding, memory
layout (contiguous, Fortran, strided, read-only) -- and runs forward and backward on the C
engine, with a random SIMD level, convolution algorithm and thread count. Every 25th
iteration also calls the face with arguments it must refuse (wrong dtype, shape, window), so
the error paths run too, and every 50th compares the C results with the NumPy engine's.

Memory: the largest problem the generator can draw runs first, on every thread count, SIMD
level and algorithm, so the C engine's reusable scratch buffer reaches its final size during
the warm-up. After the warm-up (the first fifth of the run) the resident set (VmRSS, after
gc.collect() and glibc's malloc_trim, so that freed memory the allocator keeps does not count)
may grow by at most --bound-mib MiB; it is printed every --every seconds. A leak of even 1 KiB per
iteration adds up to tens of MiB over the tens of thousands of iterations of a run.

Exit status: 0 when the bound held and every comparison agreed, 1 otherwise.
"""
import argparse
import gc
import os
import sys
import time

import numpy as np

try:
    import minicnn
except ImportError:
    # Not installed: run from the checkout. An installed minicnn (with its compiled engine) wins,
    # since the checkout's source folder has no compiled module after a plain `pip install .`.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import minicnn
from minicnn import kernels  # noqa: E402

MIB = 1 << 20
LAYOUTS = ("contiguous", "fortran", "strided", "read-only")


def _malloc_trim():
    """glibc's malloc_trim, or a no-op elsewhere."""
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda pad: 0


_trim = _malloc_trim()


def resident_bytes():
    """VmRSS after a garbage collection and malloc_trim: freed memory the allocator keeps (the
    C engine asks glibc to keep up to 256 MiB, see c_engine.py) goes back to the system, so
    what remains is memory still in use -- where a leak would show."""
    gc.collect()
    _trim(0)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def layout(array, how):
    if how == "fortran":
        return np.asfortranarray(array)
    if how == "strided":
        big = np.zeros(tuple(2 * s for s in array.shape), array.dtype)
        view = big[(slice(None, None, 2),) * array.ndim]
        view[...] = array
        return view
    if how == "read-only":
        array = array.copy()
        array.flags.writeable = False
    return array


def draw(rng, largest=False):
    """One random problem as a dict; largest=True gives the biggest the generator can make."""
    pick = (lambda low, high: high) if largest else (lambda low, high: int(rng.integers(low, high + 1)))
    kind = "conv" if largest else rng.choice(["conv", "conv_relu", "pool", "dense"])
    return {
        "kind": kind,
        "dtype": np.float64 if largest else rng.choice([np.float32, np.float64]),
        "n": pick(1, 16), "h": pick(1, 20), "w": pick(1, 20), "c": pick(1, 40), "f": pick(1, 40),
        "kh": 3 if largest else pick(1, 5), "kw": 3 if largest else pick(1, 5),
        "sh": 1 if largest else pick(1, 3), "sw": 1 if largest else pick(1, 3),
        "pads": (2, 2, 2, 2) if largest else tuple(pick(0, 2) for _ in range(4)),
        "k": pick(1, 600), "units": pick(1, 130),
        "layout": "contiguous" if largest else rng.choice(LAYOUTS),
        "bias": True if largest else bool(rng.integers(2)),
        "need_dx": True if largest else bool(rng.integers(2)),
    }


def run(problem, rng):
    """Forward and backward of one problem on the active engine; returns the arrays computed."""
    dtype, how = problem["dtype"], problem["layout"]

    def uniform(*shape):
        return layout(rng.uniform(-1, 1, shape).astype(dtype), how)

    n = problem["n"]
    if problem["kind"] == "dense":
        x, kernel = uniform(n, problem["k"]), uniform(problem["k"], problem["units"])
        bias = uniform(problem["units"]) if problem["bias"] else None
        y, cache = kernels.dense_forward(x, kernel, bias, relu=bool(problem["k"] % 2))
        return (y,) + tuple(kernels.dense_backward(uniform(*y.shape), cache, need_dx=problem["need_dx"]))
    h = max(problem["h"], problem["kh"])
    w = max(problem["w"], problem["kw"])
    x = uniform(n, h, w, problem["c"])
    pads = tuple(min(p, k - 1) for p, k in zip(problem["pads"], (problem["kh"],) * 2 + (problem["kw"],) * 2))
    strides = (problem["sh"], problem["sw"])
    if problem["kind"] == "pool":
        y, cache = kernels.maxpool2d_forward(x, (problem["kh"], problem["kw"]), strides, pads)
        return y, kernels.maxpool2d_backward(uniform(*y.shape), cache)
    kernel = uniform(problem["kh"], problem["kw"], problem["c"], problem["f"])
    bias = uniform(problem["f"]) if problem["bias"] else None
    forward = kernels.conv2d_relu_forward if problem["kind"] == "conv_relu" else kernels.conv2d_forward
    y, cache = forward(x, kernel, bias, strides, pads)
    return (y,) + tuple(kernels.conv2d_backward(uniform(*y.shape), cache, need_dx=problem["need_dx"]))


def refused_calls():
    """Arguments the face must refuse; each must raise ValueError or TypeError."""
    x = np.ones((2, 5, 5, 3), np.float32)
    kernel = np.ones((3, 3, 3, 4), np.float32)
    calls = (
        lambda: kernels.conv2d_forward(x.astype(np.float16), kernel.astype(np.float16), None, (1, 1), (0,) * 4),
        lambda: kernels.conv2d_forward(x, kernel[:, :, :2], None, (1, 1), (0,) * 4),
        lambda: kernels.conv2d_forward(x[:, :2, :2], kernel, None, (1, 1), (0,) * 4),
        lambda: kernels.conv2d_forward(x, kernel.astype(np.float64), None, (1, 1), (0,) * 4),
        lambda: kernels.maxpool2d_forward(x, (6, 6), (1, 1), (0,) * 4),
        lambda: kernels.dense_forward(x.reshape(2, -1), np.ones((7, 2), np.float32), None),
        lambda: kernels.conv2d_backward(np.ones((2, 3, 3, 5), np.float32),
                                        kernels.conv2d_forward(x, kernel, None, (1, 1), (0,) * 4)[1]),
    )
    for call in calls:
        try:
            call()
        except (ValueError, TypeError):
            continue
        raise AssertionError("the face accepted arguments it must refuse")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the run (default 180)")
    parser.add_argument("--bound-mib", type=float, default=16.0,
                        help="largest allowed RSS growth after the warm-up, MiB (default 16)")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between RSS reports")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if "c" not in kernels.available_backends():
        print(f"the C engine is not built: {kernels.backend_info().get('c_engine_error')}")
        return 1
    from minicnn.kernels import c_engine

    minicnn.set_backend("c")
    print("engine:", kernels.backend_info())
    rng = np.random.default_rng(args.seed)
    simd_levels = c_engine.simd_levels()
    largest = draw(rng, largest=True)
    for threads in (1, 2, 3):                       # warm every code path at its largest size
        c_engine.set_num_threads(threads)           # (scratch memory grows with the threads)
        for level in simd_levels:
            c_engine.set_simd_level(level)
            for algorithm in ("direct", "winograd"):
                c_engine.set_algorithm(algorithm)
                for kind in ("conv", "conv_relu", "pool", "dense"):
                    run(dict(largest, kind=kind), rng)
    minicnn.set_backend("numpy")                    # and the comparisons' NumPy temporaries
    for kind in ("conv", "conv_relu", "pool", "dense"):
        run(dict(largest, kind=kind), rng)
    minicnn.set_backend("c")

    start = time.monotonic()
    warm_until = start + args.seconds / 5
    baseline = None
    next_report = start
    iterations = mismatches = 0
    peak = 0
    while time.monotonic() - start < args.seconds:
        problem = draw(rng)
        c_engine.set_simd_level(str(rng.choice(simd_levels)))
        c_engine.set_algorithm(str(rng.choice(["auto", "direct", "winograd"])))
        c_engine.set_num_threads(int(rng.integers(0, 4)))      # 0: the default
        state = rng.bit_generator.state
        results = run(problem, rng)
        iterations += 1
        if iterations % 25 == 0:
            refused_calls()
        if iterations % 50 == 0:
            rng.bit_generator.state = state
            minicnn.set_backend("numpy")
            expected = run(problem, rng)
            minicnn.set_backend("c")
            tolerance = 1e-9 if problem["dtype"] == np.float64 else 2e-4
            for got, want in zip(results, expected):
                if (got is None) != (want is None) or (
                        got is not None and not np.allclose(got, want, rtol=tolerance, atol=tolerance)):
                    mismatches += 1
                    print(f"MISMATCH with the NumPy engine: {problem}")
                    break
        now = time.monotonic()
        if now >= next_report or now - start >= args.seconds:
            rss = resident_bytes()
            if baseline is None and now >= warm_until:
                baseline = rss
            if baseline is not None:
                peak = max(peak, rss - baseline)
            growth = "warming up" if baseline is None else f"{(rss - baseline) / MIB:+.1f} MiB since warm-up"
            print(f"{now - start:7.1f} s  {iterations:7d} iterations  RSS {rss / MIB:8.1f} MiB  {growth}",
                  flush=True)
            next_report = now + args.every
    c_engine.set_num_threads(0)
    final = resident_bytes()
    growth = (final - baseline) / MIB if baseline is not None else float("nan")
    ok = baseline is not None and growth <= args.bound_mib and peak / MIB <= args.bound_mib and not mismatches
    print(f"{iterations} iterations in {time.monotonic() - start:.0f} s; RSS after warm-up "
          f"{baseline / MIB if baseline else float('nan'):.1f} MiB, at the end {final / MIB:.1f} MiB "
          f"({growth:+.1f} MiB, largest growth {peak / MIB:+.1f} MiB; bound {args.bound_mib:g} MiB); "
          f"{mismatches} mismatches with the NumPy engine: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
