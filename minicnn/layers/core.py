"""Dense and Flatten."""
import math

import numpy as np

from .. import kernels
from ..errors import quote
from .activations import WithActivation
from .base import LARGEST_DIMENSION, REGISTRY, Layer, keeps_caches

# Features a Flatten may produce: the C engine's largest array (MC_LEN_MAX, 2**40 elements)
LARGEST_FEATURES = 1 << 40


@REGISTRY.register()
class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C), row-major over (H, W, C) exactly as Keras flattens NHWC."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{self.describe()}: only data_format='channels_last' is supported, received {quote(data_format)}")

    def _build(self, input_shape):
        size = math.prod(input_shape)   # Python ints: np.prod wrapped around for huge shapes
        if size > LARGEST_FEATURES:
            raise ValueError(f"{self.describe()}: flattening {input_shape} gives {size:,} features, more "
                             f"than the {LARGEST_FEATURES:,} an array can hold here")
        return (size,)

    def _forward(self, x, training):
        return x.reshape(x.shape[0], -1)

    def inference_ops(self):
        return [("reshape", self.output_shape)]

    def _backward(self, dy, need_input_gradient=True):
        self._check_grad_array(dy, (dy.shape[0],) + self.output_shape)
        return dy.reshape((dy.shape[0],) + self.input_shape)


@REGISTRY.register()
class Dense(WithActivation, Layer):
    """Fully connected layer: y = activation(x @ kernel + bias).

    Input x: (N, in_features); kernel: (in_features, units); bias: (units,); output: (N, units).
    Put Flatten() before it for image inputs.
    """

    weight_names = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        who = self.describe()
        if isinstance(units, (bool, np.bool_)) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{who}: units must be a positive integer, received {quote(units)}")
        if units > LARGEST_DIMENSION:
            raise ValueError(f"{who}: units must be at most {LARGEST_DIMENSION:,} (the engines' largest "
                             f"dimension), received {quote(units)}")
        self.units = int(units)   # a NumPy integer too: the config stays plain JSON
        self._set_kernel_and_activation(activation, use_bias, kernel_initializer, bias_initializer)

    def _build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"{self.describe()}: expected inputs of shape (batch, features), received per-sample "
                f"shape {input_shape}; put a Flatten() layer before Dense"
            )
        return self._build_kernel_and_activation((input_shape[0], self.units), (self.units,))

    def _forward(self, x, training):
        y, cache = kernels.dense_forward(x, self.params["kernel"], self.params.get("bias"),
                                         relu=self.relu_in_kernel)
        self._cache = cache if keeps_caches(training) else None
        return self._activate(y, training)

    def inference_ops(self):
        return self._with_activation_ops([("dense", self.params["kernel"], self.params.get("bias"),
                                           self.relu_in_kernel)])

    # the kernel face's function itself: no extra call per step
    _kernel_backward = staticmethod(kernels.dense_backward)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            **self._kernel_and_activation_config(),
        }
