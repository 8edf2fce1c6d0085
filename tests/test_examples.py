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


# --------------------------------------------------------------- the trainers' own tests
# Fig. 4.3, 4.4, 4.8, C.17, 3.3/B.1 (catapult_demo, catapult_gd, multiple_catapults,
# four_regimes): tests/test_examples_catapults.py.
# Table 4.2, Fig. 4.5, Fig. C.1 (sgd_spikes, single_example_sgd, eta_crit_hessian_vs_ntk):
# tests/test_examples_spikes.py.
# Table 4.1 / Fig. 4.11 (agop_batch_size, optimizers_agop): tests/test_examples_agop.py.
# Paper 000 (extrapolation, brightness, arithmetic, spherical harmonics, eigenvalue decay):
# tests/test_examples_polynomial.py.


