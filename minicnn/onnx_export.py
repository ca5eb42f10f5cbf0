"""ONNX export: a minicnn model as an ONNX graph that ONNX Runtime (or any ONNX runtime) runs.

    model.export("fashion.onnx")                   # or: python -m minicnn export --model M OUT.onnx

The graph computes what `model.predict` computes, in float32:

    input   "input"   float32 (batch, H, W, C)  -- NHWC as minicnn, the batch axis dynamic
    output  "output"  float32 (batch, ...)      -- the last layer's output, NHWC when 4-D

ONNX convolutions and poolings are NCHW, so the graph transposes to NCHW before the first of
them and back to NHWC before anything whose meaning depends on the layout (Flatten, which must
flatten in minicnn's (H, W, C) order, and the output); runs of NCHW layers share one pair of
transposes. TensorFlow's asymmetric "same" padding becomes explicit pads (from the layers'
own kernels.pads_2d geometry). Layers that only act in training export their inference
behaviour.

One small function per layer class (CONVERTERS, keyed by the name minicnn.layers.REGISTRY gives
the class); a layer class without one is refused by name.
The `onnx` package builds the graph (onnx.helper, onnx.numpy_helper): pip install "minicnn[onnx]".
"""
import os
import sys

import numpy as np

from . import io
from .errors import shorten
from .saving import load_model

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_TO_NCHW = (0, 3, 1, 2)
_TO_NHWC = (0, 2, 3, 1)


def require_onnx():
    """The onnx package, imported on first use: an optional extra that `import minicnn` never
    pays for."""
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as error:
        raise ImportError('ONNX export needs the "onnx" package: pip install "minicnn[onnx]" '
                          f'(or pip install onnx); importing it failed: {error}') from None
    return onnx


class GraphBuilder:
    """The graph being built: nodes, initializers, and the current tensor with its layout.

    `layout` is "NHWC" or "NCHW" for 4-D tensors (batch, spatial, channels); other ranks have
    no layout to track."""

    def __init__(self, onnx, dtype=np.float32):
        self.onnx = onnx
        self.dtype = dtype
        self.nodes = []
        self.initializers = []
        self.tensor = INPUT_NAME
        self.layout = "NHWC"
        self._count = 0

    def fresh(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem, array):
        name = self.fresh(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, dtype=self.dtype), name))
        return name

    def add(self, op_type, extra_inputs=(), name=None, **attributes):
        """Apply op_type to the current tensor (and extra_inputs); the result becomes current."""
        output = self.fresh(name or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, [self.tensor, *extra_inputs], [output],
                                           name=output, **attributes))
        self.tensor = output
        return output

    def to_layout(self, layout, rank):
        if rank == 4 and self.layout != layout:
            self.add("Transpose", perm=list(_TO_NCHW if layout == "NCHW" else _TO_NHWC),
                     name=f"to_{layout.lower()}")
        self.layout = layout

    def channel_axis_of(self, axis, rank):
        """Where NHWC axis `axis` of a rank-`rank` tensor is in the current layout."""
        axis = axis % rank
        return _TO_NCHW.index(axis) if rank == 4 and self.layout == "NCHW" else axis


def _rank(layer):
    return 1 + len(layer.input_shape)


def _pads(layer):
    top, bottom, left, right = layer.pads
    return [int(top), int(left), int(bottom), int(right)]   # ONNX: all begins, then all ends


def _activation(graph, name, rank, axis=-1):
    if name == "relu":
        graph.add("Relu")
    elif name == "softmax":
        graph.add("Softmax", axis=graph.channel_axis_of(axis, rank))
    elif name not in (None, "linear"):
        raise ValueError(f"no ONNX form for activation {name!r}")


def _conv2d(layer, graph):
    graph.to_layout("NCHW", 4)
    kernel = graph.constant(f"{layer.name}_kernel", layer.params["kernel"].transpose(3, 2, 0, 1))  # (F, C, KH, KW)
    inputs = [kernel] + ([graph.constant(f"{layer.name}_bias", layer.params["bias"])] if layer.use_bias else [])
    graph.add("Conv", inputs, name=layer.name, kernel_shape=list(layer.kernel_size),
              strides=list(layer.strides), pads=_pads(layer))
    _activation(graph, layer.activation_name, 4)


def _max_pooling2d(layer, graph):
    # ONNX MaxPool never lets a pad win: the same as minicnn's -inf border.
    graph.to_layout("NCHW", 4)
    graph.add("MaxPool", name=layer.name, kernel_shape=list(layer.pool_size),
              strides=list(layer.strides), pads=_pads(layer))


def _average_pooling2d(layer, graph):
    # count_include_pad=0: a border window averages only its cells inside the image (TensorFlow's "same").
    graph.to_layout("NCHW", 4)
    graph.add("AveragePool", name=layer.name, kernel_shape=list(layer.pool_size),
              strides=list(layer.strides), pads=_pads(layer), count_include_pad=0)


def _global_average_pooling2d(layer, graph):
    graph.to_layout("NCHW", 4)
    graph.add("GlobalAveragePool", name=layer.name)          # (N, C, 1, 1)
    if not layer.keepdims:
        graph.add("Flatten", name=f"{layer.name}_squeeze", axis=1)


def _batch_normalization(layer, graph):
    """Inference: the moving statistics. ONNX's BatchNormalization normalises axis 1, which is
    where NCHW keeps the channels and (N, F) its features; any other axis becomes y = x * a + b
    with a, b broadcast along that axis."""
    rank = _rank(layer)
    features = layer.state["moving_mean"].shape[0]
    gamma = layer.params["gamma"] if layer.scale else np.ones(features, layer.dtype)
    beta = layer.params["beta"] if layer.center else np.zeros(features, layer.dtype)
    mean, variance = layer.state["moving_mean"], layer.state["moving_variance"]
    axis = layer.axis % rank
    if rank == 4 and axis == 3:
        graph.to_layout("NCHW", 4)
    if graph.channel_axis_of(axis, rank) == 1:
        graph.add("BatchNormalization", [graph.constant(f"{layer.name}_{key}", value) for key, value in
                                         (("gamma", gamma), ("beta", beta), ("moving_mean", mean),
                                          ("moving_variance", variance))],
                  name=layer.name, epsilon=float(layer.epsilon))
        return
    position = graph.channel_axis_of(axis, rank)
    shape = (features,) + (1,) * (rank - 1 - position)   # broadcasts along `position`
    scale = gamma.astype(np.float64) / np.sqrt(variance.astype(np.float64) + layer.epsilon)
    shift = beta - mean * scale
    graph.add("Mul", [graph.constant(f"{layer.name}_scale", scale.reshape(shape))], name=f"{layer.name}_scale")
    graph.add("Add", [graph.constant(f"{layer.name}_shift", shift.reshape(shape))], name=f"{layer.name}_shift")


def _inference_identity(layer, graph):
    """Dropout and the augmentation layers act only when training."""
    graph.add("Identity", name=layer.name)


def _flatten(layer, graph):
    graph.to_layout("NHWC", _rank(layer))   # minicnn flattens in (H, W, C) order
    graph.add("Flatten", name=layer.name, axis=1)


def _dense(layer, graph):
    kernel = graph.constant(f"{layer.name}_kernel", layer.params["kernel"])   # (in, units)
    if layer.use_bias:
        graph.add("Gemm", [kernel, graph.constant(f"{layer.name}_bias", layer.params["bias"])], name=layer.name)
    else:
        graph.add("MatMul", [kernel], name=layer.name)
    _activation(graph, layer.activation_name, 2)


def _relu(layer, graph):
    graph.add("Relu", name=layer.name)


def _softmax(layer, graph):
    graph.add("Softmax", name=layer.name, axis=graph.channel_axis_of(layer.axis, _rank(layer)))


def _linear(layer, graph):
    graph.add("Identity", name=layer.name)


# Layer class name (as minicnn.layers.REGISTRY names it) -> function(layer, graph) that appends
# the layer's inference computation to the graph.
CONVERTERS = {
    "Conv2D": _conv2d,
    "MaxPooling2D": _max_pooling2d,
    "Flatten": _flatten,
    "Dense": _dense,
    "ReLU": _relu,
    "Softmax": _softmax,
    "Linear": _linear,
    "AveragePooling2D": _average_pooling2d,
    "GlobalAveragePooling2D": _global_average_pooling2d,
    "BatchNormalization": _batch_normalization,
    "Dropout": _inference_identity,
    "RandomFlip": _inference_identity,
    "RandomTranslation": _inference_identity,
}


def to_onnx(model):
    """An onnx.ModelProto computing model.predict in float32 (see the module docstring)."""
    onnx = require_onnx()
    helper, float_type = onnx.helper, onnx.TensorProto.FLOAT
    who = f"Sequential '{shorten(model.name)}'"
    if not model.built:
        raise ValueError(f"{who}: export needs a built model; give the first layer input_shape=... "
                         f"or call build() or fit() first")
    missing = [layer for layer in model.layers if type(layer).__name__ not in CONVERTERS]
    if missing:
        raise ValueError(f"{who}: cannot export to ONNX: {missing[0].describe()} has no ONNX form "
                         f"(exportable layers: {sorted(CONVERTERS)})")
    graph = GraphBuilder(onnx)
    for layer in model.layers:
        CONVERTERS[type(layer).__name__](layer, graph)
    output_rank = 1 + len(model.output_shape)
    graph.to_layout("NHWC", output_rank)
    graph.nodes.append(helper.make_node("Identity", [graph.tensor], [OUTPUT_NAME], name=OUTPUT_NAME))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, float_type, ["batch", *model.input_shape])]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, float_type, ["batch", *model.output_shape])]
    onnx_graph = helper.make_graph(graph.nodes, shorten(model.name, 200), inputs, outputs, graph.initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="minicnn")
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model, filepath, overwrite=True):
    """Write model as an ONNX file (atomically, like model.save); returns the path written."""
    return io.write_bytes(filepath, to_onnx(model).SerializeToString(), overwrite=overwrite)


# -- the command line: python -m minicnn export --model M OUT.onnx -----------------------------

def add_arguments(parser):
    parser.add_argument("--model", required=True, help="a model saved by model.save (.npz) or a Keras .keras file")
    parser.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")


def run(args, stderr=None):
    """Exit status of the export command: 0 written, 2 for a model or file it cannot use."""
    stderr = stderr or sys.stderr
    try:
        model = load_model(args.model, compile=False)
    except (OSError, ValueError) as error:
        print(f"error: cannot load the model {args.model}: {error}", file=stderr)
        return 2
    try:
        path = export_onnx(model, args.output)
    except (ImportError, OSError, ValueError) as error:
        print(f"error: cannot export {args.model}: {error}", file=stderr)
        return 2
    print(os.path.abspath(path))
    return 0
