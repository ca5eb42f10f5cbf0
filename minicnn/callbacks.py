"""Keras' spelling: minicnn.callbacks.Callback, History, EarlyStopping, ModelCheckpoint,
TerminateOnNaN, LearningRateScheduler, ReduceLROnPlateau (defined in
minicnn/training/callbacks.py)."""
from .training.callbacks import (
                                 Callback,
                                 EarlyStopping,
                                 History,
                                 LearningRateScheduler,
                                 ModelCheckpoint,
                                 ProgressLogger,
                                 ReduceLROnPlateau,
                                 TerminateOnNaN,
)

__all__ = [
                                 "Callback",
                                 "EarlyStopping",
                                 "History",
                                 "LearningRateScheduler",
                                 "ModelCheckpoint",
                                 "ProgressLogger",
                                 "ReduceLROnPlateau",
                                 "TerminateOnNaN",
]
