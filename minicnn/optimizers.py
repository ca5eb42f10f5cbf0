"""Keras' spelling: minicnn.optimizers.Adam, SGD, RMSprop (defined in minicnn/training/optimizers.py)."""
from .training.optimizers import SGD, Adam, Optimizer, RMSprop, deserialize, get, serialize

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get", "serialize", "deserialize"]
