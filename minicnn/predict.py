"""Answering "what is in this picture?": top-k classes with probabilities, for arrays and files."""
import os
import sys

import numpy as np

from .images import SIZE, load_images
from .layers import Softmax

# What image files become (images.prepare_image): one 28x28 grayscale channel.
IMAGE_INPUT_SHAPE = (SIZE, SIZE, 1)
# How far a row of probabilities may sum from 1: float32 softmax sums are within ~1e-6.
_SUM_TOLERANCE = 1e-3


def top_k(probabilities, k=3):
    """For (N, K) probabilities: (indices (N, k), probabilities (N, k)), most likely first."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k: k must be a positive integer, received {k!r}")
    probabilities = np.asarray(probabilities)
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def describe(probability_row, class_names, true_label=None):
    """'Ankle boot 97.3% (true: Ankle boot)' for one row of probabilities; for a row that is not
    a probability vector, 'the model produced invalid output for this image (...)' instead."""
    problem = _invalid(np.asarray(probability_row))
    best = int(np.argmax(probability_row))
    text = problem or f"{class_names[best]} {100 * probability_row[best]:.1f}%"
    if true_label is not None:
        text += f" (true: {class_names[int(true_label)]})"
    return text


def output_kind(model, class_names):
    """'probabilities' when the model ends in a softmax over len(class_names) classes, 'logits'
    when it ends in a layer without activation (its outputs then go through a softmax here).

    Raises ValueError, naming what the model has and what is expected, when the model does
    not take (28, 28, 1) images or does not output one value per class, or ends in another
    activation (relu, ...), whose outputs are neither probabilities nor logits.
    """

    input_shape = tuple(model.input_shape or ())
    if input_shape != IMAGE_INPUT_SHAPE:
        raise ValueError(f"the model takes images of shape {input_shape}, but image files are "
                         f"prepared as {IMAGE_INPUT_SHAPE} (28x28 grayscale, like Fashion-MNIST)")
    expected = (len(class_names),)
    output_shape = tuple(model.output_shape or ())
    if output_shape != expected:
        raise ValueError(f"the model outputs shape {output_shape} per image, but predict needs "
                         f"{expected}: one probability for each of the {len(class_names)} "
                         f"Fashion-MNIST classes")
    # Layers that pass their input on at inference (Flatten reshapes; dropout and augmentation
    # are the identity) did not make the values: the layer before them did.
    last = next((layer for layer in reversed(model.layers)
                 if type(layer).__name__ not in _PASSED_THROUGH), None)
    activation = getattr(last, "activation_name", None)
    if isinstance(last, Softmax) or activation == "softmax":
        return "probabilities"
    if activation in ("linear", None):   # None: a layer with no activation (pooling, normalization)
        return "logits"
    raise ValueError(f"the model ends in {last.describe()}, whose {activation!r} activation makes "
                     f"neither probabilities nor logits; predict needs a final softmax or no final "
                     f"activation")


_PASSED_THROUGH = ("Flatten", "Dropout", "RandomFlip", "RandomTranslation")


def softmax(logits):
    """Row-wise softmax of (N, K) logits, max-subtracted so that large logits do not overflow."""
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def predict_image_files(model, paths, class_names, k=3, print_fn=print, note_fn=None):
    """Print the top-k items for each image file; a bad file gets its error, the others theirs.

    model: takes (N, 28, 28, 1) images and outputs (N, len(class_names)) probabilities (a final
           softmax) or logits (no final activation: a softmax is applied, and note_fn told so
           once). note_fn(text) defaults to printing on stderr.
    A row that is not a probability vector (NaN/inf, negative values, not summing to 1: a
    model that overflowed) is reported as that file's error, never printed as an answer.
    Names are printed with display_name, so a name that is not valid text cannot stop the others.
    Returns the number of files that got no answer (0 means every file got one).
    Raises ValueError, before reading any file, for a model that cannot answer (see
    output_kind); ImportError (with the install hint) when Pillow is missing, since then no
    file can be read.
    """
    kind = output_kind(model, class_names)
    if kind == "logits":
        (note_fn or _print_on_stderr)("note: the model outputs logits (its last layer has no "
                                      "softmax); applying softmax")
    results = load_images(paths)
    readable = [i for i, (_, image) in enumerate(results) if isinstance(image, np.ndarray)]
    probabilities = {}
    if readable:
        batch = np.stack([results[i][1] for i in readable])[..., None].astype(model.dtype)
        with np.errstate(all="ignore"):      # overflow inside the model is caught on its output
            outputs = np.asarray(model.predict(batch, verbose=0))
        if kind == "logits":
            outputs = softmax(outputs)
        probabilities = dict(zip(readable, outputs))
    failures = 0
    for i, (path, image) in enumerate(results):
        name = display_name(path)
        problem = image if i not in probabilities else _invalid(probabilities[i])
        if problem is not None:
            failures += 1
            print_fn(f"{name}: error: {str(problem).replace(os.fsdecode(path), name)}")
            continue
        indices, values = top_k(probabilities[i][None, :], k)
        answer = ", ".join(f"{class_names[c]} {100 * p:.1f}%"
                           for c, p in zip(indices[0], values[0]))
        print_fn(f"{name}: {answer}")
    return failures


def display_name(path):
    """A file name as text that any stream can write: bytes that are not valid in the file
    system's encoding (b'\\xff', a str holding surrogate escapes) are shown as '\\xff'.
    Characters a terminal cannot show are the stream's business: the command line writes with
    errors='backslashreplace'."""
    try:
        raw = os.fsencode(path)
    except TypeError:
        return str(path)
    return raw.decode(sys.getfilesystemencoding(), "backslashreplace")


def escape_unencodable_output():
    """Make sys.stdout and sys.stderr write what their encoding cannot (a file name in another
    script on an ASCII terminal) as backslash escapes instead of raising UnicodeEncodeError
    mid-run, so every file still gets its line."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):   # not a TextIOWrapper (replaced by a caller)
            pass


def _invalid(row):
    """Why a row of probabilities is not an answer ('the model produced invalid output ...'),
    or None when it is one: finite, none negative, summing to 1 within _SUM_TOLERANCE."""
    if not np.isfinite(row).all():
        reason = "NaN or infinite values"
    elif (row < 0).any():
        reason = "negative values"
    elif abs(float(row.sum(dtype=np.float64)) - 1) > _SUM_TOLERANCE:
        reason = f"not a probability vector: it sums to {float(row.sum(dtype=np.float64)):.4g}"
    else:
        return None
    return f"the model produced invalid output for this image ({reason})"


def _print_on_stderr(text):
    print(text, file=sys.stderr)
