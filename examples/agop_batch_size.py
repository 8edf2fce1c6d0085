"""Smaller SGD batches: more catapults, higher AGOP alignment, lower test loss (thesis Table 4.1,
Fig. 4.9), and the small-learning-rate control where batch size does not matter (Fig. 4.10).

Thesis setting (Sec. 4.4, App. C.6): rank-2 regression ``y = x1 x2 + N(0, 0.1^2)``,
``x ~ N(0, I_100)``, 2000 train / 5000 validation / 5000 test points, a 2-layer ReLU FCN of width
1024 in NTK parameterization, SGD with the constant learning rate ``eta_crit / 2`` of the whole
training set (the same for every batch size), batch sizes 2000 (GD) / 100 / 50 / 10 / 5 (App.
C.6; Table 4.1 lists 2000 / 50 / 10 / 5), trained until the training loss is below 1e-3, the
average of 3 runs. Catapults are counted as the events ``eta - eta_crit(X_batch) > 1e-8`` up to
the best validation loss. Thesis Table 4.1 (Fig. 4.9a):

    batch size      2000   50    10    5
    AGOP alignment  0.81   0.84  0.89  0.95
    test loss       0.74   0.71  0.59  0.42

``--experiment`` picks one of three thesis settings, each writing its own results file:

* ``table4.1`` (default; ``agop_batch_size``): the rank-2 setting above.
* ``rank3`` (``agop_batch_size_rank3``, Fig. 4.9b): ``y = x1 x2 sum_{i<=10} x_i + noise``, a
  4-layer FCN of width 256 (the rank-3 network of Fig. 4.8/4.9), otherwise as above.
* ``small_lr`` (``agop_batch_size_small_lr``, Fig. 4.10): the rank-2 setting with the learning
  rate ``eta_crit / 40``: no catapults, and the thesis sees little effect of the batch size.

What is measured, per run: :class:`kerntk.callbacks.CriticalLRMonitor` at every step (every
``--gd_every`` steps of GD, every ``--sgd_every`` steps of SGD; ``eta_crit(X_batch)`` and the
catapult events); the validation and full training loss every ``1/--checks_per_epoch`` epoch
(every ``--gd_check_every`` steps of GD), which gives the best-validation step
(events are counted up to it) and the stop (training loss on the whole training set below
``--loss_threshold``); at the end, the AGOP alignment ``cos(G, G*)`` of the trained net's AGOP on
the training inputs with the analytic EGOP (thesis Eq. 4.6,
:class:`kerntk.callbacks.AGOPAlignmentLogger`) and the test loss — of the final net and of the
best-validation net.

Biases (SPEC §5): with NTK biases ``b ~ N(0, 1)`` the constant mode dominates the NTK (lambda_max
about 2n instead of n/6 on rank-2), ``eta_crit / 2`` is tiny and no catapults happen; the default
is no bias (``--use_bias`` / ``--b_std`` to test it).

Writes ``<out_dir>/<name>.json`` (results format of ``examples/_common.py``) and
``<out_dir>/<name>.png`` (catapults, alignment and test loss vs batch size, mean ± std over seeds).

    python examples/agop_batch_size.py                         # Table 4.1 (rank-2)
    python examples/agop_batch_size.py --experiment=rank3      # Fig. 4.9b
    python examples/agop_batch_size.py --experiment=small_lr   # Fig. 4.10

Seeds can run side by side in separate processes (``--seed=k --seeds=1 --out_dir=dir_k``) and be
reported together by a last run with ``--seeds=3 --runs_from=dir_1/<name>.json,...``, which
takes their runs as they are (same flags required) and runs only the seeds they lack.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (quiet TensorFlow start-up; before TensorFlow is imported)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, DivergenceGuard  # noqa: E402

# The thesis settings --experiment selects: result name, task, depth, width, lr / eta_crit.
EXPERIMENTS = {
    "table4.1": dict(name="agop_batch_size", task="rank2", depth=2, width=1024, lr_factor=0.5),
    "rank3": dict(name="agop_batch_size_rank3", task="rank3", depth=4, width=256, lr_factor=0.5),
    "small_lr": dict(name="agop_batch_size_small_lr", task="rank2", depth=2, width=1024,
                     lr_factor=1 / 40),
}
PAPER_TABLE41 = {2000: (0.81, 0.74), 50: (0.84, 0.71), 10: (0.89, 0.59), 5: (0.95, 0.42)}

flags.DEFINE_enum("experiment", "table4.1", list(EXPERIMENTS),
                  "Thesis setting: table4.1 (rank-2, 2-layer FCN width 1024, lr eta_crit/2; "
                  "writes agop_batch_size), rank3 (Fig. 4.9b: rank-3, 4-layer FCN width 256; "
                  "agop_batch_size_rank3), small_lr (Fig. 4.10: rank-2 at lr eta_crit/40; "
                  "agop_batch_size_small_lr). --depth/--width/--lr_factor override it when given.")
flags.DEFINE_integer("n", 2000, "Training points (thesis: 2000).")
flags.DEFINE_integer("n_val", 5000, "Validation points: catapults are counted up to the best "
                     "validation loss (thesis: 5000).")
flags.DEFINE_integer("n_test", 5000, "Test points (thesis: 5000).")
flags.DEFINE_integer("d", 100, "Input dimension (thesis: 100).")
flags.DEFINE_float("noise", 0.1, "Label noise standard deviation (thesis: 0.1).")
flags.DEFINE_integer("depth", 2, "Layers of the FCN (thesis: 2 for rank-2, 4 for rank-3; the "
                     "experiment's value unless given).")
flags.DEFINE_list("batch_sizes", ["2000", "100", "50", "10", "5"],
                  "SGD batch sizes; a size >= n is full-batch GD (thesis App. C.6: 2000, 100, "
                  "50, 10, 5).")
flags.DEFINE_float("lr_factor", 0.5, "Learning rate as a multiple of eta_crit of the whole "
                   "training set at initialization (thesis: 1/2; Fig. 4.10: 1/40; the "
                   "experiment's value unless given).")
flags.DEFINE_float("loss_threshold", 1e-3, "Stop when the loss on the whole training set is "
                   "below this (thesis: 1e-3).")
flags.DEFINE_integer("max_steps", 30000, "Step cap of every run: each run stops after exactly "
                     "this many steps, whatever its batch size; a run stopped by it is reported as "
                     "not converged.")
flags.DEFINE_integer("checks_per_epoch", 10, "Validation / training-loss checks per epoch (at "
                     "least one per step).")
flags.DEFINE_integer("sgd_every", 1, "Minibatch runs: the monitor measures every this many steps "
                     "(1: every step, as the thesis counts events).")
flags.DEFINE_integer("gd_check_every", 1, "Full-batch (GD) runs: training and validation loss "
                     "every this many steps (the best-validation step is located to within it).")
flags.DEFINE_integer("gd_every", 10, "Full-batch (GD) runs: the monitor measures every this many "
                     "steps (GD at eta_crit/2 has no catapult to miss).")
flags.DEFINE_string("reason", "", "Why this run's flags differ from the paper's setting "
                    "(recorded with each such deviation in the results file).")
flags.DEFINE_list("runs_from", [], "Results files of this experiment from other processes, "
                  "run with the same flags but --seed/--seeds: their seeds are reported with "
                  "this run's and not run again (seeds run side by side, reported together).")
flags.DEFINE_float("margin", 1.2, "Events with eta > margin x eta_crit(X_batch) are counted apart.")
_common.define_flags(width=1024, use_bias=False, b_std=1.0, seeds=3)
FLAGS = flags.FLAGS


def setting_value(key):
    """The flag's value when given on the command line, else the experiment's."""
    if key in ("depth", "width", "lr_factor") and not FLAGS[key].present:
        return EXPERIMENTS[FLAGS.experiment][key]
    return FLAGS[key].value


class _Checks(keras.callbacks.Callback):
    """Every ``every`` steps (and at the start and end): full training loss and validation loss;
    keeps the best-validation weights and stops when the training loss is below the threshold."""

    def __init__(self, train, val, every, threshold):
        super().__init__()
        self.train, self.val, self.every, self.threshold = train, val, every, threshold
        self.history = {"step": [], "train_loss": [], "val_loss": []}
        self.best_val, self.best_step, self.best_weights = np.inf, 0, None

    def _loss(self, x, y):
        pred = self.model.predict_on_batch(x) if len(x) <= 5000 else self.model.predict(
            x, batch_size=5000, verbose=0)
        return float(np.mean((np.asarray(pred) - y) ** 2))

    def check(self):
        step = int(self.model.optimizer.iterations.numpy())
        if self.history["step"] and self.history["step"][-1] == step:
            return
        train, val = self._loss(*self.train), self._loss(*self.val)
        for k, v in (("step", step), ("train_loss", train), ("val_loss", val)):
            self.history[k].append(v)
        if val < self.best_val:
            self.best_val, self.best_step = val, step
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
        if train < self.threshold or not np.isfinite(train):
            self.model.stop_training = True
        if len(self.history["step"]) % 100 == 0:
            print(f"    step {step}: train loss {train:.3g}, val loss {val:.3g}", flush=True)

    def on_train_begin(self, logs=None):
        self.check()

    def on_train_batch_end(self, batch, logs=None):
        # by the optimizer's step count, not the batch index: a GD epoch is a single step
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self.check()

    def on_train_end(self, logs=None):
        self.check()


def _alignment(model, agop):
    """The logger's AGOP alignment of ``model`` now; NaN for a diverged net, whose weights or
    input gradients are no longer finite (kerntk.agop raises NonFiniteGradientsError)."""
    if not all(np.all(np.isfinite(w)) for w in model.get_weights()):
        return float("nan")
    try:
        return float(agop.measure()["agop_alignment"])
    except kerntk.agop.NonFiniteGradientsError:
        return float("nan")


def run(data, batch_size, seed, *, task, depth, width, lr_factor, max_steps):
    x, y, xv, yv, xt, yt, g_star = data
    n = len(x)
    b = min(batch_size, n)
    keras.utils.set_random_seed(seed)
    model = kerntk.models.fcn(depth, width, input_shape=(x.shape[1],), use_bias=FLAGS.use_bias,
                              b_std=FLAGS.b_std, seed=seed)
    eta_crit0 = float(kerntk.spectral.critical_lr(model, x))
    lr = lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    steps_per_epoch = -(-n // b)
    full = b >= n
    check_every = FLAGS.gd_check_every if full else max(1, steps_per_epoch
                                                            // FLAGS.checks_per_epoch)
    checks = _Checks((x, y), (xv, yv), check_every, FLAGS.loss_threshold)
    monitor = CriticalLRMonitor(margin=FLAGS.margin,
                                every_n_steps=FLAGS.gd_every if full else FLAGS.sgd_every)
    guard = DivergenceGuard(factor=1e3, patience=10, max_restores=1)  # stops a diverging run
    agop = AGOPAlignmentLogger(x, g_star, every_n_epochs=None)  # AGOP on the training inputs
    _common.fit_steps(model, x, y, batch_size=b, seed=seed, max_steps=max_steps,
                      callbacks=[monitor, guard, agop, checks],  # ends with checks.on_train_end
                      gd_steps_per_epoch=100)  # _Checks counts steps, not epochs
    steps = int(model.optimizer.iterations.numpy())
    hist = monitor.history
    ev_steps = np.asarray(hist["step"])
    events = np.asarray(hist["event"], dtype=bool)
    upto = ev_steps < checks.best_step  # updates taken before the best-validation weights
    final = {"agop_alignment": _alignment(model, agop),
             "test_loss": checks._loss(xt, yt)}
    model.set_weights(checks.best_weights)
    best = {"agop_alignment": _alignment(model, agop),
            "test_loss": checks._loss(xt, yt)}
    ratio = np.asarray(hist["eta_over_crit"], dtype=float)
    return {
        "batch_size": b, "seed": seed, "eta_crit_init": eta_crit0, "lr": lr, "steps": steps,
        "epochs": -(-steps // steps_per_epoch),
        "train_loss_final": checks.history["train_loss"][-1],
        "converged": bool(checks.history["train_loss"][-1] < FLAGS.loss_threshold),
        # The guard (max_restores=1) stops a diverging run at its first restore, putting back
        # the last healthy snapshot; a non-finite final loss would mean it missed one.
        "diverged": bool(guard.restores) or not np.isfinite(checks.history["train_loss"][-1]),
        "best_val_step": checks.best_step, "best_val_loss": checks.best_val,
        "catapult_events": int(events[upto].sum()),
        "catapults": int(np.sum(events[upto] & ~np.concatenate([[False], events[upto][:-1]]))),
        "catapults_margin": int(np.sum(ratio[upto] > FLAGS.margin)),
        "catapult_events_all": int(events.sum()),
        "measured_steps": len(ev_steps),
        "max_eta_over_crit": float(np.nanmax(ratio)) if len(ratio) else float("nan"),
        "guard_restores": len(guard.restores),
        "agop_alignment_init": float(agop.history["agop_alignment"][0])
        if agop.history.get("agop_alignment") else float("nan"),
        "agop_alignment": final["agop_alignment"], "test_loss": final["test_loss"],
        "agop_alignment_best_val": best["agop_alignment"], "test_loss_best_val": best["test_loss"],
        "curve": {k: v[::max(1, len(v) // 200)] for k, v in checks.history.items()},
    }


KEYS = ("catapult_events", "catapults", "catapults_margin", "catapult_events_all",
        "agop_alignment", "test_loss", "agop_alignment_best_val", "test_loss_best_val",
        "train_loss_final", "steps", "best_val_step", "measured_steps")


def direction_claims(prefix, table, runs, seeds, paper):
    """Claims of the batch-size trends (``table`` sorted from the largest batch down), each on the
    seed means and, separately, in every seed."""
    sizes = [e["batch_size"] for e in table]
    order = f"batch {'/'.join(map(str, sizes))}"
    specs = [
        ("catapults_increase", "catapult_events", True, False,
         paper["catapults"], "catapult events up to the best validation loss (eta - "
         "eta_crit(X_batch) > 1e-8) never decrease as the batch shrinks and are more at the "
         "smallest batch than at the largest"),
        ("alignment_increases", "agop_alignment", True, True, paper["alignment"],
         "AGOP alignment (training inputs, final net) strictly increases as the batch shrinks"),
        ("test_loss_decreases", "test_loss", False, True, paper["test_loss"],
         "test loss (final net) strictly decreases as the batch shrinks"),
    ]
    claims = []
    for cid, key, inc, strict, paper_text, rule in specs:
        means = [e[key + "_mean"] for e in table]
        claims.append(_common.claim(
            f"{prefix}/{cid}", paper=paper_text,
            measured={f"mean over {len(seeds)} seeds ({order})": [round(m, 4) for m in means]},
            holds=_common.monotone(means, increasing=inc, strict=strict),
            rule=f"on the seed means: {rule}"))
        per_seed = {}
        for s in seeds:
            vals = [next(r[key] for r in runs if r["seed"] == s and r["batch_size"] == b)
                    for b in sizes]
            per_seed[f"seed {s}"] = [round(v, 4) for v in vals]
        claims.append(_common.claim(
            f"{prefix}/{cid}_every_seed", paper=paper_text, measured=per_seed,
            holds=all(_common.monotone(v, increasing=inc, strict=strict)
                      for v in per_seed.values()),
            rule=f"in every seed: {rule}"))
    return claims


def small_lr_claims(table, tol=0.05):
    sizes = [e["batch_size"] for e in table]
    claims = [_common.claim(
        "fig4.10/no_catapults", paper="sufficiently small learning rates result in no catapults "
        "for any batch size (lr = eta_crit/40)",
        measured={f"batch {b}": {"events": e["catapult_events_all_mean"],
                                 "measured steps per run": round(e["measured_steps_mean"]),
                                 "largest eta / eta_crit(X_batch)":
                                     round(e["max_eta_over_crit_max"], 4)}
                  for b, e in zip(sizes, table)},
        holds=all(e["catapult_events_all_mean"] == 0 for e in table),
        rule="no catapult event (eta - eta_crit(X_batch) > 1e-8) in any run, at any measured "
             f"step (GD every {FLAGS.gd_every} steps, minibatches every {FLAGS.sgd_every})")]
    for key, label in (("agop_alignment", "AGOP alignment"), ("test_loss", "test loss")):
        means = np.array([e[key + "_mean"] for e in table])
        spread = float((means.max() - means.min()) / abs(means.mean()))
        claims.append(_common.claim(
            f"fig4.10/no_batch_size_effect_{key}",
            paper=f"with lr = eta_crit/40 the batch size has little effect on {label} (Fig. 4.10)",
            measured={"seed means": {f"batch {b}": round(float(m), 4)
                                     for b, m in zip(sizes, means)},
                      "relative spread": round(spread, 4)},
            holds=spread <= tol,
            rule=f"(max - min) / mean of the seed-mean {label} over the batch sizes <= {tol}"))
    return claims


# The flags a results file must share with this run for its runs to be reported with them.
SAME_FLAGS = ("experiment", "n", "n_val", "n_test", "d", "noise", "depth", "width", "lr_factor",
              "loss_threshold", "max_steps", "checks_per_epoch", "sgd_every", "gd_check_every",
              "gd_every", "margin", "use_bias", "b_std", "smoke")


def runs_from(paths, batch_sizes):
    """The runs of earlier results files (``--runs_from``) by seed, and their wall time; a file
    whose flags differ from this run's, or whose seeds lack a batch size, is refused."""
    import json

    by_seed, wall = {}, 0.0
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        cfg = doc["config"]
        differ = [k for k in SAME_FLAGS if cfg.get(k) != FLAGS[k].value]
        if differ:
            raise app.UsageError(f"{path}: flags {differ} differ from this run's; its runs "
                                 "cannot be reported with them.")
        wall += float(doc["wall_s"])
        for r in doc["results"]["runs"]:
            if r["seed"] in by_seed and path != by_seed[r["seed"]][0]:
                raise app.UsageError(f"seed {r['seed']} is in {by_seed[r['seed']][0]} and {path}.")
            by_seed.setdefault(r["seed"], (path, []))[1].append(r)
    for seed, (path, rows) in by_seed.items():
        if sorted(r["batch_size"] for r in rows) != sorted(batch_sizes):
            raise app.UsageError(f"{path}: seed {seed} has batch sizes "
                                 f"{sorted(r['batch_size'] for r in rows)}, this run "
                                 f"{sorted(batch_sizes)}.")
    return {seed: rows for seed, (_, rows) in by_seed.items()}, wall


def main(argv):
    del argv
    exp = EXPERIMENTS[FLAGS.experiment]
    task, depth, width, lr_factor = (exp["task"], setting_value("depth"), setting_value("width"),
                                     setting_value("lr_factor"))
    n, n_val, n_test, max_steps, seeds = (FLAGS.n, FLAGS.n_val, FLAGS.n_test, FLAGS.max_steps,
                                           FLAGS.seeds)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    if FLAGS.smoke:
        n, n_val, n_test, width = 100, 200, 200, 64
        seeds = seeds if FLAGS["seeds"].present else 1
        max_steps = max_steps if FLAGS["max_steps"].present else 80
        batch_sizes = [100, 5]
    g_star = kerntk.datasets.rank_egop(task, FLAGS.d)
    earlier, earlier_wall = runs_from(FLAGS.runs_from, batch_sizes)
    outside = sorted(set(earlier) - set(range(FLAGS.seed, FLAGS.seed + seeds)))
    if outside:
        raise app.UsageError(f"--runs_from has seed(s) {outside}, outside --seed/--seeds.")
    runs = []
    for seed in range(FLAGS.seed, FLAGS.seed + seeds):
        if seed in earlier:
            runs += earlier[seed]
            print(f"  seed {seed}: {len(earlier[seed])} runs from --runs_from", flush=True)
        else:
            runs += run_seed(seed, g_star, batch_sizes, task=task, n=n, n_val=n_val,
                             n_test=n_test, depth=depth, width=width, lr_factor=lr_factor,
                             max_steps=max_steps)
        # The results file after every seed: a run stopped early still leaves its seeds.
        report(runs, list(range(FLAGS.seed, seed + 1)), exp=exp, task=task, depth=depth,
               width=width, lr_factor=lr_factor, n=n, n_val=n_val, n_test=n_test,
               max_steps=max_steps, batch_sizes=batch_sizes,
               earlier=sorted(s for s in earlier if s <= seed), earlier_wall=earlier_wall)


def run_seed(seed, g_star, batch_sizes, *, task, n, n_val, n_test, depth, width, lr_factor,
             max_steps):
    """The runs of one seed (one data draw), every batch size."""
    x, y = kerntk.datasets.rank_task(task, n, FLAGS.d, noise=FLAGS.noise, seed=seed)
    xv, yv = kerntk.datasets.rank_task(task, n_val, FLAGS.d, noise=FLAGS.noise,
                                       seed=seed + 20_000)
    xt, yt = kerntk.datasets.rank_task(task, n_test, FLAGS.d, noise=FLAGS.noise,
                                       seed=seed + 10_000)
    runs = []
    for b in batch_sizes:
        r = run((x, y, xv, yv, xt, yt, g_star), b, seed, task=task, depth=depth, width=width,
                lr_factor=lr_factor, max_steps=max_steps)
        runs.append(r)
        print(f"  seed {seed} batch {r['batch_size']:5d}: {r['steps']} steps, train loss "
              f"{r['train_loss_final']:.2g}, best val at step {r['best_val_step']}, events "
              f"{r['catapult_events']} (all {r['catapult_events_all']}), alignment "
              f"{r['agop_alignment']:.3f}, test loss {r['test_loss']:.3f}", flush=True)
    return runs


def report(runs, seed_list, *, exp, task, depth, width, lr_factor, n, n_val, n_test, max_steps,
           batch_sizes, earlier=(), earlier_wall=0.0):
    """Writes the results file and figure of the runs of the seeds in ``seed_list`` (those in
    ``earlier`` from ``--runs_from`` files, whose processes took ``earlier_wall`` seconds)."""
    seeds = len(seed_list)
    table = []
    for b in sorted({r["batch_size"] for r in runs}, reverse=True):
        rows = [r for r in runs if r["batch_size"] == b]
        entry = {"batch_size": b, "runs": len(rows),
                 "converged": sum(r["converged"] for r in rows),
                 "diverged": sum(r["diverged"] for r in rows)}
        for k in KEYS:
            vals = [r[k] for r in rows]
            entry[k + "_mean"], entry[k + "_std"] = float(np.mean(vals)), float(np.std(vals))
        entry["max_eta_over_crit_max"] = float(np.nanmax([r["max_eta_over_crit"] for r in rows]))
        table.append(entry)
    name = exp["name"]
    not_converged = sum(not r["converged"] and not r["diverged"] for r in runs)
    diverged = [r for r in runs if r["diverged"]]

    paper_setting = {
        "table4.1": "thesis Table 4.1 / Fig. 4.9a (App. C.6): rank-2 y = x1 x2 + N(0, 0.1^2), "
                    "x ~ N(0, I_100), 2000 train / 5000 val / 5000 test, 2-layer ReLU FCN width "
                    "1024 (NTK param.), SGD at lr = eta_crit(X)/2 for every batch size, batch "
                    "2000/100/50/10/5, trained to training loss < 1e-3, catapults counted up to "
                    "the best validation loss, mean of 3 runs",
        "rank3": "thesis Fig. 4.9b (App. C.6): rank-3 y = x1 x2 sum_{i<=10} x_i + N(0, 0.1^2), "
                 "x ~ N(0, I_100), 2000 train / 5000 val / 5000 test, 4-layer FCN width 256, SGD "
                 "at lr = eta_crit(X)/2, batch 2000/100/50/10/5, trained to training loss < 1e-3, "
                 "mean of 3 runs",
        "small_lr": "thesis Fig. 4.10: the setting of Fig. 4.9a (rank-2, 2-layer FCN width 1024, "
                    "n = 2000) with lr = eta_crit(X)/40 instead of eta_crit/2",
    }[FLAGS.experiment]
    deviations = []
    why = f" ({FLAGS.reason})" if FLAGS.reason else ""
    if not FLAGS.use_bias:
        deviations.append("no biases (the thesis's NTK parameterization has b ~ N(0, 1) terms; "
                          "with them the constant mode dominates the NTK and eta_crit/2 gives no "
                          "catapults at all, SPEC §5)")
    deviations.append("AGOP alignment measured on the training inputs of the net at the end of "
                      "training (the thesis does not say which inputs; the best-validation net's "
                      "values are in results too)")
    gd_checks = ("every step" if FLAGS.gd_check_every == 1
                 else f"every {FLAGS.gd_check_every} steps")
    sgd = ("" if FLAGS.sgd_every == 1 else
           f" and minibatch runs every {FLAGS.sgd_every} steps, so events between measured "
           "steps are not counted")
    deviations.append("the best-validation step is located by checks every 1/"
                      f"{FLAGS.checks_per_epoch} epoch ({gd_checks} for GD), not every step; "
                      f"the monitor measures GD every {FLAGS.gd_every} steps{sgd} (CPU time)")
    if not_converged:
        capped = sorted({r["batch_size"] for r in runs
                         if not r["converged"] and not r["diverged"]}, reverse=True)
        deviations.append(f"{not_converged} of {len(runs)} runs (batch "
                          f"{'/'.join(map(str, capped))}) hit the cap of {max_steps} steps before "
                          f"the training loss reached "
                          f"the threshold; their final train losses are in results{why}")
    if diverged:  # a result, not a choice: listed so that no reader takes them for trained nets
        deviations.append(
            f"{len(diverged)} of {len(runs)} runs diverged at this rate and were stopped by the "
            "divergence guard before the step cap (" + ", ".join(
                f"batch {r['batch_size']} seed {r['seed']} at step {r['steps']}" for r in diverged)
            + "); the claims use their final nets as they are")
    if FLAGS.loss_threshold != FLAGS["loss_threshold"].default and not FLAGS.smoke:
        deviations.append(f"trained to training loss < {FLAGS.loss_threshold:g} instead of "
                          f"{FLAGS['loss_threshold'].default:g}{why}")
    default_sizes = [int(b) for b in FLAGS["batch_sizes"].default]
    if sorted(batch_sizes) != sorted(default_sizes) and not FLAGS.smoke:
        deviations.append(f"batch sizes {batch_sizes} instead of {default_sizes}{why}")
    if seeds != 3:
        deviations.append(f"{seeds} seed(s) instead of 3"
                          + ("" if FLAGS.smoke else why if seeds == FLAGS.seeds else
                             f" (CPU time: the run was stopped after {seeds} of {FLAGS.seeds} "
                             "seeds; the results file is rewritten after each seed)"))
    for key, paper_value in (("n", 2000), ("width", exp["width"]), ("depth", exp["depth"])):
        value = {"n": n, "width": width, "depth": depth}[key]
        if value != paper_value:
            deviations.append(f"{key} = {value} instead of {paper_value}"
                              + ("" if FLAGS.smoke else why))
    ours = (f"{task}, d = {FLAGS.d}, n = {n} train / {n_val} val / {n_test} test, {depth}-layer "
            f"FCN width {width}, lr = {lr_factor:g} x eta_crit(X) at init, batch "
            f"{'/'.join(str(e['batch_size']) for e in table)}, trained to full training loss < "
            f"{FLAGS.loss_threshold:g} (cap {max_steps} steps), "
            f"{seeds} seed(s), "
            f"bias {FLAGS.use_bias}"
            + (f"; seed(s) {', '.join(map(str, earlier))} ran in other processes side by side "
               "(their results files merged with --runs_from; wall time summed over the "
               "processes)" if earlier else ""))

    if FLAGS.experiment == "small_lr":
        claims = small_lr_claims(table)
    else:
        if FLAGS.experiment == "table4.1":
            paper = {"catapults": "smaller batch, more catapults (Fig. 4.9a)",
                     "alignment": "0.81 / 0.84 / 0.89 / 0.95 at batch 2000 / 50 / 10 / 5",
                     "test_loss": "0.74 / 0.71 / 0.59 / 0.42 at batch 2000 / 50 / 10 / 5"}
            prefix = "table4.1"
        else:
            paper = {"catapults": "smaller batch, more catapults (Fig. 4.9b)",
                     "alignment": "increases as the batch shrinks (Fig. 4.9b)",
                     "test_loss": "decreases as the batch shrinks (Fig. 4.9b)"}
            prefix = "fig4.9b"
        claims = direction_claims(prefix, table, runs, seed_list, paper)

    results = {"task": task, "n": n, "n_val": n_val, "n_test": n_test, "d": FLAGS.d,
               "depth": depth, "width": width, "lr_over_eta_crit": lr_factor,
               "by_batch_size": table, "runs": runs}
    if FLAGS.experiment == "table4.1":
        results["paper_table4.1"] = {str(b): {"agop_alignment": a, "test_loss": t}
                                     for b, (a, t) in PAPER_TABLE41.items()}
    if earlier:
        results["seeds_from"] = {"seeds": list(earlier), "files": list(FLAGS.runs_from)}
    _common.write_results(name, setting={"paper": paper_setting, "ours": ours,
                                         "deviations": deviations},
                          config=_common.flag_values(), claims=claims, results=results,
                          earlier_wall_s=earlier_wall)
    _common.save_figure(_plot(table, runs, f"{name}: {ours}"), name)
    print(f"{name}: {ours} (mean ± std):")
    print("  batch  converged  events to best val   alignment      test loss")
    for e in table:
        print(f"  {e['batch_size']:5d}  {e['converged']}/{e['runs']}        "
              f"{e['catapult_events_mean']:7.1f} ± {e['catapult_events_std']:<6.1f}  "
              f"{e['agop_alignment_mean']:.3f} ± {e['agop_alignment_std']:.3f}  "
              f"{e['test_loss_mean']:.3f} ± {e['test_loss_std']:.3f}")
    _common.print_claims(claims)


def _plot(table, runs, title):
    import matplotlib.pyplot as plt

    b = [e["batch_size"] for e in table]
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    for key, label in (("catapult_events", "events to best val"),
                       ("catapults", "distinct catapults to best val"),
                       ("catapult_events_all", "events, whole run")):
        ax[0].errorbar(b, [e[key + "_mean"] for e in table], [e[key + "_std"] for e in table],
                       marker="o", capsize=3, label=label)
    ax[0].set(xscale="log", yscale="symlog", xlabel="batch size", title="catapults")
    ax[0].set_ylim(bottom=0)
    ax[0].legend(fontsize="small")
    for i, (key, label) in enumerate((("agop_alignment", "AGOP alignment cos(G, G*)"),
                                      ("test_loss", "test loss")), start=1):
        ax[i].errorbar(b, [e[key + "_mean"] for e in table], [e[key + "_std"] for e in table],
                       marker="o", capsize=3, label="final net")
        ax[i].errorbar(b, [e[key + "_best_val_mean"] for e in table],
                       [e[key + "_best_val_std"] for e in table], marker="s", capsize=3,
                       ls="--", label="best-validation net")
        ax[i].set(xscale="log", xlabel="batch size", title=label)
        ax[i].legend(fontsize="small")
    for r in runs:
        if r["seed"] == runs[0]["seed"]:
            c = r["curve"]
            ax[3].plot(c["step"], c["val_loss"], label=f"batch {r['batch_size']}")
    ax[3].set(xscale="symlog", yscale="log", xlabel="step", title="validation loss (first seed)")
    ax[3].legend(fontsize="small")
    fig.suptitle(title, fontsize="small")
    return fig


if __name__ == "__main__":
    app.run(main)
