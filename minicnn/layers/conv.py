"""Conv2D: 2-D convolution over NHWC images, Keras' arguments and weight layout."""
import numpy as np

from .. import kernels
from ..errors import quote
from .activations import WithActivation
from .base import (LARGEST_DIMENSION, REGISTRY, Layer, keeps_caches, normalize_padding, normalize_tuple,
                   read_only_output, window_geometry)
from .pooling import MaxPooling2D


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
        if isinstance(filters, (bool, np.bool_)) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"{who}: filters must be a positive integer, received {quote(filters)}")
        if filters > LARGEST_DIMENSION:
            raise ValueError(f"{who}: filters must be at most {LARGEST_DIMENSION:,} (the engines' largest "
                             f"dimension), received {quote(filters)}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' (NHWC) is supported, received {quote(data_format)}")
        self.filters = int(filters)   # a NumPy integer too: the config stays plain JSON
        self.kernel_size = normalize_tuple(kernel_size, 2, who, "kernel_size")
        self.strides = normalize_tuple(strides, 2, who, "strides")
        self.padding = normalize_padding(padding, who)
        self._set_kernel_and_activation(activation, use_bias, kernel_initializer, bias_initializer)

    def _build(self, input_shape):
        (out_h, out_w), channels, self.pads = window_geometry(
            self.describe(), input_shape, self.kernel_size, self.strides, self.padding, "kernel_size")
        return self._build_kernel_and_activation(self.kernel_size + (channels, self.filters),
                                                 (out_h, out_w, self.filters))

    # Sequential runs a Conv2D and the MaxPooling2D right after it as one call each way
    # (forward_with_maxpool, backward_from_maxpool) when fuses_following_maxpool says so
    def fuses_following_maxpool(self, following):
        """True for a built MaxPooling2D right after this layer (exactly these classes: a
        subclass may have passes of its own) when this layer's activation is none or the ReLU
        in its kernel and the pool's windows neither overlap nor reach padding."""
        return (type(self) is Conv2D and type(following) is MaxPooling2D and following.built
                and (self.activation is None or self.relu_in_kernel)
                and kernels.maxpool_follows_conv_exactly(following.pool_size, following.strides,
                                                         following.pads))

    def forward_with_maxpool(self, x, pool, training=False, check_input=True):
        """pool.forward(self.forward(x, training), training) as one call
        (kernels.conv2d_maxpool_forward: the two layers' numbers, bit for bit, without keeping
        this layer's output); both layers keep their caches for backward_from_maxpool.
        check_input=False skips the input check (Sequential checked the model's input once).
        The pool is an argument all the way down, never a layer attribute: two threads predicting
        with one model once met in such an attribute, and one convolved without its pool."""
        if check_input:
            self._check_or_build(x)
        pooled, cache, pool_cache = kernels.conv2d_maxpool_forward(
            x, self.params["kernel"], self.params.get("bias"), self.strides, self.pads,
            pool.pool_size, pool.strides, relu=self.relu_in_kernel, keep_cache=keeps_caches(training))
        self._cache = cache
        pool.take_fused_cache(pool_cache, training)
        return read_only_output(pooled, x) if keeps_caches(training) else pooled

    def _forward(self, x, training):
        convolve = kernels.conv2d_relu_forward if self.relu_in_kernel else kernels.conv2d_forward
        # without training no backward follows (unless keeping_caches): the engine keeps
        # nothing for one (the C engine then never writes the padded batch)
        y, self._cache = convolve(x, self.params["kernel"], self.params.get("bias"), self.strides,
                                  self.pads, keep_cache=keeps_caches(training))
        return self._activate(y, training)

    def inference_ops(self):
        return self._with_activation_ops([("conv2d", self.params["kernel"], self.params.get("bias"),
                                           self.strides, self.pads, self.relu_in_kernel)])

    # the kernel face's function itself: no extra call per step
    _kernel_backward = staticmethod(kernels.conv2d_backward)

    def takes_gradient_from(self, following):
        """True when fuses_following_maxpool(following) and both layers ran forward in
        training (together or one by one: backward_from_maxpool takes either cache)."""
        return (self.fuses_following_maxpool(following) and self._cache is not None
                and following._cache is not None)

    def backward_from_maxpool(self, dy, pool, need_input_gradient=True):
        """self.backward(pool.backward(dy)) as one pass, the same bits
        (kernels.conv2d_backward_from_maxpool); fills grads, returns dx or None."""
        if self._cache is None or pool._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        dx, dkernel, dbias = kernels.conv2d_backward_from_maxpool(
            dy, self._cache, pool._cache, need_dx=need_input_gradient)
        self._keep_gradients(dkernel, dbias)
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            **self._kernel_and_activation_config(),
        }
