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

  The cheaper of the two forms (by a multiply-add count) is chosen per layer. Covered layers:
  ``kerntk.layers.NTKDense`` (and ``PolyDense``), ``kerntk.layers.BaseNTKConv`` (``NTKConv1D``,
  ``NTKConv2D``, ``PolyConv2D``), and plain ``keras.layers.Dense`` / ``Conv1D`` / ``Conv2D``
  (channels_last, no dilation, no groups, no LoRA/quantization), each called once per forward
  pass. Raises ``ValueError`` if any trainable variable is not covered, or if the model couples
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
  others (e.g. LayerNormalization scales); the two blocks are added. If the model couples the
  batch it falls back to the batched-function Jacobian for everything, with a warning.

``block_size`` computes ``K`` in ``block_size x block_size`` tiles (the upper triangle, then
mirrored): the memory of every method then depends on ``block_size`` instead of ``n``, at the
price of ``ceil(n / block_size)`` passes per tile row. Tiles need independent examples.

Inside a compiled training step
-------------------------------
:func:`kernel_fn` is the same kernel as a traceable function (the batch size may be unknown at
trace time). :class:`ForwardNTK` computes the structured kernel from a forward pass the caller
runs anyway, e.g. Keras' own ``train_step``: only the ``c`` backward passes to the
pre-activations and the per-layer Grams remain (``CriticalLRMonitor`` measures the batch NTK of
every step this way); :func:`shareable_forward` says when that is valid.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kerntk._backend import require_tensorflow
from kerntk.layers import BaseNTKConv, NTKDense
from kerntk.ntk._common import (_FLOATS, batch_mixing_layers, check_inputs, check_outputs,
                                compute_dtype, count_outputs, flatten_outputs, forward,
                                read_values, resolve_dtype)

__all__ = ["empirical_ntk", "kernel_fn", "ForwardNTK", "shareable_forward"]

METHODS = ("auto", "structured", "jacobian")
_ZERO = tf.UnconnectedGradients.ZERO
# Largest patch-form Gram (in elements) we are willing to form for one layer.
_MAX_PATCH_GRAM = 2 ** 27
# Largest Jacobian (in elements) of one group of variables in the jacobian method.
_MAX_JACOBIAN = 2 ** 28
# Batch size assumed for the cost/memory choices when it is unknown at trace time.
_NOMINAL_BATCH = 256


@dataclass
class _Site:
    """One factorizable layer: ``z = pre(a)``, ``out = post(z)``, ``z = m_W a W + m_b b``."""

    layer: keras.layers.Layer
    kind: str                       # "dense" or "conv"
    pre: Callable
    post: Callable
    kernel_index: int               # position of the kernel in model.trainable_variables
    bias_index: Optional[int]       # position of the bias, None if absent or frozen
    kernel_multiplier: float
    bias_multiplier: float
    kernel_size: tuple = ()
    strides: tuple = ()
    padding: str = "valid"
    records: List[tuple] = field(default_factory=list)


def _keras_conv_ok(layer) -> bool:
    return (type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D)
            and layer.data_format == "channels_last" and layer.groups == 1
            and all(r == 1 for r in layer.dilation_rate)
            and layer.padding in ("valid", "same"))


def _site_for(layer, index_of: Dict[int, int]) -> Optional[_Site]:
    """The factorization of ``layer`` if it is a supported linear-map layer, else None."""
    if getattr(layer, "lora_enabled", False) or layer.dtype_policy.quantization_mode is not None:
        return None
    kernel = getattr(layer, "kernel", None)
    if kernel is None or id(kernel) not in index_of:
        return None
    bias = getattr(layer, "bias", None)
    bias_index = index_of.get(id(bias)) if bias is not None else None
    common = dict(kernel_index=index_of[id(kernel)], bias_index=bias_index)
    if isinstance(layer, NTKDense):
        return _Site(layer, "dense", layer.preactivation, layer.postactivation,
                     kernel_multiplier=float(layer.kernel_multiplier),
                     bias_multiplier=float(layer.bias_multiplier), **common)
    if isinstance(layer, BaseNTKConv):
        return _Site(layer, "conv", layer.preactivation, layer.postactivation,
                     kernel_multiplier=float(layer.kernel_multiplier),
                     bias_multiplier=float(layer.bias_multiplier),
                     kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
                     padding=layer.padding, **common)
    if type(layer) is keras.layers.Dense:
        def pre(a, layer=layer):
            z = ops.matmul(a, layer.kernel)
            return z + layer.bias if layer.bias is not None else z
        return _Site(layer, "dense", pre, layer.activation, kernel_multiplier=1.0,
                     bias_multiplier=1.0, **common)
    if _keras_conv_ok(layer):
        def pre(a, layer=layer):
            z = layer.convolution_op(a, layer.kernel)
            return z + layer.bias if layer.bias is not None else z
        return _Site(layer, "conv", pre, layer.activation, kernel_multiplier=1.0,
                     bias_multiplier=1.0, kernel_size=tuple(layer.kernel_size),
                     strides=tuple(layer.strides), padding=layer.padding, **common)
    return None


def _find_sites(model: keras.Model, index_of: Dict[int, int]) -> List[_Site]:
    sites = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        site = _site_for(layer, index_of)
        if site is not None:
            sites.append(site)
    return sites


@contextlib.contextmanager
def _capture(sites: List[_Site]) -> Iterator[None]:
    """Replace each site's ``call`` (instance attribute) by ``post(pre(a))`` that records ``(a, z)``.

    Restored on exit, even on error."""
    patched = []
    try:
        for site in sites:
            layer = site.layer
            previous = layer.__dict__.get("call", None)

            def call(inputs, *args, _site=site, **kwargs):
                z = _site.pre(inputs)
                _site.records.append((inputs, z))
                return _site.post(z)

            object.__setattr__(layer, "call", call)
            patched.append((layer, previous))
        yield
    finally:
        for layer, previous in reversed(patched):
            if previous is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


# --------------------------------------------------------------------------------------------
# Per-layer blocks. A: (n, S, F) layer inputs (patches); D: (c, n, S, C) cotangents of z.
# "trace" blocks are (n1, n2) summed over the c outputs, "full" blocks (n1 c, n2 c).


def _patches(a: tf.Tensor, site: _Site) -> tf.Tensor:
    """Input patches ``(n, S, F)`` of a dense (any rank) or channels_last conv layer; the patch
    order within F is irrelevant since only inner products of patches are used."""
    if site.kind == "dense":
        return tf.reshape(a, (-1, int(np.prod(a.shape[1:-1])), a.shape[-1]))
    sizes, strides = list(site.kernel_size), list(site.strides)
    if len(sizes) == 1:
        a, sizes, strides = a[:, None], [1] + sizes, [1] + strides
    elif len(sizes) != 2:
        raise NotImplementedError("only 1-D and 2-D convolutions are factorized")
    p = tf.image.extract_patches(a, sizes=[1] + sizes + [1], strides=[1] + strides + [1],
                                 rates=[1, 1, 1, 1], padding=site.padding.upper())
    return tf.reshape(p, (-1, int(np.prod(p.shape[1:-1])), p.shape[-1]))


def _output_gram(B1: tf.Tensor, B2: tf.Tensor, full: bool) -> tf.Tensor:
    """Gram of per-example, per-output vectors B: (c, n, C) -> (n1, n2) summed over c, or
    (n1 c, n2 c) indexed i*c+k."""
    c, C = B1.shape[0], B1.shape[-1]
    B1 = tf.transpose(B1, (1, 0, 2))
    B2 = tf.transpose(B2, (1, 0, 2))
    cols = C if full else c * C
    return tf.matmul(tf.reshape(B1, (-1, cols)), tf.reshape(B2, (-1, cols)), transpose_b=True)


def _choose_form(n1: Optional[int], n2: Optional[int], S: int, F: int, C: int, c: int,
                 full: bool) -> str:
    """'patch' or 'grad', whichever needs fewer multiply-adds (patch also capped in memory).
    A batch size unknown at trace time (``None``, inside a training step) counts as
    ``_NOMINAL_BATCH``."""
    if S == 1:
        return "patch"
    n1, n2 = n1 or _NOMINAL_BATCH, n2 or _NOMINAL_BATCH
    pairs = c * c if full else 1
    patch = n1 * n2 * S * S * (F + c * C + pairs)
    grad = (n1 + n2) * S * F * C * c + n1 * n2 * F * C * (c * c if full else c)
    if n1 * n2 * S * S * pairs > _MAX_PATCH_GRAM:
        return "grad"
    return "patch" if patch < grad else "grad"


def _weight_block(A1, A2, D1, D2, full: bool) -> tf.Tensor:
    """``sum over positions of <a_is, a_jt><d_is, d_jt>`` (without the multiplier)."""
    n1, S, F = A1.shape
    n2 = A2.shape[0]
    c, C = D1.shape[0], D1.shape[-1]
    n2_dyn = tf.shape(A2)[0]
    form = _choose_form(n1, n2, S, F, C, c, full)
    if form == "patch" and S == 1:
        GA = tf.matmul(A1[:, 0], A2[:, 0], transpose_b=True)
        GD = _output_gram(D1[:, :, 0], D2[:, :, 0], full)
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
    return _gradient_gram(G1, G2, full)


def _gradient_gram(G1: tf.Tensor, G2: tf.Tensor, full: bool) -> tf.Tensor:
    """Gram of per-example, per-output gradients G: (n, c, P)."""
    c, P = G1.shape[1], G1.shape[2]
    cols = P if full else c * P
    return tf.matmul(tf.reshape(G1, (-1, cols)), tf.reshape(G2, (-1, cols)), transpose_b=True)


def _conv_gradients(a: tf.Tensor, D: tf.Tensor, site: _Site) -> tf.Tensor:
    """Per-example, per-output kernel gradients ``(n, c, F*C)`` of a channels_last conv site
    (without the multiplier): ``Conv2DBackpropFilter`` on each example (``tf.map_fn``);
    the ``c`` outputs ride along as extra output channels. D: (c, n, *out_spatial, C)."""
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    sizes, strides = list(site.kernel_size), list(site.strides)
    if len(sizes) == 1:
        a, D, sizes, strides = a[:, None], D[:, :, None], [1] + sizes, [1] + strides
    cin = a.shape[-1]
    F = int(np.prod(sizes)) * cin
    Dt = tf.reshape(tf.transpose(D, (1, 2, 3, 0, 4)), (-1, D.shape[2], D.shape[3], c * C))

    def one(args):
        ai, di = args
        return tf.raw_ops.Conv2DBackpropFilter(
            input=ai[None], filter_sizes=sizes + [cin, c * C], out_backprop=di[None],
            strides=[1] + strides + [1], padding=site.padding.upper())

    # pfor has no vectorized Conv2DBackpropFilter (it would fall back to a loop with a warning),
    # so map over the examples explicitly, several in flight.
    G = tf.map_fn(one, (a, Dt), fn_output_signature=a.dtype,
                  parallel_iterations=min(n or 64, 64))
    G = tf.reshape(G, (-1, F, c, C))
    return tf.reshape(tf.transpose(G, (0, 2, 1, 3)), (-1, c, F * C))


def _site_kernel(site: _Site, D: tf.Tensor, n1: int, cross: bool, full: bool) -> tf.Tensor:
    """Kernel block (float64) of one site's kernel and bias; D: (c, n, *z.shape[1:])."""
    a, _ = site.records[0]
    c, n, C = D.shape[0], D.shape[1], D.shape[-1]
    S = int(np.prod(D.shape[2:-1]))
    if site.kind == "conv":
        F = int(np.prod(site.kernel_size)) * a.shape[-1]
        n2 = n - n1 if (cross and n is not None) else n1
        conv_grad = _choose_form(n1, n2, S, F, C, c, full) == "grad"
    else:
        conv_grad = False
    if conv_grad:
        # Per-example gradients straight from the conv backprop op: no patches in memory.
        G = _conv_gradients(a, D, site)
        G1, G2 = (G[:n1], G[n1:]) if cross else (G, G)
        K = _gradient_gram(G1, G2, full)
    D = tf.reshape(D, (c, -1, S, C))
    D1, D2 = (D[:, :n1], D[:, n1:]) if cross else (D, D)
    if not conv_grad:
        A = _patches(a, site)
        A1, A2 = (A[:n1], A[n1:]) if cross else (A, A)
        K = _weight_block(A1, A2, D1, D2, full)
    K = tf.cast(K, tf.float64) * site.kernel_multiplier ** 2
    if site.bias_index is not None:
        B1 = tf.reduce_sum(D1, axis=2)
        B2 = B1 if not cross else tf.reduce_sum(D2, axis=2)
        K += tf.cast(_output_gram(B1, B2, full), tf.float64) * site.bias_multiplier ** 2
    return K


# --------------------------------------------------------------------------------------------


def _columns(out: tf.Tensor, outputs) -> List[int]:
    """The output columns of ``out`` (n, c) that enter the kernel: all of them for ``"trace"``
    and ``"full"``, one for an int ``outputs``."""
    return list(range(out.shape[1])) if isinstance(outputs, str) else [outputs]


def _coverage(sites: List[_Site], n_vars: int):
    """``(active, rest)``: the sites called exactly once by the traced forward pass, and the
    indices of the trainable variables they do not cover."""
    active = [s for s in sites if len(s.records) == 1]
    covered = set()
    for s in active:
        covered.add(s.kernel_index)
        if s.bias_index is not None:
            covered.add(s.bias_index)
    return active, [i for i in range(n_vars) if i not in covered]


def _structured_blocks(active: List[_Site], per_output: list, n1, cross: bool, full: bool,
                       dtype: str) -> List[tf.Tensor]:
    """The sites' kernel blocks from the cotangents ``per_output[k][j]`` of output ``k`` at
    site ``j``."""
    blocks = []
    for j, site in enumerate(active):
        D = tf.stack([tf.cast(g[j], dtype) for g in per_output])
        blocks.append(_site_kernel(site, D, n1, cross, full))
    return blocks


def _kernel_graph(model: keras.Model, x1: tf.Tensor, x2: Optional[tf.Tensor], method: str,
                  outputs, dtype: str, training: bool):
    """Traced body of the kernel: ``(K, f(x), f(x[:2]))`` at the variables' current values.
    ``K`` is float64; the batch size may be unknown at trace time (no ``x2`` then)."""
    cross = x2 is not None
    n1 = x1.shape[0]
    x = tf.concat([x1, x2], axis=0) if cross else x1
    n = x.shape[0]
    tvars = model.trainable_variables
    index_of = {id(v): i for i, v in enumerate(tvars)}
    sites = _find_sites(model, index_of) if method in ("structured", "auto") else []
    with compute_dtype(model, dtype):
        vals, ntvals = read_values(model)
        with _capture(sites):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(vals)
                out = forward(model, vals, ntvals, x, training, dtype)
                # Targets are recorded on the tape: the sums give the cotangents D, the
                # selected columns the batched Jacobian.
                cols = _columns(out, outputs)
                sums = [tf.reduce_sum(out[:, k]) for k in cols]
                target = tf.gather(out, cols, axis=1)
        probe = forward(model, vals, ntvals, x[:2], training, dtype)
        full = outputs == "full"
        active, rest = _coverage(sites, len(tvars))
        if method == "structured" and rest:
            names = ", ".join(tvars[i].path for i in rest)
            raise ValueError(f"method='structured' cannot factorize these trainable "
                             f"variables: {names}. Use method='auto' (structured + jacobian "
                             f"for the rest) or method='jacobian'.")
        blocks = []
        if active:
            zs = [s.records[0][1] for s in active]
            per_output = [tape.gradient(total, zs, unconnected_gradients=_ZERO)
                          for total in sums]
            blocks = _structured_blocks(active, per_output, n1, cross, full, dtype)
        rows = (lambda t: tf.reshape(t, (-1, t.shape[-1]))) if full else \
            (lambda t: tf.reshape(t, (-1, t.shape[1] * t.shape[2])))
        for group in _variable_groups(rest, tvars, (n or _NOMINAL_BATCH) * len(cols)):
            # Control dependency on the blocks so far: one group's Jacobian is alive at a time.
            with tf.control_dependencies(blocks[-1:]):
                if method == "batched":
                    jacs = tape.jacobian(target, [vals[i] for i in group],
                                         unconnected_gradients=_ZERO,
                                         experimental_use_pfor=True)
                else:
                    jacs = _per_example_jacobian(model, vals, ntvals, x, training, dtype,
                                                 cols, group)
            for j in jacs:
                J = tf.reshape(tf.cast(j, dtype), (-1, len(cols), int(np.prod(j.shape[2:]))))
                J1, J2 = (J[:n1], J[n1:]) if cross else (J, J)
                blocks.append(tf.cast(tf.matmul(rows(J1), rows(J2), transpose_b=True),
                                      tf.float64))
    del tape
    return tf.add_n(blocks), out, probe


def _make_kernel_fn(model: keras.Model, method: str, outputs, dtype: str, training: bool,
                    cross: bool, jit: bool = False):
    """A compiled ``(x1[, x2]) -> (K, f(x), f(x[:2]))`` for one configuration."""
    if cross:
        return tf.function(
            lambda x1, x2: _kernel_graph(model, x1, x2, method, outputs, dtype, training),
            autograph=False, jit_compile=jit)
    return tf.function(lambda x1: _kernel_graph(model, x1, None, method, outputs, dtype, training),
                       autograph=False, jit_compile=jit)


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
    return _cached_kernel_fn(model, method, outputs, dt, training, False, False)


# Layers whose ``training`` argument does not change their output.
_TRAINING_INDEPENDENT = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                         keras.layers.Conv3D, keras.layers.Activation, keras.layers.Flatten,
                         keras.layers.Reshape, keras.Sequential)


def _training_dependent(layer) -> bool:
    if not getattr(layer, "_call_has_training_arg", False):
        return False
    if isinstance(layer, _TRAINING_INDEPENDENT):
        return False
    # A functional model only passes ``training`` on to its layers (checked separately).
    return type(layer).__name__ != "Functional"


def shareable_forward(model: keras.Model, x2: tf.Tensor, dtype: str) -> bool:
    """Whether :class:`ForwardNTK` can compute the NTK from ``model``'s own training-mode forward
    pass (decided while tracing; the forward pass of ``x2`` it traces is not run).

    It can when (1) every layer's output ignores ``training`` (no Dropout, BatchNormalization,
    noise, or custom layers taking ``training``), (2) every layer computes in ``dtype`` (not a
    mixed-precision model), and (3) the per-layer factorization covers every trainable variable
    (each in a layer called once per forward pass), which a forward pass of ``x2`` under capture
    tells.
    """
    require_tensorflow("kerntk.ntk.empirical.shareable_forward")
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    ok = not any(_training_dependent(layer) for layer in layers) and all(
        layer.compute_dtype == dtype for layer in layers if layer.compute_dtype in _FLOATS)
    tvars = model.trainable_variables
    sites = _find_sites(model, {id(v): i for i, v in enumerate(tvars)})
    with compute_dtype(model, dtype):
        vals, ntvals = read_values(model)
        with _capture(sites):
            forward(model, vals, ntvals, x2, False, dtype)
    _, rest = _coverage(sites, len(tvars))
    return ok and not rest


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
        self._sites = _find_sites(model, {id(v): i for i, v in enumerate(self._tvars)})
        self._tape = None
        self._out = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Records the (one) forward pass of ``model`` run inside the context."""
        model = self.model
        bound = model.call
        previous = model.__dict__.get("call", None)

        def call(*args, **kwargs):
            if self._tape is not None:
                raise ValueError("ForwardNTK records one forward pass; the model was called "
                                 "twice.")
            self._tape = tf.GradientTape(persistent=True)
            with self._tape:
                out = bound(*args, **kwargs)
                self._out = flatten_outputs(out)
                self._sums = [tf.reduce_sum(self._out[:, k])
                              for k in _columns(self._out, self.outputs)]
            return out

        for site in self._sites:
            site.records.clear()
        try:
            with _capture(self._sites):
                object.__setattr__(model, "call", call)
                yield
        finally:
            if previous is None:
                object.__delattr__(model, "call")
            else:
                object.__setattr__(model, "call", previous)

    def kernel(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(K, f)``: the float64 NTK (layout of ``outputs``) and the recorded outputs."""
        if self._tape is None:
            raise ValueError("Nothing recorded: call the model inside `recording()` first.")
        active, rest = _coverage(self._sites, len(self._tvars))
        if rest:
            names = ", ".join(self._tvars[i].path for i in rest)
            raise ValueError(f"ForwardNTK cannot factorize these trainable variables: {names} "
                             f"(check shareable_forward first).")
        zs = [s.records[0][1] for s in active]
        per_output = [self._tape.gradient(t, zs, unconnected_gradients=_ZERO)
                      for t in self._sums]
        blocks = _structured_blocks(active, per_output, None, False, self.outputs == "full",
                                    self._out.dtype.name)
        return tf.add_n(blocks), self._out


def _variable_groups(indices: List[int], tvars, rows: int) -> List[List[int]]:
    """Split variables into groups whose Jacobian (``rows x size``) stays under
    ``_MAX_JACOBIAN`` elements (a single variable may exceed it)."""
    groups, current, size = [], [], 0
    for i in indices:
        elements = rows * int(np.prod(tvars[i].shape))
        if current and size + elements > _MAX_JACOBIAN:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += elements
    if current:
        groups.append(current)
    return groups


def _per_example_jacobian(model, vals, ntvals, x, training, dtype, cols, group):
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

    return tf.vectorized_map(one, x)


class _Compiled:
    """A compiled kernel function; an XLA one falls back to the plain graph if XLA cannot compile
    it (some ops have no XLA kernel)."""

    def __init__(self, make: Callable, jit: bool):
        self.make, self.jit = make, jit
        self.fn = make(jit)

    def __call__(self, *args):
        if not self.jit:
            return self.fn(*args)
        try:
            return self.fn(*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.InternalError):
            self.jit = False
            self.fn = self.make(False)
            return self.fn(*args)


def _cached_kernel_fn(model, method, outputs, dtype, training, cross, jit):
    cache = model.__dict__.get("_kerntk_ntk_cache")
    if cache is None:
        cache = {}
        object.__setattr__(model, "_kerntk_ntk_cache", cache)
    key = ("empirical", method, outputs, dtype, bool(training), cross, jit,
           tuple(id(v) for v in model.trainable_variables))
    if key not in cache:
        cache[key] = _Compiled(lambda j: _make_kernel_fn(model, method, outputs, dtype, training,
                                                         cross, j), jit)
    return cache[key]


def mixes_batch(first_rows, probe, dtype: str) -> tf.Tensor:
    """Whether ``f(x[:m])`` (``probe``) differs from ``f(x)[:m]`` (``first_rows``) beyond
    round-off, or is not finite: the model couples the examples of a batch. A bool tensor
    (works in a graph and eagerly on arrays)."""
    a = tf.cast(first_rows, tf.float64)
    b = tf.cast(probe, tf.float64)
    scale = tf.maximum(tf.maximum(tf.reduce_max(tf.abs(a)), tf.reduce_max(tf.abs(b))), 1e-30)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    return (tf.reduce_max(tf.abs(a - b)) > rtol * scale) | ~tf.reduce_all(tf.math.is_finite(b))


def empirical_ntk(model: keras.Model, x, *, method: str = "auto",
                  outputs: Union[str, int] = "trace", block_size: Optional[int] = None,
                  training: bool = False, dtype=None,
                  jit_compile: Optional[bool] = None, return_outputs: bool = False):
    """Exact empirical NTK ``K_ij = <df(x_i)/dw, df(x_j)/dw>`` over ``model.trainable_variables``.

    See the module docstring (:mod:`kerntk.ntk.empirical`) for the conventions and the cost of
    each method.

    Args:
        model: a Keras model (or layer) with one array input; built on ``x`` if needed.
        x: array ``(n, ...)`` of inputs, finite and non-empty.
        method: ``"auto"`` (default), ``"structured"`` or ``"jacobian"``.
        outputs: ``"trace"`` (``n x n``, summed over output units), ``"full"``
            (``(n c) x (n c)``, index ``i * c + k``) or an int (that output unit, ``n x n``).
        block_size: compute ``K`` in tiles of this many examples (bounded memory); ``None`` does
            all ``n`` at once.
        training: the ``training`` flag of the forward pass (no state is updated).
        dtype: compute dtype, ``"float32"`` or ``"float64"``; ``None`` picks float64 for float64
            models and float32 otherwise (mixed-precision models run in float32).
        jit_compile: compile with XLA. ``None`` (default): XLA for ``"structured"``/``"auto"``
            on models without convolutions (about 25% faster on CPU for the fcn; one compilation
            per input shape), falling back to the plain graph if XLA cannot compile the model;
            not for ``"jacobian"`` nor convolutional models (XLA was ~40x slower there).
        return_outputs: also return the model's outputs ``f(x)`` (``(n, c)`` float64) from the
            same forward pass (free; saves a caller's separate forward pass).

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
    K, f = _empirical_ntk(model, x, method, outputs, block_size, training, dtype, jit_compile)
    return (K, f) if return_outputs else K


def _empirical_ntk(model, x, method, outputs, block_size, training, dtype, jit_compile):
    x = check_inputs(model, x)
    dt = resolve_dtype(model, dtype)
    outputs = check_outputs(outputs, count_outputs(model, x))
    n = x.shape[0]
    bs = n if block_size is None else min(int(block_size), n)

    coupled = batch_mixing_layers(model, training)
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
        return _tiled(model, x, "batched", outputs, dt, training, bs, jit_compile)

    try:
        return _tiled(model, x, method, outputs, dt, training, bs, jit_compile)
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
        return _tiled(model, x, "batched", outputs, dt, training, bs, jit_compile)


class _BatchCoupled(Exception):
    pass


_CONVS = (BaseNTKConv, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
          keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _has_convolutions(model) -> bool:
    # XLA on CPU runs the per-example conv gradients (a loop of Conv2DBackpropFilter) ~40x slower
    # than the plain graph (measured on the benchmark cnn), so convolutional models skip it.
    return any(isinstance(layer, _CONVS)
               for layer in model._flatten_layers(include_self=False, recursive=True))


def _tiled(model, x, method, outputs, dt, training, bs, jit_compile):
    """``(K, f(x))``: the kernel tile by tile, and the outputs from the diagonal tiles."""
    jit = jit_compile
    if jit is None:
        jit = method in ("structured", "auto") and not _has_convolutions(model)
    n = x.shape[0]
    reps = 1
    if outputs == "full":
        reps = count_outputs(model, x)
    K = np.empty((n * reps, n * reps), dtype=np.float64)
    starts = list(range(0, n, bs))
    outs = []
    x = tf.constant(x, dtype=dt)
    check = method != "batched"
    for a, s in enumerate(starts):
        xs = x[s:s + bs]
        rs = slice(s * reps, min(s + bs, n) * reps)
        blk, out, probe = _cached_kernel_fn(model, method, outputs, dt, training, False, jit)(xs)
        out = out.numpy()
        if check and a == 0 and bool(mixes_batch(out[:probe.shape[0]], probe, dt)):
            raise _BatchCoupled()
        outs.append(out)
        K[rs, rs] = blk.numpy()
        for t in starts[a + 1:]:
            rt = slice(t * reps, min(t + bs, n) * reps)
            blk, _, _ = _cached_kernel_fn(model, method, outputs, dt, training, True, jit)(
                xs, x[t:t + bs])
            blk = blk.numpy()
            K[rs, rt] = blk
            K[rt, rs] = blk.T
    # Exactly symmetric (the diagonal tiles are only symmetric up to round-off).
    K += K.T
    K *= 0.5
    return K, np.concatenate(outs).astype(np.float64)
