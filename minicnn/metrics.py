"""Keras' spelling: minicnn.metrics.SparseCategoricalAccuracy, CategoricalAccuracy (defined in
minicnn/training/metrics.py)."""
from .training.metrics import CategoricalAccuracy, Metric, SparseCategoricalAccuracy, deserialize, get, serialize

__all__ = ["Metric", "SparseCategoricalAccuracy", "CategoricalAccuracy", "get", "serialize", "deserialize"]
