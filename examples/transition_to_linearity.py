"""Transition to linearity of a DAG network (thesis Fig. 2.2, Ch. 2.3).

A 3-layer DenseNet DAG (``kerntk.graph.densenet_graph``: every non-input node sees the input and all
earlier hidden nodes, thesis Eq. A.5-A.6) with each weight dropped once with probability 1/2 (App.
A.1) is trained by full-batch gradient descent on the MSE ``(1/n) sum_i (f(x_i) - y_i)^2`` over 10
CIFAR-2 points to convergence. For each hidden width ``m = 2^1 .. 2^10`` we record the largest
relative change of the tangent kernel on the training points during training,
``max_t ||K_t - K_0|| / ||K_0||`` (spectral norm by default; thesis Eq. 2.17), and fit its slope
against ``m`` on log-log axes; the theory (Thm 2.3.6) predicts ``Theta(1/sqrt(m))``, slope -1/2.

Data: the first ``n/2`` images of each of two classes (default airplane = +1, automobile = -1)
of the CIFAR-10 training split, in its order, through ``kerntk.datasets.load`` (``--data_dir``,
else ``$KERNTK_DATA_DIR``, else tensorflow-datasets), average-pooled ``--pool`` x ``--pool`` (see
below), flattened, then standardized *per image* (zero mean, unit variance over its own d
coordinates, so ``||x||^2 = d`` and each input neuron is O(1), matching the N(0, 1) /
sqrt(in-degree) scaling).

Why ``--pool``: in a DenseNet the input feeds every layer, so a hidden neuron's in-degree is about
``(d + (l - 1) m) / 2`` and the width of Def. 2.2.7 is at least ``d / 2``. With the full d = 3072,
widths below ~d barely change the network's non-linear part, and the drift no longer follows
``m^(-1/2)`` there. Pooling shrinks d (pool 8 gives d = 48) so that the hidden width dominates.
The JSON records both the hidden width and the Def. 2.2.7 width of every graph.

Learning rate: ``lr = --lr_factor * n / lambda_max(K_0)`` per run, i.e. a fixed fraction of the
critical rate ``n / lambda_max`` of this MSE convention (lazy regime, no catapult). The NTK comes
from ``kerntk.ntk.empirical_ntk`` when that module is importable, else from per-example gradients
computed here (the JSON says which).

    python examples/transition_to_linearity.py --out_dir /tmp/ttl          # full run (minutes)
    python examples/transition_to_linearity.py --smoke --out_dir /tmp/ttl  # seconds

Writes ``transition_to_linearity.png`` and ``transition_to_linearity.json`` to ``--out_dir``.

Recorded result (``--seeds 5 --max_log2_width 11``, defaults otherwise: pool 8 so d = 48,
airplane vs automobile, spectral norm, NTK from ``kerntk.ntk.empirical_ntk``; 190 s on 2 busy CPU
cores; every run converged to MSE < 1e-4 in 30-120 steps): mean drift 0.29, 0.13, 0.26, 0.37,
0.19, 0.14, 0.10, 0.061, 0.034, 0.018, 0.011 for m = 2 .. 2048. Fitted slope -0.45 over 2..2048
(-0.40 over 2..1024). The curve is noisy and not monotone while m < d (the input-dominated regime
explained above) and falls faster than -1/2 past it (-0.75 over 64..2048, -0.82 over 256..2048),
i.e. closer to the O(1/m) drift of the kernel that finite-width corrections predict; Thm 2.3.6
gives only the upper bound O(1/sqrt(m)).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk.datasets  # noqa: E402
from kerntk.graph import densenet_graph  # noqa: E402
from kerntk.layers import DAG  # noqa: E402

flags.DEFINE_string("data_dir", None, "Directory with cifar10/<split>*.npz files (default: "
                    "$KERNTK_DATA_DIR, else tensorflow-datasets).")
flags.DEFINE_string("out_dir", "out/transition_to_linearity", "Where the PNG and JSON go.")
flags.DEFINE_list("classes", ["0", "1"], "The two CIFAR-10 classes, labelled +1 and -1.")
flags.DEFINE_integer("n_points", 10, "Training points (even; half from each class).")
flags.DEFINE_integer("pool", 8, "Average-pooling factor of the images before flattening "
                     "(1 = none, d = 3072; 8 gives d = 48).")
flags.DEFINE_integer("depth", 3, "DenseNet depth L (L - 1 hidden nodes and a linear output).")
flags.DEFINE_float("drop", 0.5, "Probability of dropping each weight (once, at construction).")
flags.DEFINE_integer("min_log2_width", 1, "Smallest hidden width is 2**min_log2_width.")
flags.DEFINE_integer("max_log2_width", 10, "Largest hidden width is 2**max_log2_width.")
flags.DEFINE_integer("seeds", 3, "Independent runs (graph masks and weights) per width.")
flags.DEFINE_float("lr_factor", 0.5, "Learning rate as a fraction of n / lambda_max(K_0).")
flags.DEFINE_integer("max_steps", 3000, "Cap on GD steps.")
flags.DEFINE_float("tol", 1e-4, "Converged when the training MSE falls below this.")
flags.DEFINE_integer("ntk_every", 10, "Recompute K_t every this many GD steps (and at the end).")
flags.DEFINE_enum("norm", "spectral", ["spectral", "fro"], "Matrix norm of the kernel change.")
flags.DEFINE_enum("ntk_method", "auto", ["auto", "jacobian"], "kerntk.ntk.empirical_ntk method.")
flags.DEFINE_integer("seed", 0, "Base random seed.")
flags.DEFINE_bool("smoke", False, "Tiny run for tests: widths 2..8, one seed, few steps.")
FLAGS = flags.FLAGS


def load_cifar2(data_dir, classes, n_points: int, pool: int):
    """Returns ``x (n, d)`` float32 standardized per image and ``y (n,)`` in {+1, -1}."""
    if n_points < 2 or n_points % 2:
        raise ValueError(f"--n_points must be an even number >= 2; got {n_points}.")
    if len(classes) != 2 or 32 % pool:
        raise ValueError(f"--classes needs two labels and --pool must divide 32; got {classes}, "
                         f"{pool}.")
    xs, ys = [], []
    for label, cls in zip((1.0, -1.0), (int(c) for c in classes)):
        # raw: the stored 0..255 values, scaled in float64 below
        x_cls, _ = kerntk.datasets.load("cifar10", "train", classes=(cls,), n=n_points // 2,
                                        normalize="raw", data_dir=data_dir)
        xs.append(x_cls.astype(np.float64) / 255.0)
        ys.append(np.full(len(x_cls), label))
    x = np.concatenate(xs)
    if pool > 1:
        n, h, w, c = x.shape
        x = x.reshape(n, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))
    x = x.reshape(len(x), -1)
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    return x.astype(np.float32), np.concatenate(ys).astype(np.float32)


def _per_example_ntk(model, x):
    """K = G G^T from per-example gradients (used only when kerntk.ntk is unavailable)."""
    import tensorflow as tf

    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(model(x[i:i + 1]))
        grads = tape.gradient(out, model.trainable_variables)
        rows.append(np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64))
    g = np.stack(rows)
    return g @ g.T


def ntk_function():
    """Returns ``(fn(model, x) -> K, description)``."""
    try:
        from kerntk.ntk import empirical_ntk
    except ImportError:
        return _per_example_ntk, "per-example gradients in this script (kerntk.ntk not importable)"
    method = FLAGS.ntk_method
    return (lambda model, x: np.asarray(empirical_ntk(model, x, method=method)),
            f"kerntk.ntk.empirical_ntk(method={method!r})")


def _norm(k: np.ndarray) -> float:
    return float(np.linalg.norm(k, 2 if FLAGS.norm == "spectral" else "fro"))


def run_one(x, y, width: int, seed: int, ntk) -> dict:
    """Trains one DenseNet DAG by full-batch GD; returns its kernel drift and training record."""
    keras.utils.clear_session(free_memory=True)   # drop the previous run's graphs and buffers
    keras.utils.set_random_seed(seed)
    graph = densenet_graph(x.shape[1], width, depth=FLAGS.depth, drop=FLAGS.drop, seed=seed)
    model = keras.Sequential([keras.Input((x.shape[1],)), DAG(graph, seed=seed)])
    k0 = ntk(model, x)
    lam_max = float(np.linalg.eigvalsh(k0)[-1])
    lr = FLAGS.lr_factor * len(x) / lam_max
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    norm0, drift, step, loss = _norm(k0), 0.0, 0, float("nan")
    y2 = y[:, None]
    while step < FLAGS.max_steps:
        loss = float(model.train_on_batch(x, y2))   # loss before this step's update
        step += 1
        if loss < FLAGS.tol:
            break
        if step % FLAGS.ntk_every == 0:
            drift = max(drift, _norm(ntk(model, x) - k0) / norm0)
    final_loss = float(model.evaluate(x, y2, verbose=0))
    drift = max(drift, _norm(ntk(model, x) - k0) / norm0)
    return {"width": width, "seed": seed, "def_2_2_7_width": graph.width(),
            "live_params": graph.num_params(), "lr": lr, "lambda_max_K0": lam_max,
            "steps": step, "final_loss": final_loss, "converged": final_loss < FLAGS.tol,
            "max_relative_kernel_change": drift}


def fit_slope(widths, drifts):
    """Least-squares slope and intercept of log(drift) against log(width)."""
    slope, intercept = np.polyfit(np.log(widths), np.log(drifts), 1)
    return float(slope), float(intercept)


def summarize(runs, widths, x, ntk_source: str, seconds: float) -> dict:
    """Mean drift per width, fitted slopes and the settings, as a JSON-ready dict."""
    mean = [float(np.mean([r["max_relative_kernel_change"] for r in runs if r["width"] == w]))
            for w in widths]
    slope, intercept = fit_slope(widths, mean)
    # Past the input-dominated regime (hidden width >= input dim) the DenseNet is FCN-like.
    wide = [(w, d) for w, d in zip(widths, mean) if w >= x.shape[1]]
    slope_wide = fit_slope(*zip(*wide))[0] if len(wide) >= 2 else None
    return {"slope": slope, "intercept": intercept, "theory_slope": -0.5,
            "slope_widths_ge_input_dim": slope_wide, "widths": list(widths), "mean_drift": mean,
            "runs": list(runs), "n_points": int(len(x)), "input_dim": int(x.shape[1]),
            "ntk_source": ntk_source, "norm": FLAGS.norm, "depth": FLAGS.depth,
            "drop": FLAGS.drop, "pool": FLAGS.pool, "classes": list(FLAGS.classes),
            "lr_factor": FLAGS.lr_factor, "tol": FLAGS.tol, "max_steps": FLAGS.max_steps,
            "all_converged": all(r["converged"] for r in runs), "smoke": FLAGS.smoke,
            "seconds": seconds}


def plot(results: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.array(results["widths"], float)
    mean = np.array(results["mean_drift"])
    fig, ax = plt.subplots(figsize=(5, 4))
    runs = results["runs"]
    ax.scatter([r["width"] for r in runs], [r["max_relative_kernel_change"] for r in runs],
               s=10, alpha=0.4, color="C0", label="runs")
    ax.plot(widths, mean, "o-", color="C0", label="mean over seeds")
    fit = np.exp(results["intercept"]) * widths ** results["slope"]
    ax.plot(widths, fit, "--", color="C1", label=f"fit: slope {results['slope']:.2f}")
    center = np.exp(np.mean(np.log(widths)))
    ref = np.exp(np.mean(np.log(mean))) * (widths / center) ** -0.5   # through the data's center
    ax.plot(widths, ref, ":", color="gray", label="theory: slope -1/2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width m")
    ax.set_ylabel(r"$\max_t \|K_t - K_0\| / \|K_0\|$")
    ax.set_title(f"DenseNet DAG (L={FLAGS.depth}, drop {FLAGS.drop:g}), {results['n_points']} "
                 f"CIFAR-2 points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    if FLAGS.smoke:
        FLAGS.min_log2_width, FLAGS.max_log2_width = 1, 3
        FLAGS.seeds, FLAGS.max_steps, FLAGS.ntk_every = 1, 20, 5
    if FLAGS.min_log2_width < 0 or FLAGS.max_log2_width < FLAGS.min_log2_width + 1:
        raise ValueError("Need 0 <= --min_log2_width < --max_log2_width (two widths to fit).")
    if FLAGS.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {FLAGS.seeds}.")
    x, y = load_cifar2(FLAGS.data_dir, FLAGS.classes, FLAGS.n_points, FLAGS.pool)
    ntk, ntk_source = ntk_function()
    widths = [2 ** k for k in range(FLAGS.min_log2_width, FLAGS.max_log2_width + 1)]
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    runs, start = [], time.time()
    for i, width in enumerate(widths):
        for s in range(FLAGS.seeds):
            r = run_one(x, y, width, FLAGS.seed + 1000 * s + width, ntk)
            runs.append(r)
            print(f"width {width:5d} seed {s}: drift {r['max_relative_kernel_change']:.4g}  "
                  f"steps {r['steps']:4d}  loss {r['final_loss']:.2e}  "
                  f"({time.time() - start:.0f}s)", flush=True)
        if i >= 1:  # rewrite the JSON after every width, so a killed run keeps what it measured
            results = summarize(runs, widths[:i + 1], x, ntk_source, time.time() - start)
            with open(os.path.join(FLAGS.out_dir, "transition_to_linearity.json"), "w") as f:
                json.dump(results, f, indent=2)
    plot(results, os.path.join(FLAGS.out_dir, "transition_to_linearity.png"))
    print(f"fitted slope {results['slope']:.3f} (theory -0.5) over widths "
          f"{widths[0]}..{widths[-1]}; slope over widths >= input dim {x.shape[1]}: "
          f"{results['slope_widths_ge_input_dim']}; all converged: {results['all_converged']}")


if __name__ == "__main__":
    app.run(main)
