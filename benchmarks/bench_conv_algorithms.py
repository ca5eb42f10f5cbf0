"""Direct vs Winograd per pass, for stride-1 convolutions of one kernel size, through the C engine.

    python benchmarks/bench_conv_algorithms.py                   # 5x5 'same', the default grid
    python benchmarks/bench_conv_algorithms.py --kernel 3 --rounds 9
    python benchmarks/bench_conv_algorithms.py --geometry 128,14,64,128 --geometry 32,28,32,32

For every (batch, H=W, C_in, F) geometry, float32, 'same' padding, the C engine's forward
(conv2d_forward), kernel gradient (conv2d_backward without dx) and input gradient (the backward
with dx minus the one without) run with c_engine.set_algorithm forced to "direct" and to
"winograd". Each cell is the median of --rounds rounds; a round times each algorithm in turn
(so a passing disturbance of a shared machine hits both), each timing the best of --repeats
calls. "w/d" is winograd's time over direct's (< 1: Winograd faster).
These figures chose the MC_WINO5_* thresholds: docs/performance.md, "Winograd for 5x5".
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

try:
    from minicnn.kernels import c_engine  # noqa: E402
except ImportError as error:   # this script times the C engine's algorithms only
    sys.exit(f"bench_conv_algorithms: the C engine is not built here ({error}); build it with pip install -e .")
from minicnn.kernels.geometry import pads_2d  # noqa: E402

DEFAULT_GRID = [
    (128, 28, 1, 64),      # wide5x5's first layer
    (128, 14, 64, 128),    # wide5x5's second layer
    (32, 14, 64, 128),
    (128, 14, 16, 16),
    (128, 14, 24, 24),
    (128, 14, 32, 32),
    (128, 14, 48, 48),
    (128, 14, 64, 64),
    (32, 28, 32, 32),
    (32, 28, 48, 48),
    (32, 28, 64, 64),
    (128, 7, 128, 128),
    (8, 14, 32, 64),
]


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_passes(x, kernel, bias, pads, dy, repeats):
    """(forward, dkernel, dx) seconds in the algorithm currently forced."""
    _, cache = c_engine.conv2d_forward(x, kernel, bias, (1, 1), pads)
    c_engine.conv2d_backward(dy, cache, True)   # warm-up: workspaces, caches
    fwd = best_of(lambda: c_engine.conv2d_forward(x, kernel, bias, (1, 1), pads), repeats)
    dk = best_of(lambda: c_engine.conv2d_backward(dy, cache, False), repeats)
    both = best_of(lambda: c_engine.conv2d_backward(dy, cache, True), repeats)
    return fwd, dk, max(both - dk, 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", type=int, default=5, choices=[3, 5], help="kernel size of every geometry")
    ap.add_argument("--geometry", action="append", default=[],
                    help="batch,H,C_in,F (repeatable; default: a grid around the thresholds)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per cell (median)")
    ap.add_argument("--repeats", type=int, default=3, help="calls per round and algorithm (best of)")
    ap.add_argument("--threads", type=int, default=0, help="C engine threads (0: its default)")
    args = ap.parse_args()
    if args.rounds < 1 or args.repeats < 1 or args.threads < 0:
        ap.error("--rounds and --repeats must be at least 1, --threads at least 0")
    if args.threads:
        c_engine.set_num_threads(args.threads)
    grid = [tuple(int(v) for v in g.split(",")) for g in args.geometry] or DEFAULT_GRID
    k = args.kernel
    info = c_engine.engine_info()
    print(f"{k}x{k} stride 1 'same', float32, {info['simd']}, {info['threads']} threads;"
          f" ms, median of {args.rounds} rounds (best of {args.repeats} each)")
    print(f"{'batch':>5} {'H':>3} {'C_in':>4} {'F':>4} | {'pass':<7} {'direct':>8} {'winograd':>8} {'w/d':>5}")
    rng = np.random.default_rng(0)
    try:
        for (n, h, c, f) in grid:
            pads = pads_2d(h, h, (k, k), (1, 1), "same")
            x = rng.standard_normal((n, h, h, c)).astype(np.float32)
            kernel = (rng.standard_normal((k, k, c, f)) * 0.1).astype(np.float32)
            bias = rng.standard_normal(f).astype(np.float32)
            dy = rng.standard_normal((n, h, h, f)).astype(np.float32)
            samples = {alg: [] for alg in ("direct", "winograd")}
            for _ in range(args.rounds):
                for alg in samples:
                    c_engine.set_algorithm(alg)
                    samples[alg].append(time_passes(x, kernel, bias, pads, dy, args.repeats))
            for i, name in enumerate(("forward", "dkernel", "dx")):
                d = statistics.median(s[i] for s in samples["direct"]) * 1e3
                w = statistics.median(s[i] for s in samples["winograd"]) * 1e3
                head = f"{n:>5} {h:>3} {c:>4} {f:>4}" if i == 0 else " " * 19
                print(f"{head} | {name:<7} {d:8.2f} {w:8.2f} {w / d:5.2f}", flush=True)
    finally:
        c_engine.set_algorithm("auto")


if __name__ == "__main__":
    main()
