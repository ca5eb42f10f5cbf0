"""Reference fixtures computed by PyTorch: the file format, the loader, and a live recompute.

The fixtures are small ``.npz`` files in this folder, one per kind of layer, written by
``make_fixtures.py`` (run it with a Python that has torch; see its docstring). Everything in them
is float64 and in minicnn's layouts, so tests need neither torch nor any layout conversion:

    images     x, y, dx, dy             (N, H, W, C)          NHWC
    Conv2D     kernel, dkernel          (KH, KW, C_in, F)     as Keras
               bias, dbias              (F,)
    Dense      kernel, dkernel          (in, units)           as Keras
               bias, dbias              (units,)
    Softmax    x, y, dy, dx             (N, K)                softmax over the last axis
    CE         logits, dlogits, probs   (N, K); labels (N,) int64; loss 0-d (mean over the batch)
    BN         x, dy, y, dx             (N, units) or (N, H, W, C); normalised along "axis"
               gamma, beta, moving_*    (F,) with F the size of that axis; dgamma, dbeta too
    GAP        y, dy                    (N, C)

File layout (readable with ``np.load(path, allow_pickle=False)``; no pickled objects anywhere):

    "cases"            0-d unicode array: JSON list, one dict of hyperparameters per case
                       (always "name"; for Conv2D also "batch", "input_shape", "filters",
                       "kernel_size", "strides", "padding", "use_bias"; and so on)
    "c007.<array>"     the arrays of case 7. Conv2D and MaxPooling2D cases also store their
                       geometry as arrays ("c007.strides" int64 [sh, sw], "c007.kernel_size" or
                       "c007.pool_size" int64 [kh, kw], "c007.padding" 0-d unicode); the loader
                       checks that they agree with the JSON.

Each case dict returned by :func:`load_cases` is ``{"name", "params", "arrays"}``: ``params`` is
the JSON dict, ``arrays`` maps array names to NumPy arrays (``x``, ``kernel``, ``dy``, ``y``,
``dx``, ``dkernel``, ...). Which arrays are inputs and which are torch's results is listed in
:data:`INPUTS` and :data:`OUTPUTS`.
"""
import io
import json
import zipfile
from pathlib import Path

import numpy as np

FIXTURE_DIR = Path(__file__).resolve().parent

# kind -> file name. "maxpool2d_ties" holds pooling inputs with many equal values: it pins the
# tie rule (the first maximum in row-major window order takes the gradient, as PyTorch does).
# "model" is a small seed-like network (conv-relu-pool twice, flatten, dense-relu, dense) whose
# gradients run back from the cross-entropy of its logits: it pins the Flatten order (H, W, C).
FILES = {
    "conv2d": "conv2d.npz",
    "maxpool2d": "maxpool2d.npz",
    "maxpool2d_ties": "maxpool2d_ties.npz",
    "dense": "dense.npz",
    "softmax": "softmax.npz",
    "softmax_crossentropy": "softmax_crossentropy.npz",
    "model": "model.npz",
    "avgpool2d": "avgpool2d.npz",
    "global_avgpool2d": "global_avgpool2d.npz",
    "batchnorm_training": "batchnorm_training.npz",
    "batchnorm_inference": "batchnorm_inference.npz",
    "dropout": "dropout.npz",
}

# The arrays a case is computed from (given to torch) and the arrays torch computed.
# A name marked optional is absent when the case does not use it (use_bias=False).
INPUTS = {
    "conv2d": ["x", "kernel", "bias?", "dy"],
    "maxpool2d": ["x", "dy"],
    "maxpool2d_ties": ["x", "dy"],
    "dense": ["x", "kernel", "bias?", "dy"],
    "softmax": ["x", "dy"],
    "softmax_crossentropy": ["logits", "labels"],
    "model": ["x", "labels", "conv1.kernel", "conv1.bias", "conv2.kernel", "conv2.bias",
              "dense1.kernel", "dense1.bias", "dense2.kernel", "dense2.bias"],
    "avgpool2d": ["x", "dy"],
    "global_avgpool2d": ["x", "dy"],
    "batchnorm_training": ["x", "dy", "gamma", "beta", "moving_mean", "moving_variance"],
    "batchnorm_inference": ["x", "gamma", "beta", "moving_mean", "moving_variance"],
    "dropout": ["x"],
}
OUTPUTS = {
    "conv2d": ["y", "dx", "dkernel", "dbias?"],
    "maxpool2d": ["y", "dx"],
    "maxpool2d_ties": ["y", "dx"],
    "dense": ["y", "dx", "dkernel", "dbias?"],
    "softmax": ["y", "dx"],
    "softmax_crossentropy": ["probs", "loss", "dlogits"],
    "model": ["logits", "loss", "dlogits", "dx", "conv1.dkernel", "conv1.dbias",
              "conv2.dkernel", "conv2.dbias", "dense1.dkernel", "dense1.dbias",
              "dense2.dkernel", "dense2.dbias"],
    "avgpool2d": ["y", "dx"],
    "global_avgpool2d": ["y", "dx"],
    # new_moving_*: the moving statistics after the step, by Keras' rule (see make_fixtures.py)
    "batchnorm_training": ["y", "dx", "dgamma", "dbeta", "new_moving_mean", "new_moving_variance"],
    "batchnorm_inference": ["y"],
    # torch's dropout output y for x: its kept cells are x * 1/(1 - rate), the rest 0
    "dropout": ["y"],
}

# Hyperparameters that are also stored as arrays next to the data, per kind.
_GEOMETRY = {
    "conv2d": ("kernel_size", "strides", "padding"),
    "maxpool2d": ("pool_size", "strides", "padding"),
    "maxpool2d_ties": ("pool_size", "strides", "padding"),
    "avgpool2d": ("pool_size", "strides", "padding"),
}


def case_prefix(index):
    """The key prefix of case ``index`` in a fixture file: ``c007.``."""
    return "c%03d." % index


def geometry_arrays(kind, params):
    """The hyperparameters stored as arrays for a case (empty for kinds without geometry)."""
    out = {}
    for key in _GEOMETRY.get(kind, ()):
        value = params[key]
        out[key] = np.array(value) if isinstance(value, str) else np.array(value, dtype=np.int64)
    return out


def save_cases(path, kind, cases):
    """Write ``cases`` (dicts with "params" and "arrays") to ``path`` in the format above.

    The zip entries carry a fixed timestamp, so regenerating identical fixtures gives
    byte-identical files and ``git status`` shows whether anything really changed.
    """
    entries = [("cases", np.array(json.dumps([c["params"] for c in cases], sort_keys=True)))]
    for index, case in enumerate(cases):
        prefix = case_prefix(index)
        stored = dict(case["arrays"])
        stored.update(geometry_arrays(kind, case["params"]))
        entries.extend((prefix + name, stored[name]) for name in sorted(stored))
    tmp = Path(str(path) + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in entries:
            if array.dtype == object:
                raise TypeError("fixture array %r has dtype object" % key)
            buffer = io.BytesIO()
            # Not np.ascontiguousarray: it turns a 0-d array (the JSON, a loss) into shape (1,).
            np.lib.format.write_array(buffer, np.array(array, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
    tmp.replace(path)


def load_cases(kind, directory=FIXTURE_DIR):
    """All cases of one kind, in file order, as ``{"name", "params", "arrays"}`` dicts."""
    path = Path(directory) / FILES[kind]
    with np.load(path, allow_pickle=False) as data:
        all_params = json.loads(str(data["cases"][()]))
        arrays = [dict() for _ in all_params]
        for key in data.files:
            if key == "cases":
                continue
            head, _, name = key.partition(".")
            arrays[int(head[1:])][name] = data[key]
    cases = []
    for params, case_arrays in zip(all_params, arrays):
        for key, stored in geometry_arrays(kind, params).items():
            if not np.array_equal(case_arrays.pop(key), stored):
                raise ValueError("%s case %r: array %r disagrees with the JSON description"
                                 % (kind, params["name"], key))
        cases.append({"name": params["name"], "params": params, "arrays": case_arrays})
    return cases


def array_names(kind, params, which):
    """The input (``which="inputs"``) or output array names that a case of ``kind`` has."""
    names = (INPUTS if which == "inputs" else OUTPUTS)[kind]
    out = []
    for name in names:
        if name.endswith("?"):
            if not params.get("use_bias", True):
                continue
            name = name[:-1]
        out.append(name)
    return out


def recompute(kind, case):
    """Recompute a case's outputs with PyTorch from its stored inputs.

    Imports torch (and the maker, which holds the torch code); raises ImportError without it.
    Returns a dict with the same names as :data:`OUTPUTS` lists for the case.
    """
    try:
        from . import make_fixtures
    except ImportError:
        if __package__:
            raise
        import make_fixtures  # this folder is on sys.path: loaded as a top-level module
    inputs = {name: case["arrays"][name] for name in array_names(kind, case["params"], "inputs")}
    return make_fixtures.COMPUTE[kind](case["params"], inputs)
