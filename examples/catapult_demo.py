"""Catapult demo (thesis Fig. 4.3): GD above the critical learning rate on 128 CIFAR-2 points.

A 5-layer NTK-parameterized ReLU fcn is trained by full-batch GD at ``--lr_factor`` times its
critical learning rate ``eta_crit = n / lambda_max(K)`` (thesis App. C.1). kerntk's callbacks watch
the run: NTKSpectrumTracker logs the top NTK eigenvalues and the loss split into the top-5
eigenspace (L<=5) and the rest (L>5); CriticalLRMonitor logs eta_crit and counts catapult events
and loss spikes. Expected (thesis Ch. 4): the loss spikes, the spike lives in L<=5 while L>5 keeps
decreasing, lambda_1 drops until eta < eta_crit, then the loss converges.

Writes ``<out_dir>/catapult_demo.png`` (3 panels: loss with L<=5/L>5, lambda_1, eta vs eta_crit)
and ``<out_dir>/catapult_demo.json``. Data: CIFAR-10 classes 7/9 through ``kerntk.datasets.load``
(``--data_dir`` or ``$KERNTK_DATA_DIR``, else ``../shared/datasets``, else tensorflow-datasets).

    python examples/catapult_demo.py [--steps 120] [--width 1024] [--smoke]
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import CriticalLRMonitor, NTKSpectrumTracker  # noqa: E402

flags.DEFINE_integer("n", 128, "Training points (CIFAR-2).")
flags.DEFINE_integer("depth", 5, "Layers of the fcn (hidden layers + linear head).")
flags.DEFINE_integer("width", 1024, "Hidden width.")
flags.DEFINE_float("lr_factor", 1.6, "Learning rate as a multiple of eta_crit at initialization.")
flags.DEFINE_integer("steps", 120, "GD steps.")
flags.DEFINE_integer("top_s", 5, "Size of the top eigenspace of the loss split.")
flags.DEFINE_float("b_std", 0.0, "Bias scale (0: no biases; see SPEC §5 on why biases matter).")
flags.DEFINE_integer("seed", 0, "Seed of the data subset and the initialization.")
flags.DEFINE_string("data_dir", None, "Directory with <name>/<split>*.npz files.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    n, width, steps = FLAGS.n, FLAGS.width, FLAGS.steps
    if FLAGS.smoke:
        n, width, steps = 16, 64, 6
    keras.utils.set_random_seed(FLAGS.seed)
    x, y = kerntk.datasets.load("cifar10", "train", classes=(7, 9), n=n, seed=FLAGS.seed,
                                flatten=True, normalize="standardize", labels="pm1",
                                data_dir=FLAGS.data_dir)
    y = y.reshape(-1, 1).astype("float32")
    model = kerntk.models.fcn(FLAGS.depth, width, input_shape=(x.shape[1],),
                              use_bias=FLAGS.b_std > 0, b_std=max(FLAGS.b_std, 0.0),
                              seed=FLAGS.seed)
    eta_crit0 = kerntk.spectral.critical_lr(model, x)
    lr = FLAGS.lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    tracker = NTKSpectrumTracker(x, y, k=min(5, n), top_s=min(FLAGS.top_s, n), every_n_steps=1,
                                 every_n_epochs=None)
    monitor = CriticalLRMonitor()
    model.fit(x, y, batch_size=n, epochs=steps, shuffle=False, verbose=0,
              callbacks=[tracker, monitor])

    h, m = tracker.history, monitor.history
    loss = np.add(h["loss_top"], h["loss_rest"])
    lam = np.asarray(h["ntk_lambda_1"])
    peak = int(np.argmax(loss))
    summary = {
        "n": n, "width": width, "depth": FLAGS.depth, "steps": steps, "eta_crit_init": eta_crit0,
        "lr": lr, "lr_over_eta_crit": FLAGS.lr_factor,
        "loss_init": float(loss[0]), "loss_peak": float(loss[peak]), "peak_step": peak,
        "loss_final": float(loss[-1]),
        "share_of_peak_in_top_eigenspace": float(h["loss_top"][peak] / loss[peak]),
        "lambda_1_init": float(lam[0]), "lambda_1_final": float(lam[-1]),
        "eta_crit_final": float(m["eta_crit"][-1]),
        "catapult_events": int(monitor.counts["catapult_events"]),
        "catapults": int(monitor.counts["catapults"]),
        "loss_spikes": int(monitor.counts["loss_spikes"]),
    }
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "catapult_demo.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _plot(h, m, FLAGS.top_s, os.path.join(FLAGS.out_dir, "catapult_demo.png"))
    print(f"GD at {FLAGS.lr_factor:.2f} x eta_crit = {lr:.3g} on {n} CIFAR-2 points, "
          f"{FLAGS.depth}-layer fcn of width {width}:")
    print(f"  loss {loss[0]:.3g} -> peak {loss[peak]:.3g} at step {peak} -> {loss[-1]:.3g}; "
          f"{100 * summary['share_of_peak_in_top_eigenspace']:.1f}% of the peak in the top-"
          f"{FLAGS.top_s} NTK eigenspace")
    print(f"  lambda_1 {lam[0]:.4g} -> {lam[-1]:.4g} "
          f"({100 * (1 - lam[-1] / lam[0]):.0f}% drop); eta_crit {eta_crit0:.3g} -> "
          f"{m['eta_crit'][-1]:.3g}")
    print(f"  catapult events {summary['catapult_events']}, distinct catapults "
          f"{summary['catapults']}, loss spikes {summary['loss_spikes']}")
    print(f"  figure and numbers in {FLAGS.out_dir}/catapult_demo.{{png,json}}")


def _plot(h, m, top_s, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = h["step"]
    ax[0].semilogy(steps, np.add(h["loss_top"], h["loss_rest"]), "k", label="loss")
    ax[0].semilogy(steps, h["loss_top"], label=f"$L_{{\\leq {top_s}}}$")
    ax[0].semilogy(steps, np.maximum(h["loss_rest"], 1e-12), label=f"$L_{{> {top_s}}}$")
    ax[0].set(xlabel="step", title="training loss")
    ax[0].legend()
    ax[1].plot(steps, h["ntk_lambda_1"])
    ax[1].set(xlabel="step", title="$\\lambda_1$ of the NTK ($\\|K\\|_2$)")
    ax[2].plot(m["step"], m["eta"], label="$\\eta$")
    ax[2].plot(m["step"], m["eta_crit"], label="$\\eta_{crit}$")
    ax[2].set(xlabel="step", title="learning rate vs critical")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
