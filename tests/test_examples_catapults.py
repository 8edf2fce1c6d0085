"""Smoke runs of the catapult trainers (thesis Fig. 3.3/B.1, 4.3, 4.4, 4.8, C.17) with checks of
the direction of their claims where that direction is robust at smoke size (checked over seeds
0-2 when these tests were written): a learning rate above eta_crit makes the loss rise and
lowers lambda_1; a raise of the rate above the new eta_crit triggers another catapult; the
regime of GD follows the learning-rate band."""

import pytest

from tests.test_examples import run_smoke


def _claim(results, suffix):
    (c,) = [c for c in results["claims"] if c["id"].endswith(suffix)]
    return c


def test_catapult_demo(tmp_path, monkeypatch):
    # The README's first command needs no data directory: the CIFAR-10 subset shipped with kerntk
    # serves it, so this test never skips.
    monkeypatch.delenv("KERNTK_DATA_DIR", raising=False)
    r, stdout = run_smoke("catapult_demo", "catapult_demo", tmp_path, expect="catapult events",
                          skip_without_data=False)
    res = r["results"]
    assert res["lr"] == pytest.approx(1.6 * res["eta_crit_init"])
    # GD at 1.6 x eta_crit on 16 points: the loss rises, the rise is in the top eigenspace of the
    # NTK, and lambda_1 ends below its initial value (a catapult, not a divergence).
    assert res["loss_peak"] > res["loss_init"] and not res["diverged"]
    assert _claim(r, "spike_in_top5_eigenspace")["holds"]
    assert res["lambda_1_final"] < res["lambda_1_init"]


# fcn: the README demo (test_catapult_demo) runs the same code: slow.
@pytest.mark.parametrize("arch", [pytest.param("fcn", marks=pytest.mark.slow), "cnn"])
def test_catapult_gd(tmp_path, arch):
    r, _ = run_smoke("catapult_gd", f"catapult_gd_{arch}", tmp_path, f"--arch={arch}")
    res = r["results"]
    assert r["config"]["use_bias"] is False
    if arch == "fcn":  # the 8-channel smoke CNN is too narrow to catapult reliably
        assert res["loss_peak"] > res["loss_init"] and not res["diverged"]
        assert res["lambda_1_final"] < res["lambda_1_init"]
        assert res["eta_crit_final"] > res["lr"]


def test_multiple_catapults_fig48(tmp_path):
    r, _ = run_smoke("multiple_catapults", "multiple_catapults_fig48", tmp_path,
                     "--figure=fig48")
    res = r["results"]
    assert len(res["test_loss_before_and_after_each_catapult"]) == len(res["raise_at"]) + 1
    assert len(res["agop_before_and_after_each_catapult"]) == len(res["raise_at"]) + 1
    # The raise to 2.7 x eta_crit(0) lifts eta above eta_crit and the training loss rises: a
    # catapult (the first raise, to 1.33 x, needs more steps than the smoke run gives it).
    assert res["raises"][-1]["event"] and res["raises"][-1]["spike"]


# slow: another test runs this trainer's code at smoke size; its full run covers this.
@pytest.mark.slow
def test_multiple_catapults_fig44(tmp_path):
    r, _ = run_smoke("multiple_catapults", "multiple_catapults_fig44", tmp_path,
                     "--figure=fig44")
    res = r["results"]
    # After the catapult at 1.67 x eta_crit(0), eta_crit has grown past the rate.
    assert res["eta_crit_before_and_after_each_catapult"][1] > \
        res["eta_before_and_after_each_catapult"][1]


def test_four_regimes(tmp_path):
    r, _ = run_smoke("four_regimes", "four_regimes", tmp_path)
    # c = 0.5, 1.5, 14 x eta_crit: monotone, catapult, divergence, for the NQM and the net.
    for run in r["results"]["runs"]:
        assert run["observed"] == run["predicted"], run
    assert _claim(r, "kernel_drops_in_catapult_constant_below")["holds"]
