"""Every reach of kerntk into private Keras API (or Keras objects' internals), in one place.

Keras 3 offers no public way to list a model's nested layers, to run a layer in another compute
dtype, to ask whether a layer's ``call`` takes ``training``, to set an attribute (or replace a
bound method) on one object without Keras' attribute tracking, or to change what a variable reads
as inside a running ``stateless_call``; the engine needs all five. If a Keras release changes
one of these, this module is the only one to fix.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import keras


def flatten_layers(model, include_self: bool = True, recursive: bool = True) -> List:
    """The layers of ``model`` (nested models/layers included when ``recursive``), each once."""
    return list(model._flatten_layers(include_self=include_self, recursive=recursive))


def own_trainable_variables(layer) -> List:
    """The trainable variables created by ``layer`` itself (not by its sub-layers)."""
    nested = {id(v) for sub in flatten_layers(layer, include_self=False, recursive=False)
              for v in sub.trainable_variables}
    return [v for v in layer.trainable_variables if id(v) not in nested]


def call_has_training_arg(layer) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def is_functional(layer) -> bool:
    """Whether ``layer`` is a Keras functional model (it only passes ``training`` on)."""
    return type(layer).__name__ == "Functional"


def is_lora_or_quantized(layer) -> bool:
    """Whether ``layer`` runs a LoRA or quantized variant of its ``call``."""
    return bool(getattr(layer, "lora_enabled", False)
                or layer.dtype_policy.quantization_mode is not None)


@contextlib.contextmanager
def compute_dtype(model, dtype: str, floats: tuple) -> Iterator[None]:
    """Temporarily give every layer of ``model`` whose compute dtype is in ``floats`` the compute
    dtype ``dtype``, keeping its variable dtype (so that Keras autocasts variable reads to
    ``dtype``). Restored on exit, even on error."""
    changed = []
    try:
        for layer in flatten_layers(model):
            cd = layer.compute_dtype
            if cd in floats and cd != dtype:
                changed.append((layer, layer._dtype_policy))
                policy = keras.dtype_policies.DTypePolicy(dtype)
                policy._variable_dtype = layer.variable_dtype
                layer._dtype_policy = policy
        yield
    finally:
        for layer, policy in reversed(changed):
            layer._dtype_policy = policy


@contextlib.contextmanager
def override(obj, name: str, value) -> Iterator[None]:
    """Temporarily set the instance attribute ``obj.name = value`` (e.g. a layer's ``call``),
    bypassing Keras' attribute tracking; the previous instance attribute (or its absence) is
    restored on exit, even on error."""
    previous = obj.__dict__.get(name, None)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if previous is None:
            object.__delattr__(obj, name)
        else:
            object.__setattr__(obj, name, previous)


def instance_override(obj, name: str):
    """The instance attribute ``obj.name`` set by :func:`override` (or ``None``)."""
    return obj.__dict__.get(name)


def model_store(model, name: str) -> dict:
    """A dict kept on ``model`` under ``name`` (outside Keras' tracking), created on first use."""
    store = model.__dict__.get(name)
    if store is None:
        store = {}
        object.__setattr__(model, name, store)
    return store


@contextlib.contextmanager
def detached(variables) -> Iterator[bool]:
    """Inside a ``StatelessScope`` (``model.stateless_call``): read each of ``variables`` as
    ``stop_gradient`` of its current value, so that what is computed in the context is not
    connected to the value the scope maps it to. Yields whether it applied (``False`` outside a
    stateless scope, where nothing changes). Restored on exit, even on error."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope
    import tensorflow as tf

    scope = get_stateless_scope()
    mapping = getattr(scope, "state_mapping", None)
    keys = [id(v) for v in variables if v is not None]
    if mapping is None or not all(k in mapping for k in keys):
        yield False
        return
    saved = {k: mapping[k] for k in keys}
    try:
        for k in keys:
            mapping[k] = tf.stop_gradient(saved[k])
        yield True
    finally:
        mapping.update(saved)


def set_untracked(obj, name: str, value) -> None:
    """``obj.name = value`` without Keras' attribute tracking (the value's variables and layers do
    not become ``obj``'s)."""
    object.__setattr__(obj, name, value)


def clear_untracked(obj, name: str) -> None:
    """Remove an instance attribute set by :func:`set_untracked` (no-op if absent), uncovering
    the class's own."""
    if name in obj.__dict__:
        object.__delattr__(obj, name)


def loss_tracker(model):
    """The ``Mean`` metric in which Keras' own ``train_step`` accumulates the batch losses of an
    epoch (``total``: sum of loss x batch size, ``count``: examples), or ``None``."""
    tracker = getattr(model, "_loss_tracker", None)
    if tracker is None or not all(hasattr(tracker, a) for a in ("total", "count")):
        return None
    return tracker


def assignable_learning_rate(optimizer) -> bool:
    """Whether ``optimizer``'s learning rate is a variable (a float at compile time), which can
    be set; not a ``LearningRateSchedule`` or a callable. A ``LossScaleOptimizer`` answers for
    its inner optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return isinstance(getattr(inner, "_learning_rate", None), keras.Variable)


def optimizer_slot(optimizer, slots: str, variable):
    """The optimizer's state variable of ``variable`` in its slot list ``slots`` (e.g. Adam's
    ``"_velocities"``): Keras keeps slots in private lists indexed by the variable."""
    return getattr(optimizer, slots)[optimizer._get_variable_index(variable)]


def compiled_loss_terms(model, y_true=None, y_pred=None):
    """``[(path, loss, weight)]``: the compiled loss of each output (``path`` indexes the
    outputs' nest, ``loss`` a ``keras.losses.Loss``, ``weight`` a float or None), or ``None``
    when the model was compiled without a loss. Keras keeps them in ``CompileLoss._flat_losses``
    (built at the first training step, or here from ``y_true`` and ``y_pred`` if given)."""
    compiled = getattr(model, "_compile_loss", None)
    if compiled is None:
        return None
    if not compiled.built and y_true is not None:
        compiled.build(y_true, y_pred)
    terms = getattr(compiled, "_flat_losses", None)
    if not terms:
        return None
    return [(path, fn, weight) for path, fn, weight, *_ in terms]


def loss_function(loss):
    """``(fn, kwargs)``: the plain function a ``keras.losses.LossFunctionWrapper`` applies (e.g.
    ``keras.losses.sparse_categorical_crossentropy`` with ``from_logits``), so that it runs in
    float64 (the wrapper casts to float32); ``(loss, {})`` for other callables."""
    fn = getattr(loss, "fn", None)
    from keras.src.losses.losses import LossFunctionWrapper

    if callable(fn) and isinstance(loss, LossFunctionWrapper):
        return fn, dict(getattr(loss, "_fn_kwargs", {}) or {})
    return loss, {}
