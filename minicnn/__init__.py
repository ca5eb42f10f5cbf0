"""minicnn: a from-scratch convolutional neural network library.

    from minicnn import Sequential, Conv2D, MaxPooling2D, Flatten, Dense
"""
from . import callbacks, initializers, losses, metrics, nn, optimizers
from .config import floatx, set_floatx
from .errors import ModelFileError
from .kernels import backend_info, get_backend, set_backend
from .layers import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                     GlobalAveragePooling2D, Layer, MaxPooling2D, RandomFlip, RandomTranslation, ReLU,
                     Softmax)
from .model import Sequential
from .saving import load_model
from .seeding import set_seed
from .version import __version__

__all__ = [
    "Sequential", "Layer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax",
    "AveragePooling2D", "GlobalAveragePooling2D", "BatchNormalization", "Dropout", "RandomFlip",
    "RandomTranslation",
    "nn", "initializers", "floatx", "set_floatx", "set_seed",
    "set_backend", "get_backend", "backend_info",
    "optimizers", "losses", "metrics", "callbacks", "load_model", "ModelFileError", "__version__",
]
