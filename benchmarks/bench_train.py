"""The seed model's whole training step and inference: minicnn (C, NumPy) vs PyTorch, one run.

    python benchmarks/bench_train.py                        # table of images/s and ratios
    python benchmarks/bench_train.py --rounds 9 --json figures.json
    python benchmarks/bench_train.py --recipe --rounds 3     # adds the --recipe best training row

Rows:
    train b32 / train b128   forward + cross-entropy loss + backward + Adam update, float32, on
                             a block of batches through minicnn's real `model.fit` (shuffle off,
                             accuracy metric on, as a user runs it) and PyTorch's canonical loop
                             (zero_grad, forward, CrossEntropyLoss, backward, Adam.step, loss.item())
    infer b1000              probabilities for 1000 images: `model.predict(batch_size=1000)` and
                             torch.no_grad() forward + softmax
    recipe b128 (--recipe)   the training step of examples/fashion_mnist.py --recipe best: the
                             model built by the example itself (random left-right flip, conv
                             32-32 / 64-64 each with BN and ReLU, dropout, dense 256 + BN, AdamW
                             with its warm-up + cosine schedule) through `model.fit`, against the
                             same layers in PyTorch (each image flipped with probability 1/2,
                             Conv2d(bias=False) + BatchNorm2d + ReLU, Dropout, AdamW at a
                             constant rate: a schedule costs one scalar per step)
Columns: minicnn C engine, minicnn NumPy engine, PyTorch NCHW, PyTorch channels_last (when torch
imports). Each cell: images/s (median of --rounds, every round sweeping all engines in turn so a
passing disturbance of this shared machine cannot own one cell), achieved GFLOP/s (the model's
counted multiply-adds x 2 / time), and the ratio to the best PyTorch layout of that row (> 1 =
faster than PyTorch). Peak memory: the growth of the process's resident-set high-water mark
(VmHWM) while one engine runs the row, measured in a fresh subprocess per engine (--no-memory
skips it), because C, NumPy and PyTorch allocate outside Python's tracemalloc.

Threads: --threads for everyone (the C engine's OpenMP, torch.set_num_threads; NumPy's OpenBLAS
uses its default of one thread per core). Engines are separated by a short pause because each
thread pool keeps spinning for a while after its last call.

PyTorch comes from a separate environment, never a minicnn dependency:
    python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 -e .
    .venv-torch/bin/python benchmarks/bench_train.py
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# Run from a checkout without installing; MINICNN_HOME points at another checkout instead
# (benchmarks/compare_checkouts.py times an older version with this same script).
sys.path.insert(0, os.environ.get("MINICNN_HOME") or os.path.dirname(HERE))

import minicnn  # noqa: E402
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential  # noqa: E402

try:
    import torch
except ImportError:  # the table then has no PyTorch columns
    torch = None

SETTLE_SECONDS = 0.25
ENGINES = ("minicnn-c", "minicnn-numpy", "torch-nchw", "torch-channels_last")
ROWS = (("train", 32), ("train", 128), ("infer", 1000))
RECIPE_ROW = ("recipe", 128)


# -- the work ----------------------------------------------------------------------------------
def seed_model_multiply_adds():
    """(forward, training) multiply-adds per image, counted layer by layer.

    Training = forward + the kernel gradient of every layer (same count as its forward) + the
    input gradient of every layer but the first (its input is the data).
    """
    conv1 = 28 * 28 * 32 * (3 * 3 * 1)
    conv2 = 14 * 14 * 64 * (3 * 3 * 32)
    dense1 = 3136 * 128
    dense2 = 128 * 10
    forward = conv1 + conv2 + dense1 + dense2
    return forward, forward + forward + (forward - conv1)


def recipe_multiply_adds():
    """(forward, training) multiply-adds per image of the --recipe best model, as above
    (BN, ReLU, pooling, dropout and augmentation are not counted: elementwise)."""
    convolutions = [28 * 28 * 32 * (3 * 3 * 1), 28 * 28 * 32 * (3 * 3 * 32),
                    14 * 14 * 64 * (3 * 3 * 32), 14 * 14 * 64 * (3 * 3 * 64)]
    forward = sum(convolutions) + 3136 * 256 + 256 * 10
    return forward, forward + forward + (forward - convolutions[0])


def load_example():
    """examples/fashion_mnist.py of this checkout, whose build_recipe_model the recipe row times."""
    import importlib.util

    path = os.path.join(os.path.dirname(HERE), "examples", "fashion_mnist.py")
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def minicnn_runner(engine, row, batch, x, y):
    minicnn.set_backend(engine)
    minicnn.set_seed(0)
    if row == "recipe":
        model = load_example().build_recipe_model(steps_per_epoch=len(x) // batch, epochs=1)

        def run():
            minicnn.set_backend(engine)
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return run
    model = Sequential([
        Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2), strides=2),
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    if row == "train":
        def run():
            minicnn.set_backend(engine)
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    else:
        def run():
            minicnn.set_backend(engine)
            model.predict(x, batch_size=batch, verbose=0)
    return run


def torch_recipe_model():
    nn = torch.nn

    def convolution(channels_in, channels_out):
        return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels_out, eps=1e-3, momentum=0.1), nn.ReLU()]

    return nn.Sequential(
        *convolution(1, 32), *convolution(32, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
        *convolution(32, 64), *convolution(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(3136, 256, bias=False), nn.BatchNorm1d(256, eps=1e-3, momentum=0.1), nn.ReLU(),
        nn.Dropout(0.4), nn.Linear(256, 10),
    )


def torch_flip(images):
    """Each image flipped left-right with probability 1/2 (the example's RandomFlip("horizontal"));
    the memory format of `images` is kept."""
    return torch.where(torch.rand(images.shape[0], 1, 1, 1) < 0.5, images.flip(3), images)


def torch_runner(layout, row, batch, x, y):
    torch.manual_seed(0)
    nn = torch.nn
    if row == "recipe":
        return torch_recipe_runner(layout, batch, x, y)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(y)
    batches = [(images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch)]
    if row == "train":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        criterion = nn.CrossEntropyLoss()
        model.train()

        def run():
            for xb, yb in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()
                loss.item()
    else:
        model.eval()

        def run():
            with torch.no_grad():
                for xb, _ in batches:
                    torch.softmax(model(xb), dim=1)
    return run


def torch_recipe_runner(layout, batch, x, y):
    model = torch_recipe_model()
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(y)
    batches = [(images[i:i + batch], labels[i:i + batch]) for i in range(0, len(images), batch)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def run():
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(torch_flip(xb)), yb)
            loss.backward()
            optimizer.step()
            loss.item()
    return run


def make_runner(engine, row, batch, images):
    x, y = synthetic_data(images)
    if engine.startswith("minicnn-"):
        return minicnn_runner(engine.split("-")[1], row, batch, x, y)
    return torch_runner(engine.split("-", 1)[1], row, batch, x, y)


def available_engines(wanted=None):
    engines = ["minicnn-c"] if "c" in minicnn.kernels.available_backends() else []
    engines.append("minicnn-numpy")
    if torch is not None:
        engines += ["torch-nchw", "torch-channels_last"]
    if wanted:
        missing = sorted(set(wanted) - set(engines))
        if missing:
            raise SystemExit(f"--engines: {', '.join(missing)} cannot run here (available: {', '.join(engines)})")
        engines = [engine for engine in engines if engine in wanted]
    return engines


def images_per_row(row, batch, args):
    return batch * args.steps if row in ("train", "recipe") else 1000 * args.infer_batches


def table_rows(args):
    return ROWS + (RECIPE_ROW,) if args.recipe else ROWS


# -- measuring ---------------------------------------------------------------------------------
def peak_memory_mib(engine, row, batch, args):
    """Growth of VmHWM while `engine` runs the row, in a fresh interpreter (None if unknown)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", engine, row, str(batch),
               "--threads", str(args.threads), "--steps", str(args.steps), "--infer-batches", str(args.infer_batches)]
    command += ["--recipe"] if args.recipe else []
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        return float(result.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def read_vm_hwm_kib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def child(engine, row, batch, args):
    run = make_runner(engine, row, int(batch), images_per_row(row, int(batch), args))
    before = read_vm_hwm_kib()
    run()
    run()
    after = read_vm_hwm_kib()
    print("nan" if before is None else (after - before) / 1024)


def measure(args):
    engines = available_engines(args.engines)
    runners = {(engine, row, batch): make_runner(engine, row, batch, images_per_row(row, batch, args))
               for engine in engines for row, batch in table_rows(args)}
    for run in runners.values():  # warm-up: workspaces, thread pools, caches
        run()
    seconds = {key: [] for key in runners}
    previous_engine = None
    for _ in range(args.rounds):
        for key, run in runners.items():
            if key[0] != previous_engine:  # let the last engine's thread pool stop spinning
                time.sleep(SETTLE_SECONDS)
                previous_engine = key[0]
            start = time.perf_counter()
            run()
            seconds[key].append(time.perf_counter() - start)
    return engines, {key: float(np.median(times)) for key, times in seconds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--rounds", type=int, default=7, help="timed sweeps of the whole table (median)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--infer-batches", type=int, default=2, help="batches of 1000 per timed inference block")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--recipe", action="store_true",
                        help="add the row of examples/fashion_mnist.py --recipe best's training step (batch 128)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, metavar="ENGINE",
                        help=f"time only these engines (default: all that run here; {', '.join(ENGINES)})")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "ROW", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if torch is not None:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.child:
        return child(*args.child, args)

    engines, seconds = measure(args)
    forward_macs, training_macs = seed_model_multiply_adds()
    figures = []
    for row, batch in table_rows(args):
        images = images_per_row(row, batch, args)
        macs = {"train": training_macs, "infer": forward_macs, "recipe": recipe_multiply_adds()[1]}[row]
        speeds = {engine: images / seconds[(engine, row, batch)] for engine in engines}
        torch_best = max((speeds[e] for e in engines if e.startswith("torch")), default=None)
        for engine in engines:
            figures.append({
                "row": f"{row} b{batch}", "engine": engine, "images_per_s": speeds[engine],
                "gflop_per_s": speeds[engine] * 2 * macs / 1e9,
                "vs_best_torch": speeds[engine] / torch_best if torch_best else None,
                "peak_memory_mib": None if args.no_memory else peak_memory_mib(engine, row, batch, args),
            })

    minicnn.set_backend("auto")
    info = minicnn.backend_info()
    print(f"minicnn {minicnn.__version__}; C engine: {info.get('simd')} {info.get('compiler_flags')}; "
          f"torch {torch.__version__ if torch else 'not importable'}; threads {args.threads}; "
          f"numpy {np.__version__}; {platform.processor() or platform.machine()}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '-')}")
    print(f"medians of {args.rounds} rounds; training blocks of {args.steps} steps; "
          f"{training_macs * 2 / 1e6:.1f} MFLOP per training image, {forward_macs * 2 / 1e6:.1f} per inference"
          + (f"; recipe {recipe_multiply_adds()[1] * 2 / 1e6:.1f} per training image" if args.recipe else "") + "\n")
    header = f"{'row':<12} {'engine':<20} {'images/s':>10} {'GFLOP/s':>8} {'vs best torch':>14} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for f in figures:
        ratio = f"{f['vs_best_torch']:.2f}x" if f["vs_best_torch"] else "-"
        memory = f"{f['peak_memory_mib']:.0f}" if f["peak_memory_mib"] is not None else "-"
        print(f"{f['row']:<12} {f['engine']:<20} {f['images_per_s']:>10,.0f} {f['gflop_per_s']:>8.1f} "
              f"{ratio:>14} {memory:>9}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"threads": args.threads, "rounds": args.rounds, "figures": figures}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
