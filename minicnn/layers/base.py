"""The layer contract every minicnn layer follows.

Layout: images are NHWC (batch, height, width, channels); conv kernels are (KH, KW, C_in, F).

    __init__(...)            validates hyperparameters; errors name the layer and what it got
    build(input_shape)       input_shape WITHOUT the batch axis; creates `params`, returns the
                             output shape (also without batch)
    forward(x, training)     returns y; keeps exactly what `backward` needs when training
                             (or inside keeping_caches(): the inference forward, kept for
                             a backward, as explanations need); otherwise keeps nothing
    backward(dy)             returns dx and fills `grads` (same keys as `params`); never
                             mutates dy
    get_weights()/set_weights(list)   Keras order (kernel, bias) and shapes
    inference_ops()          optional: forward(x, training=False) as kernel-face ops, which
                             predict binds once for small batches (kernels.inference_plan);
                             None (the default) keeps the layer on the general path

Weights come in two dicts, as Keras' trainable_weights and non_trainable_weights: `params`
holds what optimizers update from `grads` (same keys), `state` what only the layer itself
updates (BatchNormalization's moving statistics). `named_weights()` lists both in Keras' order
(`weight_names`), which is what get/set_weights and model files carry.

dtype in = dtype out: a layer computes in its dtype ('float32' by default, see
minicnn.set_floatx) and refuses input of another float type instead of silently casting.
"""
import contextlib
import itertools
import os
import threading
from collections import defaultdict

import numpy as np

from .. import kernels
from ..config import standardize_dtype
from ..errors import check_bool, quote, shorten
from ..registry import Registry

REGISTRY = Registry("layer")

_inference_keeping = threading.local()


@contextlib.contextmanager
def keeping_caches():
    """Inside: a forward with training=False (moving statistics, no dropout, no augmentation:
    the model as it predicts) still keeps what backward needs, in this thread. Explanations
    (minicnn/explain.py) take gradients of the model as it predicts; a training forward would
    draw dropout masks, augment the image, normalise by the batch's own statistics and update
    the moving ones."""
    previous = getattr(_inference_keeping, "on", False)
    _inference_keeping.on = True
    try:
        yield
    finally:
        _inference_keeping.on = previous


def keeps_caches(training):
    """Whether a forward keeps what backward needs: when training, or inside keeping_caches()."""
    return bool(training) or getattr(_inference_keeping, "on", False)


def read_only_output(y, x):
    """y, made read-only unless it is the input itself: the output of a forward that keeps
    caches, which the backward may read (a ReLU's or softmax's output, the C engine's fused
    ReLU mask). Written in place, it would silently change the gradients; read-only, the write
    raises instead. Caches are kept only when training (or inside keeping_caches()), so
    predict's outputs stay writable."""
    if y is not x and type(y) is np.ndarray:
        y.flags.writeable = False
    return y

_name_counters = defaultdict(itertools.count)


def _snake_case(class_name):
    out = []
    for i, ch in enumerate(class_name):
        if ch.isupper() and i and not class_name[i - 1].isupper() and not class_name[i - 1].isdigit():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def unique_name(class_name):
    """Keras-style automatic names: conv2d, conv2d_1, max_pooling2d, dense_2 ..."""
    base = _snake_case(class_name)
    n = next(_name_counters[base])
    return base if n == 0 else f"{base}_{n}"


class Layer:
    """Base class: bookkeeping shared by all layers; the maths lives in subclasses."""

    activation_name = None   # 'relu' / 'softmax' / 'linear' for layers that apply one
    # True for layers with forward_with_relu(x, training): Sequential then runs a ReLU layer
    # that follows them as part of their pass (BatchNormalization).
    fuses_following_relu = False
    # How many times a public attribute was set (bn.epsilon = 1e-2, dropout.rate = 0.3,
    # layer.trainable = False). The inference and training plans copy such settings into their
    # C calls when they are made, so they keep this count and are remade when it moves; the
    # private attributes a forward sets every call (caches) leave it alone.
    _settings_version = 0

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name[0] != "_":
            object.__setattr__(self, "_settings_version", self._settings_version + 1)

    def __init__(self, name=None, dtype=None, input_shape=None, trainable=True):
        who = type(self).__name__
        self.name = name if name is not None else unique_name(who)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{who}: name must be a non-empty string, received {quote(name)}")
        self.dtype = standardize_dtype(dtype, who)
        self.dtype_was_given = dtype is not None
        self.trainable = check_bool(trainable, self.describe(), "trainable")
        self.params = {}   # trainable weights by name; optimizers update them from grads
        self.state = {}    # non-trainable weights by name; only the layer updates them
        self.grads = {}
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self.declared_input_shape = None
        if input_shape is not None:
            self.declared_input_shape = as_shape(input_shape, who, "input_shape")

    # -- building ---------------------------------------------------------------------------
    def build(self, input_shape):
        """Create parameters for inputs of `input_shape` (no batch axis); return the output shape.

        A layer is built once, as in Keras: building it again for the same shape keeps its
        weights (a trained layer reused in a new model, `Sequential(base.layers[:-1] + [head])`,
        shares them), and a built layer refuses another shape, since new weights would silently
        replace the ones every model holding the layer uses."""
        input_shape = as_shape(input_shape, self.describe(), "input_shape")
        if self.declared_input_shape is not None and input_shape != self.declared_input_shape:
            raise ValueError(
                f"{self.describe()}: was declared with input_shape={self.declared_input_shape} "
                f"but is being built for {input_shape}"
            )
        if self.built:
            if input_shape == self.input_shape:
                return self.output_shape
            raise ValueError(
                f"{self.describe()}: is already built for inputs of shape {self.input_shape} and "
                f"cannot be built again for {input_shape} (its weights, shared by every model that "
                f"holds the layer, are made for the first shape); use a new layer for the new shape"
            )
        self.output_shape = self._build(input_shape)
        self.input_shape = input_shape
        self.built = True
        return self.output_shape

    def unbuild(self):
        """Back to before build (no weights, no shapes): Sequential.build undoes the layers it
        built when a later layer refuses the shape."""
        self.params, self.state, self.grads = {}, {}, {}
        self.input_shape = self.output_shape = None
        self.built = False
        if getattr(self, "activation", None) is not None:   # Conv2D/Dense's own activation layer
            self.activation.unbuild()

    def _build(self, input_shape):
        """Subclasses: check the shape, create params, return the output shape."""
        return input_shape

    def adopt_dtype(self, dtype):
        """Compute in `dtype` from now on (a model passes its dtype to layers not given one).

        Only possible before the layer has parameters.
        """
        if self.built and self.count_params() and self.dtype != dtype:   # moving statistics too
            raise RuntimeError(f"{self.describe()}: cannot change dtype after its parameters exist")
        self.dtype = dtype
        if getattr(self, "activation", None) is not None:
            self.activation.adopt_dtype(dtype)

    # -- computing --------------------------------------------------------------------------
    def forward(self, x, training=False):
        """y = layer(x). Builds the layer on first use like Keras."""
        self._check_or_build(x)
        y = self._forward(x, training)
        return read_only_output(y, x) if keeps_caches(training) else y

    def _check_or_build(self, x):
        """forward's input check; an unbuilt layer is built for x's shape."""
        if self.built:
            self._check_input_array(x, expected_shape=self.input_shape)
        else:
            self._check_input_array(x, expected_shape=None)
            self.build(x.shape[1:])   # the shape this batch has, checked by build

    def fuses_following_maxpool(self, following):
        """Whether Sequential.forward may run this layer and `following` (the next layer) as one
        call, forward_with_maxpool: a convolution and its max pool (Conv2D). No other layer."""
        return False

    def takes_gradient_from(self, following):
        """Whether Sequential.backward may hand `following`'s (the next layer's) dy straight to
        this layer, whose backward_from_... then does the follower's backward too: a max pool's
        into the convolution under it (Conv2D). No other layer does."""
        return False

    def backward(self, dy, need_input_gradient=True):
        """dx for an upstream gradient dy of the forward output's shape; fills self.grads.

        need_input_gradient=False lets a layer skip computing dx (the first layer of a model
        never needs it) and return None.
        """
        if not self.built:
            raise RuntimeError(f"{self.describe()}: backward called before forward")
        return self._backward(dy, need_input_gradient)

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    def _forward(self, x, training):
        raise NotImplementedError

    def _backward(self, dy, need_input_gradient):
        raise NotImplementedError

    def inference_ops(self):
        """forward(x, training=False) of this built layer as the kernel face's ops (listed by
        kernels.inference_plan), for the small-batch fast path of predict; None when the layer
        has no such description, and models then run it the general way."""
        return None

    # -- weights ----------------------------------------------------------------------------
    weight_names = ()

    def named_weights(self):
        """[(name, array)] of every weight, trainable (params) or not (state), in Keras' order
        (weight_names, e.g. kernel, bias; gamma, beta, moving_mean, moving_variance)."""
        return [(key, self.params[key] if key in self.params else self.state[key])
                for key in self.weight_names if key in self.params or key in self.state]

    def get_weights(self):
        """Copies of the weights in Keras' order (e.g. [kernel, bias])."""
        return [array.copy() for _, array in self.named_weights()]

    def set_weights(self, weights):
        """Overwrite the weights in place (Keras order and shapes); the arrays are copied.
        Every array is checked before any is written (see checked_weights)."""
        self.write_weights(self.checked_weights(weights))

    def write_weights(self, checked):
        """Copy checked_weights' result into the weights, in place: optimizers and models keep
        their references to the arrays."""
        targets = dict(self.named_weights())
        for key, value in checked:
            targets[key][...] = value

    def checked_weights(self, weights):
        """[(key, array in the layer's dtype)] for `weights`, or ValueError naming the layer and
        the weight: a wrong count or shape, NaN or inf, or a value that overflows the layer's
        dtype (1e300 becomes inf in float32, and every prediction NaN). Writes nothing."""
        named = dict(self.named_weights())
        keys = list(named)
        if not self.built:
            raise RuntimeError(f"{self.describe()}: set_weights before the layer is built")
        weights = list(weights)
        if len(weights) != len(keys):
            raise ValueError(
                f"{self.describe()}: expected {len(keys)} weight arrays {keys}, received {len(weights)}"
            )
        checked = []
        for key, value in zip(keys, weights):
            target = named[key]
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(
                    f"{self.describe()}: weight '{key}' must have shape {target.shape}, "
                    f"received {value.shape}"
                )
            if value.dtype.kind not in "biuf":
                raise TypeError(f"{self.describe()}: weight '{key}' must hold real numbers, received dtype {value.dtype}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{self.describe()}: weight '{key}' contains NaN or inf")
            with np.errstate(over="ignore"):
                converted = value.astype(target.dtype, copy=False)
            if not np.all(np.isfinite(converted)):
                limit = np.finfo(target.dtype).max
                raise ValueError(
                    f"{self.describe()}: weight '{key}' holds values beyond the {target.dtype} range "
                    f"(|value| <= {limit:.4g}), which would become inf; largest |value| is "
                    f"{float(np.abs(value).max()):.4g}"
                )
            checked.append((key, converted))
        return checked

    def count_params(self):
        """Every weight's elements, trainable or not (Keras' "Total params" share)."""
        return int(sum(p.size for p in self.params.values())) + self.count_non_trainable_params()

    def count_non_trainable_params(self):
        """Elements of the weights no optimizer updates (e.g. BatchNormalization's moving statistics)."""
        return int(sum(p.size for p in self.state.values()))

    # -- description ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config):
        """Inverse of get_config (initializers may be given as their serialized descriptions)."""
        return cls(**config)

    def get_config(self):
        """Keyword arguments that recreate this layer (JSON-ready)."""
        config = {"name": self.name, "dtype": self.dtype, "trainable": self.trainable}
        if self.declared_input_shape is not None:
            config["input_shape"] = list(self.declared_input_shape)
        return config

    def describe(self):
        return f"{type(self).__name__} '{shorten(self.name)}'"

    def __repr__(self):
        return f"<{type(self).__name__} name={quote(self.name)} built={self.built}>"

    # -- helpers for subclasses -------------------------------------------------------------
    def _check_input_array(self, x, expected_shape):
        who = self.describe()
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{who}: input must be a NumPy array, received {type(x).__name__}")
        if x.dtype != self.dtype:
            # Suggest dtype= only where it would work: a layer computes in float32 or float64.
            other = f" or create the layer with dtype='{x.dtype}'" if x.dtype in (np.float32, np.float64) else ""
            raise TypeError(
                f"{who}: input dtype must be {self.dtype} (the layer's dtype), received {x.dtype}; "
                f"cast with x.astype('{self.dtype}'){other}"
            )
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"{who}: input must have a non-empty batch axis, received shape {x.shape}")
        if expected_shape is not None and x.shape[1:] != tuple(expected_shape):
            raise ValueError(
                f"{who}: expected input of shape (batch, {', '.join(map(str, expected_shape))}), "
                f"received {x.shape}"
            )

    def _check_grad_array(self, dy, expected_shape):
        who = self.describe()
        if not isinstance(dy, np.ndarray) or dy.shape != tuple(expected_shape):
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(f"{who}: upstream gradient must have shape {tuple(expected_shape)}, received {got}")
        if dy.dtype != self.dtype:
            raise TypeError(f"{who}: upstream gradient must be {self.dtype}, received {dy.dtype}")


def as_shape(shape, who, what):
    """A tuple of positive ints; 28.5 and True are refused, not truncated or read as 1."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{who}: {what} must be a tuple of positive integers, received {quote(shape)}") from None
    if not dims or not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 1
                           for d in dims):
        raise ValueError(f"{who}: {what} must be a tuple of positive integers, received {quote(shape)}")
    if any(d > LARGEST_DIMENSION for d in dims):   # a model file once declared (13, 1.4e18, 1)
        raise ValueError(f"{who}: {what} must have dimensions of at most {LARGEST_DIMENSION:,} (the engines' "
                         f"largest), received {quote(shape)}")
    return tuple(int(d) for d in dims)


def normalize_tuple(value, n, who, what, allow_zero=False):
    """An int or an n-sequence of ints -> an n-tuple, as Keras' conv_utils.normalize_tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(f"{who}: {what} must be an int or a tuple of {n} ints, received {quote(value)}") from None
        if len(values) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{who}: {what} must be an int or a tuple of {n} ints, received {quote(value)}")
        values = tuple(int(v) for v in values)
    low = 0 if allow_zero else 1
    if any(v < low for v in values):
        raise ValueError(f"{who}: {what} must be >= {low}, received {quote(value)}")
    if any(v > LARGEST_DIMENSION for v in values):
        raise ValueError(f"{who}: {what} must be at most {LARGEST_DIMENSION:,} (the engines' largest "
                         f"dimension), received {quote(value)}")
    return values


# The C engine computes with dimensions up to 2**24 (csrc/kernels.c MC_DIM_MAX); a layer refuses
# larger sizes when it is made, naming itself, instead of failing at its first forward.
LARGEST_DIMENSION = 1 << 24


def new_weight(who, name, initializer, shape, dtype):
    """initializer(shape, dtype), refused with a MemoryError that names the layer when the
    array could not fit in this machine's memory (a typo like Dense(2**31) would otherwise
    be killed by the OS, or swap for minutes, with no message)."""
    size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    available = _physical_memory_bytes()
    if available and size > available:
        raise MemoryError(f"{who}: weight '{name}' of shape {tuple(shape)} needs {size / 2**30:,.1f} GiB, "
                          f"more than this machine's {available / 2**30:,.1f} GiB of memory")
    return initializer(shape, dtype)


def _physical_memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):   # not POSIX: no check
        return 0


def window_geometry(who, input_shape, window, strides, padding, what):
    """((out_h, out_w), channels, pads) of a window (a kernel or a pool) sliding over
    (height, width, channels) inputs; ValueError naming `who` when it does not fit."""
    if len(input_shape) != 3:
        raise ValueError(
            f"{who}: expected inputs of shape (height, width, channels) per image, received {input_shape}"
        )
    height, width, channels = input_shape
    try:
        output = kernels.output_shape_2d(height, width, window, strides, padding)
    except ValueError as error:
        raise ValueError(f"{who}: {what} {window} does not fit input {input_shape}: {error}") from None
    return output, channels, kernels.pads_2d(height, width, window, strides, padding)


def normalize_padding(value, who):
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{who}: padding must be 'valid' or 'same', received {quote(value)}")
    return value.lower()
