"""Fashion-MNIST (Zalando Research): 70,000 28x28 grayscale photos of clothing, 10 classes.

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()

returns exactly what `keras.datasets.fashion_mnist.load_data()` returns: x uint8 (N, 28, 28),
the item light on a black background, y uint8 (N,) indices into CLASS_NAMES; N = 60,000 for
train and 10,000 for test. Nothing is kept in memory between calls.

Where each of the four files comes from -- the first good copy wins, file by file:

 1. the `path` argument, else the directory in the environment variable MINICNN_DATA;
 2. the user cache, $XDG_CACHE_HOME/minicnn/fashion-mnist, else ~/.cache/minicnn/fashion-mnist;
 3. the system copy of Debian's `dataset-fashion-mnist` package, SYSTEM_DIR
    (/usr/share/datasets/fashion-mnist);
 4. a download into the user cache from each base URL in turn: the `base_urls` argument, else
    MINICNN_DATA_URLS (URLs separated by spaces or commas), else BASE_URLS.

In a directory a file is `<name>.gz` or `<name>` (e.g. train-images-idx3-ubyte.gz); whether
it is gzip-compressed is read from its first bytes, not from its name.

Every copy is verified by the SHA-256 of its decompressed content (FILES), so a gzip made by
anyone -- Debian re-compresses them -- passes when the data is right. A copy that fails:
 * in the `path`/MINICNN_DATA directory or the system directory is not touched (it is not
   ours to delete): it is reported with a warning and the next source is tried;
 * in the user cache (minicnn's own directory) is reported and deleted;
 * fresh from a download is deleted and the next URL is tried.
If no source gives a good copy, DataNotFoundError (an OSError) says how to get the data and
lists everything that was tried. A `path` or MINICNN_DATA that is not a directory raises
FileNotFoundError at once, since that is a typo rather than missing data.
"""
import errno
import hashlib
import numbers
import os
import warnings
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from .download import DownloadError, download
from .idx import parse_idx, read_decompressed

__all__ = ["CLASS_NAMES", "FILES", "BASE_URLS", "SYSTEM_DIR", "FileSpec", "ChecksumError",
           "DataNotFoundError", "load_data", "cache_dir"]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FileSpec(NamedTuple):
    nbytes: int   # size of the decompressed file
    sha256: str   # SHA-256 of the decompressed file


# Module-level so that tests can swap in tiny files (monkeypatch.setitem).
FILES = {
    "train-images-idx3-ubyte": FileSpec(
        47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": FileSpec(
        60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": FileSpec(
        7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": FileSpec(
        10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}

# The canonical location (HTTP only) and the Keras mirror; "<base>/<file>.gz" is fetched.
BASE_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV = "MINICNN_DATA"
URLS_ENV = "MINICNN_DATA_URLS"


class ChecksumError(ValueError):
    """A copy's decompressed content is not the expected Fashion-MNIST file."""


class DataNotFoundError(OSError):
    """No source gave a good copy of a file; the message says the three ways to get the data."""


def cache_dir():
    """The user cache directory: $XDG_CACHE_HOME/minicnn/fashion-mnist, else
    ~/.cache/minicnn/fashion-mnist (a relative XDG_CACHE_HOME is ignored, as the XDG spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "minicnn" / "fashion-mnist"


def load_data(path=None, *, base_urls=None, timeout=30.0, retries=3, progress=None):
    """Load Fashion-MNIST as ((x_train, y_train), (x_test, y_test)).

    path:      a directory holding the four files (.gz or not); tried first. Default: the
               MINICNN_DATA environment variable, if set.
    base_urls: download locations, "<base>/<file>.gz" each; default MINICNN_DATA_URLS, else
               BASE_URLS. An empty list means: never download. Only http:// and https:// URLs
               are accepted (ValueError otherwise); what they serve is trusted only once its
               SHA-256 matches.
    timeout:   seconds for connecting and for each read of a download; a download averaging
               under download.MIN_BYTES_PER_SECOND over that long is cut off and retried.
    retries:   attempts per URL (>= 1) for failures that may pass (connection, time-out, 5xx).
    progress:  download progress bar: True, False, or None (only when stderr is a terminal).

    Returns x_train (60000, 28, 28) uint8, y_train (60000,) uint8, x_test (10000, 28, 28) uint8,
    y_test (10000,) uint8. See the module docstring for the lookup order and what happens to
    bad copies. Raises DataNotFoundError (an OSError) when a file cannot be had from anywhere,
    FileNotFoundError when `path` or MINICNN_DATA is not a directory.
    """
    _check_download_options(timeout, retries)
    local = _local_dirs(path)
    bases = _base_urls(base_urls)
    options = dict(timeout=timeout, retries=retries, progress=progress)
    arrays = []
    for name, spec in FILES.items():
        arrays.append(_load_file(name, spec, local, bases, options))
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return (x_train, y_train), (x_test, y_test)


def _local_dirs(path):
    """[(label, directory, is_cache)] in lookup order, without repeats."""
    dirs = []
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"load_data: path must be a directory (str or os.PathLike), received {path!r}")
        dirs.append(("path argument", Path(path).expanduser(), False))
    elif os.environ.get(DATA_ENV):
        dirs.append((DATA_ENV, Path(os.environ[DATA_ENV]).expanduser(), False))
    if dirs and not dirs[0][1].is_dir():
        label, directory, _ = dirs[0]
        raise FileNotFoundError(errno.ENOENT, f"Fashion-MNIST directory from the {label} "
                                f"does not exist or is not a directory", str(directory))
    dirs.append(("user cache", cache_dir(), True))
    dirs.append(("system copy", Path(SYSTEM_DIR), False))
    unique, seen = [], set()
    for label, directory, is_cache in dirs:
        key = os.path.realpath(directory)
        if key not in seen:
            seen.add(key)
            unique.append((label, directory, is_cache))
    return unique


def _check_download_options(timeout, retries):
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"load_data: timeout must be a number of seconds, received {timeout!r}")
    if not 0 < timeout < float("inf"):
        raise ValueError(f"load_data: timeout must be a positive, finite number of seconds, received {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral):
        raise TypeError(f"load_data: retries must be an integer, received {retries!r}")
    if retries < 1:
        raise ValueError(f"load_data: retries must be at least 1, received {retries!r}")


def _base_urls(base_urls):
    """The download bases, each checked to be an http(s) URL: anything else (file://, ftp://,
    a bare word) is a mistake that no retry would fix, so it is refused before any request."""
    source = "base_urls"
    if base_urls is None:
        env = os.environ.get(URLS_ENV, "").replace(",", " ").split()
        source = URLS_ENV if env else "BASE_URLS"
        base_urls = env or BASE_URLS
    elif isinstance(base_urls, str):
        base_urls = [base_urls]
    elif not isinstance(base_urls, (list, tuple)):
        raise TypeError(f"load_data: base_urls must be a URL string or a list of them, received "
                        f"{type(base_urls).__name__}")
    for base in base_urls:
        if not isinstance(base, str):
            raise TypeError(f"load_data: {source} must hold URL strings, received {base!r}")
        parts = urlsplit(base)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"load_data: {source} must hold http:// or https:// URLs, received {base!r}")
    return [b.rstrip("/") for b in base_urls]


def _read_verified(file_path, name, spec, origin):
    """Decompress, check size and SHA-256, parse. Errors name `origin` (a path or a URL)."""
    data = read_decompressed(file_path, max_bytes=spec.nbytes, source=origin)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ChecksumError(
            f"{origin}: not a good copy of {name}: its decompressed content ({len(data):,} bytes, "
            f"expected {spec.nbytes:,}) has SHA-256 {digest}, expected {spec.sha256}")
    return parse_idx(data, ndim=3 if "-images-" in name else 1, source=origin)


def _load_file(name, spec, local_dirs, bases, options):
    tried = []
    for label, directory, is_cache in local_dirs:
        candidates = [p for p in (directory / f"{name}.gz", directory / name) if p.is_file()]
        if not candidates:
            tried.append(f"{directory} ({label}): no {name}[.gz]")
        for candidate in candidates:
            try:
                return _read_verified(candidate, name, spec, str(candidate))
            except (ValueError, OSError) as exc:
                problem = f"bad copy in the {label}: {exc}"
                if is_cache:
                    candidate.unlink(missing_ok=True)
                    problem += " (deleted from the cache)"
                warnings.warn(problem, stacklevel=3)   # the caller of load_data
                tried.append(problem)

    dest = cache_dir() / f"{name}.gz"
    urls = [f"{base}/{name}.gz" for base in bases]
    try:
        return download(urls, dest, verify=lambda part, url: _read_verified(part, name, spec, url),
                        max_bytes=_download_cap(spec), desc=name, **options)
    except OSError as exc:   # DownloadError, or the cache directory cannot be written
        if isinstance(exc, DownloadError):
            tried.append(str(exc).replace("\n", "\n    "))
        else:
            tried.append(f"download into {dest}: {exc}")
    raise DataNotFoundError(_not_found_message(name, tried))


def _download_cap(spec):
    # gzip can make incompressible data slightly larger; a body beyond this is not our file.
    return spec.nbytes + spec.nbytes // 100 + 65_536


def _not_found_message(name, tried):
    return (
        f"Fashion-MNIST is not available: no good copy of {name} was found and it could not "
        f"be downloaded. Provide the data in one of three ways:\n"
        f"  1. sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; installs {SYSTEM_DIR})\n"
        f"  2. put the four files (.gz or not) in a directory and set {DATA_ENV}=/that/dir "
        f"(or call load_data(path='/that/dir'))\n"
        f"  3. allow internet access: the files are then downloaded once into {cache_dir()}\n"
        f"What was tried:\n  - " + "\n  - ".join(tried))
