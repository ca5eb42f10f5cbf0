"""A strict reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the data in
row-major order::

    magic = 0x00 0x00 <dtype> <ndim>      dtype 0x08 = unsigned byte (the only one read here)
    dims  = ndim x uint32, big-endian
    data  = prod(dims) bytes

So 0x00000803 is a stack of images (N, H, W) and 0x00000801 a vector of labels (N,).
Files may be gzip-compressed; that is detected from the gzip magic bytes (1f 8b), never from
the file name, because copies get renamed and re-compressed (Debian's are re-gzipped).

Every problem raises ValueError naming the file and saying what was wrong.
"""
import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "read_decompressed", "parse_idx", "read_idx"]

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"


def read_decompressed(path, max_bytes=None, *, source=None):
    """Return the content of `path` as bytes, gunzipped when it starts with the gzip magic.

    path:      file to read.
    max_bytes: refuse content longer than this (after decompression), so a small hostile
               .gz cannot expand into gigabytes. None reads everything.
    source:    how to name the file in error messages (default: the path).

    Raises ValueError for a corrupt or truncated gzip stream or content over `max_bytes`;
    OSError (FileNotFoundError, PermissionError, ...) from opening the file passes through.
    """
    source = str(path) if source is None else source
    limit = -1 if max_bytes is None else max_bytes + 1
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
        f.seek(0)
        if compressed:
            try:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    data = gz.read(limit)
            except (OSError, EOFError, zlib.error) as exc:
                # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
                raise ValueError(f"{source}: corrupt or truncated gzip data ({exc})") from exc
        else:
            data = f.read(limit)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{source}: content is larger than the expected {max_bytes:,} bytes")
    return data


def parse_idx(data, *, ndim=None, source="<bytes>"):
    """Parse the bytes of an unsigned-byte IDX file into a new, writable uint8 array.

    data:   the whole (decompressed) file.
    ndim:   the number of dimensions required (3 for images, 1 for labels), or None for any.
    source: how to name the data in error messages.

    Returns an array of shape `dims` from the header. Raises ValueError when the magic number
    is not 0x000008xx, the dimension count differs from `ndim`, the header is cut short, or the
    payload is not exactly prod(dims) bytes.
    """
    n = len(data)
    if n < 4:
        raise ValueError(f"{source}: not an IDX file: only {n} bytes, shorter than the 4-byte magic")
    magic = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise ValueError(
            f"{source}: not an unsigned-byte IDX file: magic number 0x{magic:08X}, expected "
            f"0x{IDX_IMAGES_MAGIC:08X} (images) or 0x{IDX_LABELS_MAGIC:08X} (labels)")
    file_ndim = data[3]
    if ndim is not None and file_ndim != ndim:
        expected = 0x800 | ndim
        raise ValueError(
            f"{source}: magic number 0x{magic:08X} declares {file_ndim} dimension(s), "
            f"expected {ndim} (magic 0x{expected:08X})")
    header = 4 + 4 * file_ndim
    if n < header:
        raise ValueError(
            f"{source}: truncated header: {n} bytes, the {file_ndim} dimension(s) need {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=file_ndim, offset=4))
    expected_len = int(np.prod(dims, dtype=np.int64))
    payload = n - header
    if payload != expected_len:
        kind = "truncated" if payload < expected_len else "too long"
        raise ValueError(
            f"{source}: {kind}: payload is {payload:,} bytes, but the header's dimensions "
            f"{dims} need {expected_len:,}")
    # frombuffer on bytes is read-only; the copy gives the caller an array it owns (as Keras).
    return np.frombuffer(data, dtype=np.uint8, count=expected_len, offset=header).reshape(dims).copy()


def read_idx(path, *, ndim=None, max_bytes=None):
    """Read an IDX file (gzip or raw) into a uint8 array; see parse_idx for the checks.

    path: the file. ndim: required dimension count or None. max_bytes: see read_decompressed.
    """
    return parse_idx(read_decompressed(path, max_bytes), ndim=ndim, source=str(Path(path)))
