"""Whole training steps and inference of CNNs: minicnn (C, NumPy) vs PyTorch, one run.

    python benchmarks/bench_train.py                        # the seed model: images/s and ratios
    python benchmarks/bench_train.py --rounds 9 --json figures.json
    python benchmarks/bench_train.py --recipe --rounds 3     # adds the --recipe best training row
    python benchmarks/bench_train.py --arch lenet5 rgb64     # adds rows for other architectures
    python benchmarks/bench_train.py --arch all --rounds 3   # every architecture below
    python benchmarks/bench_train.py --neighbour             # seed training beside a busy process

Rows:
    train b32 / train b128   the seed model: forward + cross-entropy loss + backward + Adam update,
                             float32, on a block of batches through minicnn's real `model.fit`
                             (shuffle off, accuracy metric on, as a user runs it) and PyTorch's
                             canonical loop (zero_grad, forward, CrossEntropyLoss, backward,
                             Adam.step, loss.item())
    infer b1000              probabilities for 1000 images: `model.predict(batch_size=1000)` and
                             torch.no_grad() forward + softmax
    predict b1               one image at a time, the demo page's path: SINGLE_IMAGES separate
                             `model.predict(x[i:i+1])` calls, against PyTorch's eager call
                             (no_grad, forward + softmax of one image); images/s = 1 / latency
    NAME train b32           (--arch NAME) the same two measurements for another architecture
    NAME infer b1000
    recipe b128 (--recipe)   the training step of examples/fashion_mnist.py --recipe best: the
                             model built by the example itself (random left-right flip, conv
                             32-32 / 64-64 each with BN and ReLU, dropout, dense 256 + BN, AdamW
                             with its warm-up + cosine schedule) through `model.fit`, against the
                             same layers in PyTorch (each image flipped with probability 1/2,
                             Conv2d(bias=False) + BatchNorm2d + ReLU, Dropout, AdamW at a
                             constant rate: a schedule costs one scalar per step)

Architectures (--arch NAME [NAME...] or all; each written once as minicnn layers and once as a
PyTorch nn.Sequential with the same sizes and parameter count; ReLU after every convolution and
hidden dense layer, 2x2 max pooling, Dense(10, softmax) last):
    lenet5    28x28x1  conv 6 5x5 valid, pool, conv 16 5x5 valid, pool, dense 120, 84, 10
    vgg32     32x32x3  conv 32 3x3 same x2, pool, conv 64 3x3 same x2, pool, dense 128, 10
    stride2   28x28x1  conv 32 3x3 stride 2 same, conv 64 3x3 stride 2 same, dense 128, 10.
                       TensorFlow's "same" pads only the bottom/right here, PyTorch's padding=1
                       both sides: the same output size and cost, windows one pixel apart
    wide5x5   28x28x1  conv 64 5x5 same, pool, conv 128 5x5 same, pool, dense 128, 10
    rgb64     64x64x3  conv 32, 64, 128 3x3 same, each followed by a pool, dense 128, 10
    recipe             the recipe b128 row (--recipe is the same as --arch recipe)
Their data are synthetic: float32 images in [0, 1), integer labels 0..9.

Columns: minicnn C engine, minicnn NumPy engine, PyTorch NCHW, PyTorch channels_last (when torch
imports). Each cell: images/s (median of --rounds, every round sweeping all engines in turn so a
passing disturbance of this shared machine cannot own one cell), achieved GFLOP/s (the model's
multiply-adds x 2 / time, counted from its minicnn layers: see multiply_adds), and the ratio to
the best PyTorch layout of that row (> 1 = faster than PyTorch). Peak memory: the growth of the
process's resident-set high-water mark (VmHWM) while one engine runs the row, measured in a
fresh subprocess per engine (--no-memory skips it), because C, NumPy and PyTorch allocate
outside Python's tracemalloc.

--neighbour asks how each engine's training of the seed model at batch 32 holds up when one
other process wants a core. A child process spins in a Python loop for the whole run; every
round times each engine twice, once with the neighbour stopped (SIGSTOP) and once with it
running (SIGCONT), the order of the two alternating between rounds. The run then prints only
that table: images/s quiet and beside the neighbour, the share kept, and each condition's ratio
to the best PyTorch layout. The neighbour is killed when the run ends, however it ends (and
quits by itself if this process is killed outright).

Threads: --threads for everyone (the C engine's OpenMP, torch.set_num_threads; NumPy's OpenBLAS
uses its default of one thread per core). The header shows the threads the C engine really uses
and OMP_WAIT_POLICY (how long OpenMP threads spin after their work). Engines are separated by a
short pause because each thread pool keeps spinning for a while after its last call.

PyTorch comes from a separate environment, never a minicnn dependency:
    python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 -e .
    .venv-torch/bin/python benchmarks/bench_train.py
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np

# Run from a checkout without installing; MINICNN_HOME points at another checkout instead
# (benchmarks/compare_checkouts.py times an older version with this same script).
sys.path.insert(0, os.environ.get("MINICNN_HOME") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential

try:
    import torch
except ImportError:  # the table then has no PyTorch columns
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))

SETTLE_SECONDS = 0.25
ENGINES = ("minicnn-c", "minicnn-numpy", "torch-nchw", "torch-channels_last")
NEIGHBOUR_CONDITIONS = ("quiet", "busy")
# The busy neighbour: pure Python spinning. It must not outlive the benchmark even when that is
# killed outright (no `finally` runs): on Linux the kernel kills it with its parent, stopped or
# not (PR_SET_PDEATHSIG); elsewhere it checks every few milliseconds that its parent still lives.
NEIGHBOUR_LOOP = """
import ctypes, os, sys
parent = os.getppid()
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
print("ready", flush=True)
while os.getppid() == parent:
    for _ in range(100000):
        pass
"""

Row = namedtuple("Row", "arch kind batch")  # kind: "train", "infer" or "predict" (one image a call)
SINGLE_IMAGES = 200   # calls per timed block of the predict b1 row


# -- the architectures -------------------------------------------------------------------------
def seed_layers(input_shape):
    return [
        Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=input_shape),
        MaxPooling2D((2, 2), strides=2),
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def seed_torch_layers(nn):
    return [
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    ]


def lenet5_layers(input_shape):
    return [
        Conv2D(6, (5, 5), activation="relu", input_shape=input_shape),  # 28 -> 24
        MaxPooling2D((2, 2), strides=2),                                   # 12
        Conv2D(16, (5, 5), activation="relu"),                            # 8
        MaxPooling2D((2, 2), strides=2),                                   # 4
        Flatten(),                                                         # 256
        Dense(120, activation="relu"),
        Dense(84, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def lenet5_torch_layers(nn):
    return [
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ]


def vgg32_layers(input_shape):
    return [
        Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=input_shape),
        Conv2D(32, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),                                   # 16
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),                                   # 8
        Flatten(),                                                         # 4096
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def vgg32_torch_layers(nn):
    return [
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4096, 128), nn.ReLU(), nn.Linear(128, 10),
    ]


def stride2_layers(input_shape):
    return [
        Conv2D(32, (3, 3), strides=2, padding="same", activation="relu", input_shape=input_shape),  # 14
        Conv2D(64, (3, 3), strides=2, padding="same", activation="relu"),                          # 7
        Flatten(),                                                                                 # 3136
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def stride2_torch_layers(nn):
    return [
        nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    ]


def wide5x5_layers(input_shape):
    return [
        Conv2D(64, (5, 5), padding="same", activation="relu", input_shape=input_shape),
        MaxPooling2D((2, 2), strides=2),                                   # 14
        Conv2D(128, (5, 5), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),                                   # 7
        Flatten(),                                                         # 6272
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def wide5x5_torch_layers(nn):
    return [
        nn.Conv2d(1, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6272, 128), nn.ReLU(), nn.Linear(128, 10),
    ]


def rgb64_layers(input_shape):
    return [
        Conv2D(32, (3, 3), padding="same", activation="relu", input_shape=input_shape),
        MaxPooling2D((2, 2), strides=2),                                   # 32
        Conv2D(64, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),                                   # 16
        Conv2D(128, (3, 3), padding="same", activation="relu"),
        MaxPooling2D((2, 2), strides=2),                                   # 8
        Flatten(),                                                         # 8192
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ]


def rgb64_torch_layers(nn):
    return [
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8192, 128), nn.ReLU(), nn.Linear(128, 10),
    ]


def recipe_torch_layers(nn):
    def convolution(channels_in, channels_out):
        return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels_out, eps=1e-3, momentum=0.1), nn.ReLU()]

    return [
        *convolution(1, 32), *convolution(32, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
        *convolution(32, 64), *convolution(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(3136, 256, bias=False), nn.BatchNorm1d(256, eps=1e-3, momentum=0.1), nn.ReLU(),
        nn.Dropout(0.4), nn.Linear(256, 10),
    ]


# input_shape: (H, W, C) of one image; layers(input_shape): minicnn layers (None: the recipe,
# which the example builds); torch_layers(torch.nn): the same in NCHW; rows: (kind, batch) pairs.
Architecture = namedtuple("Architecture", "input_shape layers torch_layers rows")
ARCH_ROWS = (("train", 32), ("infer", 1000))
ARCHITECTURES = {
    "seed": Architecture((28, 28, 1), seed_layers, seed_torch_layers,
                         (("train", 32), ("train", 128), ("infer", 1000), ("predict", 1))),
    "lenet5": Architecture((28, 28, 1), lenet5_layers, lenet5_torch_layers, ARCH_ROWS),
    "vgg32": Architecture((32, 32, 3), vgg32_layers, vgg32_torch_layers, ARCH_ROWS),
    "stride2": Architecture((28, 28, 1), stride2_layers, stride2_torch_layers, ARCH_ROWS),
    "wide5x5": Architecture((28, 28, 1), wide5x5_layers, wide5x5_torch_layers, ARCH_ROWS),
    "rgb64": Architecture((64, 64, 3), rgb64_layers, rgb64_torch_layers, ARCH_ROWS),
    "recipe": Architecture((28, 28, 1), None, recipe_torch_layers, (("train", 128),)),
}
OTHER_ARCHITECTURES = tuple(name for name in ARCHITECTURES if name != "seed")


def row_label(row):
    """'train b32' for the seed model (and 'recipe b128', the names of earlier tables), else
    'lenet5 train b32'."""
    if row.arch == "seed":
        return f"{row.kind} b{row.batch}"
    if row.arch == "recipe":
        return f"recipe b{row.batch}"
    return f"{row.arch} {row.kind} b{row.batch}"


# -- the work ----------------------------------------------------------------------------------
def multiply_adds(model):
    """(forward, training) multiply-adds per image of a built minicnn model, from its layers.

    Conv2D: OH * OW * filters * KH * KW * C_in; Dense: inputs * units; everything else
    (pooling, activations, batch norm, dropout, augmentation) is elementwise and not counted.
    Training = forward + the kernel gradient of every counted layer (the same count as its
    forward) + the input gradient of every counted layer but the first (backward stops there:
    nothing before it needs a gradient).
    """
    counts = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            out_h, out_w, filters = layer.output_shape
            kernel_h, kernel_w = layer.kernel_size
            counts.append(out_h * out_w * filters * kernel_h * kernel_w * layer.input_shape[-1])
        elif isinstance(layer, Dense):
            counts.append(layer.input_shape[-1] * layer.units)
    forward = sum(counts)
    return forward, forward + forward + (forward - counts[0])


def load_example():
    """examples/fashion_mnist.py of this checkout, whose build_recipe_model the recipe row times."""
    import importlib.util

    path = os.path.join(os.path.dirname(HERE), "examples", "fashion_mnist.py")
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minicnn_model(arch, steps_per_epoch=1):
    """The architecture as a compiled minicnn Sequential: Adam, sparse categorical cross-entropy,
    accuracy (the recipe: as examples/fashion_mnist.py builds it, its schedule sized for
    `steps_per_epoch` steps of one epoch)."""
    if arch == "recipe":
        return load_example().build_recipe_model(steps_per_epoch=steps_per_epoch, epochs=1)
    spec = ARCHITECTURES[arch]
    model = Sequential(spec.layers(spec.input_shape))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def torch_model(arch):
    return torch.nn.Sequential(*ARCHITECTURES[arch].torch_layers(torch.nn))


def synthetic_data(n, input_shape, seed=0):
    """n images (n, H, W, C) float32 in [0, 1) and n labels int64 in 0..9."""
    rng = np.random.default_rng(seed)
    return rng.random((n, *input_shape), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def minicnn_runner(engine, row, x, y):
    minicnn.set_backend(engine)
    minicnn.set_seed(0)
    model = minicnn_model(row.arch, steps_per_epoch=len(x) // row.batch)
    if row.kind == "train":
        def run():
            minicnn.set_backend(engine)
            model.fit(x, y, batch_size=row.batch, epochs=1, shuffle=False, verbose=0)
    elif row.kind == "predict":
        singles = [x[i:i + 1] for i in range(len(x))]

        def run():
            minicnn.set_backend(engine)
            for image in singles:
                model.predict(image, verbose=0)
    else:
        def run():
            minicnn.set_backend(engine)
            model.predict(x, batch_size=row.batch, verbose=0)
    return run


def torch_flip(images):
    """Each image flipped left-right with probability 1/2 (the example's RandomFlip("horizontal"));
    the memory format of `images` is kept."""
    return torch.where(torch.rand(images.shape[0], 1, 1, 1) < 0.5, images.flip(3), images)


def unchanged(images):
    return images


def torch_runner(layout, row, x, y):
    torch.manual_seed(0)
    model = torch_model(row.arch)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(y)
    batches = [(images[i:i + row.batch], labels[i:i + row.batch]) for i in range(0, len(images), row.batch)]
    if row.kind == "train":
        if row.arch == "recipe":
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-7,
                                          weight_decay=1e-4)
            augment = torch_flip
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
            augment = unchanged
        criterion = torch.nn.CrossEntropyLoss()
        model.train()

        def run():
            for xb, yb in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(augment(xb)), yb)
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


def make_runner(engine, row, x, y):
    if engine.startswith("minicnn-"):
        return minicnn_runner(engine.split("-")[1], row, x, y)
    return torch_runner(engine.split("-", 1)[1], row, x, y)


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


def images_per_row(row, args):
    if row.kind == "predict":
        return SINGLE_IMAGES
    return row.batch * (args.steps if row.kind == "train" else args.infer_batches)


def row_data(row, args):
    return synthetic_data(images_per_row(row, args), ARCHITECTURES[row.arch].input_shape)


def chosen_architectures(args):
    """--arch's names in order, once each (all: every one), --recipe's after them."""
    names = list(OTHER_ARCHITECTURES) if "all" in (args.arch or []) else list(args.arch or [])
    names += ["recipe"] if args.recipe else []
    return list(dict.fromkeys(names))


def table_rows(args):
    return [Row(arch, kind, batch) for arch in ["seed", *chosen_architectures(args)]
            for kind, batch in ARCHITECTURES[arch].rows]


def set_engine_threads(threads):
    """The C engine reads OMP_NUM_THREADS when it loads, before --threads is known: set it directly
    (an older checkout under MINICNN_HOME may lack the call; its header then shows what runs)."""
    c_engine = getattr(minicnn.kernels, "c_engine", None)
    if c_engine is not None and hasattr(c_engine, "set_num_threads"):
        c_engine.set_num_threads(threads)


# -- measuring ---------------------------------------------------------------------------------
def peak_memory_mib(engine, row, args):
    """Growth of VmHWM while `engine` runs the row, in a fresh interpreter (None if unknown)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", engine, row.arch, row.kind, str(row.batch),
               "--threads", str(args.threads), "--steps", str(args.steps), "--infer-batches", str(args.infer_batches)]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
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


def child(engine, arch, kind, batch, args):
    row = Row(arch, kind, int(batch))
    run = make_runner(engine, row, *row_data(row, args))
    before = read_vm_hwm_kib()
    run()
    run()
    after = read_vm_hwm_kib()
    print("nan" if before is None else (after - before) / 1024)


def measure(args):
    """Median seconds per (engine, row) over args.rounds sweeps of every engine and row."""
    engines = available_engines(args.engines)
    runners = {}
    for row in table_rows(args):
        x, y = row_data(row, args)  # one copy per row, shared by the minicnn engines
        for engine in engines:
            runners[(engine, row)] = make_runner(engine, row, x, y)
    runners = dict(sorted(runners.items(), key=lambda item: engines.index(item[0][0])))  # engine by engine
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


def stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def measure_beside_neighbour(args):
    """Median seconds of the seed model's training block at batch 32 per (engine, condition):
    "quiet" with the busy neighbour stopped, "busy" with it running."""
    engines = available_engines(args.engines)
    row = Row("seed", "train", 32)
    x, y = row_data(row, args)
    runners = {engine: make_runner(engine, row, x, y) for engine in engines}
    seconds = {(engine, condition): [] for engine in engines for condition in NEIGHBOUR_CONDITIONS}
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR_LOOP], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, text=True)
    previous_sigterm = signal.signal(signal.SIGTERM, stop_on_sigterm)  # `timeout`, kill: run the finally
    try:
        neighbour.stdout.readline()  # stopped only once it is set to die with this process
        neighbour.send_signal(signal.SIGSTOP)
        for run in runners.values():  # warm-up, quiet
            run()
        for round_index in range(args.rounds):
            # alternate which condition comes first, so that neither always follows a pause
            conditions = NEIGHBOUR_CONDITIONS if round_index % 2 == 0 else NEIGHBOUR_CONDITIONS[::-1]
            for engine, run in runners.items():
                for condition in conditions:
                    neighbour.send_signal(signal.SIGCONT if condition == "busy" else signal.SIGSTOP)
                    time.sleep(SETTLE_SECONDS)  # the neighbour's state takes hold, thread pools stop spinning
                    start = time.perf_counter()
                    run()
                    seconds[(engine, condition)].append(time.perf_counter() - start)
    finally:
        neighbour.kill()  # also ends a stopped process
        neighbour.wait()
        neighbour.stdout.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
    return engines, {key: float(np.median(times)) for key, times in seconds.items()}


# -- reporting ---------------------------------------------------------------------------------
def print_header(args):
    minicnn.set_backend("auto")
    info = minicnn.backend_info()
    print(f"minicnn {minicnn.__version__}; C engine: {info.get('simd')} {info.get('compiler_flags')}; "
          f"torch {torch.__version__ if torch else 'not importable'}; threads {args.threads} "
          f"(minicnn {info.get('engine')} engine: {info.get('threads')} now, following the load: "
          f"{info.get('adaptive_threads', '-')}); "
          f"numpy {np.__version__}; {platform.processor() or platform.machine()}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')} "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '-')}")


def table(args):
    """Time every row, print the table, return the figures (one dict per row and engine)."""
    engines, seconds = measure(args)
    counts = {arch: multiply_adds(minicnn_model(arch)) for arch in ["seed", *chosen_architectures(args)]}
    figures = []
    for row in table_rows(args):
        images = images_per_row(row, args)
        macs = counts[row.arch][1 if row.kind == "train" else 0]
        speeds = {engine: images / seconds[(engine, row)] for engine in engines}
        torch_best = max((speeds[e] for e in engines if e.startswith("torch")), default=None)
        for engine in engines:
            figures.append({
                "row": row_label(row), "engine": engine, "images_per_s": speeds[engine],
                "gflop_per_s": speeds[engine] * 2 * macs / 1e9,
                "vs_best_torch": speeds[engine] / torch_best if torch_best else None,
                "peak_memory_mib": None if args.no_memory else peak_memory_mib(engine, row, args),
            })

    print_header(args)
    forward_macs, training_macs = counts["seed"]
    print(f"medians of {args.rounds} rounds; training blocks of {args.steps} steps; "
          f"{training_macs * 2 / 1e6:.1f} MFLOP per training image, {forward_macs * 2 / 1e6:.1f} per inference"
          + (f"; recipe {counts['recipe'][1] * 2 / 1e6:.1f} per training image" if "recipe" in counts else ""))
    others = [arch for arch in counts if arch not in ("seed", "recipe")]
    if others:
        print("MFLOP per training / inference image: " + ", ".join(
            f"{arch} {counts[arch][1] * 2 / 1e6:.1f} / {counts[arch][0] * 2 / 1e6:.1f}" for arch in others))
    print()
    width = max(12, *(len(f["row"]) for f in figures))
    header = f"{'row':<{width}} {'engine':<20} {'images/s':>10} {'GFLOP/s':>8} {'vs best torch':>14} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for f in figures:
        ratio = f"{f['vs_best_torch']:.2f}x" if f["vs_best_torch"] else "-"
        memory = f"{f['peak_memory_mib']:.0f}" if f["peak_memory_mib"] is not None else "-"
        print(f"{f['row']:<{width}} {f['engine']:<20} {f['images_per_s']:>10,.0f} {f['gflop_per_s']:>8.1f} "
              f"{ratio:>14} {memory:>9}")
    return figures


def neighbour_table(args):
    """Time the seed model's training at batch 32 quiet and beside a busy neighbour, print the
    table, return the figures (one dict per engine)."""
    engines, seconds = measure_beside_neighbour(args)
    images = images_per_row(Row("seed", "train", 32), args)
    speeds = {key: images / time_taken for key, time_taken in seconds.items()}
    torch_best = {condition: max((speeds[(e, condition)] for e in engines if e.startswith("torch")), default=None)
                  for condition in NEIGHBOUR_CONDITIONS}
    figures = []
    for engine in engines:
        quiet, busy = speeds[(engine, "quiet")], speeds[(engine, "busy")]
        figures.append({
            "row": "train b32", "engine": engine, "quiet_images_per_s": quiet, "busy_images_per_s": busy,
            "kept": busy / quiet,
            "quiet_vs_best_torch": quiet / torch_best["quiet"] if torch_best["quiet"] else None,
            "busy_vs_best_torch": busy / torch_best["busy"] if torch_best["busy"] else None,
        })

    print_header(args)
    print(f"medians of {args.rounds} rounds; training blocks of {args.steps} steps of the seed model at "
          f"batch 32; quiet: the busy neighbour process stopped, busy: it running\n")
    header = (f"{'engine':<20} {'quiet images/s':>14} {'busy images/s':>14} {'kept':>6} "
              f"{'quiet vs best torch':>20} {'busy vs best torch':>19}")
    print(header)
    print("-" * len(header))
    for f in figures:
        quiet_ratio = f"{f['quiet_vs_best_torch']:.2f}x" if f["quiet_vs_best_torch"] else "-"
        busy_ratio = f"{f['busy_vs_best_torch']:.2f}x" if f["busy_vs_best_torch"] else "-"
        print(f"{f['engine']:<20} {f['quiet_images_per_s']:>14,.0f} {f['busy_images_per_s']:>14,.0f} "
              f"{f['kept']:>6.0%} {quiet_ratio:>20} {busy_ratio:>19}")
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--rounds", type=int, default=7, help="timed sweeps of the whole table (median)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--infer-batches", type=int, default=2, help="batches of 1000 per timed inference block")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--arch", nargs="+", choices=[*OTHER_ARCHITECTURES, "all"], metavar="NAME",
                        help=f"add the rows of these architectures ({', '.join(OTHER_ARCHITECTURES)}, or all)")
    parser.add_argument("--recipe", action="store_true",
                        help="add the row of examples/fashion_mnist.py --recipe best's training step "
                             "(batch 128; the same as --arch recipe)")
    parser.add_argument("--neighbour", action="store_true",
                        help="print only a table of the seed model's training at batch 32 with and without "
                             "one busy neighbour process")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, metavar="ENGINE",
                        help=f"time only these engines (default: all that run here; {', '.join(ENGINES)})")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "ARCH", "KIND", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("threads", "rounds", "steps", "infer_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, received {getattr(args, name)}")
    if args.neighbour and (args.arch or args.recipe):
        parser.error("--neighbour times the seed model only; leave out --arch and --recipe")
    if args.neighbour and not hasattr(signal, "SIGSTOP"):
        parser.error("--neighbour needs POSIX signals (SIGSTOP/SIGCONT) to pause its neighbour")

    if torch is not None:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    set_engine_threads(args.threads)
    if args.child:
        return child(*args.child, args)

    if args.neighbour:
        results = {"neighbour": neighbour_table(args)}
    else:
        results = {"figures": table(args)}
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"threads": args.threads, "rounds": args.rounds, **results}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
