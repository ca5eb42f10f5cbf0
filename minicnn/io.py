"""Model files: one .npz holding a JSON header and plain numeric arrays; no pickle anywhere.

    model.save("fashion.npz")                 # architecture + weights + compile + optimizer state
    model = minicnn.load_model("fashion.npz") # ready to predict, or to continue fit() exactly
    model.save_weights("w.npz"); model.load_weights("w.npz")

File layout (a zip written by numpy.savez; every entry is a .npy of a numeric dtype):

    minicnn_header      uint8 array: UTF-8 JSON, see below
    weight_0000, ...    the weights, layer by layer in Keras order (kernel, bias)
    optimizer_0000, ... the optimizer's per-parameter state (only with training state)

    header = {
      "format": "minicnn-model", "format_version": 1, "minicnn_version": "0.1.0",
      "kind": "model" | "weights",
      "model": Sequential.get_config(),          # layer classes and their arguments
      "weights": [{"entry": "weight_0000", "layer": "conv2d", "param": "kernel",
                   "dtype": "float32", "shape": [3, 3, 1, 32]}, ...],
      "compile": {"optimizer": {...}, "loss": {...}, "metrics": [...]} or null,
      "training": {"optimizer_iterations": 1875, "shuffle_seed": ..., "epochs_seen": 1,
                   "slots": [{"entry": "optimizer_0000", "layer": "conv2d", "param": "kernel",
                              "slot": "m", "dtype": "float32", "shape": [3, 3, 1, 32]}, ...]} or null
    }

File names: ".npz" is appended when the path does not end in it, exactly as numpy.savez does
("model" -> "model.npz", "model.h5" -> "model.h5.npz"); save returns the path it wrote, and
load_model("model") finds "model.npz" when "model" itself does not exist.

Safety: reading uses numpy.load(allow_pickle=False), accepts only the entries the header lists,
checks every dtype and shape against the header before use, caps the declared sizes by the
file's size, and builds layers only from minicnn's own classes; loading never runs code from the
file. Zip CRC-32 checks catch corrupted bytes. Anything wrong raises ModelFileError (a
ValueError) naming the file and the problem. Writing goes to a temporary file in the same
directory, is fsync'd, then renamed over the target with os.replace: a crash or a kill during
save leaves the previous file intact.
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

from . import initializers
from .errors import ModelFileError, check_int, quote, shorten
from .training import losses, metrics, optimizers

FORMAT = "minicnn-model"
FORMAT_VERSION = 1
HEADER_ENTRY = "minicnn_header"
_MAX_HEADER_BYTES = 16 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_FLOAT_DTYPES = ("float32", "float64")


# -- writing -----------------------------------------------------------------------------------

def save_model(model, filepath, overwrite=True, include_optimizer=True):
    """Write `model` (see the module docstring); returns the path written.

    Raises ValueError, writing nothing, when a weight or optimizer state holds NaN or inf:
    load_model refuses such a file, so writing it would only replace a good file with a
    useless one."""
    header, arrays = _weights_section(model, "save", include_optimizer)
    header["kind"] = "model"
    header["compile"] = _compile_config(model)
    header["training"] = None
    if include_optimizer and model.compiled and model.optimizer.built:
        state = model.optimizer.get_state()
        slots = []
        for index, ((layer, param, slot), value) in enumerate(sorted(state["slots"].items())):
            entry = f"optimizer_{index:04d}"
            arrays[entry] = value
            slots.append({"entry": entry, "layer": layer, "param": param, "slot": slot, **_spec(value)})
        header["training"] = {
            "optimizer_iterations": int(state["iterations"]),
            "shuffle_seed": model._shuffle_seed,
            "epochs_seen": int(model._epochs_seen),
            "slots": slots,
        }
    return _write(filepath, header, arrays, overwrite)


def save_weights(model, filepath, overwrite=True):
    """Write only the weights (the header still names their layers and shapes); like
    save_model, refuses NaN or inf weights before writing anything."""
    header, arrays = _weights_section(model, "save_weights", include_optimizer=False)
    header["kind"] = "weights"
    return _write(filepath, header, arrays, overwrite)


def nonfinite_state(model, include_optimizer=True):
    """Names of the weights (and, with include_optimizer, optimizer states) that hold NaN or
    inf, e.g. ['dense/kernel']; empty when the model can be saved and loaded back."""
    names = [f"{shorten(layer.name)}/{key}" for layer in model.layers for key in layer.weight_names
             if key in layer.params and not np.isfinite(layer.params[key]).all()]
    if include_optimizer and model.compiled and model.optimizer.built:
        names += [f"{layer}/{param} (optimizer state '{slot}')"
                  for (layer, param, slot), value in sorted(model.optimizer.get_state()["slots"].items())
                  if not np.isfinite(value).all()]
    return names


def _weights_section(model, who, include_optimizer):
    if not model.built:
        raise ValueError(
            f"Sequential '{model.name}': {who} needs a built model; give the first layer "
            f"input_shape=... or call build() or fit() first"
        )
    bad = nonfinite_state(model, include_optimizer)
    if bad:
        raise ValueError(
            f"Sequential '{model.name}': {who}: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} "
            f"hold NaN or inf (training diverged); load_model would refuse the file, so nothing was "
            f"written and any existing file is unchanged"
        )
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "minicnn_version": _version(),
              "model": model.get_config(), "weights": []}
    arrays = {}
    for layer in model.layers:
        for key in layer.weight_names:
            if key not in layer.params:
                continue
            entry = f"weight_{len(arrays):04d}"
            arrays[entry] = layer.params[key]
            header["weights"].append({"entry": entry, "layer": layer.name, "param": key, **_spec(layer.params[key])})
    return header, arrays


def _compile_config(model):
    if not model.compiled:
        return None
    return {
        "optimizer": optimizers.serialize(model.optimizer),
        "loss": losses.serialize(model.loss),
        "metrics": [{"class_name": type(m).__name__, "name": m.name} for m in model.compiled_metrics],
    }


def _spec(array):
    return {"dtype": array.dtype.name, "shape": list(array.shape)}


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


def _write(filepath, header, arrays, overwrite):
    path = npz_path(filepath)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False")
    header_bytes = json.dumps(header, allow_nan=False).encode("utf-8")
    entries = {HEADER_ENTRY: np.frombuffer(header_bytes, dtype=np.uint8), **arrays}
    try:
        _write_atomically(path, entries)
    except OSError as error:
        # A full disk says "[Errno 28] No space left on device" and nothing else: say which file.
        if error.filename == path:
            raise
        raise OSError(error.errno, f"{error.strerror or error} (while saving {path})", path) from error
    return path


def _write_atomically(path, entries):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, temporary_prefix(path))
    existing_mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
    temporary, descriptor = _create_temporary(directory, temporary_prefix(path))
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, allow_pickle=False, **entries)
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

def load_model(filepath, compile=True):
    """A Sequential from a file written by model.save; compiled, with its optimizer state, when
    the file has them and compile=True. Raises ModelFileError for anything that is not an
    intact minicnn model file, FileNotFoundError when there is no file. Loading draws nothing
    from minicnn's random generator."""
    path = _existing_path(filepath)
    contents = _read(path)
    header = contents.header
    if header.get("kind") != "model":
        raise ModelFileError(path, "holds only weights (written by save_weights); build the model "
                                   "and call model.load_weights(path)")
    model = _guarded(path, "its architecture is invalid", _build_model, header.get("model"))
    _guarded(path, "its weights do not fit its architecture", _set_weights, model, contents, strict_names=True)
    training = header.get("training")
    if training is not None:
        _guarded(path, "its training state is invalid", _restore_shuffling, model, training)
    if compile and header.get("compile") is not None:
        _guarded(path, "its compile configuration is invalid", _compile, model, header["compile"])
        if training is not None:
            _guarded(path, "its optimizer state does not fit the model", _restore_optimizer,
                     model, training, contents)
    return model


def load_weights(model, filepath):
    """Put a file's weights into `model` by layer order; shapes must match."""
    path = _existing_path(filepath)
    contents = _read(path)
    if not model.built:
        raise ValueError(f"Sequential '{model.name}': load_weights needs a built model")
    _guarded(path, "its weights do not fit this model", _set_weights, model, contents, strict_names=False)


class _Contents:
    def __init__(self, header, arrays):
        self.header = header
        self.arrays = arrays


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


def _read(path):
    """Header and arrays of a model file, every structural fact checked."""
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
            return _read_npz(path, npz, size)
    except ModelFileError:
        raise
    except Exception as error:  # zipfile, zlib, numpy and json all have their own errors
        raise ModelFileError(path, f"is damaged or truncated ({type(error).__name__}: {error})") from None


def _read_npz(path, npz, file_size):
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
                  f"{version}); this minicnn ({_version()}) reads format version {FORMAT_VERSION}; upgrade minicnn"
        )
    specs = _listed_entries(path, header)
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
    for entry, spec in specs.items():
        # Compare the entry's own .npy header with ours before numpy allocates anything for it.
        dtype, shape = _npy_header(npz, entry)
        if dtype.name != spec["dtype"] or list(shape) != spec["shape"]:
            raise ModelFileError(path, f"entry '{entry}' is {dtype}{shape} but its header "
                                       f"says {spec['dtype']}{tuple(spec['shape'])}")
        arrays[entry] = npz[entry]   # allow_pickle=False: an object array could not load anyway
    return _Contents(header, arrays)


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
    """{entry name: spec} for every array the header lists, each spec checked."""
    lists = [("weights", header.get("weights"))]
    training = header.get("training")
    if training is not None:
        if not isinstance(training, dict):
            raise ModelFileError(path, "has an invalid 'training' section")
        lists.append(("training.slots", training.get("slots")))
    specs = {}
    for section, items in lists:
        if not isinstance(items, list):
            raise ModelFileError(path, f"has no valid '{section}' list in its header")
        for item in items:
            ok = (isinstance(item, dict) and isinstance(item.get("entry"), str)
                  and item.get("dtype") in _FLOAT_DTYPES and isinstance(item.get("shape"), list)
                  and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in item["shape"])
                  and isinstance(item.get("layer"), str) and isinstance(item.get("param"), str))
            if not ok or item["entry"] in specs or item["entry"] == HEADER_ENTRY:
                raise ModelFileError(path, f"has an invalid entry description in '{section}': {quote(item, 200)}")
            specs[item["entry"]] = item
    return specs


def _guarded(path, problem, function, *args, **kwargs):
    """Run a step of loading; any error becomes a ModelFileError that says which step failed."""
    try:
        return function(*args, **kwargs)
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(path, f"{problem}: {error}") from None


def _build_model(config):
    """The file's architecture, built with zeros for every initializer.

    np.zeros only reserves memory (its pages stay untouched until written), so an architecture
    far larger than the weights the file holds -- a 2 KB file can declare a Dense layer of
    10**9 parameters -- costs neither time nor memory before _set_weights refuses it, and
    loading draws nothing from minicnn's generator. The layers get their own initializers back
    afterwards, for get_config and for saving.
    """
    from .model import Sequential

    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError("expected a mapping with a 'layers' list")
    own = [entry.get("config") if isinstance(entry, dict) else None for entry in config["layers"]]
    own = [layer_config if isinstance(layer_config, dict) else {} for layer_config in own]
    cheap = dict(config, layers=[
        dict(entry, config={key: "zeros" if key.endswith("_initializer") else value
                            for key, value in layer_config.items()})
        if layer_config else entry
        for entry, layer_config in zip(config["layers"], own)
    ])
    model = Sequential.from_config(cheap)
    for layer, layer_config in zip(model.layers, own):
        for key, value in layer_config.items():
            if key.endswith("_initializer"):
                value = initializers.deserialize(value) if isinstance(value, dict) else value
                setattr(layer, key, initializers.get(value, f"{layer.describe()} {key}"))
    return model


def _set_weights(model, contents, strict_names):
    specs = contents.header["weights"]
    expected = [(layer, key) for layer in model.layers for key in layer.weight_names if key in layer.params]
    if len(specs) != len(expected):
        raise ValueError(f"the file has {len(specs)} weight arrays, the model needs {len(expected)}")
    for spec, (layer, key) in zip(specs, expected):
        if strict_names and (spec["layer"], spec["param"]) != (layer.name, key):
            raise ValueError(f"weight {quote(spec['entry'])} belongs to {quote(spec['layer'])}/{quote(spec['param'])}, "
                             f"expected {quote(layer.name)}/{key}")
        if tuple(spec["shape"]) != layer.params[key].shape:
            raise ValueError(f"{layer.describe()} expects '{key}' of shape {layer.params[key].shape}, "
                             f"the file has {tuple(spec['shape'])}")
    model.set_weights([contents.arrays[spec["entry"]] for spec in specs])


def _compile(model, config):
    metric_objects = []
    for item in config.get("metrics", []):
        classes = {"SparseCategoricalAccuracy": metrics.SparseCategoricalAccuracy,
                   "CategoricalAccuracy": metrics.CategoricalAccuracy}
        if not isinstance(item, dict) or item.get("class_name") not in classes or not isinstance(item.get("name"), str):
            raise ValueError(f"unknown metric {quote(item)}")
        metric_objects.append(classes[item["class_name"]](name=item["name"]))
    model.compile(optimizer=optimizers.deserialize(config.get("optimizer")),
                  loss=losses.deserialize(config.get("loss")), metrics=metric_objects)


def _restore_shuffling(model, training):
    seed = training.get("shuffle_seed")
    if seed is not None:
        seed = check_int(seed, "training", "shuffle_seed")
    epochs = check_int(training.get("epochs_seen"), "training", "epochs_seen")
    check_int(training.get("optimizer_iterations"), "training", "optimizer_iterations")
    model._shuffle_seed = seed
    model._epochs_seen = epochs


def _restore_optimizer(model, training, contents):
    slots = {}
    for spec in training["slots"]:
        if not isinstance(spec.get("slot"), str):
            raise ValueError(f"slot description without a slot name: {quote(spec)}")
        slots[(spec["layer"], spec["param"], spec["slot"])] = contents.arrays[spec["entry"]]
    model.optimizer.set_state({"iterations": training.get("optimizer_iterations"), "slots": slots}, model)


def _version():
    from . import __version__

    return __version__
