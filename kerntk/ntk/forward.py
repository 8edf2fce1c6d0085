"""The engine's forward pass and its conventions: input checks, compute dtype, output flattening.

Public, for code that evaluates a model the way the NTK engine does (kerntk's callbacks use it):

* :func:`check_inputs` — one array ``x`` with a batch axis, finite, non-empty; builds the model.
* :func:`resolve_dtype` / :func:`compute_dtype` — the engine's compute dtype (float64 for float64
  models, float32 otherwise, mixed precision lifted to float32) and a context running every layer
  in it.
* :func:`read_values` / :func:`forward` — ``f(w; x)`` through ``model.stateless_call`` at plain
  tensor values of the variables, outputs flattened to ``(n, c)`` by :func:`flatten_outputs`
  (every output flattened per example, concatenated in ``tf.nest`` order: unit ``k`` is column
  ``k``).
* :func:`check_outputs` / :func:`count_outputs` — the ``outputs`` argument (``"trace"``,
  ``"full"`` or a unit index) and the number ``c`` of output units.
* :func:`batch_mixing_layers` — layers known to couple the examples of a batch.
"""

from __future__ import annotations

from typing import List, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from kerntk import _validation as checks
from kerntk import _keras_compat as compat

Outputs = Union[str, int]
__all__ = ["FLOATS", "batch_mixing_layers", "check_inputs", "check_outputs", "compute_dtype",
           "count_outputs", "flatten_outputs", "forward", "read_values", "resolve_dtype",
           "stateless_call"]

# Floating compute dtypes (the layers whose compute dtype :func:`compute_dtype` changes).
FLOATS = ("float16", "bfloat16", "float32", "float64")


def check_inputs(model: keras.Model, x) -> np.ndarray:
    """Validate ``x`` (one array with a batch axis, finite, non-empty) and build ``model`` on it.

    Returns ``x`` as a numpy array. Raises ``ValueError`` with the reason otherwise.
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"`model` must be a Keras model or layer; got {type(model).__name__}.")
    x = checks.inputs("x", x, feature_axis=True)
    expected = _expected_input_shape(model)
    if expected is not None:
        got = x.shape[1:]
        if len(expected) != len(got) or any(e is not None and e != g
                                            for e, g in zip(expected, got)):
            raise ValueError(f"`x` has per-example shape {tuple(got)} but the model expects "
                             f"{tuple(expected)} (None = any).")
    if not model.built or not model.trainable_variables:
        try:
            model(x[:1].astype(np.float32) if x.dtype.kind != "f" else x[:1])
        except Exception as err:
            raise ValueError(f"The model could not be built/called on `x` of shape {x.shape}: "
                             f"{err}") from err
    if not model.trainable_variables:
        raise ValueError("The model has no trainable variables; its NTK is zero by definition.")
    return x


def _expected_input_shape(model) -> Optional[tuple]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape)[1:]


def resolve_dtype(model: keras.Model, dtype) -> str:
    """The compute dtype of the engine: ``dtype`` if given (float32 or float64), else float64 for a
    model with float64 weights and float32 otherwise (mixed-precision models are lifted to
    float32)."""
    if dtype is None:
        widest = {v.dtype for v in model.trainable_variables}
        return "float64" if "float64" in widest else "float32"
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be None, 'float32' or 'float64'; got {dtype!r}.")
    return dtype


def compute_dtype(model: keras.Model, dtype: str):
    """Context: temporarily run every layer of ``model`` in ``dtype`` (variables are read through
    Keras' autocast), e.g. a ``mixed_float16`` model in float32. Restored on exit, even on
    error."""
    return compat.compute_dtype(model, dtype, FLOATS)


def read_values(model: keras.Model):
    """Current values of the trainable and non-trainable variables, as plain tensors."""
    return ([tf.identity(v.value) for v in model.trainable_variables],
            [tf.identity(v.value) for v in model.non_trainable_variables])


def forward(model: keras.Model, trainable_values: List[tf.Tensor],
            non_trainable_values: List[tf.Tensor], x: tf.Tensor, training: bool,
            dtype: str) -> tf.Tensor:
    """``f(w; x)`` through ``model.stateless_call`` (no state update), every output flattened and
    concatenated to ``(n, c)`` in ``dtype`` (output ``k`` is column ``k``)."""
    out, _ = stateless_call(model, trainable_values, non_trainable_values, x, training)
    return flatten_outputs(out, dtype)


def stateless_call(model: keras.Model, trainable_values, non_trainable_values, x,
                   training: bool):
    """``model.stateless_call`` passing ``training`` only to a model whose ``call`` takes it (a
    subclassed model's ``call(self, x)`` would get it as an unexpected keyword: Keras'
    ``stateless_call`` does not filter it as ``__call__`` does)."""
    kwargs = {"training": training} if compat.call_has_training_arg(model) else {}
    return model.stateless_call(trainable_values, non_trainable_values, x, **kwargs)


def flatten_outputs(out, dtype=None) -> tf.Tensor:
    """A model's outputs (any nest) as one ``(n, c)`` tensor: each output flattened per example,
    concatenated in ``tf.nest`` order (output ``k`` is column ``k``); cast to ``dtype`` if
    given."""
    parts = [tf.reshape(o if dtype is None else tf.cast(o, dtype),
                        (-1, int(np.prod(o.shape[1:])))) for o in tf.nest.flatten(out)]
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def check_outputs(outputs: Outputs, n_outputs: int) -> Outputs:
    """Validate ``outputs`` ("trace", "full" or an output index) against ``n_outputs``."""
    if isinstance(outputs, str):
        if outputs not in ("trace", "full"):
            raise ValueError(f"`outputs` must be 'trace', 'full' or an int; got {outputs!r}.")
        return outputs
    if isinstance(outputs, (bool, np.bool_)) or not isinstance(outputs, (int, np.integer)):
        raise ValueError(f"`outputs` must be 'trace', 'full' or an int; got {outputs!r}.")
    k = int(outputs)
    if not -n_outputs <= k < n_outputs:
        raise ValueError(f"`outputs={k}` is out of range for a model with {n_outputs} output "
                         f"unit(s).")
    return k % n_outputs


def count_outputs(model: keras.Model, x) -> int:
    """Number of output units ``c`` (all outputs flattened per example)."""
    return int(sum(np.prod(s, dtype=np.int64) for s in output_shapes(model, x)))


def output_shapes(model: keras.Model, x) -> List[tuple]:
    """Per-example shapes of the model's outputs in ``tf.nest`` order, cached per input shape
    on the model (symbolic tracing costs ~1 ms, and callbacks ask every step). ``x`` is an
    array or tensor of inputs (only its shape is used unless symbolic tracing fails)."""
    cache = compat.model_store(model, "_kerntk_output_shapes")
    shape = tuple(x.shape[1:])
    if shape not in cache:
        cache[shape] = _output_shapes(model, x)
    return cache[shape]


def _output_shapes(model: keras.Model, x) -> List[tuple]:
    try:
        out = model.compute_output_spec(
            keras.KerasTensor((1,) + tuple(x.shape[1:]), dtype="float32"))
    except Exception:  # some subclassed models cannot be traced symbolically
        out = model(x[:1])
    return [tuple(int(d) for d in o.shape[1:]) for o in tf.nest.flatten(out)]


def batch_mixing_layers(model: keras.Model, training: bool) -> List[str]:
    """Names of layers known to couple the examples of a batch (BatchNormalization in training
    mode)."""
    if not training:
        return []
    return [layer.name for layer in compat.flatten_layers(model, include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
