"""The thesis Ch. 4 trainers (issue 6, trainers 2-5) run end to end at smoke sizes."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def _run_smoke(script, name, tmp_path, *extra):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--smoke",
                          f"--out_dir={tmp_path}", *extra], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(str(tmp_path), name + ".json")) as f:
        summary = json.load(f)
    numbers = list(_numbers(summary))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert os.path.getsize(os.path.join(str(tmp_path), name + ".png")) > 1000
    return summary, out.stdout


@pytest.mark.parametrize("arch", ["fcn", "cnn"])
def test_catapult_gd_smoke(tmp_path, arch):
    summary, stdout = _run_smoke("catapult_gd.py", f"catapult_gd_{arch}", tmp_path,
                                 f"--arch={arch}")
    assert summary["lr"] == pytest.approx(summary["lr_over_eta_crit"] * summary["eta_crit_init"])
    assert "lambda_1" in stdout and summary["use_bias"] is False


def test_multiple_catapults_smoke(tmp_path):
    summary, _ = _run_smoke("multiple_catapults.py", "multiple_catapults", tmp_path)
    assert set(summary["runs"]) == {"fixed", "adaptive"}
    fixed = summary["runs"]["fixed"]
    # One value after each raise plus the final one.
    assert len(fixed["test_loss_after_each_catapult"]) == len(fixed["raise_steps"]) + 1
    assert len(fixed["agop_alignment_after_each_catapult"]) == len(fixed["raise_steps"]) + 1


def test_sgd_spikes_smoke(tmp_path):
    summary, stdout = _run_smoke("sgd_spikes.py", "sgd_spikes", tmp_path)
    run = summary["runs"][0]
    assert run["matched"] <= min(run["loss_spikes"], run["catapult_events"])
    assert run["distinct_catapults"] <= run["catapult_events"]
    assert "match rate" in stdout or run["loss_spikes"] == 0


def test_agop_batch_size_smoke(tmp_path):
    summary, _ = _run_smoke("agop_batch_size.py", "agop_batch_size", tmp_path)
    sizes = [e["batch_size"] for e in summary["by_batch_size"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == 2
    for e in summary["by_batch_size"]:
        assert -1 <= e["agop_alignment_mean"] <= 1
        assert e["catapults_mean"] <= e["catapult_events_mean"]
