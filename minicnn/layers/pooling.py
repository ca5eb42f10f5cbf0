"""Pooling over NHWC images: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D."""
from .. import kernels
from ..errors import check_bool, quote
from .base import REGISTRY, Layer, normalize_padding, normalize_tuple, window_geometry, keeps_caches


class _Pooling2D(Layer):
    """What MaxPooling2D and AveragePooling2D share (Keras' BasePooling): the arguments, the
    window geometry and the cache; each names its kernel face pair."""

    _pool_forward = _pool_backward = None   # staticmethods: the face's forward and backward

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        who = self.describe()
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' (NHWC) is supported, received {quote(data_format)}")
        self.pool_size = normalize_tuple(pool_size, 2, who, "pool_size")
        self.strides = self.pool_size if strides is None else normalize_tuple(strides, 2, who, "strides")
        self.padding = normalize_padding(padding, who)
        self._cache = None

    def _build(self, input_shape):
        (out_h, out_w), channels, self.pads = window_geometry(
            self.describe(), input_shape, self.pool_size, self.strides, self.padding, "pool_size")
        return (out_h, out_w, channels)

    def _forward(self, x, training):
        y, cache = self._pool_forward(x, self.pool_size, self.strides, self.pads)
        self._cache = cache if keeps_caches(training) else None
        return y

    def _backward(self, dy, need_input_gradient=True):
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        return self._pool_backward(dy, self._cache)

    def inference_ops(self):
        return [(self._inference_op, self.pool_size, self.strides, self.pads)]

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


@REGISTRY.register()
class MaxPooling2D(_Pooling2D):
    """Max over pool_size windows moved by strides (default: strides = pool_size).

    Input  x: (N, H, W, C)  ->  output y: (N, OH, OW, C)
        padding="valid": OH = 1 + (H - PH) // stride_h   (odd sizes floor, as Keras)
        padding="same":  OH = ceil(H / stride_h), the border padded with -inf so it never wins

    Gradient rule for ties: when several inputs of a window share the maximum, the FIRST one in
    row-major window order takes the whole gradient and the others get zero. This is PyTorch's
    rule (TensorFlow's differs in rare cases); the tests pin it. A NaN in a window propagates to
    the output and takes the gradient.
    """

    _pool_forward = staticmethod(kernels.maxpool2d_forward)
    _inference_op = "maxpool2d"
    _pool_backward = staticmethod(kernels.maxpool2d_backward)

    def take_fused_cache(self, cache, training):
        """Keep the cache of the forward the convolution before this pool ran for it
        (Conv2D.forward_with_maxpool), as this layer's own forward would."""
        self._cache = cache if keeps_caches(training) else None


@REGISTRY.register()
class AveragePooling2D(_Pooling2D):
    """Mean over pool_size windows moved by strides (default: strides = pool_size).

    Input  x: (N, H, W, C)  ->  output y: (N, OH, OW, C), sizes as MaxPooling2D:
        padding="valid": OH = 1 + (H - PH) // stride_h
        padding="same":  OH = ceil(H / stride_h); a border window averages only its cells
                         inside the image (TensorFlow's rule; PyTorch's count_include_pad=False)
    The gradient of each output is shared equally by the cells it averaged.
    """

    _pool_forward = staticmethod(kernels.avgpool2d_forward)
    _inference_op = "avgpool2d"
    _pool_backward = staticmethod(kernels.avgpool2d_backward)


@REGISTRY.register()
class GlobalAveragePooling2D(Layer):
    """Mean over height and width: (N, H, W, C) -> (N, C), or (N, 1, 1, C) with keepdims=True
    (Keras' argument). Each pixel receives dy / (H * W)."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        who = self.describe()
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' (NHWC) is supported, received {quote(data_format)}")
        self.keepdims = check_bool(keepdims, who, "keepdims")
        self._cache = None

    def _build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"{self.describe()}: expected inputs of shape (height, width, channels) per image, "
                f"received {input_shape}"
            )
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def _forward(self, x, training):
        y, cache = kernels.global_avgpool2d_forward(x)
        self._cache = cache if keeps_caches(training) else None
        return y.reshape((y.shape[0],) + self.output_shape)

    def inference_ops(self):
        # the face's global average pooling is this one window as large as the image
        return [("avgpool2d", self.input_shape[:2], (1, 1), (0, 0, 0, 0)), ("reshape", self.output_shape)]

    def _backward(self, dy, need_input_gradient=True):
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, (self._cache.y_shape[0],) + self.output_shape)
        return kernels.global_avgpool2d_backward(dy.reshape(self._cache.y_shape), self._cache)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}
