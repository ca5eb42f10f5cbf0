"""Keras' spelling: minicnn.optimizers.Adam, AdamW, SGD, RMSprop and
minicnn.optimizers.schedules (defined in minicnn/training/optimizers.py and schedules.py)."""
from ..training.optimizers import (
    SGD,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
    deserialize,
    get,
    serialize,
)
from . import schedules as schedules  # minicnn.optimizers.schedules, as Keras spells it

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "RMSprop", "deserialize", "get", "serialize"]   # and the submodule schedules
