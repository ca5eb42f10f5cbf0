"""minicnn: a from-scratch convolutional neural network library.

    from minicnn import Sequential, Conv2D, MaxPooling2D, Flatten, Dense
"""
from . import initializers, nn
from .config import floatx, set_floatx
from .kernels import backend_info, get_backend, set_backend
from .layers import Conv2D, Dense, Flatten, Layer, MaxPooling2D, ReLU, Softmax
from .model import Sequential
from .seeding import set_seed
from .training import callbacks, losses, metrics, optimizers
from .io import ModelFileError, load_model

# Keras spells these minicnn.optimizers.Adam, minicnn.losses..., and users write
# `from minicnn.optimizers import Adam`; registering the training modules under those names
# makes both work without a second copy of each module.
import sys as _sys

for _name in ("callbacks", "losses", "metrics", "optimizers"):
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]
del _sys, _name

__version__ = "0.1.0"

__all__ = [
    "Sequential", "Layer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax",
    "nn", "initializers", "floatx", "set_floatx", "set_seed",
    "set_backend", "get_backend", "backend_info",
    "optimizers", "losses", "metrics", "callbacks", "load_model", "ModelFileError",
]
