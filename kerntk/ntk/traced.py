"""The traced NTK of one batch: structured blocks for the factorized layers, the exact Jacobian
for the other variables, compiled once per configuration.

Shared by :func:`kerntk.ntk.empirical_ntk` (tiles) and :func:`kerntk.ntk.in_step.kernel_fn`
(inside a training step); the conventions and costs are in :mod:`kerntk.ntk.empirical`.
"""

from __future__ import annotations

from typing import List, Optional

import keras
import tensorflow as tf

from kerntk.ntk import cache
from kerntk.ntk.blocks import BLOCKS, NOMINAL_BATCH
from kerntk.ntk.forward import compute_dtype, forward, read_values
from kerntk.ntk.jacobian import jacobian_blocks
from kerntk.ntk.registry import Site, capture, coverage, find_sites, unproven_layers

__all__ = ["METHODS", "cached_kernel_fn", "columns", "kernel_graph", "structured_blocks"]

METHODS = ("auto", "structured", "jacobian")
_ZERO = tf.UnconnectedGradients.ZERO


def columns(out: tf.Tensor, outputs) -> List[int]:
    """The output columns of ``out`` (n, c) that enter the kernel: all of them for ``"trace"``
    and ``"full"``, one for an int ``outputs``."""
    return list(range(out.shape[1])) if isinstance(outputs, str) else [outputs]


def structured_blocks(active: List[Site], per_output: list, n1, cross: bool, full: bool,
                      dtype: str) -> List[tf.Tensor]:
    """The sites' kernel blocks from the cotangents ``per_output[k][j]`` of output ``k`` at
    site ``j``."""
    blocks = []
    for j, site in enumerate(active):
        D = tf.stack([tf.cast(g[j], dtype) for g in per_output])
        a = site.records[0][0]
        blocks.append(BLOCKS[site.fact.kind](site.fact, a, D, n1, cross, full,
                                             site.kernel_index is not None,
                                             site.bias_index is not None))
    return blocks


def kernel_graph(model: keras.Model, x1: tf.Tensor, x2: Optional[tf.Tensor], method: str,
                 outputs, dtype: str, training: bool):
    """Traced body of the kernel: ``(K, f(x), f(x[:2]))`` at the variables' current values.
    ``K`` is float64; the batch size may be unknown at trace time (no ``x2`` then)."""
    cross = x2 is not None
    n1 = x1.shape[0]
    x = tf.concat([x1, x2], axis=0) if cross else x1
    n = x.shape[0]
    tvars = model.trainable_variables
    index_of = {id(v): i for i, v in enumerate(tvars)}
    structured = method in ("structured", "auto")
    excluded = set()
    with compute_dtype(model, dtype):
        vals, ntvals = read_values(model)
        while True:
            sites = find_sites(model, index_of, excluded) if structured else []
            tape = tf.GradientTape(persistent=True)
            with capture(sites, tape):
                with tape:
                    tape.watch(vals)
                    out = forward(model, vals, ntvals, x, training, dtype)
                    # Targets are recorded on the tape: the sums give the cotangents D, the
                    # selected columns the batched Jacobian.
                    cols = columns(out, outputs)
                    sums = [tf.reduce_sum(out[:, k]) for k in cols]
                    target = tf.gather(out, cols, axis=1)
                    total = tf.add_n(sums)
            # A layer called twice, or whose variables are used outside its call (tied
            # weights), is traced again without its factorization (exact Jacobian).
            unproven = unproven_layers(sites, tape, total, vals)
            if not unproven:
                break
            excluded |= unproven
            del tape
        probe = forward(model, vals, ntvals, x[:2], training, dtype)
        full = outputs == "full"
        active, rest = coverage(sites, len(tvars))
        if method == "structured" and rest:
            names = ", ".join(tvars[i].path for i in rest)
            raise ValueError(f"method='structured' cannot factorize these trainable "
                             f"variables: {names}. Use method='auto' (structured + jacobian "
                             f"for the rest) or method='jacobian'.")
        blocks = []
        if active:
            zs = [s.records[0][1] for s in active]
            per_output = [tape.gradient(t, zs, unconnected_gradients=_ZERO) for t in sums]
            blocks = structured_blocks(active, per_output, n1, cross, full, dtype)
        blocks += jacobian_blocks(model, vals, ntvals, x, training, dtype, cols, rest, tape,
                                  target, (n or NOMINAL_BATCH) * len(cols), n1, cross, full,
                                  method == "batched", blocks)
    del tape
    return tf.add_n(blocks), out, probe


def _make_kernel_fn(model: keras.Model, method: str, outputs, dtype: str, training: bool,
                    cross: bool, jit: bool = False):
    """A compiled ``(x1[, x2]) -> (K, f(x), f(x[:2]))`` for one configuration."""
    if cross:
        return tf.function(
            lambda x1, x2: kernel_graph(model, x1, x2, method, outputs, dtype, training),
            autograph=False, jit_compile=jit)
    return tf.function(lambda x1: kernel_graph(model, x1, None, method, outputs, dtype, training),
                       autograph=False, jit_compile=jit)


def cached_kernel_fn(model, method, outputs, dtype, training, cross, jit) -> cache.Compiled:
    """The compiled kernel of one configuration, from the model's compile cache."""
    return cache.cached(
        model, ("empirical", method, outputs, dtype, bool(training), cross),
        lambda j: _make_kernel_fn(model, method, outputs, dtype, training, cross, j), jit)
