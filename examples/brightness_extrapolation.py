"""Brightness extrapolation on MNIST and Fashion-MNIST (paper 000 Fig. 3): NN vs NN-Hp.

Training images are scaled to pixel range [0, 0.1] (unit-range images divided by 10); test images
are scaled to [0, r_max] for r_max = 0.1, 0.2, ..., 1.0, i.e. up to 10x brighter than anything
seen in training. Two classifiers (softmax cross-entropy on 10 logits, Adam), built from kerntk
layers with ``--parameterization`` (default standard: with the NTK parameterization the tiny
[0, 0.1] inputs and the 1/sqrt(fan_in) multipliers leave both nets near 25% accuracy after a
CPU-sized run, so there is nothing to extrapolate):

* NN: ReLU fcn ``kerntk.models.fcn(--depth, --width)`` with biases when ``--use_bias`` (b_std = 1);
* NN-Hp: ``kerntk.models.pnn(--degree, --width, form=--form)``: a PolyDense block (paper 000 Eq. 1
  for ``form="pnn"``: ReLU branches multiplied together, no branch biases) and a linear head.

Paper claim: both reach similar accuracy at r_max = 0.1, and the Hadamard product improves
accuracy as r_max grows. (Why it can: without branch biases the PNN block is positively
homogeneous, so brightening scales its features instead of moving them; a ReLU net with biases is
not. With ``--nouse_bias`` the fcn is homogeneous too and the comparison changes; the flag is
there to show it.)

Data through ``kerntk.datasets.load`` (``--data_dir``, else ``$KERNTK_DATA_DIR``, else
tensorflow-datasets). Writes ``<out_dir>/brightness_extrapolation.png`` (example images at each
r_max and accuracy vs r_max, per dataset) and ``.json``.

    python examples/brightness_extrapolation.py [--n_train 10000] [--epochs 5] [--smoke]
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

flags.DEFINE_list("datasets", ["mnist", "fashion_mnist"], "Datasets to run.")
flags.DEFINE_integer("n_train", 10000, "Training images per dataset (Fashion-MNIST's local copy "
                     "holds 10000).")
flags.DEFINE_integer("n_test", 5000, "Test images per dataset.")
flags.DEFINE_float("train_scale", 0.1, "Training pixels lie in [0, train_scale].")
flags.DEFINE_list("r_max", [f"{0.1 * i:.1f}" for i in range(1, 11)],
                  "Test pixel ranges [0, r_max].")
flags.DEFINE_integer("depth", 3, "NTKDense layers of the NN (hidden layers + head).")
flags.DEFINE_integer("width", 512, "Hidden width of both nets.")
flags.DEFINE_integer("degree", 2, "Degree of the NN-Hp's PolyDense block.")
flags.DEFINE_enum("form", "pnn", ["pnn", "ccp"], "PolyDense form of the NN-Hp.")
flags.DEFINE_bool("use_bias", True, "Biases in the NN (b_std = 1).")
flags.DEFINE_integer("epochs", 5, "Training epochs.")
flags.DEFINE_enum("parameterization", "standard", ["standard", "ntk"],
                  "Parameterization of every layer (see the module doc for why standard).")
flags.DEFINE_integer("batch_size", 128, "Minibatch size.")
flags.DEFINE_float("lr", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed of the data subsets and the initializations.")
flags.DEFINE_string("data_dir", None, "Directory with <name>/<split>*.npz files.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def _models(d, width, seed):
    return {
        "NN": kerntk.models.fcn(FLAGS.depth, width, 10, input_shape=(d,),
                                use_bias=FLAGS.use_bias, seed=seed,
                                parameterization=FLAGS.parameterization),
        "NN-Hp": kerntk.models.pnn(FLAGS.degree, width, 10, form=FLAGS.form, input_shape=(d,),
                                   seed=seed, parameterization=FLAGS.parameterization),
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
        hist = model.fit(x * FLAGS.train_scale, y, epochs=epochs, batch_size=FLAGS.batch_size,
                         verbose=0)
        acc = [float(np.mean(np.argmax(keras.ops.convert_to_numpy(model(x_te * r)), axis=1)
                             == y_te)) for r in r_max]
        out[key] = {"train_accuracy": float(hist.history["accuracy"][-1]),
                    "test_accuracy": acc}
    return out, x_te[:1]


def main(argv):
    del argv
    n_train, n_test, width, epochs = FLAGS.n_train, FLAGS.n_test, FLAGS.width, FLAGS.epochs
    r_max = [float(r) for r in FLAGS.r_max]
    if FLAGS.smoke:
        n_train, n_test, width, epochs = 256, 128, 32, 1
        r_max = [r_max[0], r_max[-1]]
    keras.utils.set_random_seed(FLAGS.seed)
    start = time.time()
    results = {"config": dict(n_train=n_train, n_test=n_test, width=width, epochs=epochs,
                              depth=FLAGS.depth, degree=FLAGS.degree, form=FLAGS.form,
                              nn_use_bias=FLAGS.use_bias, parameterization=FLAGS.parameterization,
                              train_scale=FLAGS.train_scale,
                              batch_size=FLAGS.batch_size, lr=FLAGS.lr, seed=FLAGS.seed),
               "r_max": r_max}
    examples = {}
    for name in FLAGS.datasets:
        results[name], examples[name] = run_dataset(name, n_train, n_test, width, epochs, r_max)
        nn, hp = (np.array(results[name][k]["test_accuracy"]) for k in ("NN", "NN-Hp"))
        beyond = np.array(r_max) > FLAGS.train_scale + 1e-9
        results[name]["mean_accuracy_gain_of_hp_for_r_max_above_train"] = (
            float(np.mean((hp - nn)[beyond])) if beyond.any() else None)
    results["seconds"] = time.time() - start

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "brightness_extrapolation.json"), "w") as f:
        json.dump(results, f, indent=2)
    _plot(results, examples, r_max, os.path.join(FLAGS.out_dir, "brightness_extrapolation.png"))
    print(f"Train on pixels in [0, {FLAGS.train_scale}], test on [0, r_max] "
          f"({n_train} train / {n_test} test images, width {width}, {epochs} epochs):")
    for name in FLAGS.datasets:
        for key in ("NN", "NN-Hp"):
            acc = results[name][key]["test_accuracy"]
            print(f"  {name:13s} {key:6s} accuracy at r_max={r_max[0]:.1f}: {acc[0]:.3f}, "
                  f"at r_max={r_max[-1]:.1f}: {acc[-1]:.3f}")
    print(f"  figure and numbers in {FLAGS.out_dir}/brightness_extrapolation.{{png,json}} "
          f"({results['seconds']:.0f} s)")


def _plot(results, examples, r_max, path):
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
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
