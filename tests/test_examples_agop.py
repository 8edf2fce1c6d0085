"""Smoke tests of the AGOP trainers (thesis Table 4.1 / Fig. 4.9-4.11): each runs end to end at
tiny size, writes a valid results file, and shows the direction of its claim where that
direction is robust at this size (checked over seeds 0-3 before relying on it)."""

import os
import subprocess
import sys

import pytest

from tests.test_examples import EXAMPLES, _env, run_smoke


def _run(summary, batch_size):
    return [r for r in summary["results"]["runs"] if r["batch_size"] == batch_size]


def test_agop_batch_size_small_batch_catapults(tmp_path):
    # lr = eta_crit(X)/2: GD is below its own critical rate and never catapults; batch 5 is
    # above eta_crit of many of its batches (tiny rank-2 task, n = 100).
    summary, _ = run_smoke("agop_batch_size", "agop_batch_size", tmp_path)
    assert {c["id"] for c in summary["claims"]} >= {
        "table4.1/catapults_increase", "table4.1/alignment_increases",
        "table4.1/test_loss_decreases", "table4.1/alignment_increases_every_seed"}
    (gd,), (small,) = _run(summary, 100), _run(summary, 5)
    assert gd["catapult_events_all"] == 0
    assert small["catapult_events_all"] > 0
    assert small["max_eta_over_crit"] > 1 > gd["max_eta_over_crit"]


# slow: another test runs this trainer's code at smoke size; its full run covers this.
@pytest.mark.slow
def test_agop_batch_size_small_lr_has_no_catapults(tmp_path):
    # Fig. 4.10: at lr = eta_crit(X)/40 not even batch 5 reaches eta_crit(X_batch).
    # A cap of 30 steps is not a whole number of batch-5 epochs (20 steps at n = 100): every run,
    # GD included, still stops at exactly 30 steps, unconverged at this rate. The monitor
    # measures the updates 0, k, 2k, ... (k = --gd_every for GD, --sgd_every for batch 5):
    # ceil(30 / k) of them.
    summary, _ = run_smoke("agop_batch_size", "agop_batch_size_small_lr", tmp_path,
                           "--experiment=small_lr", "--max_steps=30", "--gd_every=4",
                           "--sgd_every=7", "--gd_check_every=3")
    assert summary["config"]["experiment"] == "small_lr"
    for r in summary["results"]["runs"]:
        assert r["catapult_events_all"] == 0 and r["max_eta_over_crit"] < 1
        assert abs(r["lr"] - r["eta_crit_init"] / 40) <= 1e-6 * r["lr"]
        assert r["steps"] == 30 and not r["converged"] and not r["diverged"]
        every = 4 if r["batch_size"] == 100 else 7
        assert r["measured_steps"] == -(-30 // every)
        # loss checks: every --gd_check_every steps of GD, every 1/10 epoch (2 steps) of batch 5
        check = 3 if r["batch_size"] == 100 else 2
        assert r["curve"]["step"] == sorted(set(range(0, 30, check)) | {30})
    no_catapults = next(c for c in summary["claims"] if c["id"] == "fig4.10/no_catapults")
    assert no_catapults["holds"] is True


def test_optimizers_agop(tmp_path):
    # Two of the seven optimizers: SGD has a stability rule (eta_crit is logged), Adagrad has
    # none (the run is trained unmonitored and the reason is recorded).
    summary, _ = run_smoke("optimizers_agop", "optimizers_agop", tmp_path,
                           "--optimizers=sgd,adagrad")
    runs = {r["optimizer"]: r for r in summary["results"]["runs"]}
    assert runs["sgd"]["monitored"] and runs["sgd"]["eta_crit"]
    assert runs["sgd"]["lr"] == 2.0 and runs["adagrad"]["lr"] == 0.1  # thesis Table C.1
    assert not runs["adagrad"]["monitored"]
    assert "Adagrad" in runs["adagrad"]["stability_rule"]
    assert any("Adagrad" in d for d in summary["setting"]["deviations"])


# slow: the rank-3 run at the thesis setting has diverging runs and covers this.
@pytest.mark.slow
def test_agop_batch_size_labels_diverged_runs_and_no_trend_holds_through_them(tmp_path):
    # 30 x eta_crit(X): every run diverges and the divergence guard stops it before the cap.
    summary, _ = run_smoke("agop_batch_size", "agop_batch_size", tmp_path, "--lr_factor=30")
    assert all(r["diverged"] and not r["converged"] for r in summary["results"]["runs"])
    assert any("diverged" in d for d in summary["setting"]["deviations"])
    assert not any(c["holds"] for c in summary["claims"])  # no trend through diverged nets


# slow: the small-lr run at the thesis setting merges its seeds with --runs_from and covers this.
@pytest.mark.slow
def test_agop_batch_size_reports_seeds_run_in_another_process(tmp_path):
    # Seed 1 runs in one process; a second runs seed 0 and reports both: seed 1's runs are
    # taken from the first file as they are, and the wall time covers both processes.
    first, other = tmp_path / "seed1", tmp_path / "both"
    first.mkdir()
    other.mkdir()
    a, _ = run_smoke("agop_batch_size", "agop_batch_size", first, "--seed=1")
    path = str(first / "agop_batch_size.json")
    b, _ = run_smoke("agop_batch_size", "agop_batch_size", other, "--seeds=2",
                     f"--runs_from={path}")
    runs = b["results"]["runs"]
    assert [r for r in runs if r["seed"] == 1] == a["results"]["runs"]
    assert sorted({r["seed"] for r in runs}) == [0, 1]
    assert all(e["runs"] == 2 for e in b["results"]["by_batch_size"])
    assert b["results"]["seeds_from"] == {"seeds": [1], "files": [path]}
    assert b["wall_s"] >= a["wall_s"] and "--runs_from" in b["setting"]["ours"]
    # A file run with other flags is refused before anything runs.
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "agop_batch_size.py"),
                          "--smoke", "--seeds=2", "--max_steps=30", f"--runs_from={path}",
                          f"--out_dir={tmp_path}"], capture_output=True, text=True,
                         timeout=600, env=_env())
    assert out.returncode != 0 and "max_steps" in out.stderr
