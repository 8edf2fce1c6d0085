"""Smoke runs of the thesis Ch. 2-3 and paper 001 trainers (transition to linearity, quadratic
models, randomized two-layer net), each checking the direction of its trainer's claims at a size
where that direction is robust (a property of the models, not a number printed by a run)."""

import numpy as np

from tests.test_examples import run_smoke


def _claims(result):
    return {c["id"]: c for c in result["claims"]}


def test_transition_to_linearity(tmp_path):
    # Smoke: widths 4, 32, 256 (d = 12 after 16x16 pooling), two seeds, <= 100 GD steps.
    result, _ = run_smoke("transition_to_linearity", "transition_to_linearity", tmp_path)
    r = result["results"]
    assert r["widths"] == [4, 32, 256] and r["n_points"] == 10
    drift = r["mean_drift"]
    # Transition to linearity: 64x the width moves the kernel much less (Thm 2.3.6 gives a
    # factor 8 for slope -1/2; we ask for 2).
    assert drift[-1] < 0.5 * drift[0]
    # Every fitted range reports a CI around its slope.
    for key in ("fit_all", "fit_large"):
        lo, hi = r[key]["ci95_bootstrap"]
        assert lo <= r[key]["slope"] <= hi


def test_quadratic_models(tmp_path):
    # Smoke: 16 MNIST-2 points, width 128, 30 GD steps at 0.5, 1.5 and 3 eta_crit, two seeds.
    result, _ = run_smoke("quadratic_models", "quadratic_models", tmp_path)
    r = result["results"]
    factors = r["lr_factors"]
    assert factors == [0.5, 1.5, 3.0]
    runs = [s["runs"] for s in r["per_seed"]]
    for seed_runs in runs:
        # The three models start at the same w0: the same initial training loss.
        first = [seed_runs[m][0]["initial_train_loss"] for m in ("f", "f_lin", "f_quad")]
        assert max(first) - min(first) < 1e-4 * max(1.0, abs(first[0]))
        # Above eta_crit the linear model diverges (|1 - eta lambda| > 1 on the top direction).
        assert all(run["diverged"] for run in seed_runs["f_lin"][1:])
        # At 1.5 eta_crit f and f_quad converge through a catapult (loss rises, then falls).
        assert seed_runs["f"][1]["catapult"] and seed_runs["f_quad"][1]["catapult"]
        # Beyond 2 eta_crit (the quadratic model's eta_max) f_quad diverges, f does not.
        assert seed_runs["f_quad"][2]["diverged"] and not seed_runs["f"][2]["diverged"]
    claims = _claims(result)
    assert claims["fig3.4/f_lin_diverges"]["holds"]
    assert claims["fig3.4/f_catapults"]["holds"] and claims["fig3.4/f_quad_catapults"]["holds"]


def test_randomized_two_layer(tmp_path):
    # Smoke: width 512, d = 10, n = 50 and 200, 300 GD steps, one seed.
    result, _ = run_smoke("randomized_two_layer", "randomized_two_layer", tmp_path)
    runs = result["results"]["runs"]
    for r in runs:
        assert r["log"]["rms_f1"][0] == 0 and r["log"]["rms_f2"][0] == 0   # f_{W0} = 0, W = 0
        # Every model learns: the relative test loss falls below 1 (predicting the mean).
        assert r["final_test_rel_loss"] < 1.0
    # Paper 001 Sec. 3: random signs make the quadratic term dominate; without them the linear
    # (NTK) term does.
    for r in runs:
        if r["kind"] == "randomized":
            assert r["final_rms_f2"] > r["final_rms_f1"]
        elif r["kind"] == "plain":
            assert r["final_rms_f1"] > r["final_rms_f2"]
        else:   # f_lin moves the two symmetric halves by exactly opposite steps: f^(2) cancels
            assert r["final_rms_f2"] == 0
    assert np.isfinite([r["final_test_rel_loss"] for r in runs]).all()
