"""DivergenceGuard: bad batches are skipped, diverging rates rolled back and backed off."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerntk.callbacks import CriticalLRMonitor, DivergenceGuard


def _data(n=16, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = np.sin(x.sum(axis=1, keepdims=True)).astype("float32")
    return x, y


def _net(optimizer, spe=1, activation="tanh", d=4, jit="auto"):
    init = keras.initializers.GlorotUniform(seed=1)
    model = keras.Sequential([keras.Input((d,)),
                              keras.layers.Dense(8, activation=activation, kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    model.compile(optimizer=optimizer, loss="mse", steps_per_execution=spe, jit_compile=jit)
    return model


def _linear(lr, spe=1):
    """Full-batch GD on a linear least-squares problem: diverges iff lr > eta_crit. Fit one
    epoch of 90 copies of the batch (90 epochs would take a test 10 s longer)."""
    x, _ = _data()
    y = np.random.default_rng(1).standard_normal((len(x), 1)).astype("float32")
    x64 = x.astype(np.float64)
    eta_crit = len(x) / np.linalg.eigvalsh(x64 @ x64.T)[-1]
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1, use_bias=False)])
    model.set_weights([np.full((x.shape[1], 1), 0.1, "float32")])
    model.compile(optimizer=keras.optimizers.SGD(lr * eta_crit), loss="mse",
                  steps_per_execution=spe)
    return model, x, y, lr * eta_crit


def _state(model):
    return [np.array(keras.ops.convert_to_numpy(v))
            for v in list(model.weights) + list(model.optimizer.variables)]


def _finite(model):
    return all(np.all(np.isfinite(s)) for s in _state(model))


@pytest.mark.parametrize("kwargs", [dict(factor=1.0), dict(factor=True), dict(backoff=1.0),
                                    dict(backoff=0), dict(patience=0),
                                    dict(max_restores=1.5), dict(snapshot_every=-1)])
def test_bad_arguments_are_refused_naming_them(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DivergenceGuard(**kwargs)


def test_a_learning_rate_schedule_is_refused_at_train_begin():
    x, y = _data()
    model = _net(keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)))
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[DivergenceGuard()])
    assert "train_step" not in model.__dict__


def test_training_without_divergence_is_unchanged():
    x, y = _data(32)
    guarded, plain = _net(keras.optimizers.Adam(0.01)), _net(keras.optimizers.Adam(0.01))
    guard = DivergenceGuard(snapshot_every=3)
    h1 = guarded.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[guard])
    h2 = plain.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    assert guard.restores == [] and guard.skipped == []
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    for a, b in zip(_state(guarded), _state(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert h1.history["guard_restores"] == [0.0] * 4 and h1.history["skipped_batches"][-1] == 0
    assert "train_step" not in guarded.__dict__


def test_one_nan_label_costs_one_skipped_step_not_a_rollback():
    # 30 epochs of 2 batches; one label of the first batch of epoch 25 (step 50) is NaN.
    x, y = _data()
    xs, ys = np.tile(x, (30, 1)), np.tile(y, (30, 1))
    ys[50 * 8 + 3] = np.nan
    guarded = _net(keras.optimizers.SGD(0.1, momentum=0.9))
    guard = DivergenceGuard(snapshot_every=4)
    data = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(8)
    with pytest.warns(RuntimeWarning, match="step 50"):
        hist = guarded.fit(data, epochs=30, steps_per_epoch=2, shuffle=False, verbose=0,
                           callbacks=[guard])
    assert guard.skipped == [50] and guard.restores == []
    assert hist.history["skipped_batches"][24:26] == [0.0, 1.0]
    assert np.all(np.isfinite(hist.history["loss"]))  # the skipped batch is not in the mean
    # Exactly as if the batch were not in the data (optimizer iterations included).
    plain = _net(keras.optimizers.SGD(0.1, momentum=0.9))
    keep = np.r_[0:400, 408:480]
    plain.fit(xs[keep], ys[keep], batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(guarded.optimizer.iterations) == int(plain.optimizer.iterations) == 59
    for a, b in zip(_state(guarded), _state(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _RaiseLR(keras.callbacks.Callback):
    def __init__(self, at, lr):
        super().__init__()
        self.at, self.lr = at, lr

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            self.model.optimizer.learning_rate = self.lr


class _Recorder(keras.callbacks.Callback):
    """The model's state by optimizer iterations, as first seen."""

    def on_train_begin(self, logs=None):
        self.states = {int(self.model.optimizer.iterations): _state(self.model)}

    def on_train_batch_end(self, batch, logs=None):
        self.states.setdefault(int(self.model.optimizer.iterations), _state(self.model))


@pytest.mark.parametrize("optimizer,raise_at", [("sgd", 4), ("adam", 4), ("adam", 24)])
def test_a_restore_returns_weights_and_every_optimizer_variable_bit_for_bit(optimizer, raise_at):
    # raise_at=4 restores the snapshot taken at the start (the optimizer slots must be in it
    # although Keras creates them at the first step); 24 the one refreshed at step 19.
    x, y = _data(256)
    opt = (keras.optimizers.SGD(0.01, momentum=0.9) if optimizer == "sgd"
           else keras.optimizers.Adam(0.01))
    model = _net(opt, activation=None)
    guard, recorder = DivergenceGuard(snapshot_every=10, patience=1, max_restores=1), _Recorder()
    with pytest.warns(RuntimeWarning, match="training stopped"):
        hist = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                         callbacks=[_RaiseLR(raise_at, 1e4), guard, recorder])
    assert len(guard.restores) == 1 and model.stop_training
    iterations = int(model.optimizer.iterations)
    assert iterations == (0 if raise_at == 4 else 20)
    snapshot = recorder.states[iterations]
    restored = _state(model)
    assert len(restored) == len(snapshot) == len(model.weights) + len(model.optimizer.variables)
    assert len(model.optimizer.variables) > 2  # slots included
    for a, b in zip(restored, snapshot):
        np.testing.assert_array_equal(a, b)
    # Before the divergence the slots had moved away from the snapshot: the restore did it.
    moved = recorder.states[raise_at + 1]
    assert any(not np.array_equal(a, b) for a, b in zip(moved, snapshot))
    # The metrics went back with the weights: the epoch's loss leaves out the diverged steps.
    assert hist.history["loss"][0] < 10 * np.mean(y ** 2)


@pytest.mark.parametrize("spe", [1, 3])
def test_a_diverging_rate_is_restored_and_backed_off_compounding(spe):
    # lr = 3 eta_crit diverges, 1.5 eta_crit too, 0.75 eta_crit converges: two restores from
    # the starting snapshot, the rate halved twice.
    model, x, y, lr = _linear(3.0, spe)
    w0 = model.get_weights()[0].copy()
    guard = DivergenceGuard(factor=10.0, patience=2, snapshot_every=1000)

    class Losses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(logs)

    losses = Losses()
    hist = model.fit(np.tile(x, (90, 1)), np.tile(y, (90, 1)), batch_size=len(x), epochs=1,
                     shuffle=False, verbose=0, callbacks=[guard, losses])
    assert [r["lr_after"] / lr for r in guard.restores] == pytest.approx([0.5, 0.25], rel=1e-6)
    assert guard.restores[1]["lr_before"] == pytest.approx(lr / 2, rel=1e-6)
    assert not model.stop_training and len(losses.seen) == 90 // spe
    assert hist.history["guard_restores"] == [2.0]
    assert losses.seen[-1]["guard_restores"] == 2
    assert hist.history["guard_lr"][-1] == pytest.approx(lr / 4, rel=1e-6)
    # The logged epoch mean covers the steps kept after the last restore (metrics reset with
    # the restore to the starting snapshot), which converge.
    assert hist.history["loss"][0] < np.mean((x @ w0 - y) ** 2)
    assert _finite(model)


def test_max_restores_stops_training_at_the_snapshot():
    model, x, y, lr = _linear(3.0)
    start = _state(model)
    guard = DivergenceGuard(factor=10.0, patience=2, max_restores=2, snapshot_every=1000)
    with pytest.warns(RuntimeWarning, match="training stopped"):
        model.fit(np.tile(x, (90, 1)), np.tile(y, (90, 1)), batch_size=len(x), epochs=1,
                  shuffle=False, verbose=0, callbacks=[guard])
    assert len(guard.restores) == 2 and model.stop_training
    assert guard.restores[1]["lr_after"] == pytest.approx(lr, rel=1e-6)  # the snapshot's rate
    model.optimizer.build(model.trainable_variables)
    for a, b in zip(_state(model)[1:], start[1:]):  # optimizer: iterations, learning rate
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.get_weights()[0], start[0])


class _JitSeen(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.jit = self.model.jit_compile


def test_steps_per_execution_3_under_xla_skips_exactly_the_bad_batches():
    # The records of a block's 3 steps go through the hook's device buffer: XLA stays on.
    x, y = _data(96)
    y = y.copy()
    y[4 * 8] = np.inf  # step 4 of each epoch: 4 and 16
    guarded = _net(keras.optimizers.Adam(0.01), spe=3, jit=True)
    guard, seen = DivergenceGuard(snapshot_every=2), _JitSeen()
    with pytest.warns(RuntimeWarning, match="step 4"):
        guarded.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                    callbacks=[guard, seen])
    assert guard.skipped == [4, 16] and guard.restores == [] and seen.jit is True
    plain = _net(keras.optimizers.Adam(0.01))
    keep = np.r_[0:32, 40:96]
    plain.fit(x[keep], y[keep], batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(_state(guarded), _state(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_mixed_float16_divergence_is_caught_without_iterations_advancing():
    # The LossScaleOptimizer skips non-finite steps without advancing `iterations`.
    x, y = _data(32)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _net(keras.optimizers.SGD(1e3), activation=None)
        guard = DivergenceGuard(patience=2, max_restores=3)
        with pytest.warns(RuntimeWarning, match="training stopped"):
            model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0, callbacks=[guard])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert len(guard.restores) == 3
    assert [r["lr_after"] for r in guard.restores[:2]] == pytest.approx([500.0, 250.0])
    assert _finite(model)


class _PoisonAtEnd(keras.callbacks.Callback):
    """Sets the weights to NaN at the last batch, after the guard's batch hook has run."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.params["steps"] - 1:
            for v in self.model.trainable_variables:
                v.assign(np.full(v.shape, np.nan, "float32"))


def test_a_run_never_ends_with_non_finite_weights():
    x, y = _data(32)
    model = _net(keras.optimizers.SGD(0.1))
    guard = DivergenceGuard(snapshot_every=1)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[guard, _PoisonAtEnd()])
    assert _finite(model) and guard.restores[-1]["reason"] == "non-finite state at the end"


def test_the_guard_composes_with_an_in_step_monitor():
    # Both hooks wrap the step of one fit. The guard is transparent (it calls no forward
    # pass), so the monitor outside it still shares Keras' forward pass: same numbers.
    x, y = _data(24)
    alone, outside = CriticalLRMonitor(), CriticalLRMonitor()
    _net(keras.optimizers.SGD(0.05)).fit(x, y, batch_size=8, epochs=2, shuffle=False,
                                         verbose=0, callbacks=[alone])
    _net(keras.optimizers.SGD(0.05)).fit(x, y, batch_size=8, epochs=2, shuffle=False,
                                         verbose=0, callbacks=[outside, DivergenceGuard()])
    for key in ("eta_crit", "loss_after"):
        np.testing.assert_array_equal(outside.history[key], alone.history[key])
    # With a bad batch each records every step, and the guard skips it.
    model = _net(keras.optimizers.SGD(0.05))
    guard, monitor = DivergenceGuard(), CriticalLRMonitor()
    y = y.copy()
    y[9] = np.nan  # step 1
    with pytest.warns(RuntimeWarning, match="step 1"):
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[monitor, guard])
    assert guard.skipped == [1, 4]
    assert len(monitor.history["step"]) == 6
    assert _finite(model) and "train_step" not in model.__dict__
