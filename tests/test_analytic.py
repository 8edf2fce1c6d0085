"""Analytic infinite-width kernels vs brute-force empirical NTKs, and NTK-regime kernel regression
vs explicit gradient descent on a linear model."""

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
    errs = [rel_err(kerntk.models.fcn(2, 8192, W_std=W_std, b_std=b_std, use_bias=use_bias,
                                      input_shape=(4,), seed=s), x, K_inf) for s in (0, 7)]
    assert np.mean(errs) < 0.03


def test_pnn_scales_with_branch_bias():
    x = sphere(6, 4, seed=2)
    K_inf = analytic.pnn_kernels(x, degree=2, W_std=0.8, b_std=0.5, use_bias=True,
                                 head_bias=False).ntk
    errs = [rel_err(kerntk.models.pnn(2, 8192, W_std=0.8, b_std=0.5, use_bias=True,
                                      head_bias=False, input_shape=(4,), seed=s), x, K_inf)
            for s in (0, 7)]
    assert np.mean(errs) < 0.03


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
