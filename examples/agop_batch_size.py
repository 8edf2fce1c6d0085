"""Smaller SGD batches: more catapults, higher AGOP alignment, lower test loss (thesis Table 4.1,
Fig. 4.9).

Thesis setting (App. C.6): rank-2 regression ``y = x1 x2 + N(0, 0.1^2)``, ``x ~ N(0, I_100)``,
2000 train / 5000 test points, a 2-layer FCN of width 1024, SGD with the constant learning rate
``eta_crit / 2`` of the whole training set (the same for every batch size), batch sizes
2000 (GD) / 50 / 10 / 5, trained until the training loss is below 1e-3, 3 runs. Thesis Table 4.1:

    batch size      2000   50    10    5
    AGOP alignment  0.81   0.84  0.89  0.95
    test loss       0.74   0.71  0.59  0.42

A batch whose ``eta_crit(X_batch) = b / lambda_max(K_batch)`` falls below the rate catapults;
small batches do so more often. Measured with kerntk callbacks:
:class:`kerntk.callbacks.CriticalLRMonitor` (every step: catapult events, the thesis's count
``eta - eta_crit(X_batch) > 1e-8``; distinct catapults, runs of consecutive events; events with
``eta > --margin x eta_crit(X_batch)``, SPEC §4) and :class:`kerntk.callbacks.AGOPAlignmentLogger`
(``cos(G, G*)`` of the net's AGOP on ``--probe`` test points with the analytic EGOP, thesis
Eq. 4.6). ``--task`` also takes rank3 (``x1 x2 sum_{i<=10} x_i``), rank4 and the full-rank control
``||x|| / sqrt(d)`` (thesis Fig. C.17).

Biases (SPEC §5): with NTK biases ``b ~ N(0, 1)`` the constant mode dominates the NTK (lambda_max
about 2n instead of n/6 on rank-2), ``eta_crit / 2`` is tiny and no catapults happen; the default
is no bias (``--use_bias`` / ``--b_std`` to test it).

Writes ``<out_dir>/agop_batch_size.png`` (catapults, alignment, test loss vs batch size, mean ±
std over seeds) and ``<out_dir>/agop_batch_size.json``.

    python examples/agop_batch_size.py [--n 2000] [--batch_sizes 2000,50,10,5] [--seeds 3]
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, DivergenceGuard  # noqa: E402

flags.DEFINE_enum("task", "rank2", ["rank2", "rank3", "rank4", "fullrank"],
                  "Synthetic task with an analytic EGOP (kerntk.datasets.rank_task).")
flags.DEFINE_integer("n", 2000, "Training points (thesis: 2000).")
flags.DEFINE_integer("n_test", 5000, "Test points (thesis: 5000).")
flags.DEFINE_integer("d", 100, "Input dimension (thesis: 100).")
flags.DEFINE_float("noise", 0.1, "Label noise standard deviation (thesis: 0.1).")
flags.DEFINE_integer("depth", 2, "Layers of the fcn (thesis Table 4.1: 2).")
flags.DEFINE_integer("width", 1024, "Hidden width (thesis: 1024).")
flags.DEFINE_list("batch_sizes", ["2000", "50", "10", "5"],
                  "SGD batch sizes; a size >= n is full-batch GD (thesis: 2000, 50, 10, 5).")
flags.DEFINE_float("lr_factor", 0.5, "Learning rate as a multiple of eta_crit of the whole "
                   "training set at initialization (thesis: 1/2).")
flags.DEFINE_float("loss_threshold", 1e-3, "Stop when the epoch's training loss is below this "
                   "(thesis: 1e-3).")
flags.DEFINE_integer("max_epochs", 200, "Epoch cap per run (GD: steps).")
flags.DEFINE_integer("max_steps", 0, "If > 0, also cap every run at this many SGD steps (the "
                     "same optimization budget for every batch size; 0: epochs only).")
flags.DEFINE_integer("seeds", 3, "Independent runs (data and initialization; thesis: 3).")
flags.DEFINE_float("margin", 1.2, "Events with eta > margin x eta_crit(X_batch) are counted apart.")
flags.DEFINE_integer("gd_monitor_every", 1, "Full-batch runs: measure eta_crit every this many "
                     "steps (an n x n NTK per measurement).")
flags.DEFINE_integer("probe", 1000, "Test points on which the AGOP is measured.")
flags.DEFINE_bool("use_bias", False, "NTK-parameterized biases (SPEC §5: they suppress the "
                  "catapults; off reproduces the thesis's trend).")
flags.DEFINE_float("b_std", 1.0, "Bias scale when --use_bias.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def run(task_data, batch_size, seed, width, max_epochs):
    x, y, xt, yt, g_star = task_data
    n = len(x)
    keras.utils.set_random_seed(seed)
    model = kerntk.models.fcn(FLAGS.depth, width, input_shape=(x.shape[1],),
                              use_bias=FLAGS.use_bias, b_std=FLAGS.b_std, seed=seed)
    eta_crit0 = kerntk.spectral.critical_lr(model, x)
    lr = FLAGS.lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    full = batch_size >= n
    guard = DivergenceGuard(factor=1e3, patience=10, max_restores=1)  # stop a diverging run
    monitor = CriticalLRMonitor(margin=FLAGS.margin,
                                every_n_steps=FLAGS.gd_monitor_every if full else 1)
    agop = AGOPAlignmentLogger(xt[:FLAGS.probe], g_star, every_n_epochs=None)

    def stop(epoch, logs):
        if logs["loss"] < FLAGS.loss_threshold:
            model.stop_training = True

    epochs = max_epochs
    if FLAGS.max_steps > 0:
        epochs = min(epochs, -(-FLAGS.max_steps // -(-n // min(batch_size, n))))
    hist = model.fit(x, y, batch_size=min(batch_size, n), epochs=epochs, shuffle=True,
                     verbose=0, callbacks=[monitor, guard, agop,
                                           keras.callbacks.LambdaCallback(on_epoch_end=stop)])
    c = monitor.counts
    test_loss = float(model.evaluate(xt, yt, batch_size=1000, verbose=0))
    return {
        "batch_size": int(min(batch_size, n)), "seed": seed, "eta_crit_init": eta_crit0,
        "lr": lr, "epochs": len(hist.history["loss"]),
        "steps": int(model.optimizer.iterations.numpy()),
        "train_loss_final": float(hist.history["loss"][-1]),
        "converged": bool(hist.history["loss"][-1] < FLAGS.loss_threshold),
        "catapult_events": int(c["catapult_events"]), "catapults": int(c["catapults"]),
        "catapults_margin": int(c["catapults_margin"]), "loss_spikes": int(c["loss_spikes"]),
        "guard_restores": len(guard.restores),
        "agop_alignment_init": float(agop.history["agop_alignment"][0]),
        "agop_alignment": float(agop.measure()["agop_alignment"]),
        "test_loss": test_loss,
    }


KEYS = ("catapult_events", "catapults", "catapults_margin", "agop_alignment", "test_loss",
        "train_loss_final", "steps")


def main(argv):
    del argv
    n, n_test, width, max_epochs, seeds = (FLAGS.n, FLAGS.n_test, FLAGS.width, FLAGS.max_epochs,
                                           FLAGS.seeds)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    if FLAGS.smoke:
        n, n_test, width, max_epochs, seeds, batch_sizes = 40, 100, 128, 2, 1, [40, 10]
    runs = []
    for seed in range(seeds):
        x, y = kerntk.datasets.rank_task(FLAGS.task, n, FLAGS.d, noise=FLAGS.noise, seed=seed)
        xt, yt = kerntk.datasets.rank_task(FLAGS.task, n_test, FLAGS.d, noise=FLAGS.noise,
                                           seed=seed + 10_000)
        data = (x, y, xt, yt, kerntk.datasets.rank_egop(FLAGS.task, FLAGS.d))
        for b in batch_sizes:
            runs.append(run(data, b, seed, width, max_epochs))
            r = runs[-1]
            print(f"  seed {seed} batch {r['batch_size']:5d}: {r['steps']} steps, train loss "
                  f"{r['train_loss_final']:.2g}, catapults {r['catapults']} (events "
                  f"{r['catapult_events']}), alignment {r['agop_alignment']:.3f}, test loss "
                  f"{r['test_loss']:.3f}", flush=True)
    table = []
    for b in sorted({r["batch_size"] for r in runs}, reverse=True):
        rows = [r for r in runs if r["batch_size"] == b]
        entry = {"batch_size": b, "runs": len(rows),
                 "converged": sum(r["converged"] for r in rows)}
        for k in KEYS:
            vals = [r[k] for r in rows]
            entry[k + "_mean"], entry[k + "_std"] = float(np.mean(vals)), float(np.std(vals))
        table.append(entry)
    summary = {"task": FLAGS.task, "n": n, "n_test": n_test, "d": FLAGS.d, "depth": FLAGS.depth,
               "width": width, "lr_over_eta_crit": FLAGS.lr_factor,
               "loss_threshold": FLAGS.loss_threshold, "max_epochs": max_epochs,
               "max_steps": FLAGS.max_steps, "seeds": seeds,
               "margin": FLAGS.margin, "gd_monitor_every": FLAGS.gd_monitor_every,
               "use_bias": FLAGS.use_bias, "b_std": FLAGS.b_std if FLAGS.use_bias else 0.0,
               "by_batch_size": table, "runs": runs}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "agop_batch_size.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _plot(table, os.path.join(FLAGS.out_dir, "agop_batch_size.png"))
    print(f"{FLAGS.task}, n={n}, {FLAGS.depth}-layer fcn width {width}, lr "
          f"{FLAGS.lr_factor} x eta_crit, bias {FLAGS.use_bias}, {seeds} seed(s) (mean ± std):")
    print("  batch  converged  catapults(distinct)  events        alignment      test loss")
    for e in table:
        print(f"  {e['batch_size']:5d}  {e['converged']}/{e['runs']}        "
              f"{e['catapults_mean']:6.1f} ± {e['catapults_std']:<5.1f}      "
              f"{e['catapult_events_mean']:6.1f} ± {e['catapult_events_std']:<5.1f} "
              f"{e['agop_alignment_mean']:.3f} ± {e['agop_alignment_std']:.3f}  "
              f"{e['test_loss_mean']:.3f} ± {e['test_loss_std']:.3f}")
    print("  thesis Table 4.1 (n=2000): alignment 0.81/0.84/0.89/0.95, test loss "
          "0.74/0.71/0.59/0.42 for batch 2000/50/10/5")
    print(f"  figure and numbers in {FLAGS.out_dir}/agop_batch_size.{{png,json}}")


def _plot(table, path):
    import matplotlib.pyplot as plt

    b = [e["batch_size"] for e in table]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("catapults", "distinct catapults"),
                       ("catapult_events", "events $\\eta > \\eta_{crit}(X_{batch})$"),
                       ("catapults_margin", "events with margin")):
        ax[0].errorbar(b, [e[key + "_mean"] for e in table], [e[key + "_std"] for e in table],
                       marker="o", capsize=3, label=label)
    ax[0].set(xscale="log", yscale="symlog", xlabel="batch size", title="number of catapults")
    ax[0].set_ylim(bottom=0)
    ax[0].legend(fontsize="small")
    ax[1].errorbar(b, [e["agop_alignment_mean"] for e in table],
                   [e["agop_alignment_std"] for e in table], marker="o", capsize=3)
    ax[1].set(xscale="log", xlabel="batch size", title="AGOP alignment cos(G, G*)")
    ax[2].errorbar(b, [e["test_loss_mean"] for e in table], [e["test_loss_std"] for e in table],
                   marker="o", capsize=3)
    ax[2].set(xscale="log", xlabel="batch size", title="test loss")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
