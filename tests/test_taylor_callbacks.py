"""Taylor models under fit with kerntk's callbacks (issue 7): the callbacks see their NTK."""

import keras
import numpy as np
import pytest

import kerntk
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, NTKSpectrumTracker
from kerntk.models import linearize, quadratic


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype("float32")
    return x, np.sin(x[:, :1]).astype("float32")


@pytest.mark.parametrize("make", [linearize, quadratic], ids=["lin", "quad"])
def test_taylor_models_fit_with_every_callback(make):
    x, y = _data()
    base = kerntk.models.fcn(2, 64, input_shape=(6,), seed=0)
    model = make(base)
    # At w0 the Taylor model has the NTK of f, so its eta_crit is f's.
    eta_f = kerntk.spectral.critical_lr(base, x)
    model.compile(optimizer=keras.optimizers.SGD(0.5 * eta_f), loss="mse")
    tracker = NTKSpectrumTracker(x, y, k=2, top_s=2, every_n_steps=1, every_n_epochs=None)
    monitor = CriticalLRMonitor()
    agop = AGOPAlignmentLogger(x, reference=base)
    history = model.fit(x, y, batch_size=len(x), epochs=5, verbose=0,
                        callbacks=[tracker, monitor, agop])
    assert monitor.history["eta_crit"][0] == pytest.approx(eta_f, rel=1e-5)
    # At w0 the Taylor model's AGOP is f's, computed through another graph in float32: two
    # matrices G1, G2 with |G1 - G2| <= r |G| have 1 - cos <= r^2 / 2; r = 1e-3 (thousands of
    # float32 ulps of rounding) bounds it at 5e-7, while a different AGOP is off by O(1).
    assert agop.history["agop_alignment"][0] == pytest.approx(1.0, abs=5e-7)
    for key in ("ntk_lambda_1", "eta_crit", "agop_alignment"):
        assert np.all(np.isfinite(history.history[key]))
    drift = tracker.history["ntk_drift"]
    if make is linearize:
        np.testing.assert_allclose(drift, 0.0, atol=1e-5)  # a linear model's NTK is constant
    else:
        assert drift[-1] > 1e-5  # the quadratic model's NTK moves
    assert history.history["loss"][-1] < history.history["loss"][0]
