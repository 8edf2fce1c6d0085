"""CriticalLRMonitor on the setups Keras users train (issue 11): any loss through the
Gauss-Newton matrix, adaptive optimizers with their own stability rule, BatchNorm in training
mode, several outputs; each logged value against the brute-force computation of
tests/test_stability.py at the weights the measured step started from."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerntk.callbacks import CriticalLRMonitor
from tests.test_stability import _gn_top, float64  # noqa: F401  (fixture)


def _twin(build, optimizer):
    """Two identically initialized compiled models."""
    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model, loss = build()
        model.compile(optimizer(), loss=loss)
        models.append(model)
    return models


def _mlp(c, final=None, bn=False):
    layers = [keras.Input((5,)), keras.layers.Dense(16)]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.Activation("tanh"), keras.layers.Dense(c, activation=final)]
    return keras.Sequential(layers)


CASES = {
    "sparse_ce_logits_sgd": (
        lambda: (_mlp(4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda rng: rng.integers(0, 4, 16),
        lambda yt, f: tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            yt, f, from_logits=True)), 2 * 1.9, None),
    "softmax_ce_adam": (
        lambda: (_mlp(3, "softmax"), "categorical_crossentropy"),
        lambda: keras.optimizers.Adam(1e-3),
        lambda rng: np.eye(3)[rng.integers(0, 3, 16)],
        lambda yt, f: tf.reduce_mean(keras.losses.categorical_crossentropy(yt, f)),
        (2 + 1.8) / 0.1, None),
    "batchnorm_mse_sgd": (
        lambda: (_mlp(1, bn=True), "mse"),
        lambda: keras.optimizers.SGD(0.01),
        lambda rng: rng.standard_normal((16, 1)),
        lambda yt, f: tf.reduce_mean((f - yt) ** 2), 2.0, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_monitor_matches_brute_force(case):
    build, optimizer, targets, plain, coefficient, training = CASES[case]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 5)), targets(rng)
    monitored, reference = _twin(build, optimizer)
    monitor = CriticalLRMonitor()
    monitored.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[monitor])
    reference.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # now at w_1
    inv_p = None
    if isinstance(reference.optimizer, keras.optimizers.Adam):
        opt = reference.optimizer
        t = int(opt.iterations.numpy())
        inv_p = np.concatenate([
            (np.sqrt(1 - opt.beta_2 ** t) / (np.sqrt(
                [s for s in opt.variables if s.name == f"{v.path.replace('/', '_')}_velocity"
                 ][0].numpy()) + opt.epsilon)).ravel() for v in reference.trainable_variables])
        assert np.isnan(monitor.history["eta_crit"][0])  # no preconditioner before step 1
    expected = _gn_top(reference, x, y, plain, training=training, inv_p=inv_p)
    assert monitor.history["step"][:3] == [0, 1, 2]
    np.testing.assert_allclose(monitor.history["sharpness"][1], expected, rtol=1e-7)
    np.testing.assert_allclose(monitor.history["eta_crit"][1], coefficient / expected, rtol=1e-7)
    eta = float(monitored.optimizer.learning_rate.numpy())
    np.testing.assert_allclose(monitor.history["sharpness_threshold"][1], coefficient / eta)
    # Training is the same with the monitor attached (float64 round-off).
    plain_model = _twin(build, optimizer)[0]
    plain_model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(monitored.weights, plain_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


def test_monitor_on_a_multi_output_model():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 5))
    ya, yb = rng.standard_normal((16, 2)), rng.integers(0, 3, 16)

    def build():
        inp = keras.Input((5,))
        h = keras.layers.Dense(16, activation="tanh")(inp)
        return keras.Model(inp, [keras.layers.Dense(2)(h), keras.layers.Dense(3)(h)])

    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        m = build()
        m.compile(keras.optimizers.SGD(0.01), loss=[
            "mse", keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
            loss_weights=[1.0, 0.3])
        models.append(m)
    monitor = CriticalLRMonitor()
    models[0].fit(x, [ya, yb], batch_size=16, epochs=2, shuffle=False, verbose=0,
                  callbacks=[monitor])

    def plain(_, f):
        return (tf.reduce_mean((f[:, :2] - ya) ** 2) + 0.3 * tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(yb, f[:, 2:], from_logits=True)))

    expected = _gn_top(models[1], x, None, plain)  # w_0
    np.testing.assert_allclose(monitor.history["sharpness"][0], expected, rtol=1e-7)


def _regression(n=32, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.standard_normal((n, 1))


def test_a_nan_input_row_gives_nan_not_a_crash_and_the_guard_skips_it():
    from kerntk.callbacks import DivergenceGuard
    x, y = _regression()
    x[20, 1] = np.nan  # in the second batch of 16
    for guarded in (False, True):
        keras.utils.set_random_seed(0)
        model = _mlp(1)
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
        monitor = CriticalLRMonitor()
        callbacks = [monitor] + ([DivergenceGuard()] if guarded else [])
        with pytest.warns(RuntimeWarning) if guarded else _nothing():
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                      callbacks=callbacks)
        eta = np.asarray(monitor.history["eta_crit"])
        assert np.isfinite(eta[0]) and np.isnan(eta[1])  # the NaN batch: NaN, no error
        weights_finite = all(np.all(np.isfinite(w)) for w in model.get_weights())
        assert weights_finite == guarded  # without a guard the update spread the NaN
        if guarded:  # each epoch's NaN batch cost one skipped step; the others measure
            assert np.isfinite(eta[2]) and np.isnan(eta[3])
            assert len(callbacks[1].skipped) == 2


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_subclass_of_ntkdense_overriding_call_trains_and_measures_its_own_call():
    from kerntk.layers import NTKDense

    class Twice(NTKDense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    x, y = _regression()

    def build():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), Twice(16, activation="tanh"), NTKDense(1)])
        model.compile(keras.optimizers.SGD(0.05), loss="mse")
        return model

    monitored, plain, reference = build(), build(), build()
    monitor = CriticalLRMonitor()
    monitored.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(monitored.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    expected = _gn_top(reference, x, y, lambda yt, f: tf.reduce_mean((f - yt) ** 2))
    np.testing.assert_allclose(monitor.history["sharpness"][0], expected, rtol=1e-8)


def test_a_tied_weight_autoencoder_under_the_monitor():
    x, _ = _regression()

    class Tied(keras.Model):
        def __init__(self):
            super().__init__()
            self.enc = keras.layers.Dense(8, activation="tanh")

        def call(self, inputs):
            return tf.matmul(self.enc(inputs), self.enc.kernel, transpose_b=True)

    def build():
        keras.utils.set_random_seed(2)
        model = Tied()
        model(x[:1])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.5), loss="mse")
        return model

    monitored, reference = build(), build()
    monitor = CriticalLRMonitor()
    monitored.fit(x, x, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    expected = _gn_top(reference, x, x, lambda yt, f: tf.reduce_mean((f - yt) ** 2))
    np.testing.assert_allclose(monitor.history["sharpness"][0], expected, rtol=1e-8)
    np.testing.assert_allclose(monitor.history["eta_crit"][0], 2 * 1.5 / expected, rtol=1e-8)


@pytest.mark.parametrize("loss, steps, bound", [("mse", 2, None), ("ce", 4, 1e-3)])
def test_matrix_free_lanczos_tracks_the_dense_sharpness(loss, steps, bound):
    # Warm-started Lanczos against the dense kernel + eigvalsh on the same trajectory (the
    # monitor does not change training). A Ritz value is a lower bound; with the previous
    # Ritz vector as the start the error is quadratic in its angle to the top eigenvector.
    # Measured here: MSE (one output) with 2 steps per measurement starts 8% low and the error
    # falls ~3.5x per step (1e-6 after 10); 3-class cross-entropy (close top eigenvalues, a
    # rotating eigenvector) stays near 1% low with 2 steps and below 1e-4 with 4 (the
    # monitor's default).
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 5))
    y = rng.standard_normal((64, 1)) if loss == "mse" else rng.integers(0, 3, 64)
    runs = {}
    for solver in ("dense", "lanczos"):
        keras.utils.set_random_seed(0)
        model = _mlp(1 if loss == "mse" else 3)
        model.compile(keras.optimizers.SGD(0.05), loss="mse" if loss == "mse" else
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        monitor = CriticalLRMonitor(eigensolver=solver, lanczos_steps=steps)
        model.fit(x, y, batch_size=64, epochs=12, shuffle=False, verbose=0, callbacks=[monitor])
        runs[solver] = monitor.history
    assert not any(runs["dense"]["matrix_free"]) and all(
        v == 1.0 for v in runs["lanczos"]["matrix_free"])
    dense, free = np.asarray(runs["dense"]["sharpness"]), np.asarray(runs["lanczos"]["sharpness"])
    assert np.all(free <= dense * (1 + 1e-9))  # a Ritz value never exceeds lambda_max
    error = (dense - free) / dense
    if bound is None:  # converging: each warm start better than the last
        assert np.all(np.diff(error[1:]) < 0) and error[-1] < 1e-5
    else:
        assert np.all(error[1:] < bound)


def test_total_loss_spikes_over_the_training_set():
    # Thesis Table 4.2 counts increases of the loss over the whole training set. Reference:
    # a replay without the monitor that evaluates the training-set loss before every step.
    keras.config.set_floatx("float32")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((48, 5)).astype("float32")
    y = rng.standard_normal((48, 1)).astype("float32")

    def build():
        keras.utils.set_random_seed(3)
        model = _mlp(1)
        model.compile(keras.optimizers.SGD(0.3, momentum=0.9), loss="mse")
        return model

    class Totals(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_begin(self, batch, logs=None):
            self.values.append(float(np.mean((self.model(x).numpy() - y) ** 2)))

    monitor = CriticalLRMonitor(spike_data=(x, y))
    history = build().fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                          callbacks=[monitor])
    reference = Totals()
    replay = build()
    replay.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[reference])
    totals = reference.values + [float(np.mean((replay(x).numpy() - y) ** 2))]
    np.testing.assert_allclose(monitor.history["total_loss"], totals[:-1], rtol=1e-5)
    spikes = [b > a for a, b in zip(totals, totals[1:])]
    assert monitor.history["total_spike"] == spikes and 0 < sum(spikes) < len(spikes)
    assert history.history["total_loss_spikes"][-1] == sum(spikes)
    events = monitor.history["event"]
    matched = sum(s and e for s, e in zip(spikes, events))
    np.testing.assert_allclose(monitor.history["total_spike_event_match_rate"][-1],
                               matched / sum(spikes))


def test_catapult_raise_under_adam_raises_relative_to_adams_own_critical_rate():
    # Issue 11: under Adam the raise set the rate ~1000x the user's (an SGD eta_crit). It now
    # sets factor x Adam's eta_crit = factor x (2 + 2 b1)/((1 - b1) sharpness), sharpness that
    # of the preconditioned Gauss-Newton matrix.
    from kerntk.callbacks import CatapultRaise
    keras.config.set_floatx("float32")
    x, y = _regression(64, 6)
    keras.utils.set_random_seed(0)
    model = _mlp(1)
    model.compile(keras.optimizers.Adam(1e-4), loss="mse")
    monitor = CriticalLRMonitor()
    raiser = CatapultRaise(monitor, factor=1.2, max_raises=1, cooldown=3, stable_rtol=0.5)
    model.fit(x, y, batch_size=64, epochs=8, shuffle=False, verbose=0,
              callbacks=[monitor, raiser])
    assert len(raiser.raises) == 1
    raised = raiser.raises[0]
    i = monitor.history["eta_crit"].index(raised["eta_crit"])
    sharp = monitor.history["sharpness"][i]
    np.testing.assert_allclose(raised["to"], 1.2 * 38.0 / sharp, rtol=1e-6)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(raised["to"], rel=1e-6)
    assert raised["to"] > 10 * 1.2 * 2.0 / sharp  # not the SGD number 2 / sharpness
