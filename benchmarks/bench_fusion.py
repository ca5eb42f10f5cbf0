"""What the fused convolution + max pool passes are worth: the same model with and without them.

    python benchmarks/bench_fusion.py                    # the seed model, 7 rounds
    python benchmarks/bench_fusion.py --arch wide5x5 vgg32 --rounds 5

Sequential runs a Conv2D and the MaxPooling2D right after it as one C call each way
(kernels.conv2d_maxpool_forward, kernels.conv2d_backward_from_maxpool; docs/architecture.md,
"Fusions"). This script times bench_train.py's rows (train b32, train b128, infer b1000, and the
--arch rows) on the C engine twice in one process: "fused" as the library runs, "apart" with
Conv2D told that nothing fuses (fuses_following_maxpool and takes_gradient_from return False,
so every layer runs its own forward and backward). Every round times each row both ways, the
order alternating between rounds, so a slow spell of this shared machine hits both alike.
Prints per row the median images/s of each and fused / apart (> 1: the fusion is faster).
Both ways give the same bits (tests/test_conv_maxpool_backward.py).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (its sys.path line picks this checkout's minicnn)
from bench_train import OTHER_ARCHITECTURES, make_runner, row_data, row_label, table_rows  # noqa: E402

from minicnn import Conv2D, kernels  # noqa: E402

WAYS = ("fused", "apart")


class _Apart:
    """Within the block, Conv2D fuses nothing (the class attributes are put back on exit)."""
    names = ("fuses_following_maxpool", "takes_gradient_from")

    def __enter__(self):
        self.saved = {name: Conv2D.__dict__[name] for name in self.names}
        for name in self.names:
            setattr(Conv2D, name, lambda self, following: False)

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(Conv2D, name, method)


def time_once(run, way):
    if way == "apart":
        with _Apart():
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed block")
    parser.add_argument("--infer-batches", type=int, default=2, help="batches of 1000 per inference block")
    parser.add_argument("--arch", nargs="+", default=[], metavar="NAME", choices=[*OTHER_ARCHITECTURES, "all"],
                        help=f"add these architectures' rows ({', '.join(OTHER_ARCHITECTURES)}, or all)")
    parser.add_argument("--threads", type=int, default=2, help="C engine threads (2, as the other benchmarks)")
    args = parser.parse_args(argv)
    for name in ("threads", "rounds", "steps", "infer_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, received {getattr(args, name)}")
    if "c" not in kernels.available_backends():
        parser.error("the C engine is not built here (pip install -e .); fusion is a C engine feature")
    args.recipe = False
    bench_train.set_engine_threads(args.threads)
    rows = [row for row in table_rows(args) if row.kind != "predict"]   # the plan never fuses
    runners = {row: make_runner("minicnn-c", row, *row_data(row, args)) for row in rows}
    for row, run in runners.items():   # warm-up, both ways
        for way in WAYS:
            time_once(run, way)
    seconds = {(row, way): [] for row in rows for way in WAYS}
    for round_index in range(args.rounds):
        order = WAYS if round_index % 2 == 0 else WAYS[::-1]
        for row, run in runners.items():
            for way in order:
                seconds[(row, way)].append(time_once(run, way))
    print(f"minicnn C engine, {args.threads} threads; medians of {args.rounds} rounds, each way in turn")
    print(f"{'row':<22} {'fused img/s':>12} {'apart img/s':>12} {'fused/apart':>12}")
    for row in rows:
        images = bench_train.images_per_row(row, args)
        fused, apart = (images / float(np.median(seconds[(row, way)])) for way in WAYS)
        print(f"{row_label(row):<22} {fused:>12,.0f} {apart:>12,.0f} {fused / apart:>11.2f}x")


if __name__ == "__main__":
    main()
