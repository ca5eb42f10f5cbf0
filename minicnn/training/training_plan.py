"""fit's fast path: a whole training step bound to the engine once (kernels.training_plan).

Why: the C engine's training step at batch 32 is ~16 calls into C, and the Python around them
(the layers, the kernel face's checks, the pointer conversions, the optimizer's loop) cost
~0.9 ms of a ~5.3 ms step. Most of that was the Python running cold right after each large C
call, so the cure is less distinct Python per step, not faster Python: a plan runs the
forward, the backward and the update as three loops over prepared C calls, and only the loss
stays in NumPy (docs/performance.md, "A training step bound to C"). The same C functions with
the same arguments in the same order: the same bits as the general path, which the tests pin.

A model is planned when every layer is exactly a Conv2D, MaxPooling2D, Flatten, Dense, ReLU or
Dropout (subclasses may compute something else), the last a Dense, every layer with weights is
trainable, activations are none or ReLU (fused into the kernel) except a final softmax, the
optimizer is exactly Adam or SGD, and the engine has plans (the C engine). Anything else
trains through the layers, as do train_on_batch and a plan that keeps going stale.

What differs from the general path after fit: the layers keep no forward caches (a backward
without a new forward raises, as after predict), and each layer's grads are the plan's
buffers, overwritten by the next planned step.
"""
import math

import numpy as np

from .. import kernels
from ..layers.activations import ReLU
from ..layers.conv import Conv2D
from ..layers.core import Dense, Flatten
from ..layers.pooling import MaxPooling2D
from ..layers.regularization import Dropout
from .optimizers import SGD, Adam

# A plan is rebuilt when it goes stale (a weight array replaced, set_backend, a layer made
# non-trainable); past this many builds in one fit, the rest of the fit runs the layers
# (a callback that replaces arrays every step would otherwise pay a build per step).
MAX_BUILDS_PER_FIT = 8


class FitPlans:
    """The training plans of one fit: one per batch shape (the full batch and a shorter last
    one), made on first use and dropped with the fit (close), so no buffers outlive it."""

    def __init__(self, model):
        self.model = model
        self._plans = {}        # (x shape, dtype, fused) -> _PlannedStep
        self._refused = {}      # the same keys -> _context() when a plan could not be made
        self._builds = 0
        self.planned_steps = 0  # steps run through a plan (the tests read it)

    def step(self, x_batch, targets, fused):
        """Run one planned training step and return (loss, y_pred), or None: the caller runs
        the general path."""
        key = (x_batch.shape, x_batch.dtype, fused)
        planned = self._plans.get(key)
        if planned is None or not planned.current():
            # a refused plan is tried again only once something it depends on changed (back on
            # the C engine after a step on NumPy, a new optimizer built by its first step)
            if self._builds >= MAX_BUILDS_PER_FIT or self._refused.get(key) == _context(self.model):
                return None
            self._builds += 1
            planned = _PlannedStep.make(self.model, x_batch.shape, x_batch.dtype, fused)
            if planned is None:
                self._plans.pop(key, None)
                self._refused[key] = _context(self.model)
                return None
            self._plans[key] = planned
        self.planned_steps += 1
        return planned.run(x_batch, targets, fused)

    def close(self):
        """Drop the plans. After planned steps the layers' caches are stale (from an earlier
        general step, or none): clear them, so a backward without a new forward refuses."""
        if self.planned_steps:
            for layer in self.model.layers:
                for cache in ("_cache", "_y"):   # _y: a ReLU layer's output
                    if getattr(layer, cache, None) is not None:
                        setattr(layer, cache, None)
        self._plans.clear()
        self._refused.clear()


def _context(model):
    """What decides whether a model can be planned, besides the batch: the engine, the
    optimizer (and whether it is built yet), the loss, the layers and their settings."""
    optimizer = model.optimizer
    return (kernels.get_backend(), optimizer, optimizer.built, model.loss, tuple(model.layers),
            tuple(layer._settings_version for layer in model.layers))


class _PlannedStep:
    """A bound training step with what it was made from; used only while current."""

    @classmethod
    def make(cls, model, x_shape, dtype, fused):
        optimizer = model.optimizer
        if type(optimizer) not in (Adam, SGD) or not optimizer.built:
            return None
        described = _training_ops(model.layers, fused)
        if described is None:
            return None
        ops, op_layers = described
        plan = kernels.training_plan(ops, x_shape, dtype)
        if plan is None:
            return None
        grads = {(op_layers[index], key): buffer for index, key, buffer in plan.gradients}
        variables = list(optimizer._variables)
        if set(grads) != set(variables):
            return None   # the optimizer updates other parameters than the plan computes
        kind = "adam" if type(optimizer) is Adam else "sgd"
        slot_names = ("m", "v") if kind == "adam" else optimizer.slot_names
        optimizer._follow_renamed_layers()   # its state is kept by layer name
        updates = []
        for layer, key in variables:
            named = optimizer._slots[(layer.name, key)]
            updates.append((layer.params[key], grads[(layer, key)], tuple(named[name] for name in slot_names)))
        if not plan.bind_updates(kind, updates):
            return None
        return cls(model, plan, kind, variables, grads)

    def __init__(self, model, plan, kind, variables, grads):
        self.model, self.plan, self.kind = model, plan, kind
        self.engine = kernels.get_backend()
        self.layers = tuple(model.layers)
        self.optimizer, self.loss = model.optimizer, model.loss
        self.weights = [(layer, key, layer.params[key]) for layer, key in variables]
        # the gradients each layer holds after a planned step: the plan's buffers
        self.grad_links = [(layer.grads, key, grads[(layer, key)]) for layer, key in variables]
        # the last layer's softmax (None: no activation, or its ReLU in the kernel)
        last = model.layers[-1]
        self.softmax = last.activation if last.activation_name == "softmax" else None
        # the dropout layers that draw a key each step, in the forward's order
        self.dropouts = [layer for layer in model.layers if type(layer) is Dropout and layer.rate > 0]
        # every layer's settings as the plan copied them (a dropout rate, an activation)
        self.settings = [layer._settings_version for layer in self.layers]

    def current(self):
        """The same engine, layers, layer settings (Layer._settings_version), weight arrays,
        optimizer and loss, and every layer with weights still trainable. Writes into the arrays
        need nothing: the plan reads them in place. (The optimizer's state arrays are its own: made once by build, written in place
        by set_state; a new optimizer comes with compile.)"""
        model = self.model
        if (kernels.get_backend() != self.engine or model.optimizer is not self.optimizer
                or model.loss is not self.loss or tuple(model.layers) != self.layers
                or self.settings != [layer._settings_version for layer in self.layers]):
            return False
        for layer, key, array in self.weights:
            if not layer.trainable or layer.params.get(key) is not array:
                return False
        return True

    def run(self, x_batch, targets, fused):
        """Trainer._train_step's work, bound: (loss, y_pred)."""
        plan = self.plan
        output = plan.forward(x_batch, [layer.step_key() for layer in self.dropouts])
        # the last layer's own softmax (a new array; the plan checked its input), or a copy of
        # the output: the plan's buffer is overwritten by the next step
        y_pred = self.softmax._forward(output, True) if self.softmax is not None else output.copy()
        loss_value, dy = self.loss.value_and_gradient(targets, y_pred, fused)
        if math.isfinite(loss_value):
            plan.backward(np.ascontiguousarray(dy))
            # the layers hold this step's gradients from here on, as after the general path's
            # backward, even if the optimizer then refuses (a schedule's NaN rate)
            for grads, key, buffer in self.grad_links:
                grads[key] = buffer
            coefficients = self.optimizer.begin_step(self.model)
            if self.kind == "adam":
                optimizer = self.optimizer
                plan.update(float(coefficients), optimizer.beta_1, optimizer.beta_2, optimizer.epsilon)
            else:
                plan.update(float(coefficients), float(self.optimizer.momentum), int(self.optimizer.nesterov))
        return loss_value, y_pred


def _training_ops(layers, fused):
    """(kernels.training_plan's ops, the layer each op belongs to) for `layers`, fused as
    Sequential.forward runs them, or None when a layer cannot be planned."""
    ops, op_layers = [], []
    i = 0
    while i < len(layers):
        layer = layers[i]
        kind = type(layer)
        last = i == len(layers) - 1
        if kind in (Conv2D, Dense):
            if layer.params and not layer.trainable:
                return None
            activation = layer.activation_name
            if not (activation in ("linear", "relu") or (activation == "softmax" and last and fused)):
                return None
            kernel, bias, relu = layer.params["kernel"], layer.params.get("bias"), layer.relu_in_kernel
            follower = layers[i + 1] if not last else None
            if kind is Dense:
                ops.append(("dense", kernel, bias, relu))
            elif follower is not None and layer.fuses_following_maxpool(follower):
                ops.append(("conv2d_maxpool", kernel, bias, layer.strides, layer.pads, relu,
                            follower.pool_size, follower.strides))
                i += 1
            else:
                ops.append(("conv2d", kernel, bias, layer.strides, layer.pads, relu))
        elif kind is MaxPooling2D:
            ops.append(("maxpool2d", layer.pool_size, layer.strides, layer.pads))
        elif kind is Flatten:
            ops.append(("reshape", layer.output_shape))
        elif kind is ReLU:
            ops.append(("relu",))
        elif kind is Dropout:
            # rate 0 passes x on (the general path's identity); the others draw a key per step
            ops.append(("dropout", layer.rate) if layer.rate > 0 else ("reshape", layer.output_shape))
        else:
            return None
        op_layers.append(layer)
        i += 1
    if type(layers[-1]) is not Dense or (not fused and layers[-1].activation_name == "softmax"):
        # the loss takes a dense layer's (batch, classes); and a softmax whose own backward
        # runs (from_logits=True on probabilities) is not planned
        return None
    return ops, op_layers
