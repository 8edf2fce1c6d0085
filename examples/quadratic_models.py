"""Best test loss/accuracy vs learning rate for f, f_lin and f_quad (thesis Fig. 3.4 / B.5).

A 2-layer NTK-parameterized fcn ``f`` (``kerntk.models.fcn(2, width)``), its linearization
``f_lin`` (thesis Eq. 3.1, ``kerntk.models.linearize``) and its neural quadratic model ``f_quad``
(Eq. 3.2, ``kerntk.models.quadratic``), all starting from the same ``w0``, are trained by
full-batch gradient descent on the MSE ``(1/n) sum_i (f(x_i) - y_i)^2`` (Keras' mean convention)
for a grid of learning rates ``eta = factor * eta_crit``. For each run we record the best test
loss and the best test accuracy seen during training (thesis App. B.14 reports the same), the
largest training loss (a catapult shows as a rise above the initial loss) and whether it
diverged.

``eta_crit = 2 / lambda_max(H_L) ~= n / lambda_max(K_0)`` for this MSE convention (thesis Def.
3.2.2, App. C.1), with ``K_0`` the empirical NTK of ``f`` at ``w0`` on the training inputs (the
same for the three models). ``K_0`` comes from ``kerntk.ntk.empirical_ntk`` when importable, else
from per-example gradients computed here (the JSON says which).

Expected (thesis Sec. 3.4): below ``eta_crit`` the three models coincide; above it ``f_lin``
diverges, while ``f`` and ``f_quad`` converge through a catapult (loss spike) to a lower best
test loss; ``f_quad`` diverges beyond about ``2 eta_crit``, ``f`` later.

Data: MNIST-2 (default digits 0 -> +1 and 2 -> -1; train points from the MNIST training split,
test points from its test split) or CIFAR-2 (``--dataset=cifar10``, default classes airplane/bird
as in the thesis), through ``kerntk.datasets.load`` (``--data_dir``, else ``$KERNTK_DATA_DIR``,
else tensorflow-datasets): the first ``n/2`` images of each class in the split's order, flattened
and scaled per image to ``||x|| = sqrt(d)``. Biases are off by default (SPEC §5:
NTK-parameterized biases dominate the NTK).

    python examples/quadratic_models.py --out_dir /tmp/qm            # full run (minutes)
    python examples/quadratic_models.py --smoke --out_dir /tmp/qm    # seconds

Writes ``quadratic_models.png`` and ``quadratic_models.json`` to ``--out_dir``.

Recorded run (defaults: MNIST 0 vs 2, n = 128, 500 test points, width 2048, no biases, 300 GD
steps, seed 0; 11 min on 2 CPU cores): lambda_max(K0) = 50.0, eta_crit = 2.56. Best test loss
f / f_lin / f_quad: 0.240 / 0.238 / 0.240 at 0.25 eta_crit, 0.225 / 0.223 / 0.225 at 0.9;
at 1.2: 0.196 / diverged / 0.195; at 1.5: 0.155 / diverged / 0.152 (training-loss peaks 92x and
105x the initial loss: catapults), best accuracy 0.978 / - / 0.982 vs 0.960 below eta_crit.
f_quad diverges from 2.2 eta_crit on (thesis: eta_max = 2 eta_crit for quadratic models); f still
converges up to 4 eta_crit (best test loss 0.13-0.42, noisy between learning rates).
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

flags.DEFINE_enum("dataset", "mnist", ["mnist", "cifar10"], "MNIST-2 or CIFAR-2.")
flags.DEFINE_string("data_dir", None, "Directory with <name>/<split>*.npz files (default: "
                    "$KERNTK_DATA_DIR, else tensorflow-datasets).")
flags.DEFINE_list("classes", None, "The two classes (+1, -1); default 0,2 (airplane/bird for "
                  "CIFAR-10, digits 0/2 for MNIST).")
flags.DEFINE_integer("n_train", 128, "Training points (even; half per class). Thesis: 128 "
                     "(MNIST) / 256 (CIFAR-2).")
flags.DEFINE_integer("n_test", 500, "Test points (half per class, at most what the split has).")
flags.DEFINE_integer("width", 2048, "Hidden width of the 2-layer fcn (thesis: 5000).")
flags.DEFINE_boolean("use_bias", False, "Biases in the fcn (b_std below).")
flags.DEFINE_float("b_std", 1.0, "Bias scale when --use_bias.")
flags.DEFINE_list("lr_factors", ["0.25", "0.5", "0.9", "1.2", "1.5", "1.8", "2.2", "2.6",
                                 "3.0", "4.0"],
                  "Learning rates as multiples of eta_crit = n / lambda_max(K_0).")
flags.DEFINE_integer("steps", 300, "Full-batch GD steps per run.")
flags.DEFINE_integer("eval_every", 5, "Evaluate the test set every this many steps.")
flags.DEFINE_float("diverge_factor", 1e4, "A run diverged when its training loss exceeds this "
                   "multiple of the initial loss (or is not finite); it is then stopped.")
flags.DEFINE_integer("seed", 0, "Seed of the initialization and of the data subset.")
flags.DEFINE_boolean("smoke", False, "Tiny fast run for tests (overrides sizes).")
flags.DEFINE_string("out_dir", "out/quadratic_models", "Where the PNG and JSON go.")
FLAGS = flags.FLAGS


def load_two_classes(name, split, classes, n, rng, data_dir):
    """First ``n/2`` images of each class (shuffled together), labels +1/-1, ``||x|| = sqrt(d)``."""
    # raw: the stored 0..255 values, so the scaling below is done in float64
    parts = [kerntk.datasets.load(name, split, classes=(c,), n=n // 2, normalize="raw",
                                  flatten=True, data_dir=data_dir)[0] for c in classes]
    order = np.arange(2 * (n // 2))
    rng.shuffle(order)
    xs = np.concatenate(parts).astype("float64")[order] / 255.0
    xs -= xs.mean(axis=1, keepdims=True)
    xs *= np.sqrt(xs.shape[1]) / np.linalg.norm(xs, axis=1, keepdims=True)
    ys = np.repeat([1.0, -1.0], n // 2)[order][:, None]
    return xs.astype("float32"), ys.astype("float32")


def ntk_lambda_max(model, x):
    """``lambda_max`` of the empirical NTK on ``x`` and the method used."""
    try:
        from kerntk.ntk import empirical_ntk
        K = empirical_ntk(model, x)
        source = "kerntk.ntk.empirical_ntk"
    except ImportError:
        # Direct per-example gradients: K = J J^T (fine for the small n of this experiment).
        rows = []
        for i in range(len(x)):
            with tf.GradientTape() as tape:
                out = tf.reduce_sum(model(x[i:i + 1]))
            g = tape.gradient(out, model.trainable_variables)
            rows.append(np.concatenate([np.ravel(t.numpy()) for t in g]).astype("float64"))
        J = np.stack(rows)
        K = J @ J.T
        source = "per-example gradients (examples/quadratic_models.py)"
    return float(np.linalg.eigvalsh(K)[-1]), source


_PREDICT = {}


def _predict_fn(model):
    # One traced forward per model (reused across learning rates): model.evaluate would rebuild
    # its data pipeline at every evaluation.
    if id(model) not in _PREDICT:
        _PREDICT[id(model)] = tf.function(lambda x: model(x, training=False))
    return _PREDICT[id(model)]


class _BestTest(keras.callbacks.Callback):
    """Best test loss/accuracy during training, peak training loss, divergence stop."""

    def __init__(self, x_test, y_test, every, diverge_factor):
        super().__init__()
        self.x_test, self.y_test = tf.constant(x_test), y_test
        self.every, self.diverge_factor = every, diverge_factor

    def on_train_begin(self, logs=None):
        self.best_loss, self.best_acc = np.inf, 0.0
        self.train_losses = []
        self.diverged = False
        self._eval()

    def _eval(self):
        pred = _predict_fn(self.model)(self.x_test).numpy().astype("float64")
        with np.errstate(all="ignore"):
            loss = float(np.mean((pred - self.y_test) ** 2))
        acc = float(np.mean(np.sign(pred) == np.sign(self.y_test)))
        if np.isfinite(loss):
            self.best_loss = min(self.best_loss, float(loss))
            self.best_acc = max(self.best_acc, float(acc))

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])  # loss before this step's update (at the step's weights)
        self.train_losses.append(loss)
        if not np.isfinite(loss) or loss > self.diverge_factor * self.train_losses[0]:
            self.diverged = True
            self.model.stop_training = True
            return
        if (epoch + 1) % self.every == 0:
            self._eval()


def run(x, y, x_test, y_test, model, w0, lr, steps, tracker):
    if isinstance(model, kerntk.models.TaylorModel):
        model.reset_delta()
    else:
        model.set_weights(w0)
    model.optimizer.learning_rate.assign(lr)
    with np.errstate(all="ignore"):
        model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0,
                  callbacks=[tracker])
    losses = np.array(tracker.train_losses)
    return {"best_test_loss": tracker.best_loss if np.isfinite(tracker.best_loss) else None,
            "best_test_acc": tracker.best_acc, "diverged": bool(tracker.diverged),
            "initial_train_loss": float(losses[0]),
            "peak_train_loss": float(np.nanmax(np.where(np.isfinite(losses), losses, np.nan))),
            "final_train_loss": float(losses[-1]) if np.isfinite(losses[-1]) else None,
            "catapult": bool(np.nanmax(np.where(np.isfinite(losses), losses, np.nan))
                             > 1.5 * losses[0]) and not tracker.diverged,
            "steps_run": int(len(losses))}


def plot(results, factors, eta_crit, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"f": ("k", "o"), "f_lin": ("tab:blue", "s"), "f_quad": ("tab:red", "^")}
    for name, runs in results.items():
        c, mk = styles[name]
        for ax, key in zip(axes, ("best_test_loss", "best_test_acc")):
            ok = [(f, r[key]) for f, r in zip(factors, runs) if not r["diverged"]]
            if ok:
                ax.plot(*zip(*ok), color=c, marker=mk, label=name)
            bad = [f for f, r in zip(factors, runs) if r["diverged"]]
            if bad:
                ax.plot(bad, [ax.get_ylim()[1] if ok else 1.0] * len(bad), color=c, marker="x",
                        linestyle="none", label=f"{name} diverged")
    for ax, label in zip(axes, ("best test loss", "best test accuracy")):
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(r"learning rate / $\eta_{crit}$" + f"  ($\\eta_{{crit}}$ = {eta_crit:.3g})")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(r"f, $f_{lin}$, $f_{quad}$ under GD (thesis Fig. 3.4 / B.5)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(_):
    if FLAGS.smoke:
        FLAGS.n_train, FLAGS.n_test, FLAGS.width, FLAGS.steps = 16, 32, 64, 12
        FLAGS.lr_factors, FLAGS.eval_every = ["0.5", "1.5", "4.0"], 4
    if FLAGS.n_train < 2 or FLAGS.n_train % 2:
        raise ValueError(f"--n_train must be even and >= 2; got {FLAGS.n_train}.")
    factors = sorted(float(f) for f in FLAGS.lr_factors)
    if not factors or min(factors) <= 0:
        raise ValueError(f"--lr_factors must be positive numbers; got {FLAGS.lr_factors}.")
    classes = [int(c) for c in (FLAGS.classes or ["0", "2"])]
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"--classes needs two distinct classes; got {FLAGS.classes}.")
    rng = np.random.default_rng(FLAGS.seed)
    x, y = load_two_classes(FLAGS.dataset, "train", classes, FLAGS.n_train, rng, FLAGS.data_dir)
    x_test, y_test = load_two_classes(FLAGS.dataset, "test", classes, FLAGS.n_test, rng,
                                      FLAGS.data_dir)
    t0 = time.time()

    keras.utils.set_random_seed(FLAGS.seed)
    net = kerntk.models.fcn(2, FLAGS.width, 1, use_bias=FLAGS.use_bias, b_std=FLAGS.b_std,
                            input_shape=(x.shape[1],), seed=FLAGS.seed)
    w0 = net.get_weights()
    lam, ntk_source = ntk_lambda_max(net, x)
    eta_crit = len(x) / lam
    models = {"f": net, "f_lin": kerntk.models.linearize(net),
              "f_quad": kerntk.models.quadratic(net)}
    for m in models.values():
        m.compile(optimizer=keras.optimizers.SGD(eta_crit), loss="mse")

    results = {name: [] for name in models}
    for factor in factors:
        for name, m in models.items():
            tracker = _BestTest(x_test, y_test, FLAGS.eval_every, FLAGS.diverge_factor)
            r = run(x, y, x_test, y_test, m, w0, factor * eta_crit, FLAGS.steps, tracker)
            r["lr"], r["lr_factor"] = factor * eta_crit, factor
            results[name].append(r)
            best = r["best_test_loss"]
            print(f"eta = {factor:4.2f} eta_crit  {name:6s}  best test loss "
                  f"{best if best is None else round(best, 4)}"
                  f"  acc {r['best_test_acc']:.3f}  peak/initial train loss "
                  f"{r['peak_train_loss'] / r['initial_train_loss']:.3g}"
                  f"{'  DIVERGED' if r['diverged'] else ''}", flush=True)

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    summary = {
        "config": {k: FLAGS[k].value for k in ("dataset", "n_train", "n_test", "width", "use_bias",
                                               "b_std", "steps", "eval_every", "seed", "smoke")},
        "classes": classes, "lambda_max_K0": lam, "eta_crit": eta_crit, "ntk_source": ntk_source,
        "lr_factors": factors, "results": results, "seconds": time.time() - t0,
    }
    with open(os.path.join(FLAGS.out_dir, "quadratic_models.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    plot(results, factors, eta_crit, os.path.join(FLAGS.out_dir, "quadratic_models.png"))
    print(f"lambda_max(K0) = {lam:.4g} ({ntk_source}), eta_crit = {eta_crit:.4g}; wrote "
          f"{FLAGS.out_dir}/quadratic_models.{{json,png}} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    app.run(main)
