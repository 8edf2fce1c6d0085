"""The exact fallback of the NTK engine: Jacobians of any model, any layer.

* Per-example (:func:`per_example_jacobian`): a forward and backward pass of each single example,
  vectorized over the batch with ``pfor``; exact when the examples of a batch are independent.
* Batched (``method="batched"``): the Jacobian of the batched function, one reverse pass of the
  whole batch per row; exact for models that couple the batch (e.g. BatchNormalization in
  training mode).

:func:`jacobian_blocks` turns either into ``J J^T`` blocks, treating the variables in groups of at
most :data:`MAX_JACOBIAN` Jacobian entries, one group alive at a time. Costs are in
:mod:`kerntk.ntk.empirical`.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import tensorflow as tf

from kerntk.ntk.forward import forward

__all__ = ["MAX_JACOBIAN", "jacobian_blocks", "per_example_jacobian", "preconditioned_kernel",
           "variable_groups"]

# Largest Jacobian (in elements) of one group of variables.
MAX_JACOBIAN = 2 ** 28
_ZERO = tf.UnconnectedGradients.ZERO


def variable_groups(indices: List[int], tvars, rows: int) -> List[List[int]]:
    """Split variables into groups whose Jacobian (``rows x size``) stays under
    :data:`MAX_JACOBIAN` elements (a single variable may exceed it)."""
    groups, current, size = [], [], 0
    for i in indices:
        elements = rows * int(np.prod(tvars[i].shape))
        if current and size + elements > MAX_JACOBIAN:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += elements
    if current:
        groups.append(current)
    return groups


def per_example_jacobian(model, vals, ntvals, x, training, dtype, cols, group):
    """Per-example Jacobians ``(n, c', *shape)`` of ``vals[group]``: a forward/backward pass on
    each single example, vectorized over the batch with ``pfor`` (examples independent)."""

    def one(xi):
        sub = [vals[i] for i in group]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(sub)
            out = forward(model, vals, ntvals, xi[None], training, dtype)
            units = [out[0, k] for k in cols]
        per_unit = [tape.gradient(u, sub, unconnected_gradients=_ZERO) for u in units]
        return [tf.stack([g[v] for g in per_unit]) for v in range(len(sub))]

    if _pfor_unsafe(model):
        # pfor mis-vectorizes the filter gradient of grouped convolutions ("filter_size does
        # not have enough elements"): one example at a time instead.
        sig = [tf.TensorSpec((len(cols),) + tuple(vals[i].shape), vals[i].dtype) for i in group]
        return tf.map_fn(one, x, fn_output_signature=sig)
    return tf.vectorized_map(one, x)


def _pfor_unsafe(model) -> bool:
    from kerntk import _keras_compat as compat
    return any(getattr(layer, "groups", 1) > 1
               for layer in compat.flatten_layers(model, include_self=False))


def jacobian_blocks(model, vals, ntvals, x, training, dtype, cols, rest, tape, target,
                    rows_per_group: int, n1: Optional[int], cross: bool, full: bool,
                    batched: bool, after: List[tf.Tensor]) -> List[tf.Tensor]:
    """``J J^T`` blocks (float64) of the trainable variables ``rest`` (indices into ``vals``).

    ``batched`` differentiates ``target`` (the selected output columns, recorded on the
    persistent ``tape``) as a batched function; otherwise per-example Jacobians are taken.
    ``after``: blocks computed so far, which the first group waits for (bounded memory)."""
    rows = (lambda t: tf.reshape(t, (-1, t.shape[-1]))) if full else \
        (lambda t: tf.reshape(t, (-1, t.shape[1] * t.shape[2])))
    blocks = list(after)
    for group in variable_groups(rest, vals, rows_per_group):
        # Control dependency on the blocks so far: one group's Jacobian is alive at a time.
        with tf.control_dependencies(blocks[-1:]):
            if batched:
                jacs = tape.jacobian(target, [vals[i] for i in group],
                                     unconnected_gradients=_ZERO, experimental_use_pfor=True)
            else:
                jacs = per_example_jacobian(model, vals, ntvals, x, training, dtype, cols,
                                            group)
        for j in jacs:
            J = tf.reshape(tf.cast(j, dtype), (-1, len(cols), int(np.prod(j.shape[2:]))))
            J1, J2 = (J[:n1], J[n1:]) if cross else (J, J)
            blocks.append(tf.cast(tf.matmul(rows(J1), rows(J2), transpose_b=True), tf.float64))
    return blocks[len(after):]


def preconditioned_kernel(model, x: tf.Tensor, inverse_preconditioner: List[tf.Tensor],
                          training: bool, dtype: str, batched: bool):
    """``(J P^{-1} J^T, f(x))``: the ``(n c) x (n c)`` kernel of the outputs' Jacobian ``J`` with
    a diagonal metric ``P^{-1}`` on the weights (one tensor per trainable variable; an adaptive
    optimizer's preconditioner), float64, and the outputs ``(n, c)``. Traceable. The per-layer
    factorization does not carry a per-weight metric, so this is the exact Jacobian route
    (per-example, or of the batched function when ``batched``)."""
    from kerntk.ntk.forward import compute_dtype, read_values

    with compute_dtype(model, dtype):
        vals, ntvals = read_values(model)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(vals)
            out = forward(model, vals, ntvals, x, training, dtype)
        c = int(out.shape[1])
        n = x.shape[0] or 128
        blocks = []
        for group in variable_groups(list(range(len(vals))), vals, n * c):
            with tf.control_dependencies(blocks[-1:]):
                if batched:
                    jacs = tape.jacobian(out, [vals[i] for i in group],
                                         unconnected_gradients=_ZERO, experimental_use_pfor=True)
                else:
                    jacs = per_example_jacobian(model, vals, ntvals, x, training, dtype,
                                                list(range(c)), group)
            for i, j in zip(group, jacs):
                scale = tf.sqrt(tf.cast(inverse_preconditioner[i], tf.float64))
                J = tf.cast(j, tf.float64) * scale
                J = tf.reshape(J, (-1, int(np.prod(vals[i].shape))))
                blocks.append(tf.matmul(J, J, transpose_b=True))
    del tape
    return tf.add_n(blocks), out
