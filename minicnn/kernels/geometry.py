"""Output sizes and padding, shared by the layers, the engines and the tests.

One rule everywhere, TensorFlow's / Keras':

    "valid":  out = floor((size - kernel) / stride) + 1          no padding
    "same":   out = ceil(size / stride)
              pad_total = max((out - 1) * stride + kernel - size, 0)
              pad_before = pad_total // 2, pad_after = pad_total - pad_before

so for an even pad_total the padding is symmetric and otherwise the extra row/column goes to
the bottom/right, exactly as TensorFlow does (PyTorch's padding="same" differs for stride > 1).
"""


def window_output_length(size, window, stride, pad_before=0, pad_after=0):
    """Positions of a window sweeping one axis of `size` with explicit zero padding:
    (size + pad_before + pad_after - window) // stride + 1 (< 1 when the window does not fit)."""
    return (size + pad_before + pad_after - window) // stride + 1


def window_output_shape(height, width, window, strides, pads):
    """(out_height, out_width) of a (KH, KW) window sweep with strides (sh, sw) and explicit
    pads (top, bottom, left, right): what the engines compute from the face's arguments."""
    return (
        window_output_length(height, window[0], strides[0], pads[0], pads[1]),
        window_output_length(width, window[1], strides[1], pads[2], pads[3]),
    )


def output_length(size, kernel, stride, padding):
    """Length of one spatial output axis; raises ValueError when it would be < 1."""
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        if kernel > size:
            raise ValueError(
                f"window of {kernel} does not fit an input of {size} with padding='valid'"
            )
        return window_output_length(size, kernel, stride)
    raise ValueError(f"padding must be 'valid' or 'same', received {padding!r}")


def padding_amounts(size, kernel, stride, padding):
    """(before, after) zero-padding of one spatial axis for the given padding mode."""
    if padding == "valid":
        return 0, 0
    out = output_length(size, kernel, stride, padding)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pads_2d(height, width, kernel_size, strides, padding):
    """(top, bottom, left, right) for an NHWC input of spatial size height x width."""
    top, bottom = padding_amounts(height, kernel_size[0], strides[0], padding)
    left, right = padding_amounts(width, kernel_size[1], strides[1], padding)
    return top, bottom, left, right


def output_shape_2d(height, width, kernel_size, strides, padding):
    """(out_height, out_width) of a convolution or pooling window sweep."""
    return (
        output_length(height, kernel_size[0], strides[0], padding),
        output_length(width, kernel_size[1], strides[1], padding),
    )
