"""Turn a user's photo or drawing into a Fashion-MNIST-like 28x28 array.

Fashion-MNIST was made from product photos on white backgrounds: trimmed to the item, the
longest side resized to 28 px, centred, and inverted, so the item is light on black. This
module repeats those steps for any picture:

 1. grayscale (ITU-R 601 luma, as Pillow's "L"); transparent pixels are laid on white;
 2. the background level is the median of the border pixels, its noise level is measured
    between neighbouring border pixels; the item is what departs from the background by more
    than the noise, in either direction;
 3. invert when the item is darker than its background (whatever the background's grey:
    white paper, a grey table), judged by which side of the background holds more of the
    item's departure, so a few extreme pixels cannot flip it;
 4. stretch so the background (and its noise) is 0 and the item's top 1, the top being the
    value reached by its brightest 0.5% of pixels, not by a single hot pixel;
 5. crop to the bounding box of the pixels above ITEM_THRESHOLD (ignoring a stray speck);
 6. resize the longest side to 28 px, keeping the aspect (Pillow's LANCZOS when Pillow is
    importable, else exact area averaging in NumPy), and stretch again so the item's top is 1;
 7. centre on a 28x28 black canvas; float32 in [0, 1].

Pillow is optional: `prepare_image` works on arrays without it; `load_image` needs it to read
files and says how to install it. Feed the result to a model as `x[None, :, :, None]`.
"""
import errno
import os
import stat

import numpy as np

__all__ = ["SIZE", "ITEM_THRESHOLD", "prepare_image", "load_image", "load_images", "read_pixels"]

SIZE = 28
# Fraction of the item's contrast above the background that counts as item when cropping:
# low enough to keep pale fabric and the faint edges Fashion-MNIST items have (re-preparing
# its own test images correlates 0.99 with the originals on average at 0.05, 0.98 at 0.1 and
# 0.95 at 0.2), high enough to skip JPEG noise.
ITEM_THRESHOLD = 0.05
# Fraction of the item's pixels allowed outside the crop on each side, so that a speck of dust
# in a corner does not stretch the bounding box over the whole picture.
_SPECK_FRACTION = 0.002
# Pixels departing from the background by more than this many noise standard deviations
# (estimated on the border) are taken for the item; Gaussian noise goes that far in 6e-5 of them.
_NOISE_SIGMAS = 4
# Float pixels are taken as 0..1 when none exceeds this, else as 0..255 (see _to_gray).
_FLOAT_0_TO_1_LIMIT = 1.5
# Photos are shrunk to this size before the float work; the crop at 28 px cannot tell.
_MAX_WORKING_SIDE = 1024
_INSTALL_HINT = 'pip install "minicnn[examples]" (or pip install Pillow)'


def _pillow():
    """PIL.Image, or None when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def prepare_image(image):
    """Make an array picture Fashion-MNIST-like (see the module docstring for the steps).

    image: (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8 or uint16
           (scaled by their full range), another integer type with values in 0..255, bool, or
           float (taken as 0..1, values up to 1.5 included and clipped to 1, or as 0..255 when
           its maximum is above 1.5).

    Returns a new (28, 28) float32 array in [0, 1], the item light on black, centred; `image`
    is never written to.
    Raises TypeError for another dtype (complex, object, strings, ...); ValueError for another
    shape, NaN/inf, negative values, or a blank picture with no item in it.
    """
    try:
        array = np.asarray(image)
    except ValueError as exc:            # ragged nested lists
        raise ValueError(f"image: expected an array of pixels, could not convert "
                         f"{type(image).__name__}: {exc}") from None
    gray = _to_gray(array)
    item_signal, noise = _item_signal(gray)
    top, bottom, left, right = _item_box(item_signal > max(ITEM_THRESHOLD, noise))
    item = item_signal[top:bottom, left:right]

    h, w = item.shape
    scale = SIZE / max(h, w)
    new_h, new_w = max(1, min(SIZE, round(h * scale))), max(1, min(SIZE, round(w * scale)))
    small = np.clip(_resize(item, new_h, new_w), 0.0, 1.0)
    # Stretch again, at the final size: a bright blob left outside the crop may have set the
    # first scale, and averaging down smooths the noise that made the item's top look higher.
    lit = small[small > ITEM_THRESHOLD]
    if lit.size:
        small = np.minimum(small / _robust_top(lit), 1.0)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    # An odd margin puts its extra pixel above and left, as Fashion-MNIST does.
    y0, x0 = (SIZE - new_h + 1) // 2, (SIZE - new_w + 1) // 2
    canvas[y0:y0 + new_h, x0:x0 + new_w] = small
    return canvas


def _item_signal(gray):
    """(H, W) gray in [0, 1] -> (the item light on black in [0, 1], the noise level on that
    scale). Raises ValueError for a blank picture.

    Robust statistics throughout, so that neither noise nor a few extreme pixels decide:
      * the background level is the median of the border pixels, the noise level the median
        absolute difference between neighbours along the border (scaled to the standard
        deviation of Gaussian noise);
      * pixels departing from the background by more than _NOISE_SIGMAS noise levels (and at
        least 2/255) in EITHER direction are the item; its polarity is the side of the
        background holding more of that departure, so a dark item on a mid-grey background
        is an item (turned light on black), and one white pixel cannot outweigh it;
      * the item's contrast is the value reached by its brightest 0.5% (at least two pixels),
        not the maximum, so one hot pixel cannot set the scale.
    """
    # The border as one ring (clockwise), so that neighbours in it are neighbours in the picture.
    border = np.concatenate([gray[0], gray[1:, -1], gray[-1, -2::-1], gray[-2:0:-1, 0]])
    background = float(np.median(border))
    # From differences of neighbours (std sqrt(2) sigma for independent noise) rather than the
    # spread around the median: an item reaching the border must not pass for noise.
    steps = np.abs(np.diff(border, append=border[:1]))
    noise = 1.4826 * float(np.median(steps)) / np.sqrt(2)
    departure = gray - background
    threshold = max(_NOISE_SIGMAS * noise, 2 / 255)
    above = np.maximum(departure - threshold, 0.0).sum(dtype=np.float64)
    below = np.maximum(-departure - threshold, 0.0).sum(dtype=np.float64)
    if above == 0 and below == 0:
        raise ValueError(f"the picture is blank: no item stands out from its background "
                         f"(shape {gray.shape}, background level {background:.3f}, noise "
                         f"{noise:.3f})")
    if below > above:                    # a darker item: Fashion-MNIST's items are light
        departure = -departure
    contrast = _robust_top(departure[departure > threshold])
    # Background noise (up to twice its standard deviation) goes to black, as in Fashion-MNIST;
    # a clean picture (noise 0) is only stretched.
    floor = min(2 * noise, contrast / 2)
    signal = np.clip((departure - floor) / (contrast - floor), 0.0, 1.0)
    return signal, (threshold - floor) / (contrast - floor)


def _robust_top(values):
    """The value reached by the largest 0.5% of `values` (1-D, non-empty), at least by two of
    them when there are two: a single extreme pixel never decides it."""
    rank = max(1, int(0.005 * values.size)) if values.size > 1 else 0
    return float(np.partition(values, values.size - 1 - rank)[values.size - 1 - rank])


def _to_gray(a):
    """(H, W[, C]) of any supported dtype -> (H, W) float32 in [0, 1]."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), "
                         f"got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"the image is empty: shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    elif a.dtype in (np.uint8, np.uint16):
        a = a.astype(np.float32) / np.iinfo(a.dtype).max
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"integer pixel values must lie in 0..255 (dtype {a.dtype}), "
                             f"got {a.min()}..{a.max()}")
        a = a.astype(np.float32) / 255
    elif np.issubdtype(a.dtype, np.floating):
        # Checked in the image's own dtype: a float64 value beyond float32's range must not
        # turn into inf on the way and be reported as one.
        if not np.isfinite(a).all():
            raise ValueError("the image contains NaN or infinite values")
        if a.min() < 0:
            raise ValueError(f"float pixel values must not be negative, got minimum {a.min()}")
        # 0..1 unless values clearly exceed 1: an overshoot of image processing (a TIFF in
        # 0..1.02) is still 0..1, while a 0..255 picture with any visible content goes past 1.5.
        if a.max() > _FLOAT_0_TO_1_LIMIT:
            a = np.minimum(a, 255).astype(np.float32) / 255   # above 255 is white
        else:
            a = a.astype(np.float32)
    else:
        raise TypeError(f"image: pixels must be bool, integers or floats, received dtype {a.dtype}")
    a = np.clip(a, 0.0, 1.0)
    if a.ndim == 2:
        return a
    rgb = a[:, :, 0] * 0.299 + a[:, :, 1] * 0.587 + a[:, :, 2] * 0.114
    if a.shape[2] == 4:                  # lay transparent parts on white, as a viewer shows them
        alpha = a[:, :, 3]
        rgb = rgb * alpha + (1.0 - alpha)
    return rgb.astype(np.float32)


def _item_box(mask):
    """(top, bottom, left, right) of the item, ends exclusive, trimming stray specks."""
    total = mask.sum()

    def span(counts):
        cumulative = np.cumsum(counts)
        allowed = _SPECK_FRACTION * total
        start = int(np.searchsorted(cumulative, allowed, side="right"))
        stop = int(np.searchsorted(cumulative, total - allowed, side="left")) + 1
        return start, max(stop, start + 1)

    top, bottom = span(mask.sum(axis=1))
    left, right = span(mask.sum(axis=0))
    return top, bottom, left, right


def _resize(item, new_h, new_w):
    image_module = _pillow()
    if image_module is not None:
        lanczos = getattr(image_module, "Resampling", image_module).LANCZOS
        picture = image_module.fromarray(np.ascontiguousarray(item, dtype=np.float32))
        return np.asarray(picture.resize((new_w, new_h), lanczos), dtype=np.float32)
    return (_area_weights(item.shape[0], new_h) @ item @ _area_weights(item.shape[1], new_w).T
            ).astype(np.float32)


def _area_weights(n_in, n_out):
    """(n_out, n_in) matrix averaging each output pixel's footprint on the input.

    Output pixel i covers [i * n_in / n_out, (i + 1) * n_in / n_out) in input coordinates;
    each input pixel j weighs by its overlap with that interval. This is the exact box filter:
    it antialiases when shrinking and repeats pixels when enlarging.
    """
    edges = np.arange(n_out + 1) * (n_in / n_out)
    j = np.arange(n_in)
    overlap = np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def load_image(path):
    """Read an image file (anything Pillow opens: PNG, JPEG, ...) and prepare it (prepare_image).

    The camera's EXIF orientation is applied first, so a phone photo is upright.
    Returns a (28, 28) float32 array in [0, 1].
    Raises ImportError without Pillow; FileNotFoundError for a missing file; ValueError naming
    the file for anything that is not a regular file (a directory, a FIFO, a device, a socket:
    refused before reading, so nothing blocks), a file that is not a readable image, or a blank
    picture.
    """
    image_module = _pillow()
    if image_module is None:
        raise ImportError(f"reading image files needs Pillow: {_INSTALL_HINT}")
    from PIL import UnidentifiedImageError

    path = os.fspath(path)
    try:
        _refuse_non_regular(path, os.stat(path).st_mode)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such image file", path) from None
    with _open_regular(path) as file:
        try:
            pixels = _decode(image_module, file)
        except UnidentifiedImageError as exc:
            raise ValueError(f"{path}: not an image file that Pillow can read") from exc
        except image_module.DecompressionBombError as exc:
            # Pillow refuses pictures of over 2 * Image.MAX_IMAGE_PIXELS: a small file that
            # would decode into gigabytes. An Exception of its own; report it like any bad file.
            raise ValueError(f"{path}: the picture is too large to decode safely ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            # A truncated or damaged file fails while decoding, after it was identified.
            raise ValueError(f"{path}: the image cannot be decoded ({exc})") from exc
    try:
        return prepare_image(pixels)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _refuse_non_regular(path, mode):
    """ValueError unless `mode` (an st_mode) is a regular file's. A FIFO blocks in open() until
    a writer comes, a device like /dev/zero never ends: either would stall every later file."""
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    raise ValueError(f"{path}: is {kind}, not a regular file; expected an image file")


def _open_regular(path):
    """The file opened for reading in binary, refused unless it is a regular file.

    Checked twice: os.stat before (a clear error without touching it) and os.fstat on what was
    actually opened, since the path may be swapped for a FIFO in between. O_NONBLOCK makes
    opening a FIFO return at once instead of waiting for a writer; on a regular file the flag
    changes nothing, so it may stay set while Pillow reads.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _refuse_non_regular(path, os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# EXIF orientation (tag 0x0112) -> the Image.transpose method that makes the picture upright,
# as in ImageOps.exif_transpose.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


def read_pixels(file):
    """The pixels of the picture in an open binary `file` (a path's file or io.BytesIO), decoded
    as load_image decodes them: upright, at most 1024 px a side, in a dtype and layout that
    prepare_image takes. For callers that hold the bytes rather than a path (the demo page).

    Raises ImportError without Pillow, and Pillow's errors for bytes it cannot decode.
    """
    image_module = _pillow()
    if image_module is None:
        raise ImportError(f"reading pictures needs Pillow: {_INSTALL_HINT}")
    return _decode(image_module, file)


def _decode(image_module, file):
    """The pixels of the picture in the open `file`, upright and at most _MAX_WORKING_SIDE.

    Memory is what matters for a large picture: a JPEG is decoded at 1/2, 1/4 or 1/8 of its
    size by the decoder itself (draft), straight to grayscale when it has no alpha; other
    formats (PNG cannot be decoded in parts) are decoded once at full size and reduced by an
    integer factor (reducing_gap) before the final resampling. The orientation is applied to
    the small picture, and only when the EXIF tag asks for it: ImageOps.exif_transpose would
    copy the full-size picture even for orientation 1.
    """
    with image_module.open(file) as picture:
        orientation = _orientation(picture)
        if picture.format == "JPEG":
            picture.draft("L" if picture.mode == "RGB" else None,
                          (_MAX_WORKING_SIDE, _MAX_WORKING_SIDE))
        else:
            # Decoded at full size anyway; loading first lets a loader that turns the picture
            # upright itself do so before thumbnail sizes it: Pillow's TIFF loader applies the
            # orientation and removes the tag, which must then not be applied a second time.
            picture.load()
            if _orientation(picture) != orientation:
                orientation = 1
        value_range = None
        if picture.mode in _DEEP_MODES:
            # Pillow's resampling of 16- and 32-bit pictures is not to be trusted: Lanczos
            # overshoots below zero (a [0, 1] float picture came out with -0.0015, which is
            # refused as a negative pixel) and big-endian 16-bit data came out distorted. So
            # these are resampled as the float pixels _pixels makes of them, clipped back to
            # the range they had.
            values = _pixels(picture)
            value_range = (values.min(), values.max()) if values.size else None
            picture = image_module.fromarray(values)
        picture.thumbnail((_MAX_WORKING_SIDE, _MAX_WORKING_SIDE), reducing_gap=2.0)
        if orientation in _UPRIGHT:
            methods = getattr(image_module, "Transpose", image_module)
            picture = picture.transpose(getattr(methods, _UPRIGHT[orientation]))
        pixels = _pixels(picture)
        return pixels if value_range is None else np.clip(pixels, *value_range)


def _orientation(picture):
    """The EXIF orientation (1..8), 1 when there is none or it cannot be read."""
    try:
        value = picture.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:        # a damaged EXIF block must not make the picture unreadable
        return 1
    return value if isinstance(value, int) else 1


# One-channel pictures of more than 8 bits: float ("F"), 32-bit and 16-bit integers.
_DEEP_MODES = ("F", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _pixels(picture):
    """A Pillow image -> array of a dtype and layout prepare_image takes."""
    if picture.mode == "F":          # float grayscale: prepare_image tells 0..1 from 0..255 itself
        return np.asarray(picture, dtype=np.float32)
    if picture.mode in _DEEP_MODES:  # 16-bit / 32-bit integer grayscale
        a = np.asarray(picture, dtype=np.float32)
        return a / (65535 if a.max() > 255 else 255)
    has_alpha = "A" in picture.mode or "transparency" in picture.info
    target = "RGBA" if has_alpha else ("L" if picture.mode in ("1", "L") else "RGB")
    return np.asarray(picture.convert(target))


def load_images(paths):
    """Load many image files, not stopping at a bad one.

    paths: iterable of file paths.
    Returns a list of (path, result) in the same order, result being the (28, 28) float32
    array or the exception (FileNotFoundError, PermissionError, ValueError) that file raised.
    Raises ImportError at once without Pillow, since then no file can be read.
    """
    if _pillow() is None:
        raise ImportError(f"reading image files needs Pillow: {_INSTALL_HINT}")
    results = []
    for path in paths:
        try:
            results.append((path, load_image(path)))
        except (OSError, ValueError) as exc:
            results.append((path, exc))
    return results
