"""Infinite-width NNGP and NTK of kerntk's ReLU FCNs and PNNs, and NTK-regime kernel regression.

The kernels are those of the exact parameterization kerntk ships (``kerntk.layers.NTKDense`` and
``kerntk.layers.PolyDense(form="pnn")``, NTK parameterization, ``W, b ~ N(0, 1)``), so
``empirical_ntk(model, x)`` of a wide ``kerntk.models.fcn`` / ``kerntk.models.pnn`` at init tends
to :func:`fcn_kernels` / :func:`pnn_kernels` as width -> infinity.

Recursion (the standard NTK calculation, e.g. thesis App. C.6 parameterization; neural-tangents'
``stax``). Let ``S(x, x')`` be the covariance of one feature of the previous layer's output
(``S0 = <x, x'>/d`` for the flattened input) and ``T(x, x')`` its NTK w.r.t. all earlier weights
(``T0 = 0``). A linear map ``z = W_std a W/sqrt(fan_in) + b_std b`` gives

    Sigma_z = W_std^2 S + b_std^2 [bias],        Theta_z = Sigma_z + W_std^2 T.

With ``(u, v) ~ N(0, [[Sigma_z(x,x), Sigma_z], [Sigma_z, Sigma_z(x',x')]])``, ``cos(theta) =
Sigma_z/sqrt(Sigma_z(x,x) Sigma_z(x',x'))`` and the arc-cosine kernels (Cho & Saul 2009)

    k1 = E[relu(u) relu(v)]   = sqrt(Sigma_z(x,x) Sigma_z(x',x'))
                                (sin theta + (pi - theta) cos theta) / (2 pi),
    k0 = E[relu'(u) relu'(v)] = (pi - theta) / (2 pi),

* a ReLU ``NTKDense`` hidden layer gives ``S' = k1``, ``T' = k0 Theta_z``;
* a ``PolyDense(form="pnn")`` block of degree ``N`` (``y = prod_n s relu(z_n)``, ``N`` independent
  branches with the same ``Sigma_z``, ``s^2 = 2/(W_std^2 + b_std^2 [bias])``) gives

      S' = (s^2 k1)^N,      T' = N s^2 k0 (s^2 k1)^(N-1) Theta_z

  (product rule: the gradient through branch ``n`` carries the other ``N - 1`` factors, whose
  expectations factorize because branches are independent);
* the linear ``NTKDense`` head gives ``NNGP = Sigma_z``, ``NTK = Theta_z`` (per output; different
  outputs are independent, so the ``outputs="full"`` kernel is ``NTK ⊗ I_c`` and the traced one
  ``c NTK``).

For one PNN block on the unit sphere with ``W_std = 1`` and no biases except the head's this is
``NTK = 2^N k1^N + 2^N N <x,x'>/d k0 k1^(N-1) + b_std^2`` with ``k1, k0`` taken at
``Sigma_z = <x, x'>/d`` — paper 000 Theorem 1's form ``2N <x,x'> kappa_1 kappa_2^(N-1) +
2 kappa_2^N``, with our own constants (the extraction's ``sqrt(2/m)`` placement is garbled).
Verified against the empirical NTK at width 4096 in ``tests/test_analytic.py``.

Precision: ``theta = arccos(cos theta)`` loses half the digits near ``theta = 0`` and ``pi``
(``cos`` rounds to ``1 -+ eps`` and ``arccos`` has infinite slope there: ``k0`` on the diagonal
came out ~1e-8 off). So the recursion carries, next to the covariances, ``1 - rho`` and ``1 + rho``
of each layer's feature correlation ``rho = S(x, x')/sqrt(S(x, x) S(x', x'))``, each as a sum of
non-negative terms:

* inputs: ``1 -+ cos = |x/|x| -+ x'/|x'||^2 / 2``, from the Gram matrix, recomputed from the
  difference vectors for pairs within ~2.6 degrees of 0 or pi (cost ``O(d)`` per such pair);
* a linear map with bias: ``1 - cos_z = (W_std^2 b_std^2 (sqrt S(x,x) - sqrt S(x',x'))^2 /
  (ab + W_std^2 p + b_std^2) + W_std^2 p (1 - rho)) / ab`` with ``p = sqrt(S(x,x) S(x',x'))``,
  ``ab = sqrt(Sigma_z(x,x) Sigma_z(x',x'))`` (and likewise ``1 + cos_z``);
* then ``theta = 2 atan2(sqrt(1 - cos), sqrt(1 + cos))`` and, for the next layer,
  ``1 - J = ((pi - theta)(1 - cos) + (theta - sin theta)) / pi`` (and ``k1 = ab J / 2``) with
  ``J = (sin theta + (pi - theta) cos theta) / pi = k1 / sqrt(E relu(u)^2 E relu(v)^2)``
  (``theta - sin theta`` by its series for ``theta < 1``); after a PNN block ``1 - J^N``.

The diagonal (``x2=None``) is exact: ``theta = 0``, ``k0 = 1/2``, ``k1 = Sigma_z(x, x)/2``. Entries
agree with a 50-digit evaluation of the formulas above to a few float64 ulps of
``sqrt(K(x, x) K(x', x'))`` per layer, including ``theta = 0``, ``pi`` and ``1e-6``
(``tests/test_analytic.py``).

Cost: O(depth n1 n2) time and memory for ``n1 x n2`` kernels, plus O(d) per input pair within
~2.6 degrees of each other or of the antipode.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import numpy as np

from kerntk import _validation as checks
from kerntk._validation import is_integer, is_real

__all__ = ["AnalyticKernels", "fcn_kernels", "pnn_kernels", "model_kernels", "kernel_regression"]


class AnalyticKernels(NamedTuple):
    """Infinite-width kernels between two input sets: ``nngp`` and ``ntk``, each ``(n1, n2)``."""

    nngp: np.ndarray
    ntk: np.ndarray


# Input pairs with 1 -+ cos below this get 1 -+ cos from the difference vectors: from the Gram
# matrix its relative error is ~eps / (1 -+ cos), i.e. an error ~eps / theta in the angle.
_REFINE = 1e-3


class _State:
    """One layer's per-feature covariance ``s12`` (n1 x n2), its diagonals ``s11``/``s22``, NTK
    ``t12``, and ``1 - rho`` (``om``) and ``1 + rho`` (``op``) of the features' correlation
    ``rho = s12 / sqrt(s11 s22)``, kept accurate near ``rho = 1`` and ``-1`` (module docstring)."""

    def __init__(self, x1: np.ndarray, x2: np.ndarray):
        d = x1.shape[1]
        same = x1 is x2 or (x1.shape == x2.shape and np.array_equal(x1, x2))
        self.s12 = x1 @ x2.T / d
        self.s11 = np.einsum("ij,ij->i", x1, x1) / d
        self.s22 = self.s11 if same else np.einsum("ij,ij->i", x2, x2) / d
        if same:
            np.fill_diagonal(self.s12, self.s11)
        self.t12 = np.zeros_like(self.s12)
        u1, u2 = _unit_rows(x1), _unit_rows(x2)
        cos = np.clip(u1 @ u2.T, -1.0, 1.0)
        self.om, self.op = 1.0 - cos, 1.0 + cos
        for sign, target in ((-1.0, self.om), (1.0, self.op)):
            i, j = np.nonzero(target < _REFINE)
            step = max(1, (1 << 20) // d)
            for k in range(0, len(i), step):
                a, b = i[k:k + step], j[k:k + step]
                diff = u1[a] + sign * u2[b]
                target[a, b] = np.einsum("ij,ij->i", diff, diff) / 2.0
        if same:
            np.fill_diagonal(self.om, 0.0)

    def linear(self, W_std: float, b_std: float, use_bias: bool) -> Tuple[np.ndarray, ...]:
        """``Sigma_z`` (off-diagonal and diagonals), ``Theta_z`` and ``1 -+ cos`` of the angle of
        ``z = W_std a W/sqrt(fan_in) + b_std b``."""
        b2 = b_std ** 2 if use_bias else 0.0
        w2 = W_std ** 2
        sig12 = w2 * self.s12 + b2
        sig11 = w2 * self.s11 + b2
        sig22 = w2 * self.s22 + b2
        theta12 = sig12 + w2 * self.t12
        if b2 == 0.0:
            return sig12, sig11, sig22, theta12, self.om, self.op
        r1, r2 = np.sqrt(self.s11), np.sqrt(self.s22)
        wp = w2 * np.outer(r1, r2)
        ab = np.sqrt(np.outer(sig11, sig22))                 # >= b2 > 0
        # ab^2 - (w2 p +- b2)^2 = w2 b2 (sqrt S11 -+ sqrt S22)^2: the norms' share of 1 -+ cos_z.
        om = (w2 * b2 * np.subtract.outer(r1, r2) ** 2 / (ab + wp + b2) + wp * self.om) / ab
        with np.errstate(divide="ignore", invalid="ignore"):
            op = (w2 * b2 * np.add.outer(r1, r2) ** 2 / (ab + wp - b2) + wp * self.op) / ab
        negative = om > 1.0       # cos_z < 0: there the second form is the accurate one
        om, op = np.where(negative, 2.0 - op, om), np.where(negative, op, 2.0 - om)
        return sig12, sig11, sig22, theta12, om, op


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.where(norm > 0, norm, 1.0)[:, None]


def _theta_minus_sin(theta: np.ndarray) -> np.ndarray:
    """``theta - sin(theta)`` without cancellation: its Taylor series below 1 (terms to
    ``theta^21/21!``, below 1e-19 relative), the difference above."""
    t2 = theta * theta
    series = np.zeros_like(theta)
    for k in range(9, -1, -1):
        series = 1.0 / math.factorial(2 * k + 3) - t2 * series
    return np.where(theta < 1.0, theta * t2 * series, theta - np.sin(theta))


def _arccos(sig11, sig22, om, op):
    """Arc-cosine kernels ``k1 = E[relu relu]``, ``k0 = E[relu' relu']``, the diagonals of k1
    and ``1 - J`` with ``J = k1 / sqrt(E relu(u)^2 E relu(v)^2)`` (module docstring).

    Zero-variance inputs (e.g. ``x = 0`` without biases) have ``relu(0) = relu'(0) = 0`` as in
    TensorFlow, so both kernels vanish there.
    """
    norm = np.sqrt(np.outer(sig11, sig22))
    om, op = np.clip(om, 0.0, 2.0), np.clip(op, 0.0, 2.0)     # rounding may step past 0 or 2
    theta = 2.0 * np.arctan2(np.sqrt(om), np.sqrt(op))
    one_minus_j = np.clip(((math.pi - theta) * om + _theta_minus_sin(theta)) / math.pi, 0.0, 1.0)
    k1 = norm * (1.0 - one_minus_j) / 2.0
    live = norm > 0
    k0 = np.where(live, (math.pi - theta) / (2 * math.pi), 0.0)
    # E[relu(u)^2] = Var(u)/2.
    return k1, k0, sig11 / 2.0, sig22 / 2.0, np.where(live, one_minus_j, 1.0)


def _prepare(x1, x2) -> Tuple[np.ndarray, np.ndarray]:
    # The one rule for inputs (kerntk._validation.inputs): one array, batch and feature axes,
    # at least one example, finite.
    x1 = checks.inputs("x1", x1, feature_axis=True).astype(np.float64)
    x2 = x1 if x2 is None else checks.inputs("x2", x2, feature_axis=True).astype(np.float64)
    x1 = x1.reshape(x1.shape[0], -1)
    x2 = x2.reshape(x2.shape[0], -1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"`x1` and `x2` have different feature sizes {x1.shape[1]} and "
                         f"{x2.shape[1]}.")
    return x1, x2


def _check_scales(W_std, b_std):
    if not (is_real(W_std) and W_std > 0):
        raise ValueError(f"`W_std` must be finite and > 0; got {W_std!r}.")
    if not (is_real(b_std) and b_std >= 0):
        raise ValueError(f"`b_std` must be finite and >= 0; got {b_std!r}.")
    return float(W_std), float(b_std)


def _relu_dense(st: _State, W_std, b_std, use_bias):
    _, sig11, sig22, theta12, om, op = st.linear(W_std, b_std, use_bias)
    k1, k0, d11, d22, one_minus_j = _arccos(sig11, sig22, om, op)
    st.s12, st.s11, st.s22, st.t12 = k1, d11, d22, k0 * theta12
    st.om, st.op = one_minus_j, 2.0 - one_minus_j        # rho' = J >= 0


def _pnn_block(st: _State, degree, W_std, b_std, use_bias, branch_scale):
    _, sig11, sig22, theta12, om, op = st.linear(W_std, b_std, use_bias)
    k1, k0, d11, d22, one_minus_j = _arccos(sig11, sig22, om, op)
    s2 = branch_scale ** 2
    st.s12 = (s2 * k1) ** degree
    st.s11 = (s2 * d11) ** degree
    st.s22 = (s2 * d22) ** degree
    st.t12 = degree * s2 * k0 * (s2 * k1) ** (degree - 1) * theta12
    with np.errstate(divide="ignore"):                   # log1p(-1) = -inf: J = 0, rho' = 0
        st.om = -np.expm1(degree * np.log1p(-one_minus_j))   # 1 - J^N
    st.op = 2.0 - st.om


def _head(st: _State, W_std, b_std, use_bias) -> AnalyticKernels:
    sig12, _, _, theta12, _, _ = st.linear(W_std, b_std, use_bias)
    return AnalyticKernels(nngp=sig12, ntk=theta12)


def fcn_kernels(x1, x2=None, *, depth: int, W_std: float = 1.0, b_std: float = 1.0,
                use_bias: bool = True) -> AnalyticKernels:
    """Infinite-width NNGP and NTK of ``kerntk.models.fcn(depth, width, W_std, b_std, use_bias)``.

    ``depth - 1`` ReLU ``NTKDense`` layers then a linear head, all NTK-parameterized (module
    docstring for the recursion). Per output: for ``out_dim = c`` the ``outputs="full"`` kernel is
    ``ntk ⊗ I_c``.

    Args:
        x1: ``(n1, ...)`` inputs, flattened to ``d`` features.
        x2: ``(n2, ...)`` inputs; ``None`` means ``x1``.
        depth: number of NTKDense layers (>= 1; 1 is the linear model).
        W_std, b_std, use_bias: as in :func:`kerntk.models.fcn`.

    Returns:
        :class:`AnalyticKernels` of two ``(n1, n2)`` float64 arrays.
    """
    if not is_integer(depth) or depth < 1:
        raise ValueError(f"`depth` must be a positive integer; got {depth!r}.")
    W_std, b_std = _check_scales(W_std, b_std)
    st = _State(*_prepare(x1, x2))
    for _ in range(depth - 1):
        _relu_dense(st, W_std, b_std, use_bias)
    return _head(st, W_std, b_std, use_bias)


def pnn_kernels(x1, x2=None, *, degree: int, W_std: float = 1.0, b_std: float = 1.0,
                use_bias: bool = False, head_bias: bool = True, blocks: int = 1) -> AnalyticKernels:
    """Infinite-width NNGP and NTK of ``kerntk.models.pnn(degree, width, form="pnn", ...)``.

    ``blocks`` ``PolyDense(form="pnn")`` blocks (ReLU branches, no skip) then a linear
    ``NTKDense`` head. With ``v = W_std^2 (+ b_std^2 if use_bias)`` and ``s^2 = 2/v`` (the branch
    scale of :mod:`kerntk.layers.polynomial`), one block maps ``(S, T)`` to
    ``((s^2 k1)^N, N s^2 k0 (s^2 k1)^(N-1) Theta_z)`` (paper 000 Theorem 1, our constants; module
    docstring).

    Args:
        x1, x2: inputs as in :func:`fcn_kernels`.
        degree: ``N >= 1``.
        W_std, b_std: scales of every layer; ``use_bias``: branch biases; ``head_bias``: bias of
            the head (adds ``b_std^2`` to both kernels).
        blocks: number of PolyDense blocks.
    """
    for name, v in (("degree", degree), ("blocks", blocks)):
        if not is_integer(v) or v < 1:
            raise ValueError(f"`{name}` must be a positive integer; got {v!r}.")
    degree, blocks = int(degree), int(blocks)
    W_std, b_std = _check_scales(W_std, b_std)
    variance = W_std ** 2 + (b_std ** 2 if use_bias else 0.0)
    scale = math.sqrt(2.0 / variance)
    st = _State(*_prepare(x1, x2))
    for _ in range(blocks):
        _pnn_block(st, degree, W_std, b_std, use_bias, scale)
    return _head(st, W_std, b_std, head_bias)


def model_kernels(model, x1, x2=None) -> AnalyticKernels:
    """Infinite-width kernels of a Keras model built from the layers this module knows.

    Walks ``model.layers``: ``Flatten``/``InputLayer`` are skipped; ``NTKDense`` with ReLU (hidden)
    or no activation (must be last); ``PolyDense`` with ``form="pnn"`` (ReLU, no skip). All layers
    must use ``parameterization="ntk"`` (the standard parameterization has no width limit of the
    NTK without rescaling). Width does not enter the limit. ``out_dim`` outputs share the kernel.

    Raises:
        ValueError: for any other layer, or a model not ending in a linear NTKDense.
    """
    import keras

    from kerntk.layers import NTKDense, PolyDense

    st = _State(*_prepare(x1, x2))
    layers = [l for l in model.layers
              if not isinstance(l, (keras.layers.Flatten, keras.layers.InputLayer))]
    if not layers:
        raise ValueError("The model has no layers with weights.")
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        if not isinstance(layer, NTKDense) or layer.parameterization != "ntk":
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no analytic "
                             f"kernel here; supported: NTK-parameterized NTKDense (ReLU hidden, "
                             f"linear head) and PolyDense(form='pnn').")
        if isinstance(layer, PolyDense):
            if layer.skip or layer.activation is not keras.activations.relu or last:
                raise ValueError(f"PolyDense {layer.name!r}: only form='pnn' (ReLU, no skip) "
                                 f"blocks followed by a head are supported.")
            _pnn_block(st, layer.degree, layer.W_std, layer.b_std, layer.use_bias,
                       layer.branch_scale)
        elif last:
            if layer.activation is not keras.activations.linear:
                raise ValueError(f"The last layer {layer.name!r} must be linear.")
            return _head(st, layer.W_std, layer.b_std, layer.use_bias)
        elif layer.activation is keras.activations.relu:
            _relu_dense(st, layer.W_std, layer.b_std, layer.use_bias)
        else:
            raise ValueError(f"Hidden NTKDense {layer.name!r} must use ReLU.")
    raise AssertionError("unreachable")


def kernel_regression(K_train, K_test, y_train, t: Optional[float] = None,
                      lr: Optional[float] = None, f0_train=None, f0_test=None, *,
                      rcond: float = 1e-12) -> np.ndarray:
    """NTK-regime predictor on test points after GD / gradient flow on Keras MSE (paper 000 Thm 3).

    Loss: Keras ``MeanSquaredError``, ``L = (1/M) sum (f - y)^2`` with ``M = n c`` the number of
    scalar targets in ``y_train`` (mean over batch AND outputs). In the linearized (kernel) regime
    full-batch GD with learning rate ``lr`` updates the train outputs by
    ``f <- f - (2 lr / M) K (f - y)``, so with ``A = (2/M) K_train``:

    * ``lr`` given, ``t`` = number of GD steps (integer):
      ``f_t(X*) = f0(X*) + K* K^+ (I - (I - lr A)^t)(y - f0(X))``;
    * ``lr=None``: gradient flow for time ``t`` (= lr x steps):
      ``f_t(X*) = f0(X*) + K* K^+ (I - exp(-t A))(y - f0(X))``;
    * ``t=None``: converged, ``f(X*) = f0(X*) + K* K^+ (y - f0(X))`` (requires ``lr`` below
      ``2/lambda_max(A) = M/lambda_max(K)`` when given, else GD diverges).

    ``K^+ g(K)`` is evaluated through the eigendecomposition ``K = U diag(lam) U^T`` as
    ``U diag(h(lam)) U^T`` with ``h(lam) = (1 - (1 - a lam)^t)/lam`` (continuous at ``lam = 0``,
    so zero modes of a singular kernel behave exactly as GD does); for ``t=None`` eigenvalues below
    ``rcond lam_max`` are dropped.

    Args:
        K_train: ``(n, n)`` kernel shared by all outputs, or ``(n c, n c)`` full kernel with rows
            ordered sample-major (index ``i c + o``), matching ``y_train.reshape(-1)``.
        K_test: ``(n_test, n)`` or ``(n_test c, n c)`` correspondingly.
        y_train: ``(n,)`` or ``(n, c)`` targets.
        t: steps (with ``lr``) or time (without); ``None`` for the limit.
        lr: GD learning rate.
        f0_train, f0_test: network outputs at init (default 0), shapes of ``y_train`` and
            ``(n_test, c)``.

    Returns:
        ``(n_test,)`` or ``(n_test, c)`` float64 predictions (shape follows ``y_train``).

    Cost: one ``eigh`` of ``K_train``: O(N^3) for ``N = n`` or ``n c``.
    """
    K = _finite_matrix("K_train", K_train)
    Ks = _finite_matrix("K_test", K_test, square=False)
    y = np.asarray(y_train, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("`y_train` contains NaN or inf.")
    vector = y.ndim == 1
    Y = y.reshape(y.shape[0], -1)
    n, c = Y.shape
    M = n * c
    if K.shape[0] == n:
        full = False
    elif K.shape[0] == M and c > 1:
        full = True
    else:
        raise ValueError(f"`K_train` is {K.shape}; expected ({n}, {n}) or ({M}, {M}) for "
                         f"y_train of shape {y.shape}.")
    if not np.allclose(K, K.T, rtol=1e-6, atol=1e-6 * np.abs(K).max()):
        raise ValueError("`K_train` is not symmetric.")
    if Ks.shape[1] != K.shape[0] or (full and Ks.shape[0] % c):
        raise ValueError(f"`K_test` is {Ks.shape}; incompatible with K_train {K.shape}.")
    n_test = Ks.shape[0] // c if full else Ks.shape[0]
    F0 = np.zeros_like(Y) if f0_train is None else np.asarray(f0_train, np.float64).reshape(n, c)
    F0s = (np.zeros((n_test, c)) if f0_test is None
           else np.asarray(f0_test, np.float64).reshape(n_test, c))
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be finite and > 0; got {lr!r}.")
    if t is not None and not (np.isfinite(t) and t >= 0):
        raise ValueError(f"`t` must be finite and >= 0; got {t!r}.")

    lam, U = np.linalg.eigh(0.5 * (K + K.T))
    lam = np.clip(lam, 0.0, None)
    a = 2.0 / M
    if t is None:
        if lr is not None and lr * a * lam.max() >= 2.0:
            raise ValueError(f"GD with lr={lr} diverges (lr >= M/lambda_max(K) = "
                             f"{M / lam.max():.6g}); there is no converged predictor.")
        keep = lam > rcond * lam.max()
        h = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    elif lr is None:
        # (1 - exp(-t a lam)) / lam, continuous at lam = 0.
        h = np.where(lam > 0, -np.expm1(-t * a * lam) / np.where(lam > 0, lam, 1.0), t * a)
    else:
        if float(t) != int(t):
            raise ValueError(f"With `lr`, `t` counts GD steps and must be an integer; got {t!r}.")
        t = int(t)
        base = 1.0 - lr * a * lam
        step = np.where(base > 0, lr * a * lam, 0.0)     # log1p only where 1 - step > 0
        with np.errstate(over="ignore", invalid="ignore"):
            num = np.where(base > 0, -np.expm1(t * np.log1p(-step)), 1.0 - base ** t)
        h = np.where(lam > 0, num / np.where(lam > 0, lam, 1.0), t * lr * a)
    R = (Y - F0).reshape(-1) if full else (Y - F0)
    coef = U @ (h[:, None] * (U.T @ R.reshape(K.shape[0], -1)))
    out = F0s + (Ks @ coef).reshape(n_test, c)
    return out[:, 0] if vector else out


def _finite_matrix(name: str, a, square: bool = True) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.size == 0 or (square and a.shape[0] != a.shape[1]):
        raise ValueError(f"`{name}` must be a non-empty {'square ' if square else ''}matrix; "
                         f"got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or inf.")
    return a
