"""The model-file container: one .npz holding a JSON header and plain numeric arrays; no pickle.

    io.write(path, header, arrays)            # atomic; returns the path written
    contents = io.read(path, sections)        # .path, .header, .arrays (only those of `sections`)

It knows files, not models (minicnn.saving decides what goes in the header and arrays; this
module imports nothing of minicnn but its errors and version). File layout (a zip written by
numpy.savez; every entry is a .npy of a numeric dtype):

    minicnn_header      uint8 array: UTF-8 JSON {"format": "minicnn-model", "format_version": 1,
                        ..., "weights": [spec, ...], "training": {"slots": [spec, ...]} or null}
    weight_0000, ...    the arrays the "weights" section lists
    optimizer_0000, ... the arrays the "training.slots" section lists

    spec = {"entry": "weight_0000", "layer": "conv2d", "param": "kernel", "dtype": "float32",
            "shape": [3, 3, 1, 32], ...}

File names: ".npz" is appended when the path does not end in it, exactly as numpy.savez does
("model" -> "model.npz", "model.h5" -> "model.h5.npz"); write returns the path it wrote, and
read("model") finds "model.npz" when "model" itself does not exist.

Safety: reading uses numpy.load(allow_pickle=False), accepts only the entries the header lists,
checks every dtype and shape against the header before use and caps the declared sizes by the
file's size; only the sections asked for are read. Zip CRC-32 checks catch corrupted bytes.
Anything wrong raises ModelFileError (a ValueError) naming the file and the problem. Writing goes
to a temporary file in the same directory (created 0o666 & ~umask), is fsync'd, then renamed over
the target with os.replace: a crash or a kill during a save leaves the previous file intact; a
failed write raises OSError naming the target.
"""
import contextlib
import errno
import json
import os
import re
import secrets
import stat
import time

import numpy as np

from .errors import ModelFileError, quote
from .version import __version__

FORMAT = "minicnn-model"
FORMAT_VERSION = 1
HEADER_ENTRY = "minicnn_header"
_MAX_HEADER_BYTES = 16 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_FLOAT_DTYPES = ("float32", "float64")


def npz_path(filepath):
    """numpy.savez's rule: append '.npz' unless the path already ends in it."""
    path = os.fspath(filepath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    return path if path.endswith(".npz") else path + ".npz"


# A temporary file is "ours" when it matches exactly the name _write gives it; one older than
# this is left from a save that was killed (a live save writes its temporary continuously and
# renames it within seconds of its last write, even for a model of gigabytes), so removing it
# cannot disturb a concurrent save by another process. An hour is a thousand times the longest
# save we can think of, yet bounds the pile of leftovers to the saves killed within one hour.
STALE_TEMPORARY_SECONDS = 3600
_TEMPORARY_TOKEN = re.compile(r"[0-9a-f]{16}|[a-z0-9_]{8}")   # ours, and tempfile.mkstemp's of older versions


def temporary_prefix(path):
    return "." + os.path.basename(path) + "."


def write(filepath, header, arrays, overwrite=True):
    """Write `header` (JSON-ready) and `arrays` ({entry name: ndarray}) to filepath atomically."""
    path = npz_path(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False")
    header_bytes = json.dumps(header, allow_nan=False).encode("utf-8")
    entries = {HEADER_ENTRY: np.frombuffer(header_bytes, dtype=np.uint8), **arrays}
    return _write_named(path, lambda handle: np.savez(handle, allow_pickle=False, **entries))


def write_bytes(filepath, data, overwrite=True):
    """Write `data` (bytes) to filepath exactly as named, with write()'s guarantees (atomic
    rename, umask, an existing file's mode kept, stale temporaries removed); for the files
    other programs read (.onnx, .keras, .weights.h5). Returns the path written."""
    path = os.fspath(filepath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False")
    return _write_named(path, lambda handle: handle.write(data))


def _write_named(path, fill):
    try:
        _write_atomically(path, fill)
    except OSError as error:
        # A full disk says "[Errno 28] No space left on device" and nothing else: say which file.
        if error.filename == path:
            raise
        raise OSError(error.errno, f"{error.strerror or error} (while saving {path})", path) from error
    return path


def _write_atomically(path, fill):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, temporary_prefix(path))
    existing_mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
    temporary, descriptor = _create_temporary(directory, temporary_prefix(path))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if existing_mode is not None:   # an existing file keeps its mode, as a plain overwrite would
            os.chmod(temporary, existing_mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _create_temporary(directory, prefix):
    """(path, descriptor) of a new file opened with mode 0o666: the kernel applies the umask,
    so a new model file gets the permissions any new file of this process would get (mkstemp
    would give 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        temporary = os.path.join(directory, prefix + secrets.token_hex(8) + ".tmp")
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", os.path.join(directory, prefix + "*.tmp"))


def _remove_stale_temporaries(directory, prefix):
    """Delete this target's temporaries (".<basename>.<token>.tmp", regular files of this user)
    older than STALE_TEMPORARY_SECONDS: what saves killed before their rename left behind."""
    now = time.time()
    try:
        candidates = list(os.scandir(directory))
    except OSError:
        return
    for candidate in candidates:
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(".tmp")
                and _TEMPORARY_TOKEN.fullmatch(name[len(prefix):-len(".tmp")])):
            continue
        with contextlib.suppress(OSError):
            info = candidate.stat(follow_symlinks=False)
            ours = not hasattr(os, "getuid") or info.st_uid == os.getuid()
            if stat.S_ISREG(info.st_mode) and ours and now - info.st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(candidate.path)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# -- reading -----------------------------------------------------------------------------------

class Contents:
    """What read() returns: the path read, the header, and {entry: array} of the sections asked for."""

    def __init__(self, path, header, arrays):
        self.path = path
        self.header = header
        self.arrays = arrays


def read(filepath, sections=("weights", "training.slots")):
    """Contents of a model file, every structural fact checked; only the arrays listed in
    `sections` ("weights", "training.slots") are read from the file."""
    path = _existing_path(filepath)
    return _read(path, sections)


def _existing_path(filepath):
    if not isinstance(filepath, (str, bytes, os.PathLike)):
        raise TypeError(f"filepath must be a path (str or os.PathLike), received {type(filepath).__name__}")
    path = os.fspath(filepath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not os.path.exists(path) and not path.endswith(".npz") and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    if os.path.isdir(path):
        raise ModelFileError(path, "is a directory, not a minicnn model file (.npz)")
    return path


def _read(path, sections):
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    with open(path, "rb") as handle:
        magic = handle.read(len(_NPY_MAGIC))
    if magic.startswith(_NPY_MAGIC):
        raise ModelFileError(path, "is a single .npy array, not a minicnn model file (.npz)")
    if not magic.startswith(_ZIP_MAGIC):
        raise ModelFileError(path, f"is not a minicnn model file: it is not a .npz (zip) file (it starts with {quote(magic[:4])})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return _read_npz(path, npz, size, sections)
    except ModelFileError:
        raise
    except Exception as error:  # zipfile, zlib, numpy and json all have their own errors
        raise ModelFileError(path, f"is damaged or truncated ({type(error).__name__}: {error})") from None


def _read_npz(path, npz, file_size, sections):
    # Every member must be an .npy array, each name once: NumPy looks a plain member named
    # "weight_0000" up before "weight_0000.npy", so a look-alike could be loaded in place of the
    # entry checked below (a memory bomb or a swapped kernel), and of two members with one name
    # the last one wins.
    members = npz.zip.namelist()
    if len(set(members)) != len(members):
        raise ModelFileError(path, "has two entries with one name")
    if any(not member.endswith(".npy") for member in members):
        odd = next(member for member in members if not member.endswith(".npy"))
        raise ModelFileError(path, f"has an entry that is not a .npy array ({quote(odd)})")
    names = set(npz.files)
    if HEADER_ENTRY not in names:
        listed = ", ".join(sorted(names)[:8]) or "nothing"
        raise ModelFileError(path, f"is not a minicnn model file: it has no '{HEADER_ENTRY}' entry (it holds {listed})")
    if npz.zip.getinfo(HEADER_ENTRY + ".npy").file_size > _MAX_HEADER_BYTES:
        raise ModelFileError(path, "has an implausibly large header")
    dtype, shape = _npy_header(npz, HEADER_ENTRY)
    if dtype != np.uint8 or len(shape) != 1:
        raise ModelFileError(path, f"has a header of dtype {dtype} and shape {shape}, expected uint8 bytes")
    raw = npz[HEADER_ENTRY]
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(path, f"has an unreadable header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(path, f"is not a minicnn model file (its header's format is "
                                   f"{quote(header.get('format') if isinstance(header, dict) else None)})")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(path, f"has an invalid format_version {quote(version)}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            path, f"was written by a newer minicnn ({quote(header.get('minicnn_version'))}, format version "
                  f"{version}); this minicnn ({__version__}) reads format version {FORMAT_VERSION}; upgrade minicnn"
        )
    by_section = _listed_entries(path, header)
    specs = {entry: spec for listed in by_section.values() for entry, spec in listed.items()}
    unexpected = names - {HEADER_ENTRY} - set(specs)
    missing = set(specs) - names
    if unexpected or missing:
        raise ModelFileError(path, f"does not match its header (unexpected entries {sorted(unexpected)[:5]}, "
                                   f"missing entries {sorted(missing)[:5]})")
    declared = sum(int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
                   for spec in specs.values())
    if declared > file_size:
        raise ModelFileError(path, f"declares {declared} bytes of arrays but the file has {file_size} bytes")
    arrays = {}
    wanted = {entry: spec for section in sections for entry, spec in by_section.get(section, {}).items()}
    for entry, spec in wanted.items():
        # Compare the entry's own .npy header with ours before numpy allocates anything for it.
        dtype, shape = _npy_header(npz, entry)
        if dtype.name != spec["dtype"] or list(shape) != spec["shape"]:
            raise ModelFileError(path, f"entry '{entry}' is {dtype}{shape} but its header "
                                       f"says {spec['dtype']}{tuple(spec['shape'])}")
        arrays[entry] = npz[entry]   # allow_pickle=False: an object array could not load anyway
    return Contents(path, header, arrays)


def _npy_header(npz, entry):
    """(dtype, shape) from an entry's .npy header, read without reading its data."""
    with npz.zip.open(entry + ".npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"entry '{entry}' has an unsupported .npy version {version}")
    return dtype, shape


def _listed_entries(path, header):
    """{section: {entry name: spec}} for every array the header lists, each spec checked."""
    lists = [("weights", header.get("weights"))]
    training = header.get("training")
    if training is not None:
        if not isinstance(training, dict):
            raise ModelFileError(path, "has an invalid 'training' section")
        lists.append(("training.slots", training.get("slots")))
    specs = {}
    by_section = {}
    for section, items in lists:
        by_section[section] = {}
        if not isinstance(items, list):
            raise ModelFileError(path, f"has no valid '{section}' list in its header")
        for item in items:
            ok = (isinstance(item, dict) and isinstance(item.get("entry"), str)
                  and item.get("dtype") in _FLOAT_DTYPES and isinstance(item.get("shape"), list)
                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in item["shape"])
                  and isinstance(item.get("layer"), str) and isinstance(item.get("param"), str))
            if not ok or item["entry"] in specs or item["entry"] == HEADER_ENTRY:
                raise ModelFileError(path, f"has an invalid entry description in '{section}': {quote(item, 200)}")
            specs[item["entry"]] = by_section[section][item["entry"]] = item
    return by_section


