"""Best test loss vs learning rate for f, f_lin and f_quad (thesis Fig. 3.4 / B.5, Sec. 3.4).

A 2-layer NTK-parameterized ReLU fcn ``f`` (``kerntk.models.fcn(2, width)``), its linearization
``f_lin`` (thesis Eq. 3.1, ``kerntk.models.linearize``) and its neural quadratic model ``f_quad``
(Eq. 3.2, ``kerntk.models.quadratic``), all from the same ``w0``, are trained by full-batch GD on
the MSE ``(1/n) sum_i (f(x_i) - y_i)^2`` (Keras' mean convention) at every learning rate
``eta = factor * eta_crit`` of ``--lr_factors``, for ``--seeds`` independent runs (a fresh random
training/test subset and initialization each). For each run we record the best test loss and
accuracy seen during training (as the thesis reports), the largest training loss (a catapult shows
as a rise above the initial loss) and whether it diverged.

``eta_crit = n / lambda_max(K_0)`` is ``kerntk.spectral.critical_lr(f, x)`` (MSE, GD; thesis
App. C.1), with ``K_0`` the empirical NTK of ``f`` at ``w0`` on the training inputs (the same for
the three models).

Claims (thesis Sec. 3.4, Fig. 3.4), each checked over *every* learning rate of the grid:

* sub-critical (eta < eta_crit): "all three models have nearly identical test loss";
* super-critical: "the loss of f_lin diverges";
* super-critical: "f and f_quad can be observed to have catapult phase" (the training loss rises
  above its initial value, then converges);
* super-critical: "the best test loss of both f and f_quad is consistently smaller than the one
  with sub-critical learning rates".

Data: MNIST-2 (digits 0 -> +1 and 2 -> -1; thesis App. B.14 picks 128 MNIST training points and
2000 test points) through ``kerntk.datasets.load`` (``--data_dir``, else ``$KERNTK_DATA_DIR``): a
seeded random subset of the two digits, flattened and standardized per image (``normalize=
"standardize"``, so ``||x|| = sqrt(d)``). No biases (SPEC §5: NTK-parameterized biases dominate
the NTK).

    python examples/quadratic_models.py --out_dir examples/results      # paper setting (long)
    python examples/quadratic_models.py --smoke --out_dir /tmp/qm       # seconds
"""

import os
import sys
import time

_START = time.time()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (quiet TensorFlow start-up first)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

NAME = "quadratic_models"
PAPER_WIDTH = 5000
_common.define_flags(width=PAPER_WIDTH, seeds=5, data_dir=True)
flags.DEFINE_list("classes", ["0", "2"], "The two MNIST digits, labelled +1 and -1 (thesis: 0, 2).")
flags.DEFINE_integer("n_train", 128, "Training points (a random subset of the two digits). "
                     "Thesis: 128.")
flags.DEFINE_integer("n_test", 2000, "Test points (a random subset of the two digits' test "
                     "split). Thesis: 2000.")
flags.DEFINE_list("lr_factors", ["0.25", "0.5", "0.9", "1.2", "1.5", "1.8", "2.2", "2.6",
                                 "3.0", "4.0"],
                  "Learning rates as multiples of eta_crit = n / lambda_max(K_0).")
flags.DEFINE_integer("steps", 300, "Full-batch GD steps per run.")
flags.DEFINE_integer("eval_every", 5, "Evaluate the test set every this many steps.")
flags.DEFINE_float("diverge_factor", 1e4, "A run diverged when its training loss exceeds this "
                   "multiple of the initial loss (or is not finite); it is then stopped.")
flags.DEFINE_float("same_tol", 0.05, "Sub-critical claim: the three models' best test losses "
                   "agree when (max - min) / min is at most this.")
flags.DEFINE_float("catapult_ratio", 1.0, "A catapult: the peak training loss exceeds this "
                   "multiple of the initial loss and the run converges.")
FLAGS = flags.FLAGS
MODELS = ("f", "f_lin", "f_quad")


def load_two_classes(split, classes, n, seed, data_dir):
    """A seeded random ``n`` images of the two classes together, labels +1 (``classes[0]``) and
    -1, standardized per image (``||x|| = sqrt(d)``)."""
    x, y = kerntk.datasets.load("mnist", split, classes=tuple(classes), n=n, seed=seed,
                                normalize="standardize", flatten=True, data_dir=data_dir)
    return x.astype("float32"), (1.0 - 2.0 * y.astype("float32"))[:, None]


def train(model, w0, lr, x, y, x_test, y_test, step, predict):
    """Full-batch GD from w0 (``step``: one compiled GD step returning the loss at the current
    weights, before the update). Returns the run's record."""
    if isinstance(model, kerntk.models.TaylorModel):
        model.reset_delta()
    else:
        model.set_weights(w0)
    model.optimizer.learning_rate.assign(lr)
    x_test = tf.constant(x_test)

    def test():
        pred = predict(x_test).numpy().astype("float64")
        with np.errstate(all="ignore"):
            loss = float(np.mean((pred - y_test) ** 2))
        return loss, float(np.mean(np.sign(pred) == np.sign(y_test)))

    best_loss, best_acc = test()
    losses, diverged = [], False
    for t in range(FLAGS.steps):
        loss = float(step(x, y))
        losses.append(loss)
        if not np.isfinite(loss) or loss > FLAGS.diverge_factor * losses[0]:
            diverged = True
            break
        if (t + 1) % FLAGS.eval_every == 0 or t + 1 == FLAGS.steps:
            tl, ta = test()
            if np.isfinite(tl):
                best_loss, best_acc = min(best_loss, tl), max(best_acc, ta)
    losses = np.array(losses, dtype="float64")
    converged = (not diverged) and losses[-1] < losses[0]
    finite = losses[np.isfinite(losses)]
    peak = float(finite.max()) if len(finite) else float("nan")
    return {"best_test_loss": best_loss if np.isfinite(best_loss) else None,
            "best_test_acc": best_acc, "diverged": bool(diverged),
            "converged": bool(converged), "initial_train_loss": float(losses[0]),
            "peak_train_loss": peak, "final_train_loss": float(losses[-1]),
            "catapult": bool(converged and peak > FLAGS.catapult_ratio * losses[0]),
            "steps_run": int(len(losses))}


def _compiled_step(model):
    """One full-batch GD step on the MSE, traced once per model (a Python loop of ``fit`` epochs
    costs far more in per-epoch overhead than the step itself)."""
    var = model.trainable_variables

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        model.optimizer.apply_gradients(zip(tape.gradient(loss, var), var))
        return loss

    return step


def run_seed(seed, factors, classes):
    x, y = load_two_classes("train", classes, FLAGS.n_train, seed, FLAGS.data_dir)
    x_test, y_test = load_two_classes("test", classes, FLAGS.n_test, seed + 1, FLAGS.data_dir)
    keras.utils.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    net = kerntk.models.fcn(2, FLAGS.width, 1, use_bias=False, input_shape=(x.shape[1],),
                            seed=seed)
    w0 = net.get_weights()
    eta_crit = float(kerntk.spectral.critical_lr(net, x))
    models = {"f": net, "f_lin": kerntk.models.linearize(net),
              "f_quad": kerntk.models.quadratic(net)}
    runs = {name: [] for name in MODELS}
    x_c, y_c = tf.constant(x), tf.constant(y)
    for name in MODELS:
        m = models[name]
        m.compile(optimizer=keras.optimizers.SGD(eta_crit), loss="mse")
        m.optimizer.build(m.trainable_variables)
        step = _compiled_step(m)
        predict = tf.function(lambda t, m=m: m(t, training=False))  # traced once per model
        for factor in factors:
            with np.errstate(all="ignore"):
                r = train(m, w0, factor * eta_crit, x_c, y_c, x_test, y_test, step, predict)
            r.update(lr=factor * eta_crit, lr_factor=factor)
            runs[name].append(r)
            best = r["best_test_loss"]
            print(f"seed {seed} {name:6s} eta {factor:4.2f} eta_crit: best test loss "
                  f"{'-' if best is None else f'{best:.4f}'} acc {r['best_test_acc']:.3f} "
                  f"peak/initial {r['peak_train_loss'] / r['initial_train_loss']:.3g}"
                  f"{' DIVERGED' if r['diverged'] else ''} ({time.time() - _START:.0f} s)",
                  flush=True)
    return {"seed": seed, "eta_crit": eta_crit, "lambda_max_K0": len(x) / eta_crit, "runs": runs}


def aggregate(per_seed, factors):
    """Per model and learning rate: mean and std of the best test loss over the seeds that
    converged, and how many seeds diverged / catapulted."""
    table = {}
    for name in MODELS:
        rows = []
        for i, factor in enumerate(factors):
            rs = [s["runs"][name][i] for s in per_seed]
            ok = [r["best_test_loss"] for r in rs if not r["diverged"]]
            acc = [r["best_test_acc"] for r in rs if not r["diverged"]]
            rows.append({"lr_factor": factor, "n_seeds": len(rs),
                         "n_diverged": sum(r["diverged"] for r in rs),
                         "n_catapult": sum(r["catapult"] for r in rs),
                         "best_test_loss_mean": float(np.mean(ok)) if ok else None,
                         "best_test_loss_std": float(np.std(ok)) if ok else None,
                         "best_test_acc_mean": float(np.mean(acc)) if acc else None})
        table[name] = rows
    return table


def make_claims(per_seed, table, factors):
    sub = [i for i, f in enumerate(factors) if f < 1.0]
    sup = [i for i, f in enumerate(factors) if f > 1.0]
    claims = []

    # 1. Sub-critical: nearly identical test loss, at every sub-critical rate, in every seed.
    spreads = []
    for s in per_seed:
        for i in sub:
            v = [s["runs"][n][i]["best_test_loss"] for n in MODELS]
            spreads.append(float("inf") if None in v else (max(v) - min(v)) / min(v))
    worst = max(spreads) if spreads else float("nan")
    claims.append(_common.claim(
        "fig3.4/subcritical_identical",
        paper="below eta_crit all three models have nearly identical test loss",
        measured=f"largest relative spread (max-min)/min of the three best test losses: "
                 f"{worst:.3g} over {len(sub)} sub-critical rates x {len(per_seed)} seeds",
        holds=bool(spreads) and worst <= FLAGS.same_tol,
        rule=f"at every learning rate < eta_crit and in every seed, (max - min) / min of the best "
             f"test losses of f, f_lin, f_quad is <= {FLAGS.same_tol:g}"))

    # 2. Super-critical: f_lin diverges at every rate, every seed.
    lin_div = [table["f_lin"][i]["n_diverged"] for i in sup]
    claims.append(_common.claim(
        "fig3.4/f_lin_diverges",
        paper="above eta_crit the loss of f_lin diverges",
        measured={f"{factors[i]:g}": f"{table['f_lin'][i]['n_diverged']}/{len(per_seed)} diverged"
                  for i in sup},
        holds=bool(sup) and all(d == len(per_seed) for d in lin_div),
        rule="f_lin diverges (training loss > diverge_factor x initial, or not finite) at every "
             "learning rate > eta_crit, in every seed"))

    # 3. Super-critical: f and f_quad have a catapult phase, where they converge. Converging rates
    # are those with no diverged seed; the rule covers all of them.
    for name in ("f", "f_quad"):
        conv = [i for i in sup if table[name][i]["n_diverged"] == 0]
        cat = [table[name][i]["n_catapult"] for i in conv]
        claims.append(_common.claim(
            f"fig3.4/{name}_catapults",
            paper=f"above eta_crit {name} can converge through a catapult (the loss first "
                  f"increases, then decreases), unlike f_lin",
            measured={f"{factors[i]:g}": f"{table[name][i]['n_catapult']}/{len(per_seed)} "
                      f"catapults, {table[name][i]['n_diverged']} diverged" for i in sup},
            holds=bool(conv) and all(c == len(per_seed) for c in cat),
            rule=f"at least one super-critical rate converges in every seed, and at every "
                 f"super-critical rate where no seed diverges, every seed shows a catapult (peak "
                 f"training loss > {FLAGS.catapult_ratio:g} x initial, final < initial)"))

    # 4. Super-critical best test loss smaller than every sub-critical one (f and f_quad), at
    # every super-critical rate where the model converges in every seed (means over seeds).
    for name in ("f", "f_quad"):
        best_sub = min(table[name][i]["best_test_loss_mean"] for i in sub)
        conv = [i for i in sup if table[name][i]["n_diverged"] == 0]
        lower = {f"{factors[i]:g}": table[name][i]["best_test_loss_mean"] for i in conv}
        claims.append(_common.claim(
            f"fig3.4/{name}_supercritical_lower_test_loss",
            paper="the best test loss of f and f_quad at super-critical rates is consistently "
                  "smaller than at sub-critical rates (decreasing with eta in a range beyond "
                  "eta_crit)",
            measured=f"best sub-critical mean {best_sub:.4f}; super-critical means (converging "
                     f"rates) " + ", ".join(f"{k}: {v:.4f}" for k, v in lower.items()),
            holds=bool(conv) and all(v < best_sub for v in lower.values()),
            rule="the seed-mean best test loss at EVERY super-critical rate where no seed "
                 "diverges is below the smallest seed-mean best test loss over the sub-critical "
                 "rates",
            note="rates where some seed diverges are listed in the catapult claim, not here"))
    return claims


def plot(table, factors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"f": ("k", "o"), "f_lin": ("tab:blue", "s"), "f_quad": ("tab:red", "^")}
    for name in MODELS:
        c, mk = styles[name]
        rows = [r for r in table[name] if r["best_test_loss_mean"] is not None
                and r["n_diverged"] == 0]
        if rows:
            axes[0].errorbar([r["lr_factor"] for r in rows],
                             [r["best_test_loss_mean"] for r in rows],
                             yerr=[r["best_test_loss_std"] for r in rows], color=c, marker=mk,
                             capsize=3, label=name)
            axes[1].plot([r["lr_factor"] for r in rows], [r["best_test_acc_mean"] for r in rows],
                         color=c, marker=mk, label=name)
        bad = [r["lr_factor"] for r in table[name] if r["n_diverged"] > 0]
        if bad:
            for ax in axes:
                ax.plot(bad, [0.0] * len(bad), color=c, marker="x", linestyle="none",
                        label=f"{name}: a seed diverged")
    for ax, label in zip(axes, ("best test loss (mean ± std over seeds)", "best test accuracy")):
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(r"learning rate / $\eta_{crit}$")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(r"f, $f_{lin}$, $f_{quad}$ under GD on MNIST-2 (thesis Fig. 3.4 / B.5)")
    return fig


def main(_):
    if FLAGS.smoke:
        FLAGS.n_train, FLAGS.n_test, FLAGS.width, FLAGS.steps = 16, 64, 128, 30
        FLAGS.lr_factors, FLAGS.eval_every = ["0.5", "1.5", "3.0"], 3
        FLAGS.seeds = min(FLAGS.seeds, 2)
    if FLAGS.n_train < 2 or FLAGS.n_test < 2:
        raise ValueError("--n_train and --n_test must be >= 2.")
    factors = sorted(float(f) for f in FLAGS.lr_factors)
    if not factors or min(factors) <= 0 or 1.0 in factors:
        raise ValueError(f"--lr_factors must be positive and exclude 1; got {FLAGS.lr_factors}.")
    if not (min(factors) < 1.0 < max(factors)):
        raise ValueError("--lr_factors needs rates on both sides of eta_crit.")
    classes = [int(c) for c in FLAGS.classes]
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"--classes needs two distinct digits; got {FLAGS.classes}.")
    if FLAGS.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {FLAGS.seeds}.")

    per_seed = [run_seed(FLAGS.seed + s, factors, classes) for s in range(FLAGS.seeds)]
    table = aggregate(per_seed, factors)
    claims = make_claims(per_seed, table, factors)
    deviations = []
    if FLAGS.width != PAPER_WIDTH:
        deviations.append(f"width {FLAGS.width} instead of {PAPER_WIDTH} (CPU time: see the "
                          f"results' wall_s; f_quad's step cost grows with the width)")
    if FLAGS.seeds != 5:
        deviations.append(f"{FLAGS.seeds} seeds instead of the thesis' 5 (CPU time)")
    deviations.append("the thesis does not state its number of GD steps or its learning-rate "
                      f"grid; ours: {FLAGS.steps} steps, eta/eta_crit in {factors}")
    deviations.append("MNIST only (the thesis' Fig. 3.4 also has CIFAR-2, SVHN, FSDD, AG NEWS "
                      "and CNNs)")
    setting = {
        "paper": "thesis Fig. 3.4 (App. B.14): 2-layer ReLU FC net, width 5000, 128 MNIST (0 vs "
                 "2) training points, 2000 test points, squared loss, GD with constant eta; "
                 "best test loss over training; mean of 5 runs",
        "ours": f"2-layer ReLU fcn (NTK parameterization, no bias), width {FLAGS.width}, "
                f"{FLAGS.n_train} MNIST 0-vs-2 training points, {FLAGS.n_test} test points, "
                f"MSE, {FLAGS.steps} full-batch GD steps, {len(factors)} rates, "
                f"{FLAGS.seeds} seeds",
        "deviations": deviations}
    results = {"lr_factors": factors, "table": table,
               "eta_crit": [s["eta_crit"] for s in per_seed],
               "lambda_max_K0": [s["lambda_max_K0"] for s in per_seed], "per_seed": per_seed}
    path = _common.write_results(NAME, setting=setting, config=_common.flag_values(),
                                 claims=claims, results=results)
    _common.save_figure(plot(table, factors), NAME)
    _common.print_claims(claims)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
