"""Transition to linearity of a DAG network (thesis Fig. 2.2, Sec. 2.3, Thm 2.3.6).

A 3-layer DenseNet DAG (``kerntk.graph.densenet_graph``: every non-input node sees the input and all
earlier hidden nodes, thesis Eq. A.5-A.6) with each weight dropped once with probability 1/2 (App.
A.1) is trained by full-batch GD on the MSE ``(1/n) sum_i (f(x_i) - y_i)^2`` over 10 CIFAR-2 points
until the training MSE is below ``--tol``. For each hidden width ``m = 2^1 .. 2^12`` (the thesis'
range) and ``--seeds`` independent graphs/initializations we record the largest relative change of
the tangent kernel on the training points during training, ``max_t ||K_t - K_0|| / ||K_0||``
(spectral norm; thesis Eq. 2.17; ``K_t`` from ``kerntk.ntk.empirical_ntk`` every ``--ntk_every``
steps and at the end). Thm 2.3.6 bounds the Hessian norm by ``O~(1/sqrt(m))``, and the thesis'
Fig. 2.2 shows the drift following ``Theta(1/sqrt(m))``: slope -1/2 on log-log axes.

The slope is fitted by least squares of ``log(mean drift over seeds)`` against ``log m``; its 95%
confidence interval is a bootstrap over seeds (``--bootstrap`` resamples of the seeds at every
width, refitting each time; the 2.5% and 97.5% percentiles). It is reported over three ranges:

* all widths (the thesis' range, 2 .. 2^12);
* small widths, ``m < d`` (the input dimension): in a DenseNet the input feeds every layer, so a
  hidden neuron's in-degree is about ``(d + (l - 1) m) / 2`` and the input, not ``m``, sets the
  Def. 2.2.7 width; the drift is noisy and need not follow ``m^(-1/2)`` there;
* large widths, ``m >= d``: the FCN-like regime the theorem describes.

Data: the first ``n/2`` images of each of two classes (default airplane = +1, automobile = -1) of
the CIFAR-10 training split, through ``kerntk.datasets.load`` (``--data_dir``, else
``$KERNTK_DATA_DIR``), average-pooled ``--pool`` x ``--pool`` (pool 8 gives d = 48, so that the
hidden width, not the input, dominates the in-degrees over most of the range), flattened and
standardized per image (``||x||^2 = d``). Learning rate ``--lr_factor * n / lambda_max(K_0)``
(``kerntk.spectral.critical_lr``): a fixed fraction of the critical rate, lazy regime.

    python examples/transition_to_linearity.py --out_dir examples/results   # paper setting
    python examples/transition_to_linearity.py --smoke --out_dir /tmp/ttl   # seconds
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (quiet TensorFlow start-up first)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.graph import densenet_graph  # noqa: E402
from kerntk.layers import DAG  # noqa: E402
from kerntk.ntk import empirical_ntk  # noqa: E402

NAME = "transition_to_linearity"
PAPER_MAX_LOG2 = 12
_common.define_flags(seeds=5, data_dir=True)
flags.DEFINE_list("classes", ["0", "1"], "The two CIFAR-10 classes, labelled +1 and -1.")
flags.DEFINE_integer("n_points", 10, "Training points (even; half from each class). Thesis: 10.")
flags.DEFINE_integer("pool", 8, "Average-pooling factor of the images before flattening "
                     "(1 = none, d = 3072; 8 gives d = 48).")
flags.DEFINE_integer("depth", 3, "DenseNet depth L (L - 1 hidden nodes and a linear output).")
flags.DEFINE_float("drop", 0.5, "Probability of dropping each weight (once, at construction).")
flags.DEFINE_integer("min_log2_width", 1, "Smallest hidden width is 2**min_log2_width.")
flags.DEFINE_integer("max_log2_width", PAPER_MAX_LOG2, "Largest hidden width is "
                     "2**max_log2_width (thesis: 2^12).")
flags.DEFINE_integer("log2_width_step", 1, "Step between the log2 widths (1: every power of 2).")
flags.DEFINE_float("lr_factor", 0.5, "Learning rate as a fraction of n / lambda_max(K_0).")
flags.DEFINE_integer("max_steps", 3000, "Cap on GD steps.")
flags.DEFINE_float("tol", 1e-4, "Converged when the training MSE falls below this.")
flags.DEFINE_integer("ntk_every", 10, "Recompute K_t every this many GD steps (and at the end).")
flags.DEFINE_integer("bootstrap", 2000, "Bootstrap resamples (over seeds) for the slope's CI.")
flags.DEFINE_float("slope_tol", 0.15, "The slope claim also accepts |slope + 1/2| <= this.")
FLAGS = flags.FLAGS


def load_cifar2(data_dir, classes, n_points: int, pool: int):
    """``x (n, d)`` float32 pooled and standardized per image, and ``y (n,)`` in {+1, -1}."""
    if n_points < 2 or n_points % 2:
        raise ValueError(f"--n_points must be an even number >= 2; got {n_points}.")
    if len(classes) != 2 or 32 % pool:
        raise ValueError(f"--classes needs two labels and --pool must divide 32; got {classes}, "
                         f"{pool}.")
    xs = [kerntk.datasets.load("cifar10", "train", classes=(int(c),), n=n_points // 2,
                               normalize="unit", data_dir=data_dir)[0].astype(np.float64)
          for c in classes]
    x = np.concatenate(xs)
    n, h, w, c = x.shape
    x = x.reshape(n, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4)).reshape(n, -1)
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    y = np.repeat([1.0, -1.0], n_points // 2)
    return x.astype(np.float32), y.astype(np.float32)


def _ntk(model, x):
    return np.asarray(empirical_ntk(model, x), dtype=np.float64)


def run_one(x, y, width: int, seed: int) -> dict:
    """Trains one DenseNet DAG by full-batch GD; returns its kernel drift and training record."""
    keras.utils.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    graph = densenet_graph(x.shape[1], width, depth=FLAGS.depth, drop=FLAGS.drop, seed=seed)
    model = keras.Sequential([keras.Input((x.shape[1],)), DAG(graph, seed=seed)])
    k0 = _ntk(model, x)
    norm0 = float(np.linalg.norm(k0, 2))
    lr = FLAGS.lr_factor * float(kerntk.spectral.critical_lr(model, x, kernel=k0))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    drift, step, y2 = 0.0, 0, y[:, None]
    while step < FLAGS.max_steps:
        loss = float(model.train_on_batch(x, y2))   # the loss before this step's update
        step += 1
        if loss < FLAGS.tol:
            break
        if step % FLAGS.ntk_every == 0:
            drift = max(drift, float(np.linalg.norm(_ntk(model, x) - k0, 2)) / norm0)
    final_loss = float(model.evaluate(x, y2, verbose=0))
    drift = max(drift, float(np.linalg.norm(_ntk(model, x) - k0, 2)) / norm0)
    return {"width": width, "seed": seed, "def_2_2_7_width": graph.width(),
            "live_params": graph.num_params(), "lr": lr, "lambda_max_K0": norm0, "steps": step,
            "final_loss": final_loss, "converged": final_loss < FLAGS.tol,
            "max_relative_kernel_change": drift}


def fit(widths, drift_by_width, rng, n_boot):
    """Slope of log(mean drift) vs log(width), its regression standard error, and a 95% bootstrap
    CI over seeds. ``drift_by_width``: one array of per-seed drifts per width."""
    lw = np.log(np.asarray(widths, float))
    means = np.array([d.mean() for d in drift_by_width])
    slope, intercept = np.polyfit(lw, np.log(means), 1)
    resid = np.log(means) - (slope * lw + intercept)
    # ordinary least-squares standard error of the slope (needs >= 3 widths)
    stderr = float(np.sqrt(resid @ resid / (len(lw) - 2) / np.sum((lw - lw.mean()) ** 2))) \
        if len(lw) > 2 else float("nan")
    boots = []
    for _ in range(n_boot):
        m = [d[rng.integers(0, len(d), len(d))].mean() for d in drift_by_width]
        boots.append(np.polyfit(lw, np.log(m), 1)[0])
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"widths": [int(w) for w in widths], "slope": float(slope),
            "intercept": float(intercept), "slope_stderr": stderr,
            "ci95_bootstrap": [float(lo), float(hi)]}


def slope_claim(cid, fit_, regime, paper):
    lo, hi = fit_["ci95_bootstrap"]
    within = abs(fit_["slope"] + 0.5) <= FLAGS.slope_tol
    return _common.claim(
        cid, paper=paper,
        measured=f"slope {fit_['slope']:.3f}, 95% bootstrap CI [{lo:.3f}, {hi:.3f}] (regression "
                 f"s.e. {fit_['slope_stderr']:.3f}) over widths {fit_['widths'][0]}.."
                 f"{fit_['widths'][-1]} ({regime})",
        holds=bool(lo <= -0.5 <= hi and within),
        rule=f"the 95% bootstrap CI (over seeds) of the fitted log-log slope contains -0.5 AND "
             f"|slope + 0.5| <= {FLAGS.slope_tol:g}")


def plot(results, d):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.array(results["widths"], float)
    mean = np.array(results["mean_drift"])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    runs = results["runs"]
    ax.scatter([r["width"] for r in runs], [r["max_relative_kernel_change"] for r in runs],
               s=10, alpha=0.4, color="C0", label="runs")
    ax.plot(widths, mean, "o-", color="C0", label="mean over seeds")
    for key, color in (("fit_all", "C1"), ("fit_large", "C2")):
        f = results[key]
        if f is None:
            continue
        w = np.array(f["widths"], float)
        ax.plot(w, np.exp(f["intercept"]) * w ** f["slope"], "--", color=color,
                label=f"{key[4:]} widths: slope {f['slope']:.2f} "
                      f"[{f['ci95_bootstrap'][0]:.2f}, {f['ci95_bootstrap'][1]:.2f}]")
    center = np.exp(np.mean(np.log(widths)))
    ax.plot(widths, np.exp(np.mean(np.log(mean))) * (widths / center) ** -0.5, ":", color="gray",
            label="theory: slope -1/2")
    ax.axvline(d, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"hidden width m (vertical line: input dim d = {d})")
    ax.set_ylabel(r"$\max_t \|K_t - K_0\| / \|K_0\|$")
    ax.set_title(f"DenseNet DAG (L={FLAGS.depth}, drop {FLAGS.drop:g}), {results['n_points']} "
                 f"CIFAR-2 points", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def main(argv):
    del argv
    if FLAGS.smoke:
        FLAGS.min_log2_width, FLAGS.max_log2_width, FLAGS.log2_width_step = 2, 8, 3
        FLAGS.seeds, FLAGS.max_steps, FLAGS.ntk_every, FLAGS.pool = 2, 100, 20, 16
        FLAGS.bootstrap = 200
    if FLAGS.min_log2_width < 0 or FLAGS.max_log2_width < FLAGS.min_log2_width + 1:
        raise ValueError("Need 0 <= --min_log2_width < --max_log2_width (two widths to fit).")
    if FLAGS.seeds < 2:
        raise ValueError(f"--seeds must be >= 2 (the CI resamples seeds); got {FLAGS.seeds}.")
    x, y = load_cifar2(FLAGS.data_dir, FLAGS.classes, FLAGS.n_points, FLAGS.pool)
    d = x.shape[1]
    if FLAGS.log2_width_step < 1:
        raise ValueError(f"--log2_width_step must be >= 1; got {FLAGS.log2_width_step}.")
    widths = [2 ** k for k in range(FLAGS.min_log2_width, FLAGS.max_log2_width + 1,
                                    FLAGS.log2_width_step)]
    if len(widths) < 2:
        raise ValueError("Need at least two widths to fit a slope.")
    runs, start = [], time.time()
    for width in widths:
        for s in range(FLAGS.seeds):
            r = run_one(x, y, width, FLAGS.seed + 1000 * s + width)
            runs.append(r)
            print(f"width {width:5d} seed {s}: drift {r['max_relative_kernel_change']:.4g}  "
                  f"steps {r['steps']:4d}  loss {r['final_loss']:.2e}  "
                  f"({time.time() - start:.0f}s)", flush=True)
    drifts = [np.array([r["max_relative_kernel_change"] for r in runs if r["width"] == w])
              for w in widths]
    rng = np.random.default_rng(FLAGS.seed)
    small = [i for i, w in enumerate(widths) if w < d]
    large = [i for i, w in enumerate(widths) if w >= d]
    fit_all = fit(widths, drifts, rng, FLAGS.bootstrap)
    fit_small = fit([widths[i] for i in small], [drifts[i] for i in small], rng,
                    FLAGS.bootstrap) if len(small) >= 2 else None
    fit_large = fit([widths[i] for i in large], [drifts[i] for i in large], rng,
                    FLAGS.bootstrap) if len(large) >= 2 else None
    paper = ("Thm 2.3.6 / Fig. 2.2: the relative kernel change scales as Theta(1/sqrt(m)), i.e. "
             "slope -1/2 on log-log axes, over widths 2 .. 2^12")
    claims = [slope_claim("fig2.2/slope_all_widths", fit_all,
                          f"every width run; the thesis' range is 2 .. 2^{PAPER_MAX_LOG2}", paper)]
    if fit_large is not None:
        claims.append(slope_claim("fig2.2/slope_large_widths", fit_large,
                                  f"m >= d = {d}: the FCN-like regime", paper))
    if fit_small is not None:
        claims.append(slope_claim("fig2.2/slope_small_widths", fit_small,
                                  f"m < d = {d}: the input-dominated regime", paper))
    mean = [float(dr.mean()) for dr in drifts]
    large_means = [mean[i] for i in large]
    claims.append(_common.claim(
        "fig2.2/drift_vanishes_with_width",
        paper="the kernel change vanishes as the width grows (transition to linearity)",
        measured=f"mean drift {large_means[0]:.3g} at m = {widths[large[0]]} -> "
                 f"{large_means[-1]:.3g} at m = {widths[-1]}" if large else "no width >= d",
        holds=bool(len(large) >= 2 and all(b < a for a, b in zip(large_means, large_means[1:]))),
        rule="the seed-mean drift strictly decreases from each width of the grid to the next, "
             "over all widths m >= d"))
    conv = sum(r["converged"] for r in runs)
    claims.append(_common.claim(
        "fig2.2/all_converge",
        paper="GD converges for all widths 2 .. 2^12",
        measured=f"{conv}/{len(runs)} runs reached training MSE < {FLAGS.tol:g} within "
                 f"{FLAGS.max_steps} steps",
        holds=conv == len(runs),
        rule=f"every run (all widths and seeds) reaches training MSE < {FLAGS.tol:g}"))

    deviations = ["inputs average-pooled 8x8 (d = 48 instead of 3072) so that the hidden width, "
                  "not the input, sets the in-degrees for most widths (the thesis does not say "
                  "how it handled the input in the DenseNet's in-degrees)",
                  "the thesis does not name the CIFAR-2 classes, the learning rate or the "
                  f"stopping rule; ours: classes {FLAGS.classes}, eta = {FLAGS.lr_factor:g} "
                  f"n/lambda_max(K_0), stop at MSE < {FLAGS.tol:g}"]
    if (FLAGS.max_log2_width, FLAGS.min_log2_width, FLAGS.log2_width_step) != \
            (PAPER_MAX_LOG2, 1, 1):
        deviations.append(f"widths 2^{FLAGS.min_log2_width} .. 2^{FLAGS.max_log2_width} instead "
                          f"of 2^1 .. 2^{PAPER_MAX_LOG2} (CPU time)")
    if FLAGS.seeds != 5:
        deviations.append(f"{FLAGS.seeds} seeds instead of 5 (CPU time)")
    setting = {
        "paper": "thesis Fig. 2.2: 3-layer DenseNet DAG, each weight dropped w.p. 1/2, 10 CIFAR-2 "
                 "points, GD to convergence, widths 2, 2^2, .., 2^12, mean of 5 runs",
        "ours": f"3-layer DenseNet DAG (kerntk.graph.densenet_graph, drop {FLAGS.drop:g}), "
                f"{FLAGS.n_points} CIFAR-10 points of classes {FLAGS.classes}, pooled to d = {d}, "
                f"GD at {FLAGS.lr_factor:g} eta_crit to MSE < {FLAGS.tol:g}, widths "
                f"{widths[0]} .. {widths[-1]}, {FLAGS.seeds} seeds; slope CI by bootstrap over "
                f"seeds",
        "deviations": deviations}
    results = {"widths": widths, "mean_drift": mean, "input_dim": d, "n_points": len(x),
               "fit_all": fit_all, "fit_small": fit_small, "fit_large": fit_large,
               "ci_method": f"percentile bootstrap over seeds, {FLAGS.bootstrap} resamples",
               "runs": runs}
    path = _common.write_results(NAME, setting=setting, config=_common.flag_values(),
                                 claims=claims, results=results)
    _common.save_figure(plot(results, d), NAME)
    _common.print_claims(claims)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
