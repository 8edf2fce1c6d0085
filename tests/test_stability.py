"""Critical learning rate and sharpness for any loss and supported optimizer, against brute
force: float64 models, the full Jacobian of the batched function (tf.GradientTape.jacobian), the
loss Hessian in the outputs as a dense matrix, the preconditioner rebuilt from the optimizer's
variables by name, and numpy.linalg.eigvalsh."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerntk import spectral
from kerntk.spectral import stability


@pytest.fixture(autouse=True)
def float64():
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


def _flat_jacobian(model, x, training):
    """(n c, P) Jacobian of the batched function's outputs (all of them, flattened)."""
    tv = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=training) if training is not None else model(x)
        out = tf.concat([tf.reshape(o, (x.shape[0], -1)) for o in tf.nest.flatten(out)], 1)
        flat = tf.reshape(out, [-1])
    jac = tape.jacobian(flat, tv, experimental_use_pfor=False,
                        unconnected_gradients="zero")
    return np.concatenate([np.reshape(j.numpy(), (flat.shape[0], -1)) for j in jac], 1), out


def _output_hessian(loss_fn, y, out):
    """Dense (n c, n c) Hessian of loss_fn(y, f) in the flattened outputs f."""
    f = tf.Variable(out)
    with tf.GradientTape() as t2:
        with tf.GradientTape() as t1:
            L = loss_fn(y, f)
        g = tf.reshape(t1.gradient(L, f), [-1])
    return np.reshape(t2.jacobian(g, f).numpy(), (g.shape[0], g.shape[0]))


def _gn_top(model, x, y, loss_fn, training=None, inv_p=None):
    J, out = _flat_jacobian(model, tf.constant(x), training)
    H = _output_hessian(loss_fn, y, out)
    G = J.T @ H @ J
    if inv_p is not None:
        s = np.sqrt(inv_p)
        G = s[:, None] * G * s[None, :]
    return np.linalg.eigvalsh(0.5 * (G + G.T))[-1]


def _data(n=12, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d))


def _mlp(c, d=5, final=None, width=16):
    return keras.Sequential([keras.Input((d,)), keras.layers.Dense(width, activation="tanh"),
                             keras.layers.Dense(c, activation=final)])


@pytest.mark.parametrize("case", ["softmax_ce", "sparse_ce_logits", "binary_ce_logits", "huber"])
def test_gauss_newton_any_loss_matches_brute_force(case):
    x = _data()
    rng = np.random.default_rng(1)
    if case == "softmax_ce":
        model, loss = _mlp(3, final="softmax"), keras.losses.CategoricalCrossentropy()
        y = np.eye(3)[rng.integers(0, 3, 12)]
        plain = lambda yt, f: tf.reduce_mean(keras.losses.categorical_crossentropy(yt, f))
    elif case == "sparse_ce_logits":
        model = _mlp(4)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        y = rng.integers(0, 4, 12)
        plain = lambda yt, f: tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(yt, f, from_logits=True))
    elif case == "binary_ce_logits":
        model = _mlp(1)
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        y = rng.integers(0, 2, (12, 1)).astype("float64")
        plain = lambda yt, f: tf.reduce_mean(
            keras.losses.binary_crossentropy(yt, f, from_logits=True))
    else:
        model, loss = _mlp(2), keras.losses.Huber(delta=0.5)
        y = rng.standard_normal((12, 2))
        plain = lambda yt, f: tf.reduce_mean(keras.losses.huber(yt, f, delta=0.5))
    model.compile(keras.optimizers.SGD(0.1), loss=loss)
    expected = _gn_top(model, x, y, plain)
    got = spectral.sharpness(model, x, y, loss=None, optimizer=model.optimizer)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    eta = spectral.critical_lr(model, x, y, loss=loss, optimizer=model.optimizer)
    np.testing.assert_allclose(eta, 2.0 / expected, rtol=1e-9)
    # The Lanczos route on the Gauss-Newton operator agrees.
    lanczos = spectral.sharpness(model, x, y, loss=loss, estimate="gauss_newton",
                                 matrix_free=True, tol=1e-10)
    np.testing.assert_allclose(lanczos, expected, rtol=1e-7)


def test_gauss_newton_of_a_loss_with_indefinite_output_hessian():
    # l(f) = f_0^2 - 0.3 f_1^2 + (f_0 - y)^2 f_1: indefinite in the outputs; the nonzero
    # eigenvalues of J^T H J come from K^{1/2} H K^{1/2}.
    x, y = _data(), np.random.default_rng(10).standard_normal((12, 1))

    def odd(yt, f):
        return tf.reduce_mean(f[:, 0] ** 2 - 0.3 * f[:, 1] ** 2 + (f[:, 0] - yt[:, 0]) ** 2
                              * f[:, 1])

    model = _mlp(2)
    expected = _gn_top(model, x, y, odd)
    got = spectral.sharpness(model, x, y, loss=odd, estimate="gauss_newton")
    np.testing.assert_allclose(got, max(expected, 0.0), rtol=1e-8, atol=1e-12)


def test_gauss_newton_equals_hessian_for_a_linear_model_with_cross_entropy():
    # Logits linear in the weights: the loss Hessian is exactly its Gauss-Newton part.
    x, y = _data(), np.random.default_rng(2).integers(0, 3, 12)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gn = spectral.sharpness(model, x, y, loss=loss, estimate="gauss_newton")
    h = spectral.sharpness(model, x, y, loss=loss, estimate="hessian", tol=1e-10)
    np.testing.assert_allclose(gn, h, rtol=1e-7)


def test_multi_output_compiled_loss_with_weights():
    x = _data()
    rng = np.random.default_rng(3)
    inp = keras.Input((5,))
    h = keras.layers.Dense(16, activation="tanh")(inp)
    a, b = keras.layers.Dense(2, name="a")(h), keras.layers.Dense(3, name="b")(h)
    model = keras.Model(inp, [a, b])
    model.compile(keras.optimizers.SGD(0.01), loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    ya, yb = rng.standard_normal((12, 2)), rng.standard_normal((12, 3))
    model.fit(x, [ya, yb], epochs=1, verbose=0)  # Keras builds its per-output losses

    def plain(_, f):
        return (tf.reduce_mean((f[:, :2] - ya) ** 2) + 0.5 * tf.reduce_mean((f[:, 2:] - yb) ** 2))

    expected = _gn_top(model, x, None, plain)
    got = spectral.sharpness(model, x, [ya, yb], loss=None, optimizer=model.optimizer)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_single_output_loss_list():
    x, y = _data(), np.random.default_rng(4).standard_normal((12, 2))
    model = _mlp(2)
    model.compile(keras.optimizers.SGD(0.01), loss=["mse"])
    expected = _gn_top(model, x, y, lambda yt, f: tf.reduce_mean((f - yt) ** 2))
    np.testing.assert_allclose(spectral.sharpness(model, x, y, loss=None), expected, rtol=1e-9)


def test_batchnorm_training_mode_uses_the_batch_jacobian():
    x, y = _data(16), np.random.default_rng(5).standard_normal((16, 1))
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16),
                              keras.layers.BatchNormalization(), keras.layers.Activation("tanh"),
                              keras.layers.Dense(1)])
    mse = lambda yt, f: tf.reduce_mean((f - yt) ** 2)
    expected = _gn_top(model, x, y, mse, training=True)
    inference = _gn_top(model, x, y, mse, training=False)
    assert abs(expected - inference) > 0.05 * expected  # the two modes differ here
    got = spectral.sharpness(model, x, y, loss="mse")  # default: the mode fit trains
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    got_gn = spectral.sharpness(model, x, y, loss="mse", estimate="gauss_newton")
    np.testing.assert_allclose(got_gn, expected, rtol=1e-8)


def test_tied_weights_and_subclassed_without_training():
    x, y = _data(), np.random.default_rng(6).standard_normal((12, 5))

    class Tied(keras.Model):
        def __init__(self):
            super().__init__()
            self.enc = keras.layers.Dense(8, activation="tanh")

        def call(self, inputs):  # no `training` argument; decoder = transpose of the encoder
            return tf.matmul(self.enc(inputs), self.enc.kernel, transpose_b=True)

    model = Tied()
    model(x[:1])
    mse = lambda yt, f: tf.reduce_mean((f - yt) ** 2)
    expected = _gn_top(model, x, y, mse)
    np.testing.assert_allclose(spectral.sharpness(model, x, y, loss="mse"), expected, rtol=1e-9)
    np.testing.assert_allclose(spectral.critical_lr(model, x, y, loss="mse"), 2 / expected,
                               rtol=1e-9)


def _state(opt, variable, slot):
    """An optimizer slot found by its variable name (independent of the engine's lookup)."""
    name = f"{variable.path.replace('/', '_')}_{slot}"
    matches = [v for v in opt.variables if v.name == name]
    assert len(matches) == 1, [v.name for v in opt.variables]
    return matches[0].numpy()


@pytest.mark.parametrize("kind", ["sgd_momentum", "nesterov", "adam", "rmsprop", "adamw"])
def test_optimizer_rules_against_brute_force(kind):
    x, y = _data(), np.random.default_rng(7).standard_normal((12, 1))
    model = _mlp(1)
    opt = {"sgd_momentum": keras.optimizers.SGD(0.01, momentum=0.9),
           "nesterov": keras.optimizers.SGD(0.01, momentum=0.5, nesterov=True),
           "adam": keras.optimizers.Adam(1e-3),
           "adamw": keras.optimizers.AdamW(1e-3),
           "rmsprop": keras.optimizers.RMSprop(1e-3, momentum=0.3)}[kind]
    model.compile(opt, loss="mse")
    model.fit(x, y, batch_size=12, epochs=3, verbose=0)
    inv_p = None
    if kind in ("adam", "adamw"):
        t = int(opt.iterations.numpy())
        inv_p = np.concatenate([
            (np.sqrt(1 - opt.beta_2 ** t) / (np.sqrt(_state(opt, v, "velocity")) + opt.epsilon))
            .ravel() for v in model.trainable_variables])
        coefficient = (2 + 2 * opt.beta_1) / (1 - opt.beta_1)
    elif kind == "rmsprop":
        inv_p = np.concatenate([(1 / np.sqrt(_state(opt, v, "velocity") + opt.epsilon)).ravel()
                                for v in model.trainable_variables])
        coefficient = 2 * 1.3
    elif kind == "nesterov":
        coefficient = 2 * 1.5 / 2.0
    else:
        coefficient = 2 * 1.9
    expected = _gn_top(model, x, y, lambda yt, f: tf.reduce_mean((f - yt) ** 2), inv_p=inv_p)
    got = spectral.sharpness(model, x, y, loss="mse", optimizer=opt)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    eta = spectral.critical_lr(model, x, y, loss="mse", optimizer=opt)
    np.testing.assert_allclose(eta, coefficient / expected, rtol=1e-8)
    if inv_p is not None:  # the exact Hessian route takes the same metric
        h = spectral.sharpness(model, x, y, loss="mse", optimizer=opt, estimate="hessian",
                               tol=1e-10)
        assert h > 0 and abs(h - expected) < 0.5 * expected  # H_L vs its GN part: same scale


def test_adam_rule_predicts_divergence_of_frozen_preconditioner_dynamics():
    # A linear model with MSE: H_L is constant, so Adam with its preconditioner frozen is a
    # linear recursion whose stability edge is exactly eta_crit.
    x, y = _data(20, 4), np.random.default_rng(8).standard_normal((20, 1))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-2, beta_1=0.9)
    model.compile(opt, loss="mse")
    model.fit(x, y, batch_size=20, epochs=5, verbose=0)
    eta_crit = spectral.critical_lr(model, x, y, loss="mse", optimizer=opt)
    inv_p = np.concatenate([(np.sqrt(1 - opt.beta_2 ** int(opt.iterations.numpy()))
                             / (np.sqrt(_state(opt, v, "velocity")) + opt.epsilon)).ravel()
                            for v in model.trainable_variables])
    X = np.concatenate([x, np.ones((20, 1))], 1)  # kernel rows then bias
    H = 2.0 / 20 * X.T @ X

    def final_distance(eta, steps=3000):
        w, m, b1 = np.ones(5), np.zeros(5), opt.beta_1
        with np.errstate(over="ignore", invalid="ignore"):
            return _iterate(w, m, b1, eta, steps)

    def _iterate(w, m, b1, eta, steps):
        for _ in range(steps):
            m = b1 * m + (1 - b1) * (H @ w)  # gradient of the quadratic about its minimum
            w = w - eta * inv_p * m
        return np.linalg.norm(w)

    assert final_distance(0.97 * eta_crit) < 1.0
    above = final_distance(1.03 * eta_crit)
    assert not above < 1e3  # grows without bound (overflows to nan/inf on the way)


def test_unsupported_optimizer_and_loss_are_clear_errors():
    x, y = _data(), np.random.default_rng(9).standard_normal((12, 1))
    model = _mlp(1)
    with pytest.raises(ValueError, match="No stability rule for Adagrad; supported: SGD"):
        spectral.critical_lr(model, x, y, optimizer=keras.optimizers.Adagrad())
    with pytest.raises(ValueError, match="no curvature"):
        spectral.critical_lr(model, x, y, loss="mae")
    fresh = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="after its first update"):
        spectral.critical_lr(model, x, y, optimizer=fresh)
    with pytest.raises(ValueError, match="needs the targets"):
        spectral.critical_lr(model, x, loss="binary_crossentropy")


def test_rules_table():
    assert stability.stability_rule().coefficient == 2.0
    assert stability.stability_rule(momentum=0.9).coefficient == pytest.approx(3.8)
    rule = stability.stability_rule(keras.optimizers.Adam(beta_1=0.9))
    assert rule.preconditioned and rule.coefficient == pytest.approx(38.0)
    assert rule.threshold(0.01) == pytest.approx(3800.0)
    assert rule.critical_lr(0.0) == float("inf")
