"""Keras' spelling: minicnn.losses.SparseCategoricalCrossentropy, ... (defined in
minicnn/training/losses.py)."""
from .training.losses import (EPSILON, CategoricalCrossentropy, Loss, SparseCategoricalCrossentropy,
                              categorical_crossentropy, deserialize, get, serialize,
                              sparse_categorical_crossentropy)

__all__ = ["EPSILON", "Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy",
           "sparse_categorical_crossentropy", "categorical_crossentropy", "get", "serialize", "deserialize"]
