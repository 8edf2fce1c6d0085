"""The polynomial-net trainers of issue 6 (paper 000 Fig. 1-3, 5, Table 1) run end to end (smoke
sizes) and write a PNG and a JSON of finite numbers."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numbers(obj):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)


def _run_smoke(name, tmp_path, expect):
    pytest.importorskip("matplotlib")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--smoke",
                          f"--out_dir={tmp_path}"], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expect in out.stdout
    with open(os.path.join(str(tmp_path), f"{name}.json")) as f:
        results = json.load(f)
    numbers = list(_numbers(results))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert os.path.getsize(os.path.join(str(tmp_path), f"{name}.png")) > 1000
    return results


def test_extrapolation_smoke(tmp_path):
    r = _run_smoke("extrapolation", tmp_path, "Extrapolation MSE")
    for name in ("cubic", "cos2x"):
        assert {"fcn", "pnn", "ntk_fcn", "ntk_pnn"} <= set(r[name])
        assert r[name]["fcn"]["extrapolation_mse"] >= 0
    assert {"pnn_all_directions", "pnn_positive_only", "fcn_all_directions"} <= set(
        r["sum_squares"])


def test_brightness_extrapolation_smoke(tmp_path):
    r = _run_smoke("brightness_extrapolation", tmp_path, "accuracy at r_max")
    for name in ("mnist", "fashion_mnist"):
        for key in ("NN", "NN-Hp"):
            acc = r[name][key]["test_accuracy"]
            assert len(acc) == len(r["r_max"]) and all(0 <= a <= 1 for a in acc)


def test_arithmetic_extrapolation_smoke(tmp_path):
    r = _run_smoke("arithmetic_extrapolation", tmp_path, "extrapolation")
    assert set(r["summary"]) == {"NN (Dense)", "NN-Hp (Dense)", "NN (Conv)", "NN-Hp (Conv)"}
    for model in r["summary"].values():
        for split in ("interpolation", "extrapolation"):
            rounding, floor_ceiling, pm1 = (model[split][m]["mean"]
                                            for m in ("rounding", "floor_ceiling", "pm1"))
            # Rounding correct implies floor or ceiling correct implies within +-1.
            assert 0 <= rounding <= floor_ceiling <= pm1 <= 1


def test_spherical_harmonics_smoke(tmp_path):
    r = _run_smoke("spherical_harmonics", tmp_path, "final |c_k|")
    assert set(r["models"]) == {"PNN N=3", "PNN N=6", "PNN N=9", "fcn"}
    for m in r["models"].values():
        assert m["lr"] > 0
        assert set(m["per_frequency"]) == {"1", "3", "4", "5", "8", "12"}

