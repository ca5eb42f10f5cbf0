"""BatchNormalization, Keras' arguments, defaults and weight order."""
import math

import numpy as np

from .. import kernels
from ..errors import check_bool, quote
from .base import REGISTRY, Layer, keeps_caches


def _real_number(value, who, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{who}: {what} must be a finite real number, received {quote(value)}")
    return float(value)


@REGISTRY.register()
class BatchNormalization(Layer):
    """Normalise each feature (the `axis` of the input) over the batch, then scale and shift.

    Input and output: (N, units), (N, H, W, C) or any (N, ...) shape; axis=-1 (the channels
    of NHWC images) by default. With F the size of that axis:
        gamma (F,) when scale=True, beta (F,) when center=True        trainable
        moving_mean (F,), moving_variance (F,)                         non-trainable
    training=True:  y = gamma * (x - mean) / sqrt(var + epsilon) + beta, mean and the BIASED
                    variance taken over every axis but `axis`; then
                    moving = moving * momentum + batch * (1 - momentum)   (Keras' rule: PyTorch's
                    momentum is 1 - this one, and its running_var uses the unbiased variance)
    training=False: the same with the moving statistics, which do not change.
    get_weights() = [gamma, beta, moving_mean, moving_variance], without gamma when scale=False
    and without beta when center=False, as Keras.
    """

    weight_names = ("gamma", "beta", "moving_mean", "moving_variance")

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        who = self.describe()
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{who}: axis must be an integer, received {quote(axis)}")
        self.axis = int(axis)
        self.momentum = _real_number(momentum, who, "momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{who}: momentum must be in [0, 1], received {quote(momentum)}")
        self.epsilon = _real_number(epsilon, who, "epsilon")
        if not self.epsilon > 0.0:
            raise ValueError(f"{who}: epsilon must be > 0, received {quote(epsilon)}")
        self.center = check_bool(center, who, "center")
        self.scale = check_bool(scale, who, "scale")
        self._cache = None
        self._inference_cache = None   # (x, y columns, fused ReLU) of an inference forward kept for a backward

    def _build(self, input_shape):
        rank = len(input_shape) + 1
        if not -rank <= self.axis < rank or self.axis % rank == 0:
            raise ValueError(
                f"{self.describe()}: axis {self.axis} is out of range for inputs of rank {rank} "
                f"(shape (batch, {', '.join(map(str, input_shape))})); expected an axis in "
                f"[1, {rank - 1}] or [{-(rank - 1)}, -1], not the batch axis"
            )
        self._feature_axis = self.axis % rank
        features = input_shape[self._feature_axis - 1]
        trainable = {}
        if self.scale:
            trainable["gamma"] = np.ones((features,), dtype=self.dtype)
        if self.center:
            trainable["beta"] = np.zeros((features,), dtype=self.dtype)
        self.params = trainable
        self.state = {"moving_mean": np.zeros((features,), dtype=self.dtype),
                      "moving_variance": np.ones((features,), dtype=self.dtype)}
        self.grads = {key: None for key in self.params}
        return input_shape

    # The face works on (M, F) columns: the feature axis is moved last when it is not there.
    def _columns(self, array):
        if self._feature_axis != array.ndim - 1:
            array = np.moveaxis(array, self._feature_axis, -1)
        return np.ascontiguousarray(array).reshape(-1, array.shape[-1])

    def _uncolumns(self, columns, shape):
        moved = list(shape)
        moved.append(moved.pop(self._feature_axis))
        array = columns.reshape(moved)
        if self._feature_axis != len(shape) - 1:
            array = np.ascontiguousarray(np.moveaxis(array, -1, self._feature_axis))
        return array

    # Sequential runs a BatchNormalization and the ReLU layer right after it as one pass
    # (forward_with_relu): the ReLU costs no pass of its own over the activations either way.
    fuses_following_relu = True
    _relu_follows = False

    def forward_with_relu(self, x, training=False):
        """max(self.forward(x, training), 0) in one pass; the backward that follows then takes
        dy with respect to the ReLU's output. The two layers' numbers, bit for bit."""
        self._relu_follows = True
        try:
            return self.forward(x, training)
        finally:
            self._relu_follows = False

    def inference_ops(self):
        if self._feature_axis != len(self.input_shape):
            return None   # _columns moves the feature axis last: a copy, not a reshape
        return [("batchnorm", self.params.get("gamma"), self.params.get("beta"), self.state["moving_mean"],
                 self.state["moving_variance"], self.epsilon, False)]

    def _forward(self, x, training):
        params, state = self.params, self.state
        y, mean, var, cache = kernels.batchnorm_forward(
            self._columns(x), params.get("gamma"), params.get("beta"), state["moving_mean"],
            state["moving_variance"], self.epsilon, bool(training), relu=self._relu_follows)
        if training:
            keep = x.dtype.type(self.momentum)
            take = x.dtype.type(1.0 - self.momentum)
            for key, batch in (("moving_mean", mean), ("moving_variance", var)):
                moving = state[key]
                moving[...] = moving * keep + batch * take   # in place: set_weights' arrays stay
        self._cache = cache
        self._x_shape = x.shape
        # an inference forward kept for a backward (keeping_caches: explanations): the moving
        # statistics are constants there, so the layer is the affine map of _inference_backward
        self._inference_cache = ((self._columns(x), y, self._relu_follows)
                                 if not training and keeps_caches(training) else None)
        return self._uncolumns(y, x.shape)

    def _inference_backward(self, dy, need_input_gradient):
        """Gradients of y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta
        (then the fused ReLU's mask, when it ran): NumPy, for explanations, not a hot path."""
        x, y, relu = self._inference_cache
        dy = self._columns(dy)
        if relu:
            dy = dy * (y > 0)
        state, dtype = self.state, x.dtype
        inv_std = (1 / np.sqrt(state["moving_variance"] + dtype.type(self.epsilon))).astype(dtype)
        if self.scale:
            self.grads["gamma"] = (dy * ((x - state["moving_mean"]) * inv_std)).sum(axis=0)
        if self.center:
            self.grads["beta"] = dy.sum(axis=0)
        if not need_input_gradient:
            return None
        scale = inv_std * self.params["gamma"] if self.scale else inv_std
        return self._uncolumns(dy * scale, self._x_shape)

    def _backward(self, dy, need_input_gradient=True):
        if self._cache is None and self._inference_cache is not None:
            self._check_grad_array(dy, self._x_shape)
            return self._inference_backward(dy, need_input_gradient)
        if self._cache is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, self._x_shape)
        dx, dgamma, dbeta = kernels.batchnorm_backward(self._columns(dy), self._cache, need_input_gradient)
        if self.scale:
            self.grads["gamma"] = dgamma
        if self.center:
            self.grads["beta"] = dbeta
        return self._uncolumns(dx, self._x_shape) if need_input_gradient else None

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
