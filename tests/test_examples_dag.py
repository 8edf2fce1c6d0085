"""The transition-to-linearity example runs end to end in --smoke mode."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "transition_to_linearity.py")
DATA = os.path.join(ROOT, "..", "shared", "datasets", "cifar10", "train_4k.npz")


@pytest.mark.skipif(not os.path.exists(DATA),
                    reason="needs ../shared/datasets/cifar10/train_4k.npz")
def test_transition_to_linearity_smoke_writes_png_and_finite_json(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", f"--out_dir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tmp_path / "transition_to_linearity.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((tmp_path / "transition_to_linearity.json").read_text())
    assert math.isfinite(result["slope"])
    assert len(result["mean_drift"]) == len(result["widths"]) >= 2
    assert all(math.isfinite(d) and d >= 0 for d in result["mean_drift"])
    for run in result["runs"]:
        assert math.isfinite(run["max_relative_kernel_change"])
        assert math.isfinite(run["final_loss"])
        assert isinstance(run["def_2_2_7_width"], int) and run["def_2_2_7_width"] > 0
    assert result["n_points"] == 10


def test_help_documents_the_flags():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    # absl exits with status 1 after printing --help, so check the text, not the status.
    for flag in ("--smoke", "--out_dir", "--drop", "--max_log2_width", "--lr_factor", "--pool"):
        assert flag in proc.stdout
