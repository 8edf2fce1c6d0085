"""Arithmetic extrapolation with MNIST digit pairs (paper 000 Table 1): NN vs NN-Hp.

An example is two MNIST digits side by side (28x56) labelled with their sum; 90 of the 100 ordered
digit pairs are seen in training, the other 10 are "unseen" (``kerntk.datasets.
load_digit_pair_sums``; 3 folds with disjoint unseen sets). The task is regression (MSE on the
standardized sum, Adam). Four models (``--parameterization``, default standard: W ~ N(0, 1/fan_in)
and b ~ N(0, 1), no multipliers; in a CPU-sized run with the NTK parameterization all four models
stay near 0.2 rounding accuracy even on seen pairs, since Adam's per-weight steps move the NTK
net's function sqrt(fan_in) times more slowly):

* NN (Dense): ReLU fcn ``kerntk.models.fcn(--dense_depth, --width)`` (paper: five layers);
* NN-Hp (Dense): ``kerntk.models.pnn(--degree, --width, blocks=--blocks)`` (PolyDense blocks of
  paper 000 Eq. 1: ReLU branches multiplied together);
* NN (Conv): ``kerntk.models.poly_cnn(1, --channels, blocks=--blocks)``: the conv net with the
  Hadamard product removed (degree 1 = a plain ReLU convolution; each block is 3x3 "same" conv
  then 2x2 average pooling), linear head;
* NN-Hp (Conv): ``kerntk.models.poly_cnn(--degree, --channels, blocks=--blocks)``.

Accuracies (paper's three read-outs of the real-valued output p for the integer sum s):
rounding ``round(p) == s``; floor/ceiling ``floor(p) == s or ceil(p) == s``; +-1
``|round(p) - s| <= 1``; on fresh examples of seen pairs ("interpolation") and of unseen pairs
("extrapolation"), mean and standard deviation over the folds. Paper claim: NN-Hp has the better
extrapolation (e.g. rounding 0.554 vs 0.436 dense, 0.825 vs 0.617 conv).

Writes ``<out_dir>/arithmetic_extrapolation.png`` (Table 1 as bars) and ``.json``.

    python examples/arithmetic_extrapolation.py [--folds 3] [--epochs 5] [--smoke]
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

MODELS = ("NN (Dense)", "NN-Hp (Dense)", "NN (Conv)", "NN-Hp (Conv)")
METRICS = ("rounding", "floor_ceiling", "pm1")

flags.DEFINE_integer("folds", 3, "Folds to run (of the 3-fold split of the 100 pairs).")
flags.DEFINE_integer("n_train", 20000, "Training examples (seen pairs, MNIST train images).")
flags.DEFINE_integer("n_test", 1000, "Test examples per set (seen / unseen pairs, MNIST test).")
flags.DEFINE_list("models", list(MODELS), "Models to train.")
flags.DEFINE_integer("dense_depth", 5, "NTKDense layers of NN (Dense).")
flags.DEFINE_integer("width", 256, "Width of the dense nets.")
flags.DEFINE_integer("channels", 16, "Channels of the conv nets.")
flags.DEFINE_integer("degree", 2, "Degree of the NN-Hp blocks.")
flags.DEFINE_integer("blocks", 2, "Polynomial (or degree-1 conv) blocks of the pnn / poly_cnn.")
flags.DEFINE_integer("epochs", 8, "Training epochs.")
flags.DEFINE_enum("parameterization", "standard", ["standard", "ntk"],
                  "Parameterization of every layer. With Adam, the NTK parameterization's "
                  "1/sqrt(fan_in) multipliers slow feature learning so much that no model fits "
                  "the task in a CPU-sized run; the standard one trains (see the module doc).")
flags.DEFINE_integer("batch_size", 128, "Minibatch size.")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of the example sampling and the initializations.")
flags.DEFINE_string("data_dir", None, "Directory with mnist/<split>*.npz files.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def build(name, width, channels, seed):
    shape, kw = (28, 56, 1), dict(parameterization=FLAGS.parameterization)
    if name == "NN (Dense)":
        return kerntk.models.fcn(FLAGS.dense_depth, width, input_shape=shape, seed=seed, **kw)
    if name == "NN-Hp (Dense)":
        return kerntk.models.pnn(FLAGS.degree, width, blocks=FLAGS.blocks, input_shape=shape,
                                 seed=seed, **kw)
    if name == "NN (Conv)":
        return kerntk.models.poly_cnn(1, channels, blocks=FLAGS.blocks, input_shape=shape,
                                      seed=seed, **kw)
    if name == "NN-Hp (Conv)":
        return kerntk.models.poly_cnn(FLAGS.degree, channels, blocks=FLAGS.blocks,
                                      input_shape=shape, seed=seed, **kw)
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


def accuracies(pred, target):
    """The three read-outs of paper 000 Table 1 for real predictions and integer targets."""
    p, s = np.asarray(pred, np.float64).reshape(-1), np.asarray(target).reshape(-1)
    return {"rounding": float(np.mean(np.round(p) == s)),
            "floor_ceiling": float(np.mean((np.floor(p) == s) | (np.ceil(p) == s))),
            "pm1": float(np.mean(np.abs(np.round(p) - s) <= 1))}


def _predict(model, x, batch=500):
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch]))[:, 0]
                           for i in range(0, len(x), batch)])


def run_fold(fold, names, n_train, n_test, width, channels, epochs):
    data = kerntk.datasets.load_digit_pair_sums(fold, n_train=n_train, n_test=n_test,
                                                seed=FLAGS.seed + fold, data_dir=FLAGS.data_dir)
    mean, std = float(data["y_train"].mean()), float(data["y_train"].std())
    out = {"unseen_pairs": data["unseen_pairs"].tolist()}
    for i, name in enumerate(names):
        model = build(name, width, channels, FLAGS.seed + 100 * fold + 10 * i)
        model.compile(optimizer=keras.optimizers.Adam(FLAGS.lr), loss="mse")
        t0 = time.time()
        model.fit(data["x_train"], (data["y_train"] - mean) / std, epochs=epochs,
                  batch_size=FLAGS.batch_size, verbose=0)
        out[name] = {"seconds": time.time() - t0}
        for split, key in (("interpolation", "seen"), ("extrapolation", "unseen")):
            pred = _predict(model, data[f"x_test_{key}"]) * std + mean
            out[name][split] = accuracies(pred, data[f"y_test_{key}"])
            out[name][split]["mse"] = float(np.mean((pred - data[f"y_test_{key}"][:, 0]) ** 2))
        print(f"  fold {fold} {name:14s} seen rounding {out[name]['interpolation']['rounding']:.3f}"
              f"  unseen rounding {out[name]['extrapolation']['rounding']:.3f}"
              f"  ({out[name]['seconds']:.0f} s)", flush=True)
    return out


def main(argv):
    del argv
    n_train, n_test, width, channels, epochs, folds = (FLAGS.n_train, FLAGS.n_test, FLAGS.width,
                                                       FLAGS.channels, FLAGS.epochs, FLAGS.folds)
    if FLAGS.smoke:
        n_train, n_test, width, channels, epochs, folds = 128, 64, 16, 4, 1, 1
    names = list(FLAGS.models)
    for name in names:
        if name not in MODELS:
            raise app.UsageError(f"unknown model {name!r}; known: {MODELS}")
    keras.utils.set_random_seed(FLAGS.seed)
    start = time.time()
    per_fold = [run_fold(f, names, n_train, n_test, width, channels, epochs) for f in range(folds)]
    summary = {}
    for name in names:
        summary[name] = {}
        for split in ("interpolation", "extrapolation"):
            vals = {m: [r[name][split][m] for r in per_fold] for m in METRICS + ("mse",)}
            summary[name][split] = {m: {"mean": float(np.mean(v)), "std": float(np.std(v))}
                                    for m, v in vals.items()}
    results = {"config": dict(folds=folds, n_train=n_train, n_test=n_test, width=width,
                              channels=channels, degree=FLAGS.degree, blocks=FLAGS.blocks,
                              parameterization=FLAGS.parameterization,
                              dense_depth=FLAGS.dense_depth, epochs=epochs,
                              batch_size=FLAGS.batch_size, lr=FLAGS.lr, seed=FLAGS.seed),
               "summary": summary, "per_fold": per_fold, "seconds": time.time() - start}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "arithmetic_extrapolation.json"), "w") as f:
        json.dump(results, f, indent=2)
    _plot(summary, names, os.path.join(FLAGS.out_dir, "arithmetic_extrapolation.png"))
    print(f"Digit-pair sums, {folds} fold(s), {n_train} train examples, {epochs} epochs "
          f"(mean over folds; rounding / floor-ceiling / +-1):")
    for name in names:
        for split in ("interpolation", "extrapolation"):
            row = " / ".join(f"{summary[name][split][m]['mean']:.3f}" for m in METRICS)
            print(f"  {name:14s} {split:13s} {row}")
    print(f"  figure and numbers in {FLAGS.out_dir}/arithmetic_extrapolation.{{png,json}} "
          f"({results['seconds']:.0f} s)")


def _plot(summary, names, path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    titles = {"rounding": "rounding", "floor_ceiling": "floor/ceiling", "pm1": "$\\pm 1$"}
    x = np.arange(len(names))
    for ax, m in zip(axes, METRICS):
        for j, (split, color) in enumerate((("interpolation", "C0"), ("extrapolation", "C3"))):
            ax.bar(x + (j - 0.5) * 0.38, [summary[n][split][m]["mean"] for n in names], 0.38,
                   yerr=[summary[n][split][m]["std"] for n in names], color=color, capsize=3,
                   label=f"{split} ({'seen' if j == 0 else 'unseen'} pairs)")
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=8)
        ax.set(title=titles[m], ylim=(0, 1))
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
