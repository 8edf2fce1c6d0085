"""Analytic infinite-width kernels vs brute-force empirical NTKs, and NTK-regime kernel regression
vs explicit gradient descent on a linear model."""

from decimal import Decimal, localcontext

import numpy as np
import pytest
import tensorflow as tf

import kerntk
from kerntk.ntk import analytic


def brute_ntk(model, x):
    """Per-example weight gradients by ``tape.jacobian`` and ``sum_v J_v J_v^T`` (output 0)."""
    xt = tf.constant(x, dtype=model.trainable_variables[0].dtype)
    with tf.GradientTape() as tape:
        out = model(xt)[:, 0]
    K = 0.0
    for j in tape.jacobian(out, model.trainable_variables):
        j = j.numpy().reshape(len(x), -1).astype(np.float64)
        K = K + j @ j.T
    return K


def sphere(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rel_err(model, x, K_inf):
    K = brute_ntk(model, x)
    return np.linalg.norm(K - K_inf) / np.linalg.norm(K_inf)


#: Initializations averaged by :func:`rel_err_of_mean`.
SEEDS = (0, 7, 14, 21)


def rel_err_of_mean(models, x, K_inf):
    """Relative error of the empirical NTK averaged over independent initializations.

    At width m one kernel's relative error is a fluctuation ~ c / sqrt(m) (about 0.02-0.04 at
    m = 8192 for these nets, depending on the inputs: too close to a 0.03 bound for one or two
    seeds) plus a bias O(1/m); the mean of S kernels has fluctuation c / sqrt(m S), so with
    S = 4 the bound holds with a margin of ~2x whatever the draw, and a wrong limit kernel
    (an error of a few percent or more) still fails it.
    """
    K = np.mean([brute_ntk(model, x) for model in models], axis=0)
    return np.linalg.norm(K - K_inf) / np.linalg.norm(K_inf)


@pytest.mark.parametrize("kind", ["fcn", "pnn"])
def test_analytic_matches_empirical_and_error_shrinks_with_width(kind):
    x = sphere(8, 5)
    if kind == "fcn":
        K_inf = analytic.fcn_kernels(x, depth=3).ntk
        build = lambda w, s: kerntk.models.fcn(3, w, input_shape=(5,), seed=s)  # noqa: E731
    else:
        K_inf = analytic.pnn_kernels(x, degree=3).ntk
        build = lambda w, s: kerntk.models.pnn(3, w, input_shape=(5,), seed=s)  # noqa: E731
    seeds = (0, 100)
    wide = np.mean([rel_err(build(4096, s), x, K_inf) for s in seeds])
    narrow = np.mean([rel_err(build(64, s), x, K_inf) for s in seeds + (200, 300)])
    assert wide < 0.05
    assert wide < narrow


@pytest.mark.parametrize("W_std,b_std,use_bias", [(1.5, 0.3, True), (0.7, 1.0, False)])
def test_fcn_scales(W_std, b_std, use_bias):
    x = sphere(6, 4, seed=1) * 1.7
    K_inf = analytic.fcn_kernels(x, depth=2, W_std=W_std, b_std=b_std, use_bias=use_bias).ntk
    err = rel_err_of_mean([kerntk.models.fcn(2, 8192, W_std=W_std, b_std=b_std,
                                             use_bias=use_bias, input_shape=(4,), seed=s)
                           for s in SEEDS], x, K_inf)
    assert err < 0.03


def test_pnn_scales_with_branch_bias():
    x = sphere(6, 4, seed=2)
    K_inf = analytic.pnn_kernels(x, degree=2, W_std=0.8, b_std=0.5, use_bias=True,
                                 head_bias=False).ntk
    err = rel_err_of_mean([kerntk.models.pnn(2, 8192, W_std=0.8, b_std=0.5, use_bias=True,
                                             head_bias=False, input_shape=(4,), seed=s)
                           for s in SEEDS], x, K_inf)
    assert err < 0.03


def test_depth_one_is_the_linear_kernel_and_nngp_is_psd():
    x1, x2 = sphere(5, 3, 3) * 2.0, sphere(4, 3, 4)
    k = analytic.fcn_kernels(x1, x2, depth=1, W_std=1.3, b_std=0.4)
    expected = 1.3 ** 2 * x1 @ x2.T / 3 + 0.4 ** 2
    np.testing.assert_allclose(k.ntk, expected, rtol=1e-14)
    np.testing.assert_allclose(k.nngp, expected, rtol=1e-14)
    for kern in analytic.pnn_kernels(x1, degree=3), analytic.fcn_kernels(x1, depth=4):
        for K in kern:
            assert np.linalg.eigvalsh(K).min() > -1e-12
            np.testing.assert_allclose(K, K.T, rtol=1e-14)


def test_model_kernels_reads_the_model():
    x = sphere(5, 3, 5)
    m = kerntk.models.fcn(4, 16, W_std=1.2, b_std=0.2, input_shape=(3,))
    k = analytic.model_kernels(m, x)
    ref = analytic.fcn_kernels(x, depth=4, W_std=1.2, b_std=0.2)
    np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-14)
    p = kerntk.models.pnn(2, 16, blocks=2, input_shape=(3,))
    np.testing.assert_allclose(analytic.model_kernels(p, x).ntk,
                               analytic.pnn_kernels(x, degree=2, blocks=2).ntk, rtol=1e-14)
    with pytest.raises(ValueError):
        analytic.model_kernels(kerntk.models.pnn(2, 8, form="ccp", input_shape=(3,)), x)
    with pytest.raises(ValueError):
        analytic.model_kernels(kerntk.models.fcn(2, 8, parameterization="standard",
                                                 input_shape=(3,)), x)


def test_analytic_bad_input():
    x = sphere(4, 3)
    x[1, 1] = np.nan
    with pytest.raises(ValueError):
        analytic.fcn_kernels(x, depth=2)
    with pytest.raises(ValueError):
        analytic.fcn_kernels(sphere(3, 3), sphere(3, 4), depth=2)
    with pytest.raises(ValueError):
        analytic.pnn_kernels(sphere(3, 3), degree=0)


# ------------------------------------------------------------ precision against a 50-digit reference

_TINY = Decimal(10) ** -70


def _d_atan(x):
    """arctan in the context's precision: halvings ``atan x = 2 atan(x / (1 + sqrt(1 + x^2)))``
    down to ``|x| <= 0.01``, then the Taylor series."""
    n = 0
    while abs(x) > Decimal("0.01"):
        x = x / (1 + (1 + x * x).sqrt())
        n += 1
    total, power, k = Decimal(0), x, 0
    while abs(power) > _TINY:
        total += (-1) ** k * power / (2 * k + 1)
        power *= x * x
        k += 1
    return total * 2 ** n


def _d_sin(t):
    total, term, k = Decimal(0), t, 1
    while abs(term) > _TINY:
        total += term
        term = -term * t * t / ((2 * k) * (2 * k + 1))
        k += 1
    return total


def decimal_kernels(x, layers, W_std, b_std, use_bias, head_bias):
    """NNGP and NTK on all pairs of rows of ``x`` from the module docstring's recursion taken
    literally (``theta = arccos(Sigma / sqrt(Sigma Sigma))``) in 50-digit decimal arithmetic.
    ``layers``: ``"relu"`` or a PNN degree per layer."""
    with localcontext() as ctx:
        ctx.prec = 50
        pi = 4 * _d_atan(Decimal(1))
        z = [[Decimal(float(v)) for v in row] for row in x]
        m, d = len(z), len(z[0])
        S = [[sum(a * b for a, b in zip(z[i], z[j])) / d for j in range(m)] for i in range(m)]
        T = [[Decimal(0)] * m for _ in range(m)]
        w2 = Decimal(W_std) ** 2
        b2 = Decimal(b_std) ** 2 if use_bias else Decimal(0)
        for layer in layers:
            sig = [[w2 * S[i][j] + b2 for j in range(m)] for i in range(m)]
            for i in range(m):
                for j in range(m):
                    norm = (sig[i][i] * sig[j][j]).sqrt()
                    k1 = k0 = Decimal(0)
                    if norm > 0:
                        c = max(min(sig[i][j] / norm, Decimal(1)), Decimal(-1))
                        th = pi if c == -1 else 2 * _d_atan(((1 - c) / (1 + c)).sqrt())
                        k1 = norm * (_d_sin(th) + (pi - th) * c) / (2 * pi)
                        k0 = (pi - th) / (2 * pi)
                    theta = sig[i][j] + w2 * T[i][j]
                    if layer == "relu":
                        S[i][j], T[i][j] = k1, k0 * theta
                    else:
                        s2 = 2 / (w2 + b2)
                        S[i][j] = (s2 * k1) ** layer
                        T[i][j] = layer * s2 * k0 * (s2 * k1) ** (layer - 1) * theta
        hb2 = Decimal(b_std) ** 2 if head_bias else Decimal(0)
        nngp = np.array([[float(w2 * S[i][j] + hb2) for j in range(m)] for i in range(m)])
        ntk = np.array([[float(w2 * (S[i][j] + T[i][j]) + hb2) for j in range(m)]
                        for i in range(m)])
    return nngp, ntk


def _rotated(a, angle):
    """``a`` turned by ``angle`` in the plane of ``a`` and a fixed second direction."""
    u = np.array([1.0, 0.4, -0.2])
    u = u - (u @ a) / (a @ a) * a
    return np.cos(angle) * a + np.sin(angle) * u * np.linalg.norm(a) / np.linalg.norm(u)


_A = np.array([0.3, -1.2, 0.5])
# Pairs at angle 0 (equal rows, and a row and 2.5 times it), pi, 1e-6, pi - 1e-6 and 1e-3, a
# generic row and a zero row.
_POINTS = np.stack([_A, _A.copy(), -_A, _rotated(_A, 1e-6), 2.5 * _A, -0.5 * _rotated(_A, 1e-6),
                    _rotated(_A, 1e-3), np.array([1.1, 0.2, 0.7]), np.zeros(3)])


@pytest.mark.parametrize("kind,layers,W_std,b_std,use_bias", [
    ("fcn", 1, 1.0, 1.0, False),
    ("fcn", 2, 1.0, 1.0, True),
    ("fcn", 3, 1.3, 0.4, True),
    ("fcn", 5, 1.0, 1e-3, True),
    ("pnn", (3, 2), 1.0, 1.0, False),
    ("pnn", (2, 2), 1.0, 0.5, True),
], ids=["fcn1", "fcn2_bias", "fcn3_scales", "fcn5_small_bias", "pnn3x2", "pnn2x2_bias"])
def test_kernels_are_accurate_at_angles_0_pi_and_tiny(kind, layers, W_std, b_std, use_bias):
    """Every entry within a few float64 ulps of ``sqrt(K(x, x) K(x', x'))`` per layer of the
    50-digit reference, also where arccos(cos) would lose half the digits (the old code was
    ~1e7 ulps off there). Bound: ReLU layers are 1-Lipschitz in these normalized units, so
    rounding errors add up over ``depth``; a degree-N block raises its inputs to the N-th power,
    multiplying their relative error by N per block."""
    eps = np.finfo(np.float64).eps
    if kind == "fcn":
        plan, head_bias, bound = ["relu"] * (layers - 1), use_bias, 4 * eps * layers
        fn = lambda x1, x2=None: analytic.fcn_kernels(  # noqa: E731
            x1, x2, depth=layers, W_std=W_std, b_std=b_std, use_bias=use_bias)
    else:
        degree, blocks = layers
        plan, head_bias, bound = [degree] * blocks, True, 4 * eps * blocks * degree ** blocks
        fn = lambda x1, x2=None: analytic.pnn_kernels(  # noqa: E731
            x1, x2, degree=degree, blocks=blocks, W_std=W_std, b_std=b_std, use_bias=use_bias)
    reference = decimal_kernels(_POINTS, plan, W_std, b_std, use_bias, head_bias)
    # x2=None, and x2 given (then no diagonal is shared).
    for x1, x2, idx in ((_POINTS, None, np.s_[:, :]), (_POINTS[:5], _POINTS[3:], np.s_[:5, 3:])):
        for K, R in zip(fn(x1, x2), reference):
            scale = np.sqrt(np.outer(np.diag(R), np.diag(R)))[idx]
            err = np.abs(K - R[idx])
            assert np.all(err <= bound * scale), np.max(err / np.maximum(scale, 1e-300)) / eps


def test_diagonal_is_exact():
    """On the diagonal theta = 0 exactly: k0 = 1/2 and k1 = Sigma/2, so a bias-free 2-layer
    ReLU net has NTK(x, x) = |x|^2/d to the last bit."""
    x = sphere(6, 5, seed=3) * np.linspace(0.5, 3.0, 6)[:, None]
    s = np.einsum("ij,ij->i", x, x) / 5
    np.testing.assert_array_equal(np.diag(analytic.fcn_kernels(x, depth=2, use_bias=False).ntk),
                                  s)


# ----------------------------------------------------------------------------- kernel regression

def linear_problem(seed=0, n=12, d=20, n_test=5, c=1):
    rng = np.random.default_rng(seed)
    X, Xs = rng.normal(size=(n, d)), rng.normal(size=(n_test, d))
    Y = rng.normal(size=(n, c))
    W0 = rng.normal(size=(d, c)) * 0.3
    return X, Xs, Y, W0


def gd_linear(X, Y, W0, lr, steps):
    """Explicit GD on Keras MSE L = mean((X W - Y)^2) over samples and outputs."""
    W = W0.copy()
    M = Y.size
    for _ in range(steps):
        W -= lr * 2.0 / M * X.T @ (X @ W - Y)
    return W


@pytest.mark.parametrize("c", [1, 3])
def test_kernel_regression_equals_linear_model_gd(c):
    X, Xs, Y, W0 = linear_problem(c=c)
    K, Ks = X @ X.T, Xs @ X.T
    eta_crit = Y.size / np.linalg.eigvalsh(K).max()
    for lr, steps in ((0.5 * eta_crit, 7), (0.97 * eta_crit, 40), (1.5 * eta_crit, 3)):
        W = gd_linear(X, Y, W0, lr, steps)
        pred = analytic.kernel_regression(K, Ks, Y, t=steps, lr=lr, f0_train=X @ W0,
                                          f0_test=Xs @ W0)
        np.testing.assert_allclose(pred, Xs @ W, rtol=1e-9, atol=1e-9)
    # Converged: the min-distance interpolant from W0 (d > n).
    W_inf = W0 + np.linalg.pinv(X) @ (Y - X @ W0)
    pred = analytic.kernel_regression(K, Ks, Y, f0_train=X @ W0, f0_test=Xs @ W0)
    np.testing.assert_allclose(pred, Xs @ W_inf, rtol=1e-8, atol=1e-8)
    # Full (n c x n c) kernel, sample-major, gives the same predictor.
    Kf, Ksf = np.kron(K, np.eye(c)), np.kron(Ks, np.eye(c))
    if c > 1:
        np.testing.assert_allclose(
            analytic.kernel_regression(Kf, Ksf, Y, t=5, lr=0.5 * eta_crit, f0_train=X @ W0,
                                       f0_test=Xs @ W0),
            analytic.kernel_regression(K, Ks, Y, t=5, lr=0.5 * eta_crit, f0_train=X @ W0,
                                       f0_test=Xs @ W0), rtol=1e-10)


def test_gradient_flow_is_the_small_lr_limit_and_handles_singular_kernels():
    X, Xs, Y, W0 = linear_problem(n=15, d=6)     # n > d: K is singular
    K, Ks = X @ X.T, Xs @ X.T
    T, steps = 2.0, 20000
    W = gd_linear(X, Y[:, :1], W0, T / steps, steps)
    pred = analytic.kernel_regression(K, Ks, Y[:, 0], t=T, f0_train=(X @ W0)[:, 0],
                                      f0_test=(Xs @ W0)[:, 0])
    np.testing.assert_allclose(pred, (Xs @ W)[:, 0], rtol=1e-3, atol=1e-3)
    W_ls = W0 + np.linalg.lstsq(X, Y - X @ W0, rcond=None)[0]
    pred = analytic.kernel_regression(K, Ks, Y, f0_train=X @ W0, f0_test=Xs @ W0)
    np.testing.assert_allclose(pred, Xs @ W_ls, rtol=1e-7, atol=1e-7)


def test_kernel_regression_bad_input():
    X, Xs, Y, _ = linear_problem()
    K, Ks = X @ X.T, Xs @ X.T
    eta_crit = Y.size / np.linalg.eigvalsh(K).max()
    with pytest.raises(ValueError):
        analytic.kernel_regression(K, Ks, Y, lr=1.01 * eta_crit)
    bad = K.copy()
    bad[0, 1] = np.inf
    with pytest.raises(ValueError):
        analytic.kernel_regression(bad, Ks, Y)
    with pytest.raises(ValueError):
        analytic.kernel_regression(K + np.triu(np.ones_like(K)), Ks, Y)
    with pytest.raises(ValueError):
        analytic.kernel_regression(K, Ks, Y, t=2.5, lr=0.1)
