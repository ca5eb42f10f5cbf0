"""What training needs besides the model: optimizers, losses, metrics, callbacks, and the
checks and batching of user data. The model (minicnn/model.py) drives them; layers know
nothing of them.

    minicnn.optimizers.Adam, SGD, RMSprop
    minicnn.losses.SparseCategoricalCrossentropy, CategoricalCrossentropy
    minicnn.callbacks.Callback, History, EarlyStopping, ModelCheckpoint, TerminateOnNaN
"""
from . import callbacks, data, losses, metrics, optimizers, trainer

__all__ = ["callbacks", "data", "losses", "metrics", "optimizers", "trainer"]
