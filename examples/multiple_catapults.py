"""Multiple catapults in GD raise the AGOP alignment and lower the test loss (thesis Fig. 4.4, 4.8).

After a catapult ``||K||_2`` has dropped, so ``eta_crit ~ n/||K||_2`` has grown past the learning
rate; raising the rate above the new ``eta_crit`` triggers another catapult (thesis §4.3). The
thesis claims (§4.4, Fig. 4.8) that the test loss falls and the alignment ``cos(G, G*)`` between
the network's AGOP ``G`` and the target's EGOP ``G*`` (thesis Eq. 4.5-4.6) rises with each catapult.

Two ways of raising the rate (``--mode``):

* ``fixed``: the thesis's hand-made schedule, a ``keras.callbacks.LearningRateScheduler`` setting
  the rate to ``--raise_to[i]`` (multiples of ``eta_crit`` at initialization) at GD iteration
  ``--raise_at[i]``. The defaults are thesis Fig. 4.4 (FCN): lr 6 -> [10, 15] at iterations
  [15, 60] with ``eta_crit = 3.6``, i.e. 1.67 -> [2.78, 4.17] x ``eta_crit``.
* ``adaptive``: kerntk's :class:`kerntk.callbacks.CatapultRaise` policy of
  :class:`kerntk.callbacks.CriticalLRMonitor`, which raises to ``--raise_factor x eta_crit(t)``
  once the previous catapult has settled (with its divergence guard and post-catapult decay, the
  thesis's "we decay the learning rate if necessary after the catapult").
* ``both`` runs the two from the same initialization.

Task: the thesis's rank-2 regression (``y = x1 x2 + N(0, 0.1^2)``, ``x ~ N(0, I_100)``, 2-layer
FCN of width 1024, 2000 train / 5000 test points; ``--task`` also takes rank3/rank4/fullrank) with
the analytic EGOP ``G*`` (:func:`kerntk.datasets.rank_egop`). Measured by kerntk callbacks:
``CriticalLRMonitor`` (eta_crit of the full batch, catapult counts),
``AGOPAlignmentLogger`` (alignment on ``--probe`` test points) and Keras' validation loss.
The numbers "after catapult k" are taken just before raise k+1 (and at the end).

Biases (SPEC §5): with ``b ~ N(0, 1)`` the constant mode dominates the NTK and the trend
disappears; the default is no bias.

Writes ``<out_dir>/multiple_catapults.png`` and ``.json``.

    python examples/multiple_catapults.py --mode both [--n 2000] [--steps 120]
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import (AGOPAlignmentLogger, CatapultRaise, CriticalLRMonitor,  # noqa: E402
                              DivergenceGuard)

flags.DEFINE_enum("mode", "both", ["fixed", "adaptive", "both"],
                  "Fixed thesis schedule, kerntk's adaptive CatapultRaise, or both.")
flags.DEFINE_enum("task", "rank2", ["rank2", "rank3", "rank4", "fullrank"],
                  "Synthetic task with an analytic EGOP (kerntk.datasets.rank_task).")
flags.DEFINE_integer("n", 2000, "Training points (thesis: 2000).")
flags.DEFINE_integer("n_test", 5000, "Test points (thesis: 5000).")
flags.DEFINE_integer("d", 100, "Input dimension (thesis: 100).")
flags.DEFINE_float("noise", 0.1, "Label noise standard deviation (thesis: 0.1).")
flags.DEFINE_integer("depth", 2, "Layers of the fcn (thesis Fig. 4.8a: 2).")
flags.DEFINE_integer("width", 1024, "Hidden width (thesis: 1024).")
flags.DEFINE_float("lr_factor", 1.67, "Initial learning rate as a multiple of eta_crit at "
                   "initialization (thesis Fig. 4.4: 6 / 3.6).")
flags.DEFINE_list("raise_at", ["15", "60"], "Fixed mode: GD iterations of the raises "
                  "(thesis Fig. 4.4 FCN: 15, 60).")
flags.DEFINE_list("raise_to", ["2.78", "4.17"], "Fixed mode: new rates, as multiples of eta_crit "
                  "at initialization (thesis Fig. 4.4 FCN: 10/3.6, 15/3.6).")
flags.DEFINE_float("raise_factor", 1.5, "Adaptive mode: CatapultRaise factor (new eta / "
                   "eta_crit(t)).")
flags.DEFINE_integer("max_raises", 2, "Adaptive mode: number of raises (thesis Fig. 4.4: 2).")
flags.DEFINE_integer("cooldown", 10, "Adaptive mode: GD steps between raises at least.")
flags.DEFINE_integer("steps", 120, "GD steps.")
flags.DEFINE_integer("probe", 1000, "Test points on which the AGOP is measured.")
flags.DEFINE_integer("agop_every", 5, "Measure the AGOP alignment every this many steps.")
flags.DEFINE_bool("use_bias", False, "NTK-parameterized biases (SPEC §5: they suppress the "
                  "catapults; off reproduces the thesis's trend).")
flags.DEFINE_float("b_std", 1.0, "Bias scale when --use_bias.")
flags.DEFINE_integer("seed", 0, "Seed of the data and the initialization.")
flags.DEFINE_string("out_dir", "out", "Where the PNG and JSON go.")
flags.DEFINE_bool("smoke", False, "Tiny, fast run for tests.")
FLAGS = flags.FLAGS


def _finite(obj):
    """JSON-safe copy: a diverged run's non-finite numbers become None (and are reported)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _after_each_catapult(raise_steps, steps_seq, values):
    """Value of ``values`` (measured at ``steps_seq``) just before each raise, and at the end."""
    steps_seq, values = np.asarray(steps_seq), np.asarray(values, float)
    out = []
    for s in list(raise_steps) + [np.inf]:
        before = np.nonzero(steps_seq <= s)[0]
        out.append(float(values[before[-1]]) if before.size else float("nan"))
    return out


def run(mode, x, y, xt, yt, g_star, eta_crit0, steps, raise_at, raise_to, width):
    model = kerntk.models.fcn(FLAGS.depth, width, input_shape=(x.shape[1],),
                              use_bias=FLAGS.use_bias, b_std=FLAGS.b_std, seed=FLAGS.seed)
    lr0 = FLAGS.lr_factor * eta_crit0
    model.compile(optimizer=keras.optimizers.SGD(lr0), loss="mse")
    probe = xt[:FLAGS.probe]
    agop = AGOPAlignmentLogger(probe, g_star, every_n_steps=FLAGS.agop_every,
                               every_n_epochs=None)
    callbacks = []
    if mode == "fixed":
        rates = [(s, f * eta_crit0) for s, f in zip(raise_at, raise_to)]

        def schedule(epoch, lr):  # full-batch GD: epoch == iteration
            current = lr0
            for s, r in rates:
                if epoch >= s:
                    current = r
            return current

        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    monitor = CriticalLRMonitor()
    guard = DivergenceGuard(factor=1e3, patience=10)
    callbacks += [monitor, guard]
    raiser = None
    if mode != "fixed":
        raiser = CatapultRaise(monitor, factor=FLAGS.raise_factor, max_raises=FLAGS.max_raises,
                               cooldown=FLAGS.cooldown, guard=guard)
        callbacks.append(raiser)
    callbacks.append(agop)
    hist = model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0,
                     validation_data=(xt, yt), callbacks=callbacks)
    agop.history["step"].append(int(model.optimizer.iterations.numpy()))
    agop.history["agop_alignment"].append(agop.measure()["agop_alignment"])
    val = hist.history["val_loss"]
    val_steps = list(range(1, len(val) + 1))  # val_loss of epoch e is after e+1 steps
    m = monitor.history
    raise_steps = ([s for s in raise_at if s < len(val)] if mode == "fixed"
                   else [r["step"] for r in raiser.raises])
    test_after = _after_each_catapult(raise_steps, val_steps, val)
    align_after = _after_each_catapult(raise_steps, agop.history["step"],
                                       agop.history["agop_alignment"])
    res = {
        "mode": mode, "lr_init": lr0, "raise_steps": [int(s) for s in raise_steps],
        "raised_to": ([float(r) for _, r in zip(raise_steps, [f * eta_crit0 for f in raise_to])]
                      if mode == "fixed" else [float(r["to"]) for r in raiser.raises]),
        "decays": len(raiser.decays) if raiser else 0, "guard_restores": len(guard.restores),
        "catapult_events": int(monitor.counts["catapult_events"]),
        "catapults": int(monitor.counts["catapults"]),
        "loss_spikes": int(monitor.counts["loss_spikes"]),
        "train_loss_final": float(hist.history["loss"][-1]),
        "test_loss_init": None, "test_loss_after_each_catapult": test_after,
        "agop_alignment_init": float(agop.history["agop_alignment"][0]),
        "agop_alignment_after_each_catapult": align_after,
        "eta_crit_final": float(m["eta_crit"][-1]),
        "eta_final": float(m["eta"][-1]),
        "diverged": not bool(np.all(np.isfinite(val))),
    }
    curves = dict(step=m["step"], loss=m["monitor_loss"], eta=m["eta"], eta_crit=m["eta_crit"],
                  agop_step=agop.history["step"], agop=agop.history["agop_alignment"],
                  val_step=val_steps, val=val)
    return res, curves, model


def main(argv):
    del argv
    n, n_test, width, steps = FLAGS.n, FLAGS.n_test, FLAGS.width, FLAGS.steps
    raise_at = [int(s) for s in FLAGS.raise_at]
    raise_to = [float(r) for r in FLAGS.raise_to]
    if len(raise_at) != len(raise_to):
        raise app.UsageError("--raise_at and --raise_to need the same length.")
    if FLAGS.smoke:
        n, n_test, width, steps = 32, 64, 256, 8
        raise_at, raise_to = [4], [1.5]
    keras.utils.set_random_seed(FLAGS.seed)
    x, y = kerntk.datasets.rank_task(FLAGS.task, n, FLAGS.d, noise=FLAGS.noise, seed=FLAGS.seed)
    xt, yt = kerntk.datasets.rank_task(FLAGS.task, n_test, FLAGS.d, noise=FLAGS.noise,
                                       seed=FLAGS.seed + 10_000)
    g_star = kerntk.datasets.rank_egop(FLAGS.task, FLAGS.d)
    init = kerntk.models.fcn(FLAGS.depth, width, input_shape=(x.shape[1],),
                             use_bias=FLAGS.use_bias, b_std=FLAGS.b_std, seed=FLAGS.seed)
    eta_crit0 = kerntk.spectral.critical_lr(init, x)
    test_init = float(np.mean((keras.ops.convert_to_numpy(init(xt)) - yt) ** 2))
    modes = ["fixed", "adaptive"] if FLAGS.mode == "both" else [FLAGS.mode]
    results, curves = {}, {}
    for mode in modes:
        results[mode], curves[mode], _ = run(mode, x, y, xt, yt, g_star, eta_crit0, steps,
                                             raise_at, raise_to, width)
        results[mode]["test_loss_init"] = test_init
    summary = {"task": FLAGS.task, "n": n, "n_test": n_test, "d": FLAGS.d, "depth": FLAGS.depth,
               "width": width, "steps": steps, "use_bias": FLAGS.use_bias,
               "b_std": FLAGS.b_std if FLAGS.use_bias else 0.0, "eta_crit_init": eta_crit0,
               "lr_over_eta_crit_init": FLAGS.lr_factor, "runs": results}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "multiple_catapults.json"), "w") as f:
        json.dump(_finite(summary), f, indent=2)
    _plot(curves, os.path.join(FLAGS.out_dir, "multiple_catapults.png"))
    print(f"GD on {FLAGS.task} (n={n}, d={FLAGS.d}), {FLAGS.depth}-layer fcn width {width}, "
          f"bias {FLAGS.use_bias}; eta_crit(0) = {eta_crit0:.3g}, lr(0) = "
          f"{FLAGS.lr_factor:.2f} x eta_crit(0):")
    for mode, r in results.items():
        print(f"  {mode:8s}: raises at {r['raise_steps']} to "
              f"{[round(v, 3) for v in r['raised_to']]}; distinct catapults {r['catapults']} "
              f"(events {r['catapult_events']}), guard restores {r['guard_restores']}")
        print(f"            test loss {test_init:.3g} -> after each catapult "
              f"{[round(v, 4) for v in r['test_loss_after_each_catapult']]}")
        print(f"            AGOP alignment {r['agop_alignment_init']:.3f} -> after each catapult "
              f"{[round(v, 3) for v in r['agop_alignment_after_each_catapult']]}")
    print(f"  figure and numbers in {FLAGS.out_dir}/multiple_catapults.{{png,json}}")


def _plot(curves, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    for mode, c in curves.items():
        ax[0].semilogy(c["step"], c["loss"], label=mode)
        line, = ax[1].semilogy(c["step"], c["eta"], label=f"$\\eta$ ({mode})")
        ax[1].semilogy(c["step"], c["eta_crit"], "--", color=line.get_color(),
                       label=f"$\\eta_{{crit}}$ ({mode})")
        ax[2].plot(c["agop_step"], c["agop"], label=mode)
        ax[3].semilogy(c["val_step"], c["val"], label=mode)
    ax[0].set(xlabel="step", title="training loss")
    ax[1].set(xlabel="step", title="learning rate vs critical")
    ax[2].set(xlabel="step", title="AGOP alignment cos(G, G*)")
    ax[3].set(xlabel="step", title="test loss")
    for a in ax:
        a.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    app.run(main)
