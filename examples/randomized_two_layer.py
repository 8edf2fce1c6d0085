"""Randomized two-layer net vs its NTK twin on a single-index polynomial (paper 001, Bai & Lee).

Paper 001 (Sec. 3, Eq. 1-3) trains only the first layer ``W`` (the movement from ``W0``) of
``f(x) = (1/sqrt(m)) sum_r a_r sigma((w0_r + Sigma_rr w_r)^T x)`` with a symmetric initialization
(``a = (+1, .., -1, ..)``, ``W0`` copied across the halves, so ``f_{W0} = 0``) and a fresh random
sign matrix ``Sigma`` at every step (the randomized risk ``E_Sigma L(W Sigma)``). Because
``E Sigma = 0`` and ``Sigma^2 = I``, the linear (NTK) Taylor term ``f^(1)`` averages out while the
quadratic term ``f^(2)`` does not: the net couples with its quadratic model, which learns
``(beta^T x)^p`` with ``O(p/d)`` times the NTK's sample complexity (Sec. 5.2; the paper has no
experiment: this trainer is ours).

Three models share ``W0`` (``kerntk.layers.SymmetricTwoLayer``, ``sigma = relu^3``):

* ``randomized``: the paper's recipe, GD on the MSE plus ``--lam * ||W||_{2,4}^4`` with a fresh
  ``Sigma`` each step; tested as the paper's randomized risk, the test MSE averaged over
  ``--eval_draws`` fresh sign draws;
* ``ntk``: its NTK twin, the linearized net ``kerntk.models.linearize`` (``f_{W0} + f^(1)``, kernel
  regression with the NTK at ``W0``) trained by GD;
* ``plain``: the same net trained without randomization (``Sigma = I``), the lazy regime.

All by full-batch GD at ``--lr_factor`` times ``eta_crit = n / lambda_max(K_0)``
(``kerntk.spectral.critical_lr``; ``K_0`` is the same for every ``Sigma``). Along training we log
the coupling diagnostic, the RMS over test inputs of ``f^(1)`` and ``f^(2)``
(``SymmetricTwoLayer.kth_order_term``; for the randomized net at ``W Sigma`` with a fresh
``Sigma``).

Task: ``x`` uniform on the sphere of radius ``sqrt(d)`` (``kerntk.datasets.sample_sphere``, so
``w0_r^T x ~ N(0, 1)``), ``y = (beta^T x)^p`` with a random unit ``beta``; the test loss is the
MSE divided by the variance of ``y`` on the test set (1 = predicting the mean), at each training
set size of ``--n_train``.

    python examples/randomized_two_layer.py --out_dir examples/results    # full run
    python examples/randomized_two_layer.py --smoke --out_dir /tmp/r2l    # seconds
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (quiet TensorFlow start-up first)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.layers import SymmetricTwoLayer  # noqa: E402

NAME = "randomized_two_layer"
MODELS = ("randomized", "ntk", "plain")
_common.define_flags(width=1024, seeds=3)
flags.DEFINE_integer("d", 30, "Input dimension.")
flags.DEFINE_integer("p", 3, "Degree of the target (beta^T x)^p (001 Thm 7: p - 2 in {1} or "
                     "even).")
flags.DEFINE_list("n_train", ["100", "200", "400", "800"], "Training set sizes.")
flags.DEFINE_integer("n_test", 1000, "Test points.")
flags.DEFINE_integer("steps", 1000, "Full-batch GD steps per model.")
flags.DEFINE_float("lr_factor", 0.5, "Learning rate as a multiple of eta_crit = n / "
                   "lambda_max(K_0).")
flags.DEFINE_float("lam", 1e-3, "Weight of the ||W||_{2,4}^4 regularizer of the randomized net "
                   "(001 Sec. 3.1).")
flags.DEFINE_integer("eval_every", 250, "Log the test loss and ||f^(1)||, ||f^(2)|| every this "
                     "many steps.")
flags.DEFINE_integer("eval_draws", 8, "Sign draws averaged in the randomized net's test loss.")
flags.DEFINE_float("target_rel_loss", 0.5, "Sample-complexity claim: the smallest n whose "
                   "relative test loss is at most this.")
FLAGS = flags.FLAGS


def make_task(n, seed, beta):
    x = kerntk.datasets.sample_sphere(n, FLAGS.d, seed=seed) * math.sqrt(FLAGS.d)
    y = (x @ beta) ** FLAGS.p
    return x.astype("float32"), y[:, None].astype("float32")


def rms(t):
    return float(np.sqrt(np.mean(np.square(np.asarray(t, dtype="float64")))))


def taylor_terms(layer, x, signs=None):
    """RMS over ``x`` of ``f^(1)`` and ``f^(2)`` at ``W Sigma`` (``signs``: diag of Sigma)."""
    saved = layer.kernel.value
    if signs is not None:
        layer.kernel.assign(saved * signs)
    f1, f2 = layer.kth_order_term(x, 1), layer.kth_order_term(x, 2)
    layer.kernel.assign(saved)
    return rms(f1), rms(f2)


def train_one(kind, x, y, x_test, y_test, seed, lr):
    """GD on one model; returns its log and final numbers."""
    keras.utils.set_random_seed(seed)
    layer = SymmetricTwoLayer(FLAGS.width, randomize=(kind == "randomized"),
                              eval_mode="deterministic", seed=seed)
    net = keras.Sequential([keras.Input((FLAGS.d,)), layer])
    model = kerntk.models.linearize(net) if kind == "ntk" else net
    var = model.trainable_variables
    opt = keras.optimizers.SGD(lr)
    lam = FLAGS.lam if kind == "randomized" else 0.0
    x_t, y_t = tf.constant(x), tf.constant(y)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x_t, training=True) - y_t))
            reg = lam * tf.reduce_sum(tf.square(tf.reduce_sum(tf.square(layer.kernel), 0))) \
                if lam else 0.0
            total = loss + reg
        opt.apply_gradients(zip(tape.gradient(total, var), var))
        return loss

    var_y = float(np.var(y_test))
    fwd = tf.function(lambda t, s: layer.forward(t, s))

    def test_loss():
        if kind == "ntk":
            pred = [model(x_test)]
        elif kind == "plain":
            pred = [layer.forward(x_test)]
        else:
            pred = [fwd(x_test, layer.draw_signs()) for _ in range(FLAGS.eval_draws)]
        return float(np.mean([np.mean((np.asarray(p) - y_test) ** 2) for p in pred])) / var_y

    log = {"step": [], "train_loss": [], "test_rel_loss": [], "rms_f1": [], "rms_f2": []}
    diverged = False
    for t in range(FLAGS.steps + 1):
        if t % FLAGS.eval_every == 0 or t == FLAGS.steps:
            if kind == "ntk":   # f_lin's displacement is the layer's W
                layer.kernel.assign(model.delta[0])
            signs = layer.draw_signs() if kind == "randomized" else None
            f1, f2 = taylor_terms(layer, x_test, signs)
            log["step"].append(t)
            log["test_rel_loss"].append(test_loss())
            log["rms_f1"].append(f1)
            log["rms_f2"].append(f2)
            log["train_loss"].append(float(np.mean((np.asarray(
                model(x_t) if kind == "ntk" else layer.forward(x_t)) - y) ** 2)))
            if not np.isfinite(log["test_rel_loss"][-1]):
                diverged = True
                break
        if t < FLAGS.steps:
            step()
    return {"log": log, "diverged": diverged, "final_test_rel_loss": log["test_rel_loss"][-1],
            "best_test_rel_loss": float(np.nanmin(log["test_rel_loss"])),
            "final_rms_f1": log["rms_f1"][-1], "final_rms_f2": log["rms_f2"][-1]}


def main(_):
    if FLAGS.smoke:
        FLAGS.width, FLAGS.steps, FLAGS.eval_every, FLAGS.n_test, FLAGS.d = 512, 300, 100, 500, 10
        FLAGS.n_train, FLAGS.seeds, FLAGS.eval_draws = ["50", "200"], 1, 4
    ns = sorted(int(n) for n in FLAGS.n_train)
    runs = []
    for s in range(FLAGS.seeds):
        seed = FLAGS.seed + s
        beta = np.random.default_rng(seed).standard_normal(FLAGS.d)
        beta /= np.linalg.norm(beta)
        x_test, y_test = make_task(FLAGS.n_test, 10_000 + seed, beta)
        for n in ns:
            x, y = make_task(n, seed * 100 + n, beta)
            keras.utils.set_random_seed(seed)
            probe = keras.Sequential([keras.Input((FLAGS.d,)),
                                      SymmetricTwoLayer(FLAGS.width, eval_mode="deterministic",
                                                        seed=seed)])
            eta = FLAGS.lr_factor * float(kerntk.spectral.critical_lr(probe, x))
            for kind in MODELS:
                r = train_one(kind, x, y, x_test, y_test, seed, eta)
                r.update(seed=seed, n=n, kind=kind, lr=eta)
                runs.append(r)
                print(f"seed {seed} n {n:4d} {kind:10s}: test rel loss "
                      f"{r['final_test_rel_loss']:.3f} (best {r['best_test_rel_loss']:.3f}) "
                      f"|f1| {r['final_rms_f1']:.3g} |f2| {r['final_rms_f2']:.3g}", flush=True)
            keras.utils.clear_session(free_memory=True)

    table = {kind: [] for kind in MODELS}
    for kind in MODELS:
        for n in ns:
            v = [r["final_test_rel_loss"] for r in runs if r["kind"] == kind and r["n"] == n]
            table[kind].append({"n": n, "mean": float(np.mean(v)), "std": float(np.std(v)),
                                "n_seeds": len(v)})
    claims = make_claims(runs, table, ns)
    deviations = [
        "paper 001 has no experiment; this is our test of its claims (Sec. 3 coupling, Sec. 5.2 "
        "sample complexity)",
        "squared loss (the theory assumes a convex 1-Lipschitz loss with bounded derivatives, "
        "e.g. logistic)",
        "plain GD with a fresh sign draw per step, not a saddle-escaping algorithm (Thm 4 is about "
        "second-order stationary points)",
        "sigma = relu^3 (Thm 7 uses relu^3 / 6: the same up to the output scale)",
        f"width {FLAGS.width}, d = {FLAGS.d}, p = {FLAGS.p}, n in {ns}: small enough for CPU "
        f"(the theory needs m = poly(d, n, 1/eps))"]
    setting = {
        "paper": "paper 001 (Bai & Lee 2020) Sec. 3-5: two-layer net with symmetric "
                 "initialization (Eq. 3), trained on the randomized risk E_Sigma L(W Sigma) + "
                 "lam ||W||_{2,4}^4; f^(2) dominates f^(1); learns (beta^T x)^p with O(p/d) of "
                 "the NTK's samples (no experiment in the paper)",
        "ours": f"SymmetricTwoLayer width {FLAGS.width}, relu^3, d = {FLAGS.d}, target "
                f"(beta^T x)^{FLAGS.p} on the sphere of radius sqrt(d), n in {ns}, "
                f"{FLAGS.n_test} test points, {FLAGS.steps} full-batch GD steps at "
                f"{FLAGS.lr_factor:g} eta_crit, lam = {FLAGS.lam:g}, {FLAGS.seeds} seeds; "
                f"twins: linearized net (NTK) and the plain net (Sigma = I)",
        "deviations": deviations}
    results = {"n_train": ns, "table": table, "runs": runs}
    path = _common.write_results(NAME, setting=setting, config=_common.flag_values(),
                                 claims=claims, results=results)
    _common.save_figure(plot(runs, table, ns), NAME)
    _common.print_claims(claims)
    print(f"wrote {path}")


def make_claims(runs, table, ns):
    def sel(kind):
        return [r for r in runs if r["kind"] == kind]

    claims = []
    rnd, pln = sel("randomized"), sel("plain")

    def ratios(rs, top, bottom):
        """Final ``top / bottom`` RMS ratios of the runs that stayed finite, and how many did
        not (a diverged run has no ratio and fails a rule that covers every run)."""
        ok = [r for r in rs if np.isfinite(r[top]) and np.isfinite(r[bottom])]
        return [r[top] / max(r[bottom], 1e-30) for r in ok] or [float("nan")], len(rs) - len(ok)

    ratio, bad = ratios(rnd, "final_rms_f2", "final_rms_f1")
    claims.append(_common.claim(
        "001/randomized_f2_dominates_f1",
        paper="with random signs Sigma, E f^(1) = 0 and f^(1) = O(m^-1/4) while f^(2) = O(1): "
              "the randomized net couples with its quadratic model (Sec. 3)",
        measured=f"||f^(2)|| / ||f^(1)|| at the end of training: min {min(ratio):.3g}, max "
                 f"{max(ratio):.3g} over the {len(rnd) - bad} of {len(rnd)} runs (seeds x n) "
                 f"that stayed finite; {bad} diverged",
        holds=bool(rnd) and bad == 0 and min(ratio) > 1.0,
        rule="for the randomized net, the test-set RMS of f^(2) exceeds that of f^(1) (at a "
             "fresh Sigma) at the end of training, in every seed and at every n (a diverged run "
             "fails the rule)"))
    ratio_p, bad_p = ratios(pln, "final_rms_f1", "final_rms_f2")
    claims.append(_common.claim(
        "001/plain_f1_dominates_f2",
        paper="without randomization, training stays in the NTK regime: the linear term f^(1) "
              "dominates the higher-order terms (Sec. 3)",
        measured=f"||f^(1)|| / ||f^(2)|| at the end of training: min {min(ratio_p):.3g}, max "
                 f"{max(ratio_p):.3g} over {len(pln) - bad_p} of {len(pln)} runs; {bad_p} "
                 f"diverged",
        holds=bool(pln) and bad_p == 0 and min(ratio_p) > 1.0,
        rule="for the plain net (Sigma = I), the test-set RMS of f^(1) exceeds that of f^(2) at "
             "the end of training, in every seed and at every n (a diverged run fails the "
             "rule)"))
    r_mean = [row["mean"] for row in table["randomized"]]
    k_mean = [row["mean"] for row in table["ntk"]]
    claims.append(_common.claim(
        "001/randomized_lower_test_loss_than_ntk",
        paper="the randomized (quadratic-coupled) net generalizes better than the NTK: sample "
              "complexity n_Q / n_L = O(p/d) for (beta^T x)^p (Sec. 5.2)",
        measured={f"n={n}": f"randomized {a:.3f} vs NTK {b:.3f}"
                  for n, a, b in zip(ns, r_mean, k_mean)},
        holds=all(a < b for a, b in zip(r_mean, k_mean)),
        rule="the seed-mean relative test loss (MSE / Var y; the randomized net's averaged over "
             "sign draws) at the end of training is lower for the randomized net than for the "
             "linearized (NTK) net at EVERY training-set size n"))

    def n_needed(means):
        hit = [n for n, v in zip(ns, means) if v <= FLAGS.target_rel_loss]
        return hit[0] if hit else None

    nr, nk = n_needed(r_mean), n_needed(k_mean)
    claims.append(_common.claim(
        "001/fewer_samples_than_ntk",
        paper="the randomized net needs fewer samples than the NTK to reach a given test loss "
              "(Sec. 5.2)",
        measured=f"smallest n with relative test loss <= {FLAGS.target_rel_loss:g}: randomized "
                 f"{nr}, NTK {nk} (None: not reached in {ns})",
        holds=nr is not None and (nk is None or nr < nk),
        rule=f"the smallest n of the grid whose seed-mean relative test loss is <= "
             f"{FLAGS.target_rel_loss:g} is strictly smaller for the randomized net than for the "
             f"NTK net (the NTK never reaching it counts as larger)"))
    return claims


def plot(runs, table, ns):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, c in zip(MODELS, ("tab:red", "tab:blue", "k")):
        axes[0].errorbar(ns, [r["mean"] for r in table[kind]], yerr=[r["std"] for r in table[kind]],
                         color=c, marker="o", capsize=3, label=kind)
    axes[0].axhline(FLAGS.target_rel_loss, color="gray", linestyle=":", linewidth=1)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training points n")
    axes[0].set_ylabel("test MSE / Var(y) (end of training)")
    axes[0].legend(fontsize=8)
    n_show = ns[-1]
    for kind, c in (("randomized", "tab:red"), ("plain", "k")):
        r = next(r for r in runs if r["kind"] == kind and r["n"] == n_show)
        axes[1].plot(r["log"]["step"], r["log"]["rms_f1"], "--", color=c,
                     label=f"{kind}: ||f^(1)||")
        axes[1].plot(r["log"]["step"], r["log"]["rms_f2"], "-", color=c,
                     label=f"{kind}: ||f^(2)||")
    axes[1].set_xlabel("GD step")
    axes[1].set_ylabel("RMS over test inputs")
    axes[1].set_title(f"Taylor terms along training (n = {n_show}, first seed)", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"paper 001: randomized two-layer net vs NTK twin, target (beta^T x)^{FLAGS.p}, "
                 f"d = {FLAGS.d}")
    return fig


if __name__ == "__main__":
    app.run(main)
