"""Keras' spelling: minicnn.optimizers.schedules.ExponentialDecay, CosineDecay,
PiecewiseConstantDecay (defined in minicnn/training/schedules.py)."""
from ..training.schedules import (
                                  CosineDecay,
                                  ExponentialDecay,
                                  LearningRateSchedule,
                                  PiecewiseConstantDecay,
                                  deserialize,
                                  serialize,
)

__all__ = [
                                  "CosineDecay",
                                  "ExponentialDecay",
                                  "LearningRateSchedule",
                                  "PiecewiseConstantDecay",
                                  "deserialize",
                                  "serialize",
]
