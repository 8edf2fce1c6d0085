"""Top eigenpairs of kernels and loss Hessians, and the critical learning rate (thesis Ch. 3-4).

* :func:`top_eigenpairs` — dense ``eigh`` or Lanczos with full reorthogonalization on a matrix or
  any ``scipy.sparse.linalg.LinearOperator`` (e.g. ``kerntk.ntk.ntk_operator``); float64 throughout.
* :func:`hessian_top_eigenpairs` — exact loss Hessian ``H_L`` through Hessian-vector products
  (double backprop on ``model.stateless_call``), never forming ``H_L``.
* :func:`gauss_newton_top_eigenpairs` — ``J^T H_f J`` (``H_f`` the Hessian of the loss in the
  outputs) for any Keras loss, through one JVP, one output-space HVP and one VJP per product.
* :func:`critical_lr` — ``eta_crit = 2/lambda_max(H_L)`` (thesis Def. 3.2.2, Eq. 3.6), its NTK
  estimate for MSE (thesis App. C.1) and the heavy-ball momentum threshold.

Normalization of the NTK estimate (Keras ``MeanSquaredError`` averages over the batch AND the
outputs): for ``n`` samples with ``c`` outputs, ``L = (1/(n c)) sum_{i,o} (f_io - y_io)^2``, so the
Gauss-Newton part of the Hessian is ``(2/(n c)) J^T J`` with ``J`` the ``(n c) x P`` Jacobian. Its
nonzero eigenvalues are those of ``(2/(n c)) J J^T = (2/(n c)) K_full`` (``K_full`` the ``nc x nc``
NTK, ``outputs="full"``), hence

    eta_crit ~= 2 / lambda_max(H_GN) = n c / lambda_max(K_full),

which is the thesis's ``n / lambda_max(K)`` for scalar outputs. (The traced kernel ``sum_o K_oo`` is
not interchangeable: at infinite width ``K_full = K ⊗ I_c`` while the traced one is ``c K``.) For a
model linear in its weights ``H_L = H_GN`` exactly. For heavy-ball momentum ``beta`` (Keras ``SGD``
with ``momentum=beta``, ``nesterov=False``) GD on a quadratic is stable iff
``eta lambda_max < 2 (1 + beta)``, so every threshold is multiplied by ``1 + beta``.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np
import scipy.sparse.linalg as spla

from kerntk import _validation as checks
from kerntk._backend import require_tensorflow
from kerntk._blas import single_threaded

__all__ = ["EigenResult", "top_eigenpairs", "hessian_operator", "gauss_newton_operator",
           "hessian_top_eigenpairs",
           "gauss_newton_top_eigenpairs", "critical_lr", "ntk_critical_lr", "is_mse"]

_DENSE_MAX_N = 2000


class EigenResult(NamedTuple):
    """Top eigenpairs of a symmetric matrix or operator.

    Attributes:
        eigenvalues: ``(k,)`` float64, descending (by value, or by magnitude for ``which="LM"``).
        eigenvectors: ``(n, k)`` float64, orthonormal columns.
        residual_norms: ``(k,)`` float64, ``||A v_i - lambda_i v_i||``.
        iterations: Lanczos steps (= products with ``A``); ``0`` for the dense method.
        method: ``"dense"`` or ``"lanczos"``.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    iterations: int
    method: str


# --------------------------------------------------------------------------- eigensolvers

def _check_k(k, n):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be a positive integer; got {k!r}.")
    if k > n:
        raise ValueError(f"`k`={k} exceeds the matrix size n={n}.")
    return int(k)


def _as_matrix(a, sym_tol: float) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"Expected a non-empty square matrix; got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError("The matrix contains NaN or inf.")
    scale = np.abs(a).max()
    if np.abs(a - a.T).max() > sym_tol * scale:
        raise ValueError(f"The matrix is not symmetric (max |A - A^T| = "
                         f"{np.abs(a - a.T).max():.3g} > {sym_tol:g} max |A|).")
    return 0.5 * (a + a.T)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    key = np.abs(theta) if which == "LM" else theta
    return np.argsort(-key, kind="stable")[:k]


def _fix_signs(v: np.ndarray) -> np.ndarray:
    # Deterministic signs: the largest-magnitude entry of each eigenvector is positive.
    idx = np.argmax(np.abs(v), axis=0)
    s = np.sign(v[idx, np.arange(v.shape[1])])
    return v * np.where(s == 0, 1.0, s)


def _dense(a: np.ndarray, k: int, which: str) -> EigenResult:
    with single_threaded(a.shape[0]):
        theta, s = np.linalg.eigh(a)
        sel = _select(theta, k, which)
        lam, v = theta[sel], _fix_signs(s[:, sel])
        res = np.linalg.norm(a @ v - v * lam, axis=0)
    return EigenResult(lam, v, res, 0, "dense")


def _lanczos(matvec: Callable[[np.ndarray], np.ndarray], n: int, k: int, which: str, tol: float,
             maxiter: int, v0: Optional[np.ndarray], seed: int, verbose: int = 0) -> EigenResult:
    """Lanczos with full (twice-applied classical Gram-Schmidt) reorthogonalization.

    Keeps ``Q`` (the Krylov basis) and ``W = A Q``, so the Rayleigh-Ritz matrix ``H = Q^T A Q`` and
    the exact residuals ``A y - theta y = W s - theta Q s`` need no extra products. Stops when the
    ``k`` wanted Ritz pairs have residual ``<= tol * |theta|_max``. On an invariant subspace
    (breakdown) it continues with a fresh random direction, so low-rank matrices work too.
    """
    rng = np.random.default_rng(seed)
    m_max = min(n, maxiter)
    Q = np.empty((n, m_max))
    W = np.empty((n, m_max))
    H = np.zeros((m_max, m_max))
    q = rng.standard_normal(n) if v0 is None else np.asarray(v0, np.float64).reshape(n).copy()
    if not np.all(np.isfinite(q)) or np.linalg.norm(q) == 0:
        raise ValueError("`v0` must be finite and nonzero.")
    q /= np.linalg.norm(q)
    result = None
    bar = None
    if verbose:
        import keras
        # Products at most; the run stops earlier once the residuals reach tol.
        bar = keras.utils.Progbar(m_max, unit_name="product")
    for j in range(m_max):
        Q[:, j] = q
        w = np.asarray(matvec(q), dtype=np.float64).reshape(-1)
        if w.shape != (n,):
            raise ValueError(f"The operator returned shape {w.shape}; expected ({n},).")
        if not np.all(np.isfinite(w)):
            raise ValueError("The operator returned NaN or inf.")
        W[:, j] = w
        Qj = Q[:, :j + 1]
        h = Qj.T @ w
        H[:j + 1, j] = h
        H[j, :j + 1] = Qj[:, j] @ W[:, :j + 1]
        m = j + 1
        if m >= k:
            Hm = 0.5 * (H[:m, :m] + H[:m, :m].T)
            theta, s = np.linalg.eigh(Hm)
            sel = _select(theta, k, which)
            lam, sk = theta[sel], s[:, sel]
            y = Qj @ sk
            res = np.linalg.norm(W[:, :m] @ sk - y * lam, axis=0)
            scale = max(np.abs(theta).max(), np.finfo(float).tiny)
            result = (lam, y, res, m)
            if bar is not None:
                bar.update(m, values=[("rel_residual", float(res.max() / scale))],
                           finalize=bool(np.all(res <= tol * scale) or m == m_max))
            if np.all(res <= tol * scale) or m == m_max:
                break
        r = w - Qj @ h
        r -= Qj @ (Qj.T @ r)
        beta = np.linalg.norm(r)
        if beta <= 1e-10 * max(np.linalg.norm(w), 1e-300):
            # Invariant subspace found: restart in its orthogonal complement.
            r = rng.standard_normal(n)
            for _ in range(2):
                r -= Qj @ (Qj.T @ r)
            beta = np.linalg.norm(r)
            if beta == 0:
                break
        q = r / beta
    lam, y, res, m = result
    scale = max(np.abs(lam).max(), np.finfo(float).tiny)
    if np.any(res > tol * scale):
        warnings.warn(f"Lanczos did not reach tol={tol:g} in {m} iterations (max residual "
                      f"{res.max() / scale:.3g} relative); raise `maxiter` or `tol`.",
                      RuntimeWarning, stacklevel=3)
    return EigenResult(lam, _fix_signs(y), res, m, "lanczos")


def top_eigenpairs(K_or_operator, k: int = 1, method: str = "auto", *, which: str = "LA",
                   tol: float = 1e-10, maxiter: Optional[int] = None,
                   v0: Optional[np.ndarray] = None, seed: int = 0,
                   sym_tol: float = 1e-6, verbose: int = 0) -> EigenResult:
    """Top-``k`` eigenpairs of a symmetric matrix or linear operator, in float64.

    Args:
        K_or_operator: symmetric ``(n, n)`` array (numpy, tf tensor, ...) or a
            ``scipy.sparse.linalg.LinearOperator`` (anything with ``shape`` and ``matvec``),
            e.g. ``kerntk.ntk.ntk_operator(model, x)``.
        k: number of eigenpairs (``1 <= k <= n``).
        method: ``"dense"`` (``numpy.linalg.eigh``, O(n^3); operators are materialized with n
            products), ``"lanczos"`` (O(m) products plus O(n m^2) work for m iterations), or
            ``"auto"``: dense for matrices with ``n <= 2000``, Lanczos otherwise.
        which: ``"LA"`` largest algebraic (default; sharpness, NTK) or ``"LM"`` largest magnitude.
        tol: Lanczos stops when every wanted residual ``||A v - lambda v|| <= tol |lambda|_max``
            (eigenvalue errors are then about ``tol^2 |lambda|_max^2 / gap``).
        maxiter: Lanczos iterations at most (default ``min(n, max(20 k, 300))``); a
            ``RuntimeWarning`` is raised when not converged.
        v0: Lanczos start vector (default: standard normal with ``seed``).
        sym_tol: matrices with ``max |A - A^T| > sym_tol max |A|`` are rejected.
        verbose: ``1`` shows a Keras ``Progbar`` of the Lanczos products (with the largest
            relative residual); ``0`` (default) is silent.

    Returns:
        :class:`EigenResult`.

    Raises:
        ValueError: NaN/inf entries or operator outputs, a non-square or non-symmetric matrix,
            ``k`` outside ``[1, n]``, an unknown ``method``/``which``.
    """
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"`method` must be 'auto', 'dense' or 'lanczos'; got {method!r}.")
    if which not in ("LA", "LM"):
        raise ValueError(f"`which` must be 'LA' or 'LM'; got {which!r}.")
    if not (tol > 0):
        raise ValueError(f"`tol` must be > 0; got {tol!r}.")
    is_operator = isinstance(K_or_operator, spla.LinearOperator) or (
        hasattr(K_or_operator, "matvec") and hasattr(K_or_operator, "shape"))
    if is_operator:
        op = spla.aslinearoperator(K_or_operator)
        n, n2 = op.shape
        if n != n2 or n == 0:
            raise ValueError(f"The operator must be square and non-empty; got shape {op.shape}.")
        k = _check_k(k, n)
        if method == "dense":
            a = np.column_stack([np.asarray(op.matvec(e), np.float64).reshape(n)
                                 for e in np.eye(n)])
            return _dense(_as_matrix(a, sym_tol), k, which)
        matvec = op.matvec
    else:
        a = _as_matrix(K_or_operator, sym_tol)
        n = a.shape[0]
        k = _check_k(k, n)
        if method == "dense" or (method == "auto" and n <= _DENSE_MAX_N):
            return _dense(a, k, which)
        matvec = a.__matmul__
    if maxiter is None:
        maxiter = max(20 * k, 300)
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < k:
        raise ValueError(f"`maxiter` must be an integer >= k; got {maxiter!r}.")
    if verbose not in (0, 1, True, False):
        raise ValueError(f"`verbose` must be 0 or 1; got {verbose!r}.")
    return _lanczos(matvec, n, k, which, tol, int(maxiter), v0, seed, int(verbose))


# --------------------------------------------------------------------------- model operators

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


def _get_loss(loss):
    import keras
    import tensorflow as tf

    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if not callable(fn):
        raise ValueError(f"`loss` must be a Keras loss, a loss name or a callable; got {loss!r}.")

    def scalar(y_true, y_pred):
        # Per-sample values (e.g. keras.losses.mean_squared_error) are averaged over the batch,
        # as Keras' default "sum_over_batch_size" reduction does.
        return tf.reduce_mean(fn(y_true, y_pred))
    return scalar


def _flat_tools(tf, tv):
    shapes = [v.shape for v in tv]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflatten(vec):
        parts = tf.split(vec, sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, shapes)]

    def flatten(ts):
        return tf.concat([tf.reshape(t, [-1]) for t in ts], axis=0)
    return sum(sizes), unflatten, flatten


def _param_operator(product, P: int, dtype) -> spla.LinearOperator:
    def matvec(v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        return np.asarray(product(v.astype(dtype.as_numpy_dtype if hasattr(dtype, "as_numpy_dtype")
                                           else dtype)), dtype=np.float64)
    return spla.LinearOperator((P, P), matvec=matvec, dtype=np.float64)


def _default_tol(dtype) -> float:
    return 1e-9 if str(dtype).endswith("float64") else 1e-4


def hessian_operator(model, loss, x, y) -> spla.LinearOperator:
    """``v -> H_L v`` for ``L = loss(y, model(x))`` over the flattened trainable weights.

    Exact Hessian-vector product by double backprop through
    ``model.stateless_call(trainable_values, non_trainable_values, x, training=False)`` (plain
    tensors, so no ``tf.Variable`` is differentiated twice). Weights are flattened in the order of
    ``model.trainable_variables``. Data loss only (``model.losses`` regularizers are not included).
    Cost per product: about two forward-backward passes. Float32 models give float32 accuracy.
    """
    require_tensorflow("kerntk.spectral.hessian_operator")
    from kerntk.ntk.forward import stateless_call
    tf, tv, ntv, xt, yt, dtype = _prepare_model(model, x, y)
    loss_fn = _get_loss(loss)
    P, unflatten, flatten = _flat_tools(tf, tv)

    @tf.function(reduce_retracing=True)
    def hvp(vec):
        vs = unflatten(vec)
        with tf.GradientTape() as outer:
            outer.watch(tv)
            with tf.GradientTape() as inner:
                inner.watch(tv)
                out, _ = stateless_call(model, tv, ntv, xt, False)
                L = loss_fn(yt, out)
            g = inner.gradient(L, tv, unconnected_gradients="zero")
            gv = tf.add_n([tf.reduce_sum(gi * vi) for gi, vi in zip(g, vs)])
        return flatten(outer.gradient(gv, tv, unconnected_gradients="zero"))

    return _param_operator(lambda v: hvp(tf.constant(v)).numpy(), P, tf.as_dtype(dtype))


def gauss_newton_operator(model, loss, x, y) -> spla.LinearOperator:
    """``v -> J^T H_f J v``, the Gauss-Newton part of the loss Hessian, for any Keras loss.

    ``J`` is the Jacobian of the outputs ``f = model(x)`` (all samples and outputs) in the flattened
    trainable weights and ``H_f = d^2 L / df^2`` the Hessian of the loss in the outputs (for Keras
    MSE, ``2/(n c) I``). ``J v`` by the double-VJP trick (``J v = d/du <J^T u, v>``), ``H_f`` by an
    output-space HVP, ``J^T`` by one VJP. Cost per product: about three backward passes.
    """
    require_tensorflow("kerntk.spectral.gauss_newton_operator")
    from kerntk.ntk.forward import stateless_call
    tf, tv, ntv, xt, yt, dtype = _prepare_model(model, x, y)
    loss_fn = _get_loss(loss)
    P, unflatten, flatten = _flat_tools(tf, tv)

    @tf.function(reduce_retracing=True)
    def gnvp(vec):
        vs = unflatten(vec)
        with tf.GradientTape(persistent=True) as t_w:
            t_w.watch(tv)
            out, _ = stateless_call(model, tv, ntv, xt, False)
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
                L = loss_fn(yt, f)
            gl = t1.gradient(L, f)
            s = tf.reduce_sum(gl * jv)
        hjv = t2.gradient(s, f, unconnected_gradients="zero")
        res = t_w.gradient(out, tv, output_gradients=hjv, unconnected_gradients="zero")
        del t_w
        return flatten(res)

    return _param_operator(lambda v: gnvp(tf.constant(v)).numpy(), P, tf.as_dtype(dtype))


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


# --------------------------------------------------------------------------- critical LR

def is_mse(loss) -> bool:
    """Whether ``loss`` is Keras' mean squared error averaged over the batch (the loss whose
    critical learning rate :func:`ntk_critical_lr` gives)."""
    import keras

    if isinstance(loss, str):
        return loss.lower() in ("mse", "mean_squared_error", "meansquarederror")
    if isinstance(loss, keras.losses.MeanSquaredError):
        return loss.reduction in ("sum_over_batch_size", "mean", None)
    return loss is keras.losses.mean_squared_error


def ntk_critical_lr(lambda_max: float, rows: int, momentum: float = 0.0) -> float:
    """``eta_crit = (1 + beta) n c / lambda_max(K_full)`` for Keras MSE, from the top eigenvalue
    of the ``n c x n c`` NTK (``rows = n c``); ``inf`` when ``lambda_max <= 0``. See
    :func:`critical_lr`."""
    return math.inf if lambda_max <= 0 else (1.0 + momentum) * rows / lambda_max


def critical_lr(model=None, x=None, y=None, *, loss="mse", method: str = "ntk",
                momentum: float = 0.0, kernel=None, matrix_free: bool = False,
                tol: Optional[float] = None, maxiter: Optional[int] = None,
                seed: int = 0) -> float:
    """Critical learning rate ``eta_crit = 2 (1 + beta) / lambda_max(H_L)`` (thesis Eq. 3.6).

    Methods:
        * ``"ntk"`` (thesis App. C.1; Keras MSE only): ``eta_crit = (1 + beta) n c /
          lambda_max(K_full)`` with ``K_full`` the ``nc x nc`` empirical NTK of ``model`` on ``x``
          (``kerntk.ntk.empirical_ntk(..., outputs="full")``; with ``matrix_free=True``
          ``kerntk.ntk.ntk_operator`` and Lanczos). Or pass a precomputed ``kernel`` (its rows
          must be all ``n c`` sample-outputs; ``model``/``x`` are then not needed). Derivation in
          the module docstring. Per batch: ``x = X_batch`` gives ``eta_crit(X_batch) = b c /
          lambda_max(K_batch)``.
        * ``"hessian"``: exact ``lambda_max(H_L)`` by HVP Lanczos (:func:`hessian_top_eigenpairs`);
          any loss; needs ``y``.
        * ``"gauss_newton"``: ``lambda_max(J^T H_f J)`` (:func:`gauss_newton_top_eigenpairs`); any
          loss; needs ``y`` (for MSE it only enters through shapes).

    Args:
        momentum: heavy-ball ``beta`` in ``[0, 1)`` (Keras ``SGD(momentum=beta)``); the threshold
            of GD with momentum on a quadratic is ``2 (1 + beta) / lambda_max``.

    Returns:
        ``eta_crit`` as a float (``inf`` when ``lambda_max <= 0``).

    Cost: "ntk" one empirical NTK + ``eigh``; "hessian"/"gauss_newton" one Lanczos run.
    """
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"`momentum` must be in [0, 1); got {momentum!r}.")
    if method not in ("ntk", "hessian", "gauss_newton"):
        raise ValueError(f"`method` must be 'ntk', 'hessian' or 'gauss_newton'; got {method!r}.")
    if method == "ntk":
        if not is_mse(loss):
            raise ValueError("The NTK estimate n c / lambda_max(K) holds for Keras MSE (mean "
                             "reduction) only; use method='gauss_newton' or 'hessian'.")
        if kernel is not None:
            res = top_eigenpairs(kernel, 1, "auto", tol=tol or 1e-10, maxiter=maxiter, seed=seed)
            rows = res.eigenvectors.shape[0]
        else:
            if model is None or x is None:
                raise ValueError("method='ntk' needs `model` and `x`, or `kernel`.")
            require_tensorflow("kerntk.spectral.critical_lr of a model (not of a `kernel`)")
            from kerntk import ntk as _ntk

            from kerntk.ntk.forward import count_outputs
            _prepare_model(model, x)
            c = count_outputs(model, np.asarray(x))  # all outputs; subclassed models too
            outputs = "full" if c > 1 else "trace"
            if matrix_free:
                op = _ntk.ntk_operator(model, x, outputs=outputs)
                res = top_eigenpairs(op, 1, "lanczos", tol=tol or 1e-6, maxiter=maxiter,
                                     seed=seed)
            else:
                K = _ntk.empirical_ntk(model, x, outputs=outputs)
                res = top_eigenpairs(K, 1, "auto", tol=tol or 1e-10, maxiter=maxiter, seed=seed)
            rows = res.eigenvectors.shape[0]
            if rows != np.shape(x)[0] * c:
                raise ValueError(f"The kernel has {rows} rows; expected n c = "
                                 f"{np.shape(x)[0] * c}.")
        return ntk_critical_lr(float(res.eigenvalues[0]), rows, momentum)
    if model is None or x is None or y is None:
        raise ValueError(f"method={method!r} needs `model`, `x` and `y`.")
    require_tensorflow(f"kerntk.spectral.critical_lr(method={method!r})")
    fn = hessian_top_eigenpairs if method == "hessian" else gauss_newton_top_eigenpairs
    lam = float(fn(model, loss, x, y, 1, tol=tol, maxiter=maxiter, seed=seed).eigenvalues[0])
    return math.inf if lam <= 0 else 2.0 * (1.0 + momentum) / lam
