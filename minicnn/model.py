"""Sequential: a stack of layers run in order, Keras' way; its structure only.

Shape inference: the first layer's `input_shape=` (or `build(input_shape)`, or the first batch
seen) fixes the input; each layer's `build` returns its output shape, which builds the next.

Here: add, build, forward, backward, weights, config, and save/load through minicnn.saving.
Training (compile, fit, evaluate, predict and the loop) is inherited from
minicnn.training.trainer.Trainer; the summary table is minicnn.summary's.
"""
import numpy as np

from . import onnx_export, saving, summary
from .errors import check_str, quote, shorten
from .layers import REGISTRY as LAYERS
from .layers.activations import ReLU, Softmax, ends_in_softmax
from .layers.base import Layer, as_shape, keeps_caches, read_only_output, unique_name
from .registry import MODELS
from .training.trainer import Trainer


# Layers a model file or config may hold: far beyond any Sequential CNN (ResNet-152 has ~500).
MAX_CONFIG_LAYERS = 4096


@MODELS.register()
class Sequential(Trainer):
    """A linear stack of layers.

        model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)), ...])
        y = model.forward(x, training=True)   # x: (N, 28, 28, 1) in the model's dtype
        dx = model.backward(dy)               # fills every layer's grads (needs training=True)
    """

    def __init__(self, layers=None, name=None):
        self.name = check_str(name, "Sequential", "name") if name is not None else unique_name("Sequential")
        self.layers = []
        self.built = False
        self.input_shape = None
        self.output_shape = None
        super().__init__()
        for layer in layers or ():
            self.add(layer)

    # -- construction -----------------------------------------------------------------------
    def add(self, layer):
        """Append a layer; builds it at once when the model's input shape is already known."""
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential '{shorten(self.name)}': add() takes a minicnn layer, received {type(layer).__name__}"
            )
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"Sequential '{shorten(self.name)}': layer '{shorten(layer.name)}' was already added")
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"Sequential '{shorten(self.name)}': two layers are named '{shorten(layer.name)}'; names must be unique")
        if self.layers and layer.declared_input_shape is not None:
            raise ValueError(
                f"Sequential '{shorten(self.name)}': only the first layer may declare input_shape, "
                f"but {layer.describe()} declares {layer.declared_input_shape}"
            )
        if self.layers:
            self._share_dtype(layer)
        if self.built:
            # built before it joins: a layer refused (built for another shape) stays out
            self.output_shape = layer.build(self.output_shape)
        self.layers.append(layer)
        if not self.built and len(self.layers) == 1 and layer.declared_input_shape is not None:
            self.build((None,) + layer.declared_input_shape)

    def build(self, input_shape=None):
        """Build every layer for inputs of `input_shape` (Keras: WITH the batch axis, e.g.
        (None, 28, 28, 1)); without an argument, the first layer's input_shape is used."""
        if not self.layers:
            raise ValueError(f"Sequential '{shorten(self.name)}': cannot build a model with no layers")
        if input_shape is None:
            if self.layers[0].declared_input_shape is None:
                raise ValueError(
                    f"Sequential '{shorten(self.name)}': give the first layer input_shape=(H, W, C) or call "
                    f"build((None, H, W, C))"
                )
            shape = self.layers[0].declared_input_shape
        else:
            input_shape = tuple(input_shape)
            if len(input_shape) < 2:
                raise ValueError(
                    f"Sequential '{shorten(self.name)}': build() takes the input shape with its batch axis, "
                    f"e.g. (None, 28, 28, 1), received {input_shape}"
                )
            shape = input_shape[1:]
        input_shape = tuple(shape)
        fresh = [layer for layer in self.layers if not layer.built]
        try:
            for layer in self.layers:
                shape = layer.build(shape)   # a no-op for a layer already built for this shape
        except Exception:
            # all or nothing: layers this call built go back to unbuilt, so a wrong first shape
            # (a later layer refused it) does not tie them to that shape
            for layer in fresh:
                layer.unbuild()
            raise
        self.input_shape = input_shape
        self.output_shape = tuple(shape)
        self.built = True

    def _share_dtype(self, layer):
        """Layers follow the first layer's dtype unless given their own, which must then agree,
        so that `Conv2D(..., dtype="float64")` first makes the whole model float64 as in Keras."""
        dtype = self.layers[0].dtype
        if not layer.dtype_was_given:
            layer.adopt_dtype(dtype)
        elif layer.dtype != dtype:
            raise ValueError(
                f"Sequential '{shorten(self.name)}': {layer.describe()} has dtype {layer.dtype} but the model "
                f"computes in {dtype} (its first layer's); every layer must share one dtype"
            )

    @property
    def dtype(self):
        """The dtype of the first layer (every layer of a model should share it)."""
        return self.layers[0].dtype if self.layers else None

    # -- computing --------------------------------------------------------------------------
    def forward(self, x, training=False):
        """Run x (batch first, in the model's dtype) through every layer."""
        if not self.built:
            if not self.layers:
                raise ValueError(f"Sequential '{shorten(self.name)}': the model has no layers")
            if not isinstance(x, np.ndarray) or x.ndim < 2:
                raise ValueError(
                    f"Sequential '{shorten(self.name)}': expected a batch array, received "
                    f"{getattr(x, 'shape', type(x).__name__)}"
                )
            self.build((None,) + x.shape[1:])
        layers = self.layers
        keeps = keeps_caches(training)
        i = 0
        while i < len(layers):
            layer, before = layers[i], x
            follower = layers[i + 1] if i + 1 < len(layers) else None
            if layer.fuses_following_relu and type(follower) is ReLU:
                # one pass for both (batch normalisation + ReLU): the same numbers, no pass over
                # the activations for the ReLU; its backward then passes dy on to the layer
                # before, which applies the mask (docs/architecture.md, "Fusions")
                x = follower.take_fused_output(layer.forward_with_relu(x, training), training)
                i += 2
            elif follower is not None and layer.fuses_following_maxpool(follower):
                # a convolution and its max pool as one call, in chunks of images, so the
                # convolution's output is pooled while still in the caches and never kept; the
                # backward then takes the pool's gradient (docs/architecture.md, "Fusions")
                x = layer.forward_with_maxpool(x, follower, training, check_input=i == 0)
                i += 2
            elif i > 0 and type(layer).forward is Layer.forward:
                # Checked once: the first layer checked the input, and each built layer's
                # output has the next one's input shape and the model's dtype (8 us of a
                # single-image prediction); the kernel face still checks every array
                x = layer._forward(x, training)
                i += 1
            else:
                x = layer.forward(x, training=training)
                i += 1
            if keeps:
                read_only_output(x, before)   # a backward reads it (Layer.forward's note)
        return x

    __call__ = forward

    def backward(self, dy, need_input_gradient=True, dy_is_logits_gradient=False):
        """Backpropagate dy (gradient w.r.t. the model output) through every layer.

        With dy_is_logits_gradient=True, dy is the gradient w.r.t. the logits that feed the
        model's final softmax (the fused softmax + cross-entropy gradient): the softmax's own
        backward is skipped. Returns dx, or None when need_input_gradient is False: then the
        backward stops at the first layer with trainable weights, which computes no dx, and
        the layers before it (an augmentation layer before the first convolution, say) are
        not run at all, since no weight needs their gradients.
        """
        layers = self.layers
        first = 0 if need_input_gradient else next(
            (i for i, layer in enumerate(layers) if layer.trainable and layer.params), len(layers))
        end = len(layers)
        if dy_is_logits_gradient:
            if not ends_in_softmax(layers):
                last = layers[-1].describe() if layers else "missing"
                raise ValueError(
                    f"Sequential '{shorten(self.name)}': dy_is_logits_gradient needs a final softmax, "
                    f"but the last layer is {last}"
                )
            end -= 1
            if not isinstance(layers[end], Softmax) and end >= first:   # Dense/Conv2D with softmax
                dy = layers[end].backward_preactivation(dy, need_input_gradient or end > first)
        position = end - 1
        while position >= first:
            layer = layers[position]
            if position > first and layers[position - 1].takes_gradient_from(layer):
                # the convolution takes the max pool's gradient itself (kernels.conv2d_backward_
                # from_maxpool): the same bits, one pass fewer over its output's gradient
                # (docs/architecture.md, "Fusions")
                dy = layers[position - 1].backward_from_maxpool(
                    dy, layer, need_input_gradient=need_input_gradient or position - 1 > first)
                position -= 2
            else:
                dy = layer.backward(dy, need_input_gradient=need_input_gradient or position > first)
                position -= 1
        return dy if need_input_gradient else None

    # -- weights ----------------------------------------------------------------------------
    def get_weights(self):
        """All weights, layer by layer, each in Keras' order (kernel, bias)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Inverse of get_weights. Every array of every layer is checked first (count, shape,
        NaN/inf, overflow of the layer's dtype: see Layer.checked_weights); nothing is written
        unless all pass."""
        weights = list(weights)
        counts = [len(layer.named_weights()) for layer in self.layers]
        if len(weights) != sum(counts):
            raise ValueError(f"Sequential '{shorten(self.name)}': expected {sum(counts)} weight arrays, "
                             f"received {len(weights)}")
        plan = []
        position = 0
        for layer, count in zip(self.layers, counts):
            if count:
                plan.append((layer, layer.checked_weights(weights[position:position + count])))
            position += count
        for layer, checked in plan:
            layer.write_weights(checked)

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    # -- description ------------------------------------------------------------------------
    def summary(self, line_length=65, print_fn=print):
        """Print a Keras-style table: Layer (type) | Output Shape | Param #, then the totals
        (see minicnn.summary)."""
        summary.print_summary(self, line_length, print_fn)

    # -- files ------------------------------------------------------------------------------
    def save(self, filepath, overwrite=True, include_optimizer=True):
        """Write the model to one .npz file (see minicnn.saving); returns the path written.

        A path ending in ".keras" writes a Keras 3 archive instead (architecture and weights,
        no optimizer state), which keras.saving.load_model reads (see minicnn.keras_format).
        Otherwise ".npz" is appended when filepath does not end in it, as numpy.savez does. With
        include_optimizer (and a compiled model) the file also holds the compile arguments and
        the optimizer state, so minicnn.load_model(path).fit(...) continues where this stopped."""
        return saving.save_model(self, filepath, overwrite=overwrite, include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True):
        """Write only the weights (with the layer names and shapes they belong to); a path
        ending in ".weights.h5" writes Keras 3's weights file instead."""
        return saving.save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        """Read weights written by save_weights or save into this (built) model, in layer order;
        every shape is checked before any weight is written. A ".weights.h5" path reads Keras 3's
        weights file (written by Keras' model.save_weights for the same architecture)."""
        saving.load_weights(self, filepath)

    def export(self, filepath, format="onnx", overwrite=True):
        """Write the model for another runtime; returns the path written. format="onnx": an
        ONNX graph with input "input" (batch, H, W, C) float32 (the batch axis dynamic) and
        output "output", computing what predict computes (see minicnn.onnx_export). Needs the
        onnx package (pip install "minicnn[onnx]")."""
        if format != "onnx":
            raise ValueError(f"Sequential '{shorten(self.name)}': export format must be 'onnx', received {quote(format)}")
        return onnx_export.export_onnx(self, filepath, overwrite=overwrite)

    def get_config(self):
        """JSON-ready architecture: the model name, each layer's class and config, the input shape."""
        return {
            "name": self.name,
            "layers": [LAYERS.serialize(layer) for layer in self.layers],
            "build_input_shape": list(self.input_shape) if self.built else None,
        }

    @classmethod
    def from_config(cls, config):
        """Inverse of get_config. Only minicnn's own layer classes are accepted; the model is
        built when the config knows its input shape."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("Sequential.from_config: expected a mapping with a 'layers' list")
        if len(config["layers"]) > MAX_CONFIG_LAYERS:
            # add() compares each layer with the ones before: 40,000 layers (a 129 KB file) took
            # 279 s to load, and the JSON cap would allow hours
            raise ValueError(f"Sequential.from_config: {len(config['layers']):,} layers, more than the "
                             f"{MAX_CONFIG_LAYERS:,} a model file may hold")
        layers = []
        for entry in config["layers"]:
            if not isinstance(entry, dict) or entry.get("class_name") not in LAYERS:
                name = entry.get("class_name") if isinstance(entry, dict) else entry
                raise ValueError(f"Sequential.from_config: unknown layer class {quote(name)}; expected one of {LAYERS.names}")
            layers.append(LAYERS.deserialize(entry))
        model = cls(name=config.get("name"))
        for layer in layers:
            model.add(layer)
        shape = config.get("build_input_shape")
        if shape is not None:
            shape = as_shape(shape, "Sequential.from_config", "build_input_shape")
            if not model.built:
                model.build((None,) + shape)
            elif shape != model.input_shape:
                raise ValueError(f"Sequential.from_config: build_input_shape {shape} differs from the "
                                 f"first layer's input_shape {model.input_shape}")
        return model

    def __repr__(self):
        return f"<Sequential name={quote(self.name)} layers={len(self.layers)} built={self.built}>"


