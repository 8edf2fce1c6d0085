"""The paper 000 trainers (polynomial nets) at smoke size: each runs end to end, writes the
results format of ``examples/_common.py``, computes each claim's verdict by its stated rule, and,
where a claim's direction is robust at smoke size (checked over several seeds), shows it."""

import math

import numpy as np
import pytest

from tests.test_examples import run_smoke


def _claims(results):
    return {c["id"]: c for c in results["claims"]}


def test_extrapolation(tmp_path):
    r, _ = run_smoke("extrapolation", "extrapolation", tmp_path, expect="Extrapolation MSE")
    res, claims = r["results"], _claims(r)
    assert set(claims) == {"fig1/fcn_extrapolates_linearly", "fig1a/pnn_follows_cubic",
                           "fig1c/pnn_extrapolates_nonlinearly_cos", "fig1c/pnn_fits_cos_outside",
                           "fig2/pnn_exact_only_with_all_directions",
                           "fig2/fcn_fails_sum_of_squares"}
    # The paper's architectures: an eleven-layer fcn and the ReLU PNN of Eq. 1 on cos 2x.
    assert res["cos2x"]["fcn_depth"] == 11 and res["cos2x"]["pnn_form"] == "pnn"
    assert res["cubic"]["fcn_depth"] == 4
    # Verdicts follow their rules from the run's own numbers.
    sq = res["sum_squares"]
    assert claims["fig2/pnn_exact_only_with_all_directions"]["holds"] == (
        sq["pnn_all_directions"]["extrapolation_mse"]
        < 1e-2 * sq["pnn_positive_only"]["extrapolation_mse"])
    assert claims["fig1c/pnn_fits_cos_outside"]["holds"] == (
        res["cos2x"]["pnn"]["extrapolation_mse"] < res["cos2x"]["fcn"]["extrapolation_mse"])
    # Directions that hold at smoke size (no training needed: the infinite-width NTK-regime
    # predictors). Thm 6: with data in all directions the degree-2 PNN's NTK predictor
    # extrapolates x1^2 + x2^2 (almost) exactly, with positive-only data it does not.
    assert (sq["ntk_pnn_all_directions"]["extrapolation_mse"]
            < 1e-2 * sq["ntk_pnn_positive_only"]["extrapolation_mse"])
    # Thm 5 vs Thm 4: the fcn's NTK predictor extrapolates the cubic (nearly) linearly, the PNN's
    # does not.
    assert res["cubic"]["ntk_fcn"]["nonlinearity"] < 0.05
    assert res["cubic"]["ntk_pnn"]["nonlinearity"] > res["cubic"]["ntk_fcn"]["nonlinearity"]


def test_brightness_extrapolation(tmp_path):
    r, _ = run_smoke("brightness_extrapolation", "brightness_extrapolation", tmp_path,
                     expect="accuracy at r_max")
    res, claims = r["results"], _claims(r)
    assert set(claims) == {"fig3/similar_at_training_brightness", "fig3/hp_better_when_brighter"}
    # The baseline is He-scaled with zero-initialized biases (not N(0, 1) biases).
    assert r["config"]["b_std"] == 0.0 and r["config"]["parameterization"] == "standard"
    gains = [res[n]["mean_accuracy_gain_of_hp_for_r_max_above_train"]
             for n in ("mnist", "fashion_mnist")]
    nn_hp = [np.array(res[n][k]["test_accuracy"]) for n in ("mnist", "fashion_mnist")
             for k in ("NN", "NN-Hp")]
    assert gains[0] == pytest.approx(np.mean((nn_hp[1] - nn_hp[0])[1:]))
    assert claims["fig3/hp_better_when_brighter"]["holds"] == all(g > 0 for g in gains)


def test_arithmetic_extrapolation(tmp_path):
    r, _ = run_smoke("arithmetic_extrapolation", "arithmetic_extrapolation", tmp_path,
                     expect="extrapolation")
    res, claims = r["results"], _claims(r)
    summary, (fold,) = res["summary"], res["per_fold"]
    models = ("NN (Dense)", "NN-Hp (Dense)", "NN (Conv)", "NN-Hp (Conv)")
    assert set(summary) == set(models) and res["folds_done"] == 1
    assert set(claims) == {"table1/models_fit_seen_pairs", "table1/hp_extrapolates_better_dense",
                           "table1/hp_extrapolates_better_conv"}
    # The fold's 10 unseen pairs are distinct ordered digit pairs.
    unseen = {tuple(p) for p in fold["unseen_pairs"]}
    assert len(unseen) == 10 and all(0 <= d <= 9 for p in unseen for d in p)
    # Each run trains for the stated examples and epochs (smoke: 1024 dense / 128 conv).
    assert [fold[m]["n_train"] for m in models] == [1024, 1024, 128, 128]
    # Verdicts follow their rules from the run's own numbers.
    seen = [summary[m]["interpolation"]["rounding"]["mean"] for m in models]
    assert claims["table1/models_fit_seen_pairs"]["holds"] == all(v >= 0.9 for v in seen)
    for kind in ("dense", "conv"):
        nn = summary[f"NN ({kind.title()})"]["extrapolation"]["rounding"]["mean"]
        hp = summary[f"NN-Hp ({kind.title()})"]["extrapolation"]["rounding"]["mean"]
        assert claims[f"table1/hp_extrapolates_better_{kind}"]["holds"] == (hp > nn)
        wins = int(fold[f"NN-Hp ({kind.title()})"]["extrapolation"]["rounding"]
                   > fold[f"NN ({kind.title()})"]["extrapolation"]["rounding"])
        assert f"higher in {wins} of 1 folds" in claims[f"table1/hp_extrapolates_better_{kind}"][
            "measured"]
    # The direction of the fit claim at smoke size (192 steps on 1024 examples, reshuffled every
    # epoch; seeds 0-4 gave seen-pair test MSE 6.8-14.2): both dense nets learn the sum of the
    # seen pairs, i.e. their seen-pair test MSE is below that of a constant prediction, about the
    # variance of the sum over fold 0's 90 seen pairs (17.2).
    for m in ("NN (Dense)", "NN-Hp (Dense)"):
        assert summary[m]["interpolation"]["mse"]["mean"] < 0.9 * 17.2, (m, summary[m])


def test_spherical_harmonics(tmp_path):
    r, _ = run_smoke("spherical_harmonics", "spherical_harmonics", tmp_path,
                     expect="final |c_k|")
    models, claims = r["results"]["models"], _claims(r)
    assert set(models) == {"PNN N=3", "PNN N=6", "PNN N=9", "fcn"}
    assert set(claims) == {"fig5/higher_degree_learns_high_frequencies_faster",
                           "fig5/pnn_faster_than_fcn"}

    def first(name, k):
        step = models[name]["per_frequency"][k]["first_step_below_threshold"]
        return math.inf if step is None else step

    pnns = ["PNN N=3", "PNN N=6", "PNN N=9"]
    expected = all(first(a, k) > first(b, k) for k in ("8", "12")
                   for a, b in zip(pnns, pnns[1:]))
    assert claims["fig5/higher_degree_learns_high_frequencies_faster"]["holds"] == expected


def test_eigenvalue_decay(tmp_path):
    r, _ = run_smoke("eigenvalue_decay", "eigenvalue_decay", tmp_path)
    claims, fits = _claims(r), r["results"]["fits"]
    assert {"thm7/pnn_decay_exponent_smaller", "thm7/pnn_high_frequencies_relatively_larger",
            "thm7/higher_degree_relatively_larger", "thm7/pnn_rate", "thm7/fcn_rate"} == set(claims)
    (d, fit), = fits.items()
    d = int(d)
    # The Funk-Hecke projection gives a positive, decaying spectrum (a positive definite kernel;
    # quadrature errors would show up as negative or growing eigenvalues).
    for name, spec in r["results"]["spectra"][str(d)].items():
        spec = np.array(spec)
        assert fit[name]["negative_mu"] == 0
        assert spec[0] == 1 and spec[8] < spec[2] < spec[1] < 1
    # Deterministic (analytic kernels): relative to the linear mode, a higher PNN degree keeps
    # larger high-frequency eigenvalues (Thm 7's direction) ...
    assert claims["thm7/higher_degree_relatively_larger"]["holds"]
    # ... and the ReLU NTKs decay at about the known rate k^-(d+1) on S^d.
    assert -(d + 1) - 1 < fit["fcn"]["slope"] < -d
