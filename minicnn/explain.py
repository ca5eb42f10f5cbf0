"""Why did the model say that? Saliency maps and Grad-CAM, from the layers' own backward passes.

Both methods explain one class score per image: the *logit* of the chosen class (the input of
the model's final softmax when it ends in one, the model's output otherwise), by default the
class the model predicts.

- saliency (Simonyan et al., 2014): |d score / d input|, the largest over the channels. It shows
  which pixels would change the score most: sharp, noisy, per pixel.
- Grad-CAM (Selvaraju et al., 2017): at a convolution layer's output A (after its activation,
  (h, w, K) per image), weight each channel k by the mean over h, w of d score / d A_k, sum
  w_k A_k, keep the positive part, and upsample (bilinear) to the input size. It shows which
  regions the last feature maps found evidence in: coarse (14x14 for the seed model), smooth.

Every map is (H, W), normalised per image by its maximum to [0, 1]; a map with no positive
value (all-zero gradient, or no evidence for the class) is all zeros, never NaN.

Gradients come from one forward pass of the model as it predicts (training=False: moving
statistics, no dropout, no augmentation) that keeps the layers' caches (layers.base's
keeping_caches), and one backward pass through the same `layer.backward` code that training
uses: no autograd, no finite differences, the same on the NumPy and the C engine.

Side effects on the model: none on its weights or its answers. The backward pass overwrites
each layer's `grads` (the optimizer only reads them right after its own backward pass, so a
later fit is unchanged) and the layers keep the caches of the last explained batch until the
next forward pass. A model is not thread-safe while explaining (the caches are shared state):
serialise calls, as minicnn.serve does with a lock.

    from minicnn import explain
    maps = explain.grad_cam(model, x_test[:8, :, :, None].astype("float32") / 255)   # (8, 28, 28)
"""
from dataclasses import dataclass

import numpy as np

from .layers import Conv2D, Softmax
from .layers.base import keeping_caches

__all__ = ["Explanation", "explain", "saliency", "grad_cam", "find_layer", "upsample_bilinear"]

# The forward is the model's inference forward (moving statistics, no dropout, no augmentation:
# the model as it predicts), run inside keeping_caches() so that every layer still keeps what
# its backward needs. A training forward would explain another model each call, and update
# BatchNormalization's moving statistics as a side effect.


@dataclass
class Explanation:
    """What one explained batch gives.

    outputs:     (N, classes) the model's outputs (probabilities when it ends in a softmax)
    class_index: (N,) int64, the class each map explains
    saliency:    (N, H, W) in [0, 1], or None when not asked for
    grad_cam:    (N, H, W) in [0, 1], or None when not asked for
    layer:       the layer Grad-CAM looked at (None when Grad-CAM was not asked for)
    """

    outputs: np.ndarray
    class_index: np.ndarray
    saliency: np.ndarray = None
    grad_cam: np.ndarray = None
    layer: object = None


def saliency(model, images, class_index=None):
    """Saliency maps: max over channels of |d logit[class] / d image|, normalised per image.

    model:       a built minicnn Sequential whose output is (N, classes)
    images:      (N, H, W, C) floats, (H, W, C) = model.input_shape; cast to model.dtype.
                 One image is images[None].
    class_index: None (each image's predicted class), an int (the same class for all), or
                 a sequence of N ints.
    Returns (N, H, W) float in model.dtype, each map in [0, 1].
    """
    return explain(model, images, class_index, saliency=True, grad_cam=False).saliency


def grad_cam(model, images, class_index=None, layer=None):
    """Grad-CAM maps at `layer` (default: the last Conv2D), upsampled bilinearly to (H, W).

    model, images, class_index: as in `saliency`.
    layer: None, a layer name, an index into model.layers (negative counts from the end), or
           one of model.layers; its output must be (N, h, w, K) feature maps.
    Returns (N, H, W) float in model.dtype, each map in [0, 1].
    """
    return explain(model, images, class_index, layer=layer, saliency=False, grad_cam=True).grad_cam


def explain(model, images, class_index=None, layer=None, saliency=True, grad_cam=True):
    """Both maps (or either) and the model's outputs from a single forward and backward pass.

    Arguments as in `saliency` and `grad_cam`. Returns an Explanation.
    """
    _check_model(model)
    x = _check_images(model, images)
    target = find_layer(model, layer) if grad_cam else None
    layers = list(model.layers)
    feature_maps = None
    activations = x
    with keeping_caches():
        for position, current in enumerate(layers):
            activations = current.forward(activations, training=False)
            if position == target:
                feature_maps = activations
    outputs = activations
    if outputs.ndim != 2:
        raise ValueError(
            f"explain: the model's output must be (N, classes) class scores, but it is "
            f"{outputs.shape}"
        )
    chosen = _check_class_index(class_index, outputs)

    score_gradient = np.zeros_like(outputs)
    score_gradient[np.arange(len(x)), chosen] = 1
    # The score is the logit: start the backward pass below the final softmax.
    last = layers[-1]
    if isinstance(last, Softmax):
        layers.pop()
    elif getattr(last, "activation_name", None) == "softmax":
        layers.pop()
        score_gradient = last.backward_preactivation(score_gradient, need_input_gradient=True)
    if target is not None and target >= len(layers):
        raise ValueError(f"grad_cam: {model.layers[target].describe()} is the model's final softmax; "
                         f"choose a convolution layer")

    # Walk down to the input (saliency) or only to the output of the Grad-CAM layer.
    # layers[p].backward returns the gradient w.r.t. layers[p - 1]'s output.
    above_target = None if target is None else target + 1
    lowest = 0 if saliency else above_target
    gradient = score_gradient
    feature_gradient = score_gradient if above_target == len(layers) else None
    for position in range(len(layers) - 1, lowest - 1, -1):
        gradient = layers[position].backward(gradient, need_input_gradient=True)
        if position == above_target:
            feature_gradient = gradient

    result = Explanation(outputs=outputs, class_index=chosen)
    if saliency:
        result.saliency = _normalise(np.abs(gradient).max(axis=-1))
    if grad_cam:
        result.layer = model.layers[target]
        weights = feature_gradient.mean(axis=(1, 2))                        # (N, K)
        cam = np.maximum(np.einsum("nhwk,nk->nhw", feature_maps, weights), 0)
        result.grad_cam = _normalise(upsample_bilinear(cam, x.shape[1:3]))
    return result


def find_layer(model, layer=None):
    """Index in model.layers of the Grad-CAM layer: `layer` (name, index or object) or the last Conv2D.

    Raises ValueError (or TypeError) naming what was given and what the model has.
    """
    layers = list(model.layers)
    if layer is None:
        convolutions = [i for i, candidate in enumerate(layers) if isinstance(candidate, Conv2D)]
        if not convolutions:
            raise ValueError("grad_cam: the model has no Conv2D layer; pass layer= (a layer whose "
                             "output is (N, h, w, channels))")
        index = convolutions[-1]
    elif isinstance(layer, str):
        names = [candidate.name for candidate in layers]
        if layer not in names:
            raise ValueError(f"grad_cam: no layer named {layer!r}; the model's layers are {names}")
        index = names.index(layer)
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"grad_cam: layer index {layer} is out of range for a model of "
                             f"{len(layers)} layers")
        index = int(layer) % len(layers)
    elif any(candidate is layer for candidate in layers):
        index = next(i for i, candidate in enumerate(layers) if candidate is layer)
    elif hasattr(layer, "forward") and hasattr(layer, "backward"):
        raise ValueError(f"grad_cam: {layer!r} is not one of this model's layers")
    else:
        raise TypeError(f"grad_cam: layer must be None, a layer name, an index or one of "
                        f"model.layers, received {type(layer).__name__}")
    shape = layers[index].output_shape
    if shape is None or len(shape) != 3:
        raise ValueError(f"grad_cam: {layers[index].describe()} outputs {shape} per image; Grad-CAM "
                         f"needs feature maps of shape (h, w, channels), e.g. a Conv2D's")
    return index


def upsample_bilinear(maps, size):
    """(N, h, w) -> (N, H, W) by bilinear interpolation with half-pixel centres.

    Output pixel i samples the input at (i + 0.5) * h / H - 0.5, clamped to the edges: the
    convention of OpenCV's resize and PyTorch's interpolate(mode="bilinear",
    align_corners=False). Without antialiasing, so downsampling skips pixels.
    """
    maps = np.asarray(maps)
    rows = _interpolation_matrix(maps.shape[1], size[0], maps.dtype)
    columns = _interpolation_matrix(maps.shape[2], size[1], maps.dtype)
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, columns)


def _interpolation_matrix(n_in, n_out, dtype):
    """(n_out, n_in) weights of the 1-D linear interpolation used by upsample_bilinear."""
    position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, n_in - 1)
    fraction = position - below
    matrix = np.zeros((n_out, n_in), dtype=dtype)
    matrix[np.arange(n_out), below] += 1 - fraction
    matrix[np.arange(n_out), above] += fraction
    return matrix


def _normalise(maps):
    """Divide each (H, W) map by its maximum; maps whose maximum is not positive become zeros."""
    peaks = maps.max(axis=(1, 2), keepdims=True)
    safe = np.where(peaks > 0, peaks, 1)
    return np.where(peaks > 0, maps / safe, 0).astype(maps.dtype)


def _check_model(model):
    if not getattr(model, "layers", None):
        raise ValueError(f"explain: expected a minicnn model with layers, received {type(model).__name__}")
    if getattr(model, "input_shape", None) is None:
        raise ValueError("explain: the model is not built; build it (or run it once) first")


def _check_images(model, images):
    """images -> a C-contiguous (N,) + model.input_shape array in the model's dtype."""
    expected = tuple(model.input_shape)
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.floating):
        hint = " scaled as the model was trained (e.g. uint8 / 255)" if np.issubdtype(array.dtype, np.integer) else ""
        raise TypeError(f"explain: images must be floats{hint}, received dtype {array.dtype}")
    if array.shape[1:] != expected:
        hint = ""
        if array.shape == expected:
            hint = "; one image needs a batch axis: images[None]"
        elif array.shape[1:] == expected[:-1] and expected[-1] == 1:
            hint = "; add the channel axis: images[..., None]"
        raise ValueError(f"explain: images must have shape (N, {', '.join(map(str, expected))}) "
                         f"for this model, received {array.shape}{hint}")
    if array.shape[0] < 1:
        raise ValueError("explain: no images (the batch is empty)")
    if not np.isfinite(array).all():
        raise ValueError("explain: images contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=model.dtype)


def _check_class_index(class_index, outputs):
    """None / int / N ints -> (N,) int64 class indices, each in range."""
    n, classes = outputs.shape
    if class_index is None:
        return np.argmax(outputs, axis=1).astype(np.int64)
    if isinstance(class_index, (bool, np.bool_)):
        raise TypeError(f"explain: class_index must be None, an int or {n} ints, received {class_index!r}")
    chosen = np.asarray(class_index)
    if chosen.dtype == np.bool_ or not np.issubdtype(chosen.dtype, np.integer):
        raise TypeError(f"explain: class_index must be None, an int or {n} ints, received {class_index!r}")
    if chosen.ndim == 0:
        chosen = np.full(n, chosen)
    if chosen.shape != (n,):
        raise ValueError(f"explain: class_index must be one int or one per image ({n}), received "
                         f"shape {chosen.shape}")
    if chosen.min() < 0 or chosen.max() >= classes:
        raise ValueError(f"explain: class_index values must lie in 0..{classes - 1}, received "
                         f"{chosen.min()}..{chosen.max()}")
    return chosen.astype(np.int64)
