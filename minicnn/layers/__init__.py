"""The layers: one small class each, all following the contract in base.py. Every class is in
REGISTRY, by which model configs and files name them."""
from .activations import Linear, ReLU, Softmax
from .base import REGISTRY, Layer
from .conv import Conv2D
from .core import Dense, Flatten
from .pooling import MaxPooling2D

__all__ = ["Layer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax", "Linear", "REGISTRY"]
