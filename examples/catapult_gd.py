"""Catapult in GD for a 5-layer FCN or CNN on 128 CIFAR-2 points (thesis Fig. 4.3, Fig. C.2).

Full-batch GD at ``--lr_factor`` times the critical learning rate at initialization
(``eta_crit = n / lambda_max(K)``, thesis App. C.1; the thesis uses lr 6 vs eta_crit 3.6 for the FCN
and 8 vs 4.5 for the CNN, i.e. 1.67x and 1.78x). The thesis's claims (Claim 1, §4.3): the loss
spikes and then converges; the spike lives in the top-5 eigenspace of the NTK (``L<=5``) while
``L>5`` decreases almost monotonically; ``||K||_2 = lambda_1`` drops during the catapult until
``eta < eta_crit``.

kerntk's callbacks measure it: :class:`kerntk.callbacks.NTKSpectrumTracker` (``lambda_1..5``, loss
split, kernel drift on the training set, every step) and :class:`kerntk.callbacks.CriticalLRMonitor`
(``eta_crit``, catapult events, loss spikes).

Biases (SPEC §5): the thesis's NTK-parameterized biases ``b ~ N(0, b_std^2)`` add a constant mode
to the NTK; the default here is no bias (``--use_bias=false``), as in the README demo.

Writes ``<out_dir>/catapult_gd_<arch>.png`` (loss with L<=5/L>5, lambda_1..5, eta vs eta_crit)
and ``<out_dir>/catapult_gd_<arch>.json``.

    python examples/catapult_gd.py --arch fcn [--width 1024] [--steps 100]
    python examples/catapult_gd.py --arch cnn --channels 512
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

flags.DEFINE_enum("arch", "fcn", ["fcn", "cnn"], "5-layer NTK fcn or CNN (thesis Fig. 4.3a/b).")
flags.DEFINE_integer("n", 128, "Training points (CIFAR-10 classes 7 and 9).")
flags.DEFINE_integer("depth", 5, "Layers (hidden layers + linear head).")
flags.DEFINE_integer("width", 1024, "Hidden width of the fcn.")
flags.DEFINE_integer("channels", 512, "Channels per conv layer of the CNN.")
flags.DEFINE_integer("image_stride", 1, "CNN: keep every k-th pixel (2: 16x16 images), to make "
                     "the CNN affordable on a CPU; 1 is the thesis's 32x32.")
flags.DEFINE_float("lr_factor", 1.67, "Learning rate as a multiple of eta_crit at initialization "
                   "(thesis: 6/3.6 for the FCN, 8/4.5 for the CNN).")
flags.DEFINE_integer("steps", 100, "GD steps.")
flags.DEFINE_integer("top_s", 5, "Size of the top eigenspace of the loss split (thesis: 5).")
flags.DEFINE_bool("use_bias", False, "NTK-parameterized biases in every layer (SPEC §5: the "
                  "constant mode they add changes eta_crit; off reproduces the thesis's trend).")
flags.DEFINE_float("b_std", 1.0, "Bias scale when --use_bias (thesis App. C.6: 1).")
flags.DEFINE_integer("seed", 0, "Seed of the initialization (and of the data subset with "
                     "--data_sample=random).")
flags.DEFINE_enum("data_sample", "random", ["random", "first"],
                  "Which n CIFAR-2 points: 'random' draws them from the training split with "
                  "--seed; 'first' takes the first n class-7/9 training images (the same from "
                  "kerntk's packaged 256-image subset, offline, and from a full copy).")
flags.DEFINE_string("data_dir", None, "Directory with <name>/<split>*.npz files.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests (16 points, width/channels 8-32).")
flags.DEFINE_string("name", None, "Stem of the output files (default: catapult_gd_<arch>).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    n, width, channels, steps = FLAGS.n, FLAGS.width, FLAGS.channels, FLAGS.steps
    if FLAGS.smoke:
        n, width, channels, steps = 16, 32, 8, 5
    keras.utils.set_random_seed(FLAGS.seed)
    stride = 4 if FLAGS.smoke else FLAGS.image_stride
    data_seed = FLAGS.seed if FLAGS.data_sample == "random" else None
    x, y = load_cifar2(n, data_seed, FLAGS.arch, stride, FLAGS.data_dir)
    model = build_model(FLAGS.arch, FLAGS.depth, width, channels, x.shape[1:], FLAGS.use_bias,
                        FLAGS.b_std, FLAGS.seed)
    eta_crit0 = kerntk.spectral.critical_lr(model, x)
    lr = FLAGS.lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    top_s = min(FLAGS.top_s, n)
    tracker = NTKSpectrumTracker(x, y, k=min(5, n), top_s=top_s, every_n_steps=1,
                                 every_n_epochs=None)
    # A diverging run (lr beyond the catapult range of a narrow net) is stopped at the first
    # step whose loss exceeds 1e3 x the initial one, and its weights restored, before the
    # tracker measures a non-finite kernel.
    monitor = CriticalLRMonitor()
    guard = DivergenceGuard(factor=1e3, patience=1, max_restores=1)
    model.fit(x, y, batch_size=n, epochs=steps, shuffle=False, verbose=0,
              callbacks=[monitor, guard, tracker])  # the guard acts before a measurement

    h, m = tracker.history, monitor.history
    top, rest = np.asarray(h["loss_top"]), np.asarray(h["loss_rest"])
    loss = top + rest
    lam = np.asarray(h["ntk_lambda_1"])
    peak = int(np.argmax(loss))
    # How much of the loss increase during the spike each component carries, and how often
    # each component goes up at all (thesis: L>5 decreases almost monotonically).
    rise_top = float(top[peak] - top[0])
    rise_rest = float(rest[peak] - rest[0])
    summary = {
        "arch": FLAGS.arch, "n": n, "depth": FLAGS.depth, "input_shape": list(x.shape[1:]),
        "width": width if FLAGS.arch == "fcn" else channels, "steps": steps,
        "data_sample": FLAGS.data_sample, "seed": FLAGS.seed,
        "use_bias": FLAGS.use_bias, "b_std": FLAGS.b_std if FLAGS.use_bias else 0.0,
        "eta_crit_init": eta_crit0, "lr": lr, "lr_over_eta_crit": FLAGS.lr_factor,
        "loss_init": float(loss[0]), "loss_peak": float(loss[peak]), "peak_step": peak,
        "loss_final": float(loss[-1]),
        "share_of_peak_in_top_eigenspace": float(top[peak] / loss[peak]),
        "loss_top_rise_to_peak": rise_top, "loss_rest_rise_to_peak": rise_rest,
        "loss_top_increases": int(np.sum(np.diff(top) > 0)),
        "loss_rest_increases": int(np.sum(np.diff(rest) > 0)),
        "lambda_1_init": float(lam[0]), "lambda_1_min": float(lam.min()),
        "lambda_1_min_step": int(np.argmin(lam)), "lambda_1_final": float(lam[-1]),
        "lambda_1_drop": float(1 - lam[-1] / lam[0]),
        "eta_crit_final": float(m["eta_crit"][-1]),
        "lr_below_eta_crit_at_end": bool(lr < m["eta_crit"][-1]),
        "catapult_events": int(monitor.counts["catapult_events"]),
        "catapults": int(monitor.counts["catapults"]),
        "loss_spikes": int(monitor.counts["loss_spikes"]),
        "diverged": bool(guard.restores), "steps_run": int(model.optimizer.iterations.numpy()),
    }
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    name = FLAGS.name or f"catapult_gd_{FLAGS.arch}"
    with open(os.path.join(FLAGS.out_dir, name + ".json"), "w") as f:
        json.dump(summary, f, indent=2)
    _plot(h, m, top_s, FLAGS.arch, os.path.join(FLAGS.out_dir, name + ".png"))
    what = f"width {width}" if FLAGS.arch == "fcn" else f"{channels} channels"
    print(f"GD at {FLAGS.lr_factor:.2f} x eta_crit = {lr:.3g} on {n} CIFAR-2 points, "
          f"{FLAGS.depth}-layer {FLAGS.arch} of {what}, bias {FLAGS.use_bias}:")
    print(f"  loss {loss[0]:.3g} -> peak {loss[peak]:.3g} at step {peak} -> {loss[-1]:.3g}; "
          f"{100 * summary['share_of_peak_in_top_eigenspace']:.1f}% of the peak in L<={top_s}; "
          f"rise to the peak: L<={top_s} {rise_top:+.3g}, L>{top_s} {rise_rest:+.3g}")
    print(f"  ||K||_2 = lambda_1 {lam[0]:.4g} -> min {lam.min():.4g} -> {lam[-1]:.4g} "
          f"({100 * summary['lambda_1_drop']:.0f}% drop); eta_crit {eta_crit0:.3g} -> "
          f"{m['eta_crit'][-1]:.3g}")
    print(f"  catapult events {summary['catapult_events']}, distinct catapults "
          f"{summary['catapults']}, loss spikes {summary['loss_spikes']}")
    if guard.restores:
        print(f"  DIVERGED at step {guard.restores[0]['step']}: weights restored, training "
              "stopped (lower --lr_factor or widen the net)")
    print(f"  figure and numbers in {FLAGS.out_dir}/{name}.{{png,json}}")


def _plot(h, m, top_s, arch, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = h["step"]
    ax[0].semilogy(steps, np.add(h["loss_top"], h["loss_rest"]), "k", label="$L$")
    ax[0].semilogy(steps, np.maximum(h["loss_top"], 1e-12), label=f"$L_{{\\leq {top_s}}}$")
    ax[0].semilogy(steps, np.maximum(h["loss_rest"], 1e-12), label=f"$L_{{> {top_s}}}$")
    ax[0].set(xlabel="step", title=f"training loss ({arch})")
    ax[0].legend()
    for i in range(1, 6):
        if f"ntk_lambda_{i}" in h:
            ax[1].plot(steps, h[f"ntk_lambda_{i}"], label=f"$\\lambda_{i}$")
    ax[1].set(xlabel="step", title="top NTK eigenvalues ($\\lambda_1 = \\|K\\|_2$)")
    ax[1].legend(fontsize="small")
    ax[2].plot(m["step"], m["eta"], label="$\\eta$")
    ax[2].plot(m["step"], m["eta_crit"], label="$\\eta_{crit}$")
    ax[2].set(xlabel="step", title="learning rate vs critical")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
