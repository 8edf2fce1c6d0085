"""Exact empirical NTK of a Keras model (thesis Def. 4.2.1; SPEC §1, §3).

``K_ij = <df(x_i)/dw, df(x_j)/dw>`` over the model's trainable weights ``w``.

Conventions
-----------
* All outputs of the model are flattened per example and concatenated into ``c`` output units;
  unit ``k`` of example ``i`` is ``f_k(x_i)``.
* ``outputs="trace"`` (default): the ``n x n`` kernel summed over output units,
  ``K_ij = sum_k <df_k(x_i)/dw, df_k(x_j)/dw>``.
* ``outputs="full"``: the ``(n c) x (n c)`` kernel, row/column ``i * c + k`` is (example ``i``,
  output ``k``).
* ``outputs=k`` (int): the ``n x n`` kernel of output unit ``k`` alone.
* The result is a float64 numpy array. The forward/backward passes run in ``dtype`` (float32 for
  float32 and mixed-precision models, float64 for float64 models) and per-layer blocks are summed
  in float64.

Methods and their cost
----------------------
Notation: ``n`` examples, ``c`` output units (``c = 1`` below for ``outputs=int``), ``P``
parameters, and for one layer ``F`` its fan-in, ``C`` its output channels and ``S`` its output
positions (1 for a Dense layer on 2-D input). Costs are for ``outputs="trace"``; with
``"full"`` the Gram terms grow from ``n^2`` to ``(n c)^2`` entries.

* ``"structured"`` — per-layer factorization (SPEC §3). A layer computing ``z = m_W a W + m_b b``
  has per-example gradient ``m_W sum_s a_is d_is^T``, with ``d = dL/dz`` the cotangent of
  ``L = sum_i f_k(x_i)``; because examples are independent, ONE forward pass and ``c`` backward
  passes *to the pre-activations only* (no weight gradients) give all ``d``. Then, per layer:

  - dense (``S = 1``): ``K_W = m_W^2 (A A^T) ⊙ (D D^T)``, ``K_b = m_b^2 D D^T``;
    time ``O(n^2 (F + c C))``, memory ``O(n^2 + n (F + c C))``.
  - conv / dense on rank > 2 inputs, *patch form*:
    ``K_ij = m_W^2 sum_{s,t} <P_is, P_jt> <D_is, D_jt>`` with ``P`` the input patches;
    time ``O(n^2 S^2 (F + c C))``, memory ``O(n^2 S^2)``.
  - same, *per-example-gradient form*: ``G_i = P_i^T D_i`` (``F x C``), ``K = G G^T``;
    time ``O(n S F C c + n^2 F C c)``, memory ``O(n c F C)`` (for convolutions ``G_i`` comes
    from the conv backprop-filter op mapped over examples; no patches are formed).

  The cheaper of the two forms (by a multiply-add count) is chosen per layer. Grouped and
  depthwise convolutions use the per-example-gradient form (one group's channels at a time);
  transposed convolutions swap the roles of ``a`` and ``d``; elementwise scales
  (LayerNormalization) cost ``O(n S C c + n^2 C c)``; an embedding forms either the id-equality
  Gram of the positions or per-example gradients over the ids present in the batch. Covered
  layers: those with a factorization in :mod:`kerntk.ntk.registry` — ``kerntk.layers.NTKDense``
  (and ``PolyDense``), ``kerntk.layers.BaseNTKConv`` (``NTKConv1D``, ``NTKConv2D``,
  ``PolyConv2D``), Keras' ``Dense``, ``Conv1D``/``2D``/``3D`` (``groups`` included),
  ``DepthwiseConv1D``/``2D``, ``SeparableConv1D``/``2D``, ``Conv1DTranspose``/``2D``/``3D``
  (channels_last, no dilation, no LoRA/quantization), ``LayerNormalization``,
  ``RMSNormalization``, ``Embedding``, and
  any layer class registered with :func:`kerntk.ntk.registry.register_factorization` — each
  called once per forward pass, with its variables used only there (both proven while tracing;
  :func:`kerntk.ntk.registry.explain` tells which layers of a model are covered, and why
  not). Raises ``ValueError`` if any trainable variable is not covered, or if the model couples
  the examples of a batch (BatchNormalization in training mode, or any layer whose output for an
  example depends on the other examples — detected by comparing ``f(x[:2])`` with ``f(x)[:2]``).
* ``"jacobian"`` — the generic fallback, for any layer: per-example Jacobians (a forward and
  backward pass of each single example, vectorized over the batch with ``pfor``), ``J`` of shape
  ``n c x P``, then ``K = J J^T``. Time ``O(c)`` batched backward passes with per-example weight
  gradients materialized (``O(n c P)``), plus ``O(n^2 c P)`` for the Gram, which dominates;
  memory ``O(n c P)``, bounded by treating the variables in groups of at most ``2^28`` Jacobian
  entries, one group alive at a time (``block_size`` bounds it further). If the model couples the
  examples of a batch (BatchNormalization with ``training=True``, or detected as above), the
  Jacobian of the *batched* function is used instead (one reverse pass of the whole batch per
  row, ``O(n^2 c P)`` time and more memory), which is exact for such models.
* ``"auto"`` (default) — ``"structured"`` for every variable it covers and ``"jacobian"`` for the
  others (e.g. a layer of a class with no registered factorization, or tied weights); the two
  blocks are added. If the model couples the
  batch it falls back to the batched-function Jacobian for everything, with a warning.

``block_size`` computes ``K`` in ``block_size x block_size`` tiles (the upper triangle, then
mirrored): the memory of every method then depends on ``block_size`` instead of ``n``, at the
price of ``ceil(n / block_size)`` passes per tile row. Tiles need independent examples. Before
anything is allocated, the peak memory is estimated from the shapes and the tiles are chosen to
fit (or the request refused with the estimate): :mod:`kerntk.ntk.memory`. Inside a
``tf.distribute`` strategy's scope the tiles are shared out among the workers and their devices
and the kernel gathered on every worker (:mod:`kerntk.ntk.distribute`).

Inside a compiled training step
-------------------------------
:func:`kernel_fn` (:mod:`kerntk.ntk.in_step`, re-exported here) is the same kernel as a
traceable function (the batch size may be unknown at trace time). :class:`ForwardNTK` computes
the structured kernel from a forward pass the caller runs anyway, e.g. Keras' own
``train_step``: only the ``c`` backward passes to the pre-activations and the per-layer Grams
remain (``CriticalLRMonitor`` measures the batch NTK of every step this way);
:func:`shareable_forward` says when that is valid.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Union

import keras
import numpy as np
import tensorflow as tf

from kerntk._backend import require_tensorflow
from kerntk.ntk import distribute
from kerntk.ntk.forward import (batch_mixing_layers, check_inputs, check_outputs, count_outputs,
                                resolve_dtype)
# The in-step API lived here first; kept importable from kerntk.ntk.empirical.
from kerntk.ntk.in_step import ForwardNTK, kernel_fn, mixes_batch, shareable_forward
from kerntk.ntk.memory import plan_kernel
from kerntk.ntk.registry import explain
from kerntk.ntk.traced import METHODS, cached_kernel_fn

__all__ = ["empirical_ntk", "kernel_fn", "ForwardNTK", "shareable_forward", "mixes_batch"]


def empirical_ntk(model: keras.Model, x, *, method: str = "auto",
                  outputs: Union[str, int] = "trace", block_size: Optional[int] = None,
                  training: bool = False, dtype=None,
                  jit_compile: Optional[bool] = None, return_outputs: bool = False,
                  verbose: int = 0):
    """Exact empirical NTK ``K_ij = <df(x_i)/dw, df(x_j)/dw>`` over ``model.trainable_variables``.

    See the module docstring (:mod:`kerntk.ntk.empirical`) for the conventions and the cost of
    each method.

    Args:
        model: a Keras model (or layer) with one array input; built on ``x`` if needed.
        x: array ``(n, ...)`` of inputs, finite and non-empty.
        method: ``"auto"`` (default), ``"structured"`` or ``"jacobian"``.
        outputs: ``"trace"`` (``n x n``, summed over output units), ``"full"``
            (``(n c) x (n c)``, index ``i * c + k``) or an int (that output unit, ``n x n``).
        block_size: compute ``K`` in tiles of this many examples (bounded memory). ``None``:
            all ``n`` at once if the estimated peak memory fits the memory limit, else the
            largest halving of ``n`` that fits (:mod:`kerntk.ntk.memory`); a ``block_size``
            that does not fit raises :class:`kerntk.ntk.memory.NTKMemoryError` naming one that
            would.
        training: the ``training`` flag of the forward pass (no state is updated).
        dtype: compute dtype, ``"float32"`` or ``"float64"``; ``None`` picks float64 for float64
            models and float32 otherwise (mixed-precision models run in float32).
        jit_compile: compile with XLA. ``None`` (default): XLA for ``"structured"``/``"auto"``
            on models without convolutions (about 25% faster on CPU for the fcn; one compilation
            per input shape), falling back to the plain graph if XLA cannot compile the model;
            not for ``"jacobian"`` nor convolutional models (XLA was ~40x slower there).
        return_outputs: also return the model's outputs ``f(x)`` (``(n, c)`` float64) from the
            same forward pass (free; saves a caller's separate forward pass).
        verbose: ``1`` shows a Keras ``Progbar`` over the tiles (tiles done, time left);
            ``0`` (default) is silent.

    Returns:
        float64 numpy array, exactly symmetric, positive semi-definite up to round-off; with
        ``return_outputs=True`` the pair ``(K, f(x))``.

    Raises:
        ValueError: bad ``x`` (NaN/inf, empty, wrong shape), bad arguments, ``"structured"`` on a
            model with layers it cannot factorize or whose examples are coupled (e.g.
            BatchNormalization with ``training=True``), tiles on a batch-coupled model.

    Example:
        >>> model = kerntk.models.fcn(3, 256, input_shape=(10,))
        >>> K = empirical_ntk(model, np.random.randn(32, 10))   # (32, 32)
    """
    require_tensorflow("kerntk.ntk.empirical_ntk")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
    if block_size is not None and (isinstance(block_size, bool) or
                                   not isinstance(block_size, (int, np.integer))
                                   or block_size <= 0):
        raise ValueError(f"`block_size` must be None or a positive int; got {block_size!r}.")
    if jit_compile is not None and not isinstance(jit_compile, bool):
        raise ValueError(f"`jit_compile` must be None or a bool; got {jit_compile!r}.")
    if verbose not in (0, 1, True, False):
        raise ValueError(f"`verbose` must be 0 or 1; got {verbose!r}.")
    K, f = _empirical_ntk(model, x, method, outputs, block_size, training, dtype, jit_compile,
                          int(verbose))
    return (K, f) if return_outputs else K


def _empirical_ntk(model, x, method, outputs, block_size, training, dtype, jit_compile,
                   verbose):
    x = check_inputs(model, x)
    dt = resolve_dtype(model, dtype)
    c = count_outputs(model, x)
    outputs = check_outputs(outputs, c)
    n = x.shape[0]
    coupled = batch_mixing_layers(model, training)
    # Memory before allocation: the block size that fits (or the one asked for, if it fits).
    bs = plan_kernel(model, x.shape, method, outputs, c, dt,
                     n if coupled and block_size is None else block_size,
                     batched=bool(coupled)).block_size
    if coupled:
        if method == "structured":
            raise ValueError(f"method='structured' needs independent examples, but these layers "
                             f"couple the batch with training=True: {coupled}. Use "
                             f"training=False or method='jacobian'.")
        if bs < n:
            raise ValueError(f"block_size needs independent examples, but these layers couple "
                             f"the batch with training=True: {coupled}.")
        if method == "auto":
            warnings.warn(f"Layers {coupled} couple the batch with training=True; computing the "
                          f"NTK with method='jacobian' (Jacobian of the batched function).",
                          stacklevel=2)
        return _tiled(model, x, "batched", outputs, dt, training, bs, jit_compile, verbose)

    try:
        return _tiled(model, x, method, outputs, dt, training, bs, jit_compile, verbose)
    except _BatchCoupled:
        if method == "structured":
            raise ValueError("method='structured' needs independent examples, but the model's "
                             "output for an example depends on the rest of the batch "
                             "(f(x[:2]) != f(x)[:2]); use method='jacobian'.") from None
        if bs < n:
            raise ValueError("block_size needs independent examples, but the model's output for "
                             "an example depends on the rest of the batch "
                             "(f(x[:2]) != f(x)[:2]).") from None
        if method == "auto":
            warnings.warn("The model couples the examples of a batch (f(x[:2]) != f(x)[:2]); "
                          "computing the NTK with method='jacobian' (Jacobian of the batched "
                          "function).", stacklevel=2)
        return _tiled(model, x, "batched", outputs, dt, training, bs, jit_compile, verbose)


class _BatchCoupled(Exception):
    pass


# Factorization kinds whose blocks XLA runs slowly on CPU (the per-example conv gradients, a loop
# of Conv2DBackpropFilter, ~40x slower than the plain graph on the benchmark cnn) or cannot
# compile (the ids present in a batch, for "gather", have a data-dependent count).
_NOT_FOR_XLA = ("conv", "conv_transpose", "gather")


def _xla_friendly(model) -> bool:
    return not any(kind in _NOT_FOR_XLA for report in explain(model) if report.kind
                   for kind in report.kind.split("+"))


def _tiled(model, x, method, outputs, dt, training, bs, jit_compile, verbose):
    """``(K, f(x))``: the kernel tile by tile, and the outputs from the diagonal tiles; a Keras
    ``Progbar`` over the tiles when ``verbose``. Under a ``tf.distribute`` strategy the tiles are
    shared out among the workers and their devices (:mod:`kerntk.ntk.distribute`)."""
    jit = jit_compile
    if jit is None:
        jit = method in ("structured", "auto") and _xla_friendly(model)
    n = x.shape[0]
    reps = 1
    if outputs == "full":
        reps = count_outputs(model, x)
    starts = list(range(0, n, bs))
    # Tile j: (row block a, column block b >= a), in the order rows then columns.
    tiles = [(a, b) for a in range(len(starts)) for b in range(a, len(starts))]
    dist = distribute.current()
    # Every worker computes the first tile: it tells whether the model couples the examples.
    mine = [j for j in range(len(tiles)) if dist is None or j == 0 or dist.mine(j)]
    K = np.zeros((n * reps, n * reps), dtype=np.float64)
    f = None
    x = tf.constant(x, dtype=dt)
    bar = keras.utils.Progbar(len(mine), unit_name="tile") if verbose else None
    for done, j in enumerate(mine, 1):
        a, b = tiles[j]
        sa, sb = starts[a], starts[b]
        rs = slice(sa * reps, min(sa + bs, n) * reps)
        rt = slice(sb * reps, min(sb + bs, n) * reps)
        with contextlib.nullcontext() if dist is None else dist.device(j):
            if a == b:
                blk, out, probe = cached_kernel_fn(model, method, outputs, dt, training, False,
                                                   jit)(x[sa:sa + bs])
            else:
                blk, _, _ = cached_kernel_fn(model, method, outputs, dt, training, True, jit)(
                    x[sa:sa + bs], x[sb:sb + bs])
        blk = blk.numpy()
        if a == b:
            out = out.numpy()
            if j == 0 and method != "batched" and bool(
                    mixes_batch(out[:probe.shape[0]], probe, dt)):
                raise _BatchCoupled()
            if f is None:
                f = np.zeros((n, out.shape[1]), np.float64)
            if dist is None or dist.mine(j):
                f[sa:sa + bs] = out
                K[rs, rs] = blk
        else:
            K[rs, rt] = blk
            K[rt, rs] = blk.T
        if bar is not None:
            bar.update(done)
    if dist is not None:
        K, f = dist.all_sum([K, f])
    # Exactly symmetric (the diagonal tiles are only symmetric up to round-off).
    K += K.T
    K *= 0.5
    return K, f
