"""Activation layers. Each can stand alone in a model or be used through `activation=`.

ReLU:     y = max(x, 0);           dx = dy * (x > 0)   (the gradient at exactly 0 is 0, as in
                                                       Keras and PyTorch)
Softmax:  y = exp(x - max x) / sum exp(x - max x) along `axis` (max-subtracted, so no overflow)
          dx = y * (dy - sum(dy * y))  -- the Jacobian-vector product J^T dy, not an
          approximation; when softmax feeds cross-entropy the model uses the fused gradient.
"""
import functools

import numpy as np

from .. import initializers, kernels
from ..errors import check_bool, quote
from .base import REGISTRY, Layer, new_weight, keeps_caches


class Activation(Layer):
    """Base for element-wise or row-wise activations: no parameters, shape preserved."""

    activation_name = None

    def _build(self, input_shape):
        return input_shape


@REGISTRY.register()
class Linear(Activation):
    """Identity; what activation=None or 'linear' means."""

    activation_name = "linear"

    def _forward(self, x, training):
        return x

    def inference_ops(self):
        return []

    def _backward(self, dy, need_input_gradient=True):
        self._check_grad_array(dy, (dy.shape[0],) + self.output_shape)
        return dy


@REGISTRY.register()
class ReLU(Activation):
    """Rectified linear unit. Input and output: any shape (batch, ...)."""

    activation_name = "relu"
    _y = None          # the output of the last training forward; None until there is one
    _applied_by_previous = False   # see take_fused_output

    def _forward(self, x, training):
        y = kernels.relu_forward(x)
        self._y = y if keeps_caches(training) else None
        self._applied_by_previous = False
        return y

    def inference_ops(self):
        return [("relu",)]

    def take_fused_output(self, y, training=False):
        """The previous layer applied this ReLU itself (BatchNormalization.forward_with_relu)
        and produced y: remember it as this layer's output, and let the backward pass dy
        through unchanged, since the previous layer's backward applies the mask."""
        self._check_input_array(y, expected_shape=self.input_shape)
        self._y = y if keeps_caches(training) else None
        self._applied_by_previous = True
        return y

    def _backward(self, dy, need_input_gradient=True):
        if self._y is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, self._y.shape)
        if self._applied_by_previous:
            return dy
        return kernels.relu_backward(dy, self._y)  # a new array: dy is never modified


@REGISTRY.register()
class Softmax(Activation):
    """Softmax along `axis` (default -1, the class axis). Input and output: (batch, ..., classes)."""

    activation_name = "softmax"
    _y = None          # the output of the last training forward; None until there is one

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{self.describe()}: axis must be an int, received {quote(axis)}")
        self.axis = int(axis)

    def _build(self, input_shape):
        if not -len(input_shape) <= self.axis <= len(input_shape) or self.axis == 0:
            raise ValueError(
                f"{self.describe()}: axis {self.axis} is not a feature axis of inputs shaped "
                f"(batch, {', '.join(map(str, input_shape))})"
            )
        return input_shape

    def _forward(self, x, training):
        y = softmax(x, self.axis)
        self._y = y if keeps_caches(training) else None
        return y

    def inference_ops(self):
        return [("function", functools.partial(softmax, axis=self.axis))]

    def _backward(self, dy, need_input_gradient=True):
        if self._y is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, self._y.shape)
        y = self._y
        return y * (dy - np.sum(dy * y, axis=self.axis, keepdims=True))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# The functions below are what minicnn.nn exports, so that tutorial code written as
# `activation=tf.nn.relu` ports as `activation=minicnn.nn.relu`. On arrays they compute directly;
# given to `activation=` they stand for the matching layer, whose backward pass is hand-written.

def relu(x):
    """max(x, 0), element-wise."""
    return np.maximum(x, 0)


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along axis, max-subtracted so large logits cannot overflow."""
    x = np.asarray(x)
    # the ufuncs' reduce methods are what np.max and np.sum call (the same bits), without their
    # Python wrappers: 3 of a single-image prediction's 6 us of softmax
    e = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    if e.dtype.kind != "f":                # integers: exp's float64, as np.exp(ints) gives
        e = e.astype(np.float64)
    np.exp(e, out=e)                       # in place: one array for the whole computation
    e /= np.add.reduce(e, axis=axis, keepdims=True)
    return e


def linear(x):
    """The identity."""
    return x


def ends_in_softmax(layers):
    """True when the last of `layers` outputs a softmax (a Softmax layer or activation='softmax')."""
    return bool(layers) and layers[-1].activation_name == "softmax"


ACTIVATION_LAYERS = {cls.activation_name: cls for cls in (Linear, ReLU, Softmax)}
_FUNCTION_NAMES = {relu: "relu", softmax: "softmax", linear: "linear"}


def activation_name(identifier, who):
    """'relu' / 'softmax' / 'linear' for a string, None, or one of the functions above."""
    if identifier is None:
        return "linear"
    if isinstance(identifier, str) and identifier.lower() in ACTIVATION_LAYERS:
        return identifier.lower()
    if callable(identifier) and identifier in _FUNCTION_NAMES:
        return _FUNCTION_NAMES[identifier]
    raise ValueError(
        f"{who}: unknown activation {quote(identifier)}; expected None, one of "
        f"{sorted(ACTIVATION_LAYERS)}, or minicnn.nn.relu / minicnn.nn.softmax (an arbitrary "
        f"function has no backward pass minicnn could use)"
    )


def make_activation(name, dtype, owner_name):
    """A fresh activation layer for `name`, or None for 'linear'."""
    if name == "linear":
        return None
    return ACTIVATION_LAYERS[name](name=f"{owner_name}_{name}", dtype=dtype)


class WithActivation:
    """Mixin for layers with a kernel, an optional bias and `activation=` (Conv2D, Dense):
    y = activation(z), z = the layer's product with params['kernel'] (+ params['bias']).

    The subclass computes z in `_forward` (keeping the kernel's cache in `self._cache`) and
    names its kernel's backward in `_kernel_backward`; this mixin runs the activation forward
    and backward around it. ReLU is the exception: it is fused into the kernel
    (`relu_in_kernel`), whose forward applies max(z, 0) and whose backward masks dz by y > 0
    itself, saving a pass over the activations each way. The fused softmax + cross-entropy
    (minicnn.training.losses) hands its dL/dz to `backward_preactivation` directly.
    """

    _cache = None

    def _set_kernel_and_activation(self, activation, use_bias, kernel_initializer, bias_initializer):
        who = self.describe()
        self.activation_name = activation_name(activation, who)
        self.activation = make_activation(self.activation_name, self.dtype, self.name)
        self.relu_in_kernel = self.activation_name == "relu"
        self.use_bias = check_bool(use_bias, who, "use_bias")
        self.kernel_initializer = initializers.get(kernel_initializer, f"{who} kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, f"{who} bias_initializer")

    def _build_kernel_and_activation(self, kernel_shape, output_shape):
        """Create params (the kernel first, then the bias: the order of the random draws) and
        build the activation; returns output_shape."""
        who = self.describe()
        self.params = {"kernel": new_weight(who, "kernel", self.kernel_initializer, kernel_shape, self.dtype)}
        if self.use_bias:
            self.params["bias"] = new_weight(who, "bias", self.bias_initializer, (kernel_shape[-1],), self.dtype)
        self.grads = {key: None for key in self.params}
        if self.activation is not None:
            self.activation.build(output_shape)
        return output_shape

    def _kernel_and_activation_config(self):
        return {
            "activation": self.activation_name,
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
        }

    def _with_activation_ops(self, ops):
        """The kernel's inference ops followed by the activation's (none when fused or linear)."""
        if self.activation is None or self.relu_in_kernel:
            return ops
        after = self.activation.inference_ops()
        return None if after is None else ops + after

    def _activate(self, z, training):
        if self.activation is None or self.relu_in_kernel:
            return z
        return self.activation.forward(z, training)

    def _backward(self, dy, need_input_gradient=True):
        if self.activation is not None and not self.relu_in_kernel:
            dy = self.activation.backward(dy)
        return self.backward_preactivation(dy, need_input_gradient)

    def backward_preactivation(self, dz, need_input_gradient=True):
        """Backward from dz, the gradient w.r.t. the output *before* the activation (z, shaped
        like the layer's output); fills grads['kernel'] (and grads['bias']) and returns dx, or
        None when need_input_gradient is False. With the ReLU fused into the kernel, the kernel
        masks dz by y > 0 itself (a no-op for a gradient already zero where the ReLU was off)."""
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        dx, dkernel, dbias = self._kernel_backward(dz, self._cache, need_dx=need_input_gradient)
        self._keep_gradients(dkernel, dbias)
        return dx

    def _keep_gradients(self, dkernel, dbias):
        self.grads["kernel"] = dkernel
        if self.use_bias:
            self.grads["bias"] = dbias
