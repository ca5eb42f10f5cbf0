"""Saving and loading models: what goes into a model file and how a model comes back out.

    model.save("fashion.npz")                 # architecture + weights + compile + optimizer state
    model = minicnn.load_model("fashion.npz") # ready to predict, or to continue fit() exactly
    model.save_weights("w.npz"); model.load_weights("w.npz")

Paths ending in ".keras" and ".weights.h5" are Keras 3's own files (minicnn.keras_format);
every other path is minicnn's .npz, described below.

This module turns a model into (header, arrays) and back through the model's public methods
(get_config, get_weights/set_weights, get_training_state/set_training_state, compile, the
optimizer's get_state/set_state); minicnn.io, the container, writes and reads the file and
checks everything about it. Classes are found by name in the registries (minicnn.registry), so
this module imports no model class: the imports run model -> saving -> io, never back.

The header (format version 1):

    {"format": "minicnn-model", "format_version": 1, "minicnn_version": "0.1.0",
     "kind": "model" | "weights",
     "model": Sequential.get_config(),          # layer classes and their arguments
     "weights": [{"entry": "weight_0000", "layer": "conv2d", "param": "kernel",
                  "dtype": "float32", "shape": [3, 3, 1, 32]}, ...],
     "compile": {"optimizer": {...}, "loss": {...}, "metrics": [{"class_name", "name"}]} or null,
     "training": {"optimizer_iterations": 1875, "shuffle_seed": ..., "epochs_seen": 1,
                  "layer_generators": {"dropout": {"bit_generator": "PCG64", "state": "0x...", ...}},
                  "minicnn_generator": {...} or null,   # the random layers' generators (seeding.py)
                  "slots": [{"entry": "optimizer_0000", "layer": "conv2d", "param": "kernel",
                             "slot": "m", "dtype": "float32", "shape": [3, 3, 1, 32]}, ...]} or null}
"""
import numpy as np

from . import initializers, io, keras_format
from .errors import ModelFileError, NonFiniteStateError, quote, shorten
from .registry import MODELS
from .training import losses, metrics, optimizers
from .version import __version__

# The container's sections: load_model(compile=False) reads only the first.
WEIGHTS_SECTION = "weights"
OPTIMIZER_SECTION = "training.slots"


# -- writing -----------------------------------------------------------------------------------

def save_model(model, filepath, overwrite=True, include_optimizer=True):
    """Write `model` (see the module docstring); returns the path written.

    Raises NonFiniteStateError (a ValueError), writing nothing, when a weight or optimizer state
    holds NaN or inf: load_model refuses such a file, so writing it would only replace a good
    file with a useless one."""
    if keras_format.is_keras_archive(filepath):
        _check_writable(model, "save", include_optimizer=False)
        return keras_format.save_model(model, filepath, overwrite=overwrite)
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
        training = model.get_training_state()
        header["training"] = {
            "optimizer_iterations": int(state["iterations"]),
            "shuffle_seed": training["shuffle_seed"],
            "epochs_seen": training["epochs_seen"],
            "layer_generators": training["layer_generators"],
            "minicnn_generator": training["minicnn_generator"],
            "slots": slots,
        }
    return io.write(filepath, header, arrays, overwrite)


def save_weights(model, filepath, overwrite=True):
    """Write only the weights (the header still names their layers and shapes); like
    save_model, refuses NaN or inf weights before writing anything."""
    if keras_format.is_keras_weights(filepath):
        _check_writable(model, "save_weights", include_optimizer=False)
        return keras_format.save_weights(model, filepath, overwrite=overwrite)
    header, arrays = _weights_section(model, "save_weights", include_optimizer=False)
    header["kind"] = "weights"
    return io.write(filepath, header, arrays, overwrite)


def nonfinite_state(model, include_optimizer=True):
    """Names of the weights (and, with include_optimizer, optimizer states) that hold NaN or
    inf, e.g. ['dense/kernel']; empty when the model can be saved and loaded back."""
    names = [f"{shorten(layer.name)}/{key}" for layer in model.layers for key, array in layer.named_weights()
             if not np.isfinite(array).all()]
    if include_optimizer and model.compiled and model.optimizer.built:
        names += [f"{shorten(layer)}/{param} (optimizer state '{slot}')"
                  for (layer, param, slot), value in sorted(model.optimizer.get_state()["slots"].items())
                  if not np.isfinite(value).all()]
    return names


def _weights_section(model, who, include_optimizer):
    _check_writable(model, who, include_optimizer)
    header = {"format": io.FORMAT, "format_version": io.FORMAT_VERSION, "minicnn_version": __version__,
              "model": model.get_config(), "weights": []}
    arrays = {}
    for layer in model.layers:
        for key, array in layer.named_weights():
            entry = f"weight_{len(arrays):04d}"
            arrays[entry] = array
            header["weights"].append({"entry": entry, "layer": layer.name, "param": key, **_spec(array)})
    return header, arrays


def _check_writable(model, who, include_optimizer):
    if not model.built:
        raise ValueError(
            f"Sequential '{shorten(model.name)}': {who} needs a built model; give the first layer "
            f"input_shape=... or call build() or fit() first"
        )
    bad = nonfinite_state(model, include_optimizer)
    if bad:
        raise NonFiniteStateError(
            bad,
            f"Sequential '{shorten(model.name)}': {who}: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} "
            f"hold NaN or inf (training diverged); load_model would refuse the file, so nothing was "
            f"written and any existing file is unchanged"
        )


def _compile_config(model):
    if not model.compiled:
        return None
    return {
        "optimizer": optimizers.serialize(model.optimizer),
        "loss": losses.serialize(model.loss),
        # format version 1 writes {"class_name", "name"}, not the registry's {"class_name", "config"}
        "metrics": [{"class_name": metrics.serialize(m)["class_name"], "name": m.name} for m in model.compiled_metrics],
    }


def _spec(array):
    return {"dtype": array.dtype.name, "shape": list(array.shape)}


# -- reading -----------------------------------------------------------------------------------

def load_model(filepath, compile=True):
    """A Sequential from a file written by model.save; compiled, with its optimizer state, when
    the file has them and compile=True. Raises ModelFileError for anything that is not an
    intact minicnn model file, FileNotFoundError when there is no file. Loading draws nothing
    from minicnn's random generator; with compile=False the optimizer state (two thirds of a
    file saved during training) is not read at all."""
    if keras_format.is_keras_archive(filepath):   # architecture and weights; compile it yourself
        return keras_format.load_model(filepath, build_model)
    sections = (WEIGHTS_SECTION, OPTIMIZER_SECTION) if compile else (WEIGHTS_SECTION,)
    contents = io.read(filepath, sections)
    path, header = contents.path, contents.header
    if header.get("kind") != "model":
        raise ModelFileError(path, "holds only weights (written by save_weights); build the model "
                                   "and call model.load_weights(path)")
    model = _guarded(path, "its architecture is invalid", build_model, header.get("model"))
    _guarded(path, "its weights do not fit its architecture", _set_weights, model, contents, strict_names=True)
    training = header.get("training")
    if training is not None:
        _guarded(path, "its training state is invalid", _restore_training_state, model, training)
    if compile and header.get("compile") is not None:
        _guarded(path, "its compile configuration is invalid", _compile, model, header["compile"])
        if training is not None:
            _guarded(path, "its optimizer state does not fit the model", _restore_optimizer,
                     model, training, contents)
    return model


def load_weights(model, filepath):
    """Put a file's weights into `model` by layer order; shapes must match."""
    if keras_format.is_keras_weights(filepath):
        return keras_format.load_weights(model, filepath)
    contents = io.read(filepath, (WEIGHTS_SECTION,))
    if not model.built:
        raise ValueError(f"Sequential '{shorten(model.name)}': load_weights needs a built model")
    _guarded(contents.path, "its weights do not fit this model", _set_weights, model, contents, strict_names=False)


def _guarded(path, problem, function, *args, **kwargs):
    """Run a step of loading; any error becomes a ModelFileError that says which step failed."""
    try:
        return function(*args, **kwargs)
    except ModelFileError:
        raise
    except Exception as error:
        raise ModelFileError(path, f"{problem}: {error}") from None


def build_model(config):
    """The file's architecture, built with zeros for every initializer.

    np.zeros only reserves memory (its pages stay untouched until written), so an architecture
    far larger than the weights the file holds -- a 2 KB file can declare a Dense layer of
    10**9 parameters -- costs neither time nor memory before _set_weights refuses it, and
    loading draws nothing from minicnn's generator. The layers get their own initializers back
    afterwards, for get_config and for saving.
    """
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
    model = MODELS["Sequential"].from_config(cheap)   # format version 1 holds Sequential models only
    for layer, layer_config in zip(model.layers, own):
        for key, value in layer_config.items():
            if key.endswith("_initializer"):
                setattr(layer, key, initializers.get(value, f"{layer.describe()} {key}"))
    return model


def _set_weights(model, contents, strict_names):
    specs = contents.header["weights"]
    expected = [(layer, key, array) for layer in model.layers for key, array in layer.named_weights()]
    if len(specs) != len(expected):
        raise ValueError(f"the file has {len(specs)} weight arrays, the model needs {len(expected)}")
    for spec, (layer, key, array) in zip(specs, expected):
        if strict_names and (spec["layer"], spec["param"]) != (layer.name, key):
            raise ValueError(f"weight {quote(spec['entry'])} belongs to {quote(spec['layer'])}/{quote(spec['param'])}, "
                             f"expected {quote(layer.name)}/{key}")
        if tuple(spec["shape"]) != array.shape:
            raise ValueError(f"{layer.describe()} expects '{key}' of shape {array.shape}, "
                             f"the file has {tuple(spec['shape'])}")
    model.set_weights([contents.arrays[spec["entry"]] for spec in specs])


def _compile(model, config):
    metric_objects = []
    for item in config.get("metrics", []):
        if not isinstance(item, dict):
            raise ValueError(f"unknown metric {quote(item)}")
        metric_objects.append(metrics.deserialize({"class_name": item.get("class_name"),
                                                   "config": {"name": item.get("name")}}))
    model.compile(optimizer=optimizers.deserialize(config.get("optimizer")),
                  loss=losses.deserialize(config.get("loss")), metrics=metric_objects)


def _restore_training_state(model, training):
    model.set_training_state({key: training.get(key) for key in
                              ("shuffle_seed", "epochs_seen", "layer_generators", "minicnn_generator")})


def _restore_optimizer(model, training, contents):
    slots = {}
    for spec in training["slots"]:
        if not isinstance(spec.get("slot"), str):
            raise ValueError(f"slot description without a slot name: {quote(spec)}")
        slots[(spec["layer"], spec["param"], spec["slot"])] = contents.arrays[spec["entry"]]
    model.optimizer.set_state({"iterations": training.get("optimizer_iterations"), "slots": slots}, model)
