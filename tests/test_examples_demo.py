"""The README's main demo and the quick start run end to end (smoke sizes)."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable] + args, cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_catapult_demo_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    stdout = _run([os.path.join(ROOT, "examples", "catapult_demo.py"), "--smoke",
                   f"--out_dir={tmp_path}"], tmp_path)
    assert "catapult events" in stdout
    with open(os.path.join(str(tmp_path), "catapult_demo.json")) as f:
        summary = json.load(f)
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, (int, float)))
    assert summary["lr"] == pytest.approx(summary["lr_over_eta_crit"] * summary["eta_crit_init"])
    assert os.path.getsize(os.path.join(str(tmp_path), "catapult_demo.png")) > 1000


def test_quickstart_smoke(tmp_path):
    stdout = _run([os.path.join(ROOT, "examples", "quickstart.py"), "--epochs=3", "--width=16"],
                  tmp_path)
    assert "extrapolation MSE" in stdout
