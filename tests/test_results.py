"""examples/RESULTS.md is generated from the trainers' results files (issue 12): the file in the
repository equals what ``examples/make_results.py`` renders, every results file has the claims
structure, and the renderer refuses files it must not quote (smoke runs, verdicts that are not
booleans, claims without a rule)."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import _common  # noqa: E402
import make_results  # noqa: E402


def test_results_md_is_generated_from_the_json_files():
    with open(os.path.join(ROOT, "examples", "RESULTS.md")) as f:
        text = f.read()
    assert text == make_results.render(os.path.join(ROOT, "examples", "results")), (
        "examples/RESULTS.md is out of date: run python examples/make_results.py")


def _doc(**over):
    doc = {"name": "x", "command": "python examples/x.py", "smoke": False, "wall_s": 12.0,
           "versions": {"tensorflow": "t", "keras": "k", "python": "p"},
           "setting": {"paper": "n = 2000", "ours": "n = 2000", "deviations": []},
           "config": {"n": 2000},
           "claims": [_common.claim("fig/a", paper=0.9, measured=0.95, holds=True,
                                    rule="measured > 0.5")],
           "results": {}}
    doc.update(over)
    return doc


def _write(tmp_path, doc, name="x"):
    with open(os.path.join(str(tmp_path), f"{name}.json"), "w") as f:
        json.dump(doc, f)


def test_a_row_shows_setting_numbers_rule_and_the_computed_verdict(tmp_path):
    held = _common.claim("fig/a", paper=0.9, measured=0.95, holds=True, rule="measured > 0.5")
    failed = _common.claim("fig/b", paper="decreases", measured="increases", holds=False,
                           rule="last < first")
    _write(tmp_path, _doc(claims=[held, failed],
                          setting={"paper": "n = 2000", "ours": "n = 500",
                                   "deviations": ["n = 500: CPU time"]}))
    text = make_results.render(str(tmp_path))
    assert "1 of 2 claims hold in 1 runs." in text
    assert "| `fig/a` | 0.9 | 0.95 | measured > 0.5 | **holds** |" in text
    assert "| `fig/b` | decreases | increases | last < first | **does not hold** |" in text
    assert "n = 500: CPU time" in text and "Paper's setting: n = 2000" in text


@pytest.mark.parametrize("bad, message", [
    (dict(smoke=True), "smoke"),
    (dict(claims=[]), "no claims"),
    (dict(setting={"paper": "p", "ours": "o"}), "deviations"),
    (dict(claims=[{"id": "a", "paper": 1, "measured": 2, "rule": "r", "holds": "yes"}]),
     "true or false"),
    (dict(claims=[{"id": "a", "paper": 1, "measured": 2, "holds": True}]), "rule"),
])
def test_files_that_cannot_be_quoted_are_refused(tmp_path, bad, message):
    _write(tmp_path, _doc(**bad))
    with pytest.raises(ValueError, match=message):
        make_results.render(str(tmp_path))


def test_a_claim_needs_a_computed_boolean_and_a_rule():
    with pytest.raises(TypeError, match="bool"):
        _common.claim("a", paper=1, measured=2, holds="yes", rule="r")
    with pytest.raises(ValueError, match="rule"):
        _common.claim("a", paper=1, measured=2, holds=True, rule=" ")


def test_check_mode_fails_when_the_file_is_stale(tmp_path):
    _write(tmp_path, _doc())
    out = os.path.join(str(tmp_path), "RESULTS.md")
    args = ["--results_dir", str(tmp_path), "--output", out]
    assert make_results.main(args) == 0
    assert make_results.main(args + ["--check"]) == 0
    with open(out, "a") as f:
        f.write("a number typed by hand\n")
    assert make_results.main(args + ["--check"]) == 1


@pytest.mark.parametrize("values, kwargs, expected", [
    ([0.81, 0.84, 0.89, 0.95], {}, True),
    ([0.81, 0.84, 0.84, 0.95], {}, False),                      # a tie is not strict
    ([0, 0, 3, 7], dict(strict=False), True),                   # never fewer, more at the end
    ([0, 0, 0, 0], dict(strict=False), False),                  # flat: no trend
    ([0.74, 0.71, 0.59, 0.42], dict(increasing=False), True),
    ([0.74, 0.71, 0.75, 0.42], dict(increasing=False), False),
    ([0.74, float("nan"), 0.42], dict(increasing=False), False),  # a diverged net
    ([0.5], {}, False),                                         # one value has no trend
])
def test_monotone_is_the_one_trend_rule_of_the_claims(values, kwargs, expected):
    assert _common.monotone(values, **kwargs) is expected
