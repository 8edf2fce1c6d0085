"""The NTK inside a compiled training step.

* :func:`kernel_fn` — the kernel of :func:`kerntk.ntk.empirical_ntk` as a traceable function
  (the batch size may be unknown at trace time).
* :class:`ForwardNTK` — the structured kernel from a forward pass the caller runs anyway, e.g.
  Keras' own ``train_step``: only the ``c`` backward passes to the pre-activations and the
  per-layer Grams remain (``CriticalLRMonitor`` measures the batch NTK of every step this way);
  :func:`shareable_forward` says when that is valid.
* :func:`mixes_batch` — whether the model couples the examples of a batch, from ``f(x)[:m]`` and
  a separate ``f(x[:m])``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Tuple, Union

import keras
import tensorflow as tf

from kerntk import _keras_compat as compat
from kerntk._backend import require_tensorflow
from kerntk.ntk.forward import (FLOATS, compute_dtype, flatten_outputs, forward, read_values,
                                resolve_dtype)
from kerntk.ntk.registry import capture, coverage, find_sites, unproven_layers
from kerntk.ntk.traced import METHODS, cached_kernel_fn, columns, structured_blocks

__all__ = ["ForwardNTK", "kernel_fn", "mixes_batch", "shareable_forward"]

_ZERO = tf.UnconnectedGradients.ZERO


def kernel_fn(model: keras.Model, *, method: str = "auto", outputs: Union[str, int] = "full",
              dtype=None, training: bool = False) -> Callable:
    """The empirical NTK as a traceable ``x -> (K, f(x), f(x[:2]))`` at the variables' current
    values, to be called inside another ``tf.function`` (e.g. a training step); the batch size
    may be unknown at trace time. ``K`` is a float64 tensor, ``f`` in the compute dtype.

    Unlike :func:`empirical_ntk` it does not validate ``x`` nor detect batch coupling: callers
    compare ``f(x[:2])`` with ``f(x)[:2]`` themselves. ``method`` is ``"auto"``,
    ``"structured"``, ``"jacobian"`` or ``"batched"`` (Jacobian of the batched function).
    """
    require_tensorflow("kerntk.ntk.empirical.kernel_fn")
    if method not in METHODS + ("batched",):
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    dt = resolve_dtype(model, dtype)
    return cached_kernel_fn(model, method, outputs, dt, training, False, False)


# Layers whose ``training`` argument does not change their output.
_TRAINING_INDEPENDENT = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                         keras.layers.Conv3D, keras.layers.Activation, keras.layers.Flatten,
                         keras.layers.Reshape, keras.Sequential)


def _training_dependent(layer) -> bool:
    if not compat.call_has_training_arg(layer):
        return False
    if isinstance(layer, _TRAINING_INDEPENDENT):
        return False
    # A functional model only passes ``training`` on to its layers (checked separately).
    return not compat.is_functional(layer)


def shareable_forward(model: keras.Model, x2: tf.Tensor, dtype: str) -> bool:
    """Whether :class:`ForwardNTK` can compute the NTK from ``model``'s own training-mode forward
    pass (decided while tracing; the forward pass of ``x2`` it traces is not run).

    It can when (1) every layer's output ignores ``training`` (no Dropout, BatchNormalization,
    noise, or custom layers taking ``training``), (2) every layer computes in ``dtype`` (not a
    mixed-precision model), and (3) the per-layer factorization covers every trainable variable
    (each in a layer called once per forward pass, its variables used only there), which a
    forward pass of ``x2`` under capture proves.
    """
    require_tensorflow("kerntk.ntk.empirical.shareable_forward")
    layers = compat.flatten_layers(model)
    ok = not any(_training_dependent(layer) for layer in layers) and all(
        layer.compute_dtype == dtype for layer in layers if layer.compute_dtype in FLOATS)
    tvars = model.trainable_variables
    sites = find_sites(model, {id(v): i for i, v in enumerate(tvars)})
    with compute_dtype(model, dtype):
        vals, ntvals = read_values(model)
        tape = tf.GradientTape()
        with capture(sites, tape), tape:
            tape.watch(vals)
            total = tf.reduce_sum(forward(model, vals, ntvals, x2, False, dtype))
    _, rest = coverage(sites, len(tvars))
    return ok and not rest and not unproven_layers(sites, tape, total, vals)


class ForwardNTK:
    """The structured NTK of a batch, computed from a forward pass the caller runs anyway.

    Traced code (inside a ``tf.function``), for models where :func:`shareable_forward` holds::

        fnt = ForwardNTK(model, outputs="full")
        with fnt.recording():
            logs = model.train_step(data)     # Keras' own forward pass, at the weights w_t
        K, f = fnt.kernel()                   # the NTK at w_t and f(w_t; x), (n, c)

    Sharing the forward pass leaves ``c`` backward passes to the pre-activations and the
    per-layer Grams: about two thirds of :func:`empirical_ntk`'s cost. The backward passes use
    the tensors of the recorded forward pass, so the weights may change in between (e.g. an
    optimizer step); ``K`` is that of the recorded weights.
    """

    def __init__(self, model: keras.Model, outputs: Union[str, int] = "full"):
        require_tensorflow("kerntk.ntk.empirical.ForwardNTK")
        self.model, self.outputs = model, outputs
        self._tvars = model.trainable_variables
        self._sites = find_sites(model, {id(v): i for i, v in enumerate(self._tvars)})
        self._tape = None
        self._out = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Records the (one) forward pass of ``model`` run inside the context."""
        model = self.model
        bound = model.call

        def call(*args, **kwargs):
            if self._tape is not None:
                raise ValueError("ForwardNTK records one forward pass; the model was called "
                                 "twice.")
            self._tape = tf.GradientTape(persistent=True)
            with self._tape:
                out = bound(*args, **kwargs)
                self._out = flatten_outputs(out)
                self._sums = [tf.reduce_sum(self._out[:, k])
                              for k in columns(self._out, self.outputs)]
            return out

        for site in self._sites:
            site.records.clear()
        with capture(self._sites), compat.override(model, "call", call):
            yield

    def kernel(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(K, f)``: the float64 NTK (layout of ``outputs``) and the recorded outputs."""
        if self._tape is None:
            raise ValueError("Nothing recorded: call the model inside `recording()` first.")
        active, rest = coverage(self._sites, len(self._tvars))
        if rest:
            names = ", ".join(self._tvars[i].path for i in rest)
            raise ValueError(f"ForwardNTK cannot factorize these trainable variables: {names} "
                             f"(check shareable_forward first).")
        zs = [s.records[0][1] for s in active]
        per_output = [self._tape.gradient(t, zs, unconnected_gradients=_ZERO)
                      for t in self._sums]
        blocks = structured_blocks(active, per_output, None, False, self.outputs == "full",
                                    self._out.dtype.name)
        return tf.add_n(blocks), self._out


def mixes_batch(first_rows, probe, dtype: str) -> tf.Tensor:
    """Whether ``f(x[:m])`` (``probe``) differs from ``f(x)[:m]`` (``first_rows``) beyond
    round-off, or is not finite: the model couples the examples of a batch. A bool tensor
    (works in a graph and eagerly on arrays)."""
    a = tf.cast(first_rows, tf.float64)
    b = tf.cast(probe, tf.float64)
    scale = tf.maximum(tf.maximum(tf.reduce_max(tf.abs(a)), tf.reduce_max(tf.abs(b))), 1e-30)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    return (tf.reduce_max(tf.abs(a - b)) > rtol * scale) | ~tf.reduce_all(tf.math.is_finite(b))
