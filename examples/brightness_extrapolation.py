"""Brightness extrapolation on MNIST and Fashion-MNIST (paper 000 Fig. 3): NN vs NN-Hp.

Training images are scaled to pixel range [0, 0.1] (unit-range images divided by 10); test images
are scaled to [0, r_max] for r_max = 0.1, 0.2, ..., 1.0, i.e. up to 10x brighter than anything
seen in training. Two classifiers (softmax cross-entropy on 10 logits, Adam), built from kerntk
layers in the standard parameterization (``--parameterization``) with He-scaled Gaussian weights
and biases that start at zero (Keras' default), so that Adam trains them as ordinary Keras nets:

* NN: ReLU fcn ``kerntk.models.fcn(--depth, --width, W_std=sqrt(2), b_std=0)`` with trainable
  biases when ``--use_bias``;
* NN-Hp: ``kerntk.models.pnn(--degree, --width, form=--form)``: a PolyDense block (paper 000 Eq. 1
  for ``form="pnn"``: ReLU branches multiplied together, each He-scaled, no branch biases) and a
  linear head with a zero-initialized bias.

Paper claim: both reach similar accuracy at r_max = 0.1, and the Hadamard product improves
accuracy as r_max grows. (Why it can: without branch biases the PNN block is positively
homogeneous, so brightening scales its features instead of moving them; a ReLU net with trained
biases is not. With ``--nouse_bias`` the fcn is homogeneous too and the comparison changes.)

Data through ``kerntk.datasets.load`` (``--data_dir``, else ``$KERNTK_DATA_DIR``). Writes
``<out_dir>/brightness_extrapolation.png`` (example images at each r_max and accuracy vs r_max,
per dataset) and ``.json``.

    python examples/brightness_extrapolation.py [--n_train 10000] [--epochs 5] [--smoke]
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (quiet TensorFlow start-up, shared flags, results file)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

NAME = "brightness_extrapolation"
SIMILAR_TOL = 0.02   # "similar accuracy" at r_max = 0.1: within 2 percentage points

_common.define_flags(width=512, use_bias=True, b_std=0.0, data_dir=True)
flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Datasets to run.")
flags.DEFINE_integer("n_train", 10000, "Training images per dataset (Fashion-MNIST's local copy "
                     "holds 10000).")
flags.DEFINE_integer("n_test", 5000, "Test images per dataset.")
flags.DEFINE_float("train_scale", 0.1, "Training pixels lie in [0, train_scale].")
flags.DEFINE_list("r_max", [f"{0.1 * i:.1f}" for i in range(1, 11)],
                  "Test pixel ranges [0, r_max].")
flags.DEFINE_integer("depth", 3, "NTKDense layers of the NN (hidden layers + head).")
flags.DEFINE_integer("degree", 2, "Degree of the NN-Hp's PolyDense block.")
flags.DEFINE_enum("form", "pnn", ["pnn", "ccp"], "PolyDense form of the NN-Hp.")
flags.DEFINE_integer("epochs", 5, "Training epochs.")
flags.DEFINE_enum("parameterization", "standard", ["standard", "ntk"],
                  "Parameterization of every layer (standard: trainable W ~ N(0, W_std^2/fan_in),"
                  " as ordinary Keras nets).")
flags.DEFINE_integer("batch_size", 128, "Minibatch size.")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate.")
FLAGS = flags.FLAGS


def _models(d, width, seed):
    return {
        "NN": kerntk.models.fcn(FLAGS.depth, width, 10, input_shape=(d,),
                                use_bias=FLAGS.use_bias, W_std=math.sqrt(2.0),
                                b_std=FLAGS.b_std, seed=seed,
                                parameterization=FLAGS.parameterization),
        "NN-Hp": kerntk.models.pnn(FLAGS.degree, width, 10, form=FLAGS.form, input_shape=(d,),
                                   b_std=FLAGS.b_std, seed=seed,
                                   parameterization=FLAGS.parameterization),
    }


def run_dataset(name, n_train, n_test, width, epochs, r_max):
    x, y = kerntk.datasets.load(name, "train", n=n_train, seed=FLAGS.seed, flatten=True,
                                data_dir=FLAGS.data_dir)
    x_te, y_te = kerntk.datasets.load(name, "test", n=n_test, seed=FLAGS.seed, flatten=True,
                                      data_dir=FLAGS.data_dir)
    out = {}
    for key, model in _models(x.shape[1], width, FLAGS.seed).items():
        model.compile(optimizer=keras.optimizers.Adam(FLAGS.lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        hist = model.fit(_common.reshuffled_batches(x * FLAGS.train_scale, y, FLAGS.batch_size,
                                                    FLAGS.seed),
                         epochs=epochs, shuffle=False, verbose=0)
        acc = [float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x_te * r)), axis=1)
                             == y_te)) for r in r_max]
        out[key] = {"train_accuracy": float(hist.history["accuracy"][-1]),
                    "test_accuracy": acc}
    return out, x_te[:1]


def claims_from(results, r_max):
    """Fig. 3's claims, each verdict computed from the run by its stated rule."""
    names = [n for n in FLAGS.datasets]
    beyond = np.array(r_max) > FLAGS.train_scale + 1e-9
    at_train = int(np.argmin(np.abs(np.array(r_max) - FLAGS.train_scale)))
    gap0 = {n: results[n]["NN-Hp"]["test_accuracy"][at_train]
            - results[n]["NN"]["test_accuracy"][at_train] for n in names}
    gain = {n: results[n]["mean_accuracy_gain_of_hp_for_r_max_above_train"] for n in names}
    frac = {n: float(np.mean((np.array(results[n]["NN-Hp"]["test_accuracy"])
                              > np.array(results[n]["NN"]["test_accuracy"]))[beyond]))
            for n in names}
    return [
        _common.claim(
            "fig3/similar_at_training_brightness",
            paper="both networks achieve similar accuracy at r_max = 0.1",
            measured={n: f"NN {results[n]['NN']['test_accuracy'][at_train]:.3f}, NN-Hp "
                         f"{results[n]['NN-Hp']['test_accuracy'][at_train]:.3f}" for n in names},
            holds=bool(all(abs(g) <= SIMILAR_TOL for g in gap0.values())),
            rule=f"on every dataset |acc(NN-Hp) - acc(NN)| <= {SIMILAR_TOL} at r_max = "
                 f"{r_max[at_train]}"),
        _common.claim(
            "fig3/hp_better_when_brighter",
            paper="inserting the Hadamard product improves accuracy during extrapolation "
                  "(r_max > 0.1)",
            measured={n: f"mean gain {gain[n]:+.3f}; NN-Hp ahead at {frac[n]:.0%} of the r_max "
                         f"> {FLAGS.train_scale}" for n in names},
            holds=bool(all(g is not None and g > 0 for g in gain.values())),
            rule=f"on every dataset the mean over r_max > {FLAGS.train_scale} of acc(NN-Hp) - "
                 f"acc(NN) is > 0"),
    ]


def main(argv):
    del argv
    n_train, n_test, width, epochs = FLAGS.n_train, FLAGS.n_test, FLAGS.width, FLAGS.epochs
    r_max = [float(r) for r in FLAGS.r_max]
    if FLAGS.smoke:
        n_train, n_test, width, epochs = 256, 128, 32, 1
        r_max = [r_max[0], r_max[-1]]
    keras.utils.set_random_seed(FLAGS.seed)
    results = {"r_max": r_max}
    examples = {}
    for name in FLAGS.datasets:
        results[name], examples[name] = run_dataset(name, n_train, n_test, width, epochs, r_max)
        nn, hp = (np.array(results[name][k]["test_accuracy"]) for k in ("NN", "NN-Hp"))
        beyond = np.array(r_max) > FLAGS.train_scale + 1e-9
        results[name]["mean_accuracy_gain_of_hp_for_r_max_above_train"] = (
            float(np.mean((hp - nn)[beyond])) if beyond.any() else None)
    claims = claims_from(results, r_max)
    setting = {
        "paper": "paper 000 Fig. 3 (Sec. 4.2): MNIST and Fashion-MNIST, training pixels divided "
                 "by 10 (range [0, 0.1]), test images at [0, r_max], r_max = 0.1, ..., 1.0; NN vs "
                 "NN-Hp classifiers",
        "ours": f"{n_train} training / {n_test} test images per dataset; NN: {FLAGS.depth}-layer "
                f"ReLU fcn of width {width}; NN-Hp: degree-{FLAGS.degree} {FLAGS.form} block of "
                f"width {width} + linear head; {FLAGS.parameterization} parameterization, "
                f"He-scaled weights, zero-initialized biases; Adam lr {FLAGS.lr}, batch "
                f"{FLAGS.batch_size}, {epochs} epochs",
        "deviations": [
            "the paper's appendix E (architectures, widths, epochs, optimizer) is not in our "
            "copy: depth, width, degree, epochs and Adam settings are our choices",
            f"{n_train} training images per dataset, not the full 60000 (the local "
            f"Fashion-MNIST copy holds 10000; the same size is used for MNIST)"]}
    _common.write_results(NAME, setting=setting, config=_common.flag_values(), claims=claims,
                          results=results)
    _common.save_figure(_plot(results, examples, r_max), NAME)
    print(f"Train on pixels in [0, {FLAGS.train_scale}], test on [0, r_max] "
          f"({n_train} train / {n_test} test images, width {width}, {epochs} epochs):")
    for name in FLAGS.datasets:
        for key in ("NN", "NN-Hp"):
            acc = results[name][key]["test_accuracy"]
            print(f"  {name:13s} {key:6s} accuracy at r_max={r_max[0]:.1f}: {acc[0]:.3f}, "
                  f"at r_max={r_max[-1]:.1f}: {acc[-1]:.3f}")
    _common.print_claims(claims)


def _plot(results, examples, r_max):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(examples)
    fig = plt.figure(figsize=(11, 3.2 * len(names)))
    grid = fig.add_gridspec(2 * len(names), len(r_max), height_ratios=[1, 3] * len(names))
    for i, name in enumerate(names):
        img = examples[name][0].reshape(28, 28)
        for j, r in enumerate(r_max):
            ax = fig.add_subplot(grid[2 * i, j])
            ax.imshow(img * r, cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            ax.set_title(f"{r:.1f}", fontsize=7)
        ax = fig.add_subplot(grid[2 * i + 1, :])
        for key, style in (("NN", "C0o-"), ("NN-Hp", "C3s-")):
            ax.plot(r_max, results[name][key]["test_accuracy"], style, label=key)
        ax.set(xlabel="$r_{max}$", ylabel="test accuracy", title=name, ylim=(0, 1))
        ax.legend()
    return fig


if __name__ == "__main__":
    app.run(main)
