"""Callbacks under tf.distribute.MirroredStrategy over two logical CPU devices (issue 4).

Logical devices can only be configured before TensorFlow initializes its devices, so each run
happens in a fresh process (tests/distributed_callbacks_scenario.py) that prints the callbacks'
histories as JSON; both processes start from the same weights saved here.
"""

import json
import os
import subprocess
import sys

import numpy as np

import kerntk

SCENARIO = os.path.join(os.path.dirname(__file__), "distributed_callbacks_scenario.py")
EPOCHS = 4
GUARD_EPOCHS = 12


def _launch(weights_path, replicas):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, SCENARIO, str(weights_path), str(replicas)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _result(proc):
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _assert_histories_equal(single, mirrored, rtol=1e-5):
    assert set(single) == set(mirrored)
    for key in single:
        a, b = np.asarray(single[key], float), np.asarray(mirrored[key], float)
        assert a.shape == b.shape, key
        np.testing.assert_allclose(b, a, rtol=rtol, atol=1e-12, equal_nan=True, err_msg=key)


def test_callbacks_under_mirrored_strategy_match_single_device(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 16, 8
    x = rng.standard_normal((n, d)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    model = kerntk.models.fcn(2, 64, input_shape=(d,), seed=0)
    weights = model.get_weights()
    eta_crit0 = kerntk.spectral.critical_lr(model, x)  # full batch: n / lambda_max(K(X))
    loss0 = float(np.mean((np.asarray(model(x)) - y) ** 2))
    path = tmp_path / "scenario.npz"
    np.savez(path, x=x, y=y, probe=x[:8], n_weights=len(weights), lr=0.5 * eta_crit0,
             epochs=EPOCHS, guard_lr=4.0 * eta_crit0, guard_epochs=GUARD_EPOCHS,
             **{f"w{i}": w for i, w in enumerate(weights)})

    procs = [_launch(path, 1), _launch(path, 2)]
    single, mirrored = (_result(p) for p in procs)
    assert single["replicas"] == 1 and mirrored["replicas"] == 2

    # The monitor saw the whole global batch (both replica shards), not one shard: its first
    # eta_crit and loss are those of the full batch at the initial weights.
    for run in (single, mirrored):
        monitor = run["monitor"]
        assert monitor["step"] == list(range(EPOCHS))
        np.testing.assert_allclose(monitor["eta_crit"][0], eta_crit0, rtol=1e-5)
        np.testing.assert_allclose(monitor["monitor_loss"][0], loss0, rtol=1e-5)
        assert monitor["eta"] == [monitor["eta"][0]] * EPOCHS
        # baseline + one measurement per step
        assert run["tracker"]["step"] == list(range(EPOCHS + 1))
        assert run["agop"]["step"] == list(range(EPOCHS + 1))
        assert all(np.isfinite(run["tracker"]["ntk_lambda_1"]))

    # Same training trajectory, same logged values.
    for w1, w2 in zip(single["final_weights"], mirrored["final_weights"]):
        np.testing.assert_allclose(w2, w1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mirrored["fit_loss"], single["fit_loss"], rtol=1e-5)
    for cb in ("tracker", "monitor", "agop"):
        _assert_histories_equal(single[cb], mirrored[cb])
    # Training moved the model (the comparison is not between two frozen runs).
    assert single["tracker"]["ntk_drift"][-1] > 1e-3
    assert single["monitor"]["monitor_loss"][-1] < loss0

    # DivergenceGuard: at 4 eta_crit (heavy ball 0.5: stable below 3 eta_crit) the loss explodes; the guard restores the start (weights and
    # momentum) and backs the rate off (x 0.1 per restore, compounding) to where it trains (a rate well inside the stable range, so the run does not hinge on round-off); every
    # second batch has a NaN row and is skipped (under the strategy the NaN is on one replica's
    # shard: both replicas undo the step). Under the strategy it restores and skips at the same
    # steps and ends at the same rate and weights.
    for run in (single, mirrored):
        assert run["guard_skipped"] and all(s % 2 == 1 for s in run["guard_skipped"])
        assert run["guard_restores"], "the rate 4 eta_crit did not diverge"
        assert all(np.isfinite(w).all() for w in map(np.asarray, run["guard_weights"]))
        k = len(run["guard_restores"])
        np.testing.assert_allclose(run["guard_lr"], 4.0 * eta_crit0 * 0.1 ** k, rtol=1e-6)
        assert run["guard_loss"][-1] < loss0
    assert mirrored["guard_skipped"] == single["guard_skipped"]
    assert ([r["step"] for r in mirrored["guard_restores"]]
            == [r["step"] for r in single["guard_restores"]])
    for w1, w2 in zip(single["guard_weights"], mirrored["guard_weights"]):
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-5)
