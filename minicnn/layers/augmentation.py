"""Data augmentation layers: RandomFlip and RandomTranslation, active only when training."""
import math

import numpy as np

from ..errors import quote
from .base import REGISTRY, keeps_caches
from .regularization import RandomLayer


def _check_images(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(
            f"{layer.describe()}: expected inputs of shape (height, width, channels) per image, "
            f"received {input_shape}"
        )
    return input_shape


@REGISTRY.register()
class RandomFlip(RandomLayer):
    """Flip each image of an (N, H, W, C) batch left-right ("horizontal"), upside down
    ("vertical") or either, independently ("horizontal_and_vertical", Keras' default), each
    with probability 1/2, when training; the identity otherwise. A flip is its own adjoint:
    backward flips dy the same way."""

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not isinstance(mode, str) or mode not in self.MODES:
            raise ValueError(f"{self.describe()}: mode must be one of {self.MODES}, received {quote(mode)}")
        self.mode = mode
        self._flips = None

    def _build(self, input_shape):
        return _check_images(self, input_shape)

    def inference_ops(self):
        return []   # the identity when not training

    def _forward(self, x, training):
        if not training:
            # the identity; kept for a backward (keeping_caches) as flipping nothing
            none = np.zeros(x.shape[0], bool)
            self._flips = (none, none) if keeps_caches(training) else None
            return x
        n = x.shape[0]
        generator = self._generator()
        rows = generator.random(n) < 0.5 if self.mode != "horizontal" else np.zeros(n, bool)
        cols = generator.random(n) < 0.5 if self.mode != "vertical" else np.zeros(n, bool)
        self._flips = (rows, cols)
        return self._flip(x)

    def _flip(self, x):
        rows, cols = self._flips
        y = x.copy()
        y[rows] = y[rows, ::-1]
        y[cols] = y[cols, :, ::-1]
        return y

    def _backward(self, dy, need_input_gradient=True):
        if self._flips is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        self._check_grad_array(dy, (self._flips[0].size,) + self.input_shape)
        return self._flip(dy) if need_input_gradient else None

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _factor_range(value, who, what):
    """Keras' factor: f -> (-f, f); (lo, hi) as given; every value in [-1, 1], lo <= hi."""
    def number(v):
        return (not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer, np.floating))
                and math.isfinite(v))
    if number(value):
        low, high = -abs(float(value)), abs(float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(number(v) for v in value):
        low, high = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{who}: {what} must be a number or a (low, high) pair, received {quote(value)}")
    if not -1.0 <= low <= high <= 1.0:
        raise ValueError(f"{who}: {what} must lie in [-1, 1] with low <= high, received {quote(value)}")
    return low, high


def _shift_into(destination, source, down, right):
    """destination[i, j] = source[i - down, j - right] where that cell exists (one image)."""
    h, w = source.shape[:2]
    if abs(down) >= h or abs(right) >= w:
        return
    destination[max(down, 0):h + min(down, 0), max(right, 0):w + min(right, 0)] = \
        source[max(-down, 0):h - max(down, 0), max(-right, 0):w - max(right, 0)]


@REGISTRY.register()
class RandomTranslation(RandomLayer):
    """Shift each image of an (N, H, W, C) batch by a whole number of pixels when training;
    the identity otherwise.

    height_factor / width_factor as Keras: a number f means a shift drawn uniformly from
    [-f, f] of the height (width), a pair (low, high) from [low, high]; the shift is rounded
    to whole pixels, positive moving the image down (right). Uncovered cells take fill_value
    (fill_mode="constant", the only mode implemented; note Keras' default is "reflect" with
    bilinear interpolation). Backward shifts dy back (the adjoint): the filled cells got no
    gradient from x.
    """

    def __init__(self, height_factor, width_factor, fill_mode="constant", interpolation="nearest",
                 seed=None, fill_value=0.0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        who = self.describe()
        self.height_factor = _factor_range(height_factor, who, "height_factor")
        self.width_factor = _factor_range(width_factor, who, "width_factor")
        if fill_mode != "constant":
            raise ValueError(f"{who}: fill_mode must be 'constant' (the only mode implemented), "
                             f"received {quote(fill_mode)}")
        if interpolation != "nearest":
            raise ValueError(f"{who}: interpolation must be 'nearest' (shifts are whole pixels), "
                             f"received {quote(interpolation)}")
        if isinstance(fill_value, (bool, np.bool_)) or not isinstance(fill_value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(fill_value):
            raise ValueError(f"{who}: fill_value must be a finite number, received {quote(fill_value)}")
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self._shifts = None

    def _build(self, input_shape):
        return _check_images(self, input_shape)

    def inference_ops(self):
        return []   # the identity when not training

    def _forward(self, x, training):
        if not training:
            # the identity; kept for a backward (keeping_caches) as shifting by nothing
            none = np.zeros(x.shape[0], int)
            self._shifts = (none, none) if keeps_caches(training) else None
            return x
        n, h, w = x.shape[:3]
        generator = self._generator()
        down = np.rint(generator.uniform(*self.height_factor, size=n) * h).astype(int)
        right = np.rint(generator.uniform(*self.width_factor, size=n) * w).astype(int)
        self._shifts = (down, right)
        y = np.full_like(x, self.fill_value)
        for image in range(n):
            _shift_into(y[image], x[image], down[image], right[image])
        return y

    def _backward(self, dy, need_input_gradient=True):
        if self._shifts is None:
            raise RuntimeError(f"{self.describe()}: backward needs a forward with training=True")
        down, right = self._shifts
        self._check_grad_array(dy, (down.size,) + self.input_shape)
        if not need_input_gradient:
            return None
        dx = np.zeros_like(dy)
        for image in range(dy.shape[0]):
            _shift_into(dx[image], dy[image], -down[image], -right[image])
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "height_factor": list(self.height_factor),
            "width_factor": list(self.width_factor),
            "fill_mode": self.fill_mode,
            "interpolation": self.interpolation,
            "fill_value": self.fill_value,
        }
