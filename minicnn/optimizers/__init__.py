"""Keras' spelling: minicnn.optimizers.Adam, AdamW, SGD, RMSprop and
minicnn.optimizers.schedules (defined in minicnn/training/optimizers.py and schedules.py)."""
from ..training.optimizers import SGD, Adam, AdamW, Optimizer, RMSprop, deserialize, get, serialize
from . import schedules

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "get", "serialize", "deserialize"]   # and the submodule schedules
