"""Loss spikes of SGD are catapults: match rate with eta > eta_crit(X_batch) (thesis Table 4.2).

SGD with batch size 32 and a constant learning rate on 128 CIFAR-2 points (classes 7/9), 5-layer
NTK FCN of width 1024 (or CNN), until the training loss is below ``--loss_threshold`` (thesis:
1e-3) or ``--max_epochs``. The thesis's rate is 6 with ``eta_crit = 3.6`` of the whole set (FCN),
so ``--lr_factor`` 1.67 x ``eta_crit`` of the training set at initialization.

:class:`kerntk.callbacks.CriticalLRMonitor` measures at every step ``t`` the batch's
``eta_crit(X_t)`` and whether the batch loss grew over the step (a spike, ``L(w_{t+1}; X_t) >
L(w_t; X_t)``). Reported per seed and as mean ± std over ``--seeds`` runs (thesis: 3):

* ``spike_event_match_rate``: fraction of spikes with ``eta > eta_crit(X_t)`` (thesis Table 4.2:
  96.17 ± 1.46 % for the 5-layer FCN, 94.67 ± 3.27 % for the CNN);
* catapult events (the thesis's count, steps with ``eta - eta_crit(X_t) > 1e-8``), distinct
  catapults (runs of consecutive events) and events with ``eta > --margin x eta_crit(X_t)``
  (SPEC §4: under small-batch SGD the count of events is inflated by marginal crossings).

The first seed also runs :class:`kerntk.callbacks.NTKSpectrumTracker` on the whole training set
(``||K||_2`` drops at the spikes, thesis Fig. 4.7) every ``--track_every`` steps.

Biases (SPEC §5): no bias by default (``--use_bias`` adds ``b ~ N(0, b_std^2)``).

Writes ``<out_dir>/sgd_spikes.png`` (first seed: batch loss with spikes/events, ``||K||_2``,
``eta`` vs ``eta_crit(X_batch)``) and ``<out_dir>/sgd_spikes.json``.

    python examples/sgd_spikes.py [--arch fcn] [--seeds 3] [--max_epochs 100]
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from _cifar2 import build_model, load_cifar2  # noqa: E402
from kerntk.callbacks import CriticalLRMonitor, DivergenceGuard, NTKSpectrumTracker  # noqa: E402

flags.DEFINE_enum("arch", "fcn", ["fcn", "cnn"], "5-layer NTK fcn or CNN (thesis Table 4.2).")
flags.DEFINE_integer("n", 128, "Training points (CIFAR-10 classes 7 and 9).")
flags.DEFINE_integer("depth", 5, "Layers (hidden layers + linear head).")
flags.DEFINE_integer("width", 1024, "Hidden width of the fcn.")
flags.DEFINE_integer("channels", 512, "Channels per conv layer of the CNN.")
flags.DEFINE_integer("image_stride", 1, "CNN: keep every k-th pixel (2: 16x16 images), to make "
                     "the CNN affordable on a CPU; 1 is the thesis's 32x32.")
flags.DEFINE_integer("batch_size", 32, "SGD batch size (thesis: 32).")
flags.DEFINE_float("lr_factor", 1.67, "Constant learning rate as a multiple of eta_crit of the "
                   "whole training set at initialization (thesis: 6 / 3.6).")
flags.DEFINE_float("loss_threshold", 1e-3, "Stop when the epoch's training loss is below this.")
flags.DEFINE_integer("max_epochs", 100, "Epoch cap per run.")
flags.DEFINE_integer("seeds", 3, "Independent runs (data subset and initialization).")
flags.DEFINE_float("margin", 1.2, "Events with eta > margin x eta_crit(X_batch) are counted apart.")
flags.DEFINE_integer("track_every", 4, "First seed: NTK of the training set every this many "
                     "steps (0: off).")
flags.DEFINE_bool("use_bias", False, "NTK-parameterized biases (SPEC §5).")
flags.DEFINE_float("b_std", 1.0, "Bias scale when --use_bias.")
flags.DEFINE_string("data_dir", None, "Directory with <name>/<split>*.npz files.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def run(seed, n, width, channels, batch_size, max_epochs, track):
    keras.utils.set_random_seed(seed)
    stride = 4 if FLAGS.smoke else FLAGS.image_stride
    x, y = load_cifar2(n, seed, FLAGS.arch, stride, FLAGS.data_dir)
    model = build_model(FLAGS.arch, FLAGS.depth, width, channels, x.shape[1:], FLAGS.use_bias,
                        FLAGS.b_std, seed)
    eta_crit0 = kerntk.spectral.critical_lr(model, x)
    lr = FLAGS.lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    monitor = CriticalLRMonitor(margin=FLAGS.margin)

    def stop(epoch, logs):
        if logs["loss"] < FLAGS.loss_threshold:
            model.stop_training = True

    guard = DivergenceGuard(factor=1e3, patience=10, max_restores=1)  # stop a diverging run
    callbacks = [monitor, guard, keras.callbacks.LambdaCallback(on_epoch_end=stop)]
    tracker = None
    if track:
        tracker = NTKSpectrumTracker(x, y, k=1, top_s=1, every_n_steps=FLAGS.track_every,
                                     every_n_epochs=None)
        callbacks.append(tracker)
    hist = model.fit(x, y, batch_size=batch_size, epochs=max_epochs, shuffle=True,
                     verbose=0, callbacks=callbacks)
    c = monitor.counts
    res = {
        "seed": seed, "eta_crit_init": eta_crit0, "lr": lr, "epochs": len(hist.history["loss"]),
        "steps": int(model.optimizer.iterations.numpy()),
        "train_loss_final": float(hist.history["loss"][-1]),
        "converged": bool(hist.history["loss"][-1] < FLAGS.loss_threshold),
        "loss_spikes": int(c["loss_spikes"]), "catapult_events": int(c["catapult_events"]),
        "matched": int(c["matched"]),
        "spike_event_match_rate": c["matched"] / c["loss_spikes"] if c["loss_spikes"] else None,
        "event_spike_rate": c["matched"] / c["catapult_events"] if c["catapult_events"] else None,
        "distinct_catapults": int(c["catapults"]), "catapults_margin": int(c["catapults_margin"]),
        "guard_restores": len(guard.restores),
    }
    if tracker is not None:
        lam = tracker.history["ntk_lambda_1"]
        res.update(ntk_norm_init=float(lam[0]), ntk_norm_final=float(lam[-1]))
    return res, monitor.history, (tracker.history if tracker else None)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def main(argv):
    del argv
    n, width, channels, batch_size, max_epochs, seeds = (
        FLAGS.n, FLAGS.width, FLAGS.channels, FLAGS.batch_size, FLAGS.max_epochs, FLAGS.seeds)
    if FLAGS.smoke:
        n, width, channels, batch_size, max_epochs, seeds = 32, 64, 8, 8, 2, 1
    runs, first = [], None
    for seed in range(seeds):
        res, m, t = run(seed, n, width, channels, batch_size, max_epochs, FLAGS.track_every > 0 and seed == 0)
        runs.append(res)
        if first is None:
            first = (m, t)
    agg = {}
    for key in ("spike_event_match_rate", "event_spike_rate", "loss_spikes", "catapult_events",
                "distinct_catapults", "catapults_margin", "steps"):
        agg[key + "_mean"], agg[key + "_std"] = _mean_std([r[key] for r in runs])
    summary = {"arch": FLAGS.arch, "n": n, "depth": FLAGS.depth,
               "width": width if FLAGS.arch == "fcn" else channels,
               "batch_size": batch_size, "lr_over_eta_crit": FLAGS.lr_factor,
               "loss_threshold": FLAGS.loss_threshold, "max_epochs": max_epochs,
               "margin": FLAGS.margin, "use_bias": FLAGS.use_bias,
               "b_std": FLAGS.b_std if FLAGS.use_bias else 0.0, "seeds": seeds,
               "mean_over_seeds": agg, "runs": runs}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "sgd_spikes.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _plot(*first, os.path.join(FLAGS.out_dir, "sgd_spikes.png"))
    rate, rate_sd = agg["spike_event_match_rate_mean"], agg["spike_event_match_rate_std"]
    print(f"SGD, batch {batch_size}, lr {FLAGS.lr_factor:.2f} x eta_crit, on {n} CIFAR-2 "
          f"points, {FLAGS.depth}-layer {FLAGS.arch}, bias {FLAGS.use_bias}, {seeds} seed(s):")
    for r in runs:
        mr = "n/a" if r["spike_event_match_rate"] is None else \
            f"{100 * r['spike_event_match_rate']:.1f}%"
        print(f"  seed {r['seed']}: {r['steps']} steps, final loss {r['train_loss_final']:.2g}; "
              f"spikes {r['loss_spikes']}, matched {r['matched']} ({mr}); catapult events "
              f"{r['catapult_events']}, distinct catapults {r['distinct_catapults']}, "
              f"> {FLAGS.margin} x eta_crit {r['catapults_margin']}")
    if rate is not None:
        print(f"  match rate {100 * rate:.2f} ± {100 * rate_sd:.2f} % (thesis Table 4.2: "
              f"96.17 ± 1.46 % FCN, 94.67 ± 3.27 % CNN)")
    print(f"  figure and numbers in {FLAGS.out_dir}/sgd_spikes.{{png,json}}")


def _plot(m, t, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = np.asarray(m["step"])
    loss = np.asarray(m["monitor_loss"])
    spike, event = np.asarray(m["spike"], bool), np.asarray(m["event"], bool)
    ax[0].semilogy(steps, loss, "k", lw=0.8, label="batch loss")
    ax[0].semilogy(steps[event], loss[event], "o", mfc="none", color="C1", ms=6,
                   label="$\\eta > \\eta_{crit}(X_{batch})$")
    ax[0].semilogy(steps[spike], loss[spike], "r.", label="spike")
    ax[0].set(xlabel="step", title="training loss (first seed)")
    ax[0].legend(fontsize="small")
    if t is not None:
        ax[1].plot(t["step"], t["ntk_lambda_1"])
    ax[1].set(xlabel="step", title="$\\|K\\|_2$ on the training set")
    ax[2].semilogy(steps, m["eta"], label="$\\eta$")
    ax[2].semilogy(steps, m["eta_crit"], lw=0.8, label="$\\eta_{crit}(X_{batch})$")
    ax[2].set(xlabel="step", title="learning rate vs critical")
    ax[2].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
