"""Matrix-free empirical NTK: ``K v = J (J^T v)`` with one VJP and one JVP (SPEC §3).

Same conventions as :mod:`kerntk.ntk.empirical` (outputs flattened to ``c`` units; ``"trace"``,
``"full"`` with index ``i * c + k``, or one unit ``k``). The Jacobian ``J`` (``n c x P``) is never
formed:

* ``u = J^T V`` — one reverse-mode pass (VJP) of the batched model with output cotangent ``V``
  (``v`` reshaped to ``(n, c)`` for ``"full"``, ``v`` in column ``k`` for output ``k``);
* ``J u`` — one forward-mode pass (JVP, ``tf.autodiff.ForwardAccumulator`` through
  ``model.stateless_call`` with the weights as plain tensors).

``"full"`` and an int need one VJP + one JVP per product; ``"trace"``
(``sum_k J_k J_k^T v``) needs one pair per output unit, ``c`` in all. Cost of one pair: about one
training step (forward + backward) plus one forward JVP, ``O(n F_fwd)`` with ``F_fwd`` the FLOPs
of a forward pass per example; memory ``O(P + activations)``, the activations of only
``block_size`` examples when it is given. Products are exact for any model, batch-coupled
ones included (without ``block_size``). Inside a ``tf.distribute`` strategy's scope the chunks
are shared out among the workers (:mod:`kerntk.ntk.distribute`).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Union

import keras
import numpy as np
import scipy.sparse.linalg as spla
import tensorflow as tf

from kerntk._backend import require_tensorflow
from kerntk.ntk import cache, distribute
from kerntk.ntk.memory import plan_operator
from kerntk.ntk.forward import (batch_mixing_layers, check_inputs, check_outputs, compute_dtype,
                                count_outputs, forward, read_values, resolve_dtype)

__all__ = ["ntk_operator"]

_ZERO = tf.UnconnectedGradients.ZERO


def _vjp_fn(model, dtype, training):
    """Compiled ``(x, V) -> J^T V`` (a list shaped like the trainable variables)."""

    def vjp(x, V):
        with compute_dtype(model, dtype):
            vals, ntvals = read_values(model)
            with tf.GradientTape() as tape:
                tape.watch(vals)
                out = forward(model, vals, ntvals, x, training, dtype)
            return tape.gradient(out, vals, output_gradients=V, unconnected_gradients=_ZERO)

    return tf.function(vjp, autograph=False)


def _jvp_fn(model, dtype, training):
    """Compiled ``(x, u) -> J u`` of shape ``(n, c)``."""

    def jvp(x, u):
        with compute_dtype(model, dtype):
            vals, ntvals = read_values(model)
            tangents = [tf.cast(t, v.dtype) for t, v in zip(u, vals)]
            with tf.autodiff.ForwardAccumulator(vals, tangents) as acc:
                out = forward(model, vals, ntvals, x, training, dtype)
            return acc.jvp(out, unconnected_gradients=_ZERO)

    return tf.function(jvp, autograph=False)


def _cached(model, kind: str, dtype: str, training: bool):
    """The compiled VJP/JVP of ``model`` from the engine's compile cache (:mod:`kerntk.ntk.cache`),
    so that repeated operators (e.g. one per epoch in a callback) do not retrace."""
    make = _vjp_fn if kind == "vjp" else _jvp_fn
    return cache.cached(model, ("operator", kind, dtype, bool(training)),
                        lambda jit: make(model, dtype, training))


def ntk_operator(model: keras.Model, x, outputs: Union[str, int] = "trace", *,
                 block_size: Optional[int] = None, training: bool = False,
                 dtype=None) -> spla.LinearOperator:
    """The empirical NTK of ``model`` on ``x`` as a ``scipy.sparse.linalg.LinearOperator``.

    ``op @ v == empirical_ntk(model, x, outputs=outputs) @ v`` without forming ``K`` or the
    Jacobian: one VJP and one JVP per product (see the module docstring for the cost).

    Args:
        model: a Keras model with one array input; built on ``x`` if needed.
        x: array ``(n, ...)``, finite and non-empty.
        outputs: ``"trace"`` (``n x n``), ``"full"`` (``nc x nc``, index ``i * c + k``) or an int.
        block_size: process ``x`` in chunks of this many examples (memory independent of ``n``;
            needs independent examples). ``None``: all at once if the estimated peak memory
            fits, else the largest halving of ``n`` that does (:mod:`kerntk.ntk.memory`).
        training: the ``training`` flag of the forward passes (no state is updated).
        dtype: compute dtype (``"float32"``/``"float64"``; ``None`` as in
            :func:`kerntk.ntk.empirical_ntk`). ``matvec`` takes and returns float64.

    Returns:
        A symmetric ``LinearOperator`` of dtype float64 (``matvec``, ``rmatvec``, ``matmat``).

    Example:
        >>> op = ntk_operator(model, x)
        >>> scipy.sparse.linalg.eigsh(op, k=5)
    """
    require_tensorflow("kerntk.ntk.ntk_operator")
    if block_size is not None and (isinstance(block_size, bool) or
                                   not isinstance(block_size, (int, np.integer))
                                   or block_size <= 0):
        raise ValueError(f"`block_size` must be None or a positive int; got {block_size!r}.")
    x = check_inputs(model, x)
    dt = resolve_dtype(model, dtype)
    c = count_outputs(model, x)
    outputs = check_outputs(outputs, c)
    n = x.shape[0]
    coupled = batch_mixing_layers(model, training)
    bs = plan_operator(model, x.shape, c, dt,
                       n if coupled and block_size is None else block_size).block_size
    if bs < n and coupled:
        raise ValueError(f"block_size needs independent examples, but these layers couple the "
                         f"batch with training=True: {batch_mixing_layers(model, training)}.")
    size = n * c if outputs == "full" else n
    xt = tf.constant(x, dtype=dt)
    chunks = [(s, min(s + bs, n)) for s in range(0, n, bs)]
    vjp, jvp = _cached(model, "vjp", dt, training), _cached(model, "jvp", dt, training)

    dist = distribute.current()
    mine = [j for j in range(len(chunks)) if dist is None or dist.mine(j)]

    def product(V: np.ndarray) -> np.ndarray:
        """``J (J^T V)`` as an ``(n, c)`` array, for a cotangent ``V`` of shape ``(n, c)``;
        under a strategy each worker takes its chunks and the parts are summed across
        workers."""
        V = tf.constant(V, dtype=dt)
        u = None
        for j in mine:
            s, e = chunks[j]
            with contextlib.nullcontext() if dist is None else dist.device(j):
                part = vjp(xt[s:e], V[s:e])
            u = part if u is None else [a + b for a, b in zip(u, part)]
        if dist is not None:
            zeros = [np.zeros(v.shape, dt) for v in model.trainable_variables]
            u = [tf.constant(p) for p in
                 dist.all_sum([zeros[i] if u is None else u[i].numpy()
                               for i in range(len(zeros))])]
        out = np.zeros((n, c), np.float64)
        for j in mine:
            s, e = chunks[j]
            with contextlib.nullcontext() if dist is None else dist.device(j):
                out[s:e] = jvp(xt[s:e], u).numpy()
        return out if dist is None else dist.all_sum([out])[0]

    def one_output(v: np.ndarray, k: int) -> np.ndarray:
        V = np.zeros((n, c))
        V[:, k] = v
        return product(V)[:, k]

    def matvec(v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape[0] != size:
            raise ValueError(f"vector of length {v.shape[0]} for an operator of size {size}.")
        if outputs == "full":
            return product(v.reshape(n, c)).reshape(-1)
        if outputs == "trace":
            # sum_k J_k J_k^T v: one VJP + JVP per output unit (a single VJP with V_ik = v_i
            # would add the cross terms J_k J_l^T).
            return sum(one_output(v, k) for k in range(c))
        return one_output(v, outputs)

    return spla.LinearOperator((size, size), matvec=matvec, rmatvec=matvec, dtype=np.float64)
