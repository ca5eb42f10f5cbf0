"""Sequential: a stack of layers run in order, Keras' way.

Shape inference: the first layer's `input_shape=` (or `build(input_shape)`, or the first batch
seen) fixes the input; each layer's `build` returns its output shape, which builds the next.
"""
import numpy as np

from .layers.activations import Softmax
from .layers.base import Layer, unique_name


class Sequential:
    """A linear stack of layers.

        model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)), ...])
        y = model.forward(x)              # x: (N, 28, 28, 1) in the model's dtype
        dx = model.backward(dy)           # fills every layer's grads
    """

    def __init__(self, layers=None, name=None):
        self.name = name if name is not None else unique_name("Sequential")
        self.layers = []
        self.built = False
        self.input_shape = None
        self.output_shape = None
        for layer in layers or ():
            self.add(layer)

    # -- construction -----------------------------------------------------------------------
    def add(self, layer):
        """Append a layer; builds it at once when the model's input shape is already known."""
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential '{self.name}': add() takes a minicnn layer, received {type(layer).__name__}"
            )
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"Sequential '{self.name}': layer '{layer.name}' was already added")
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"Sequential '{self.name}': two layers are named '{layer.name}'; names must be unique")
        if self.layers and layer.declared_input_shape is not None:
            raise ValueError(
                f"Sequential '{self.name}': only the first layer may declare input_shape, "
                f"but {layer.describe()} declares {layer.declared_input_shape}"
            )
        self.layers.append(layer)
        if self.built:
            self.output_shape = layer.build(self.output_shape)
        elif len(self.layers) == 1 and layer.declared_input_shape is not None:
            self.build((None,) + layer.declared_input_shape)

    def build(self, input_shape=None):
        """Build every layer for inputs of `input_shape` (Keras: WITH the batch axis, e.g.
        (None, 28, 28, 1)); without an argument, the first layer's input_shape is used."""
        if not self.layers:
            raise ValueError(f"Sequential '{self.name}': cannot build a model with no layers")
        if input_shape is None:
            if self.layers[0].declared_input_shape is None:
                raise ValueError(
                    f"Sequential '{self.name}': give the first layer input_shape=(H, W, C) or call "
                    f"build((None, H, W, C))"
                )
            shape = self.layers[0].declared_input_shape
        else:
            input_shape = tuple(input_shape)
            if len(input_shape) < 2:
                raise ValueError(
                    f"Sequential '{self.name}': build() takes the input shape with its batch axis, "
                    f"e.g. (None, 28, 28, 1), received {input_shape}"
                )
            shape = input_shape[1:]
        self.input_shape = tuple(shape)
        for layer in self.layers:
            shape = layer.build(shape)
        self.output_shape = tuple(shape)
        self.built = True

    @property
    def dtype(self):
        """The dtype of the first layer (every layer of a model should share it)."""
        return self.layers[0].dtype if self.layers else None

    # -- computing --------------------------------------------------------------------------
    def forward(self, x, training=False):
        """Run x (batch first, in the model's dtype) through every layer."""
        if not self.built:
            if not self.layers:
                raise ValueError(f"Sequential '{self.name}': the model has no layers")
            if not isinstance(x, np.ndarray) or x.ndim < 2:
                raise ValueError(
                    f"Sequential '{self.name}': expected a batch array, received "
                    f"{getattr(x, 'shape', type(x).__name__)}"
                )
            self.build((None,) + x.shape[1:])
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    __call__ = forward

    def backward(self, dy, need_input_gradient=True, dy_is_logits_gradient=False):
        """Backpropagate dy (gradient w.r.t. the model output) through every layer.

        With dy_is_logits_gradient=True, dy is the gradient w.r.t. the logits that feed the
        model's final softmax (the fused softmax + cross-entropy gradient): the softmax's own
        backward is skipped. Returns dx, or None when need_input_gradient is False.
        """
        layers = list(self.layers)
        if dy_is_logits_gradient:
            last = layers.pop()
            if isinstance(last, Softmax):
                pass  # dy already is the gradient w.r.t. this layer's input
            elif getattr(last, "activation_name", None) == "softmax":
                dy = last.backward_preactivation(dy, need_input_gradient or bool(layers))
            else:
                raise ValueError(
                    f"Sequential '{self.name}': dy_is_logits_gradient needs a final softmax, "
                    f"but the last layer is {last.describe()}"
                )
        for position in range(len(layers) - 1, -1, -1):
            needs_dx = need_input_gradient or position > 0
            dy = layers[position].backward(dy, need_input_gradient=needs_dx)
        return dy

    def ends_in_softmax(self):
        """True when the model's output is a softmax (a Softmax layer or activation='softmax')."""
        if not self.layers:
            return False
        last = self.layers[-1]
        return isinstance(last, Softmax) or getattr(last, "activation_name", None) == "softmax"

    # -- weights ----------------------------------------------------------------------------
    def get_weights(self):
        """All weights, layer by layer, each in Keras' order (kernel, bias)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Inverse of get_weights; shapes are checked for every array before any is written."""
        weights = list(weights)
        expected = sum(len(layer.get_weights()) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"Sequential '{self.name}': expected {expected} weight arrays, received {len(weights)}")
        position = 0
        plan = []
        for layer in self.layers:
            count = len(layer.get_weights())
            for current, new in zip(layer.get_weights(), weights[position:position + count]):
                if np.shape(new) != current.shape:
                    raise ValueError(
                        f"Sequential '{self.name}': {layer.describe()} expects a weight of shape "
                        f"{current.shape}, received {np.shape(new)}"
                    )
            plan.append((layer, weights[position:position + count]))
            position += count
        for layer, layer_weights in plan:
            if layer_weights:
                layer.set_weights(layer_weights)

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    # -- description ------------------------------------------------------------------------
    def summary(self, line_length=65, print_fn=print):
        """Print a Keras-style table: Layer (type) | Output Shape | Param #, then the totals.

        Columns widen for long layer names instead of cutting them off.
        """
        if not self.built:
            raise ValueError(
                f"Sequential '{self.name}': the model is not built yet; give the first layer "
                f"input_shape=... or call build()"
            )
        rows = [
            (f"{layer.name} ({type(layer).__name__})",
             "(None, " + ", ".join(str(d) for d in layer.output_shape) + ")",
             f"{layer.count_params():,}")
            for layer in self.layers
        ]
        name_width = max([int(line_length * 0.45)] + [len(r[0]) + 2 for r in rows])
        shape_width = max([int(line_length * 0.40)] + [len(r[1]) + 2 for r in rows])
        width = max(line_length, name_width + shape_width + 10)

        def row(name, shape, params):
            return (" " + name).ljust(name_width) + (" " + shape).ljust(shape_width) + " " + params

        lines = [f'Model: "{self.name}"', "_" * width, row("Layer (type)", "Output Shape", "Param #"), "=" * width]
        for index, cells in enumerate(rows):
            lines.append(row(*cells))
            lines.append("=" * width if index == len(rows) - 1 else "")
        total = self.count_params()
        trainable = sum(layer.count_params() for layer in self.layers if layer.trainable)
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}", "_" * width]
        for line in lines:
            print_fn(line)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self.layers)} built={self.built}>"
