"""Callbacks on a ``mixed_float16`` model: values are computed in float32 (issue 4)."""

import warnings

import keras
import numpy as np

import kerntk
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, NTKSpectrumTracker

EPOCHS = 5


def _problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype("float32")
    y = rng.standard_normal((16, 1)).astype("float32")
    return x, y


def _run(policy, weights, x, y, lr):
    keras.config.set_dtype_policy(policy)
    try:
        model = kerntk.models.fcn(2, 64, input_shape=(x.shape[1],), seed=0)
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(lr)
        if policy == "mixed_float16":
            # A unit initial loss scale: no step is skipped for overflow, so both runs take the
            # same number of updates.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1.0)
        model.compile(optimizer=optimizer, loss="mse")
    finally:
        keras.config.set_dtype_policy("float32")
    tracker = NTKSpectrumTracker(x, y, k=3, top_s=3, every_n_steps=1, every_n_epochs=None)
    monitor = CriticalLRMonitor()
    agop = AGOPAlignmentLogger(x, np.eye(x.shape[1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=len(x), epochs=EPOCHS, shuffle=False, verbose=0,
                  callbacks=[tracker, monitor, agop])
    return model, tracker, monitor, agop, [str(w.message) for w in caught]


def test_mixed_float16_callbacks_compute_in_float32_and_match_float32_model():
    x, y = _problem()
    reference = kerntk.models.fcn(2, 64, input_shape=(8,), seed=0)
    weights = reference.get_weights()
    eta0 = kerntk.spectral.critical_lr(reference, x)
    lr = 0.5 * eta0

    m16, t16, c16, a16, msgs16 = _run("mixed_float16", weights, x, y, lr)
    m32, t32, c32, a32, _ = _run("float32", weights, x, y, lr)
    assert m16.compute_dtype == "float16" and m16(x).dtype == "float16"  # really mixed
    assert isinstance(m16.optimizer, keras.optimizers.LossScaleOptimizer)
    # The LossScaleOptimizer wraps plain SGD: eta_crit keeps its GD meaning, no warning.
    assert not any("not plain/momentum SGD" in m for m in msgs16)

    keys = {t16: ["ntk_lambda_1", "ntk_lambda_2", "ntk_trace", "loss_top", "loss_rest"],
            c16: ["eta_crit", "monitor_loss", "loss_after"], a16: ["agop_alignment"]}
    for cb, names in keys.items():
        for name in names:
            assert all(isinstance(v, float) and np.isfinite(v) for v in cb.history[name]), name
    assert t16.history["step"] == t32.history["step"] == list(range(EPOCHS + 1))
    assert c16.history["step"] == c32.history["step"] == list(range(EPOCHS))

    # At the initial weights both models hold identical float32 variables. Values computed in
    # float32 then agree to float32 round-off, far below float16's resolution (eps ~ 1e-3).
    np.testing.assert_allclose(c16.history["eta_crit"][0], eta0, rtol=1e-5)
    np.testing.assert_allclose(c16.history["monitor_loss"][0], c32.history["monitor_loss"][0],
                               rtol=1e-5)
    for name in keys[t16]:
        np.testing.assert_allclose(t16.history[name][0], t32.history[name][0], rtol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(a16.history["agop_alignment"][0],
                               a32.history["agop_alignment"][0], rtol=1e-5)

    # Along training, the float16 forward passes of the train steps make the trajectories differ
    # slightly; the logged series stay within 1e-2.
    for cb16, cb32 in ((t16, t32), (c16, c32), (a16, a32)):
        for name in keys[cb16]:
            np.testing.assert_allclose(cb16.history[name], cb32.history[name], rtol=1e-2,
                                       err_msg=name)
    # The training itself happened (not two frozen runs).
    assert c16.history["monitor_loss"][-1] < 0.9 * c16.history["monitor_loss"][0]
