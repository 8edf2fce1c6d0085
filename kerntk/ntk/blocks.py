"""Per-layer blocks of the structured NTK (SPEC §3): Grams of per-example gradients that are
never formed as such.

A layer of kind ``"dense"`` or ``"conv"`` (:mod:`kerntk.ntk.registry`) computes
``z = m_W a W + m_b b``; with ``D = dL/dz`` the cotangents of ``L = sum_i f_k(x_i)`` (one per
output unit ``k``) its per-example kernel gradient is ``m_W sum_s a_is d_is^T`` over the output
positions ``s``. Shapes below: ``A`` (n, S, F) the layer inputs (patches for a convolution),
``D`` (c, n, S, C); ``"trace"`` blocks are (n1, n2) summed over the ``c`` outputs, ``"full"``
blocks (n1 c, n2 c) indexed ``i * c + k``. Costs are in :mod:`kerntk.ntk.empirical`.

:data:`BLOCKS` maps a factorization kind to the function computing its block; a new kind
(e.g. ``"diagonal"`` for elementwise scales, ``"gather"`` for embeddings) adds one entry here and
its name becomes valid in :class:`kerntk.ntk.registry.Factorization`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

__all__ = ["BLOCKS", "choose_form", "gradient_gram", "linear_block", "output_gram",
           "weight_block"]

# Largest patch-form Gram (in elements) we are willing to form for one layer.
MAX_PATCH_GRAM = 2 ** 27
# Batch size assumed for the cost/memory choices when it is unknown at trace time.
NOMINAL_BATCH = 256


def _patches(a: tf.Tensor, fact) -> tf.Tensor:
    """Input patches ``(n, S, F)`` of a dense (any rank) or channels_last conv layer; the patch
    order within F is irrelevant since only inner products of patches are used."""
    if fact.kind == "dense":
        return tf.reshape(a, (-1, int(np.prod(a.shape[1:-1])), a.shape[-1]))
    sizes, strides = list(fact.kernel_size), list(fact.strides)
    if len(sizes) == 1:
        a, sizes, strides = a[:, None], [1] + sizes, [1] + strides
    elif len(sizes) != 2:
        raise NotImplementedError("only 1-D and 2-D convolutions are factorized")
    p = tf.image.extract_patches(a, sizes=[1] + sizes + [1], strides=[1] + strides + [1],
                                 rates=[1, 1, 1, 1], padding=fact.padding.upper())
    return tf.reshape(p, (-1, int(np.prod(p.shape[1:-1])), p.shape[-1]))


def output_gram(B1: tf.Tensor, B2: tf.Tensor, full: bool) -> tf.Tensor:
    """Gram of per-example, per-output vectors B: (c, n, C) -> (n1, n2) summed over c, or
    (n1 c, n2 c) indexed i*c+k."""
    c, C = B1.shape[0], B1.shape[-1]
    B1 = tf.transpose(B1, (1, 0, 2))
    B2 = tf.transpose(B2, (1, 0, 2))
    cols = C if full else c * C
    return tf.matmul(tf.reshape(B1, (-1, cols)), tf.reshape(B2, (-1, cols)), transpose_b=True)


def choose_form(n1: Optional[int], n2: Optional[int], S: int, F: int, C: int, c: int,
                 full: bool) -> str:
    """'patch' or 'grad', whichever needs fewer multiply-adds (patch also capped in memory).
    A batch size unknown at trace time (``None``, inside a training step) counts as
    ``NOMINAL_BATCH``."""
    if S == 1:
        return "patch"
    n1, n2 = n1 or NOMINAL_BATCH, n2 or NOMINAL_BATCH
    pairs = c * c if full else 1
    patch = n1 * n2 * S * S * (F + c * C + pairs)
    grad = (n1 + n2) * S * F * C * c + n1 * n2 * F * C * (c * c if full else c)
    if n1 * n2 * S * S * pairs > MAX_PATCH_GRAM:
        return "grad"
    return "patch" if patch < grad else "grad"


def weight_block(A1, A2, D1, D2, full: bool) -> tf.Tensor:
    """``sum over positions of <a_is, a_jt><d_is, d_jt>`` (without the multiplier)."""
    n1, S, F = A1.shape
    n2 = A2.shape[0]
    c, C = D1.shape[0], D1.shape[-1]
    n2_dyn = tf.shape(A2)[0]
    form = choose_form(n1, n2, S, F, C, c, full)
    if form == "patch" and S == 1:
        GA = tf.matmul(A1[:, 0], A2[:, 0], transpose_b=True)
        GD = output_gram(D1[:, :, 0], D2[:, :, 0], full)
        if full:
            GA = tf.repeat(tf.repeat(GA, c, axis=0), c, axis=1)
        return GA * GD
    if form == "patch":
        GA = tf.reshape(tf.matmul(tf.reshape(A1, (-1, F)), tf.reshape(A2, (-1, F)),
                                  transpose_b=True), [-1, S, n2_dyn, S])
        if full:
            d1 = tf.reshape(tf.transpose(D1, (1, 0, 2, 3)), (-1, C))
            d2 = tf.reshape(tf.transpose(D2, (1, 0, 2, 3)), (-1, C))
            GD = tf.reshape(tf.matmul(d1, d2, transpose_b=True), [-1, c, S, n2_dyn, c, S])
            K = tf.einsum("isjt,iksjlt->ikjl", GA, GD)
            return tf.reshape(K, [-1, n2_dyn * c])
        d1 = tf.reshape(tf.transpose(D1, (1, 2, 0, 3)), (-1, c * C))
        d2 = tf.reshape(tf.transpose(D2, (1, 2, 0, 3)), (-1, c * C))
        GD = tf.reshape(tf.matmul(d1, d2, transpose_b=True), [-1, S, n2_dyn, S])
        return tf.reduce_sum(GA * GD, axis=(1, 3))

    def grads(A, D):  # per-example, per-output weight gradients (n, c, F*C)
        Dt = tf.reshape(tf.transpose(D, (1, 2, 0, 3)), (-1, S, c * C))
        G = tf.reshape(tf.matmul(A, Dt, transpose_a=True), (-1, F, c, C))
        return tf.reshape(tf.transpose(G, (0, 2, 1, 3)), (-1, c, F * C))

    G1 = grads(A1, D1)
    G2 = G1 if (A2 is A1 and D2 is D1) else grads(A2, D2)
    return gradient_gram(G1, G2, full)


def gradient_gram(G1: tf.Tensor, G2: tf.Tensor, full: bool) -> tf.Tensor:
    """Gram of per-example, per-output gradients G: (n, c, P)."""
    c, P = G1.shape[1], G1.shape[2]
    cols = P if full else c * P
    return tf.matmul(tf.reshape(G1, (-1, cols)), tf.reshape(G2, (-1, cols)), transpose_b=True)


def _conv_gradients(a: tf.Tensor, D: tf.Tensor, fact) -> tf.Tensor:
    """Per-example, per-output kernel gradients ``(n, c, F*C)`` of a channels_last conv layer
    (without the multiplier): ``Conv2DBackpropFilter`` on each example (``tf.map_fn``);
    the ``c`` outputs ride along as extra output channels. D: (c, n, *out_spatial, C)."""
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    sizes, strides = list(fact.kernel_size), list(fact.strides)
    if len(sizes) == 1:
        a, D, sizes, strides = a[:, None], D[:, :, None], [1] + sizes, [1] + strides
    cin = a.shape[-1]
    F = int(np.prod(sizes)) * cin
    Dt = tf.reshape(tf.transpose(D, (1, 2, 3, 0, 4)), (-1, D.shape[2], D.shape[3], c * C))

    def one(args):
        ai, di = args
        return tf.raw_ops.Conv2DBackpropFilter(
            input=ai[None], filter_sizes=sizes + [cin, c * C], out_backprop=di[None],
            strides=[1] + strides + [1], padding=fact.padding.upper())

    # pfor has no vectorized Conv2DBackpropFilter (it would fall back to a loop with a warning),
    # so map over the examples explicitly, several in flight.
    G = tf.map_fn(one, (a, Dt), fn_output_signature=a.dtype,
                  parallel_iterations=min(n or 64, 64))
    G = tf.reshape(G, (-1, F, c, C))
    return tf.reshape(tf.transpose(G, (0, 2, 1, 3)), (-1, c, F * C))


def linear_block(fact, a: tf.Tensor, D: tf.Tensor, n1: Optional[int], cross: bool, full: bool,
                 bias: bool) -> tf.Tensor:
    """Kernel block (float64) of one ``"dense"`` or ``"conv"`` layer's kernel (and bias when
    ``bias``): ``a`` its recorded input, ``D`` (c, n, *z.shape[1:]) the cotangents of its
    pre-activation ``z``. With ``cross`` the block pairs the first ``n1`` examples with the
    rest."""
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    S = int(np.prod(D.shape[2:-1]))
    if fact.kind == "conv":
        F = int(np.prod(fact.kernel_size)) * a.shape[-1]
        n2 = n - n1 if (cross and n is not None) else n1
        conv_grad = choose_form(n1, n2, S, F, C, c, full) == "grad"
    else:
        conv_grad = False
    if conv_grad:
        # Per-example gradients straight from the conv backprop op: no patches in memory.
        G = _conv_gradients(a, D, fact)
        G1, G2 = (G[:n1], G[n1:]) if cross else (G, G)
        K = gradient_gram(G1, G2, full)
    D = tf.reshape(D, (c, -1, S, C))
    D1, D2 = (D[:, :n1], D[:, n1:]) if cross else (D, D)
    if not conv_grad:
        A = _patches(a, fact)
        A1, A2 = (A[:n1], A[n1:]) if cross else (A, A)
        K = weight_block(A1, A2, D1, D2, full)
    K = tf.cast(K, tf.float64) * fact.kernel_multiplier ** 2
    if bias:
        B1 = tf.reduce_sum(D1, axis=2)
        B2 = B1 if not cross else tf.reduce_sum(D2, axis=2)
        K += tf.cast(output_gram(B1, B2, full), tf.float64) * fact.bias_multiplier ** 2
    return K


# kind -> fn(fact, a, D, n1, cross, full, bias) -> float64 block.
BLOCKS: Dict[str, Callable] = {"dense": linear_block, "conv": linear_block}
