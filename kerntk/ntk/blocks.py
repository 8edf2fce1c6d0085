"""Per-layer blocks of the structured NTK (SPEC §3): Grams of per-example gradients that are
never formed as such.

A factorized layer (:mod:`kerntk.ntk.registry`) computes ``z = m_W lin(a, W) + m_b b``; with
``D = dL/dz`` the cotangents of ``L = sum_i f_k(x_i)`` (one per output unit ``k``) its
per-example kernel gradient is bilinear in ``a_i`` and ``d_i``, so its Gram is formed from ``A``
and ``D`` alone. The kinds:

* ``"dense"`` / ``"conv"``: ``m_W sum_s a_is d_is^T`` over the output positions ``s``, with
  ``a_is`` the input (patch, for a 1-, 2- or 3-D convolution) feeding position ``s``; a grouped
  convolution (``groups = g``, depthwise when ``g`` is the number of input channels) pairs only
  the channels of the same group.
* ``"conv_transpose"``: a transposed convolution is the input-gradient of a convolution, so the
  roles swap: ``m_W sum_s a_is p_is^T`` with ``p_is`` the patch of ``d_i`` over the output
  positions that input position ``s`` feeds.
* ``"diagonal"``: an elementwise scale ``z = a * gamma`` over some axes (LayerNormalization):
  ``m_W sum_s a_is * d_is``.
* ``"gather"``: an embedding lookup ``z_s = E[id_s]``: ``sum_s e_{id_s} d_is^T``, so
  ``K_ij = sum_{s,t} [id_is = id_jt] <d_is, d_jt>``.

Shapes below: ``A`` (n, S, F) the layer inputs (patches for a convolution), ``D`` (c, n, S, C);
``"trace"`` blocks are (n1, n2) summed over the ``c`` outputs, ``"full"`` blocks (n1 c, n2 c)
indexed ``i * c + k``. Costs are in :mod:`kerntk.ntk.empirical`.

:data:`BLOCKS` maps a factorization kind to the function computing its block; a new kind adds one
entry here and its name becomes valid in :class:`kerntk.ntk.registry.Factorization`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["BLOCKS", "choose_form", "gradient_gram", "linear_block", "output_gram",
           "weight_block"]

# Largest patch-form Gram (in elements) we are willing to form for one layer.
MAX_PATCH_GRAM = 2 ** 27
# Batch size assumed for the cost/memory choices when it is unknown at trace time.
NOMINAL_BATCH = 256


def extract_patches(t: tf.Tensor, kernel_size: Sequence[int], strides: Sequence[int],
                    padding: str) -> tf.Tensor:
    """Patches ``(n, S, K*F)`` of a channels_last tensor ``t`` (n, *spatial, F) for a 1-, 2- or
    3-D convolution window (no dilation), in the order ``(window position, channel)``, with the
    convolution's own padding rule."""
    sizes, strides = list(kernel_size), list(strides)
    if len(sizes) == 1:
        t, sizes, strides = t[:, None], [1] + sizes, [1] + strides
    if len(sizes) == 2:
        p = tf.image.extract_patches(t, sizes=[1] + sizes + [1], strides=[1] + strides + [1],
                                     rates=[1, 1, 1, 1], padding=padding.upper())
    elif len(sizes) == 3:
        p = tf.extract_volume_patches(t, ksizes=[1] + sizes + [1],
                                      strides=[1] + strides + [1], padding=padding.upper())
    else:
        raise NotImplementedError("only 1-, 2- and 3-D convolutions are factorized")
    return tf.reshape(p, (-1, int(np.prod(p.shape[1:-1])), p.shape[-1]))


def _patches(a: tf.Tensor, fact) -> tf.Tensor:
    """Input patches ``(n, S, F)`` of a dense (any rank) or channels_last conv layer; the patch
    order within F is irrelevant since only inner products of patches are used."""
    if fact.kind == "dense":
        return tf.reshape(a, (-1, int(np.prod(a.shape[1:-1])), a.shape[-1]))
    return extract_patches(a, fact.kernel_size, fact.strides, fact.padding)


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


def patch_block(GA: tf.Tensor, D1: tf.Tensor, D2: tf.Tensor, full: bool) -> tf.Tensor:
    """``sum_{s,t} GA[i,s,j,t] <d_is, d_jt>`` for a position Gram ``GA`` (n1, S, n2, S) and
    cotangents D (c, n, S, C)."""
    c, S, C = D1.shape[0], D1.shape[2], D1.shape[-1]
    n2_dyn = tf.shape(D2)[1]
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
        return patch_block(GA, D1, D2, full)

    def grads(A, D):  # per-example, per-output weight gradients (n, c, F*C)
        Dt = tf.reshape(tf.transpose(D, (1, 2, 0, 3)), (-1, S, c * C))
        G = tf.reshape(tf.matmul(A, Dt, transpose_a=True), (-1, F, c, C))
        return tf.reshape(tf.transpose(G, (0, 2, 1, 3)), (-1, c, F * C))

    G1 = grads(A1, D1)
    G2 = G1 if (A2 is A1 and D2 is D1) else grads(A2, D2)
    return gradient_gram(G1, G2, full)


def gradient_gram(G1: tf.Tensor, G2: tf.Tensor, full: bool) -> tf.Tensor:
    """Gram of per-example, per-output gradients G: (n, c, P); ``P`` may be unknown at trace
    time."""
    c = G1.shape[1]
    rows = lambda G: tf.shape(G)[0] * c if full else tf.shape(G)[0]  # noqa: E731
    G1f = tf.reshape(G1, tf.stack([rows(G1), -1]))
    G2f = G1f if G2 is G1 else tf.reshape(G2, tf.stack([rows(G2), -1]))
    return tf.matmul(G1f, G2f, transpose_b=True)


def _conv_gradients(a: tf.Tensor, D: tf.Tensor, fact) -> tf.Tensor:
    """Per-example, per-output kernel gradients ``(n, c, F*C)`` of a channels_last 1-D/2-D conv
    layer (without the multiplier): ``Conv2DBackpropFilter`` on each example (``tf.map_fn``);
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


def _split(t: tf.Tensor, n1: Optional[int], cross: bool, axis: int = 1):
    """``(t1, t2)``: the first ``n1`` examples and the rest (examples on ``axis``: 1 for
    cotangents D, 0 for per-example tensors) for a cross block, else the same tensor twice."""
    if not cross:
        return t, t
    if axis == 0:
        return t[:n1], t[n1:]
    return t[:, :n1], t[:, n1:]


def _bias_block(fact, D: tf.Tensor, n1, cross: bool, full: bool) -> tf.Tensor:
    """``m_b^2`` times the Gram of ``sum_s d_is`` (a bias shared over the positions);
    D (c, n, S, C)."""
    B1, B2 = _split(tf.reduce_sum(D, axis=2), n1, cross)
    return tf.cast(output_gram(B1, B2, full), tf.float64) * fact.bias_multiplier ** 2


def _grouped_gradients(a: tf.Tensor, D: tf.Tensor, fact) -> tf.Tensor:
    """Per-example, per-output kernel gradients ``(n, c, K * Cin * Cout / g)`` of a grouped
    convolution (``g = fact.groups``): input channel group ``q`` (``Cin / g`` contiguous
    channels) feeds only output group ``q`` (``Cout / g`` contiguous channels); depthwise is
    ``g = Cin``. D: (c, n, *out_spatial, Cout)."""
    if len(fact.kernel_size) <= 2 and fact.groups == a.shape[-1]:
        return _depthwise_gradients(a, D, fact)
    g = fact.groups
    cin = a.shape[-1]
    P = extract_patches(a, fact.kernel_size, fact.strides, fact.padding)  # (n, S, K*Cin)
    S, K = P.shape[1], int(np.prod(fact.kernel_size))
    c, C = D.shape[0], D.shape[-1]
    P = tf.reshape(P, (-1, S, K, g, cin // g))
    Dg = tf.reshape(D, (c, -1, S, g, C // g))
    G = tf.einsum("nskqi,cnsqo->ncqkio", P, Dg)
    return tf.reshape(G, (-1, c, g * K * (cin // g) * (C // g)))


def _depthwise_gradients(a: tf.Tensor, D: tf.Tensor, fact) -> tf.Tensor:
    """:func:`_grouped_gradients` of a 1-D/2-D depthwise convolution from TensorFlow's
    depthwise filter-gradient op on each example (``tf.map_fn``; ~15x faster than contracting
    patches). The ``c`` outputs ride along in the depth multiplier: output channel
    ``cin (c M) + k M + j``. (TensorFlow's ``Conv2DBackpropFilter`` refuses grouped filters on
    CPU, so other groupings contract patches.)"""
    cin = a.shape[-1]
    c, C = D.shape[0], D.shape[-1]
    M = C // cin
    sizes, strides = list(fact.kernel_size), list(fact.strides)
    if len(sizes) == 1:
        # A height-1 image and window: the row stride is free, and the op wants equal strides.
        a, D, sizes, strides = a[:, None], D[:, :, None], [1] + sizes, strides * 2
    H, W = D.shape[2], D.shape[3]
    Dt = tf.reshape(tf.transpose(tf.reshape(D, (c, -1, H, W, cin, M)), (1, 2, 3, 4, 0, 5)),
                    (-1, H, W, c * C))

    def one(args):
        ai, di = args
        return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=ai[None], filter_sizes=sizes + [cin, c * M], out_backprop=di[None],
            strides=[1] + strides + [1], padding=fact.padding.upper())

    G = tf.map_fn(one, (a, Dt), fn_output_signature=a.dtype,
                  parallel_iterations=min(D.shape[1] or 64, 64))
    K = int(np.prod(sizes))
    G = tf.reshape(G, (-1, K, cin, c, M))
    return tf.reshape(tf.transpose(G, (0, 3, 1, 2, 4)), (-1, c, K * cin * M))


def linear_block(fact, a: tf.Tensor, D: tf.Tensor, n1: Optional[int], cross: bool, full: bool,
                 kernel: bool, bias: bool) -> tf.Tensor:
    """Kernel block (float64) of one ``"dense"`` or ``"conv"`` layer's kernel (when ``kernel``)
    and bias (when ``bias``): ``a`` its recorded input, ``D`` (c, n, *z.shape[1:]) the
    cotangents of its pre-activation ``z``. With ``cross`` the block pairs the first ``n1``
    examples with the rest."""
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    S = int(np.prod(D.shape[2:-1]))
    K = tf.constant(0.0, tf.float64)
    if kernel and bias and fact.kind == "dense" and S == 1:
        # One Gram of the cotangents for the kernel and the bias (the same product; forming it
        # twice cost a fifth of the dense kernel of a 1024-wide fcn).
        A1, A2 = _split(tf.reshape(a, (-1, a.shape[-1])), n1, cross, axis=0)
        D1, D2 = _split(tf.reshape(D, (c, -1, C)), n1, cross)
        GD = output_gram(D1, D2, full)
        GA = tf.matmul(A1, A2, transpose_b=True)
        if full:
            GA = tf.repeat(tf.repeat(GA, c, axis=0), c, axis=1)
        return (tf.cast(GA * GD, tf.float64) * fact.kernel_multiplier ** 2
                + tf.cast(GD, tf.float64) * fact.bias_multiplier ** 2)
    if kernel and fact.kind == "conv" and fact.groups > 1:
        K = gradient_gram(*_split(_grouped_gradients(a, D, fact), n1, cross, axis=0), full)
    elif kernel:
        conv_grad = False
        if fact.kind == "conv" and len(fact.kernel_size) <= 2:
            F = int(np.prod(fact.kernel_size)) * a.shape[-1]
            n2 = n - n1 if (cross and n is not None) else n1
            conv_grad = choose_form(n1, n2, S, F, C, c, full) == "grad"
        if conv_grad:
            # Per-example gradients straight from the conv backprop op: no patches in memory.
            K = gradient_gram(*_split(_conv_gradients(a, D, fact), n1, cross, axis=0), full)
        else:
            A1, A2 = _split(_patches(a, fact), n1, cross, axis=0)
            D1, D2 = _split(tf.reshape(D, (c, -1, S, C)), n1, cross)
            K = weight_block(A1, A2, D1, D2, full)
    K = tf.cast(K, tf.float64) * fact.kernel_multiplier ** 2
    if bias:
        K = K + _bias_block(fact, tf.reshape(D, (c, -1, S, C)), n1, cross, full)
    return K


def conv_transpose_block(fact, a: tf.Tensor, D: tf.Tensor, n1: Optional[int], cross: bool,
                         full: bool, kernel: bool, bias: bool) -> tf.Tensor:
    """Block of a channels_last transposed convolution ``z = conv_transpose(a, W)``: its
    per-example kernel gradient is the filter gradient of the convolution mapping ``z``'s
    shape to ``a``'s, ``sum_s a_is p_is^T`` with ``p`` the patches of ``d`` (same window,
    strides and padding), so it is a weight block with the roles of ``a`` and ``d`` swapped."""
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    S_out = int(np.prod(D.shape[2:-1]))
    K = tf.constant(0.0, tf.float64)
    if kernel:
        Dp = extract_patches(tf.reshape(D, (-1,) + tuple(D.shape[2:])), fact.kernel_size,
                             fact.strides, fact.padding)           # (c n, S_in, K*Cout)
        Dp = tf.reshape(Dp, (c, -1) + tuple(Dp.shape[1:]))
        A = tf.reshape(a, (-1, int(np.prod(a.shape[1:-1])), a.shape[-1]))
        if A.shape[1] != Dp.shape[2]:
            raise ValueError(f"conv_transpose factorization: the input has {A.shape[1]} "
                             f"positions but the window over the output gives {Dp.shape[2]}.")
        A1, A2 = _split(A, n1, cross, axis=0)
        D1, D2 = _split(Dp, n1, cross)
        K = tf.cast(weight_block(A1, A2, D1, D2, full), tf.float64) * fact.kernel_multiplier ** 2
    if bias:
        K = K + _bias_block(fact, tf.reshape(D, (c, -1, S_out, C)), n1, cross, full)
    return K


def _move_axes_last(t: tf.Tensor, axes: Sequence[int], lead: int) -> tf.Tensor:
    """``t`` (lead axes, n, *rest) reshaped to (lead axes, n, S, P) with the per-example axes
    ``axes`` (1-based, as in the layer's input) flattened into ``P`` last."""
    rank = len(t.shape) - lead                       # axes of one layer tensor, batch included
    keep = [i for i in range(1, rank) if i not in axes]
    perm = list(range(lead + 1)) + [lead + i for i in keep] + [lead + i for i in axes]
    t = tf.transpose(t, perm)
    S = int(np.prod([t.shape[lead + 1 + j] for j in range(len(keep))]))
    P = int(np.prod([t.shape[lead + 1 + len(keep) + j] for j in range(len(axes))]))
    return tf.reshape(t, [t.shape[k] for k in range(lead)] + [-1, S, P])


def diagonal_block(fact, a: tf.Tensor, D: tf.Tensor, n1: Optional[int], cross: bool,
                   full: bool, kernel: bool, bias: bool) -> tf.Tensor:
    """Block of an elementwise scale and shift ``z = m_W a * gamma + m_b beta``, the parameters
    varying over ``fact.axes`` and shared over the other positions: per-example gradients
    ``m_W sum_s a_is * d_is`` and ``m_b sum_s d_is``."""
    rank = len(a.shape)
    axes = sorted({ax % rank for ax in fact.axes})
    if 0 in axes:
        raise ValueError(f"a 'diagonal' factorization cannot vary over the batch axis (axes "
                         f"{fact.axes} of a rank-{rank} input)")
    Dm = _move_axes_last(D, axes, lead=1)                      # (c, n, S, P)
    K = tf.constant(0.0, tf.float64)
    if kernel:
        Am = _move_axes_last(tf.cast(a, D.dtype), axes, lead=0)   # (n, S, P)
        G = tf.einsum("nsp,cnsp->ncp", Am, Dm)
        G1, G2 = _split(G, n1, cross, axis=0)
        K = tf.cast(gradient_gram(G1, G2, full), tf.float64) * fact.kernel_multiplier ** 2
    if bias:
        K = K + _bias_block(fact, Dm, n1, cross, full)
    return K


def choose_gather_form(n1: Optional[int], n2: Optional[int], S: int, V: int, C: int, c: int,
                       full: bool) -> str:
    """'patch' (id-equality Gram of the positions) or 'grad' (per-example gradients over the
    ids in the batch) for an embedding with ``V`` rows of width ``C`` looked up at ``S``
    positions: the one needing fewer multiply-adds, patch also capped in memory."""
    if S == 1:
        return "patch"
    n1, n2 = n1 or NOMINAL_BATCH, n2 or NOMINAL_BATCH
    pairs = c * c if full else 1
    distinct = min(V, (n1 + n2) * S)
    patch = n1 * n2 * S * S * (1 + c * C + pairs)
    grad = n1 * n2 * distinct * C * (c * c if full else c)
    return "patch" if patch < grad and n1 * n2 * S * S * pairs <= MAX_PATCH_GRAM else "grad"


def gather_block(fact, a: tf.Tensor, D: tf.Tensor, n1: Optional[int], cross: bool, full: bool,
                 kernel: bool, bias: bool) -> tf.Tensor:
    """Block of an embedding lookup ``z_s = m_W E[id_s]``: ``K_ij = m_W^2 sum_{s,t}
    [id_is = id_jt] <d_is, d_jt>``. Formed from the id-equality Gram of the positions (patch
    form) or from per-example gradients summed over the ids present in the batch, whichever
    needs fewer multiply-adds."""
    if bias:
        raise ValueError("a 'gather' factorization has no bias")
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    ids = tf.reshape(tf.cast(a, tf.int64), (tf.shape(a)[0], -1))     # (n, S)
    S = int(np.prod(a.shape[1:]))
    D = tf.reshape(D, (c, -1, S, C))
    n2 = n - n1 if (cross and n is not None) else n1
    D1, D2 = _split(D, n1, cross)
    if choose_gather_form(n1, n2, S, int(fact.kernel.shape[0]), C, c, full) == "patch":
        i1, i2 = _split(ids, n1, cross, axis=0)
        GA = tf.cast(tf.equal(i1[:, :, None, None], i2[None, None]), D.dtype)
        K = patch_block(GA, D1, D2, full)
    else:
        # Per-example gradients restricted to the rows of E that occur in the batch.
        uniq, idx = tf.unique(tf.reshape(ids, [-1]))
        U = tf.size(uniq)
        n_dyn = tf.shape(ids)[0]
        seg = tf.reshape(tf.range(n_dyn)[:, None] * U + tf.reshape(idx, (n_dyn, S)), [-1])
        Dt = tf.reshape(tf.transpose(D, (1, 2, 0, 3)), (-1, c * C))
        G = tf.math.unsorted_segment_sum(Dt, seg, n_dyn * U)          # (n U, c C)
        G = tf.transpose(tf.reshape(G, tf.stack([n_dyn, U, c, C])), (0, 2, 1, 3))
        G = tf.reshape(G, tf.stack([n_dyn, c, U * C]))
        G1, G2 = _split(G, n1, cross, axis=0)
        K = gradient_gram(G1, G2, full)
    return tf.cast(K, tf.float64) * fact.kernel_multiplier ** 2


# kind -> fn(fact, a, D, n1, cross, full, kernel, bias) -> float64 block.
BLOCKS: Dict[str, Callable] = {"dense": linear_block, "conv": linear_block,
                               "conv_transpose": conv_transpose_block,
                               "diagonal": diagonal_block, "gather": gather_block}
