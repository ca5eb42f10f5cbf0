"""Accuracy metrics with Keras' names, accumulated over an epoch.

compile(metrics=["accuracy"]) picks the accuracy that fits the loss, as Keras does: with
sparse_categorical_crossentropy it compares argmax(y_pred) with the integer labels, with
categorical_crossentropy with argmax(y_true). The key in the logs and the History is the string
the user wrote ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy").
Ties in argmax go to the first class, as numpy's and TensorFlow's argmax.
"""
import numpy as np

from ..errors import check_str, quote
from ..registry import Registry

REGISTRY = Registry("metric")


class Metric:
    """reset() / update(targets, y_pred) / result(); targets as the loss prepared them."""

    sparse = False     # whether it takes integer labels (the sparse loss's targets)

    def __init__(self, name):
        self.name = check_str(name, type(self).__name__, "name")
        self.reset()

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def reset(self):
        self.correct = 0
        self.count = 0

    def result(self):
        return self.correct / self.count if self.count else 0.0

    def update(self, targets, y_pred):
        raise NotImplementedError


@REGISTRY.register("sparse_categorical_accuracy")
class SparseCategoricalAccuracy(Metric):
    """Share of samples whose argmax(y_pred) equals the integer label."""

    sparse = True

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)

    def update(self, labels, y_pred):
        self.correct += int(np.count_nonzero(y_pred.argmax(axis=1) == labels))
        self.count += len(labels)


@REGISTRY.register("categorical_accuracy")
class CategoricalAccuracy(Metric):
    """Share of samples whose argmax(y_pred) equals argmax(y_true)."""

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)

    def update(self, targets, y_pred):
        self.correct += int(np.count_nonzero(y_pred.argmax(axis=1) == targets.argmax(axis=1)))
        self.count += len(targets)


_ACCURACY_NAMES = ("accuracy", "acc")


def get(identifier, loss):
    """A fresh Metric for a name (or a Metric instance, returned as is) given the compiled loss;
    one whose targets are not the loss's (integer labels or one-hot rows: Metric.sparse) is
    refused here, not by a broadcasting error in the first step."""
    if isinstance(identifier, Metric):
        # minicnn's own accuracies only: a subclass's `sparse` may be left at its default
        if type(identifier) in (SparseCategoricalAccuracy, CategoricalAccuracy) and \
                bool(identifier.sparse) != bool(loss.sparse):
            takes = "integer labels" if identifier.sparse else "one-hot targets"
            gives = "integer labels" if loss.sparse else "one-hot targets"
            raise ValueError(
                f"compile: metric {quote(identifier.name)} ({type(identifier).__name__}) takes {takes}, "
                f"but the loss {quote(loss.name)} gives {gives}; use metrics=['accuracy'] and minicnn "
                f"picks the right one (a Metric subclass says which it takes with `sparse`)"
            )
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _ACCURACY_NAMES:
        cls = SparseCategoricalAccuracy if loss.sparse else CategoricalAccuracy
        return cls(name=identifier)
    cls = REGISTRY.by_alias(identifier)
    if cls is None:
        raise ValueError(
            f"compile: unknown metric {quote(identifier)}; expected 'accuracy', 'acc', "
            f"'sparse_categorical_accuracy' or 'categorical_accuracy'"
        )
    if cls.sparse != bool(loss.sparse):
        raise ValueError(
            f"compile: metric {quote(identifier)} does not fit the loss {quote(loss.name)}; use "
            f"metrics=['accuracy'] and minicnn picks the right one"
        )
    return cls(name=identifier)


# {'class_name': ..., 'config': ...} and back; deserialize accepts only minicnn's own metric classes
serialize = REGISTRY.serialize
deserialize = REGISTRY.deserialize
