"""The NTK inside a compiled training step.

* :func:`kernel_fn` — the kernel of :func:`kerntk.ntk.empirical_ntk` as a traceable function
  (the batch size may be unknown at trace time).
* :class:`ForwardNTK` — the structured kernel from a forward pass the caller runs anyway, e.g.
  Keras' own ``train_step``: only the ``c`` backward passes to the pre-activations and the
  per-layer Grams remain (``CriticalLRMonitor`` measures the batch NTK of every step this way);
  :func:`shareable_forward` says when that is valid.
* :meth:`ForwardNTK.operator` / :meth:`ForwardNTK.matvec` — the matrix-free product
  ``J P^{-1} J^T u`` from the same recorded forward pass (never the n x n Gram), and
  :func:`top_eigenvalue`, a traced, warm-started Lanczos for its largest eigenvalue;
  :func:`prefer_matrix_free` says when that beats the dense kernel + ``eigvalsh``.
* :func:`mixes_batch` — whether the model couples the examples of a batch, from ``f(x)[:m]`` and
  a separate ``f(x[:m])``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from kerntk import _keras_compat as compat
from kerntk._backend import require_tensorflow
from kerntk.ntk.forward import (FLOATS, compute_dtype, flatten_outputs, forward, read_values,
                                resolve_dtype)
from kerntk.ntk.registry import capture, coverage, find_sites, unproven_layers
from kerntk.ntk.traced import METHODS, cached_kernel_fn, columns, structured_blocks

__all__ = ["ForwardNTK", "NTKOperator", "kernel_fn", "mixes_batch", "prefer_matrix_free",
           "shareable_forward", "top_eigenvalue"]

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


class NTKOperator:
    """``u -> J P^{-1} J^T u`` of one recorded batch, from :meth:`ForwardNTK.operator` (a
    callable; valid in the graph that recorded)."""

    def __init__(self, matvec: Callable[[tf.Tensor], tf.Tensor],
                 quadratic_form: Callable[[tf.Tensor], tf.Tensor]):
        self._matvec, self._quadratic_form = matvec, quadratic_form

    def __call__(self, u: tf.Tensor) -> tf.Tensor:
        """``J P^{-1} J^T u`` for ``u`` of shape ``(n, c)``, in ``u``'s dtype."""
        return self._matvec(u)

    def quadratic_form(self, u: tf.Tensor) -> tf.Tensor:
        """``u^T J P^{-1} J^T u = |P^{-1/2} J^T u|^2`` (float64 scalar) from the vector-Jacobian
        product alone: about half the cost of a product (for :func:`top_eigenvalue`)."""
        return self._quadratic_form(u)


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

    At large batches ``lambda_max`` of ``K`` is cheaper matrix-free (:func:`prefer_matrix_free`;
    at n = 2000 the dense ``K`` and its ``eigvalsh`` cost ~100 training steps)::

        op = fnt.operator()                   # the same c backward passes, no Gram
        lam, v = top_eigenvalue(op, v_prev, 2, quadratic_form=op.quadratic_form)
        v_prev.assign(v)                      # warm start of the next step (a tf.Variable)

    With ``recording(share_backward=True)`` and one output unit (``c = 1``) the backward pass
    to the pre-activations is shared too: the step's own backward pass (Keras' loss gradient)
    sends ``dL/dz_i = s_i df_i/dz_i`` through every pre-activation, ``s_i = dL/df_i`` the
    cotangent it sends into the output of example ``i``; identity ops with a custom gradient
    (no change to the step's values or gradients) observe both, and ``df/dz = (dL/dz) / s``.
    Exact up to round-off, since the backward pass is linear in its cotangent and examples are
    independent. Where that division is not safe (some ``s_i`` zero, below the square root of
    the dtype's smallest normal number, or not finite, e.g. a perfectly fitted example or a
    zero sample weight) the kernel takes the backward pass of its own, in a ``tf.cond``.
    Sharing needs the recorded forward pass to be differentiated exactly once inside the
    context, with no other loss on the activations (no ``add_loss``/activity regularizer);
    otherwise it is silently off. :attr:`shares_backward` says which, once recorded.
    """

    def __init__(self, model: keras.Model, outputs: Union[str, int] = "full"):
        require_tensorflow("kerntk.ntk.empirical.ForwardNTK")
        self.model, self.outputs = model, outputs
        self._tvars = model.trainable_variables
        self._sites = find_sites(model, {id(v): i for i, v in enumerate(self._tvars)})
        self._tape = None
        self._out = None
        self._shared = None

    @contextlib.contextmanager
    def recording(self, share_backward: bool = False) -> Iterator[None]:
        """Records the (one) forward pass of ``model`` run inside the context; with
        ``share_backward``, also the cotangents the (one) backward pass through it inside the
        context sends to the pre-activations and the output (see the class docstring)."""
        model = self.model
        bound = model.call
        seen = {}  # key -> cotangents observed while the context is open
        state = {"open": True}

        def tap(key, t):
            @tf.custom_gradient
            def identity(v):
                def grad(dy):
                    if state["open"]:
                        seen.setdefault(key, []).append(dy)
                    return dy

                return tf.identity(v), grad

            return identity(t)

        def call(*args, **kwargs):
            if self._tape is not None:
                raise ValueError("ForwardNTK records one forward pass; the model was called "
                                 "twice.")
            self._tape = tf.GradientTape(persistent=True)
            with self._tape:
                out = bound(*args, **kwargs)
                flat = tf.nest.flatten(out)
                if share_backward and len(flat) == 1:
                    out = tf.nest.pack_sequence_as(out, [tap("out", flat[0])])
                self._out = flatten_outputs(out)
                self._sums = [tf.reduce_sum(self._out[:, k])
                              for k in columns(self._out, self.outputs)]
            return out

        for site in self._sites:
            site.records.clear()
        self._shared = None
        site_tap = (lambda site, z: tap(id(site), z)) if share_backward else None
        with capture(self._sites, tap=site_tap), compat.override(model, "call", call):
            yield
        state["open"] = False
        if share_backward and self._tape is not None:
            self._shared = self._observed(seen)

    def _observed(self, seen: dict):
        """``(s, {id(site): dL/dz})`` from the cotangents observed, or ``None`` when they do
        not determine ``df/dz`` (see the class docstring)."""
        if self._out.shape[1] != 1 or len(seen.get("out", ())) != 1:
            return None
        active, _ = coverage(self._sites, len(self._tvars))
        if any(len(seen.get(id(s), ())) != 1 for s in active):
            return None
        try:  # losses added on activations (activity regularizers, add_loss) in this call
            if any(layer._get_own_losses() for layer in compat.flatten_layers(self.model)):
                return None
        except Exception:  # pragma: no cover - a Keras without these internals: do not share
            return None
        return seen["out"][0], {id(s): seen[id(s)][0] for s in active}

    @property
    def shares_backward(self) -> bool:
        """Whether the recorded step's backward pass gives the cotangents (see the class
        docstring; the kernel still takes its own backward pass where dividing is unsafe)."""
        return self._shared is not None

    def _cotangents(self, sites) -> list:
        """``per_output[k][j]``: the cotangent ``df_k/dz`` at site ``j`` (summed over examples:
        per example, since examples are independent), for the columns of ``outputs``."""
        zs = [s.records[0][1] for s in sites]

        def own():
            return [self._tape.gradient(t, zs, unconnected_gradients=_ZERO)
                    for t in self._sums]

        if self._shared is None or not sites:
            return own()
        s, dz = self._shared
        s = tf.reshape(s, [-1])
        dzs = [dz[id(site)] for site in sites]
        tiny = float(np.sqrt(np.finfo(s.dtype.as_numpy_dtype).tiny))
        safe = tf.reduce_all(tf.abs(s) >= tiny) & tf.reduce_all(tf.math.is_finite(s))
        for d in dzs:
            safe = safe & tf.reduce_all(tf.math.is_finite(d))

        def divided():
            out = []
            for d in dzs:
                scale = tf.reshape(s, [-1] + [1] * (d.shape.rank - 1))
                out.append(d / tf.cast(scale, d.dtype))
            return out

        return [tf.cond(safe, divided, lambda: own()[0])]

    @property
    def outputs_recorded(self) -> tf.Tensor:
        """The recorded outputs ``f`` ``(n, c)`` (all outputs flattened)."""
        if self._tape is None:
            raise ValueError("Nothing recorded: call the model inside `recording()` first.")
        return self._out

    def kernel(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(K, f)``: the float64 NTK (layout of ``outputs``) and the recorded outputs."""
        if self._tape is None:
            raise ValueError("Nothing recorded: call the model inside `recording()` first.")
        active, rest = coverage(self._sites, len(self._tvars))
        if rest:
            names = ", ".join(self._tvars[i].path for i in rest)
            raise ValueError(f"ForwardNTK cannot factorize these trainable variables: {names} "
                             f"(check shareable_forward first).")
        per_output = self._cotangents(active)
        blocks = structured_blocks(active, per_output, None, False, self.outputs == "full",
                                    self._out.dtype.name)
        return tf.add_n(blocks), self._out

    def matrix_free_min_batch(self, c: int, steps: int, limit: int = 1 << 17) -> Optional[int]:
        """The smallest batch size at which :func:`prefer_matrix_free` prefers :meth:`operator`
        and ``steps`` Lanczos steps to :meth:`kernel` and ``eigvalsh`` for this model (``c``
        output units), or ``None`` when some trainable variable is not in a dense site (the cost
        model covers dense layers only) or no batch up to ``limit`` qualifies. Static: usable
        while tracing a step whose batch size is unknown."""
        active, rest = coverage(self._sites, len(self._tvars))
        if rest or not active or any(s.fact.kind != "dense" for s in active):
            return None
        layers = [tuple(int(d) for d in self._tvars[s.kernel_index].shape[-2:]) for s in active]
        n = 8
        while n <= limit:
            if prefer_matrix_free(n, c, layers, steps):
                return n
            n = int(n * 1.25) + 1
        return None

    def operator(self, inverse_preconditioner: Optional[Sequence[tf.Tensor]] = None
                 ) -> "NTKOperator":
        """The matrix-free batch NTK ``u -> J P^{-1} J^T u`` of the recorded forward pass.

        ``J`` is the ``(n c) x P`` Jacobian of the recorded outputs (the columns of ``outputs``:
        all of them for ``"full"``, one for an int) in ``model.trainable_variables`` at the
        recorded weights; ``P^{-1}`` a diagonal preconditioner. Without a preconditioner the
        product is ``K @ u`` for the ``K`` of :meth:`kernel` (row ``i * c + k`` is ``u[i, k]``),
        never forming ``K``: the ``c`` backward passes to the pre-activations are taken here,
        once, and every product reuses them.

        How each variable is handled (both exact):

        * the kernel and bias of a ``"dense"`` site (``z = m_W a W + m_b b``, any input rank, the
          positions ``s`` flattened): ``J^T u`` is ``m_W sum_{i,s} a_is (sum_k u_ik d_isk)^T``,
          one ``(F x nS) @ (nS x C)`` product, then ``(J w)_ik = m_W sum_s a_is^T w d_isk``, one
          ``(nS x F) @ (F x C)`` product and a row sum; the bias alike with ``a = 1``. About
          the two weight products of a training step per layer and product;
        * every other trainable variable (other site kinds, variables no site covers): the
          vector-Jacobian product through the recorded tape (``tape.gradient`` with
          ``output_gradients``) and the Jacobian-vector product by differentiating that VJP
          with respect to its cotangent (the double-backward trick): about three backward
          passes of the whole net per product.

        Call it inside the ``tf.function`` (and the same ``tf.cond`` branch) that recorded; the
        closure holds tensors of that graph.

        Args:
            inverse_preconditioner: ``None`` (identity) or one tensor per trainable variable of
                ``model.trainable_variables``, of its shape: the diagonal of ``P^{-1}`` (e.g.
                Adam's ``1 / (sqrt(v_hat) + eps)``), expected positive so that the product is
                positive semi-definite.

        Returns:
            An :class:`NTKOperator` ``op``: ``op(u) = J P^{-1} J^T u`` for ``u`` of shape
            ``(n, c)`` (``c`` = 1 for an int ``outputs``), float64 or the compute dtype, the
            result of ``u``'s shape and dtype; ``op.quadratic_form(u) = u^T J P^{-1} J^T u``
            from the VJP alone. The products run in the model's compute dtype.

        Raises:
            ValueError: nothing recorded, ``outputs="trace"`` (a sum of ``c`` operators, not
                one ``J J^T``), or a preconditioner of the wrong length.
        """
        if self._tape is None:
            raise ValueError("Nothing recorded: call the model inside `recording()` first.")
        if self.outputs == "trace":
            raise ValueError("ForwardNTK.operator needs outputs='full' or an int (the 'trace' "
                             "kernel is a sum of c operators, not one J J^T).")
        tvars = self._tvars
        precond = None
        if inverse_preconditioner is not None:
            precond = list(inverse_preconditioner)
            if len(precond) != len(tvars):
                raise ValueError(f"inverse_preconditioner needs one tensor per trainable "
                                 f"variable ({len(tvars)}); got {len(precond)}.")
        dt = self._out.dtype
        c_all = self._out.shape[1]
        cols = columns(self._out, self.outputs)
        active, rest = coverage(self._sites, len(tvars))
        dense = [s for s in active if s.fact.kind == "dense"]
        taped = sorted(set(rest) | {i for s in active if s.fact.kind != "dense"
                                    for i in s.indices})
        per_output = []
        if dense:
            per_output = self._cotangents(dense)

        def scaled(g, i):
            return g if precond is None else g * tf.cast(precond[i], g.dtype)

        # Per dense site: A (n S, F) and D (n, S, C, c), in the compute dtype; the outputs last,
        # so that weighting them by u and summing them runs over contiguous memory (summing a
        # leading output axis instead cost ~8 ms per product at n = 2000, as much as a
        # weight-sized matrix product).
        factors = []
        for j, site in enumerate(dense):
            D = tf.stack([tf.cast(g[j], dt) for g in per_output], axis=-1)
            C = D.shape[-2]
            S = int(np.prod(D.shape[1:-2]))
            a = tf.cast(site.records[0][0], dt)
            factors.append((site, tf.reshape(a, (-1, a.shape[-1])),
                            tf.reshape(D, (-1, S, C, len(cols)))))

        def dense_vjp(site, A, D, u: tf.Tensor):
            """``(Uz, g_kernel, g_bias)``: ``J_z^T u`` (n, S, C) and ``J^T u`` for the site's
            kernel (in the kernel's shape: (1, 1, F, C) for the pointwise step of a separable
            convolution) and bias (``None`` when not trainable)."""
            fact, C = site.fact, D.shape[2]
            if D.shape[-1] == 1:
                Uz = u[:, :, None] * D[..., 0]
            else:   # a batched (S C x c) @ (c,) per example
                Uz = tf.einsum("nsck,nk->nsc", D, u)
            gk = gb = None
            if site.kernel_index is not None:
                gk = tf.matmul(A, tf.reshape(Uz, (-1, C)), transpose_a=True)     # (F, C)
                gk = tf.reshape(gk * fact.kernel_multiplier, fact.kernel.shape)
            if site.bias_index is not None:
                gb = tf.reshape(tf.reduce_sum(Uz, axis=(0, 1)) * fact.bias_multiplier,
                                fact.bias.shape)
            return Uz, gk, gb

        def dense_products(u: tf.Tensor) -> List[tf.Tensor]:
            terms = []
            for site, A, D in factors:
                fact, S, C = site.fact, D.shape[1], D.shape[2]
                _, gk, gb = dense_vjp(site, A, D, u)
                z = 0.0
                if gk is not None:
                    gk = tf.reshape(scaled(gk, site.kernel_index), (-1, C))
                    z = tf.reshape(tf.matmul(A, gk), (-1, S, C)) * fact.kernel_multiplier
                if gb is not None:
                    gb = scaled(gb, site.bias_index)
                    z = z + tf.reshape(gb, (1, 1, C)) * fact.bias_multiplier
                if D.shape[-1] == 1:
                    terms.append(tf.reduce_sum(z * D[..., 0], axis=(1, 2))[:, None])
                else:
                    terms.append(tf.einsum("nsc,nsck->nk", z, D))
            return terms

        def cotangent(u: tf.Tensor) -> tf.Tensor:
            if len(cols) == c_all:
                return u
            return u * tf.one_hot(cols[0], c_all, dtype=dt)[None]   # one column of zeros

        sources = [tvars[i] for i in taped]

        def taped_product(u: tf.Tensor) -> tf.Tensor:
            # J^T u through the recorded tape, then J (P^{-1} J^T u) as the derivative of that
            # VJP (linear in u) along P^{-1} J^T u.
            with tf.GradientTape() as outer:
                outer.watch(u)
                g = self._tape.gradient(self._out, sources, output_gradients=cotangent(u),
                                        unconnected_gradients=_ZERO)
            w = [scaled(tf.convert_to_tensor(gi), i) for gi, i in zip(g, taped)]
            return outer.gradient(g, u, output_gradients=w, unconnected_gradients=_ZERO)

        def matvec(u: tf.Tensor) -> tf.Tensor:
            u = tf.convert_to_tensor(u)
            uc = tf.cast(u, dt)
            terms = dense_products(uc)
            if taped:
                terms.append(taped_product(uc))
            if not terms:
                return tf.zeros_like(u)
            return tf.cast(tf.add_n(terms), u.dtype)

        def quadratic_form(u: tf.Tensor) -> tf.Tensor:
            uc = tf.cast(tf.convert_to_tensor(u), dt)
            grads = []
            for site, A, D in factors:
                _, gk, gb = dense_vjp(site, A, D, uc)
                grads += [(g, i) for g, i in ((gk, site.kernel_index), (gb, site.bias_index))
                          if g is not None]
            if taped:
                g = self._tape.gradient(self._out, sources, output_gradients=cotangent(uc),
                                        unconnected_gradients=_ZERO)
                grads += [(tf.convert_to_tensor(gi), i) for gi, i in zip(g, taped)]
            q = [tf.reduce_sum(tf.cast(g * scaled(g, i), tf.float64)) for g, i in grads]
            return tf.add_n(q) if q else tf.constant(0.0, tf.float64)

        return NTKOperator(matvec, quadratic_form)

    def matvec(self, u: tf.Tensor, inverse_preconditioner: Optional[Sequence[tf.Tensor]] = None
               ) -> tf.Tensor:
        """``J P^{-1} J^T u`` for one ``u`` (:meth:`operator`, whose backward passes to the
        pre-activations it takes again on every call: use :meth:`operator` for several
        products).

        Args:
            u: ``(n, c)`` tensor (float64 or the compute dtype).
            inverse_preconditioner: see :meth:`operator`.

        Returns:
            The product, of ``u``'s shape and dtype.
        """
        return self.operator(inverse_preconditioner)(u)


def mixes_batch(first_rows, probe, dtype: str) -> tf.Tensor:
    """Whether ``f(x[:m])`` (``probe``) differs from ``f(x)[:m]`` (``first_rows``) beyond
    round-off, or is not finite: the model couples the examples of a batch. A bool tensor
    (works in a graph and eagerly on arrays)."""
    a = tf.cast(first_rows, tf.float64)
    b = tf.cast(probe, tf.float64)
    scale = tf.maximum(tf.maximum(tf.reduce_max(tf.abs(a)), tf.reduce_max(tf.abs(b))), 1e-30)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    return (tf.reduce_max(tf.abs(a - b)) > rtol * scale) | ~tf.reduce_all(tf.math.is_finite(b))


# Cost of a dense eigvalsh of an N x N matrix, in multiply-adds of a float32 matrix product per
# N^3: LAPACK's tridiagonal reduction is ~4/3 N^3 flops, half of them matrix-vector bound.
# Measured on 2 shared CPU cores (TF 2.21): eigvalsh(512) 54 ms, eigvalsh(1024) 320 ms against
# ~13 G multiply-adds/s for the Gram products of the same run: 3.9-5.2.
_EIGH_PER_N3 = 4.0
# Fixed cost of one Lanczos step (op launches, the float64 reorthogonalization), in
# multiply-adds: ~0.5 ms at ~20 G multiply-adds/s.
_STEP_OVERHEAD = 1e7


def prefer_matrix_free(n: int, c: int, layers: Sequence[Sequence[int]], steps: int = 4) -> bool:
    """Whether ``lambda_max`` of the batch NTK is cheaper by ``steps`` matrix-free products and
    Lanczos (:meth:`ForwardNTK.operator`, :func:`top_eigenvalue`) than by the dense kernel
    (:meth:`ForwardNTK.kernel`) and ``eigvalsh``, for a model of dense layers.

    Cost model in multiply-adds (both paths share the forward pass and the ``c`` backward passes
    to the pre-activations): the dense kernel forms per layer ``A A^T`` (``n^2 S^2 F``) and the
    Gram of the cotangents (``(n c)^2 S^2 C``) then decomposes an ``n c`` square matrix
    (``~4 (n c)^3``, measured); each product costs per layer two ``(n S) x F x C`` matrix
    products (``2 n S F C``), the output weighting ``2 c n S C`` and a fixed overhead.

    Measured (``benchmarks/in_step.py``-style, 2 shared CPU cores, float32, ``c = 1``; ms for
    forward / dense kernel + eigvalsh / 2, 4, 8 Lanczos steps, each including the forward):

    * ``fcn(2, 1024)``, d = 100: n = 128: 1.6 / 4.5 / 5.3, 8.9, 14.4; n = 256: 2.5 / 11.9 /
      9.9, 16.1, 29.2; n = 512: 3.2 / 98.6 / 20.5, 21.6, 54.5; n = 1024: 4.8 / 490 / 31, 51,
      141; n = 2000: 11.4 / 3060 / 85, 129, 208. Crossover n ~ 256-384; the model says
      between 256 and 384 at 4 steps, between 128 and 256 at 2.
    * ``fcn(5, 1024)``, d = 3072 (the reference fcn): n = 128: 55 / 128 / 301, 463, 741;
      n = 256: 100 / 251 / 528, 924, 1696; n = 512: 171 / 616 / 1051, 2194, 4252. Dense wins:
      each product costs two passes through 6.3 M weights, the Gram of 512 examples less; the
      model puts the crossover between n = 2400 and 3000 (4 steps).

    (These Lanczos times predate storing the cotangents outputs-last, which cut ~30% off a
    product at n = 2000; the crossovers move slightly down.)

    Args:
        n: batch size (examples).
        c: output units in the kernel (``outputs="full"``).
        layers: per dense layer ``(F, C)`` (input and output features) or ``(F, C, S)`` with
            ``S`` positions per example (a dense layer on a sequence).
        steps: Lanczos steps (products) per measurement.

    Returns:
        ``True`` when the matrix-free path is expected to be faster.
    """
    dense = _EIGH_PER_N3 * float(n * c) ** 3
    free = steps * _STEP_OVERHEAD
    for dims in layers:
        F, C = int(dims[0]), int(dims[1])
        S = int(dims[2]) if len(dims) > 2 else 1
        dense += float(n * S) ** 2 * (F + c * c * C)
        free += steps * 2.0 * n * S * C * (F + c)
    return free < dense


def _dot(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x * y)


def top_eigenvalue(matvec: Callable[[tf.Tensor], tf.Tensor], v0: tf.Tensor, steps: int, *,
                   quadratic_form: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                   with_residual: bool = False):
    """Largest eigenvalue of a symmetric positive semi-definite operator by ``steps`` steps of
    Lanczos with full reorthogonalization, warm-started from ``v0``; traceable (a Python loop
    of ``steps`` iterations, traced once), float64.

    The Krylov basis ``v_1 = v0 / |v0|, ..., v_m`` (``m = steps``, one ``matvec`` each) is
    orthonormalized against all previous vectors (classical Gram-Schmidt, twice), and the
    Ritz pair comes from ``H = V^T (K V)`` formed from the stored products (Rayleigh-Ritz on the
    Krylov space: exact whatever the loss of orthogonality of the three-term recurrence). A
    breakdown (the Krylov space is invariant: ``v0`` an eigenvector, or ``K`` of rank < m)
    continues with zero vectors, adding zero Ritz values, harmless for the largest one of a
    positive semi-definite ``K``. A zero or non-finite ``v0`` (e.g. a fresh warm-start
    variable) is replaced by a fixed pseudo-random vector.

    Convergence (``theta`` the returned value, ``lambda_1 > lambda_2`` the two largest
    eigenvalues, ``phi`` the angle between ``v0`` and the top eigenvector, gap ratio
    ``gamma = (lambda_1 - lambda_2) / (lambda_2 - lambda_min)``): Kaniel-Paige-Saad,
    ``0 <= (lambda_1 - theta) / (lambda_1 - lambda_min) <= (tan(phi) / T_{m-1}(1 + 2 gamma))^2``
    with ``T`` the Chebyshev polynomial; the error is quadratic in the warm start's angle, so
    the previous step's Ritz vector (the weights barely move in one step) needs very few
    steps. ``theta`` never exceeds ``lambda_1``; with ``with_residual`` the returned
    ``r = |K y - theta y|`` certifies an eigenvalue in ``[theta - r, theta + r]`` and, when the
    spectral gap is known, ``lambda_1 - theta <= r^2 / (theta - lambda_2)``.

    Args:
        matvec: ``v -> K v`` on tensors of ``v0``'s shape (any float dtype in and out; used in
            float64), e.g. :meth:`ForwardNTK.operator`.
        v0: the start vector, e.g. the previous step's returned ``v`` kept in a non-trainable
            ``tf.Variable``; its shape is the operator's vector shape (``(n, c)`` for the NTK).
        steps: number of Lanczos steps (the dimension ``m`` of the Krylov space; one product
            with ``K`` each), >= 1. With 1 it is the Rayleigh quotient of ``v0`` (error
            ``<= tan(phi)^2 (lambda_1 - lambda_min)``) and ``v`` the power step
            ``K v0 / |K v0|`` (the Ritz vector would be ``v0`` itself, useless as the next
            warm start): across training steps, a power iteration tracking the top
            eigenvector at one product per step.
        quadratic_form: optional ``v -> v^T K v`` cheaper than a product (e.g.
            :meth:`NTKOperator.quadratic_form`, ``|J^T v|^2`` from the VJP alone): the last
            basis vector needs only its diagonal entry of ``H`` (the others are in the stored
            products), so the same Krylov space costs ``m - 1`` products and one quadratic
            form (for the NTK, 2 m - 1 instead of 2 m weight-sized matrix products).
        with_residual: also return ``|K v - lambda_max v|`` (not with ``quadratic_form``, which
            leaves ``K v_m`` unknown).

    Returns:
        ``(lambda_max, v)``: the largest Ritz value (float64 scalar) and its unit Ritz vector
        (float64, ``v0``'s shape, signed so that ``<v, v0> >= 0``); ``(lambda_max, v, r)``
        with ``with_residual``.
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`steps` must be an int >= 1; got {steps!r}.")
    if with_residual and quadratic_form is not None:
        raise ValueError("with_residual needs K v for every basis vector: it cannot be combined "
                         "with quadratic_form.")
    v0 = tf.cast(tf.convert_to_tensor(v0), tf.float64)
    norm = tf.norm(v0)
    usable = (norm > 0) & tf.reduce_all(tf.math.is_finite(v0))
    fallback = tf.random.stateless_normal(tf.shape(v0), seed=[20, 11], dtype=tf.float64)
    safe = tf.where(usable, norm, tf.constant(1.0, tf.float64))
    v = tf.where(usable, v0 / safe, fallback / tf.norm(fallback))
    basis, products = [], []
    last_diagonal = None
    for j in range(int(steps)):
        basis.append(v)
        if quadratic_form is not None and j + 1 == steps:
            last_diagonal = tf.cast(quadratic_form(v), tf.float64)
            break
        w = tf.cast(matvec(v), tf.float64)
        products.append(w)
        if j + 1 == steps:
            break
        # Full reorthogonalization: classical Gram-Schmidt twice ("twice is enough").
        r = w
        for _ in range(2):
            r = r - tf.add_n([_dot(q, r) * q for q in basis])
        beta = tf.norm(r)
        # Breakdown below round-off of |K v_j|: the space is invariant, go on with zeros.
        ok = beta > 1e-10 * tf.norm(w)
        v = tf.where(ok, r / tf.where(ok, beta, tf.ones_like(beta)), tf.zeros_like(r))
    m, p = len(basis), len(products)
    # H = V^T K V from the stored products (entry (i, j) = <v_i, K v_j>, j < p); without the
    # last product, its column is the transpose of its row and its diagonal the quadratic form.
    E = [[_dot(basis[i], products[j]) for j in range(p)] for i in range(m)]
    rows = [[E[i][j] if j < p else (E[j][i] if i < p else last_diagonal) for j in range(m)]
            for i in range(m)]
    H = tf.reshape(tf.stack([x for row in rows for x in row]), (m, m))
    H = 0.5 * (H + tf.transpose(H))
    evals, evecs = tf.linalg.eigh(H)
    s = evecs[:, -1]
    y = tf.add_n([s[i] * basis[i] for i in range(m)])
    y_norm = tf.norm(y)
    # Sign convention: follow the warm start, so a stored vector does not flip from step to step.
    one = tf.constant(1.0, tf.float64)
    sign = tf.where(_dot(y, basis[0]) < 0, -one, one) / tf.where(y_norm > 0, y_norm, one)
    y = y * sign
    lam = evals[-1]
    if m == 1 and p == 1:
        # One step: return the power step as the next warm start (K v0 is already known).
        Kv = products[0]
        Kv_norm = tf.norm(Kv)
        power = tf.where(Kv_norm > 0, Kv / tf.where(Kv_norm > 0, Kv_norm, one), y)
        if with_residual:
            return lam, power, tf.norm(Kv - lam * y)
        return lam, power
    if with_residual:
        Ky = tf.add_n([s[i] * products[i] for i in range(m)]) * sign
        return lam, y, tf.norm(Ky - lam * y)
    return lam, y
