"""Conv2D: 2-D convolution over NHWC images, Keras' arguments and weight layout."""
from .. import initializers, kernels
from ..errors import check_bool, quote
from .activations import WithActivation
from .base import REGISTRY, Layer, normalize_padding, normalize_tuple


@REGISTRY.register()
class Conv2D(WithActivation, Layer):
    """2-D convolution (cross-correlation) with optional bias and activation.

    Input  x:      (N, H, W, C_in)
    Kernel:        (KH, KW, C_in, filters)       params["kernel"]
    Bias:          (filters,)                    params["bias"] (when use_bias)
    Output y:      (N, OH, OW, filters)
        padding="valid": OH = 1 + (H - KH) // stride_h
        padding="same":  OH = ceil(H / stride_h), zeros padded as TensorFlow does (the odd
                         extra row/column goes at the bottom/right)
    and likewise for the width. Non-square kernels and strides work.
    """

    weight_names = ("kernel", "bias")

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        who = self.describe()
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"{who}: filters must be a positive integer, received {quote(filters)}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' (NHWC) is supported, received {quote(data_format)}")
        self.filters = filters
        self.kernel_size = normalize_tuple(kernel_size, 2, who, "kernel_size")
        self.strides = normalize_tuple(strides, 2, who, "strides")
        self.padding = normalize_padding(padding, who)
        self._set_activation(activation)
        self.use_bias = check_bool(use_bias, who, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, f"{who} kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, f"{who} bias_initializer")
        self._cache = None

    def _build(self, input_shape):
        who = self.describe()
        if len(input_shape) != 3:
            raise ValueError(
                f"{who}: expected inputs of shape (height, width, channels) per image, "
                f"received {input_shape}"
            )
        height, width, channels = input_shape
        try:
            out_h, out_w = kernels.output_shape_2d(height, width, self.kernel_size, self.strides, self.padding)
        except ValueError as error:
            raise ValueError(f"{who}: kernel_size {self.kernel_size} does not fit input {input_shape}: {error}") from None
        self.pads = kernels.pads_2d(height, width, self.kernel_size, self.strides, self.padding)
        kernel_shape = self.kernel_size + (channels, self.filters)
        self.params = {"kernel": self.kernel_initializer(kernel_shape, self.dtype)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.filters,), self.dtype)
        self.grads = {key: None for key in self.params}
        return self._build_activation((out_h, out_w, self.filters))

    def _forward(self, x, training):
        convolve = kernels.conv2d_relu_forward if self.relu_in_kernel else kernels.conv2d_forward
        y, cache = convolve(x, self.params["kernel"], self.params.get("bias"), self.strides, self.pads)
        self._cache = cache if training else None
        return self._activate(y, training)

    def _kernel_backward(self, dz, cache, need_dx):
        return kernels.conv2d_backward(dz, cache, need_dx=need_dx)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "activation": self.activation_name,
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        }
