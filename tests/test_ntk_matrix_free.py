"""The matrix-free batch NTK inside a training step (issue 11, "Too slow at full batch"):
``ForwardNTK.operator`` against the dense kernel and a brute-force Jacobian, the traced
warm-started Lanczos ``top_eigenvalue`` against ``numpy.linalg.eigvalsh``, and the cost rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerntk
from kerntk.layers import NTKDense
from kerntk.ntk.in_step import ForwardNTK, prefer_matrix_free, top_eigenvalue


def brute_jacobian(model, x, column=None) -> np.ndarray:
    """``J`` (n c, P): row ``i * c + k``, columns in ``model.trainable_variables`` order."""
    with tf.GradientTape() as tape:
        out = model(x)
        if column is not None:
            out = out[:, column:column + 1]
    rows = int(np.prod(out.shape))
    return np.concatenate([np.reshape(j, (rows, -1)) for j in
                           tape.jacobian(out, model.trainable_variables)], axis=1)


def mlp(c: int) -> keras.Model:
    # Keras Dense and kerntk's NTKDense (kernel and bias multipliers), biases included.
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"),
                             NTKDense(5, activation="relu", b_std=0.5), keras.layers.Dense(c)])


class Scale(keras.layers.Layer):
    """A layer without a registered factorization (its variable goes through the tape)."""

    def build(self, shape):
        self.alpha = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.alpha


def mixed_model(c: int) -> keras.Model:
    # conv (a site, but not "dense"), diagonal (LayerNorm), an unfactorized variable, dense.
    return keras.Sequential([keras.Input((5, 5, 2)), keras.layers.Conv2D(3, 3, activation="tanh"),
                             keras.layers.LayerNormalization(), keras.layers.Flatten(), Scale(),
                             keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(c)])


def record(model, x, outputs, fn):
    """``fn(ForwardNTK)`` after recording ``model(x)`` inside a ``tf.function``."""
    @tf.function
    def run(x):
        fnt = ForwardNTK(model, outputs=outputs)
        with fnt.recording():
            model(x, training=True)
        return fn(fnt)
    return run(tf.constant(x))


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


@pytest.mark.parametrize("c", [1, 3])
def test_operator_is_the_full_ntk(c, rng):
    keras.config.set_dtype_policy("float64")
    model = mlp(c)
    x = rng.standard_normal((7, 4))
    u = rng.standard_normal((7, c))
    inv_p = [rng.uniform(0.2, 2.0, v.shape) for v in model.trainable_variables]

    def products(f):
        op, pop = f.operator(), f.operator(inv_p)
        return (f.kernel()[0], f.matvec(u), pop(u), op(tf.cast(u, "float32")),
                op.quadratic_form(u), pop.quadratic_form(u))

    K, Ku, KPu, Ku32, q, qp = record(model, x, "full", products)
    J = brute_jacobian(model, x)
    K_emp = kerntk.ntk.empirical_ntk(model, x, outputs="full")
    flat = u.reshape(-1)                                           # row i * c + k
    assert Ku.shape == (7, c) and Ku.dtype == tf.float64 and Ku32.dtype == tf.float32
    assert rel(Ku.numpy().reshape(-1), K.numpy() @ flat) < 1e-12
    assert rel(Ku.numpy().reshape(-1), np.asarray(K_emp) @ flat) < 1e-12
    assert rel(Ku.numpy().reshape(-1), J @ (J.T @ flat)) < 1e-12
    p = np.concatenate([q.reshape(-1) for q in inv_p])
    assert rel(KPu.numpy().reshape(-1), J @ (p * (J.T @ flat))) < 1e-12
    assert rel(q.numpy(), flat @ K.numpy() @ flat) < 1e-12
    assert rel(qp.numpy(), flat @ J @ (p * (J.T @ flat))) < 1e-12


@pytest.mark.parametrize("outputs", ["full", 1])
def test_operator_is_exact_for_variables_outside_dense_sites(outputs, rng):
    """Conv and LayerNorm sites and an unfactorized layer go through the recorded tape (VJP,
    then the JVP by double backward); one output column for an int ``outputs``."""
    keras.config.set_dtype_policy("float64")
    model = mixed_model(2)
    x = rng.standard_normal((4, 5, 5, 2))
    c = 2 if outputs == "full" else 1
    u = rng.standard_normal((4, c))
    inv_p = [rng.uniform(0.2, 2.0, v.shape) for v in model.trainable_variables]
    Ku, KPu, qp = record(model, x, outputs, lambda f: (
        f.operator()(u), f.operator(inv_p)(u), f.operator(inv_p).quadratic_form(u)))
    J = brute_jacobian(model, x, None if outputs == "full" else outputs)
    flat = u.reshape(-1)
    p = np.concatenate([q.reshape(-1) for q in inv_p])
    assert rel(Ku.numpy().reshape(-1), J @ (J.T @ flat)) < 1e-11
    assert rel(KPu.numpy().reshape(-1), J @ (p * (J.T @ flat))) < 1e-11
    assert rel(qp.numpy(), flat @ J @ (p * (J.T @ flat))) < 1e-11


def test_operator_refuses_what_it_cannot_do(rng):
    model = mlp(2)
    x = rng.standard_normal((3, 4)).astype("float32")
    fnt = ForwardNTK(model, outputs="full")
    with pytest.raises(ValueError, match="Nothing recorded"):
        fnt.operator()
    with pytest.raises(ValueError, match="'trace'"):
        record(model, x, "trace", lambda f: f.operator())
    with pytest.raises(ValueError, match="one tensor per trainable variable"):
        record(model, x, "full", lambda f: f.operator([tf.ones(())]))


def ntk_kernel(model, x) -> np.ndarray:
    """The float64 NTK of ``model`` at ``x`` (``outputs="full"``)."""
    return record(model, x, "full", lambda f: f.kernel()[0]).numpy()


def ntk_lanczos(model, x, steps, quadratic=False):
    """A compiled ``v0 -> top_eigenvalue(...)`` on the batch NTK of ``model`` at ``x`` (at the
    weights of each call: they are variables), reused for every start vector."""
    x = tf.constant(x)

    @tf.function
    def run(v0):
        fnt = ForwardNTK(model, outputs="full")
        with fnt.recording():
            model(x)
        op = fnt.operator()
        if quadratic:
            return top_eigenvalue(op, v0, steps, quadratic_form=op.quadratic_form)
        return top_eigenvalue(op, v0, steps, with_residual=True)
    return run


def kps_bound(evals, evecs, v0, steps) -> float:
    """Kaniel-Paige-Saad: ``(lambda_1 - theta) / lambda_1 <= (lambda_1 - lambda_min) / lambda_1
    (tan(phi) / T_{m-1}(1 + 2 gamma))^2``."""
    lam = evals[::-1]
    cos = abs(evecs[:, -1] @ v0) / np.linalg.norm(v0)
    tan = np.sqrt(max(1 - cos ** 2, 0.0)) / cos
    gamma = (lam[0] - lam[1]) / (lam[1] - lam[-1])
    cheb = np.cosh((steps - 1) * np.arccosh(1 + 2 * gamma))
    return (lam[0] - lam[-1]) / lam[0] * (tan / cheb) ** 2


def test_top_eigenvalue_converges_and_a_warm_start_needs_few_steps(rng):
    keras.config.set_dtype_policy("float64")
    model = kerntk.models.fcn(3, 64, input_shape=(10,), seed=0)
    x = rng.standard_normal((40, 10))
    evals, evecs = np.linalg.eigh(ntk_kernel(model, x))
    cold = rng.standard_normal((40, 1))

    lam, v, r = ntk_lanczos(model, x, 12)(cold)           # cold start, enough steps
    assert abs(lam.numpy() - evals[-1]) / evals[-1] < 1e-10
    assert abs(abs(v.numpy()[:, 0] @ evecs[:, -1]) - 1) < 1e-8
    assert abs(np.linalg.norm(v.numpy()) - 1) < 1e-12 and r.numpy() < 1e-4 * evals[-1]

    # The next training step: weights moved by ~1e-3 relatively, warm start from v.
    for w in model.trainable_variables:
        w.assign(w * (1 + 1e-3 * rng.standard_normal(w.shape)))
    evals2, evecs2 = np.linalg.eigh(ntk_kernel(model, x))
    steps = 4
    run = ntk_lanczos(model, x, steps)
    warm_lam, warm_v, _ = run(v.numpy())
    cold_lam, _, _ = run(cold)
    warm_err = (evals2[-1] - warm_lam.numpy()) / evals2[-1]
    cold_err = (evals2[-1] - cold_lam.numpy()) / evals2[-1]
    # Ritz values never exceed lambda_max (up to round-off) and obey the KPS bound.
    bound = kps_bound(evals2, evecs2, v.numpy()[:, 0], steps)
    assert -1e-13 <= warm_err <= bound + 1e-13
    assert warm_err < 1e-9 and bound < 1e-6
    assert cold_err > 100 * max(warm_err, 1e-14)
    assert np.dot(warm_v.numpy()[:, 0], v.numpy()[:, 0]) > 0   # sign follows the warm start
    # The same Krylov space with the last product replaced by the quadratic form |J^T v|^2.
    # One step: the Rayleigh quotient of the warm start and a power step towards the top.
    lam_1, v_1, _ = ntk_lanczos(model, x, 1)(v.numpy())
    err_1 = (evals2[-1] - lam_1.numpy()) / evals2[-1]
    assert -1e-13 <= err_1 <= kps_bound(evals2, evecs2, v.numpy()[:, 0], 1) + 1e-13
    assert abs(v_1.numpy()[:, 0] @ evecs2[:, -1]) > abs(v.numpy()[:, 0] @ evecs2[:, -1])
    lam_q, v_q = ntk_lanczos(model, x, steps, quadratic=True)(v.numpy())
    assert abs(lam_q.numpy() - warm_lam.numpy()) < 1e-12 * evals2[-1]
    assert np.max(np.abs(v_q.numpy() - warm_v.numpy())) < 1e-8


def test_top_eigenvalue_breakdown_and_fallback_start(rng):
    """An invariant Krylov space (rank-2 matrix, more steps than its rank; v0 an eigenvector)
    and an unusable start (zeros: a fresh warm-start variable) give the exact top eigenvalue."""
    B = rng.standard_normal((30, 2))
    A = B @ B.T
    top = np.linalg.eigvalsh(A)[-1]

    def matvec(v):
        return tf.matmul(tf.constant(A), v)

    run = tf.function(lambda v0: top_eigenvalue(matvec, v0, 6, with_residual=True))
    for v0 in (rng.standard_normal((30, 1)), np.zeros((30, 1)),
               np.linalg.eigh(A)[1][:, -1:], np.full((30, 1), np.nan)):
        lam, v, r = run(tf.constant(v0))
        assert abs(lam.numpy() - top) / top < 1e-12
        assert np.all(np.isfinite(v.numpy())) and r.numpy() < 1e-8 * top
    quad = tf.function(lambda v0: top_eigenvalue(
        matvec, v0, 4, quadratic_form=lambda v: tf.reduce_sum(v * matvec(v))))
    for v0 in (rng.standard_normal((30, 1)), np.zeros((30, 1))):
        assert abs(quad(tf.constant(v0))[0].numpy() - top) / top < 1e-12
    with pytest.raises(ValueError, match="steps"):
        top_eigenvalue(matvec, np.ones((30, 1)), 0)
    with pytest.raises(ValueError, match="with_residual"):
        top_eigenvalue(matvec, np.ones((30, 1)), 2, quadratic_form=matvec, with_residual=True)


def test_prefer_matrix_free_follows_the_measured_crossover():
    # The settings measured in the comment of prefer_matrix_free.
    gd = [(100, 1024), (1024, 1)]                                   # fcn(2, 1024), d = 100
    ref = [(3072, 1024)] + [(1024, 1024)] * 3 + [(1024, 1)]         # fcn(5, 1024), d = 3072
    assert prefer_matrix_free(2000, 1, gd, steps=4)
    assert not prefer_matrix_free(128, 1, gd, steps=4)
    assert not prefer_matrix_free(128, 1, ref, steps=4)
    assert not prefer_matrix_free(16, 10, gd, steps=4)
    # More outputs make the dense kernel (n c)^2 and its eigendecomposition (n c)^3.
    assert prefer_matrix_free(1000, 10, gd, steps=4)


def _shared_kernel(model, x, y, weights, dtype="float32"):
    """``(K, op(u), shares_backward)`` from ``ForwardNTK.recording(share_backward=True)`` around
    a Keras-style step: forward, weighted MSE, gradient in the trainable variables."""
    @tf.function
    def run(x, y, w, u):
        fnt = ForwardNTK(model, outputs="full")
        with fnt.recording(share_backward=True):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                loss = tf.reduce_mean(w * tf.square(out - y)) + tf.add_n(model.losses or [0.0])
            tape.gradient(loss, model.trainable_variables)
        return fnt.kernel()[0], fnt.operator()(u), fnt.shares_backward
    u = np.random.default_rng(1).standard_normal(y.shape)
    return run(tf.constant(x, dtype), tf.constant(y, dtype), tf.constant(weights, dtype),
               tf.constant(u)) + (u,)


@pytest.mark.parametrize("zero_weight", [False, True], ids=["divided", "own_backward"])
def test_share_backward_matches_brute_force(zero_weight):
    """c = 1: df/dz from the step's own backward pass (dL/dz over dL/df) gives the brute-force
    kernel; an example with dL/df = 0 (zero sample weight) takes the kernel's own backward."""
    rng = np.random.default_rng(5)
    model = mlp(1)
    x = rng.standard_normal((9, 4)).astype("float32")
    y = rng.standard_normal((9, 1)).astype("float32")
    w = np.ones((9, 1), np.float32)
    if zero_weight:
        w[4] = 0.0
    K, Ku, shared, u = _shared_kernel(model, x, y, w)
    assert bool(shared)
    J = brute_jacobian(model, x)
    expected = J @ J.T
    assert np.all(np.isfinite(K.numpy()))
    assert rel(K.numpy(), expected) < 1e-5
    assert rel(Ku.numpy(), expected @ u) < 1e-5


def test_share_backward_off_with_activity_loss_or_several_outputs():
    """A loss on the activations (activity regularizer) or c > 1: not shared, still exact."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 4)).astype("float32")
    reg = keras.Sequential([keras.Input((4,)),
                            keras.layers.Dense(6, activation="tanh",
                                               activity_regularizer=keras.regularizers.L2(0.3)),
                            keras.layers.Dense(1)])
    for model, c in ((reg, 1), (mlp(2), 2)):
        y = rng.standard_normal((7, c)).astype("float32")
        K, Ku, shared, u = _shared_kernel(model, x, y, np.ones((7, 1), np.float32))
        assert not bool(shared)
        J = brute_jacobian(model, x)
        assert rel(K.numpy(), J @ J.T) < 1e-5
        assert rel(Ku.numpy(), (J @ J.T @ u.reshape(-1)).reshape(u.shape)) < 1e-5
