"""Accuracy metrics with Keras' names, accumulated over an epoch.

compile(metrics=["accuracy"]) picks the accuracy that fits the loss, as Keras does: with
sparse_categorical_crossentropy it compares argmax(y_pred) with the integer labels, with
categorical_crossentropy with argmax(y_true). The key in the logs and the History is the string
the user wrote ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy").
Ties in argmax go to the first class, as numpy's and TensorFlow's argmax.
"""
import numpy as np

from ..errors import quote


class Metric:
    """reset() / update(targets, y_pred) / result(); targets as the loss prepared them."""

    def __init__(self, name):
        self.name = name
        self.reset()

    def reset(self):
        self.correct = 0
        self.count = 0

    def result(self):
        return self.correct / self.count if self.count else 0.0

    def update(self, targets, y_pred):
        raise NotImplementedError


class SparseCategoricalAccuracy(Metric):
    """Share of samples whose argmax(y_pred) equals the integer label."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)

    def update(self, labels, y_pred):
        self.correct += int(np.count_nonzero(y_pred.argmax(axis=1) == labels))
        self.count += len(labels)


class CategoricalAccuracy(Metric):
    """Share of samples whose argmax(y_pred) equals argmax(y_true)."""

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)

    def update(self, targets, y_pred):
        self.correct += int(np.count_nonzero(y_pred.argmax(axis=1) == targets.argmax(axis=1)))
        self.count += len(targets)


_ACCURACY_NAMES = ("accuracy", "acc")
_BY_NAME = {"sparse_categorical_accuracy": SparseCategoricalAccuracy,
            "categorical_accuracy": CategoricalAccuracy}


def get(identifier, loss):
    """A fresh Metric for a name (or a Metric instance, returned as is) given the compiled loss."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        name = identifier.lower()
        if name in _ACCURACY_NAMES:
            cls = SparseCategoricalAccuracy if loss.sparse else CategoricalAccuracy
            return cls(name=identifier)
        if name in _BY_NAME:
            cls = _BY_NAME[name]
            if (cls is SparseCategoricalAccuracy) != bool(loss.sparse):
                raise ValueError(
                    f"compile: metric {quote(identifier)} does not fit the loss {quote(loss.name)}; use "
                    f"metrics=['accuracy'] and minicnn picks the right one"
                )
            return cls(name=identifier)
    raise ValueError(
        f"compile: unknown metric {quote(identifier)}; expected 'accuracy', 'acc', "
        f"'sparse_categorical_accuracy' or 'categorical_accuracy'"
    )
