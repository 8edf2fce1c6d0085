"""Loss-curvature operators of a model: the exact Hessian ``H_L`` and its Gauss-Newton part
``J^T H_f J``, as matrix-free ``LinearOperator``s over the flattened trainable weights."""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse.linalg as spla

from kerntk import _validation as checks
from kerntk._backend import require_tensorflow
from kerntk.spectral.eigen import EigenResult, top_eigenpairs

__all__ = ["hessian_operator", "gauss_newton_operator", "hessian_top_eigenpairs",
           "gauss_newton_top_eigenpairs"]


def _prepare_model(model, x, y=None):
    import tensorflow as tf

    if isinstance(x, tf.Tensor):
        checks.inputs("x", np.asarray(x))
    else:
        x = checks.inputs("x", x)
    if y is not None and not np.all(np.isfinite(np.asarray(y, dtype=np.float64))):
        raise ValueError("`y` contains NaN or inf.")
    if not model.built:
        model(x[:1])
    if not model.trainable_variables:
        raise ValueError("The model has no trainable variables.")
    dtype = model.trainable_variables[0].dtype
    if dtype in ("float16", "bfloat16"):
        raise ValueError("Hessians need float32 or float64 variables.")
    tv = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    ntv = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    try:
        x_dtype = model.inputs[0].dtype
    except (AttributeError, IndexError, TypeError, ValueError):
        x_dtype = dtype
    xt = tf.convert_to_tensor(x, dtype=x_dtype)
    yt = None if y is None else tf.convert_to_tensor(y, dtype=dtype)
    return tf, tv, ntv, xt, yt, dtype


class _Setup:
    """What the parameter-space operators share: the model's weights as plain tensors, the
    batch, the mean loss, and the flattening of the weights (``model.trainable_variables``
    order)."""

    def __init__(self, model, loss, x, y):
        from kerntk.ntk.forward import stateless_call

        self.tf, self.tv, self.ntv, self.x, self.y, self.dtype = _prepare_model(model, x, y)
        self.loss_fn = _mean_loss(loss, curvature=False)
        self.shapes = [v.shape for v in self.tv]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.model, self.stateless_call = model, stateless_call

    def forward(self):
        """``model(x)`` in inference mode from the plain weight tensors."""
        out, _ = self.stateless_call(self.model, self.tv, self.ntv, self.x, False)
        return out

    def unflatten(self, vec):
        parts = self.tf.split(vec, self.sizes)
        return [self.tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

    def flatten(self, ts):
        return self.tf.concat([self.tf.reshape(t, [-1]) for t in ts], axis=0)

    def operator(self, product, inverse_preconditioner) -> spla.LinearOperator:
        """The scipy operator of the traced ``product`` (flat vector -> flat vector)."""
        tf = self.tf
        op = _param_operator(lambda v: product(tf.constant(v)).numpy(), sum(self.sizes),
                             tf.as_dtype(self.dtype))
        return _precondition(op, inverse_preconditioner)


def _param_operator(product, P: int, dtype) -> spla.LinearOperator:
    def matvec(v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return np.asarray(product(v.astype(dtype.as_numpy_dtype if hasattr(dtype, "as_numpy_dtype")
                                           else dtype)), dtype=np.float64)
    return spla.LinearOperator((P, P), matvec=matvec, dtype=np.float64)


def _precondition(op: spla.LinearOperator, inverse_preconditioner) -> spla.LinearOperator:
    """``v -> P^{-1/2} A P^{-1/2} v`` (symmetric, with the eigenvalues of ``P^{-1} A``) for a
    diagonal ``P^{-1}`` given per trainable variable; ``op`` itself for ``None``."""
    if inverse_preconditioner is None:
        return op
    s = np.concatenate([np.sqrt(np.asarray(p, np.float64)).reshape(-1)
                        for p in inverse_preconditioner])
    if s.shape[0] != op.shape[0]:
        raise ValueError(f"The preconditioner has {s.shape[0]} entries; the model {op.shape[0]} "
                         f"weights.")
    return spla.LinearOperator(op.shape, matvec=lambda v: s * op.matvec(s * np.ravel(v)),
                               dtype=np.float64)


def _default_tol(dtype) -> float:
    return 1e-9 if str(dtype).endswith("float64") else 1e-4


def hessian_operator(model, loss, x, y, *, inverse_preconditioner=None) -> spla.LinearOperator:
    """``v -> H_L v`` for ``L = loss(y, model(x))`` over the flattened trainable weights.

    Exact Hessian-vector product by double backprop through
    ``model.stateless_call(trainable_values, non_trainable_values, x, training=False)`` (plain
    tensors, so no ``tf.Variable`` is differentiated twice). Weights are flattened in the order of
    ``model.trainable_variables``. Data loss only (``model.losses`` regularizers are not included).
    Cost per product: about two forward-backward passes. Float32 models give float32 accuracy.
    ``inverse_preconditioner`` (one tensor per trainable variable, e.g. from
    :func:`kerntk.spectral.stability.inverse_preconditioner`) gives ``P^{-1/2} H_L P^{-1/2}``.
    """
    require_tensorflow("kerntk.spectral.hessian_operator")
    setup = _Setup(model, loss, x, y)
    tf, tv = setup.tf, setup.tv

    @tf.function(reduce_retracing=True)
    def hvp(vec):
        vs = setup.unflatten(vec)
        with tf.GradientTape() as outer:
            outer.watch(tv)
            with tf.GradientTape() as inner:
                inner.watch(tv)
                L = setup.loss_fn(setup.y, setup.forward())
            g = inner.gradient(L, tv, unconnected_gradients="zero")
            gv = tf.add_n([tf.reduce_sum(gi * vi) for gi, vi in zip(g, vs)])
        return setup.flatten(outer.gradient(gv, tv, unconnected_gradients="zero"))

    return setup.operator(hvp, inverse_preconditioner)


def gauss_newton_operator(model, loss, x, y, *,
                          inverse_preconditioner=None) -> spla.LinearOperator:
    """``v -> J^T H_f J v``, the Gauss-Newton part of the loss Hessian, for any Keras loss.

    ``J`` is the Jacobian of the outputs ``f = model(x)`` (all samples and outputs) in the flattened
    trainable weights and ``H_f = d^2 L / df^2`` the Hessian of the loss in the outputs (for Keras
    MSE, ``2/(n c) I``). ``J v`` by the double-VJP trick (``J v = d/du <J^T u, v>``), ``H_f`` by an
    output-space HVP, ``J^T`` by one VJP. Cost per product: about three backward passes.
    ``inverse_preconditioner`` as in :func:`hessian_operator`.
    """
    require_tensorflow("kerntk.spectral.gauss_newton_operator")
    setup = _Setup(model, loss, x, y)
    tf, tv = setup.tf, setup.tv

    @tf.function(reduce_retracing=True)
    def gnvp(vec):
        vs = setup.unflatten(vec)
        with tf.GradientTape(persistent=True) as t_w:
            t_w.watch(tv)
            out = setup.forward()
        u = tf.zeros_like(out)
        with tf.GradientTape() as t_u:
            t_u.watch(u)
            g = t_w.gradient(out, tv, output_gradients=u, unconnected_gradients="zero")
            gv = tf.add_n([tf.reduce_sum(gi * vi) for gi, vi in zip(g, vs)])
        jv = t_u.gradient(gv, u, unconnected_gradients="zero")
        f = tf.stop_gradient(out)
        with tf.GradientTape() as t2:
            t2.watch(f)
            with tf.GradientTape() as t1:
                t1.watch(f)
                L = setup.loss_fn(setup.y, f)
            gl = t1.gradient(L, f)
            quad = tf.reduce_sum(gl * jv)
        hjv = t2.gradient(quad, f, unconnected_gradients="zero")
        res = t_w.gradient(out, tv, output_gradients=hjv, unconnected_gradients="zero")
        del t_w
        return setup.flatten(res)

    return setup.operator(gnvp, inverse_preconditioner)


def hessian_top_eigenpairs(model, loss, x, y, k: int = 1, *, which: str = "LA",
                           tol: Optional[float] = None, maxiter: Optional[int] = None,
                           seed: int = 0) -> EigenResult:
    """Top-``k`` eigenpairs of the exact loss Hessian ``H_L`` (thesis Def. 3.2.1-3.2.2).

    Lanczos on :func:`hessian_operator`; ``H_L`` is never formed. Eigenvectors live in the
    flattened trainable weights (order of ``model.trainable_variables``). ``which="LA"`` gives the
    sharpness ``lambda_max(H_L)`` (the Hessian can be indefinite). ``tol`` defaults to 1e-9 for
    float64 models and 1e-4 for float32 (the HVP is only as symmetric as its arithmetic).

    Args:
        model: a Keras model (built on ``x`` if needed); called with ``training=False``.
        loss: Keras loss object, loss name (``"mse"``) or callable ``(y_true, y_pred)``; values
            that are not scalar are averaged.
        x, y: inputs ``(n, ...)`` and targets.
        k, which, tol, maxiter, seed: as :func:`top_eigenpairs`.

    Cost: ``m`` Hessian-vector products (each ~2 forward-backward passes) for ``m`` Lanczos steps.
    """
    require_tensorflow("kerntk.spectral.hessian_top_eigenpairs")
    op = hessian_operator(model, loss, x, y)
    tol = _default_tol(model.trainable_variables[0].dtype) if tol is None else tol
    return top_eigenpairs(op, k, "lanczos", which=which, tol=tol, maxiter=maxiter, seed=seed)


def gauss_newton_top_eigenpairs(model, loss, x, y, k: int = 1, *, tol: Optional[float] = None,
                                maxiter: Optional[int] = None, seed: int = 0) -> EigenResult:
    """Top-``k`` eigenpairs of the Gauss-Newton matrix ``J^T H_f J`` (see
    :func:`gauss_newton_operator`); for Keras MSE it equals ``(2/(n c)) J^T J``, whose nonzero
    eigenvalues are ``2 lambda(K_full)/(n c)``. Arguments as :func:`hessian_top_eigenpairs`."""
    require_tensorflow("kerntk.spectral.gauss_newton_top_eigenpairs")
    op = gauss_newton_operator(model, loss, x, y)
    tol = _default_tol(model.trainable_variables[0].dtype) if tol is None else tol
    return top_eigenpairs(op, k, "lanczos", tol=tol, maxiter=maxiter, seed=seed)



# --------------------------------------------------------------------------- output-space curvature

def _mean_loss(loss, curvature: bool = True):
    """``(y, pred) -> scalar`` for one Keras loss (object, name or function), averaged over
    the batch as Keras' default ``"sum_over_batch_size"`` does, computed in ``pred``'s dtype.
    ``curvature``: refuse the mean absolute error (for a critical learning rate)."""
    import keras
    import tensorflow as tf

    from kerntk._keras_compat import loss_function

    obj = keras.losses.get(loss) if isinstance(loss, str) else loss
    if not callable(obj):
        raise ValueError(f"`loss` must be a Keras loss, a loss name or a callable; got {loss!r}.")
    if curvature and (isinstance(obj, keras.losses.MeanAbsoluteError)
                      or obj is keras.losses.mean_absolute_error
                      or (isinstance(loss, str) and loss.lower() in ("mae", "mean_absolute_error"))):
        raise ValueError("The mean absolute error has no curvature (its Hessian is zero almost "
                         "everywhere): no critical learning rate exists for it.")
    reduction = getattr(obj, "reduction", "sum_over_batch_size")
    if reduction not in ("sum_over_batch_size", "mean", None):
        raise ValueError(f"Only the mean reduction ('sum_over_batch_size') is supported; the "
                         f"loss has reduction={reduction!r}.")
    fn, kwargs = loss_function(obj)

    def mean(y, pred):
        if y.dtype.is_floating:
            y = tf.cast(y, pred.dtype)
        return tf.reduce_mean(tf.cast(fn(y, pred, **kwargs), pred.dtype))

    return mean


def output_loss(model, loss=None, shapes=None):
    """``loss_of(y, f) -> scalar`` for ``f`` the model's outputs flattened to ``(n, c)`` (the
    layout of :func:`kerntk.ntk.forward.flatten_outputs`), in ``f``'s dtype.

    ``loss=None`` takes the model's compiled loss: one loss per output with its loss weight,
    as Keras' ``train_step`` computes it (regularization terms do not depend on the outputs
    and are left out). Otherwise ``loss`` (a Keras loss, name or callable) of the single output.
    ``y`` is a tensor for one output, or a list/tuple (output order) or dict (output names)
    for several. Sample weights are not applied. ``shapes``: the outputs' per-example shapes
    (:func:`kerntk.ntk.forward.output_shapes`); default one output of ``f``'s width.
    """
    import tensorflow as tf

    from kerntk._keras_compat import compiled_loss_terms

    if loss is None:
        if getattr(model, "loss", None) is None:
            raise ValueError("The model was compiled without a loss; pass `loss=`.")
        terms = None  # Keras builds its per-output losses at the first step: look them up late
    else:
        terms = [((), _mean_loss(loss), None)]
    names = list(getattr(model, "output_names", None) or [])

    def compiled_terms(y, preds):
        found = compiled_loss_terms(model, y, preds if len(preds) > 1 else preds[0])
        if found is None:
            raise ValueError("The model was compiled without a loss; pass `loss=`.")
        return [(path, _mean_loss(fn), weight) for path, fn, weight in found]

    def loss_of(y, f):
        out_shapes = shapes or [(int(f.shape[1]),)]
        sizes = [int(np.prod(s)) for s in out_shapes]
        preds = [tf.reshape(p, (-1,) + tuple(s))
                 for p, s in zip(tf.split(f, sizes, axis=1), out_shapes)]
        used = terms if terms is not None else compiled_terms(y, preds)
        if len(out_shapes) != len(used):
            raise ValueError(f"The model has {len(out_shapes)} outputs but {len(used)} "
                             f"losses.")
        if isinstance(y, dict):
            ys = [y[name] for name in names]
        elif isinstance(y, (list, tuple)):
            ys = list(y)
        else:
            ys = [y]
        if len(ys) != len(preds):
            raise ValueError(f"{len(ys)} targets for {len(preds)} outputs.")
        total = 0.0
        for (_, fn, weight), yt, p in zip(used, ys, preds):
            value = fn(yt, p)
            total += value if weight is None else float(weight) * value
        return total

    return loss_of


def loss_hessian_blocks(loss_of, y, f):
    """``(n, c, c)``: the Hessian of ``loss_of(y, f)`` in the outputs of each example (the loss
    is an average of per-example terms, so its Hessian in ``f`` is block diagonal; the ``1/n``
    is included). Traceable; ``f`` float64 for float64 accuracy."""
    import tensorflow as tf

    with tf.GradientTape() as outer:
        outer.watch(f)
        with tf.GradientTape() as inner:
            inner.watch(f)
            value = loss_of(y, f)
        g = inner.gradient(value, f, unconnected_gradients="zero")
    return outer.batch_jacobian(g, f, experimental_use_pfor=True)


def gauss_newton_sharpness(K, H):
    """``lambda_max(J^T H J)`` from ``K = J J^T`` (``(n c, n c)``, index ``i c + o``) and the
    per-example output Hessians ``H`` (``(n, c, c)``), without the ``P x P`` matrix: with
    ``H = L L^T`` (convex losses) the nonzero eigenvalues of ``J^T H J`` are those of the
    symmetric ``L^T K L``; an indefinite ``H`` goes through ``K^{1/2} H K^{1/2}``. ``0`` when every
    eigenvalue is negative (the parameter space has more directions than ``n c``), NaN when
    ``K`` or ``H`` is not finite. Traceable, float64."""
    import tensorflow as tf

    K = tf.cast(K, tf.float64)
    H = tf.cast(H, tf.float64)
    finite = tf.reduce_all(tf.math.is_finite(K)) & tf.reduce_all(tf.math.is_finite(H))
    # A non-finite batch (a NaN input row) or a diverged state: NaN, not an eigensolver error
    # inside the training step. The eigensolvers below then see zeros.
    K = tf.where(finite, K, tf.zeros_like(K))
    H = tf.where(finite, H, tf.zeros_like(H))
    H = 0.5 * (H + tf.linalg.matrix_transpose(H))
    s, U = tf.linalg.eigh(H)                                   # (n, c), (n, c, c)
    L = U * tf.sqrt(tf.maximum(s, 0.0))[:, None, :]           # H_i = L_i L_i^T if H_i >= 0
    n, c = tf.shape(H)[0], tf.shape(H)[1]
    K4 = tf.reshape(K, tf.stack([n, c, n, c]))
    M = tf.einsum("ipa,ipjq,jqb->iajb", L, K4, L)
    M = tf.reshape(M, tf.stack([n * c, n * c]))
    M = 0.5 * (M + tf.transpose(M))
    definite = tf.reduce_all(s >= -1e-10 * tf.reduce_max(tf.abs(s)))  # round-off of a zero

    def symmetric():
        return tf.linalg.eigvalsh(M)[-1]

    def indefinite():
        # The nonzero eigenvalues of J^T H J are those of K^{1/2} H K^{1/2} (symmetric: eigh,
        # which XLA compiles, unlike a general eigensolver).
        lam, V = tf.linalg.eigh(0.5 * (K + tf.transpose(K)))
        root = tf.matmul(V * tf.sqrt(tf.maximum(lam, 0.0))[None, :], V, transpose_b=True)
        blocks = tf.einsum("iab,ij->iajb", H, tf.eye(n, dtype=tf.float64))
        Hfull = tf.reshape(blocks, tf.stack([n * c, n * c]))
        A = tf.matmul(root, tf.matmul(Hfull, root))
        return tf.linalg.eigvalsh(0.5 * (A + tf.transpose(A)))[-1]

    top = tf.maximum(tf.cond(definite, symmetric, indefinite), tf.constant(0.0, tf.float64))
    return tf.where(finite, top, tf.constant(float("nan"), tf.float64))
