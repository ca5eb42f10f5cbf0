#!/usr/bin/env python3
"""Differential fuzz of the C engine against the NumPy engine, through the kernel face.

Random cases over the whole geometry space, in the C engine's automatic algorithm mode:

    convolution  batch 1-9, H and W 1-40, C_in and filters 1-80, kernels 1-7 (non-square too),
                 strides 1-3, valid and same padding (TensorFlow's rule, pads_2d), bias on/off,
                 input gradient on/off, fused ReLU (conv2d_relu_forward) on/off; a third of
                 them also run with a following max pool (windows 1-4 that do not overlap):
                 conv2d_maxpool_forward and conv2d_backward_from_maxpool, bit for bit against
                 the two layers' passes apart; every forward also runs without a kept
                 padded copy (keep_cache=False, inference: frames padded a group of images at
                 a time, or x read in place without padding), bit for bit against the kept one
    max pooling  windows 1-4 (a fifth 1-7: more cells than one window-kernel call takes),
                 strides 1-3, valid and same
    avg pooling  windows 1-5, strides 1-3, valid and same (only the cells inside are averaged)
    batch norm   M 1-600 rows, C 1-70 features (a third 1024-5120 rows, C 1-40: the column
                 sums in one part per thread), training (forward and backward, dx on/off) or
                 inference, gamma and beta each on/off, the following ReLU fused on/off
    dense        N 1-9 (a third 128-300: rows split between threads), K and F 1-300, fused
                 ReLU on/off
    dropout      1-400,000 elements, rates 0-0.9, random 64-bit keys (both passes bit for bit)
    relu         1-400,000 elements, with NaN, infinities and signed zeros in half the cases
                 (both passes bit for bit; above 2^17 elements on several threads)
    plan         (one case per 25 more, after the others) a random small model of the layers
                 fit binds to C (minicnn/training/training_plan.py): 0-3 convolutions (kernels
                 1-5, non-square too, strides 1-2, valid and same, ReLU or none, bias on/off),
                 ReLU layers, dropout (rates 0-0.8, minicnn's generator or a seed), max pools
                 that fuse with them or not, a pool before the first weights, Flatten, dense
                 layers, a softmax or from_logits head; Adam or SGD (momentum,
                 Nesterov); batch 1-9 with a shorter last batch; two epochs of fit through
                 the plan, bit for bit against the general path (the layers one by one)
    all          float32 and float64, 1-4 threads, every SIMD level the CPU has; a fifth of the
                 cases laid out for two threads with one running (the load cap)

The sampling is steered so that every branch of the C engine is reached: stride-1 3x3 and 5x5
kernels (Winograd-eligible) often, C_in and filters on both sides of 16 and of 64 (auto mode's
3x3 Winograd thresholds, MC_WINO_MIN_CHANNELS and MC_WINO_DK_WIDE_CHANNELS) and of 32 and 48
(the 5x5 ones, MC_WINO5_*), batch 1 and batch below the thread count. The work of one
convolution is capped so that thousands of cases run in minutes; the extremes of every axis
are still drawn, just not all at once.

Every result is compared with the NumPy engine's (the parity tolerances of
tests/test_c_engine.py: relative to the reference's largest magnitude, 1e-12 for float64 and
1e-5 for float32; 3e-5 for float32 convolutions that Winograd F(2x2, 5x5) may run, whose
larger transforms round more). Cases run in batches in child processes; a child writes each case's index
to a progress file before running it, so a crash (or a hang past --timeout) is reported with
its geometry and the run goes on with the next case in a fresh child.

    scripts/fuzz_engines.py --cases 3000 --seed 1 --threads 1,2,3,4
    scripts/fuzz_engines.py --cases 1500 --seed 2026 --threads 1,2,3,4 --require-coverage  # CI

Prints a summary (cases, crashes, mismatches, branch coverage counts, seconds) and exits 1 on
any crash, hang or mismatch, and with --require-coverage also when a branch was never reached.
Every thread count runs as asked, also above the CPUs of this machine (the threads then take
turns): c_engine.set_num_threads(n, beyond_cpus=True) lifts the engine's cap at the CPUs.
"""
import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The minicnn under test: the folder named by MINICNN_HOME (a fuzz passes the folder of the
# minicnn it imported to its children, so that after a plain `pip install .` the installed
# package is tested, not the source folder beside this script), else this checkout's.
MINICNN_HOME = os.environ.get("MINICNN_HOME") or REPO
if MINICNN_HOME not in sys.path:
    sys.path.insert(0, MINICNN_HOME)

TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
WINO5_TOLERANCE = {"float64": 1e-12, "float32": 3e-5}   # 5x5 stride-1 convolutions (Winograd)
WINO_MIN_CHANNELS = 16          # csrc/kernels.c MC_WINO_MIN_CHANNELS
WINO_DK_WIDE_CHANNELS = 64        # csrc/kernels.c MC_WINO_DK_WIDE_CHANNELS (C_in or F)
WINO5_FWD_CHANNELS = 32         # csrc/kernels.c MC_WINO5_FWD_CHANNELS (C_in and F)
WINO5_DK_CHANNELS = 48          # csrc/kernels.c MC_WINO5_DK_CHANNELS (C_in and F)
WINO5_DX_CHANNELS = 32          # csrc/kernels.c MC_WINO5_DX_CHANNELS (F)
FUSE_CHUNK_BYTES = 1 << 20      # csrc/kernels.c MC_FUSE_CHUNK_BYTES (conv + max pool forward)
FORWARD_GROUP_BYTES = 1 << 20   # csrc/kernels.c MC_FORWARD_GROUP_BYTES (forward without xpad)
DENSE_ROW_SPLIT = 128           # csrc/tmpl_dense.h DN_DENSE_ROW_SPLIT (dense forward: rows split)
POOL_WINDOW_CELLS = 16          # csrc/kernels.c MC_POOL_WINDOW_CELLS (cells per window kernel call)
BN_PART_ROWS = 1024             # csrc/tmpl_batchnorm.h DN_BN_PART_ROWS (rows per part of the sums)
BN_PARTIALS = 2048              # csrc/tmpl_batchnorm.h DN_BN_PARTIALS (partial sums on the stack)
UNIT_TILE_ROWS = 12              # csrc/kernels.c: the tallest igemm tile of any SIMD level
MAX_CONV_WORK = 60_000_000      # multiply-adds of one convolution pass (keeps cases fast)
SIMD_LEVELS = ("avx512", "avx2", "sse2")

# The branches every full run must reach (auto mode, with the input gradient).
REQUIRED_BRANCHES = (
    "conv fwd=direct dkernel=direct dx=direct",
    "conv fwd=direct dkernel=direct dx=winograd",
    "conv fwd=winograd dkernel=direct dx=direct",
    "conv fwd=winograd dkernel=winograd dx=winograd",
    "conv batch 1",
    "conv batch < threads",
    "conv dx=winograd, batch < threads",
    "conv 5x5 fwd=direct dkernel=direct dx=winograd",
    "conv 5x5 fwd=winograd dkernel=direct dx=winograd",
    "conv 5x5 fwd=winograd dkernel=winograd dx=winograd",
    "conv 5x5 dx=winograd, batch < threads",
    "conv 5x5 winograd from maxpool",
    "conv fused relu",
    "conv no dx",
    "conv forward, one input channel in whole row tiles",
    "conv from maxpool",
    "conv from maxpool, framed",
    "conv from maxpool, staged",
    "conv with maxpool forward in several chunks",
    "conv forward without xpad, in several groups",
    "conv forward without xpad, in several groups, fwd=direct",
    "conv forward without xpad, in several groups, fwd=winograd",
    "conv forward without xpad, reading x",
    "conv with maxpool forward without xpad",
    "pool",
    "pool window over several kernel calls",
    "avgpool",
    "batchnorm training",
    "batchnorm inference",
    "batchnorm fused relu",
    "batchnorm sums in parts",
    "dense",
    "dense forward, rows split between threads",
    "relu",
    "relu on threads",
    "dropout",
    "team below the threads laid out",
    "training plan",
    "training plan, batch 1",
    "training plan, a pool not fused",
    "training plan, a pool before the first weights",
    "training plan, dense layer first",
    "training plan, a ReLU layer",
    "training plan, dropout",
)


# ---- the branch the C engine takes (mirrors use_wino / backward_plan in csrc) ----

def winograd_size(case):
    """3 or 5 when the convolution is Winograd-eligible (stride 1, a 3x3 or 5x5 kernel, padding
    at most k - 1 per side), else None."""
    kh, kw = case["kernel"]
    if kh == kw and kh in (3, 5) and tuple(case["strides"]) == (1, 1) and max(case["pads"]) <= kh - 1:
        return kh
    return None


def largest_window_inside(case):
    """The most cells of one max-pool window that lie inside the image (padding cells are not
    passed to the window kernel)."""
    from minicnn.kernels.geometry import window_output_shape
    (wh, ww), (sh, sw), (top, _, left, _) = case["window"], case["strides"], case["pads"]
    oh, ow = window_output_shape(case["h"], case["w"], (wh, ww), (sh, sw), case["pads"])

    def inside(start, size, limit):
        return max(0, min(start + size, limit) - max(start, 0))

    rows = max(inside(p * sh - top, wh, case["h"]) for p in range(oh))
    cols = max(inside(q * sw - left, ww, case["w"]) for q in range(ow))
    return rows * cols


def bn_sum_parts(m, c, laid_out_threads):
    """Parts of batch normalisation's column sums (bn_column_sums in csrc/tmpl_batchnorm.h): one
    per laid-out thread when each has BN_PART_ROWS rows and the backward's two sums per part fit
    BN_PARTIALS; the forward's single sums then fit too."""
    parts = laid_out_threads
    if parts * 2 * c > BN_PARTIALS or m < parts * BN_PART_ROWS:
        return 1
    return parts


def dense_rows_split(case, effective_threads):
    """Whether the C dense forward splits the rows between threads (dense_threads and
    DN_DENSE_ROW_SPLIT in csrc/tmpl_dense.h)."""
    n, k, f = case["n"], case["k"], case["f"]
    small = 2 * n * k * f < 2**20 and k * f < 2**16
    return n >= DENSE_ROW_SPLIT and not small and effective_threads > 1


def conv_tolerance(case):
    return WINO5_TOLERANCE if winograd_size(case) == 5 else TOLERANCE


def conv_branches(case, effective_threads):
    """Names of the C engine branches a convolution case runs in auto mode."""
    k = winograd_size(case)
    c, f = case["c"], case["f"]
    if k == 5:
        fwd = "winograd" if min(c, f) >= WINO5_FWD_CHANNELS else "direct"
        dkernel = "winograd" if min(c, f) >= WINO5_DK_CHANNELS else "direct"
        dx = "winograd" if f >= WINO5_DX_CHANNELS else "direct"
    else:
        eligible = k == 3
        fwd = "winograd" if eligible and c >= WINO_MIN_CHANNELS else "direct"
        dkernel = ("winograd" if eligible and min(c, f) >= WINO_MIN_CHANNELS and max(c, f) >= WINO_DK_WIDE_CHANNELS
                   else "direct")
        dx = "winograd" if eligible and f >= WINO_MIN_CHANNELS else "direct"
    dx = dx if case["need_dx"] else "none"
    names = [f"conv fwd={fwd} dkernel={dkernel} dx={dx}"]
    if k == 5:
        names.append(f"conv 5x5 fwd={fwd} dkernel={dkernel} dx={dx}")
        if case["n"] < effective_threads and dx == "winograd":
            names.append("conv 5x5 dx=winograd, batch < threads")
    if case["n"] == 1:
        names.append("conv batch 1")
    if case["n"] < effective_threads:
        names.append("conv batch < threads")
        if dx == "winograd":
            names.append("conv dx=winograd, batch < threads")
    if case["relu"]:
        names.append("conv fused relu")
    if not case["need_dx"]:
        names.append("conv no dx")
    if fwd == "direct" and c == 1 and case["strides"][1] == 1 and conv_output_width(case) >= UNIT_TILE_ROWS:
        # the first tile of a row of that many pixels or more is whole: mk_igemm_body's UNIT
        names.append("conv forward, one input channel in whole row tiles")
    return names


def conv_output_width(case):
    from minicnn.kernels.geometry import output_shape_2d
    return output_shape_2d(case["h"], case["w"], case["kernel"], case["strides"], case["padding"])[1]


# ---- sampling ----

def _size(rng, small, large):
    """Mostly small, sometimes anywhere up to `large`."""
    return rng.randint(1, small) if rng.random() < 0.7 else rng.randint(1, large)


def _channels(rng):
    """Below the Winograd threshold, between it and the kernel gradient's, or above both."""
    roll = rng.random()
    if roll < 0.4:
        return rng.randint(1, WINO_MIN_CHANNELS - 1)
    if roll < 0.75:
        return rng.randint(WINO_MIN_CHANNELS, WINO_DK_WIDE_CHANNELS - 1)
    return rng.randint(WINO_DK_WIDE_CHANNELS, 80)


def sample_conv(rng, common):
    from minicnn.kernels.geometry import output_shape_2d, pads_2d
    while True:
        n = 1 if rng.random() < 0.3 else rng.randint(1, 9)
        h, w = _size(rng, 16, 40), _size(rng, 16, 40)
        roll = rng.random()
        if roll < 0.4:
            kernel, strides = (3, 3), (1, 1)
        elif roll < 0.55:
            kernel, strides = (5, 5), (1, 1)
        else:
            kernel = (rng.randint(1, 7), rng.randint(1, 7))
            strides = (rng.randint(1, 3), rng.randint(1, 3))
        padding = rng.choice(["valid", "same"])
        if padding == "valid" and (kernel[0] > h or kernel[1] > w):
            padding = "same"
        c, f = _channels(rng), _channels(rng)
        wide_output = rng.random() < 0.06
        if wide_output:
            # a batch whose output outgrows one chunk of the forward with a max pool (more
            # than MC_FUSE_CHUNK_BYTES): few input channels keep the work in bounds
            n, h, w, c, f = rng.randint(5, 9), rng.randint(28, 40), rng.randint(28, 40), rng.randint(1, 4), rng.randint(48, 80)
        elif rng.random() < 0.06:
            # a first layer: one input channel, rows as wide as the tallest tile or wider
            c, strides, w = 1, (strides[0], 1), rng.randint(UNIT_TILE_ROWS + kernel[1], 40)
        elif rng.random() < 0.06:
            # padded frames larger than a group of the forward without xpad
            # (MC_FORWARD_GROUP_BYTES): several groups; few filters keep the work in bounds
            n, h, w, c, f = rng.randint(2, 9), rng.randint(32, 40), rng.randint(32, 40), rng.randint(48, 80), rng.randint(1, 20)
            padding = "same"
        oh, ow = output_shape_2d(h, w, kernel, strides, padding)
        if n * oh * ow * kernel[0] * kernel[1] * c * f <= MAX_CONV_WORK:
            break
    pool = None
    if wide_output or rng.random() < 0.35:
        # a max pool over the output whose backward the convolution's takes over: windows up
        # to 4x4 that do not overlap (strides a window or more) and stay inside
        ph, pw = rng.randint(1, min(4, oh)), rng.randint(1, min(4, ow))
        pool = (ph, pw, ph + (rng.random() < 0.2), pw + (rng.random() < 0.2))
    return dict(common, op="conv", n=n, h=h, w=w, c=c, f=f, kernel=kernel, strides=strides,
                padding=padding, pads=pads_2d(h, w, kernel, strides, padding),
                bias=rng.random() < 0.8, need_dx=rng.random() < 0.75, relu=rng.random() < 0.4,
                pool=pool)


def sample_pool(rng, common):
    from minicnn.kernels.geometry import pads_2d
    n, h, w, c = rng.randint(1, 9), _size(rng, 12, 40), _size(rng, 12, 40), rng.randint(1, 70)
    # windows of more than POOL_WINDOW_CELLS cells take several calls of the window kernel (the
    # later ones continuing from the running maximum): a fifth of the windows are up to 7x7
    side = 7 if rng.random() < 0.2 else 4
    window = (rng.randint(1, side), rng.randint(1, side))
    strides = (rng.randint(1, 3), rng.randint(1, 3))
    padding = rng.choice(["valid", "same"])
    if padding == "valid" and (window[0] > h or window[1] > w):
        padding = "same"
    return dict(common, op="pool", n=n, h=h, w=w, c=c, window=window, strides=strides,
                padding=padding, pads=pads_2d(h, w, window, strides, padding))


def sample_avgpool(rng, common):
    from minicnn.kernels.geometry import pads_2d
    n, h, w, c = rng.randint(1, 9), _size(rng, 12, 40), _size(rng, 12, 40), rng.randint(1, 70)
    window = (rng.randint(1, 5), rng.randint(1, 5))
    strides = (rng.randint(1, 3), rng.randint(1, 3))
    padding = rng.choice(["valid", "same"])
    if padding == "valid" and (window[0] > h or window[1] > w):
        padding = "same"
    return dict(common, op="avgpool", n=n, h=h, w=w, c=c, window=window, strides=strides,
                padding=padding, pads=pads_2d(h, w, window, strides, padding))


def sample_batchnorm(rng, common):
    # from BN_PART_ROWS rows per laid-out thread the column sums run in parts, one per thread
    # (and fit the stack's BN_PARTIALS): a third of the cases are drawn there
    if rng.random() < 0.35:
        return dict(common, op="batchnorm", m=rng.randint(BN_PART_ROWS, 5 * BN_PART_ROWS), c=rng.randint(1, 40),
                    training=rng.random() < 0.85, need_dx=rng.random() < 0.8,
                    center=rng.random() < 0.8, scale=rng.random() < 0.8, relu=rng.random() < 0.4)
    return dict(common, op="batchnorm", m=_size(rng, 40, 600), c=rng.randint(1, 70),
                training=rng.random() < 0.7, need_dx=rng.random() < 0.8,
                center=rng.random() < 0.8, scale=rng.random() < 0.8, relu=rng.random() < 0.4)


def sample_dense(rng, common):
    # from DENSE_ROW_SPLIT rows the forward splits the batch's rows between threads (below it,
    # the columns): a third of the cases are drawn there
    n = rng.randint(DENSE_ROW_SPLIT, 300) if rng.random() < 0.35 else rng.randint(1, 9)
    return dict(common, op="dense", n=n, k=rng.randint(1, 300), f=rng.randint(1, 300),
                bias=rng.random() < 0.8, need_dx=rng.random() < 0.75, relu=rng.random() < 0.4)


def sample_relu(rng, common):
    # up to 400,000 elements: from 2^17 the C engine splits the array between threads, so a
    # third of the cases are drawn there (the coverage requires that branch)
    size = rng.randint(2**17, 400_000) if rng.random() < 0.35 else int(10 ** rng.uniform(0, 5.1))
    return dict(common, op="relu", size=size, special=rng.random() < 0.5)


def sample_dropout(rng, common):
    return dict(common, op="dropout", size=int(10 ** rng.uniform(0, 5.6)), rate=rng.choice([0.0, 0.1, 0.5, 0.9]),
                key=rng.randrange(2**64))


def make_cases(count, seed, threads, simd_levels):
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        common = dict(index=index, seed=rng.randrange(2**31), dtype=rng.choice(["float32", "float64"]),
                      threads=rng.choice(threads), simd=rng.choice(simd_levels), team_cap=None)
        if 2 in threads and rng.random() < 0.2:
            # as under load: laid out for two threads, one runs (kernels.load's cap); every
            # result must be the one two threads give
            common.update(threads=2, team_cap=1)
        roll = rng.random()
        sample = (sample_conv if roll < 0.65 else sample_pool if roll < 0.77 else
                  sample_avgpool if roll < 0.85 else sample_batchnorm if roll < 0.92 else
                  sample_dense if roll < 0.96 else sample_relu if roll < 0.98 else sample_dropout)
        cases.append(sample(rng, common))
    # the training plans' cases after the others, from their own generator, so that adding
    # them changed none of the cases above
    plan_rng = random.Random(seed + 1_000_003)
    for index in range(count, count + max(1, count // 25)):
        common = dict(index=index, seed=plan_rng.randrange(2**31), dtype=plan_rng.choice(["float32", "float64"]),
                      threads=plan_rng.choice(threads), simd=plan_rng.choice(simd_levels), team_cap=None)
        if 2 in threads and plan_rng.random() < 0.2:
            common.update(threads=2, team_cap=1)
        cases.append(sample_plan(plan_rng, common))
    return cases


def _window_output(size, window, stride, padding):
    """Outputs along one axis (TensorFlow's rule), or None when the window does not fit."""
    if padding == "same":
        return -(-size // stride)
    return (size - window) // stride + 1 if size >= window else None


def _sample_dropout(rng):
    """A Dropout layer's spec: a rate (0: the identity) and a seed of its own or None."""
    return ["dropout", rng.choice([0.0, 0.2, 0.5, 0.8]), rng.choice([None, rng.randrange(1000)])]


def sample_plan(rng, common):
    """A random model of the layers fit binds to C, as JSON-able layer specs."""
    input_shape = [rng.randint(3, 16), rng.randint(3, 16), rng.randint(1, 4)]
    h, w = input_shape[:2]
    layers = []
    if rng.random() < 0.15:   # no backward runs below the first layer with weights
        layers.append(["pool", 2, 2, 2, 2, "same"])
        h, w = -(-h // 2), -(-w // 2)
    for _ in range(rng.randint(0, 3)):
        kh = rng.choice([1, 2, 3, 3, 5])
        kw = kh if rng.random() < 0.8 else rng.choice([1, 2, 3])
        sh = rng.choice([1, 1, 2])
        sw = sh if rng.random() < 0.8 else rng.choice([1, 2])
        padding = rng.choice(["same", "valid"])
        oh, ow = _window_output(h, kh, sh, padding), _window_output(w, kw, sw, padding)
        if oh is None or ow is None:
            break
        relu = rng.random() < 0.6
        layers.append(["conv", rng.randint(1, 12), kh, kw, sh, sw, padding, relu, rng.random() < 0.8])
        h, w = oh, ow
        if not relu and rng.random() < 0.4:
            layers.append(["relu"])   # a ReLU layer of its own: the pool after it does not fuse
        if rng.random() < 0.25:
            layers.append(_sample_dropout(rng))
        if rng.random() < 0.6:
            size = rng.choice([2, 2, 3])
            stride = size if rng.random() < 0.7 else 1   # windows that overlap do not fuse
            padding = "valid" if rng.random() < 0.8 else "same"
            oh, ow = _window_output(h, size, stride, padding), _window_output(w, size, stride, padding)
            if oh is not None and ow is not None:
                layers.append(["pool", size, size, stride, stride, padding])
                h, w = oh, ow
    layers.append(["flatten"])
    if rng.random() < 0.5:
        layers.append(["dense", rng.randint(1, 20), rng.choice(["relu", "linear"]), rng.random() < 0.8])
        if rng.random() < 0.4:
            layers.append(_sample_dropout(rng))
    classes = rng.randint(2, 6)
    head = rng.choice(["softmax", "softmax", "linear"])   # linear: from_logits=True
    layers.append(["dense", classes, head, True])
    batch = 1 if rng.random() < 0.25 else rng.randint(2, 9)
    n = batch * rng.randint(1, 3) + rng.randint(0, batch - 1)
    return dict(common, op="plan", input_shape=input_shape, layers=layers, batch=batch, n=n, classes=classes,
                from_logits=head == "linear", optimizer=rng.choice(["adam", "sgd", "momentum", "nesterov"]))


def describe(case):
    """One line with everything needed to rerun a case by hand."""
    keys = [k for k in case if k not in ("index", "op")]
    return f"#{case['index']} {case['op']} " + " ".join(f"{k}={case[k]}" for k in keys)


# ---- running one case (in a child) ----

def _compare(name, got, want, dtype, tolerance=TOLERANCE):
    import numpy as np
    if want is None or got is None:
        return None if (want is None) == (got is None) else f"{name}: one engine returned None"
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    tol = tolerance[dtype]
    scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
    if not np.all(np.isfinite(got)) and np.all(np.isfinite(want)):
        return f"{name}: not finite"
    err = float(np.max(np.abs(got - want) - tol * np.abs(want))) if want.size else 0.0
    if err > tol * scale:
        return f"{name}: max excess error {err:.3g} > {tol * scale:.3g} (scale {scale:.3g})"
    return None


def _on(kernels, engine, compute):
    kernels.set_backend(engine)
    return compute()


def run_case(case):
    """(list of mismatch messages, branch names) for one case; the engines must agree."""
    import numpy as np
    from minicnn import kernels
    from minicnn.kernels import c_engine

    dtype = case["dtype"]
    rng = np.random.default_rng(case["seed"])
    if case.get("team_cap"):
        # the load cap, which a run beyond the CPUs ignores: two threads laid out (this
        # machine has them), fewer running
        c_engine.set_num_threads(case["threads"], beyond_cpus=False)
        c_engine.set_load_cap(case["team_cap"])
    else:
        c_engine.set_load_cap(None)
        c_engine.set_num_threads(case["threads"], beyond_cpus=True)
    c_engine.set_simd_level(case["simd"])
    c_engine.set_algorithm("auto")
    effective = c_engine.engine_info()["threads"]
    laid_out = case["threads"]   # what the sums' parts follow (a team cap runs fewer)
    problems = []

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    if case["op"] == "conv":
        kh, kw = case["kernel"]
        x = normal(case["n"], case["h"], case["w"], case["c"])
        kernel = normal(kh, kw, case["c"], case["f"])
        bias = normal(case["f"]) if case["bias"] else None
        forward = kernels.conv2d_relu_forward if case["relu"] else kernels.conv2d_forward
        args = (x, kernel, bias, tuple(case["strides"]), tuple(case["pads"]))
        y_ref, cache_ref = _on(kernels, "numpy", lambda: forward(*args))
        y, cache = _on(kernels, "c", lambda: forward(*args))
        tolerance = conv_tolerance(case)
        problems.append(_compare("y", y, y_ref, dtype, tolerance))
        # inference: no padded copy kept (a group of frames at a time, or x itself), the same bits
        y_inference, _ = _on(kernels, "c", lambda: forward(*args, keep_cache=False))
        if y_inference.tobytes() != y.tobytes():
            problems.append("y: the forward without xpad changed the bits")
        dy = normal(*y_ref.shape)
        if case["relu"]:
            # where the reference output is within rounding of 0 the engines may disagree on
            # the ReLU mask, legitimately: no gradient there, so the mask cannot matter
            scale = max(float(np.max(np.abs(y_ref))), 1.0)
            dy[np.abs(y_ref) <= 4 * tolerance[dtype] * scale] = 0
        grads_ref = _on(kernels, "numpy", lambda: kernels.conv2d_backward(dy, cache_ref, case["need_dx"]))
        grads = _on(kernels, "c", lambda: kernels.conv2d_backward(dy, cache, case["need_dx"]))
        problems += [_compare(k, g, r, dtype, tolerance)
                     for k, g, r in zip(("dx", "dkernel", "dbias"), grads, grads_ref)]
        if case.get("team_cap"):   # the capped team's sums are the full team's, bit for bit
            c_engine.set_load_cap(None)
            full = _on(kernels, "c", lambda: kernels.conv2d_backward(dy, cache, case["need_dx"]))
            c_engine.set_load_cap(case["team_cap"])
            for name, a, b in zip(("dx", "dkernel", "dbias"), grads, full):
                if (a is None) != (b is None) or (a is not None and a.tobytes() != b.tobytes()):
                    problems.append(f"{name}: a capped team changed the bits")
        branches = conv_branches(case, effective)
        if not any(case["pads"]):
            branches.append("conv forward without xpad, reading x")
        else:
            frame_bytes = ((case["h"] + case["pads"][0] + case["pads"][1]) * (case["w"] + case["pads"][2] + case["pads"][3])
                           * case["c"] * x.itemsize)
            if max(1, FORWARD_GROUP_BYTES // frame_bytes) < case["n"]:
                branches.append("conv forward without xpad, in several groups")
                branches.append(f"conv forward without xpad, in several groups, {branches[0].split()[1]}")
        if case.get("pool"):
            # the convolution's backward from the following max pool's gradient: the bits of
            # the pool's backward and then the convolution's (those are compared with NumPy above)
            ph, pw, sh, sw = case["pool"]
            kernels.set_backend("c")
            pooled, pool_cache = kernels.maxpool2d_forward(y, (ph, pw), (sh, sw), (0, 0, 0, 0))
            dpool = normal(*pooled.shape)
            fused = kernels.conv2d_backward_from_maxpool(dpool, cache, pool_cache, case["need_dx"])
            apart = kernels.conv2d_backward(kernels.maxpool2d_backward(dpool, pool_cache), cache, case["need_dx"])
            # and the forward as one call (chunks of images; no convolution output kept)
            pooled_fused, cache_fused, pool_cache_fused = kernels.conv2d_maxpool_forward(
                *args, (ph, pw), (sh, sw), relu=case["relu"])
            if pooled_fused.tobytes() != pooled.tobytes():
                problems.append("pooled: the forward with the max pool changed the bits")
            pooled_inference = kernels.conv2d_maxpool_forward(*args, (ph, pw), (sh, sw), relu=case["relu"],
                                                              keep_cache=False)[0]
            if pooled_inference.tobytes() != pooled.tobytes():
                problems.append("pooled: the forward with the max pool without xpad changed the bits")
            branches.append("conv with maxpool forward without xpad")
            both = kernels.conv2d_backward_from_maxpool(dpool, cache_fused, pool_cache_fused, case["need_dx"])
            for name, a, b, c in zip(("dx", "dkernel", "dbias"), fused, apart, both):
                for other in (b, c):
                    if (a is None) != (other is None) or (a is not None and a.tobytes() != other.tobytes()):
                        problems.append(f"{name}: the passes with the max pool changed the bits")
            framed = case["need_dx"] or "dkernel=winograd" in branches[0]
            branches += ["conv from maxpool", "conv from maxpool, " + ("framed" if framed else "staged")]
            if "winograd" in branches[0] and winograd_size(case) == 5:
                branches.append("conv 5x5 winograd from maxpool")
            per_chunk = max(1, FUSE_CHUNK_BYTES // (y.shape[1] * y.shape[2] * y.shape[3] * y.itemsize))
            if per_chunk < case["n"]:
                branches.append("conv with maxpool forward in several chunks")
    elif case["op"] == "pool":
        x = normal(case["n"], case["h"], case["w"], case["c"])
        if rng.random() < 0.5:
            x = np.round(x * 2) / 2   # ties: the first maximum must win on both engines
        args = (x, tuple(case["window"]), tuple(case["strides"]), tuple(case["pads"]))
        y_ref, cache_ref = _on(kernels, "numpy", lambda: kernels.maxpool2d_forward(*args))
        y, cache = _on(kernels, "c", lambda: kernels.maxpool2d_forward(*args))
        if not np.array_equal(y, y_ref):
            problems.append("y: pooling outputs differ")
        dy = normal(*y_ref.shape)
        dx_ref = _on(kernels, "numpy", lambda: kernels.maxpool2d_backward(dy, cache_ref))
        dx = _on(kernels, "c", lambda: kernels.maxpool2d_backward(dy, cache))
        problems.append(_compare("dx", dx, dx_ref, dtype))
        branches = ["pool"] + (["pool window over several kernel calls"]
                               if largest_window_inside(case) > POOL_WINDOW_CELLS else [])
    elif case["op"] == "avgpool":
        x = normal(case["n"], case["h"], case["w"], case["c"])
        args = (x, tuple(case["window"]), tuple(case["strides"]), tuple(case["pads"]))
        y_ref, cache_ref = _on(kernels, "numpy", lambda: kernels.avgpool2d_forward(*args))
        y, cache = _on(kernels, "c", lambda: kernels.avgpool2d_forward(*args))
        problems.append(_compare("y", y, y_ref, dtype))
        dy = normal(*y_ref.shape)
        dx_ref = _on(kernels, "numpy", lambda: kernels.avgpool2d_backward(dy, cache_ref))
        dx = _on(kernels, "c", lambda: kernels.avgpool2d_backward(dy, cache))
        problems.append(_compare("dx", dx, dx_ref, dtype))
        branches = ["avgpool"]
    elif case["op"] == "batchnorm":
        m, c = case["m"], case["c"]
        x = normal(m, c) * 3 + 1
        gamma = normal(c) if case["scale"] else None
        beta = normal(c) if case["center"] else None
        mean, var = normal(c), np.abs(normal(c)) + 0.1
        args = (x, gamma, beta, mean, var, 1e-3, case["training"], case.get("relu", False))
        ref = _on(kernels, "numpy", lambda: kernels.batchnorm_forward(*args))
        got = _on(kernels, "c", lambda: kernels.batchnorm_forward(*args))
        problems += [_compare(k, g, r, dtype) for k, g, r in zip(("y", "mean", "var"), got[:3], ref[:3])]
        if case["training"]:
            dy = normal(m, c)
            if case.get("relu"):   # as for the fused convolution: no gradient where y is ~0
                scale = max(float(np.max(np.abs(ref[0]))), 1.0)
                dy[np.abs(ref[0]) <= 4 * TOLERANCE[dtype] * scale] = 0
            grads_ref = _on(kernels, "numpy", lambda: kernels.batchnorm_backward(dy, ref[3], case["need_dx"]))
            grads = _on(kernels, "c", lambda: kernels.batchnorm_backward(dy, got[3], case["need_dx"]))
            problems += [_compare(k, g, r, dtype) for k, g, r in zip(("dx", "dgamma", "dbeta"), grads, grads_ref)]
            if case.get("team_cap"):   # the sums' parts follow the laid-out threads, not the team
                c_engine.set_load_cap(None)
                full = _on(kernels, "c", lambda: kernels.batchnorm_forward(*args))
                full_grads = _on(kernels, "c", lambda: kernels.batchnorm_backward(dy, full[3], case["need_dx"]))
                c_engine.set_load_cap(case["team_cap"])
                for name, a, b in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"),
                                      tuple(got[:3]) + tuple(grads), tuple(full[:3]) + tuple(full_grads)):
                    if (a is None) != (b is None) or (a is not None and a.tobytes() != b.tobytes()):
                        problems.append(f"{name}: a capped team changed the bits")
        branches = ["batchnorm training" if case["training"] else "batchnorm inference"]
        branches += ["batchnorm fused relu"] if case.get("relu") else []
        if case["training"] and bn_sum_parts(m, c, laid_out) > 1:
            branches.append("batchnorm sums in parts")
    elif case["op"] == "relu":
        x, dy = normal(case["size"]), normal(case["size"])
        if case["special"]:   # NaN, infinities and signed zeros at random places of x and dy
            values = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=dtype)
            for a in (x, dy):
                at = rng.integers(0, a.size, size=max(1, a.size // 10))
                a[at] = values[rng.integers(0, len(values), size=len(at))]
        y_ref = _on(kernels, "numpy", lambda: kernels.relu_forward(x))
        y = _on(kernels, "c", lambda: kernels.relu_forward(x))
        if y.tobytes() != y_ref.tobytes():
            problems.append("y: ReLU outputs differ in their bits")
        with np.errstate(invalid="ignore"):   # inf * 0 is NaN on both engines
            dx_ref = _on(kernels, "numpy", lambda: kernels.relu_backward(dy, y_ref))
            dx = _on(kernels, "c", lambda: kernels.relu_backward(dy, y))
        if dx.tobytes() != dx_ref.tobytes():
            problems.append("dx: ReLU gradients differ in their bits")
        branches = ["relu"] + (["relu on threads"] if case["size"] >= 2**17 and effective > 1 else [])
    elif case["op"] == "dropout":
        x, dy = normal(case["size"]), normal(case["size"])
        args = (x, case["rate"], case["key"])
        y_ref, cache_ref = _on(kernels, "numpy", lambda: kernels.dropout_forward(*args))
        y, cache = _on(kernels, "c", lambda: kernels.dropout_forward(*args))
        if y.tobytes() != y_ref.tobytes():
            problems.append("y: dropout outputs differ in their bits")
        dx_ref = _on(kernels, "numpy", lambda: kernels.dropout_backward(dy, cache_ref))
        dx = _on(kernels, "c", lambda: kernels.dropout_backward(dy, cache))
        if dx.tobytes() != dx_ref.tobytes():
            problems.append("dx: dropout gradients differ in their bits")
        branches = ["dropout"]
    elif case["op"] == "plan":
        problems, branches = run_plan_case(case, normal)
    else:
        x = normal(case["n"], case["k"])
        kernel = normal(case["k"], case["f"])
        bias = normal(case["f"]) if case["bias"] else None
        y_ref, cache_ref = _on(kernels, "numpy", lambda: kernels.dense_forward(x, kernel, bias, case["relu"]))
        y, cache = _on(kernels, "c", lambda: kernels.dense_forward(x, kernel, bias, case["relu"]))
        problems.append(_compare("y", y, y_ref, dtype))
        dy = normal(*y_ref.shape)
        if case["relu"]:
            scale = max(float(np.max(np.abs(y_ref))), 1.0)
            dy[np.abs(y_ref) <= 4 * TOLERANCE[dtype] * scale] = 0
        grads_ref = _on(kernels, "numpy", lambda: kernels.dense_backward(dy, cache_ref, case["need_dx"]))
        grads = _on(kernels, "c", lambda: kernels.dense_backward(dy, cache, case["need_dx"]))
        problems += [_compare(k, g, r, dtype) for k, g, r in zip(("dx", "dkernel", "dbias"), grads, grads_ref)]
        branches = ["dense"] + (["dense forward, rows split between threads"]
                                if dense_rows_split(case, effective) else [])
    if case.get("team_cap") and effective < case["threads"]:
        branches = branches + ["team below the threads laid out"]
    return [p for p in problems if p], branches


def run_plan_case(case, normal):
    """Two epochs of fit through the training plan and through the layers one by one: every
    weight, optimizer state and logged number bit for bit, and the plan must have run."""
    import numpy as np
    import minicnn
    from minicnn import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, ReLU, Sequential
    from minicnn.training import training_plan

    def layers():
        made = []
        for spec in case["layers"]:
            first = {} if made else {"input_shape": tuple(case["input_shape"]), "dtype": case["dtype"]}
            if spec[0] == "conv":
                _, f, kh, kw, sh, sw, padding, relu, bias = spec
                made.append(Conv2D(f, (kh, kw), strides=(sh, sw), padding=padding, use_bias=bias,
                                   activation="relu" if relu else None, **first))
            elif spec[0] == "pool":
                _, ph, pw, sh, sw, padding = spec
                made.append(MaxPooling2D((ph, pw), strides=(sh, sw), padding=padding, **first))
            elif spec[0] == "flatten":
                made.append(Flatten(**first))
            elif spec[0] == "relu":
                made.append(ReLU(**first))
            elif spec[0] == "dropout":
                made.append(Dropout(spec[1], seed=spec[2], **first))
            else:
                _, units, activation, bias = spec
                made.append(Dense(units, activation=activation, use_bias=bias, **first))
        return made

    optimizers = {"adam": lambda: minicnn.optimizers.Adam(0.01), "sgd": lambda: minicnn.optimizers.SGD(0.05),
                  "momentum": lambda: minicnn.optimizers.SGD(0.05, momentum=0.9),
                  "nesterov": lambda: minicnn.optimizers.SGD(0.05, momentum=0.8, nesterov=True)}
    x = normal(case["n"], *case["input_shape"])
    y = np.random.default_rng(case["seed"]).integers(0, case["classes"], case["n"])
    counts = []
    close, step = training_plan.FitPlans.close, training_plan.FitPlans.step

    def counting_close(self):
        counts.append(self.planned_steps)
        close(self)

    def train(planned):
        training_plan.FitPlans.step = step if planned else (lambda self, *args: None)
        training_plan.FitPlans.close = counting_close
        try:
            minicnn.set_seed(case["seed"])
            model = Sequential(layers())
            loss = minicnn.losses.SparseCategoricalCrossentropy(from_logits=case["from_logits"])
            model.compile(optimizer=optimizers[case["optimizer"]](), loss=loss, metrics=["accuracy"])
            history = model.fit(x, y, batch_size=case["batch"], epochs=2, verbose=0)
        finally:
            training_plan.FitPlans.step, training_plan.FitPlans.close = step, close
        state = model.optimizer.get_state()
        return ([w.tobytes() for w in model.get_weights()], [a.tobytes() for a in state["slots"].values()],
                state["iterations"], repr(history.history))

    planned, general = train(True), train(False)
    problems = [f"plan: {name} differ from the general path's" for name, a, b in
                zip(("weights", "optimizer state", "steps", "history"), planned, general) if a != b]
    if counts[0] == 0:
        problems.append("plan: fit never ran its training plan")
    kinds = [spec[0] for spec in case["layers"]]
    branches = ["training plan"] + (["training plan, batch 1"] if case["batch"] == 1 else [])
    for i, kind in enumerate(kinds):
        if kind == "pool" and (i == 0 or kinds[i - 1] != "conv" or case["layers"][i][3] < case["layers"][i][1]
                               or case["layers"][i][5] == "same"):
            branches.append("training plan, a pool not fused" if i else
                            "training plan, a pool before the first weights")
    if "conv" not in kinds:   # the dense layer's backward reads the step's input itself
        branches.append("training plan, dense layer first")
    if "relu" in kinds:
        branches.append("training plan, a ReLU layer")
    if any(spec[0] == "dropout" and spec[1] > 0 for spec in case["layers"]):
        branches.append("training plan, dropout")
    return problems, sorted(set(branches))


def child_main(cases_path, first, stop, progress_path):
    """Run cases[first:stop] and log `start i` before and `done i {json}` after each one."""
    from minicnn.kernels import c_engine  # noqa: F401  (fails loudly if the C engine is missing)
    with open(cases_path) as f:
        cases = json.load(f)
    levels = set(c_engine.simd_levels())
    with open(progress_path, "a", buffering=1) as log:
        log.write(f"engine {json.dumps(c_engine.engine_info())}\n")
        for case in cases[first:stop]:
            log.write(f"start {case['index']}\n")
            log.flush()
            os.fsync(log.fileno())
            if case["simd"] not in levels:
                case = dict(case, simd=c_engine.simd_levels()[0])
            problems, branches = run_case(case)
            log.write(f"done {case['index']} {json.dumps({'problems': problems, 'branches': branches})}\n")


# ---- the parent ----

def run_cases(cases, timeout, batch=200, python=sys.executable, echo=None):
    """Run every case in child processes. Returns {index: result} where a result is
    {'problems': [...], 'branches': [...]} or {'crash': message}."""
    import minicnn

    # the children test the minicnn this process imported (see MINICNN_HOME above)
    home = os.path.dirname(os.path.dirname(os.path.abspath(minicnn.__file__)))
    child_env = {**os.environ, "MINICNN_HOME": home}
    results, engines = {}, set()
    with tempfile.TemporaryDirectory(prefix="minicnn-fuzz-") as tmp:
        cases_path = os.path.join(tmp, "cases.json")
        with open(cases_path, "w") as f:
            json.dump(cases, f)
        position = 0
        while position < len(cases):
            progress = os.path.join(tmp, f"progress-{position}.log")
            stop = min(position + batch, len(cases))
            child = [python, os.path.abspath(__file__), "--child", cases_path, str(position), str(stop),
                     progress]
            try:
                proc = subprocess.run(child, capture_output=True, text=True, timeout=timeout, cwd=home,
                                      env=child_env)
                outcome, tail = proc.returncode, (proc.stderr or "")[-2000:]
            except subprocess.TimeoutExpired as expired:
                outcome = "timeout"
                tail = (expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes)
                        else expired.stderr or "")[-2000:]
            started = None
            if os.path.exists(progress):
                with open(progress) as f:
                    for line in f:
                        word, _, rest = line.rstrip("\n").partition(" ")
                        index, _, payload = rest.partition(" ")
                        if word == "engine":
                            engines.add(rest)
                        elif word == "start":
                            started = int(index)
                        elif word == "done" and payload:
                            results[int(index)] = json.loads(payload)
                            started = None
            if outcome == 0 and started is None:
                position = stop
                continue
            if started is None:
                # the child died before starting a case (import failure) or after the last one
                if outcome != 0 and not any(i in results for i in range(position, stop)):
                    raise RuntimeError(f"fuzz child failed before any case ({outcome}):\n{tail}")
                position = max([position] + [i + 1 for i in range(position, stop) if i in results])
                continue
            why = "timed out" if outcome == "timeout" else f"exit status {outcome}"
            results[started] = {"crash": f"{why}\n{tail}"}
            if echo:
                echo(f"CRASH {describe(cases[started])}: {why}")
            position = started + 1
    if echo:
        for engine in sorted(engines):
            info = json.loads(engine)
            echo(f"C engine: {info['compiler_flags']} (openmp {info['openmp']}, {info['threads']} threads by default here; the cases ask for their own)")
    return results


def summarize(cases, results, seconds):
    counts = collections.Counter()
    crashes, mismatches = [], []
    for case in cases:
        result = results.get(case["index"])
        if result is None:
            crashes.append((case, "never ran"))
        elif "crash" in result:
            crashes.append((case, result["crash"]))
        else:
            counts.update(result["branches"])
            if result["problems"]:
                mismatches.append((case, result["problems"]))
    return counts, crashes, mismatches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="number of random cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case generator")
    parser.add_argument("--threads", default="1,2,3,4", help="thread counts to draw from")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child batch")
    parser.add_argument("--batch", type=int, default=200, help="cases per child process")
    parser.add_argument("--require-coverage", action="store_true",
                        help="also fail when a required branch was never reached")
    parser.add_argument("--child", nargs=4, metavar=("CASES", "FIRST", "STOP", "PROGRESS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child[0], int(args.child[1]), int(args.child[2]), args.child[3])
        return 0

    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        parser.error(f"--threads must be positive integers, received {args.threads!r}")
    start = time.perf_counter()
    cases = make_cases(args.cases, args.seed, threads, SIMD_LEVELS)
    results = run_cases(cases, args.timeout, args.batch, echo=print)
    seconds = time.perf_counter() - start
    counts, crashes, mismatches = summarize(cases, results, seconds)

    print(f"fuzz: {len(cases)} cases (seed {args.seed}, threads {args.threads}) in {seconds:.1f} s")
    print(f"crashes: {len(crashes)}  mismatches: {len(mismatches)}")
    print("branch coverage:")
    for name in sorted(set(counts) | set(REQUIRED_BRANCHES)):
        print(f"  {counts.get(name, 0):6d}  {name}")
    for case, why in crashes:
        print(f"CRASH {describe(case)}\n  {why.strip()}")
    for case, problems in mismatches:
        print(f"MISMATCH {describe(case)}\n  " + "\n  ".join(problems))
    missing = [name for name in REQUIRED_BRANCHES if counts.get(name, 0) == 0]
    if missing and args.require_coverage:
        print("never reached: " + ", ".join(missing))
    failed = crashes or mismatches or (missing and args.require_coverage)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
