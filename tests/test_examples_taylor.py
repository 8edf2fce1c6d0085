"""The f / f_lin / f_quad learning-rate example runs end to end in --smoke mode."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "quadratic_models.py")
DATA = os.path.join(ROOT, "..", "shared", "datasets", "mnist")


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "test.npz")),
                    reason="needs ../shared/datasets/mnist/{train,test}.npz")
def test_quadratic_models_smoke_writes_png_and_finite_json(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", f"--out_dir={tmp_path}"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tmp_path / "quadratic_models.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((tmp_path / "quadratic_models.json").read_text())
    assert math.isfinite(result["eta_crit"]) and result["eta_crit"] > 0
    assert math.isfinite(result["lambda_max_K0"]) and result["lambda_max_K0"] > 0
    n = result["config"]["n_train"]
    assert math.isclose(result["eta_crit"], n / result["lambda_max_K0"], rel_tol=1e-9)
    factors = result["lr_factors"]
    assert set(result["results"]) == {"f", "f_lin", "f_quad"}
    for runs in result["results"].values():
        assert len(runs) == len(factors)
        for factor, run in zip(factors, runs):
            assert math.isclose(run["lr"], factor * result["eta_crit"], rel_tol=1e-9)
            assert math.isfinite(run["best_test_loss"]) and run["best_test_loss"] >= 0
            assert 0.0 <= run["best_test_acc"] <= 1.0
            assert math.isfinite(run["initial_train_loss"])
            assert isinstance(run["diverged"], bool)
    # The three models start from the same w0, hence the same initial training loss.
    first = [runs[0]["initial_train_loss"] for runs in result["results"].values()]
    assert max(first) - min(first) < 1e-4 * max(1.0, abs(first[0]))
    # GD on a linear model diverges for eta > 2 / lambda_max(H_L) = eta_crit (no catapult).
    for factor, run in zip(factors, result["results"]["f_lin"]):
        if factor >= 3.0:  # |1 - 2 factor| >= 5: growth x25 per step, unmissable in 12 steps
            assert run["diverged"]


def test_help_documents_the_flags():
    proc = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    # absl exits with status 1 after printing --help, so check the text, not the status.
    for flag in ("smoke", "out_dir", "lr_factors", "width", "dataset", "steps", "n_train"):
        assert f"{flag}: " in proc.stdout, flag  # absl: "--width: doc", "--[no]smoke: doc"
