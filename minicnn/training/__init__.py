"""What training needs besides the model: optimizers, losses, metrics, callbacks, and the
checks and batching of user data. The model (minicnn/model.py) drives them; layers know
nothing of them.

    minicnn.optimizers.Adam, AdamW, SGD, RMSprop; minicnn.optimizers.schedules
    minicnn.losses.SparseCategoricalCrossentropy, CategoricalCrossentropy
    minicnn.callbacks.Callback, History, EarlyStopping, ModelCheckpoint, TerminateOnNaN,
        LearningRateScheduler, ReduceLROnPlateau
"""
from . import callbacks, data, losses, metrics, optimizers, schedules, trainer

__all__ = ["callbacks", "data", "losses", "metrics", "optimizers", "schedules", "trainer"]
