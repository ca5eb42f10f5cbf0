"""Keras 3's own files, both ways: the .keras archive and the .weights.h5 weights file.

    model = minicnn.load_model("keras_model.keras")     # a Keras Sequential, as a minicnn model
    model.save("for_keras.keras")                       # keras.saving.load_model reads it
    model.save_weights("w.weights.h5"); model.load_weights("w.weights.h5")

The .keras archive is a zip of three entries (Keras 3's saving_lib):

    metadata.json      {"keras_version": ..., "date_saved": ...}
    config.json        {"class_name": "Sequential", "config": {"layers": [{"class_name":
                        "InputLayer", "config": {"batch_shape": [null, H, W, C]}}, {"class_name":
                        "Conv2D", "config": {...}}, ...]}}
    model.weights.h5   HDF5: layers/<key>/vars/0, 1, ... (kernel, bias), where <key> is the
                       layer's CLASS name in snake case, made unique in layer order (conv2d,
                       conv2d_1, max_pooling2d, re_lu, ...), not the layer's name

and a .weights.h5 file is the same HDF5 layout on its own. Keras and minicnn share their
weight layouts (NHWC, kernels (KH, KW, C_in, F) and (in, units)), so arrays move unchanged.

Which Keras layers map to which minicnn layers: KERAS_TO_MINICNN below (README has the table).
Anything else -- an LSTM, a Conv1D, a Lambda, a custom class, a Functional model -- is refused
with one error naming the layer and its class, and so is any argument minicnn cannot honour
(dilation_rate != 1, groups != 1, channels_first, regularizers, constraints, ...): loading
never silently computes something else than Keras would.

Untrusted files: nothing in a file is executed or unpickled (config.json is JSON, read by
json.loads; a Lambda layer's marshalled code is refused by its class name before anything
else is looked at); every zip entry is read with a size cap, so a zip bomb stops at the cap;
only HDF5 datasets at the expected paths, through hard links, with stored (not external or
virtual) data, of a float dtype and exactly the architecture's shapes are read. The
architecture is built with zero-cost initializers first (minicnn.saving's build_model), so a
small file declaring a huge layer costs nothing before its weights are found missing.

h5py is an optional extra: pip install "minicnn[keras]".
"""
import datetime
import io as bytes_io
import json
import os
import re
import zipfile

from . import initializers, io
from .errors import ModelFileError, quote, shorten
from .version import __version__

CONFIG_ENTRY = "config.json"
METADATA_ENTRY = "metadata.json"
WEIGHTS_ENTRY = "model.weights.h5"
MAX_JSON_BYTES = 16 << 20           # a config of thousands of layers is well under 1 MB
MAX_WEIGHTS_BYTES = 8 << 30         # larger than any model minicnn can train
_MAX_INFLATION = 200                # entry size / compressed size beyond which it is a zip bomb
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
# The oldest Keras whose saving_lib reads what this module writes (the layout of Keras 3.0).
KERAS_VERSION_WRITTEN = "3.0.0"


def require_h5py():
    """The h5py package, imported on first use (an optional extra)."""
    try:
        import h5py
    except ImportError as error:
        raise ImportError('Keras .keras and .weights.h5 files need the "h5py" package: pip install '
                          f'"minicnn[keras]" (or pip install h5py); importing it failed: {error}') from None
    return h5py


def is_keras_archive(path):
    return str(path).endswith(".keras")


def is_keras_weights(path):
    return str(path).endswith(".weights.h5")


# -- Keras config <-> minicnn config -----------------------------------------------------------

# Keras layer class -> minicnn layer class (Activation is decided by its 'activation' argument).
_SAME_NAMES = ("Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax", "AveragePooling2D",
               "GlobalAveragePooling2D", "BatchNormalization", "Dropout", "RandomFlip", "RandomTranslation")
KERAS_TO_MINICNN = {**{name: name for name in _SAME_NAMES}, "Activation": None}
_ACTIVATION_LAYERS = {"relu": "ReLU", "softmax": "Softmax", "linear": "Linear"}
MINICNN_TO_KERAS = {**{name: name for name in _SAME_NAMES}, "Linear": "Activation"}

# Arguments minicnn takes as they are.
_ARGUMENTS = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "activation", "use_bias"),
    "Dense": ("units", "activation", "use_bias"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "Softmax": ("axis",),
    "Flatten": (), "ReLU": (), "Activation": (),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "GlobalAveragePooling2D": ("keepdims",),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "Dropout": ("rate", "seed"),
    "RandomFlip": ("mode", "seed"),
    "RandomTranslation": ("height_factor", "width_factor", "fill_mode", "interpolation", "seed", "fill_value"),
}
# Arguments whose value must be the one given here (anything else computes something else).
_REQUIRED_VALUES = {
    "data_format": ("channels_last", None),
    "dilation_rate": ([1, 1], 1, None),
    "groups": (1, None),
    "max_value": (None,),
    "negative_slope": (0, 0.0),
    "threshold": (0, 0.0),
    "noise_shape": (None,),
    "synchronized": (False, None),
    "renorm": (False, None),
}
# Arguments with no effect on what a model computes or learns in minicnn: names, bookkeeping,
# initial values (the file's weights replace them), and keys whose null means "off".
# (batch_input_shape: tf.keras' first layer carries the input shape itself, read separately.)
# (renorm_momentum: unused while renorm is False, which _REQUIRED_VALUES makes sure of.)
_IGNORED = {"name", "trainable", "dtype", "kernel_initializer", "bias_initializer", "seed", "batch_input_shape",
            "beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
            "renorm_momentum"}


def _snake_case(class_name):
    """Keras' naming.to_snake_case: 'Conv2D' -> 'conv2d', 'MaxPooling2D' -> 'max_pooling2d',
    'ReLU' -> 're_lu'."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def weight_keys(keras_class_names):
    """The h5 group of each layer, as Keras' _save_container_state names them."""
    used, keys = {}, []
    for class_name in keras_class_names:
        base = _snake_case(class_name)
        if base in used:
            used[base] += 1
            keys.append(f"{base}_{used[base]}")
        else:
            used[base] = 0
            keys.append(base)
    return keys


def _dtype_name(value):
    if isinstance(value, dict):   # Keras 3: {"class_name": "DTypePolicy", "config": {"name": "float32"}}
        value = (value.get("config") or {}).get("name")
    return value


def _initializer(value):
    """minicnn's initializer of the same name, else the layer's default (weights replace it)."""
    if isinstance(value, dict):
        value = value.get("class_name")
    name = _snake_case(value) if isinstance(value, str) else None
    return name if name in initializers.REGISTRY else None


def _layer_from_keras(entry, position):
    """(minicnn layer description, keras class name) for one entry of config.json's layers."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config", {}), dict):
        raise ValueError(f"layer {position} is not a layer description: {quote(entry)}")
    class_name, config = entry.get("class_name"), entry.get("config", {})
    described = f"layer {quote(config.get('name'))} (class {quote(class_name)})"
    if class_name not in KERAS_TO_MINICNN or entry.get("registered_name") not in (None, class_name) \
            or entry.get("module") not in (None, "keras.layers"):
        raise ValueError(f"{described} has no minicnn equivalent; minicnn reads Keras' "
                         f"{sorted(KERAS_TO_MINICNN)} and InputLayer")
    problems = []
    for key, value in config.items():
        if key in _IGNORED or key in _ARGUMENTS[class_name] or (class_name == "Activation" and key == "activation"):
            continue
        if key in _REQUIRED_VALUES:
            if value not in _REQUIRED_VALUES[key]:
                problems.append(f"{key}={quote(value)} (minicnn supports {quote(_REQUIRED_VALUES[key][0])})")
        elif value is not None:   # regularizers, constraints, quantization, LoRA, unknown keys
            problems.append(f"{key}={quote(value)} (minicnn has no such argument)")
    if problems:
        raise ValueError(f"{described}: unsupported arguments {', '.join(problems)}")
    dtype = _dtype_name(config.get("dtype"))
    if dtype not in (None, "float32", "float64"):
        raise ValueError(f"{described}: dtype {quote(dtype)} is not supported (minicnn computes in float32 or float64)")
    arguments = {key: config[key] for key in _ARGUMENTS[class_name] if key in config}
    arguments["name"] = config.get("name")
    if isinstance(config.get("trainable"), bool):
        arguments["trainable"] = config["trainable"]
    if dtype is not None:
        arguments["dtype"] = dtype
    if class_name in ("Conv2D", "Dense"):   # named always, so that build_model replaces them by zeros
        for key, default in (("kernel_initializer", "glorot_uniform"), ("bias_initializer", "zeros")):
            arguments[key] = _initializer(config.get(key)) or default
    minicnn_class = KERAS_TO_MINICNN[class_name]
    if class_name == "Activation":
        activation = config.get("activation")
        if activation not in _ACTIVATION_LAYERS:
            raise ValueError(f"{described}: activation {quote(activation)} has no minicnn layer "
                             f"(minicnn has {sorted(_ACTIVATION_LAYERS)})")
        minicnn_class = _ACTIVATION_LAYERS[activation]
    if "activation" in arguments and arguments["activation"] not in _ACTIVATION_LAYERS:
        raise ValueError(f"{described}: activation {quote(arguments['activation'])} is not supported "
                         f"(minicnn has {sorted(_ACTIVATION_LAYERS)})")
    for key in ("kernel_size", "strides", "pool_size"):   # JSON lists; minicnn wants tuples
        if isinstance(arguments.get(key), list):
            arguments[key] = tuple(arguments[key])
    return {"class_name": minicnn_class, "config": arguments}, class_name


def minicnn_config_from_keras(config):
    """(minicnn Sequential config, [keras class name of each layer]) for config.json's content."""
    if not isinstance(config, dict):
        raise ValueError("config.json does not hold a model description")
    if config.get("class_name") != "Sequential":
        raise ValueError(f"the model is a {quote(config.get('class_name'))}; minicnn reads Keras "
                         f"Sequential models only")
    model_config = config.get("config")
    if not isinstance(model_config, dict) or not isinstance(model_config.get("layers"), list):
        raise ValueError("the Sequential model has no 'layers' list")
    entries = model_config["layers"]
    input_shape = model_config.get("build_input_shape")
    if entries and isinstance(entries[0], dict) and entries[0].get("class_name") == "InputLayer":
        input_config = entries[0].get("config") or {}
        input_shape = input_config.get("batch_shape", input_config.get("batch_input_shape"))
        entries = entries[1:]
    elif entries and isinstance(entries[0], dict) and isinstance(entries[0].get("config"), dict) \
            and "batch_input_shape" in entries[0]["config"]:
        input_shape = entries[0]["config"]["batch_input_shape"]
    layers, classes = [], []
    for position, entry in enumerate(entries):
        layer, class_name = _layer_from_keras(entry, position)
        layers.append(layer)
        classes.append(class_name)
    if not layers:
        raise ValueError("the Sequential model has no layers")
    if not isinstance(input_shape, list) or len(input_shape) < 2 or input_shape[0] is not None:
        raise ValueError(f"the model's input shape {quote(input_shape)} is not (None, ...) with known sizes")
    layers[0]["config"]["input_shape"] = input_shape[1:]   # where a minicnn user writes it
    name = model_config.get("name")
    return ({"name": name if isinstance(name, str) else None, "layers": layers,
             "build_input_shape": list(input_shape[1:])}, classes)


def _keras_dtype(name):
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}


def _keras_initializer(description):
    name = description["class_name"]
    keras_name = "".join(part.capitalize() for part in name.split("_"))
    seed = description.get("config", {}).get("seed")
    return {"module": "keras.initializers", "class_name": keras_name,
            "config": {} if name in ("zeros", "ones") else {"seed": seed}, "registered_name": None}


def _layer_to_keras(layer, class_name, config):
    keras_class = MINICNN_TO_KERAS.get(class_name)
    if keras_class is None:
        raise ValueError(f"{layer.describe()} has no Keras equivalent that minicnn can write "
                         f"(it writes {sorted(MINICNN_TO_KERAS)})")
    keras_config = {"name": layer.name, "trainable": layer.trainable, "dtype": _keras_dtype(layer.dtype)}
    if keras_class == "Activation":
        keras_config["activation"] = layer.activation_name
    for key in _ARGUMENTS[keras_class]:
        if key in config:
            keras_config[key] = config[key]
    for key in ("kernel_initializer", "bias_initializer"):
        if key in config:
            keras_config[key] = _keras_initializer(config[key])
    if keras_class in ("Conv2D", "MaxPooling2D", "Flatten", "AveragePooling2D", "GlobalAveragePooling2D",
                       "RandomFlip", "RandomTranslation"):
        keras_config["data_format"] = "channels_last"
    return {"module": "keras.layers", "class_name": keras_class, "config": keras_config, "registered_name": None,
            "build_config": {"input_shape": [None, *layer.input_shape]}}


def keras_config(model):
    """config.json's content for a built minicnn model."""
    minicnn_config = model.get_config()
    input_layer = {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                   "config": {"batch_shape": [None, *model.input_shape], "dtype": model.dtype,
                              "sparse": False, "name": "input_layer"}}
    layers = [input_layer] + [_layer_to_keras(layer, entry["class_name"], entry["config"])
                              for layer, entry in zip(model.layers, minicnn_config["layers"])]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": model.name, "trainable": True, "dtype": _keras_dtype(model.dtype),
                       "layers": layers, "build_input_shape": [None, *model.input_shape]},
            "build_config": {"input_shape": [None, *model.input_shape]}, "compile_config": None}


def _keras_classes_of(model):
    classes = []
    for layer in model.layers:
        keras_class = MINICNN_TO_KERAS.get(type(layer).__name__)
        if keras_class is None:
            raise ValueError(f"{layer.describe()} has no Keras equivalent that minicnn can write "
                             f"(it writes {sorted(MINICNN_TO_KERAS)})")
        classes.append(keras_class)
    return classes


# -- weights: the HDF5 layout ------------------------------------------------------------------

def _weights_h5_bytes(model, keras_classes):
    h5py = require_h5py()
    buffer = bytes_io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers")
        for layer, key in zip(model.layers, weight_keys(keras_classes)):
            group = h5.create_group(f"layers/{key}/vars")
            group.attrs["name"] = layer.name
            for index, array in enumerate(layer.get_weights()):
                group.create_dataset(str(index), data=array)
        h5.create_group("vars").attrs["name"] = model.name
    return buffer.getvalue()


def _hard_child(h5py, group, name, path):
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise ValueError(f"'{path}' is a {type(link).__name__}; only plain (hard-linked) groups and datasets are read")
    return group[name]


def _read_weights_h5(h5, model, keras_classes):
    """The arrays of `model`'s layers from an open h5 file, every dataset checked before it is read."""
    h5py = require_h5py()
    weights = []
    declared, file_size = 0, h5.id.get_filesize()
    for layer, key in zip(model.layers, weight_keys(keras_classes)):
        expected = [array for _, array in layer.named_weights()]
        node, path = h5, ""
        for part in ("layers", key, "vars"):
            path = f"{path}/{part}"
            node = _hard_child(h5py, node, part, path) if node is not None else None
        if node is None or not isinstance(node, h5py.Group):
            if expected:
                raise ValueError(f"no weights for {layer.describe()} (expected the group 'layers/{key}/vars')")
            continue
        names = sorted(node.keys(), key=lambda n: (len(n), n))
        if names != [str(i) for i in range(len(expected))]:
            raise ValueError(f"{layer.describe()} has {len(expected)} weight arrays, the file's 'layers/{key}/vars' "
                             f"holds {quote(names[:8])}")
        for index, target in enumerate(expected):
            dataset = _hard_child(h5py, node, str(index), f"layers/{key}/vars/{index}")
            if not isinstance(dataset, h5py.Dataset):
                raise ValueError(f"'layers/{key}/vars/{index}' is not a dataset")
            # first, before the shape: asking an unlimited virtual dataset its shape makes HDF5
            # open the files it points at (another file read, or a hang on a FIFO)
            if dataset.is_virtual or dataset.external:
                raise ValueError(f"'layers/{key}/vars/{index}' keeps its data outside the file; refused")
            if dataset.shape != target.shape:
                raise ValueError(f"{layer.describe()} expects weight {index} of shape {target.shape}, "
                                 f"the file has {dataset.shape}")
            if dataset.dtype.kind != "f" or dataset.dtype.itemsize > 8:
                raise ValueError(f"'layers/{key}/vars/{index}' has dtype {dataset.dtype}, expected float32/float64")
            # a dataset never written holds only its fill value: a 757-byte file could declare
            # gigabytes. As in minicnn's .npz, the arrays may not declare more than the file holds.
            declared += dataset.size * dataset.dtype.itemsize
            if declared > file_size:
                raise ValueError(f"the weights declare {declared} bytes but the file has {file_size}")
            weights.append(dataset[()])
    return weights


def _open_h5(h5py, source, path):
    try:
        return h5py.File(source, "r")
    except Exception as error:
        raise ModelFileError(path, f"is not a readable HDF5 file ({type(error).__name__}: {shorten(error, 300)})") from None


def save_weights(model, filepath, overwrite=True):
    """Write model's weights as a Keras .weights.h5 file; returns the path written. (The caller,
    minicnn.saving, has checked that the model is built and its weights finite.)"""
    return io.write_bytes(filepath, _weights_h5_bytes(model, _keras_classes_of(model)), overwrite=overwrite)


def load_weights(model, filepath):
    """Read a Keras .weights.h5 file (of the same architecture) into model; every array is
    checked before any is written."""
    h5py = require_h5py()
    path = _existing(filepath)
    if not model.built:
        raise ValueError(f"Sequential '{shorten(model.name)}': load_weights needs a built model")
    with open(path, "rb") as handle:
        if handle.read(len(_HDF5_MAGIC)) != _HDF5_MAGIC:
            raise ModelFileError(path, "is not an HDF5 file (Keras .weights.h5)")
    keras_classes = _keras_classes_of(model)
    with _open_h5(h5py, path, path) as h5:
        weights = _guarded(path, "its weights do not fit this model", _read_weights_h5, h5, model, keras_classes)
    _guarded(path, "its weights do not fit this model", model.set_weights, weights)


# -- the .keras archive ------------------------------------------------------------------------

def save_model(model, filepath, overwrite=True):
    """Write model as a Keras 3 .keras archive (architecture and weights; no optimizer state:
    compile the loaded model again). Returns the path written."""
    keras_classes = _keras_classes_of(model)
    config = json.dumps(keras_config(model), allow_nan=False)
    metadata = json.dumps({"keras_version": KERAS_VERSION_WRITTEN, "minicnn_version": __version__,
                           "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")})
    weights = _weights_h5_bytes(model, keras_classes)
    buffer = bytes_io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(METADATA_ENTRY, metadata)
        archive.writestr(CONFIG_ENTRY, config)
        archive.writestr(WEIGHTS_ENTRY, weights)
    return io.write_bytes(filepath, buffer.getvalue(), overwrite=overwrite)


def load_model(filepath, build_model):
    """A minicnn Sequential (uncompiled) from a Keras 3 .keras archive; build_model(config)
    builds a minicnn model config at no cost (minicnn.saving passes its own, which imports
    this module: the imports run saving -> keras_format)."""
    h5py = require_h5py()
    path = _existing(filepath)
    with open(path, "rb") as handle:
        if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ModelFileError(path, "is not a Keras .keras archive (not a zip file)")
    try:
        with zipfile.ZipFile(path) as archive:
            config_bytes = _read_entry(archive, CONFIG_ENTRY, MAX_JSON_BYTES)
            weights_bytes = _read_entry(archive, WEIGHTS_ENTRY, MAX_WEIGHTS_BYTES)
    except (ModelFileError, MemoryError):
        raise
    except Exception as error:   # zipfile and zlib have their own errors for damaged archives
        raise ModelFileError(path, f"is damaged or truncated ({type(error).__name__}: {shorten(error, 300)})") from None
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:   # RecursionError: nested too deeply
        raise ModelFileError(path, f"has an unreadable config.json ({type(error).__name__}: "
                                   f"{shorten(error, 300)})") from None
    minicnn_config, keras_classes = _guarded(path, "its architecture cannot be read by minicnn",
                                             minicnn_config_from_keras, config)
    model = _guarded(path, "its architecture is invalid", build_model, minicnn_config)
    with _open_h5(h5py, bytes_io.BytesIO(weights_bytes), path) as h5:
        weights = _guarded(path, "its weights do not fit its architecture", _read_weights_h5, h5, model, keras_classes)
    _guarded(path, "its weights do not fit its architecture", model.set_weights, weights)
    return model


def _read_entry(archive, name, limit):
    """An archive entry's bytes; a missing entry, or one that inflates past `limit`, is refused
    without inflating more than limit + 1 bytes (the sizes in a zip's directory are not trusted)."""
    path = archive.filename
    entries = [info for info in archive.infolist() if info.filename == name]
    if not entries:
        listed = ", ".join(quote(n) for n in archive.namelist()[:8]) or "nothing"
        raise ModelFileError(path, f"is not a Keras .keras archive: it has no '{name}' (it holds {listed})")
    if len(entries) > 1:   # which one a reader takes differs between readers: refuse to guess
        raise ModelFileError(path, f"holds {len(entries)} entries named '{name}'")
    info = entries[0]
    if info.file_size > limit:
        raise ModelFileError(path, f"entry '{name}' declares {info.file_size} bytes, more than the {limit} allowed")
    # A zip bomb: Keras stores its entries or deflates JSON about 10x and weights hardly at all;
    # a 1.6 KB entry declaring a gigabyte is refused before it inflates.
    if info.file_size > _MAX_INFLATION * info.compress_size + (1 << 20):
        raise ModelFileError(path, f"entry '{name}' declares {info.file_size} bytes from {info.compress_size} "
                                   f"compressed, more than {_MAX_INFLATION}x: refused as a zip bomb")
    cap = min(limit, info.file_size)   # zipfile stops at the declared size and checks the CRC
    with archive.open(info) as member:
        data = member.read(cap + 1)
    if len(data) > cap:
        raise ModelFileError(path, f"entry '{name}' inflates past the {cap} bytes it declares")
    return data


def _existing(filepath):
    if not isinstance(filepath, (str, bytes, os.PathLike)):
        raise TypeError(f"filepath must be a path (str or os.PathLike), received {type(filepath).__name__}")
    path = os.fspath(filepath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    if os.path.isdir(path):
        raise ModelFileError(path, "is a directory, not a Keras file")
    if os.path.getsize(path) == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    return path


def _guarded(path, problem, function, *args):
    try:
        return function(*args)
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(path, f"{problem}: {shorten(error, 1000)}") from None
