"""The learning-rate regimes of GD for the neural quadratic model and a wide ReLU net (thesis
Fig. 3.3 and Fig. B.1, App. B.14).

Task (App. B.14): 128 points in 1-D, ``x ~ N(-2, 1)`` for label -1 and ``x ~ N(2, 1)`` for label
+1 (64 each); a two-layer ReLU network of width 5000 (NTK parameterization, no biases: the 1-D
model of thesis Eq. 3.10, whose tangent kernel has rank 2, one direction per sign of ``x``), and
its neural quadratic model (NQM, thesis Eq. 3.2: ``kerntk.models.quadratic`` of the same
initialization). Both are trained by full-batch GD on the mean squared error at learning rates
``eta = c x eta_crit`` with ``eta_crit = n / lambda_1(K_0)`` (``kerntk.spectral.critical_lr``;
the thesis's "2/lambda_1(0) = 0.37").

The thesis's regimes (Ch. 3, Theorem 3.3.6, Remark 4.3.1), the prediction each run is checked
against:

* ``c < 1``: monotone convergence, the kernel nearly constant (linear dynamics);
* NQM, ``1 < c < 2``: catapult (the loss rises, then converges; ``lambda_1`` drops);
  ``c > 2 (eta > 4/lambda_1)``: divergence;
* ReLU net, ``1 < c < eta_max / eta_crit`` with ``eta_max ~ 6 eta_crit`` (Remark 4.3.1, from
  Lewkowycz et al.): catapult; beyond: divergence. The rates avoid the neighbourhood of the
  approximate boundary 6.

Each run is classified from its loss curve ``L_0 .. L_T`` (entry t: the loss at the weights
after t steps) by a stated rule:

* **diverge**: a non-finite loss, a loss above ``1e6 L_0``, or ``L_T >= L_0``;
* **monotone**: otherwise, when no step raises the loss by more than 0.1 % (``L_{t+1} <=
  1.001 L_t`` for every t);
* **catapult**: otherwise (the loss rises and comes back below ``L_0``).

Writes ``<out_dir>/four_regimes.json`` and ``.png``.

    python examples/four_regimes.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402  (first: quiet TensorFlow start-up)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402

_common.define_flags(width=5000, use_bias=False, b_std=1.0)
flags.DEFINE_integer("n", 128, "Training points (thesis: 128).")
flags.DEFINE_integer("steps", 300, "GD steps per run.")
flags.DEFINE_list("factors", ["0.5", "0.9", "1.3", "1.8", "2.5", "4", "9", "14"],
                  "Learning rates as multiples of eta_crit = n / lambda_1(K_0).")
flags.DEFINE_float("net_max", 6.0, "The ReLU net's predicted eta_max / eta_crit (thesis "
                   "Remark 4.3.1: about 6).")
FLAGS = flags.FLAGS

MONOTONE, CATAPULT, DIVERGE = "monotone", "catapult", "diverge"


def predict(c, model):
    """The thesis's regime for ``eta = c eta_crit``."""
    top = 2.0 if model == "nqm" else FLAGS.net_max
    return MONOTONE if c < 1 else (CATAPULT if c < top else DIVERGE)


def classify(loss):
    """The regime of a loss curve ``L_0 .. L_T`` by the rule of the module docstring."""
    loss = np.asarray(loss, float)
    if not np.all(np.isfinite(loss)) or loss.max() > 1e6 * loss[0] or loss[-1] >= loss[0]:
        return DIVERGE
    if np.all(loss[1:] <= 1.001 * loss[:-1]):
        return MONOTONE
    return CATAPULT


class _LossCurve(keras.callbacks.Callback):
    """Records the full-batch loss after every step; stops once it is non-finite or above
    ``1e6`` times the first."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.loss = x, y, []

    def _loss(self):
        f = keras.ops.convert_to_numpy(self.model(self.x, training=False))
        return float(np.mean((f - self.y) ** 2))

    def on_train_begin(self, logs=None):
        self.loss = [self._loss()]

    def on_epoch_end(self, epoch, logs=None):
        self.loss.append(self._loss())
        if not np.isfinite(self.loss[-1]) or self.loss[-1] > 1e6 * self.loss[0]:
            self.model.stop_training = True


def make_data(n, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat([-1.0, 1.0], [n // 2, n - n // 2])
    x = rng.normal(2.0 * y, 1.0)
    return x[:, None].astype(np.float32), y[:, None].astype(np.float32)


def run(kind, c, eta_crit, x, y, width, steps):
    net = kerntk.models.fcn(2, width, input_shape=(1,), use_bias=FLAGS.use_bias,
                            b_std=FLAGS.b_std, seed=FLAGS.seed)
    model = kerntk.models.quadratic(net) if kind == "nqm" else net
    model.compile(optimizer=keras.optimizers.SGD(c * eta_crit), loss="mse")
    lam0 = len(x) / kerntk.spectral.critical_lr(model, x)
    curve = _LossCurve(x, y)
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0,
              callbacks=[curve])
    finite = all(np.isfinite(curve.loss)) and curve.loss[-1] < 1e6 * curve.loss[0]
    lam_end = len(x) / kerntk.spectral.critical_lr(model, x) if finite else float("nan")
    observed = classify(curve.loss)
    return {"model": kind, "factor": c, "lr": c * eta_crit, "predicted": predict(c, kind),
            "observed": observed, "loss_init": curve.loss[0], "loss_max": float(np.max(
                curve.loss)), "loss_final": curve.loss[-1], "steps_run": len(curve.loss) - 1,
            "lambda_1_init": lam0, "lambda_1_final": lam_end,
            "lambda_1_ratio": lam_end / lam0, "curve": curve.loss}


def main(argv):
    del argv
    n, width, steps = FLAGS.n, FLAGS.width, FLAGS.steps
    factors = [float(f) for f in FLAGS.factors]
    if FLAGS.smoke:
        n, width, steps = 32, 512, 60
        factors = [0.5, 1.5, 14.0]
    keras.utils.set_random_seed(FLAGS.seed)
    x, y = make_data(n, FLAGS.seed)
    net = kerntk.models.fcn(2, width, input_shape=(1,), use_bias=FLAGS.use_bias,
                            b_std=FLAGS.b_std, seed=FLAGS.seed)
    eta_crit = kerntk.spectral.critical_lr(net, x)
    lam = kerntk.spectral.top_eigenpairs(kerntk.ntk.empirical_ntk(net, x), k=2).eigenvalues
    runs = []
    for kind in ("nqm", "net"):
        for c in factors:
            r = run(kind, c, eta_crit, x, y, width, steps)
            runs.append(r)
            print(f"  {kind} c={c:g} (eta {r['lr']:.3g}): predicted {r['predicted']}, observed "
                  f"{r['observed']}; loss {r['loss_init']:.3g} -> max {r['loss_max']:.3g} -> "
                  f"{r['loss_final']:.3g}; lambda_1 x {r['lambda_1_ratio']:.3f}", flush=True)
    claims = []
    for kind, fig, paper in (
            ("nqm", "fig3.3", "NQM: monotone for eta < 2/lambda_1, catapult for 2/lambda_1 < eta "
                              "< 4/lambda_1, divergence above"),
            ("net", "figB.1", f"wide ReLU net: monotone below 2/lambda_1, catapult up to "
                              f"eta_max ~ {FLAGS.net_max:g} eta_crit (Remark 4.3.1), divergence "
                              f"above")):
        rs = [r for r in runs if r["model"] == kind]
        claims.append(_common.claim(
            f"{fig}/{kind}_regimes", paper=paper,
            measured="; ".join(f"c={r['factor']:g}: {r['observed']}" for r in rs),
            holds=all(r["observed"] == r["predicted"] for r in rs),
            rule="for every learning rate eta = c eta_crit the regime classified from the loss "
                 "curve (diverge: non-finite, > 1e6 L_0 or L_T >= L_0; monotone: no step raises "
                 "the loss by more than 0.1%; catapult: otherwise) equals the predicted one"))
    cat = [r for r in runs if r["observed"] == CATAPULT]
    mono = [r for r in runs if r["observed"] == MONOTONE]
    claims.append(_common.claim(
        "fig3.3/kernel_drops_in_catapult_constant_below",
        paper="catapult: lambda_1(t) decreases; eta < eta_crit: the kernel is nearly constant",
        measured="lambda_1 final / initial: catapult runs " + ", ".join(
            f"{r['model']} c={r['factor']:g} {r['lambda_1_ratio']:.3f}" for r in cat) +
            "; monotone runs " + ", ".join(f"{r['model']} c={r['factor']:g} "
                                         f"{r['lambda_1_ratio']:.3f}" for r in mono),
        holds=bool(cat and mono and all(r["lambda_1_ratio"] < 0.95 for r in cat) and
                   all(abs(r["lambda_1_ratio"] - 1) < 0.05 for r in mono)),
        rule="every run observed as a catapult ends with lambda_1 below 0.95 x its initial "
             "value, and every monotone run within 5% of it"))
    setting = {
        "paper": ("thesis Fig. 3.3 (NQM) and Fig. B.1 (net), App. B.14: 128 points x ~ N(+-2, "
                  "1) with labels +-1, two-layer ReLU net of width 5000 and its NQM, GD at "
                  "rates across 2/lambda_1(0) = 0.37, 2/lambda_2(0) = 0.39 and eta_max"),
        "ours": (f"{n} points (64 per label, seed {FLAGS.seed}), 2-layer NTK ReLU net width "
                 f"{width} without biases and kerntk.models.quadratic of it, GD on the mean "
                 f"squared error for {steps} steps at c x eta_crit, c in "
                 f"{', '.join(f'{c:g}' for c in factors)}; eta_crit = n / lambda_1 = "
                 f"{eta_crit:.3g} (lambda_1, lambda_2 = {lam[0]:.4g}, {lam[1]:.4g})"),
        "deviations": [
            f"the regimes are classified from the loss curve; the split of the catapult band at "
            f"2/lambda_2 (catapult in p_1 only vs in p_1 and p_2) is not tested (here n/lambda_1 "
            f"= {eta_crit:.3g}, n/lambda_2 = {n / lam[1]:.3g}; the thesis: 0.37, 0.39)",
            "the net's upper band edge is the thesis's approximate eta_max ~ 6 eta_crit; rates "
            "near it are avoided"],
    }
    results = {"n": n, "width": width, "steps": steps, "eta_crit": eta_crit,
               "lambda_1": float(lam[0]), "lambda_2": float(lam[1]),
               "eta_crit_2_over_lambda_2": n / float(lam[1]), "runs": runs}
    _common.write_results("four_regimes", setting=setting, config=_common.flag_values(),
                          claims=claims, results=results)
    _plot(runs)
    _common.print_claims(claims)


def _plot(runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for a, kind in zip(ax, ("nqm", "net")):
        for r in (r for r in runs if r["model"] == kind):
            curve = np.asarray(r["curve"], float)
            a.semilogy(np.clip(curve, 1e-8, 1e8), label=f"c={r['factor']:g} ({r['observed']})")
        a.set(xlabel="step", title=f"{kind.upper()}: training loss at eta = c eta_crit",
              ylim=(1e-4, 1e8))
        a.legend(fontsize="x-small")
    _common.save_figure(fig, "four_regimes")


if __name__ == "__main__":
    app.run(main)
