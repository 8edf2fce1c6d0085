"""Callbacks: behaviour on settings where the answer is known (thesis Ch. 3-4)."""

import csv
import math
import os

import keras
import numpy as np
import pytest

import kerntk
from kerntk.callbacks import (AGOPAlignmentLogger, CatapultRaise, CriticalLRMonitor,
                              DivergenceGuard, NTKSpectrumTracker)


def _linear_problem(n=16, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    x64 = x.astype(np.float64)
    return x, y, n / np.linalg.eigvalsh(x64 @ x64.T)[-1]  # n / lambda_max(X X^T)


def _linear_model(d, lr):
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def test_linear_model_eta_crit_and_monotone_descent_below_it():
    x, y, eta_crit = _linear_problem()
    model = _linear_model(x.shape[1], 0.9 * eta_crit)
    monitor = CriticalLRMonitor()
    history = model.fit(x, y, batch_size=len(x), epochs=30, verbose=0, callbacks=[monitor])
    # A linear model's NTK is X X^T at every step: eta_crit is constant and equals the closed form.
    np.testing.assert_allclose(monitor.history["eta_crit"], eta_crit, rtol=1e-6)
    assert np.all(np.diff(monitor.history["monitor_loss"]) < 0)
    assert monitor.counts["catapult_events"] == 0 and monitor.counts["loss_spikes"] == 0
    assert history.history["eta_crit"][-1] == pytest.approx(eta_crit, rel=1e-6)


def test_linear_model_above_eta_crit_diverges_and_the_guard_restores_and_backs_off():
    x, y, eta_crit = _linear_problem()
    model = _linear_model(x.shape[1], 1.1 * eta_crit)
    monitor = CriticalLRMonitor()
    guard = DivergenceGuard(factor=10.0, patience=3, backoff=0.5, max_restores=3)
    model.fit(x, y, batch_size=len(x), epochs=60, verbose=0, callbacks=[monitor, guard])
    losses = monitor.history["loss_after"]
    restore = guard.restores[0]
    assert restore["lr_after"] == pytest.approx(0.5 * 1.1 * eta_crit)
    # The measurements before the restore: every step an event, the loss grew past 10x.
    first = monitor.history["step"].index(0, 1)  # the step labels restart with iterations
    assert all(monitor.history["event"][:first]) and max(losses[:first]) > 10 * losses[0]
    # After it: the monitor keeps measuring, labels equal to optimizer.iterations, below
    # eta_crit (0.55 eta_crit) the loss only decreases.
    after = monitor.history["step"][first:]
    assert after == list(range(len(after)))
    assert not any(monitor.history["event"][first:])
    assert np.all(np.diff(monitor.history["monitor_loss"][first:]) < 0)
    assert len(guard.restores) == 1
    # The restore went back to the start: the first measurement after it is at w_0 again.
    np.testing.assert_allclose(monitor.history["monitor_loss"][first],
                               monitor.history["monitor_loss"][0], rtol=1e-6)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_without_a_guard_the_linear_model_diverges():
    x, y, eta_crit = _linear_problem()
    model = _linear_model(x.shape[1], 1.1 * eta_crit)
    monitor = CriticalLRMonitor()
    model.fit(x, y, batch_size=len(x), epochs=30, verbose=0, callbacks=[monitor])
    # The top eigencomponent grows by |1 - 1.1 * 2|^2 per step and soon dominates the loss.
    losses = monitor.history["loss_after"]
    assert np.all(np.diff(losses[-10:]) > 0) and losses[-1] > 10 * losses[0]


def _sphere(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def test_gd_catapult_lives_in_top_eigenspace_and_lowers_lambda_max():
    x = _sphere(32, 10, 1)
    y = np.sign(x[:, :1]).astype("float32")
    model = kerntk.models.fcn(2, 1024, use_bias=False, input_shape=(10,), seed=0)
    eta0 = kerntk.spectral.critical_lr(model, x)
    model.compile(optimizer=keras.optimizers.SGD(1.7 * eta0), loss="mse")
    tracker = NTKSpectrumTracker(x, y, k=3, top_s=5, every_n_steps=1, every_n_epochs=None)
    monitor = CriticalLRMonitor()
    model.fit(x, y, batch_size=len(x), epochs=40, verbose=0, callbacks=[tracker, monitor])
    h = tracker.history
    total = np.add(h["loss_top"], h["loss_rest"])
    # Loss split sums to Keras' MSE on the probe.
    np.testing.assert_allclose(total[-1], model.evaluate(x, y, verbose=0), rtol=1e-4)
    peak = int(np.argmax(total))
    assert total[peak] > total[0] and total[-1] < total[0]            # catapult: up, then below
    assert h["ntk_lambda_1"][-1] <= 0.8 * h["ntk_lambda_1"][0]          # lambda_max drops >= 20%
    assert h["loss_top"][peak] >= 0.9 * total[peak]                     # spike in top eigenspace
    # The rise from the pre-spike minimum to the peak is carried by L_{<=s}; L_{>s} falls overall.
    start = int(np.argmin(total[:peak + 1]))
    rise_rest = h["loss_rest"][peak] - h["loss_rest"][start]
    assert rise_rest <= 0.1 * (total[peak] - total[start])
    assert h["loss_rest"][-1] < 0.1 * h["loss_rest"][0]
    assert monitor.counts["catapults"] >= 1 and monitor.history["spike_event_match_rate"][-1] == 1


def test_sgd_events_happen_exactly_on_the_scaled_example():
    """Thesis Fig. 4.5: x_*, y_* scaled x2 make eta_crit(x_*) 4x smaller than the others'."""
    n, d = 12, 12
    x = _sphere(n, d, 2)
    y = np.ones((n, 1), "float32")
    star = 5
    x[star] *= 2
    y[star] *= 2
    model = kerntk.models.fcn(2, 1024, use_bias=False, input_shape=(d,), seed=1)
    model.layers[-1].trainable = False  # second layer fixed, as in the thesis
    per_example = [kerntk.spectral.critical_lr(model, x[i:i + 1]) for i in range(n)]
    others = min(e for i, e in enumerate(per_example) if i != star)
    assert per_example[star] < others / 3
    eta = math.sqrt(per_example[star] * others)
    model.compile(optimizer=keras.optimizers.SGD(eta), loss="mse")
    monitor = CriticalLRMonitor()
    model.fit(x, y, batch_size=1, epochs=3, shuffle=False, verbose=0, callbacks=[monitor])
    steps = np.asarray(monitor.history["step"])
    events = steps[np.asarray(monitor.history["event"])]
    assert len(events) >= 1 and np.all(events % n == star)
    assert monitor.history["spike_event_match_rate"][-1] >= 0.9


def test_catapult_raise_gives_repeated_catapults_and_a_rate_that_diverges_from_init():
    x = _sphere(32, 10, 3)
    y = np.sign(x[:, :1] * x[:, 1:2]).astype("float32")
    model = kerntk.models.fcn(2, 1024, use_bias=False, input_shape=(10,), seed=2)
    init = model.get_weights()
    eta0 = kerntk.spectral.critical_lr(model, x)
    model.compile(optimizer=keras.optimizers.SGD(0.5 * eta0), loss="mse")
    monitor = CriticalLRMonitor()
    guard = DivergenceGuard(factor=1e3, patience=10)
    raiser = CatapultRaise(monitor, factor=1.5, max_raises=3, cooldown=5, guard=guard)
    history = model.fit(x, y, batch_size=len(x), epochs=120, verbose=0,
                        callbacks=[monitor, guard, raiser])
    assert len(raiser.raises) >= 2 and monitor.counts["catapults"] >= 2
    assert history.history["lr_raises"][-1] == len(raiser.raises)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    loss = monitor.history["loss_after"]
    assert np.isfinite(loss[-1]) and loss[-1] < monitor.history["monitor_loss"][0]
    # The raised rate is one that plain GD from the same initialization does not survive: the
    # raises reached it through catapults that flattened the net. (How far the loss has come down
    # by the last epoch depends on the draw: one run may still be in a catapult, another at the
    # edge of stability, so it is not asserted beyond "below the start".)
    final_lr = float(model.optimizer.learning_rate.numpy())
    assert final_lr > eta0
    plain = kerntk.models.fcn(2, 1024, use_bias=False, input_shape=(10,), seed=2)
    plain.set_weights(init)
    plain.compile(optimizer=keras.optimizers.SGD(final_lr), loss="mse")
    plain_loss = plain.fit(x, y, batch_size=len(x), epochs=60, verbose=0).history["loss"]
    assert not np.isfinite(plain_loss[-1]) or max(plain_loss) > 1e3 * plain_loss[0], plain_loss


def test_agop_alignment_is_one_for_the_target_itself_and_grows_when_learning_x1x2():
    rng = np.random.default_rng(4)
    d = 5
    x = rng.standard_normal((512, d)).astype("float32")
    y = (x[:, 0] * x[:, 1])[:, None]
    G_star = np.diag([1.0, 1.0, 0, 0, 0])  # E[grad grad^T] of x1 x2 on N(0, I)
    model = kerntk.models.fcn(2, 256, input_shape=(d,), W_std=math.sqrt(2), b_std=0.1, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    same = AGOPAlignmentLogger(x[:64], reference=model)
    target = AGOPAlignmentLogger(x[:256], reference=G_star, metrics=("cosine", "pearson"))
    model.fit(x, y, batch_size=128, epochs=40, verbose=0, callbacks=[same, target])
    np.testing.assert_allclose(same.history["agop_alignment"][0], 1.0, atol=1e-12)
    a = target.history["agop_alignment"]
    assert a[-1] > a[0] + 0.2 and a[-1] > 0.8


def test_logs_reach_history_csvlogger_and_work_with_validation_and_steps_per_execution(
        tmp_path):
    x = _sphere(24, 6, 5)
    y = x[:, :1].copy()
    model = kerntk.models.fcn(2, 64, input_shape=(6,), seed=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=2)
    csv_path = os.path.join(str(tmp_path), "log.csv")
    tracker = NTKSpectrumTracker(x[:8], y[:8], k=2, top_s=2)
    monitor = CriticalLRMonitor()
    history = model.fit(x, y, batch_size=6, epochs=2, verbose=0, validation_data=(x, y),
                        callbacks=[tracker, monitor, keras.callbacks.CSVLogger(csv_path)])
    for key in ("ntk_lambda_1", "ntk_drift", "loss_top", "eta_crit", "catapult_events",
                "val_loss"):
        assert key in history.history and np.all(np.isfinite(history.history[key])), key
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "eta_crit" in rows[0] and "ntk_lambda_1" in rows[0]
    # 4 batches per epoch, hooks every 2 steps: the tracker measures at the hooks, the monitor
    # (in the train step) every step.
    assert monitor.history["step"] == list(range(8))
    assert tracker.history["step"] == [0, 4, 8]
    # The monitor leaves the model as it found it.
    assert "train_step" not in model.__dict__
    model.fit(x, y, batch_size=6, epochs=1, verbose=0)


def test_learning_rate_schedule_is_rejected_by_raise_policy_but_fine_for_monitoring():
    x, y, _ = _linear_problem()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    monitor = CriticalLRMonitor()
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[monitor, CatapultRaise(monitor)])
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0, callbacks=[monitor])
    assert monitor.history["eta"][1] < monitor.history["eta"][0]  # the schedule's own decay


def test_momentum_threshold_is_scaled_by_one_plus_beta():
    x, y, eta_crit = _linear_problem()
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    monitor = CriticalLRMonitor()
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.history["eta_crit"][0] == pytest.approx(1.9 * eta_crit, rel=1e-6)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    x = _sphere(8, 4, 6)
    model = kerntk.models.fcn(2, 32, input_shape=(4,), seed=5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    cbs = [NTKSpectrumTracker(x, x[:, :1], k=2, top_s=2), CriticalLRMonitor(),
           AGOPAlignmentLogger(x, reference=np.eye(4))]
    model.fit(x, x[:, :1], batch_size=8, epochs=2, verbose=0, callbacks=cbs)
    for i, cb in enumerate(cbs):
        path = os.path.join(str(tmp_path), f"{i}.png")
        cb.plot(path)
        assert os.path.getsize(path) > 1000


@pytest.mark.parametrize("make", [
    lambda: NTKSpectrumTracker(np.zeros((0, 3))),
    lambda: NTKSpectrumTracker(np.full((4, 3), np.nan)),
    lambda: NTKSpectrumTracker(np.zeros((4, 3)), k=5),
    lambda: NTKSpectrumTracker(np.zeros((4, 3)), np.zeros((3, 1))),
    lambda: NTKSpectrumTracker(np.zeros((4, 3)), every_n_steps=0),
    lambda: CriticalLRMonitor(estimate="magic"),
    lambda: CriticalLRMonitor(probe=np.zeros((4, 3))),
    lambda: CriticalLRMonitor(backoff=1.5),  # moved to DivergenceGuard: says so
    lambda: CatapultRaise(CriticalLRMonitor(), factor=0.9),
    lambda: CatapultRaise(None),
    lambda: AGOPAlignmentLogger(np.zeros((4, 3)), reference=np.eye(2)),
    lambda: AGOPAlignmentLogger(np.zeros((4, 3)), reference=np.eye(3), metrics=("l2",)),
])
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_agop_logger_matches_the_matrix_alignment_for_low_rank_and_full_rank_references():
    rng = np.random.default_rng(7)
    d = 6
    x = rng.standard_normal((40, d)).astype("float32")
    model = kerntk.models.fcn(2, 32, out_dim=2, input_shape=(d,), seed=6)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    u = rng.standard_normal((d, 2))
    references = [u @ u.T, np.cov(rng.standard_normal((d, 50)))]
    loggers = [AGOPAlignmentLogger(x, reference=G, metrics=("cosine", "pearson"))
               for G in references]
    model.fit(x, x[:, :2], epochs=2, verbose=0, callbacks=loggers)
    G = kerntk.agop.agop(model, x)  # the d x d matrix, no factors
    for G_star, logger in zip(references, loggers):
        for metric, key in (("cosine", "agop_alignment"), ("pearson", "agop_alignment_pearson")):
            expected = kerntk.agop.alignment(G, G_star, metric=metric)
            assert logger.history[key][-1] == pytest.approx(expected, rel=1e-6)  # float32 grads


def _replay(model, x, y, batch_size, lr, steps, probe=None):
    """Independent reference: the same SGD steps one ``train_on_batch`` at a time, measuring
    ``eta_crit`` of each batch (or of ``probe``) with the host engine (brute-force eigenvalues)
    and its loss before/after the step with ``predict``."""
    out = {"eta_crit": [], "monitor_loss": [], "loss_after": []}
    batches = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    for t in range(steps):
        xb, yb = batches[t % len(batches)]
        xm, ym = probe if probe is not None else (xb, yb)
        K = kerntk.ntk.empirical_ntk(model, xm, outputs="full", method="jacobian")
        out["eta_crit"].append(len(xm) / np.linalg.eigvalsh(K)[-1])
        loss = lambda: float(np.mean((model.predict(xm, verbose=0).astype(np.float64) - ym) ** 2))
        out["monitor_loss"].append(loss())
        model.train_on_batch(xb, yb)
        out["loss_after"].append(loss())
    return out


@pytest.mark.parametrize("method,every,spe", [("auto", 1, 1), ("auto", 2, 3),
                                              ("jacobian", 1, 2), ("jacobian", 3, 1)])
def test_monitor_matches_a_step_by_step_replay(method, every, spe):
    # n = 20, batch 8: batches of 8, 8 and 4 (the train step sees an unknown batch size).
    x = _sphere(20, 5, 11)
    y = np.sin(3 * x[:, :1]).astype("float32")
    lr, epochs = 0.3, 2

    def model():
        m = kerntk.models.fcn(2, 48, input_shape=(5,), seed=2)
        m.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", steps_per_execution=spe)
        return m

    monitor = CriticalLRMonitor(method=method, every_n_steps=every)
    model().fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=[monitor])
    reference = _replay(model(), x, y, 8, lr, 3 * epochs)
    steps = [t for t in range(3 * epochs) if t % every == 0]
    assert monitor.history["step"] == steps
    for key in reference:
        np.testing.assert_allclose(monitor.history[key], [reference[key][t] for t in steps],
                                   rtol=2e-5, err_msg=key)


class _BatchCenter(keras.layers.Layer):
    """Couples the examples of a batch in inference mode (no ``training`` argument)."""

    def call(self, x):
        return x - keras.ops.mean(x, axis=0, keepdims=True)


@pytest.mark.parametrize("method,every,resume", [("auto", 1, False), ("jacobian", 1, False),
                                                 ("auto", 2, True)])
def test_monitor_rejects_a_model_that_couples_the_batch(method, every, resume):
    model = keras.Sequential([keras.Input((4,)), _BatchCenter(name="center"),
                              kerntk.layers.NTKDense(16, activation="relu"),
                              kerntk.layers.NTKDense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    if resume:  # the monitored fit starts at step 1: its first measured step is 2
        model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="independent examples"):
        model.fit(x, x[:, :1], batch_size=8, epochs=3, verbose=0,
                  callbacks=[CriticalLRMonitor(method=method, every_n_steps=every)])
    assert "train_step" not in model.__dict__  # the hook was removed on the error


def _replay_setting(spe):
    x = _sphere(20, 5, 11)
    y = np.sin(3 * x[:, :1]).astype("float32")

    def model():
        m = kerntk.models.fcn(2, 48, input_shape=(5,), seed=2)
        m.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse", steps_per_execution=spe)
        return m

    return x, y, model


def test_monitor_on_a_fixed_probe_matches_the_replay():
    x, y, model = _replay_setting(1)
    probe = (_sphere(6, 5, 12), _sphere(6, 5, 13)[:, :1])
    monitor = CriticalLRMonitor(probe=probe)
    model().fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    reference = _replay(model(), x, y, 8, 0.3, 6, probe=probe)
    for key in reference:
        np.testing.assert_allclose(monitor.history[key], reference[key], rtol=2e-5, err_msg=key)


@pytest.mark.parametrize("spe", [1, 2])
def test_gauss_newton_estimate_equals_the_ntk_one_for_mse(spe):
    # For Keras MSE the Gauss-Newton matrix is (2 / (n c)) J^T J: 2 / lambda_max(GN) is
    # n c / lambda_max(K). Both are measured inside the step, so every step of a
    # steps_per_execution block is measured.
    x, y, model = _replay_setting(spe)
    monitor = CriticalLRMonitor(estimate="gauss_newton")
    model().fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    reference = _replay(model(), x, y, 8, 0.3, 6)
    steps = [0, 1, 2, 3, 4, 5]
    assert monitor.history["step"] == steps
    for key in reference:
        np.testing.assert_allclose(monitor.history[key], [reference[key][t] for t in steps],
                                   rtol=1e-4, err_msg=key)


class _Interrupt(Exception):
    pass


class _RaiseAtStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise _Interrupt()


def test_a_fit_interrupted_by_another_callback_leaves_no_double_hook():
    # Keras skips on_train_end when fit raises: the next fit, plain or monitored, removes the
    # stale wrapper (issue 11: a plain fit kept running the measurement).
    x, y, make = _replay_setting(1)
    model = make()
    with pytest.raises(_Interrupt):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[CriticalLRMonitor(), _RaiseAtStep()])
    assert "train_step" in model.__dict__  # the stale wrapper
    plain = make()
    plain.set_weights(model.get_weights())
    hist = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # no callback
    ref = plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert "train_step" not in model.__dict__  # the plain fit removed the stale hook...
    np.testing.assert_allclose(hist.history["loss"], ref.history["loss"], rtol=1e-6)
    for a, b in zip(model.get_weights(), plain.get_weights()):  # ...and trained as plain Keras
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(_Interrupt):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[CriticalLRMonitor(), _RaiseAtStep()])
    monitor = CriticalLRMonitor()
    start = int(model.optimizer.iterations)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    # One record per step: not wrapped twice.
    assert monitor.history["step"] == [start, start + 1, start + 2]
    assert "train_step" not in model.__dict__


def test_two_monitors_in_one_fit_compose_and_both_record_every_step():
    # Issue 11: the second monitor removed the first's hook as if stale; the first recorded
    # nothing. In-step callbacks of one fit now compose (one runs inside the other's step).
    x, y, make = _replay_setting(1)
    model = make()
    first, second = CriticalLRMonitor(), CriticalLRMonitor()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[first, second])
    assert first.history["step"] == second.history["step"] == list(range(6))
    # The inner one shares Keras' forward pass, the outer one runs its own NTK pass.
    np.testing.assert_allclose(first.history["eta_crit"], second.history["eta_crit"], rtol=1e-5)
    np.testing.assert_allclose(first.history["monitor_loss"], second.history["monitor_loss"],
                               rtol=1e-6)
    assert "train_step" not in model.__dict__ and "make_train_function" not in model.__dict__


def test_two_monitors_keep_a_users_own_step_and_an_errored_fit_leaves_it():
    x, y, make = _replay_setting(1)
    model = make()
    calls = []

    def own_step(data):  # a user's instance-level override, kept by the hooks
        calls.append(1)
        return type(model).train_step(model, data)

    model.train_step = own_step
    first, second = CriticalLRMonitor(), CriticalLRMonitor()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[first, second])
    assert calls and first.history["step"] == second.history["step"] == [0, 1, 2]
    assert model.__dict__["train_step"] is own_step
    with pytest.raises(_Interrupt):  # Keras skips on_train_end: both hooks are left behind
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[CriticalLRMonitor(), CriticalLRMonitor(), _RaiseAtStep()])
    assert model.__dict__["train_step"] is not own_step
    plain = make()
    plain.set_weights(model.get_weights())
    plain.optimizer.iterations.assign(model.optimizer.iterations)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # removes both
    plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.__dict__["train_step"] is own_step
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _TwoPassModel(keras.Sequential):
    """A custom train step that calls the model twice (the loss of the mean of two passes)."""

    def train_step(self, data):
        import tensorflow as tf

        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            pred = (self(x, training=True) + self(x, training=True)) / 2
            loss = keras.ops.mean((pred - y) ** 2)
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": loss}


def test_monitor_with_a_custom_train_step_matches_the_replay():
    # The NTK cannot share a custom step's forward passes: the separate in-graph NTK is used.
    x, y, _ = _replay_setting(1)

    def model():
        m = _TwoPassModel([keras.Input((5,)), kerntk.layers.NTKDense(32, activation="relu"),
                           kerntk.layers.NTKDense(1)], name="two_pass")
        m.set_weights([np.random.default_rng(i).standard_normal(w.shape).astype("float32")
                       for i, w in enumerate(m.get_weights())])
        m.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse")
        return m

    monitor = CriticalLRMonitor()
    model().fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    reference = _replay(model(), x, y, 8, 0.3, 6)
    for key in reference:
        np.testing.assert_allclose(monitor.history[key], reference[key], rtol=2e-5, err_msg=key)


@pytest.mark.parametrize("every", [1, 2])
def test_monitor_keeps_xla_jit_compile_and_matches_the_replay(every):
    # estimate="ntk" records scalars through a device-side buffer: no host callback in the step.
    x, y, _ = _replay_setting(1)

    def model(jit):
        m = kerntk.models.fcn(2, 48, input_shape=(5,), seed=2)
        m.compile(optimizer=keras.optimizers.SGD(0.3), loss="mse", jit_compile=jit,
                  steps_per_execution=2)
        return m

    class JitSeen(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.jit = self.model.jit_compile

    monitor, seen = CriticalLRMonitor(every_n_steps=every), JitSeen()
    model(True).fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                    callbacks=[monitor, seen])
    assert seen.jit is True
    reference = _replay(model(False), x, y, 8, 0.3, 6)
    steps = list(range(0, 6, every))
    assert monitor.history["step"] == steps
    for key in reference:
        np.testing.assert_allclose(monitor.history[key], [reference[key][t] for t in steps],
                                   rtol=1e-4, err_msg=key)
