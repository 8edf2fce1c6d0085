"""Extrapolation of analytic functions (paper 000 Fig. 1-2): ReLU fcn vs polynomial nets.

1-D targets (``kerntk.datasets.extrapolation_task``): x^3 + x^2 - 10x + 5 and cos 2x, trained on
[-3, 3] and tested on [-6, 6]. The inputs are fed as the features ``[x / 3, 1]`` (the constant
feature lets a homogeneous Hadamard-product block represent lower-degree terms; dividing by the
training half-width keeps the NTK convention of O(1) features). Models: a ReLU fcn
(``kerntk.models.fcn``, ``--fcn_depth`` layers; the paper uses 4 for the cubic and 11 for cos 2x)
and a PolyDense net (``kerntk.models.pnn``, ``--form``, degree ``--degree_cubic`` /
``--degree_cos``). Paper claim (Thm 4-5): the fcn extrapolates linearly, the polynomial net
follows the non-linear target outside the training region.

2-D target x1^2 + x2^2 (Fig. 2, Thm 6), inputs fed as they are: a degree-2 PNN of paper 000 Eq. 1
(``form="pnn"``: ReLU branches, no skip, no biases) trained on [-1, 1]^2 (support in all
directions) and on [0, 1]^2 (positive only), and the fcn on [-1, 1]^2; all tested on [-2, 2]^2.
Paper claim: the PNN extrapolates exactly only with support in all directions; the fcn
extrapolates linearly.

With ``--ntk`` the infinite-width NTK-regime predictors (``kerntk.ntk.analytic.kernel_regression``
of ``fcn_kernels`` / ``pnn_kernels``; paper 000 Thm 3) are evaluated on the same tasks, for the
fcn and for the ``form="pnn"`` polynomial net of the same degree.

All nets: NTK parameterization, full-batch Adam on the MSE of the target divided by its standard
deviation on the training set. Reported MSEs are in the target's own units, on the test points
outside the training box ("extrapolation") and inside it ("interpolation").

Writes ``<out_dir>/extrapolation.png`` (Fig. 1-2 style) and ``<out_dir>/extrapolation.json``.

    python examples/extrapolation.py [--epochs 2000] [--width 256] [--smoke]
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.ntk import analytic  # noqa: E402

flags.DEFINE_integer("n_train", 256, "Training points per task.")
flags.DEFINE_integer("n_test", 1024, "Test points per task (grid for 1-D, uniform for 2-D).")
flags.DEFINE_integer("width", 256, "Width of every hidden layer / polynomial block.")
flags.DEFINE_integer("fcn_depth", 4, "NTKDense layers of the ReLU fcn (paper: 4 for the cubic).")
flags.DEFINE_integer("degree_cubic", 3, "Degree of the polynomial net on the cubic.")
flags.DEFINE_integer("degree_cos", 6, "Degree of the polynomial net on cos 2x.")
flags.DEFINE_enum("form", "ccp", ["ccp", "pnn"],
                  "PolyDense form of the 1-D polynomial nets (ccp: linear branches with skip; "
                  "pnn: ReLU branches, paper 000 Eq. 1). The 2-D case always uses pnn (Thm 6).")
flags.DEFINE_bool("use_bias", True, "Biases in the fcn (b_std = 1). Polynomial blocks have none.")
flags.DEFINE_integer("epochs", 2000, "Full-batch Adam steps per model.")
flags.DEFINE_float("lr", 0.01, "Adam learning rate.")
flags.DEFINE_bool("ntk", True, "Also evaluate the infinite-width NTK-regime predictors.")
flags.DEFINE_integer("seed", 0, "Seed of the data and the initializations.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def _fit(model, x, y, epochs, lr):
    """Full-batch Adam on MSE of y / std(y); returns a predictor in the original units."""
    scale = float(np.std(y))
    # One repeated full batch and many steps per execution: the same full-batch Adam steps as
    # fit(epochs=epochs, batch_size=len(x)) without the per-epoch overhead.
    data = tf.data.Dataset.from_tensors((x, y / scale)).repeat()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse",
                  steps_per_execution=min(100, epochs))
    model.fit(data, steps_per_epoch=epochs, epochs=1, verbose=0)
    return lambda z: keras.ops.convert_to_numpy(model(z))[:, 0] * scale


def _errors(pred, task):
    err = (np.asarray(pred, np.float64) - task["y_test"][:, 0]) ** 2
    inside = task["in_train_region"]
    return {"interpolation_mse": float(err[inside].mean()),
            "extrapolation_mse": float(err[~inside].mean())}


def _ntk_predictions(features, task, degree, fcn_depth, use_bias):
    """Converged NTK-regime predictors (kernel regression, f0 = 0) of the fcn and a pnn-form net."""
    xtr, xte = features(task["x_train"]), features(task["x_test"])
    y = task["y_train"][:, 0].astype(np.float64)
    out = {}
    for name, kern in (
            ("ntk_fcn", lambda a, b: analytic.fcn_kernels(a, b, depth=fcn_depth,
                                                          use_bias=use_bias).ntk),
            ("ntk_pnn", lambda a, b: analytic.pnn_kernels(a, b, degree=degree).ntk)):
        out[name] = analytic.kernel_regression(kern(xtr, xtr), kern(xte, xtr), y)
    return out


def run_1d(name, degree, n_train, n_test, width, epochs, seed):
    task = kerntk.datasets.extrapolation_task(name, n_train, n_test, seed=seed)
    half = max(abs(v) for v in task["train_interval"])
    features = lambda x: np.concatenate([x / half, np.ones_like(x)], axis=1)  # noqa: E731
    models = {
        "fcn": kerntk.models.fcn(FLAGS.fcn_depth, width, input_shape=(2,),
                                 use_bias=FLAGS.use_bias, seed=seed),
        "pnn": kerntk.models.pnn(degree, width, form=FLAGS.form, input_shape=(2,), seed=seed),
    }
    preds = {}
    for key, model in models.items():
        predict = _fit(model, features(task["x_train"]), task["y_train"], epochs, FLAGS.lr)
        preds[key] = predict(features(task["x_test"]))
    if FLAGS.ntk:
        preds.update(_ntk_predictions(features, task, degree, FLAGS.fcn_depth, FLAGS.use_bias))
    return task, preds, {k: _errors(p, task) for k, p in preds.items()}


def run_2d(n_train, n_test, width, epochs, seed):
    runs = {}
    for key, positive_only, kind in (("pnn_all_directions", False, "pnn"),
                                     ("pnn_positive_only", True, "pnn"),
                                     ("fcn_all_directions", False, "fcn")):
        task = kerntk.datasets.extrapolation_task("sum_squares", n_train, n_test,
                                                  positive_only=positive_only, seed=seed)
        if kind == "pnn":
            model = kerntk.models.pnn(2, width, form="pnn", input_shape=(2,), seed=seed)
        else:
            model = kerntk.models.fcn(FLAGS.fcn_depth, width, input_shape=(2,),
                                      use_bias=FLAGS.use_bias, seed=seed)
        pred = _fit(model, task["x_train"], task["y_train"], epochs, FLAGS.lr)(task["x_test"])
        runs[key] = (task, pred, _errors(pred, task))
        if FLAGS.ntk and kind == "pnn":
            kern = lambda a, b: analytic.pnn_kernels(a, b, degree=2).ntk  # noqa: E731
            ntk_pred = analytic.kernel_regression(kern(task["x_train"], task["x_train"]),
                                                  kern(task["x_test"], task["x_train"]),
                                                  task["y_train"][:, 0].astype(np.float64))
            runs["ntk_" + key] = (task, ntk_pred, _errors(ntk_pred, task))
    return runs


def main(argv):
    del argv
    n_train, n_test, width, epochs = FLAGS.n_train, FLAGS.n_test, FLAGS.width, FLAGS.epochs
    if FLAGS.smoke:
        n_train, n_test, width, epochs = 32, 64, 16, 5
    keras.utils.set_random_seed(FLAGS.seed)
    start = time.time()
    results = {"config": dict(n_train=n_train, n_test=n_test, width=width, epochs=epochs,
                              lr=FLAGS.lr, fcn_depth=FLAGS.fcn_depth, form=FLAGS.form,
                              degree_cubic=FLAGS.degree_cubic, degree_cos=FLAGS.degree_cos,
                              fcn_use_bias=FLAGS.use_bias, seed=FLAGS.seed)}
    curves = {}
    for name, degree in (("cubic", FLAGS.degree_cubic), ("cos2x", FLAGS.degree_cos)):
        task, preds, errs = run_1d(name, degree, n_train, n_test, width, epochs, FLAGS.seed)
        curves[name] = (task, preds)
        results[name] = dict(errs, train_interval=task["train_interval"],
                             test_interval=task["test_interval"], pnn_degree=degree)
        results[name]["extrapolation_mse_ratio_fcn_over_pnn"] = (
            errs["fcn"]["extrapolation_mse"] / errs["pnn"]["extrapolation_mse"])
    runs2d = run_2d(n_train, n_test, width, epochs, FLAGS.seed)
    results["sum_squares"] = {k: v[2] for k, v in runs2d.items()}
    results["seconds"] = time.time() - start

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "extrapolation.json"), "w") as f:
        json.dump(results, f, indent=2)
    _plot(curves, runs2d, os.path.join(FLAGS.out_dir, "extrapolation.png"))

    print(f"Extrapolation MSE (test points outside the training box), width {width}, "
          f"{epochs} Adam steps:")
    for name in ("cubic", "cos2x"):
        row = "  ".join(f"{k} {v['extrapolation_mse']:.4g}" for k, v in results[name].items()
                        if isinstance(v, dict))
        print(f"  {name:6s}: {row}")
    row = "  ".join(f"{k} {v['extrapolation_mse']:.4g}" for k, v in results["sum_squares"].items())
    print(f"  x1^2+x2^2: {row}")
    print(f"  figure and numbers in {FLAGS.out_dir}/extrapolation.{{png,json}} "
          f"({results['seconds']:.0f} s)")


def _plot(curves, runs2d, path):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 8))
    labels = {"fcn": "NN (ReLU fcn)", "pnn": "NN-Hp (PolyDense)", "ntk_fcn": "NTK regime, fcn",
              "ntk_pnn": "NTK regime, pnn"}
    styles = {"fcn": "C0-", "pnn": "C3-", "ntk_fcn": "C0:", "ntk_pnn": "C3:"}
    for i, (name, (task, preds)) in enumerate(curves.items()):
        ax = fig.add_subplot(2, 3, 1 + i)
        x, y = task["x_test"][:, 0], task["y_test"][:, 0]
        lo, hi = task["train_interval"]
        ax.axvspan(lo, hi, color="C9", alpha=0.15, label="training region")
        ax.plot(x, y, "k", lw=2.5, alpha=0.4, label="target")
        for key, p in preds.items():
            ax.plot(x, p, styles[key], label=labels[key])
        pad = 0.5 * (y.max() - y.min())
        ax.set_ylim(y.min() - pad, y.max() + pad)
        ax.set(title={"cubic": "$x^3+x^2-10x+5$", "cos2x": "$\\cos 2x$"}[name], xlabel="x")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 3, 3)
    keys = list(runs2d)
    ax.bar(range(len(keys)), [runs2d[k][2]["extrapolation_mse"] for k in keys], color="C1")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("_", "\n") for k in keys], fontsize=7)
    ax.set(yscale="log", title="$x_1^2+x_2^2$: extrapolation MSE")
    titles = {"pnn_all_directions": "NN-Hp, training data in all directions",
              "pnn_positive_only": "NN-Hp, training data positive only",
              "fcn_all_directions": "NN (no Hadamard product)"}
    for i, key in enumerate(titles):
        task, pred, _ = runs2d[key]
        ax = fig.add_subplot(2, 3, 4 + i, projection="3d")
        x, inside = task["x_test"], task["in_train_region"]
        ax.scatter(x[:, 0], x[:, 1], task["y_test"][:, 0], s=2, c="grey", alpha=0.3,
                   label="target")
        ax.scatter(x[inside, 0], x[inside, 1], pred[inside], s=3, c="C0", label="prediction, "
                   "training region")
        ax.scatter(x[~inside, 0], x[~inside, 1], pred[~inside], s=3, c="C6",
                   label="prediction, extrapolation")
        ax.set(title=titles[key], xlabel="$x_1$", ylabel="$x_2$")
        ax.title.set_fontsize(9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
