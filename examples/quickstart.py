"""Quick start: a polynomial net (PolyDense) and a ReLU fcn fit x^3 + x^2 - 10x + 5 on [-2, 2].

The fcn extrapolates linearly outside the training interval, the Hadamard-product net follows the
cubic (paper 000 Fig. 1). Prints train and extrapolation MSE of both; finishes in well under a
minute on 2 CPU cores.

    python examples/quickstart.py [--epochs 400] [--width 256]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

flags.DEFINE_integer("epochs", 400, "Full-batch training epochs.")
flags.DEFINE_integer("width", 256, "Width of both networks.")
flags.DEFINE_float("lr", 0.01, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def target(x):
    return x ** 3 + x ** 2 - 10 * x + 5


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    x_train = np.linspace(-2, 2, 200, dtype="float32")[:, None]
    x_test = np.concatenate([np.linspace(-4, -2, 50), np.linspace(2, 4, 50)]).astype("float32")
    x_test = x_test[:, None]
    # A constant feature lets the homogeneous polynomial block represent lower-degree terms.
    add_one = lambda x: np.concatenate([x, np.ones_like(x)], axis=1)  # noqa: E731
    nets = {
        "fcn (ReLU, 3 layers)": (kerntk.models.fcn(3, FLAGS.width, input_shape=(2,),
                                                   seed=FLAGS.seed), add_one),
        "pnn (PolyDense, degree 3)": (kerntk.models.pnn(3, FLAGS.width, form="ccp",
                                                        input_shape=(2,), seed=FLAGS.seed),
                                      add_one),
    }
    scale = np.std(target(x_train))
    for name, (model, features) in nets.items():
        model.compile(optimizer=keras.optimizers.Adam(FLAGS.lr), loss="mse")
        model.fit(features(x_train), target(x_train) / scale, epochs=FLAGS.epochs,
                  batch_size=len(x_train), verbose=0)
        train = model.evaluate(features(x_train), target(x_train) / scale, verbose=0)
        test = model.evaluate(features(x_test), target(x_test) / scale, verbose=0)
        print(f"{name:28s} train MSE {train:.4f}   extrapolation MSE on |x| in [2, 4]: {test:.4f}")


if __name__ == "__main__":
    app.run(main)
