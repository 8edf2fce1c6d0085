"""Every example trainer runs end to end at smoke size (issue 6; DAG and Taylor examples of
issues 5 and 7 too): exit status 0, a PNG, and a JSON of finite numbers with the structure and
relations each trainer promises. ``--help`` documents every flag of every trainer."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# _x.py: shared helpers; make_results.py builds RESULTS.md from the trainers' JSON files.
TRAINERS = sorted(f[:-3] for f in os.listdir(EXAMPLES)
                  if f.endswith(".py") and not f.startswith("_") and f != "make_results.py")


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


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)


def run_smoke(script, name, tmp_path, *extra, expect=None, skip_without_data=True):
    """Runs ``examples/<script>.py --smoke`` and returns (its JSON, its stdout)."""
    pytest.importorskip("matplotlib")
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{script}.py"), "--smoke",
                          f"--out_dir={tmp_path}", *extra], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=600, env=_env())
    if skip_without_data and out.returncode != 0 and "DatasetNotFoundError" in out.stderr:
        pytest.skip("real data not available offline: set KERNTK_DATA_DIR (see README)")
    assert out.returncode == 0, out.stderr[-3000:]
    if expect is not None:
        assert expect in out.stdout
    with open(os.path.join(str(tmp_path), f"{name}.json")) as f:
        results = json.load(f)
    if "claims" in results:  # the results format of examples/_common.py
        sys.path.insert(0, EXAMPLES)
        from _common import validate_results
        validate_results(results, name)
        assert results["smoke"] is True
    numbers = list(_numbers(results))
    assert numbers and all(math.isfinite(v) for v in numbers)
    with open(os.path.join(str(tmp_path), f"{name}.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(os.path.join(str(tmp_path), f"{name}.png")) > 1000
    return results, out.stdout


# Runs every trainer's ``--helpfull`` in one interpreter (TensorFlow is imported once, not once
# per trainer): a trainer's own flags are removed after its run so the next one can define its
# own (with those of any trainer it imported as a module); the flags of shared helper modules stay
# defined, as in a fresh process that imports them.
_HELP_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
from absl import flags
helps, paths = {}, sys.argv[1:]
for path in paths:
    sys.argv = [path, "--helpfull"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            pass
    helps[path] = out.getvalue()
    # The trainer's flags, and those of trainers it imported as modules, go with it.
    names = {os.path.basename(p)[:-3] for p in paths}
    for module, defined in list(flags.FLAGS.flags_by_module_dict().items()):
        if module == path or module in names:
            for flag in list(defined):
                delattr(flags.FLAGS, flag.name)
            sys.modules.pop(module, None)
    flags.FLAGS.unparse_flags()
print(json.dumps(helps))
"""


@pytest.fixture(scope="module")
def helps():
    paths = [os.path.join(EXAMPLES, f"{t}.py") for t in TRAINERS if t != "quickstart"]
    out = subprocess.run([sys.executable, "-c", _HELP_DRIVER] + paths, capture_output=True,
                         text=True, timeout=300, env=_env(), cwd=EXAMPLES)
    assert out.returncode == 0, out.stderr[-3000:]
    return {os.path.basename(p)[:-3]: text for p, text in json.loads(out.stdout).items()}


@pytest.mark.parametrize("script", [t for t in TRAINERS if t != "quickstart"])
def test_help_documents_every_flag(script, helps):
    text = helps[script]
    # absl groups flags by defining module ("<path>/x.py:" for the script, "x:" for an import).
    flags = []
    for header, body in re.findall(r"^(\S+):\n((?:  .*\n?)+)", text, flags=re.M):
        module = os.path.basename(header)
        if module.removesuffix(".py") in TRAINERS:
            flags += re.findall(r"^  --(?:\[no\])?(\w+): (.*)$", body, flags=re.M)
    assert {"smoke", "out_dir"} <= {name for name, _ in flags}, text[-2000:]
    assert all(doc.strip() for _, doc in flags), flags


# --------------------------------------------------------------- quick start
# (The main demo and the other catapult trainers: tests/test_examples_catapults.py.)
def test_quickstart(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "quickstart.py"), "--epochs=3",
                          "--width=16"], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "extrapolation MSE" in out.stdout


# --------------------------------------------------------------- thesis Ch. 4 (trainers 2-5)
def test_sgd_spikes(tmp_path):
    summary, stdout = run_smoke("sgd_spikes", "sgd_spikes", tmp_path)
    run = summary["runs"][0]
    assert run["matched"] <= min(run["loss_spikes"], run["catapult_events"])
    assert run["distinct_catapults"] <= run["catapult_events"]
    assert "match rate" in stdout or run["loss_spikes"] == 0


def test_agop_batch_size(tmp_path):
    summary, _ = run_smoke("agop_batch_size", "agop_batch_size", tmp_path)
    sizes = [e["batch_size"] for e in summary["by_batch_size"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == 2
    for e in summary["by_batch_size"]:
        assert -1 <= e["agop_alignment_mean"] <= 1
        assert e["catapults_mean"] <= e["catapult_events_mean"]


# --------------------------------------------------------------- paper 000 (trainers 6-9)
def test_extrapolation(tmp_path):
    r, _ = run_smoke("extrapolation", "extrapolation", tmp_path, expect="Extrapolation MSE")
    for name in ("cubic", "cos2x"):
        assert {"fcn", "pnn", "ntk_fcn", "ntk_pnn"} <= set(r[name])
        assert r[name]["fcn"]["extrapolation_mse"] >= 0
    assert {"pnn_all_directions", "pnn_positive_only", "fcn_all_directions"} <= set(
        r["sum_squares"])


def test_brightness_extrapolation(tmp_path):
    r, _ = run_smoke("brightness_extrapolation", "brightness_extrapolation", tmp_path,
                     expect="accuracy at r_max")
    for name in ("mnist", "fashion_mnist"):
        for key in ("NN", "NN-Hp"):
            acc = r[name][key]["test_accuracy"]
            assert len(acc) == len(r["r_max"]) and all(0 <= a <= 1 for a in acc)


def test_arithmetic_extrapolation(tmp_path):
    r, _ = run_smoke("arithmetic_extrapolation", "arithmetic_extrapolation", tmp_path,
                     expect="extrapolation")
    assert set(r["summary"]) == {"NN (Dense)", "NN-Hp (Dense)", "NN (Conv)", "NN-Hp (Conv)"}
    for model in r["summary"].values():
        for split in ("interpolation", "extrapolation"):
            rounding, floor_ceiling, pm1 = (model[split][m]["mean"]
                                            for m in ("rounding", "floor_ceiling", "pm1"))
            # Rounding correct implies floor or ceiling correct implies within +-1.
            assert 0 <= rounding <= floor_ceiling <= pm1 <= 1


def test_spherical_harmonics(tmp_path):
    r, _ = run_smoke("spherical_harmonics", "spherical_harmonics", tmp_path,
                     expect="final |c_k|")
    assert set(r["models"]) == {"PNN N=3", "PNN N=6", "PNN N=9", "fcn"}
    for m in r["models"].values():
        assert m["lr"] > 0
        assert set(m["per_frequency"]) == {"1", "3", "4", "5", "8", "12"}


# --------------------------------------------------------------- DAG (issue 5), Taylor (issue 7)
def test_transition_to_linearity(tmp_path):
    result, _ = run_smoke("transition_to_linearity", "transition_to_linearity", tmp_path)
    assert len(result["mean_drift"]) == len(result["widths"]) >= 2
    assert all(d >= 0 for d in result["mean_drift"])
    for run in result["runs"]:
        assert isinstance(run["def_2_2_7_width"], int) and run["def_2_2_7_width"] > 0
    assert result["n_points"] == 10


def test_quadratic_models(tmp_path):
    result, _ = run_smoke("quadratic_models", "quadratic_models", tmp_path)
    assert result["eta_crit"] > 0 and result["lambda_max_K0"] > 0
    n = result["config"]["n_train"]
    assert math.isclose(result["eta_crit"], n / result["lambda_max_K0"], rel_tol=1e-9)
    factors = result["lr_factors"]
    assert set(result["results"]) == {"f", "f_lin", "f_quad"}
    for runs in result["results"].values():
        assert len(runs) == len(factors)
        for factor, run in zip(factors, runs):
            assert math.isclose(run["lr"], factor * result["eta_crit"], rel_tol=1e-9)
            assert run["best_test_loss"] >= 0 and 0.0 <= run["best_test_acc"] <= 1.0
            assert isinstance(run["diverged"], bool)
    # The three models start from the same w0, hence the same initial training loss.
    first = [runs[0]["initial_train_loss"] for runs in result["results"].values()]
    assert max(first) - min(first) < 1e-4 * max(1.0, abs(first[0]))
    # GD on a linear model diverges for eta > 2 / lambda_max(H_L) = eta_crit (no catapult).
    for factor, run in zip(factors, result["results"]["f_lin"]):
        if factor >= 3.0:  # |1 - 2 factor| >= 5: growth x25 per step, unmissable in 12 steps
            assert run["diverged"]
