"""The layers: one small class each, all following the contract in base.py. Every class is in
REGISTRY, by which model configs and files name them."""
from .activations import Linear, ReLU, Softmax
from .augmentation import RandomFlip, RandomTranslation
from .base import REGISTRY, Layer
from .conv import Conv2D
from .core import Dense, Flatten
from .normalization import BatchNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D
from .regularization import Dropout

__all__ = ["Layer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "ReLU", "Softmax", "Linear", "REGISTRY",
           "AveragePooling2D", "GlobalAveragePooling2D", "BatchNormalization", "Dropout", "RandomFlip",
           "RandomTranslation"]
