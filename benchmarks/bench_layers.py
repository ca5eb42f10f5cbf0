"""Forward and backward time of every layer of the seed model, per engine, in one process.

    python benchmarks/bench_layers.py                 # batch 32 and 128, float32, 2 threads
    python benchmarks/bench_layers.py --batches 32 --repeats 50 --json out.json

Rows: conv1 (1->32, 28x28, 3x3 same), pool1 (2x2/2 on 28x28x32), conv2 (32->64, 14x14, 3x3
same), pool2 (2x2/2 on 14x14x64), dense1 (3136->128), dense2 (128->10), each alone; then the
seed model's activated layers conv1+relu, conv2+relu, dense1+relu (minicnn's fused entry
points; PyTorch's relu(conv(x)) with autograd). conv1's backward skips the input gradient, as
it does in a model (its input is the data) and in PyTorch (the input does not require grad).

Columns: minicnn's C engine and NumPy engine through the kernel face (minicnn.kernels: what
the layers call; the engines alone, without layer bookkeeping), and PyTorch's functional ops
with NCHW and channels_last tensors when torch imports.
Each figure is the median of --repeats timed calls (after warm-up), taken in --rounds sweeps
of the whole table so that a passing disturbance on a shared machine cannot own a cell. Ratios are computed from
the same run: "C x" is how many times faster the C engine is than NumPy (numpy/c) and than
the best PyTorch layout (torch/c, above 1 = C faster); "NumPy vs torch" is torch/numpy.

PyTorch: run the script with a Python that has torch, e.g. the project's benchmark venv:
    .venv-torch/bin/python -m pip install -e .     # once: minicnn (and cffi) into that venv
    .venv-torch/bin/python benchmarks/bench_layers.py
Without torch the PyTorch columns are left out.

Fairness: every engine runs the same threads (--threads: OpenMP for the C engine, OpenBLAS
for NumPy through its default of one thread per core, torch.set_num_threads). The engines are
timed one block at a time with a pause between blocks, because each thread pool (libgomp,
OpenBLAS, torch's OpenMP) keeps spinning for a while after its last call and would otherwise
steal the second core from the next engine's block.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from minicnn import kernels  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the table then has no PyTorch columns
    torch = None

SETTLE_SECONDS = 0.25   # longer than OpenBLAS's and libgomp's spin-wait after a call


def samples_ms(fn, repeats, warmup=3):
    """`repeats` timings of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


# ---- the layers of the seed model ----

LAYERS = [
    # name, kind, input shape (H, W, C) or (features,), output channels, needs dx, ReLU fused
    ("conv1", "conv", (28, 28, 1), 32, False, False),
    ("pool1", "pool", (28, 28, 32), None, True, False),
    ("conv2", "conv", (14, 14, 32), 64, True, False),
    ("pool2", "pool", (14, 14, 64), None, True, False),
    ("dense1", "dense", (3136,), 128, True, False),
    ("dense2", "dense", (128,), 10, True, False),
    ("conv1+relu", "conv", (28, 28, 1), 32, False, True),
    ("conv2+relu", "conv", (14, 14, 32), 64, True, True),
    ("dense1+relu", "dense", (3136,), 128, True, True),
]


def time_minicnn(engine, kind, shape, out, need_dx, relu, batch, repeats, rng):
    kernels.set_backend(engine)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    if kind == "conv":
        kernel = (rng.standard_normal((3, 3, shape[2], out)) * 0.1).astype(np.float32)
        bias = np.zeros(out, np.float32)
        conv = kernels.conv2d_relu_forward if relu else kernels.conv2d_forward
        def forward():
            return conv(x, kernel, bias, (1, 1), (1, 1, 1, 1))
        def backward(dy, cache):
            return kernels.conv2d_backward(dy, cache, need_dx=need_dx)
    elif kind == "pool":
        def forward():
            return kernels.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
        def backward(dy, cache):
            return kernels.maxpool2d_backward(dy, cache)
    else:
        kernel = (rng.standard_normal((shape[0], out)) * 0.02).astype(np.float32)
        bias = np.zeros(out, np.float32)
        def forward():
            return kernels.dense_forward(x, kernel, bias, relu=relu)
        def backward(dy, cache):
            return kernels.dense_backward(dy, cache, need_dx=need_dx)
    y, cache = forward()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    forward_ms = samples_ms(forward, repeats)
    y, cache = forward()
    backward_ms = samples_ms(lambda: backward(dy, cache), repeats)
    return forward_ms, backward_ms


def time_torch(channels_last, kind, shape, out, need_dx, relu, batch, repeats, rng):
    x_np = rng.standard_normal((batch, *shape)).astype(np.float32)
    if kind == "dense":
        x = torch.from_numpy(x_np)
        w = torch.randn(out, shape[0], requires_grad=True)
        b = torch.zeros(out, requires_grad=True)
        def op(inp):
            y = F.linear(inp, w, b)
            return F.relu(y) if relu else y
        params = [w, b]
    else:
        x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()  # NCHW
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if kind == "conv":
            w = torch.randn(out, shape[2], 3, 3)
            if channels_last:
                w = w.contiguous(memory_format=torch.channels_last)
            w.requires_grad_(True)
            b = torch.zeros(out, requires_grad=True)
            def op(inp):
                y = F.conv2d(inp, w, b, padding=1)
                return F.relu(y) if relu else y
            params = [w, b]
        else:
            def op(inp):
                return F.max_pool2d(inp, 2, 2)
            params = []
    x.requires_grad_(need_dx)
    with torch.no_grad():
        forward = samples_ms(lambda: op(x), repeats)
    inputs = ([x] if need_dx else []) + params
    y = op(x)
    dy = torch.randn_like(y)

    def backward():
        # the graph of one untimed forward, reused; grads are returned, not accumulated
        torch.autograd.grad(y, inputs, dy, retain_graph=True)

    backward_ms = samples_ms(backward, repeats)
    return forward, backward_ms


def run(batches, repeats, rounds):
    """Sweep every (batch, layer, engine) `rounds` times, repeats // rounds timings each time,
    and keep the median of each cell's pooled timings: on a shared machine a disturbance then
    lands in one round's share of a cell instead of all of it."""
    rng = np.random.default_rng(0)
    engines = [e for e in ("c", "numpy") if e in kernels.available_backends()]
    per_round = -(-repeats // rounds)   # rounded up: the header says how many were timed
    pooled = {}
    for round_index in range(rounds):
        for batch in batches:
            for name, kind, shape, out, need_dx, relu in LAYERS:
                layer = (kind, shape, out, need_dx, relu, batch, per_round, rng)
                cells = [(engine, time_minicnn, engine) for engine in engines]
                if torch is not None:
                    cells += [("torch_nchw", time_torch, False), ("torch_cl", time_torch, True)]
                for label, measure, first_argument in cells:
                    time.sleep(SETTLE_SECONDS)
                    forward, backward = measure(first_argument, *layer)
                    cell = pooled.setdefault((batch, name, label), ([], []))
                    cell[0].extend(forward)
                    cell[1].extend(backward)
        print(f"  round {round_index + 1} of {rounds} done", file=sys.stderr)
    results = []
    for batch in batches:
        for name, *_ in LAYERS:
            row = {"layer": name, "batch": batch}
            for (b, layer, label), (forward, backward) in pooled.items():
                if b == batch and layer == name:
                    row[label] = (float(np.median(forward)), float(np.median(backward)))
            results.append(row)
    return results


# ---- the table ----

def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return "   -  "
    return f"{numerator / denominator:6.2f}"


def print_table(results):
    have = [k for k in ("c", "numpy", "torch_nchw", "torch_cl") if k in results[0]]
    titles = {"c": "C", "numpy": "NumPy", "torch_nchw": "torch NCHW", "torch_cl": "torch CL"}
    header = f"{'layer':11} {'batch':>5} {'pass':8}" + "".join(f" {titles[k]:>10}" for k in have)
    header += "   C x NumPy   C x torch   NumPy vs torch"
    print(header)
    print("-" * len(header))
    for row in results:
        for index, label in enumerate(("forward", "backward", "fwd+bwd")):
            values = {}
            for k in have:
                fwd, bwd = row[k]
                values[k] = (fwd, bwd, fwd + bwd)[index]
            torch_best = min((values[k] for k in ("torch_nchw", "torch_cl") if k in values), default=None)
            line = f"{row['layer'] if index == 0 else '':11} {row['batch'] if index == 0 else '':>5} {label:8}"
            line += "".join(f" {values[k]:10.3f}" for k in have)
            line += f"   {ratio(values.get('numpy'), values.get('c')):>9}"
            line += f"   {ratio(torch_best, values.get('c')):>9}"
            line += f"   {ratio(torch_best, values.get('numpy')):>14}"
            print(line)
    print("\ntimes in ms (median); ratios > 1 mean the C engine (or NumPy, last column) is faster")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="batch sizes, a table row each")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timings per cell, over all rounds (rounded up to a multiple of --rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="sweeps of the whole table")
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine (C, NumPy's BLAS, PyTorch)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    for name in ("repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, received {getattr(args, name)}")

    if "c" in kernels.available_backends():
        from minicnn.kernels import c_engine
        c_engine.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    previous = kernels.get_backend()
    load_before = os.getloadavg()[0]
    try:
        results = run(args.batches, args.repeats, args.rounds)
    finally:
        kernels.set_backend(previous)
    load_after = os.getloadavg()[0]

    kernels.set_backend("c" if "c" in kernels.available_backends() else "numpy")
    info = kernels.backend_info()
    timed = -(-args.repeats // args.rounds) * args.rounds
    print(f"minicnn layer benchmark: float32, {args.threads} threads, median of {timed} "
          f"timings per cell taken in {args.rounds} sweeps")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs; "
          f"Python {platform.python_version()}, NumPy {np.__version__}"
          + (f", PyTorch {torch.__version__}" if torch is not None else ", PyTorch not importable"))
    print(f"C engine: {info}")
    print(f"1-minute load average before / after: {load_before:.2f} / {load_after:.2f}")
    if max(load_before, load_after) > 1.5:
        # This benchmark itself keeps about one core busy; more means other processes were
        # competing for the cores and some figures include their time slices.
        print("WARNING: other processes were using the CPUs during this run; rerun on a quiet machine")
    print()
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
                       "backend_info": info,
                       "load_average": [load_before, load_after],
                       "torch": torch.__version__ if torch is not None else None,
                       "results": results}, f, indent=1)
    kernels.set_backend(previous)


if __name__ == "__main__":
    main()
