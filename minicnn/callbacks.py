"""Keras' spelling: minicnn.callbacks.Callback, History, EarlyStopping, ModelCheckpoint,
TerminateOnNaN (defined in minicnn/training/callbacks.py)."""
from .training.callbacks import Callback, EarlyStopping, History, ModelCheckpoint, ProgressLogger, TerminateOnNaN

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN", "ProgressLogger"]
