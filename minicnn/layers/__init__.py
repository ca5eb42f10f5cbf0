"""The layers: one small class each, all following the contract in base.py."""
from .activations import Linear, ReLU, Softmax
from .base import Layer
from .conv import Conv2D
from .core import Dense, Flatten
from .pooling import MaxPooling2D

LAYER_CLASSES = {cls.__name__: cls for cls in (Conv2D, MaxPooling2D, Flatten, Dense, ReLU, Softmax, Linear)}

__all__ = ["Layer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax", "Linear", "LAYER_CLASSES"]
