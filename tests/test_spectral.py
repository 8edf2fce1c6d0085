"""Eigensolvers, Hessian / Gauss-Newton spectra and the critical learning rate, checked against
numpy eigendecompositions, explicit Hessians (tape.jacobian of the gradient) and closed forms."""

import keras
import numpy as np
import pytest
import scipy.sparse.linalg as spla
import tensorflow as tf

from kerntk import spectral


def sym(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T


def flat(ts):
    return np.concatenate([np.asarray(t).reshape(-1) for t in ts])


def explicit_hessian(model, loss, x, y):
    tv = model.trainable_variables
    with tf.GradientTape() as t2:
        with tf.GradientTape() as t1:
            L = loss(y, model(x))
        g = tf.concat([tf.reshape(a, [-1]) for a in t1.gradient(L, tv)], 0)
    rows = [h.numpy().reshape(g.shape[0], -1) for h in t2.jacobian(g, tv)]
    return np.concatenate(rows, axis=1)


def explicit_jacobian(model, x):
    with tf.GradientTape() as t:
        out = tf.reshape(model(x), [-1])          # sample-major (i c + o)
    parts = t.jacobian(out, model.trainable_variables)
    return np.concatenate([p.numpy().reshape(out.shape[0], -1) for p in parts], axis=1)


def tiny_model(c=2, seed=0):
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(5, activation="tanh"),
                             keras.layers.Dense(c)])


# ----------------------------------------------------------------------------- eigensolvers

@pytest.mark.parametrize("matrix", ["indefinite", "psd_low_rank"])
def test_lanczos_top5_matches_eigvalsh(matrix):
    if matrix == "indefinite":
        A = sym(400)
    else:
        B = np.random.default_rng(1).normal(size=(300, 4))
        A = B @ B.T                       # rank 4 < k: exercises the restart after breakdown
    ref = np.linalg.eigvalsh(A)[::-1][:5]
    res = spectral.top_eigenpairs(A, 5, "lanczos")
    assert res.method == "lanczos" and res.iterations <= 400
    scale = np.abs(ref).max()
    assert np.all(np.abs(res.eigenvalues - ref) <= 1e-8 * np.maximum(np.abs(ref), 1e-3 * scale))
    np.testing.assert_allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(5), atol=1e-10)
    # Reported residuals are the true ones.
    true_res = np.linalg.norm(A @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    np.testing.assert_allclose(res.residual_norms, true_res, rtol=1e-6, atol=1e-9 * scale)


def test_dense_and_lanczos_agree_including_vectors():
    A = sym(120, seed=3)
    d = spectral.top_eigenpairs(A, 4, "dense")
    lz = spectral.top_eigenpairs(A, 4, "lanczos")
    np.testing.assert_allclose(lz.eigenvalues, d.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(lz.eigenvectors * d.eigenvectors, axis=0)), 1.0,
                               atol=1e-8)
    assert np.all(np.diff(d.eigenvalues) <= 0)
    lm = spectral.top_eigenpairs(A, 3, "dense", which="LM")
    ev = np.linalg.eigvalsh(A)
    np.testing.assert_allclose(lm.eigenvalues, ev[np.argsort(-np.abs(ev))[:3]], rtol=1e-12)


def test_operator_path_matches_dense():
    A = sym(150, seed=4)
    op = spla.LinearOperator(A.shape, matvec=lambda v: A @ v, dtype=np.float64)
    ref = np.linalg.eigvalsh(A)[::-1][:3]
    np.testing.assert_allclose(spectral.top_eigenpairs(op, 3).eigenvalues, ref, rtol=1e-9)
    np.testing.assert_allclose(spectral.top_eigenpairs(op, 3, "dense").eigenvalues, ref,
                               rtol=1e-12)


def test_ntk_operator_matches_dense_ntk():
    ntk = pytest.importorskip("kerntk.ntk")
    if not hasattr(ntk, "ntk_operator"):
        pytest.skip("kerntk.ntk.ntk_operator not available yet")
    m = tiny_model(c=1)
    x = np.random.default_rng(0).normal(size=(10, 3))
    J = explicit_jacobian(m, x)
    op = ntk.ntk_operator(m, x)
    res = spectral.top_eigenpairs(op, 3, "lanczos")
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(J @ J.T)[::-1][:3], rtol=1e-8)


def test_bad_input_raises():
    A = sym(10)
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(A, 11)
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(A, 0)
    B = A.copy()
    B[2, 3] = np.nan
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(B, 2)
    B[2, 3] = np.inf
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(B, 2, "lanczos")
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(A + np.triu(np.ones_like(A)), 2)
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(np.ones((3, 4)), 1)
    bad_op = spla.LinearOperator((10, 10), matvec=lambda v: np.full(10, np.nan), dtype=float)
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(bad_op, 1)
    with pytest.raises(ValueError):
        spectral.top_eigenpairs(A, 1, method="power")


# ----------------------------------------------------------------------------- Hessians

def test_hessian_top_eigenpairs_match_explicit_hessian():
    m = tiny_model()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    loss = keras.losses.MeanSquaredError()
    H = explicit_hessian(m, loss, x, y)
    ref = np.linalg.eigvalsh(H)[::-1][:3]
    res = spectral.hessian_top_eigenpairs(m, loss, x, y, k=3)
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-8)
    np.testing.assert_allclose(H @ res.eigenvectors, res.eigenvectors * res.eigenvalues,
                               atol=1e-6 * abs(ref[0]))


def test_hessian_float32_model():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6, activation="tanh"),
                          keras.layers.Dense(1)])
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 3)).astype("float32"), rng.normal(size=(9, 1)).astype("float32")
    H = explicit_hessian(m, keras.losses.MeanSquaredError(), x, y)
    lam = spectral.hessian_top_eigenpairs(m, "mse", x, y).eigenvalues[0]
    assert abs(lam - np.linalg.eigvalsh(H.astype(np.float64)).max()) < 1e-4 * abs(lam)


@pytest.mark.parametrize("loss_name", ["mse", "bce"])
def test_gauss_newton_matches_explicit(loss_name):
    m = tiny_model(c=2, seed=2)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3))
    if loss_name == "mse":
        loss, y = keras.losses.MeanSquaredError(), rng.normal(size=(6, 2))
    else:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        y = (rng.random(size=(6, 2)) > 0.5).astype("float64")
    J = explicit_jacobian(m, x)
    f = tf.constant(m(x).numpy())
    with tf.GradientTape() as t2:
        t2.watch(f)
        with tf.GradientTape() as t1:
            t1.watch(f)
            L = loss(y, f)
        g = tf.reshape(t1.gradient(L, f), [-1])
    Hf = t2.jacobian(g, f).numpy().reshape(12, 12)
    ref = np.linalg.eigvalsh(J.T @ Hf @ J)[::-1][:2]
    res = spectral.gauss_newton_top_eigenpairs(m, loss, x, y, k=2)
    np.testing.assert_allclose(res.eigenvalues, ref, rtol=1e-8)
    if loss_name == "mse":        # H_f = 2/(n c) I
        np.testing.assert_allclose(ref, 2 / 12 * np.linalg.eigvalsh(J @ J.T)[::-1][:2],
                                   rtol=1e-10)


def test_hessian_bad_input():
    m = tiny_model()
    x, y = np.ones((4, 3)), np.ones((4, 2))
    x[0, 0] = np.nan
    with pytest.raises(ValueError):
        spectral.hessian_top_eigenpairs(m, "mse", x, y)
    with pytest.raises(ValueError):
        spectral.hessian_top_eigenpairs(m, "mse", np.ones((0, 3)), np.ones((0, 2)))


# ----------------------------------------------------------------------------- critical LR

def linear_model(d, c=1):
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(c, use_bias=False)])


def test_critical_lr_linear_mse_closed_form():
    rng = np.random.default_rng(0)
    n, d = 16, 5
    X, y = rng.normal(size=(n, d)), rng.normal(size=(n, 1))
    closed = 2.0 / np.linalg.eigvalsh(2 * X.T @ X / n).max()
    m = linear_model(d)
    for method in ("ntk", "hessian", "gauss_newton"):
        eta = spectral.critical_lr(m, X, y, method=method)
        assert abs(eta - closed) <= 1e-8 * closed, method
    assert abs(spectral.critical_lr(kernel=X @ X.T) - closed) <= 1e-10 * closed
    eta_op = spectral.critical_lr(m, X, y, matrix_free=True)
    assert abs(eta_op - closed) <= 1e-8 * closed
    eta_mom = spectral.critical_lr(m, X, y, method="hessian", momentum=0.5)
    assert abs(eta_mom - 1.5 * closed) <= 1e-8 * closed
    assert abs(spectral.critical_lr(kernel=X @ X.T, momentum=0.9) - 1.9 * closed) <= 1e-10 * closed
    with pytest.raises(ValueError):
        spectral.critical_lr(m, X, y, loss="mae")


def test_critical_lr_multi_output_normalization():
    # Keras MSE averages over outputs too: eta = n c / lambda_max(K_full) = 2 / lambda_max(H_L).
    rng = np.random.default_rng(1)
    n, d, c = 10, 4, 3
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, c))
    m = linear_model(d, c)
    H = explicit_hessian(m, keras.losses.MeanSquaredError(), X, Y)
    exact = 2.0 / np.linalg.eigvalsh(H).max()
    for method in ("ntk", "hessian"):
        assert abs(spectral.critical_lr(m, X, Y, method=method) - exact) <= 1e-8 * exact
    J = explicit_jacobian(m, X)
    assert abs(spectral.critical_lr(kernel=J @ J.T) - exact) <= 1e-10 * exact


def test_gd_converges_below_and_diverges_above_critical_lr():
    rng = np.random.default_rng(3)
    n, d = 16, 5
    X, y = rng.normal(size=(n, d)), rng.normal(size=(n, 1))
    eta = spectral.critical_lr(linear_model(d), X, y, method="hessian")
    losses = {}
    data = tf.data.Dataset.from_tensors((X, y)).repeat()       # full batch, same every step
    for factor in (0.9, 1.1):
        m = linear_model(d)
        m.compile(optimizer=keras.optimizers.SGD(learning_rate=factor * eta), loss="mse")
        start = m.evaluate(X, y, verbose=0)
        m.fit(data, epochs=1, steps_per_epoch=300, shuffle=False, verbose=0)
        losses[factor] = (start, m.evaluate(X, y, verbose=0))
    best = np.linalg.lstsq(X, y, rcond=None)[1][0] / n
    assert losses[0.9][1] < best + 1e-6
    assert losses[1.1][1] > 1e3 * losses[1.1][0]
