"""Top eigenpairs of symmetric matrices and linear operators: dense ``eigh`` or Lanczos with full
reorthogonalization, float64 throughout."""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np
import scipy.sparse.linalg as spla

from kerntk._blas import single_threaded

__all__ = ["EigenResult", "top_eigenpairs"]

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


