"""Activation functions, so that tutorial code `activation=tf.nn.relu` ports as
`activation=minicnn.nn.relu`.

They work on arrays directly (`minicnn.nn.relu(x)`); given to a layer's `activation=` they stand
for the matching activation layer (minicnn.layers.activations), whose backward is hand-written.
"""
from .layers.activations import linear, relu, softmax

__all__ = ["relu", "softmax", "linear"]
