"""Turn a user's photo or drawing into a Fashion-MNIST-like 28x28 array.

Fashion-MNIST was made from product photos on white backgrounds: trimmed to the item, the
longest side resized to 28 px, centred, and inverted, so the item is light on black. This
module repeats those steps for any picture:

 1. grayscale (ITU-R 601 luma, as Pillow's "L"); transparent pixels are laid on white;
 2. invert when the background is light, judged from the median of the border pixels;
 3. stretch so the background is 0 and the brightest pixel 1;
 4. crop to the bounding box of the pixels above ITEM_THRESHOLD (ignoring a stray speck),
    and stretch again so the item's brightest pixel is 1;
 5. resize the longest side to 28 px, keeping the aspect (Pillow's LANCZOS when Pillow is
    importable, else exact area averaging in NumPy);
 6. centre on a 28x28 black canvas; float32 in [0, 1].

Pillow is optional: `prepare_image` works on arrays without it; `load_image` needs it to read
files and says how to install it. Feed the result to a model as `x[None, :, :, None]`.
"""
import errno
import os
import stat

import numpy as np

__all__ = ["SIZE", "ITEM_THRESHOLD", "prepare_image", "load_image", "load_images"]

SIZE = 28
# Fraction of the item's contrast above the background that counts as item when cropping:
# low enough to keep pale fabric and the faint edges Fashion-MNIST items have (re-preparing
# its own test images correlates 0.99 with the originals on average at 0.05, 0.98 at 0.1 and
# 0.95 at 0.2), high enough to skip JPEG noise.
ITEM_THRESHOLD = 0.05
# Fraction of the item's pixels allowed outside the crop on each side, so that a speck of dust
# in a corner does not stretch the bounding box over the whole picture.
_SPECK_FRACTION = 0.002
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
           float (taken as 0..1, or as 0..255 when its maximum is above 1).

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
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if np.median(border) > 0.5:          # light background: Fashion-MNIST's is black
        gray = 1.0 - gray
        border = 1.0 - border
    background = float(np.median(border))
    contrast = float(gray.max()) - background
    if contrast < 2 / 255:
        raise ValueError(f"the picture is blank: no item stands out from its background "
                         f"(shape {gray.shape}, background level {background:.3f})")
    gray = np.clip((gray - background) / contrast, 0.0, 1.0)
    top, bottom, left, right = _item_box(gray > ITEM_THRESHOLD)
    item = gray[top:bottom, left:right]
    item = item / item.max()            # again: a bright speck left outside set the first scale

    h, w = item.shape
    scale = SIZE / max(h, w)
    new_h, new_w = max(1, min(SIZE, round(h * scale))), max(1, min(SIZE, round(w * scale)))
    small = np.clip(_resize(item, new_h, new_w), 0.0, 1.0)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    # An odd margin puts its extra pixel above and left, as Fashion-MNIST does.
    y0, x0 = (SIZE - new_h + 1) // 2, (SIZE - new_w + 1) // 2
    canvas[y0:y0 + new_h, x0:x0 + new_w] = small
    return canvas


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
        if a.max() > 1:
            a = np.minimum(a, 255).astype(np.float32) / 255   # above 255 is white, as the clip below
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
    from PIL import ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    try:
        _refuse_non_regular(path, os.stat(path).st_mode)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such image file", path) from None
    with _open_regular(path) as file:
        try:
            pixels = _decode(image_module, ImageOps, file)
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


def _decode(image_module, image_ops, file):
    """The pixels of the picture in the open `file`, upright and at most _MAX_WORKING_SIDE."""
    with image_module.open(file) as picture:
        picture = image_ops.exif_transpose(picture)
        picture.thumbnail((_MAX_WORKING_SIDE, _MAX_WORKING_SIDE))
        return _pixels(picture)


def _pixels(picture):
    """A Pillow image -> array of a dtype and layout prepare_image takes."""
    if picture.mode == "F":          # float grayscale: prepare_image tells 0..1 from 0..255 itself
        return np.asarray(picture, dtype=np.float32)
    if picture.mode in ("I", "I;16", "I;16B", "I;16L"):          # 16-bit / 32-bit integer grayscale
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
