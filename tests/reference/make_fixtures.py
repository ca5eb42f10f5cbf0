"""Make the PyTorch reference fixtures for minicnn's layers (a tool; torch is never a dependency).

Usage, from the repository root, with a Python that has torch (the project keeps one in the
git-ignored ``.venv-torch``: ``python3 -m venv .venv-torch && .venv-torch/bin/pip install
torch==2.13.0 numpy``):

    .venv-torch/bin/python tests/reference/make_fixtures.py           # write tests/reference/*.npz
    .venv-torch/bin/python tests/reference/make_fixtures.py --check   # verify, write nothing

Writing first checks every case against the naive float64 loops below (an independent ground
truth: it confirms the NHWC conversions and the "same" padding rule), then writes the files.
Identical content gives byte-identical files. ``--check`` loads the committed files and checks
them three ways: against the naive loops, against torch recomputed live from the stored inputs,
and against this file's grid (so a grid edited without regenerating is caught).

Conventions (minicnn's, i.e. Keras'): images NHWC; Conv2D kernel (KH, KW, C_in, F); Dense kernel
(in, units). Torch works in NCHW with weights (F, C_in, KH, KW): the conversions are permutes of
leaf tensors, so torch's autograd returns the gradients directly in minicnn's layouts.

Padding "same" follows TensorFlow for any stride: out = ceil(n / s),
pad_total = max((out - 1) * s + k - n, 0), pad_before = pad_total // 2, the rest after. Torch's
own padding="same" takes stride 1 only, so the input is padded explicitly (zeros for Conv2D,
-inf for MaxPooling2D) and then convolved or pooled with no padding. "valid" pads nothing:
out = floor((n - k) / s) + 1.
"""
import argparse
import json
import math
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

try:
    from . import fixtures
except ImportError:
    if __package__:
        raise
    import fixtures  # run as a script: this folder is sys.path[0]

DTYPE = torch.float64


# ----------------------------------------------------------------------------- the grid
def _conv(name, batch, hwc, filters, kernel_size, strides, padding, use_bias=True):
    return {"name": name, "batch": batch, "input_shape": list(hwc), "filters": filters,
            "kernel_size": list(kernel_size), "strides": list(strides), "padding": padding,
            "use_bias": use_bias}


def _conv_grid():
    cases = []
    sizes = [(7, 5), (6, 7), (5, 5), (8, 6), (5, 8)]
    channels = [1, 3, 4]
    index = 0
    for kernel_size in [(3, 2), (2, 3), (3, 3)]:
        for strides in [(1, 1), (2, 2), (2, 1)]:
            for padding in ["valid", "same"]:
                h, w = sizes[index % 5]
                c = channels[index % 3]
                batch = (1, 3)[(index // 2) % 2]
                filters = (5, 1)[(index // 4) % 2] if index % 3 else 5
                name = "k%dx%d_s%dx%d_%s_n%d_%dx%dx%d_f%d" % (
                    kernel_size + strides + (padding, batch, h, w, c, filters))
                cases.append(_conv(name, batch, (h, w, c), filters, kernel_size, strides, padding))
                index += 1
    cases += [
        _conv("kernel_is_input_valid_1x1_out", 3, (5, 4, 3), 5, (5, 4), (1, 1), "valid"),
        _conv("kernel_is_input_same", 1, (5, 4, 2), 3, (5, 4), (1, 1), "same"),
        _conv("kernel_larger_than_input_same", 1, (3, 2, 2), 2, (5, 4), (1, 1), "same"),
        _conv("k1x1_s1_valid", 3, (4, 5, 4), 5, (1, 1), (1, 1), "valid"),
        _conv("k1x1_s2_same_odd", 1, (7, 5, 3), 5, (1, 1), (2, 2), "same"),
        _conv("k1x1_s2_valid", 3, (6, 5, 2), 2, (1, 1), (2, 2), "valid"),
        _conv("k2x2_s1_same_pad_after_only", 3, (4, 4, 1), 5, (2, 2), (1, 1), "same"),
        _conv("k3x3_s2_same_even_pad_after_only", 3, (6, 6, 4), 5, (3, 3), (2, 2), "same"),
        _conv("stride_over_kernel_k2_s3_valid", 3, (8, 7, 3), 4, (2, 2), (3, 3), "valid"),
        _conv("k3x3_s3_same", 1, (8, 7, 2), 3, (3, 3), (3, 3), "same"),
        _conv("k3x3_s1x2_same", 3, (6, 7, 3), 4, (3, 3), (1, 2), "same"),
        _conv("k2x3_s1x2_valid", 1, (5, 8, 1), 5, (2, 3), (1, 2), "valid"),
        _conv("k1x3_s1_same", 3, (5, 6, 3), 2, (1, 3), (1, 1), "same"),
        _conv("k3x1_s2x1_valid", 1, (7, 4, 2), 3, (3, 1), (2, 1), "valid"),
        _conv("no_bias_k3x3_s2_same", 3, (7, 5, 3), 5, (3, 3), (2, 2), "same", use_bias=False),
        _conv("no_bias_k2x3_s1_valid", 1, (5, 5, 1), 1, (2, 3), (1, 1), "valid", use_bias=False),
        _conv("tiny_1x1x1", 1, (1, 1, 1), 1, (1, 1), (1, 1), "valid"),
    ]
    return cases


def _pool(name, batch, hwc, pool_size, strides, padding, values="distinct"):
    return {"name": name, "batch": batch, "input_shape": list(hwc), "pool_size": list(pool_size),
            "strides": list(strides), "padding": padding, "values": values}


def _pool_grid():
    return [
        _pool("p2x2_s2_valid_even", 1, (6, 6, 2), (2, 2), (2, 2), "valid"),
        _pool("p2x2_s2_valid_odd_floor", 3, (7, 5, 1), (2, 2), (2, 2), "valid"),
        _pool("p3x3_s2_valid", 1, (7, 7, 3), (3, 3), (2, 2), "valid"),
        _pool("p3x3_s1_valid_overlap", 3, (5, 6, 2), (3, 3), (1, 1), "valid"),
        _pool("p2x3_s1x2_valid", 1, (6, 7, 2), (2, 3), (1, 2), "valid"),
        _pool("p3x3_s3_valid_leftover", 1, (8, 7, 2), (3, 3), (3, 3), "valid"),
        _pool("p2x2_s1_valid", 1, (4, 5, 1), (2, 2), (1, 1), "valid"),
        _pool("pool_is_input_valid", 3, (4, 3, 2), (4, 3), (1, 1), "valid"),
        _pool("p2x2_s2_same_odd_ceil", 1, (7, 5, 3), (2, 2), (2, 2), "same"),
        _pool("p2x2_s2_same_even_no_pad", 1, (6, 4, 1), (2, 2), (2, 2), "same"),
        _pool("p3x3_s2_same_even", 3, (6, 6, 1), (3, 3), (2, 2), "same"),
        _pool("p3x3_s1_same", 1, (5, 5, 2), (3, 3), (1, 1), "same"),
        _pool("p2x3_s1x2_same", 3, (5, 8, 1), (2, 3), (1, 2), "same"),
        _pool("p3x2_s2x1_same", 1, (7, 6, 2), (3, 2), (2, 1), "same"),
        # Every value negative: padding with zeros instead of -inf would change the output.
        _pool("p3x3_s2_same_all_negative", 1, (5, 7, 2), (3, 3), (2, 2), "same",
              values="negative"),
    ]


def _pool_ties_grid():
    # Small integers: many windows hold their maximum more than once.
    return [
        _pool("ties_p3x3_s1_valid", 3, (5, 6, 2), (3, 3), (1, 1), "valid", values="ints3"),
        _pool("ties_p2x2_s2_valid", 1, (6, 6, 1), (2, 2), (2, 2), "valid", values="ints2"),
        _pool("ties_p3x3_s2_same", 1, (7, 5, 2), (3, 3), (2, 2), "same", values="ints2"),
        _pool("ties_p2x3_s1x2_valid_all_equal", 1, (4, 7, 1), (2, 3), (1, 2), "valid",
              values="ones"),
    ]


def _dense_grid():
    def dense(name, batch, in_features, units, use_bias=True):
        return {"name": name, "batch": batch, "in_features": in_features, "units": units,
                "use_bias": use_bias}
    return [
        dense("n1_in1_u1", 1, 1, 1),
        dense("n3_in4_u5", 3, 4, 5),
        dense("n2_in7_u3", 2, 7, 3),
        dense("n5_in12_u10", 5, 12, 10),
        dense("n1_in10_u4", 1, 10, 4),
        dense("no_bias_n4_in6_u2", 4, 6, 2, use_bias=False),
    ]


def _softmax_grid():
    def softmax(name, batch, classes, scale=1.0, offset=0.0):
        return {"name": name, "batch": batch, "classes": classes, "scale": scale,
                "offset": offset}
    return [
        softmax("n1_k1", 1, 1),
        softmax("n1_k10", 1, 10),
        softmax("n3_k10", 3, 10, scale=2.0),
        softmax("n4_k5_wide", 4, 5, scale=30.0),
        # exp(1000) overflows float64: only a max-subtracted softmax gets these right.
        softmax("n2_k3_offset_plus_1000", 2, 3, scale=3.0, offset=1000.0),
        softmax("n3_k4_offset_minus_1000", 3, 4, scale=3.0, offset=-1000.0),
    ]


def _crossentropy_grid():
    def xent(name, batch, classes, scale=1.0, offset=0.0, label_logit=None):
        return {"name": name, "batch": batch, "classes": classes, "scale": scale,
                "offset": offset, "label_logit": label_logit}
    return [
        xent("n1_k10", 1, 10),
        xent("n4_k10", 4, 10, scale=2.0),
        xent("n3_k3", 3, 3),
        xent("n6_k2", 6, 2, scale=3.0),
        xent("n5_k7_offset_minus_800", 5, 7, scale=20.0, offset=-800.0),
        # The true class sits 100 below the rest: p(label) ~ 1e-44, loss ~ 100, no -inf.
        xent("n2_k4_label_far_below", 2, 4, label_logit=-100.0),
    ]


def _model_grid():
    # conv(3x3 same)-relu-pool(2)-conv(3x3 same)-relu-pool(2)-flatten-dense-relu-dense: a
    # miniature of the seed model. Non-square images and C > 1 after the last pool make a
    # Flatten in the wrong order (C, H, W) fail.
    def model(name, batch, hwc, conv1, conv2, dense1, classes):
        return {"name": name, "batch": batch, "input_shape": list(hwc), "conv1_filters": conv1,
                "conv2_filters": conv2, "dense1_units": dense1, "classes": classes}
    return [
        model("n3_8x6x2_seedlike", 3, (8, 6, 2), 4, 5, 7, 4),
        model("n1_7x9x1_seedlike", 1, (7, 9, 1), 3, 2, 6, 5),
    ]


def _avgpool_grid():
    return [
        _pool("p2x2_s2_valid_even", 1, (6, 6, 2), (2, 2), (2, 2), "valid"),
        _pool("p3x3_s2_valid_odd", 3, (7, 5, 3), (3, 3), (2, 2), "valid"),
        _pool("p2x3_s1x2_valid", 1, (6, 7, 2), (2, 3), (1, 2), "valid"),
        _pool("p3x3_s3_valid_leftover", 2, (8, 7, 1), (3, 3), (3, 3), "valid"),
        _pool("p2x2_s2_same_odd", 1, (7, 5, 3), (2, 2), (2, 2), "same"),
        _pool("p3x3_s1_same", 3, (5, 5, 2), (3, 3), (1, 1), "same"),
        _pool("p3x3_s2_same_even_pad_after", 1, (6, 6, 1), (3, 3), (2, 2), "same"),
        _pool("p2x3_s1x2_same", 2, (5, 8, 2), (2, 3), (1, 2), "same"),
        _pool("p3x2_s3x1_same", 1, (7, 6, 2), (3, 2), (3, 1), "same"),
        # A window larger than the image: every border window averages fewer cells.
        _pool("p4x4_s1_same_window_over_image", 1, (3, 3, 2), (4, 4), (1, 1), "same"),
    ]


def _global_avgpool_grid():
    def gap(name, batch, hwc):
        return {"name": name, "batch": batch, "input_shape": list(hwc)}
    return [gap("n1_1x1x1", 1, (1, 1, 1)), gap("n3_5x7x4", 3, (5, 7, 4)), gap("n2_6x3x1", 2, (6, 3, 1))]


def _bn(name, batch, shape, axis, momentum=0.99, epsilon=1e-3):
    return {"name": name, "batch": batch, "input_shape": list(shape), "axis": axis,
            "momentum": momentum, "epsilon": epsilon}


def _batchnorm_grid():
    return [
        _bn("dense_n8_u5", 8, (5,), -1),
        _bn("dense_n2_u3_momentum_0_5", 2, (3,), 1, momentum=0.5),
        _bn("nhwc_n3_4x5x6", 3, (4, 5, 6), -1, momentum=0.9),
        _bn("nhwc_n1_3x3x2_eps_1e-5", 1, (3, 3, 2), 3, epsilon=1e-5),
        _bn("images_axis1_n2_4x3x2", 2, (4, 3, 2), 1, momentum=0.8),
    ]


def _dropout_grid():
    return [{"name": "rate_%g" % rate, "rate": rate, "shape": [40, 50]} for rate in (0.1, 0.3, 0.5, 0.75)]


GRID = {
    "conv2d": _conv_grid,
    "maxpool2d": _pool_grid,
    "maxpool2d_ties": _pool_ties_grid,
    "dense": _dense_grid,
    "softmax": _softmax_grid,
    "softmax_crossentropy": _crossentropy_grid,
    "model": _model_grid,
    "avgpool2d": _avgpool_grid,
    "global_avgpool2d": _global_avgpool_grid,
    "batchnorm_training": _batchnorm_grid,
    "batchnorm_inference": _batchnorm_grid,
    "dropout": _dropout_grid,
}


# ----------------------------------------------------------------------------- seeded inputs
def _rng(kind, params):
    # Seeded by the case's name, so adding a case leaves every other case unchanged.
    return np.random.default_rng([20240517, zlib.crc32(("%s/%s" % (kind, params["name"]))
                                                       .encode())])


def _output_hw(params, window):
    (h, w, _), (sh, sw) = params["input_shape"], params["strides"]
    if params["padding"] == "same":
        return math.ceil(h / sh), math.ceil(w / sw)
    return (h - window[0]) // sh + 1, (w - window[1]) // sw + 1


def _conv_inputs(kind, params):
    rng = _rng(kind, params)
    n, (h, w, c), f = params["batch"], params["input_shape"], params["filters"]
    kh, kw = params["kernel_size"]
    oh, ow = _output_hw(params, (kh, kw))
    inputs = {"x": rng.standard_normal((n, h, w, c)),
              "kernel": rng.standard_normal((kh, kw, c, f)) / math.sqrt(kh * kw * c)}
    if params["use_bias"]:
        inputs["bias"] = 0.5 * rng.standard_normal(f)
    inputs["dy"] = rng.standard_normal((n, oh, ow, f))
    return inputs


def _pool_inputs(kind, params):
    rng = _rng(kind, params)
    n, (h, w, c) = params["batch"], params["input_shape"]
    size = n * h * w * c
    values = params["values"]
    if values in ("distinct", "negative"):
        # A permutation of distinct values (no ties), spread over [-1.5, 1.5) or all below 0.
        x = (rng.permutation(size) - size / 2.0) * (3.0 / size) + 0.01 * rng.random()
        if values == "negative":
            x = x - 2.0
    elif values in ("ints2", "ints3"):
        x = rng.integers(0, int(values[-1]), size).astype(np.float64)
    elif values == "ones":
        x = np.ones(size)
    else:
        raise ValueError(values)
    oh, ow = _output_hw(params, params["pool_size"])
    return {"x": x.reshape(n, h, w, c), "dy": rng.standard_normal((n, oh, ow, c))}


def _dense_inputs(kind, params):
    rng = _rng(kind, params)
    n, fan_in, units = params["batch"], params["in_features"], params["units"]
    inputs = {"x": rng.standard_normal((n, fan_in)),
              "kernel": rng.standard_normal((fan_in, units)) / math.sqrt(fan_in)}
    if params["use_bias"]:
        inputs["bias"] = 0.5 * rng.standard_normal(units)
    inputs["dy"] = rng.standard_normal((n, units))
    return inputs


def _softmax_inputs(kind, params):
    rng = _rng(kind, params)
    shape = (params["batch"], params["classes"])
    return {"x": params["scale"] * rng.standard_normal(shape) + params["offset"],
            "dy": rng.standard_normal(shape)}


def _crossentropy_inputs(kind, params):
    rng = _rng(kind, params)
    n, k = params["batch"], params["classes"]
    logits = params["scale"] * rng.standard_normal((n, k)) + params["offset"]
    labels = rng.integers(0, k, n).astype(np.int64)
    if params["label_logit"] is not None:
        logits[np.arange(n), labels] = params["label_logit"]
    return {"logits": logits, "labels": labels}


def _model_inputs(kind, params):
    rng = _rng(kind, params)
    n, (h, w, c) = params["batch"], params["input_shape"]
    f1, f2 = params["conv1_filters"], params["conv2_filters"]
    flat = (h // 2 // 2) * (w // 2 // 2) * f2
    units, classes = params["dense1_units"], params["classes"]

    def weight(*shape):
        return rng.standard_normal(shape) / math.sqrt(np.prod(shape[:-1]))

    return {
        "x": rng.standard_normal((n, h, w, c)),
        "labels": rng.integers(0, classes, n).astype(np.int64),
        "conv1.kernel": weight(3, 3, c, f1), "conv1.bias": 0.1 * rng.standard_normal(f1),
        "conv2.kernel": weight(3, 3, f1, f2), "conv2.bias": 0.1 * rng.standard_normal(f2),
        "dense1.kernel": weight(flat, units), "dense1.bias": 0.1 * rng.standard_normal(units),
        "dense2.kernel": weight(units, classes),
        "dense2.bias": 0.1 * rng.standard_normal(classes),
    }


def _global_avgpool_inputs(kind, params):
    rng = _rng(kind, params)
    n, (h, w, c) = params["batch"], params["input_shape"]
    return {"x": rng.standard_normal((n, h, w, c)), "dy": rng.standard_normal((n, c))}


def _batchnorm_inputs(kind, params):
    rng = _rng(kind, params)
    shape = (params["batch"],) + tuple(params["input_shape"])
    features = shape[params["axis"]]
    inputs = {"x": 3.0 * rng.standard_normal(shape) + 0.5,
              "gamma": 1.0 + 0.5 * rng.standard_normal(features), "beta": rng.standard_normal(features),
              "moving_mean": rng.standard_normal(features),
              "moving_variance": 0.5 + rng.random(features)}
    if kind == "batchnorm_training":
        inputs["dy"] = rng.standard_normal(shape)
    return inputs


def _dropout_inputs(kind, params):
    return {"x": 1.0 + _rng(kind, params).random(tuple(params["shape"]))}


MAKE_INPUTS = {
    "conv2d": _conv_inputs,
    "maxpool2d": _pool_inputs,
    "maxpool2d_ties": _pool_inputs,
    "dense": _dense_inputs,
    "softmax": _softmax_inputs,
    "softmax_crossentropy": _crossentropy_inputs,
    "model": _model_inputs,
    "avgpool2d": _pool_inputs,
    "global_avgpool2d": _global_avgpool_inputs,
    "batchnorm_training": _batchnorm_inputs,
    "batchnorm_inference": _batchnorm_inputs,
    "dropout": _dropout_inputs,
}


# ----------------------------------------------------------------------------- torch, in NHWC
def same_padding(size, window, stride):
    """TensorFlow's "same": (pad_before, pad_after) for one spatial axis, any stride."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _pad_nchw(x, window, strides, padding, value):
    if padding == "valid":
        return x
    if padding != "same":
        raise ValueError("padding must be 'valid' or 'same', got %r" % (padding,))
    top, bottom = same_padding(x.shape[2], window[0], strides[0])
    left, right = same_padding(x.shape[3], window[1], strides[1])
    return F.pad(x, (left, right, top, bottom), mode="constant", value=value)


def torch_conv2d_nhwc(x, kernel, bias, strides, padding):
    """x (N, H, W, C), kernel (KH, KW, C, F), bias (F,) or None -> y (N, OH, OW, F)."""
    # .contiguous(): torch 2.13's float64 CPU convolution (slow_conv2d) rejects the strided
    # gradient buffers that permuted views would give it.
    x_nchw = _pad_nchw(x.permute(0, 3, 1, 2).contiguous(), kernel.shape[:2], strides, padding,
                       0.0)
    weight = kernel.permute(3, 2, 0, 1).contiguous()
    y = F.conv2d(x_nchw, weight, bias, stride=tuple(strides))
    return y.permute(0, 2, 3, 1)


def torch_maxpool2d_nhwc(x, pool_size, strides, padding):
    """x (N, H, W, C) -> y (N, OH, OW, C); "same" pads with -inf."""
    x_nchw = _pad_nchw(x.permute(0, 3, 1, 2), pool_size, strides, padding, -math.inf)
    y = F.max_pool2d(x_nchw, kernel_size=tuple(pool_size), stride=tuple(strides))
    return y.permute(0, 2, 3, 1)


def _leaf(array):
    return torch.tensor(array, dtype=DTYPE, requires_grad=True)


def _grads(output, leaves, upstream):
    grads = torch.autograd.grad(output, leaves, grad_outputs=torch.tensor(upstream, dtype=DTYPE))
    return [g.detach().numpy().copy() for g in grads]


def _layer_with_params(params, inputs, forward):
    """Shared by Conv2D and Dense: y = forward(x, kernel, bias); grads for x, kernel, bias."""
    x, kernel = _leaf(inputs["x"]), _leaf(inputs["kernel"])
    leaves = [x, kernel]
    bias = None
    if params["use_bias"]:
        bias = _leaf(inputs["bias"])
        leaves.append(bias)
    y = forward(x, kernel, bias)
    grads = _grads(y, leaves, inputs["dy"])
    out = {"y": y.detach().numpy().copy(), "dx": grads[0], "dkernel": grads[1]}
    if bias is not None:
        out["dbias"] = grads[2]
    return out


def compute_conv2d(params, inputs):
    return _layer_with_params(params, inputs, lambda x, k, b: torch_conv2d_nhwc(
        x, k, b, params["strides"], params["padding"]))


def compute_dense(params, inputs):
    return _layer_with_params(params, inputs, lambda x, k, b: x @ k if b is None else x @ k + b)


def compute_maxpool2d(params, inputs):
    x = _leaf(inputs["x"])
    y = torch_maxpool2d_nhwc(x, params["pool_size"], params["strides"], params["padding"])
    (dx,) = _grads(y, [x], inputs["dy"])
    return {"y": y.detach().numpy().copy(), "dx": dx}


def compute_softmax(params, inputs):
    x = _leaf(inputs["x"])
    y = torch.softmax(x, dim=-1)
    (dx,) = _grads(y, [x], inputs["dy"])
    return {"y": y.detach().numpy().copy(), "dx": dx}


def compute_softmax_crossentropy(params, inputs):
    logits = _leaf(inputs["logits"])
    loss = F.cross_entropy(logits, torch.tensor(inputs["labels"]), reduction="mean")
    (dlogits,) = _grads(loss, [logits], np.array(1.0))
    return {"probs": torch.softmax(logits, dim=-1).detach().numpy().copy(),
            "loss": np.array(loss.item()), "dlogits": dlogits}


MODEL_PARAMS = ["conv1.kernel", "conv1.bias", "conv2.kernel", "conv2.bias",
                "dense1.kernel", "dense1.bias", "dense2.kernel", "dense2.bias"]


def compute_model(params, inputs):
    x = _leaf(inputs["x"])
    p = {name: _leaf(inputs[name]) for name in MODEL_PARAMS}
    h = torch.relu(torch_conv2d_nhwc(x, p["conv1.kernel"], p["conv1.bias"], (1, 1), "same"))
    h = torch_maxpool2d_nhwc(h, (2, 2), (2, 2), "valid")
    h = torch.relu(torch_conv2d_nhwc(h, p["conv2.kernel"], p["conv2.bias"], (1, 1), "same"))
    h = torch_maxpool2d_nhwc(h, (2, 2), (2, 2), "valid")
    h = h.reshape(h.shape[0], -1)  # h is NHWC here: row-major over (H, W, C), as Keras
    h = torch.relu(h @ p["dense1.kernel"] + p["dense1.bias"])
    logits = h @ p["dense2.kernel"] + p["dense2.bias"]
    loss = F.cross_entropy(logits, torch.tensor(inputs["labels"]), reduction="mean")
    leaves = [logits, x] + [p[name] for name in MODEL_PARAMS]
    grads = torch.autograd.grad(loss, leaves)
    out = {"logits": logits.detach().numpy().copy(), "loss": np.array(loss.item()),
           "dlogits": grads[0].numpy().copy(), "dx": grads[1].numpy().copy()}
    for name, grad in zip(MODEL_PARAMS, grads[2:]):
        layer, _, weight = name.partition(".")
        out["%s.d%s" % (layer, weight)] = grad.numpy().copy()
    return out


def torch_avgpool2d_nhwc(x, pool_size, strides, padding):
    """x (N, H, W, C) -> y (N, OH, OW, C), each window averaging only its cells INSIDE the image.

    TensorFlow's "same" padding can be asymmetric, which avg_pool2d's own padding cannot express,
    and avg_pool2d(count_include_pad=False) on an F.pad-ed input would count the pad cells as
    inside. So: window sums of the zero-padded input (divisor_override=1), divided by the window
    sums of a zero-padded map of ones, i.e. how many cells of each window are inside.
    """
    x_nchw = x.permute(0, 3, 1, 2)
    ones = torch.ones_like(x_nchw[:1, :1])
    options = dict(kernel_size=tuple(pool_size), stride=tuple(strides), divisor_override=1)
    sums = F.avg_pool2d(_pad_nchw(x_nchw, pool_size, strides, padding, 0.0), **options)
    counts = F.avg_pool2d(_pad_nchw(ones, pool_size, strides, padding, 0.0), **options)
    return (sums / counts).permute(0, 2, 3, 1)


def compute_avgpool2d(params, inputs):
    x = _leaf(inputs["x"])
    y = torch_avgpool2d_nhwc(x, params["pool_size"], params["strides"], params["padding"])
    (dx,) = _grads(y, [x], inputs["dy"])
    return {"y": y.detach().numpy().copy(), "dx": dx}


def compute_global_avgpool2d(params, inputs):
    x = _leaf(inputs["x"])
    y = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1)
    (dx,) = _grads(y, [x], inputs["dy"])
    return {"y": y.detach().numpy().copy(), "dx": dx}


def _torch_batchnorm(params, inputs, training):
    """torch's F.batch_norm with the feature axis moved to torch's channel position (1).

    Keras' momentum k is torch's 1 - k. torch's running_var takes the UNBIASED batch variance
    (divided by M - 1), Keras' moving_variance the biased one (divided by M) that both use to
    normalise. From torch's updated running_var r = k v + (1 - k) var_unbiased, Keras' value is
    k v + (1 - k) var_unbiased (M - 1) / M = k v + (r - k v) (M - 1) / M."""
    axis, k = params["axis"], params["momentum"]
    x, gamma, beta = _leaf(inputs["x"]), _leaf(inputs["gamma"]), _leaf(inputs["beta"])
    running_mean = torch.tensor(inputs["moving_mean"], dtype=DTYPE)
    running_var = torch.tensor(inputs["moving_variance"], dtype=DTYPE)
    moved = x.movedim(axis, 1)
    y = F.batch_norm(moved, running_mean, running_var, gamma, beta, training=training,
                     momentum=1.0 - k, eps=params["epsilon"]).movedim(1, axis)
    out = {"y": y.detach().numpy().copy()}
    if training:
        m = x.numel() // x.shape[axis]
        v = inputs["moving_variance"]
        out["new_moving_mean"] = running_mean.numpy().copy()
        out["new_moving_variance"] = k * v + (running_var.numpy() - k * v) * (m - 1) / m
        out["dx"], out["dgamma"], out["dbeta"] = _grads(y, [x, gamma, beta], inputs["dy"])
    return out


def compute_batchnorm_training(params, inputs):
    return _torch_batchnorm(params, inputs, True)


def compute_batchnorm_inference(params, inputs):
    return _torch_batchnorm(params, inputs, False)


def compute_dropout(params, inputs):
    torch.manual_seed(zlib.crc32(params["name"].encode()))
    y = F.dropout(torch.tensor(inputs["x"], dtype=DTYPE), p=params["rate"], training=True)
    return {"y": y.numpy().copy()}


COMPUTE = {
    "conv2d": compute_conv2d,
    "maxpool2d": compute_maxpool2d,
    "maxpool2d_ties": compute_maxpool2d,
    "dense": compute_dense,
    "softmax": compute_softmax,
    "softmax_crossentropy": compute_softmax_crossentropy,
    "model": compute_model,
    "avgpool2d": compute_avgpool2d,
    "global_avgpool2d": compute_global_avgpool2d,
    "batchnorm_training": compute_batchnorm_training,
    "batchnorm_inference": compute_batchnorm_inference,
    "dropout": compute_dropout,
}


def build_cases(kind):
    """Every case of ``kind`` from the grid: seeded inputs plus torch's outputs."""
    cases = []
    for params in GRID[kind]():
        inputs = MAKE_INPUTS[kind](kind, params)
        outputs = COMPUTE[kind](params, inputs)
        arrays = dict(inputs)
        arrays.update(outputs)
        cases.append({"name": params["name"], "params": params, "arrays": arrays})
    names = [c["name"] for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("duplicate case names in the %s grid" % kind)
    return cases


# ----------------------------------------------------------------------------- naive loops
# Written independently of the torch code above (own padding arithmetic, own loops), so that
# agreement confirms the layout conversions and the "same" rule rather than repeating them.
def _naive_pads(size, window, stride, padding):
    if padding == "valid":
        return 0, 0, (size - window) // stride + 1
    out = math.ceil(size / stride)
    need = (out - 1) * stride + window            # input rows the output windows span
    total = need - size if need > size else 0
    return total // 2, total - total // 2, out


def _naive_padded(x, params, window, fill):
    (sh, sw), padding = params["strides"], params["padding"]
    top, bottom, oh = _naive_pads(x.shape[1], window[0], sh, padding)
    left, right, ow = _naive_pads(x.shape[2], window[1], sw, padding)
    n, h, w, c = x.shape
    xp = np.full((n, h + top + bottom, w + left + right, c), fill)
    xp[:, top:top + h, left:left + w, :] = x
    return xp, (top, left), (oh, ow)


def naive_conv2d(params, arrays):
    x, kernel, dy = arrays["x"], arrays["kernel"], arrays["dy"]
    kh, kw, _, f = kernel.shape
    sh, sw = params["strides"]
    xp, (top, left), (oh, ow) = _naive_padded(x, params, (kh, kw), 0.0)
    y = np.zeros((x.shape[0], oh, ow, f))
    dxp, dkernel = np.zeros_like(xp), np.zeros_like(kernel)
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                window = xp[n, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
                for o in range(f):
                    y[n, i, j, o] = np.sum(window * kernel[:, :, :, o])
                    dxp[n, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += \
                        kernel[:, :, :, o] * dy[n, i, j, o]
                    dkernel[:, :, :, o] += window * dy[n, i, j, o]
    out = {"y": y, "dx": dxp[:, top:top + x.shape[1], left:left + x.shape[2], :],
           "dkernel": dkernel}
    if params["use_bias"]:
        out["y"] = y + arrays["bias"]
        out["dbias"] = dy.sum(axis=(0, 1, 2))
    return out


def naive_maxpool2d(params, arrays):
    """The first maximum in row-major window order takes the gradient (PyTorch's rule)."""
    x, dy = arrays["x"], arrays["dy"]
    ph, pw = params["pool_size"]
    sh, sw = params["strides"]
    xp, (top, left), (oh, ow) = _naive_padded(x, params, (ph, pw), -np.inf)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    dxp = np.zeros_like(xp)
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                for c in range(x.shape[3]):
                    window = xp[n, i * sh:i * sh + ph, j * sw:j * sw + pw, c]
                    first = int(np.argmax(window.reshape(-1)))    # argmax takes the first max
                    a, b = divmod(first, pw)
                    y[n, i, j, c] = window[a, b]
                    dxp[n, i * sh + a, j * sw + b, c] += dy[n, i, j, c]
    return {"y": y, "dx": dxp[:, top:top + x.shape[1], left:left + x.shape[2], :]}


def naive_dense(params, arrays):
    x, kernel, dy = arrays["x"], arrays["kernel"], arrays["dy"]
    n, fan_in = x.shape
    units = kernel.shape[1]
    y = np.zeros((n, units))
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    for r in range(n):
        for u in range(units):
            for i in range(fan_in):
                y[r, u] += x[r, i] * kernel[i, u]
                dx[r, i] += kernel[i, u] * dy[r, u]
                dkernel[i, u] += x[r, i] * dy[r, u]
    out = {"y": y, "dx": dx, "dkernel": dkernel}
    if params["use_bias"]:
        out["y"] = y + arrays["bias"]
        out["dbias"] = dy.sum(axis=0)
    return out


def _naive_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def naive_softmax(params, arrays):
    x, dy = arrays["x"], arrays["dy"]
    y = _naive_softmax(x)
    dx = np.zeros_like(x)
    for r in range(x.shape[0]):
        jacobian = np.diag(y[r]) - np.outer(y[r], y[r])
        dx[r] = jacobian.T @ dy[r]
    return {"y": y, "dx": dx}


def naive_softmax_crossentropy(params, arrays):
    logits, labels = arrays["logits"], arrays["labels"]
    n = logits.shape[0]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    probs = np.exp(log_probs)
    onehot = np.zeros_like(logits)
    onehot[np.arange(n), labels] = 1.0
    return {"probs": probs, "loss": np.array(-log_probs[np.arange(n), labels].mean()),
            "dlogits": (probs - onehot) / n}


def naive_model(params, arrays):
    same, pool = {"strides": [1, 1], "padding": "same"}, \
        {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}
    a = dict(arrays)
    x = a["x"]
    n = x.shape[0]
    zero = lambda shape: np.zeros(shape)  # noqa: E731  (upstream gradients unused in forward)

    def conv_fwd(h, layer):
        return naive_conv2d(dict(same, use_bias=True), {
            "x": h, "kernel": a[layer + ".kernel"], "bias": a[layer + ".bias"],
            "dy": zero(h.shape[:3] + (a[layer + ".kernel"].shape[3],))})["y"]

    def pool_fwd(h):
        shape = (h.shape[0], h.shape[1] // 2, h.shape[2] // 2, h.shape[3])
        return naive_maxpool2d(pool, {"x": h, "dy": zero(shape)})["y"]

    c1 = conv_fwd(x, "conv1")
    r1 = np.maximum(c1, 0.0)
    p1 = pool_fwd(r1)
    c2 = conv_fwd(p1, "conv2")
    r2 = np.maximum(c2, 0.0)
    p2 = pool_fwd(r2)
    flat = p2.reshape(n, -1)
    d1 = flat @ a["dense1.kernel"] + a["dense1.bias"]
    r3 = np.maximum(d1, 0.0)
    logits = r3 @ a["dense2.kernel"] + a["dense2.bias"]
    xent = naive_softmax_crossentropy({}, {"logits": logits, "labels": a["labels"]})
    out = {"logits": logits, "loss": xent["loss"], "dlogits": xent["dlogits"]}

    def dense_bwd(h, layer, dy):
        g = naive_dense({"use_bias": True}, {"x": h, "kernel": a[layer + ".kernel"],
                                             "bias": a[layer + ".bias"], "dy": dy})
        out[layer + ".dkernel"], out[layer + ".dbias"] = g["dkernel"], g["dbias"]
        return g["dx"]

    def conv_bwd(h, layer, dy):
        g = naive_conv2d(dict(same, use_bias=True), {"x": h, "kernel": a[layer + ".kernel"],
                                                     "bias": a[layer + ".bias"], "dy": dy})
        out[layer + ".dkernel"], out[layer + ".dbias"] = g["dkernel"], g["dbias"]
        return g["dx"]

    g = dense_bwd(r3, "dense2", xent["dlogits"]) * (d1 > 0)
    g = dense_bwd(flat, "dense1", g).reshape(p2.shape)
    g = naive_maxpool2d(pool, {"x": r2, "dy": g})["dx"] * (c2 > 0)
    g = conv_bwd(p1, "conv2", g)
    g = naive_maxpool2d(pool, {"x": r1, "dy": g})["dx"] * (c1 > 0)
    out["dx"] = conv_bwd(x, "conv1", g)
    return out


def naive_avgpool2d(params, arrays):
    """Each window's mean over its cells inside the image; its gradient shared among them."""
    x, dy = arrays["x"], arrays["dy"]
    ph, pw = params["pool_size"]
    sh, sw = params["strides"]
    xp, (top, left), (oh, ow) = _naive_padded(x, params, (ph, pw), np.nan)   # NaN marks padding
    inside = ~np.isnan(xp)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    dxp = np.zeros_like(xp)
    for n in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                for c in range(x.shape[3]):
                    cells = inside[n, i * sh:i * sh + ph, j * sw:j * sw + pw, c]
                    window = xp[n, i * sh:i * sh + ph, j * sw:j * sw + pw, c]
                    y[n, i, j, c] = window[cells].sum() / cells.sum()
                    dxp[n, i * sh:i * sh + ph, j * sw:j * sw + pw, c] += cells * (dy[n, i, j, c] / cells.sum())
    return {"y": y, "dx": dxp[:, top:top + x.shape[1], left:left + x.shape[2], :]}


def naive_global_avgpool2d(params, arrays):
    x, dy = arrays["x"], arrays["dy"]
    n, h, w, c = x.shape
    y = np.zeros((n, c))
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            y[b, ch] = sum(x[b, i, j, ch] for i in range(h) for j in range(w)) / (h * w)
            dx[b, :, :, ch] = dy[b, ch] / (h * w)
    return {"y": y, "dx": dx}


def _naive_batchnorm(params, arrays, training):
    """Keras' batch normalisation written out per feature; the gradient by the chain rule
    through the normalised values, the batch variance and the batch mean."""
    axis, k, eps = params["axis"], params["momentum"], params["epsilon"]
    x = np.moveaxis(arrays["x"], axis, -1)
    columns = x.reshape(-1, x.shape[-1])
    m, features = columns.shape
    gamma, beta = arrays["gamma"], arrays["beta"]
    y = np.zeros_like(columns)
    out = {"new_moving_mean": np.zeros(features), "new_moving_variance": np.zeros(features)}
    if training:
        dy = np.moveaxis(arrays["dy"], axis, -1).reshape(-1, features)
        dx = np.zeros_like(columns)
        out["dgamma"], out["dbeta"] = np.zeros(features), np.zeros(features)
    for f in range(features):
        col = columns[:, f]
        if training:
            mean = sum(col) / m
            var = sum((v - mean) ** 2 for v in col) / m
        else:
            mean, var = arrays["moving_mean"][f], arrays["moving_variance"][f]
        std = math.sqrt(var + eps)
        y[:, f] = gamma[f] * (col - mean) / std + beta[f]
        if training:
            out["new_moving_mean"][f] = k * arrays["moving_mean"][f] + (1 - k) * mean
            out["new_moving_variance"][f] = k * arrays["moving_variance"][f] + (1 - k) * var
            g = dy[:, f] * gamma[f]                                   # d loss / d x_hat
            dvar = sum(g * (col - mean)) * -0.5 * std ** -3
            dmean = -sum(g) / std + dvar * -2 * sum(col - mean) / m
            dx[:, f] = g / std + dvar * 2 * (col - mean) / m + dmean / m
            out["dgamma"][f] = sum(dy[:, f] * (col - mean) / std)
            out["dbeta"][f] = sum(dy[:, f])
    out["y"] = np.moveaxis(y.reshape(x.shape), -1, axis)
    if not training:
        return {"y": out["y"]}
    out["dx"] = np.moveaxis(dx.reshape(x.shape), -1, axis)
    return out


def naive_batchnorm_training(params, arrays):
    return _naive_batchnorm(params, arrays, True)


def naive_batchnorm_inference(params, arrays):
    return _naive_batchnorm(params, arrays, False)


def naive_dropout(params, arrays):
    """Not the mask (torch's generator draws it) but the scaling: the cells torch kept must be
    exactly x / (1 - rate) and the fraction kept within 5 standard deviations of 1 - rate."""
    x, y, rate = arrays["x"], arrays["y"], params["rate"]
    kept = y != 0
    spread = 5 * math.sqrt(rate * (1 - rate) / x.size)
    if abs(kept.mean() - (1 - rate)) > spread:
        raise ValueError("dropout %s: torch kept %.4f of the cells" % (params["name"], kept.mean()))
    return {"y": np.where(kept, x * (1.0 / (1.0 - rate)), 0.0)}


NAIVE = {
    "conv2d": naive_conv2d,
    "maxpool2d": naive_maxpool2d,
    "maxpool2d_ties": naive_maxpool2d,
    "dense": naive_dense,
    "softmax": naive_softmax,
    "softmax_crossentropy": naive_softmax_crossentropy,
    "model": naive_model,
    "avgpool2d": naive_avgpool2d,
    "global_avgpool2d": naive_global_avgpool2d,
    "batchnorm_training": naive_batchnorm_training,
    "batchnorm_inference": naive_batchnorm_inference,
    "dropout": naive_dropout,
}


def _check_padding_rule():
    # TensorFlow's documented example (in 13, filter 6, stride 5 -> out 3, pad 1 before and 2
    # after), the extra row going after, and "same" at stride 1 keeping the size.
    assert same_padding(13, 6, 5) == (1, 2) == _naive_pads(13, 6, 5, "same")[:2]
    assert same_padding(4, 2, 1) == (0, 1)
    assert same_padding(6, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(7, 1, 3) == (0, 0)
    for size in range(1, 12):
        for window in range(1, 7):
            for stride in range(1, 5):
                before, after, out = _naive_pads(size, window, stride, "same")
                assert (before, after) == same_padding(size, window, stride)
                assert out == -(-size // stride)
                assert (size + before + after - window) // stride + 1 == out


def max_abs_error(expected, actual):
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.shape != actual.shape:
        return math.inf
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(expected - actual)))


def check_against(kind, cases, reference, label, tolerance):
    """Compare every output array of ``cases`` with ``reference(params, arrays)``; return errors."""
    failures = []
    worst = 0.0
    for case in cases:
        expected_names = fixtures.array_names(kind, case["params"], "outputs")
        got = reference(case["params"], case["arrays"])
        if sorted(got) != sorted(expected_names):
            failures.append("%s/%s: %s gives arrays %s, the fixture has %s"
                            % (kind, case["name"], label, sorted(got), sorted(expected_names)))
            continue
        for name in expected_names:
            stored = case["arrays"][name]
            error = max_abs_error(got[name], stored) / max(1.0, float(np.max(np.abs(stored))))
            worst = max(worst, error)
            if not error <= tolerance:
                failures.append("%s/%s: %s differs from %s by %.3g"
                                % (kind, case["name"], name, label, error))
    print("  %-22s %2d cases  vs %-5s  worst scaled error %.2e"
          % (kind, len(cases), label, worst))
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed fixtures (naive loops, live torch, grid); "
                             "write nothing")
    parser.add_argument("kinds", nargs="*", default=list(fixtures.FILES),
                        help="which fixture files (default: all): %s" % ", ".join(fixtures.FILES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _check_padding_rule()
    failures = []
    for kind in args.kinds:
        path = fixtures.FIXTURE_DIR / fixtures.FILES[kind]
        if args.check:
            cases = fixtures.load_cases(kind)
            grid = GRID[kind]()
            if json.dumps(grid, sort_keys=True) != json.dumps([c["params"] for c in cases],
                                                              sort_keys=True):
                failures.append("%s: the committed cases differ from the grid in this script; "
                                "regenerate" % kind)
            failures += check_against(kind, cases, COMPUTE[kind], "torch", 1e-12)
        else:
            cases = build_cases(kind)
        failures += check_against(kind, cases, NAIVE[kind], "naive", 1e-12)
        if not args.check and not failures:
            fixtures.save_cases(path, kind, cases)
            print("  wrote %s (%d bytes)" % (path, path.stat().st_size))
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
