"""Checking what users hand to fit/evaluate/predict, once, and cutting it into batches.

Inputs may be float or integer arrays of any size: they are checked here once per call (dtype,
shape, NaN/inf, emptiness) and converted to the model's dtype one batch at a time, so the
dataset is never copied as a whole. minicnn does no scaling (neither does Keras): divide uint8
images by 255 yourself if you want [0, 1].
"""
import numpy as np

from ..errors import quote

# The NaN/inf scan works on blocks of about this many elements so its temporaries stay small.
_SCAN_BLOCK_ELEMENTS = 1 << 20


def as_input_array(x, who, argument="x"):
    """x as an ndarray of real numbers with a non-empty batch axis (arrays are not copied)."""
    if x is None:
        raise ValueError(f"{who}: {argument} is required, received None")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as error:  # ragged nested lists and the like
            raise TypeError(
                f"{who}: {argument} must be a NumPy array of numbers, could not convert "
                f"{type(x).__name__}: {error}"
            ) from None
    if x.dtype.kind not in "biuf":
        raise TypeError(
            f"{who}: {argument} must hold real numbers (bool, integer or float), received dtype "
            f"{x.dtype}"
        )
    if x.ndim < 2:
        raise ValueError(
            f"{who}: {argument} must be a batch of images (N, height, width, channels), received "
            f"shape {x.shape}"
        )
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"{who}: {argument} is empty (shape {x.shape}); there is nothing to compute")
    return x


def check_input_shape(x, input_shape, who, argument="x"):
    """x.shape[1:] must equal the model's per-image input shape."""
    if x.shape[1:] == tuple(input_shape):
        return
    expected = "(N, " + ", ".join(map(str, input_shape)) + ")"
    hint = ""
    if x.shape[1:] + (1,) == tuple(input_shape):
        hint = f"; add the channel axis with {argument}[..., np.newaxis]"
    elif len(x.shape) == 2 and x.shape[1] == int(np.prod(input_shape)):
        hint = f"; reshape with {argument}.reshape(-1, {', '.join(map(str, input_shape))})"
    raise ValueError(f"{who}: {argument} must have shape {expected} for this model, received {x.shape}{hint}")


def check_finite(x, dtype, who, argument="x"):
    """No NaN or inf in x, and no value that would overflow `dtype` when converted.

    Integer inputs need no scan. Floats are scanned in blocks, so the check allocates little
    even for a large dataset; it runs once per fit/evaluate/predict call, not per step.
    """
    if x.dtype.kind not in "f":
        return
    # only a wider float can hold values beyond the model's float range (float16 < 32 < 64)
    limit = np.finfo(dtype).max if x.dtype.itemsize > np.dtype(dtype).itemsize else None
    if x.size <= _SCAN_BLOCK_ELEMENTS and limit is None:   # one block: a single-image predict
        if not np.isfinite(x).all():
            bad = int(np.argmin(np.isfinite(x).reshape(len(x), -1).all(axis=1)))
            raise ValueError(f"{who}: {argument} contains NaN or inf (first in sample {bad})")
        return
    flat_rows = x.reshape(x.shape[0], -1) if x.flags.c_contiguous else x
    rows_per_block = max(1, _SCAN_BLOCK_ELEMENTS // max(1, x[0].size))
    for start in range(0, x.shape[0], rows_per_block):
        block = flat_rows[start:start + rows_per_block]
        if not np.isfinite(block).all():
            bad = start + int(np.argmin(np.isfinite(block).reshape(len(block), -1).all(axis=1)))
            raise ValueError(f"{who}: {argument} contains NaN or inf (first in sample {bad})")
        if limit is not None and np.abs(block).max() > limit:
            raise ValueError(
                f"{who}: {argument} holds values beyond the {dtype} range (|value| > {limit:.3g}), "
                f"which would become inf in the model's dtype"
            )


def check_same_length(x, targets, who, x_name="x", y_name="y"):
    if len(x) != len(targets):
        raise ValueError(
            f"{who}: {x_name} and {y_name} must have the same number of samples, received "
            f"{len(x)} in {x_name} and {len(targets)} in {y_name}"
        )


def check_batch_size(batch_size, who, argument="batch_size"):
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{who}: {argument} must be a positive integer, received {quote(batch_size)}")
    return int(batch_size)


def check_verbose(verbose, who):
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"{who}: verbose must be 0, 1, 2 or 'auto', received {quote(verbose)}")
    return int(verbose)


def batch(x, index, dtype):
    """x[index] as a C-contiguous array of `dtype` (a view, no copy, when it already is one)."""
    return np.ascontiguousarray(x[index], dtype=dtype)


def check_fit_arguments(batch_size, validation_batch_size, verbose, epochs, initial_epoch, shuffle,
                        validation_split, callbacks, who="fit"):
    """fit's arguments other than the data, checked before any work; returns
    (batch_size, validation_batch_size, verbose, validation_split) normalised."""
    batch_size = check_batch_size(batch_size, who)
    validation_batch_size = check_batch_size(validation_batch_size or batch_size, who, "validation_batch_size")
    verbose = check_verbose(verbose, who)
    for what, value in (("epochs", epochs), ("initial_epoch", initial_epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{who}: {what} must be a non-negative integer, received {quote(value)}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(f"{who}: shuffle must be True or False, received {quote(shuffle)}")
    try:
        validation_split = float(validation_split)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: validation_split must be a number in [0, 1), received {quote(validation_split)}") from None
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"{who}: validation_split must be in [0, 1), received {quote(validation_split)}")
    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"{who}: callbacks must be a list of minicnn.callbacks.Callback instances, "
                        f"received {type(callbacks).__name__}")
    return batch_size, validation_batch_size, verbose, validation_split
