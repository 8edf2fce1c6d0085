"""Multiple catapults in GD by raising the learning rate (thesis Fig. 4.4, Fig. 4.8, Fig. C.17).

After a catapult ``||K||_2`` has dropped, so ``eta_crit ~ n/||K||_2`` has grown past the learning
rate; raising the rate above the new ``eta_crit`` triggers another catapult (thesis §4.3). §4.4
claims that each catapult lowers the test loss and raises the alignment ``cos(G, G*)`` between
the network's AGOP ``G`` and the target's EGOP ``G*`` (Eq. 4.5-4.6), and (Remark 4.4.2, Fig.
C.17) that on a full-rank target the catapults bring no such gain.

``--figure`` picks the thesis's setting (App. C.6), each with its own schedule (a
``keras.callbacks.LearningRateScheduler``-like callback that sets the rate at the thesis's GD
iterations):

* ``fig44``: 128 CIFAR-2 points (classes 7/9), 5-layer FCN of width 1024; lr 6 raised to
  [10, 15] at iterations [15, 60] with the thesis's eta_crit 3.6, i.e. 1.67 -> [2.78, 4.17] x
  eta_crit: applied as those multiples of *our* eta_crit (ours is not 3.6, see
  ``catapult_gd.py``). Test loss on the CIFAR-2 test points; no EGOP is known for CIFAR.
* ``fig48``: the rank-2 task (``y = x1 x2 + N(0, 0.1^2)``, ``x ~ N(0, I_100)``), 2-layer FCN of
  width 1024, 2000 train / 5000 test points; the rate raised to [8, 16, 30, 50, 75, 80] at
  iterations [50, 150, 220, 280, 350, 400] (absolute: our eta_crit on this task is close to the
  thesis's scale, ~6), with the thesis's post-catapult decay ("we decay the learning rate if
  necessary after the catapult to avoid extra catapults"): once a raise's catapult has settled
  (``eta_crit > eta``), a later ``eta > eta_crit(t)`` (re-sharpening) sets ``eta = --decay x
  eta_crit(t)``.
* ``fullrank``: the same with the full-rank target ``||x|| / sqrt(d)`` (Fig. C.17).

Measured by kerntk callbacks: ``CriticalLRMonitor`` (eta_crit of the full batch every step,
catapult events, spikes of the training loss), ``AGOPAlignmentLogger`` (alignment on ``--probe``
test points) and Keras' validation loss on the test set. "After catapult k" is the value just
before raise k+1 (and at the end); "before" is the value just before raise 1.

Biases (SPEC §5): with ``b ~ N(0, 1)`` the constant mode dominates the NTK; the default is no
bias, stated as a deviation.

Writes ``<out_dir>/multiple_catapults_<figure>.json`` and ``.png``.

    python examples/multiple_catapults.py --figure fig48
    python examples/multiple_catapults.py --figure fullrank
    python examples/multiple_catapults.py --figure fig44
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402  (first: quiet TensorFlow start-up)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from _cifar2 import load_cifar2  # noqa: E402
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, DivergenceGuard  # noqa: E402

_common.define_flags(width=1024, use_bias=False, b_std=1.0, data_dir=True)
flags.DEFINE_enum("figure", "fig48", ["fig44", "fig48", "fullrank"],
                  "The thesis's setting: Fig. 4.4 (CIFAR-2, 5-layer FCN), Fig. 4.8a (rank-2, "
                  "2-layer FCN) or Fig. C.17 (full-rank target, 2-layer FCN).")
flags.DEFINE_integer("steps", None, "GD steps (default: fig44 100, fig48/fullrank 450).")
flags.DEFINE_integer("probe", 1000, "Test points on which the AGOP is measured.")
flags.DEFINE_integer("agop_every", 5, "Measure the AGOP alignment every this many steps.")
flags.DEFINE_float("decay", None, "Post-catapult decay factor (eta = decay x eta_crit(t)); "
                   "default: 0.9 for fig48/fullrank (thesis App. C.6), none for fig44; 0: off.")
flags.DEFINE_integer("monitor_every", 5, "Measure eta_crit every this many GD steps.")
FLAGS = flags.FLAGS

# Thesis App. C.6: (initial rate, raises to, at iterations); fig44 rates are in units of the
# thesis's eta_crit 3.6 (multiples), fig48 rates are absolute.
SCHEDULES = {
    "fig44": dict(lr0=6 / 3.6, to=[10 / 3.6, 15 / 3.6], at=[15, 60], relative=True),
    "fig48": dict(lr0=0.5, to=[8, 16, 30, 50, 75, 80], at=[50, 150, 220, 280, 350, 400],
                  relative=False),
}
SCHEDULES["fullrank"] = SCHEDULES["fig48"]


class ScheduleWithDecay(keras.callbacks.Callback):
    """Sets the rate to ``rates[i]`` at GD iteration ``at[i]``; with ``decay``, after a raise's
    catapult has settled (the monitor's ``eta_crit > eta``), a later ``eta > eta_crit(t)`` lowers
    the rate to ``decay x eta_crit(t)`` (thesis App. C.6). Place it after the monitor."""

    def __init__(self, at, rates, monitor, decay=None):
        super().__init__()
        self.at, self.rates, self.monitor, self.decay = list(at), list(rates), monitor, decay
        self.decays, self._settled, self._read, self._raised_at = [], True, 0, 0
        self._done = set()  # raises made (a DivergenceGuard restore does not repeat them)

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step in self.at and step not in self._done:
            self._done.add(step)
            self.model.optimizer.learning_rate = self.rates[self.at.index(step)]
            self._settled, self._raised_at = False, step

    def on_train_batch_end(self, batch, logs=None):
        h = self.monitor.history
        steps = h.get("step", [])
        new, self._read = range(self._read, len(steps)), len(steps)
        if not self.decay:
            return
        for i in new:  # each measurement once, only those taken since the latest raise
            if steps[i] < self._raised_at:
                continue
            eta, eta_crit = h["eta"][i], h["eta_crit"][i]
            if not self._settled:
                self._settled = eta_crit > eta
            elif eta > eta_crit:
                new_lr = self.decay * eta_crit
                self.model.optimizer.learning_rate = new_lr
                self.decays.append({"step": int(steps[i]), "from": eta, "to": new_lr})


def _before(at_steps, steps_seq, values):
    """``values`` (measured at ``steps_seq``) at the last measurement at or before each step of
    ``at_steps``, then the last value."""
    steps_seq, values = np.asarray(steps_seq), np.asarray(values, float)
    out = []
    for s in list(at_steps):
        idx = np.nonzero(steps_seq <= s)[0]
        out.append(float(values[idx[-1]]) if idx.size else float("nan"))
    out.append(float(values[-1]))
    return out


def load_task(figure, n, n_test, seed):
    if figure == "fig44":
        x, y = load_cifar2(n, seed, "fcn", 1, FLAGS.data_dir)
        xt, yt = kerntk.datasets.load("cifar10", "test", classes=(7, 9), n=n_test, flatten=True,
                                      normalize="standardize", labels="pm1",
                                      data_dir=FLAGS.data_dir)
        return x, y, xt.astype(np.float32), yt.reshape(-1, 1).astype(np.float32), None
    task = "rank2" if figure == "fig48" else "fullrank"
    x, y = kerntk.datasets.rank_task(task, n, 100, noise=0.1, seed=seed)
    xt, yt = kerntk.datasets.rank_task(task, n_test, 100, noise=0.1, seed=seed + 10_000)
    return x, y, xt, yt, kerntk.datasets.rank_egop(task, 100)


def main(argv):
    del argv
    fig = FLAGS.figure
    sch = SCHEDULES[fig]
    depth = 5 if fig == "fig44" else 2
    n, n_test = (128, None) if fig == "fig44" else (2000, 5000)  # fig44: all CIFAR-2 test points
    steps = FLAGS.steps or (100 if fig == "fig44" else 450)
    width, at, probe = FLAGS.width, list(sch["at"]), FLAGS.probe
    decay = FLAGS.decay if FLAGS.decay is not None else (None if fig == "fig44" else 0.9)
    if FLAGS.smoke:
        n, n_test, width, probe = (32, 64, 256, 64) if fig == "fig44" else (64, 256, 512, 128)
        steps = 14 if fig == "fig44" else 20
        at = [5, 10]
    keras.utils.set_random_seed(FLAGS.seed)
    x, y, xt, yt, g_star = load_task(fig, n, n_test, FLAGS.seed)
    n_test = len(xt)
    model = kerntk.models.fcn(depth, width, input_shape=x.shape[1:], use_bias=FLAGS.use_bias,
                              b_std=FLAGS.b_std, seed=FLAGS.seed)
    eta_crit0 = kerntk.spectral.critical_lr(model, x)
    unit = eta_crit0 if sch["relative"] else 1.0
    lr0 = sch["lr0"] * eta_crit0 if fig != "fig44" else sch["lr0"] * unit
    rates = [r * unit for r in sch["to"]][:len(at)]
    if FLAGS.smoke and fig != "fig44":  # the thesis's absolute rates, scaled to the smoke net
        rates = [r * eta_crit0 / 6.0 for r in rates]
    model.compile(optimizer=keras.optimizers.SGD(lr0), loss="mse")
    monitor = CriticalLRMonitor(every_n_steps=FLAGS.monitor_every)
    guard = DivergenceGuard(factor=1e3, patience=10)
    schedule = ScheduleWithDecay(at, rates, monitor, decay)
    callbacks = [monitor, schedule, guard]
    agop = None
    if g_star is not None:
        agop = AGOPAlignmentLogger(xt[:probe], g_star, every_n_steps=FLAGS.agop_every,
                                   every_n_epochs=None)
        callbacks.append(agop)
    test_init = float(np.mean((keras.ops.convert_to_numpy(model(xt)) - yt) ** 2))
    hist = model.fit(x, y, batch_size=n, epochs=steps, shuffle=False, verbose=0,
                     validation_data=(xt, yt), callbacks=callbacks)
    val = [test_init] + list(hist.history["val_loss"])  # entry s: after s GD steps
    val_steps = list(range(len(val)))
    m = monitor.history
    mstep, eta, eta_crit = (np.asarray(m[k], float) for k in ("step", "eta", "eta_crit"))
    # Keras' loss of epoch t is the full-batch loss at the weights after t steps.
    train_loss = np.asarray(hist.history["loss"], float)
    spike_steps = np.nonzero(np.diff(train_loss) > 0)[0] + 1  # steps whose update raised it
    lam1 = n / eta_crit
    # Each raise: a catapult when eta > eta_crit right after it and the loss spikes within
    # the window.
    per_raise = []
    for s, rate, nxt in zip(at, rates, at[1:] + [len(train_loss)]):
        first = np.nonzero(mstep >= s)[0][:1]  # the first measurement at or after the raise
        win = np.zeros(len(mstep), bool)
        win[first] = True
        per_raise.append(dict(step=s, to=rate, eta_crit_at_raise=float(eta_crit[win][0])
                              if win.any() else float("nan"),
                              event=bool(np.any(eta[win] > eta_crit[win])),
                              spike=bool(np.any((spike_steps > s) & (spike_steps <= nxt)))))
    caught = [r["event"] and r["spike"] for r in per_raise]
    test_after = _before(at, val_steps, val)
    lam_after = _before([s - 1 for s in at], mstep, lam1)
    eta_after = _before([s - 1 for s in at], mstep, eta)
    crit_after = _before([s - 1 for s in at], mstep, eta_crit)
    res = {
        "figure": fig, "n": n, "n_test": n_test, "depth": depth, "width": width, "steps": steps,
        "eta_crit_init": eta_crit0, "lr_init": lr0, "raise_at": at, "raise_to": rates,
        "decays": schedule.decays, "guard_restores": len(guard.restores),
        "raises": per_raise, "catapult_events": int(monitor.counts["catapult_events"]),
        "loss_spikes": int(len(spike_steps)),
        "train_loss_final": float(train_loss[-1]),
        "test_loss_before_and_after_each_catapult": test_after,
        "lambda_1_before_and_after_each_catapult": lam_after,
        "eta_crit_before_and_after_each_catapult": crit_after,
        "eta_before_and_after_each_catapult": eta_after,
        "curves": {"step": mstep, "train_loss": train_loss, "eta": eta, "eta_crit": eta_crit,
                   "test_loss": val},
    }
    if agop is not None:
        agop.history["step"].append(len(val) - 1)  # after the last step
        agop.history["agop_alignment"].append(agop.measure()["agop_alignment"])
        res["agop_before_and_after_each_catapult"] = _before(
            at, agop.history["step"], agop.history["agop_alignment"])
        res["curves"].update(agop_step=agop.history["step"],
                             agop=agop.history["agop_alignment"])
    claims = _claims(fig, res, caught)
    setting = _setting(fig, res, decay)
    name = f"multiple_catapults_{fig}"
    _common.write_results(name, setting=setting, config=_common.flag_values(), claims=claims,
                          results=res)
    _plot(res, name)
    print(f"{fig}: GD n={n}, {depth}-layer fcn width {width}, bias {FLAGS.use_bias}; "
          f"eta_crit(0) = {eta_crit0:.3g}, lr(0) = {lr0:.3g}; raises at {at} to "
          f"{[round(r, 3) for r in rates]}; decays {len(schedule.decays)}")
    print(f"  test loss before/after each catapult {np.round(test_after, 4).tolist()}")
    if agop is not None:
        print(f"  AGOP alignment before/after each catapult "
              f"{np.round(res['agop_before_and_after_each_catapult'], 4).tolist()}")
    _common.print_claims(claims)


def _claims(fig, res, caught):
    test = res["test_loss_before_and_after_each_catapult"]
    k = len(res["raise_at"])
    each = f"at each of the {k} raises"
    claims = [_common.claim(
        f"{fig}/each_raise_triggers_a_catapult",
        paper="each raise of the learning rate above eta_crit triggers another catapult",
        measured=f"{sum(caught)} of {k} raises: eta > eta_crit at the raise and a loss rise "
                 f"before the next raise",
        holds=bool(all(caught)),
        rule=f"{each}, eta exceeds the monitor's eta_crit at its first measurement from the "
             f"raise on, and the training loss rises at some step between the raise and the "
             f"next raise (or the end)")]
    if fig == "fig44":
        lam, crit, eta = (res[f"{q}_before_and_after_each_catapult"]
                          for q in ("lambda_1", "eta_crit", "eta"))
        claims += [
            _common.claim(
                "fig44/eta_crit_surpasses_eta_after_each_catapult",
                paper="when the loss decreases after a catapult, eta_crit surpasses the current "
                      "eta",
                measured=f"eta_crit {np.round(crit, 3).tolist()} vs eta "
                         f"{np.round(eta, 3).tolist()} after each catapult",
                holds=bool(all(c > e for c, e in zip(crit, eta))),
                rule="just before each raise (and at the end) eta_crit > eta, after every "
                     "catapult (the initial rate's and each raise's)"),
            _common.claim(
                "fig44/multiple_catapults_lower_norm_K",
                paper="multiple catapults reach a smaller ||K||_2 than a single catapult",
                measured=f"lambda_1 {np.round(lam, 4).tolist()} (after the catapult at the "
                         f"initial rate, after each raise's catapult)",
                holds=bool(lam[-1] < lam[0]),
                rule="lambda_1 = n / eta_crit at the end is below lambda_1 after the single "
                     "catapult at the initial rate (just before the first raise)"),
            _common.claim(
                "fig44/test_loss_decreases_with_each_catapult",
                paper="multiple catapults lead to better generalization than a single one "
                      "(§4.3-4.4)",
                measured=f"test loss {np.round(test, 4).tolist()} (after the catapult at the "
                         f"initial rate, after each raise's catapult)",
                holds=bool(test[-1] < test[0]),
                rule="test loss at the end below the test loss after the single catapult at "
                     "the initial rate (just before the first raise)"),
        ]
        return claims
    agop = res["agop_before_and_after_each_catapult"]
    if fig == "fig48":
        claims += [
            _common.claim(
                "fig4.8a/test_loss_decreases_with_each_catapult",
                paper="the test loss decreases as the number of catapults increases",
                measured=f"{np.round(test, 4).tolist()} (before the first raise, after each "
                         f"catapult)",
                holds=_common.monotone(test, increasing=False),
                rule="the test loss after each catapult is strictly below the value before it "
                     "(every catapult)"),
            _common.claim(
                "fig4.8a/test_loss_lower_after_all",
                paper="multiple catapults improve the test loss",
                measured=f"{test[0]:.4g} -> {test[-1]:.4g}",
                holds=bool(test[-1] < 0.9 * test[0]),
                rule="the test loss after the last catapult is below 0.9 x its value before "
                     "the first raise"),
            _common.claim(
                "fig4.8a/agop_alignment_increases_with_each_catapult",
                paper="the AGOP alignment increases as the number of catapults increases",
                measured=f"{np.round(agop, 4).tolist()} (before the first raise, after each "
                         f"catapult)",
                holds=_common.monotone(agop),
                rule="the AGOP alignment after each catapult is strictly above the value before "
                     "it (every catapult)"),
            _common.claim(
                "fig4.8a/agop_alignment_higher_after_all",
                paper="multiple catapults raise the AGOP alignment",
                measured=f"{agop[0]:.4g} -> {agop[-1]:.4g}",
                holds=bool(agop[-1] > agop[0] + 0.05),
                rule="the alignment after the last catapult exceeds its value before the first "
                     "raise by more than 0.05"),
        ]
    else:
        claims += [
            _common.claim(
                "figC.17/no_test_loss_gain",
                paper="on a full-rank target, catapults do not improve the test performance",
                measured=f"{test[0]:.4g} -> {test[-1]:.4g} "
                         f"({100 * (1 - test[-1] / test[0]):+.1f}%)",
                holds=bool(test[-1] >= 0.9 * test[0]),
                rule="the test loss after the last catapult is not below 0.9 x its value "
                     "before the first raise (the gain threshold of fig4.8a)"),
            _common.claim(
                "figC.17/no_agop_alignment_gain",
                paper="on a full-rank target, catapults do not improve the AGOP alignment",
                measured=f"{agop[0]:.4g} -> {agop[-1]:.4g}",
                holds=bool(agop[-1] <= agop[0] + 0.05),
                rule="the alignment after the last catapult exceeds its value before the first "
                     "raise by at most 0.05 (the gain threshold of fig4.8a)"),
        ]
    return claims


def _setting(fig, res, decay):
    dev = []
    if not FLAGS.use_bias:
        dev.append("no biases (SPEC §5: with the thesis's b ~ N(0, 1) the constant mode "
                   "dominates the NTK and eta_crit collapses)")
    rates = ", ".join(f"{r:.3g}" for r in res["raise_to"])
    if fig == "fig44":
        paper = ("thesis Fig. 4.4 / C.6: 128 random CIFAR-2 points, 5-layer NTK FCN width 1024 "
                 "(biases N(0, 1)), GD at lr 6 raised to [10, 15] at iterations [15, 60] "
                 "(eta_crit 3.6)")
        dev.append(f"rates as the thesis's multiples (1.67, 2.78, 4.17) of our eta_crit "
                   f"{res['eta_crit_init']:.3g} instead of 6, 10, 15 (our eta_crit is not the "
                   f"thesis's 3.6; at 6 < eta_crit no catapult would happen)")
        dev.append(f"test loss measured on the {res['n_test']} CIFAR-2 test points of the "
                   f"data directory's test subset (the thesis shows no test loss for Fig. 4.4)")
        ours = (f"{res['n']} random (seed {FLAGS.seed}) CIFAR-2 points, 5-layer FCN width "
                f"{res['width']}, GD at {res['lr_init']:.3g} raised to [{rates}] at "
                f"{res['raise_at']}, {res['steps']} steps")
    else:
        target = "rank-2 x1 x2" if fig == "fig48" else "full-rank ||x||/sqrt(d)"
        paper = (f"thesis Fig. {'4.8a' if fig == 'fig48' else 'C.17'} / C.6: {target} target + "
                 "N(0, 0.1^2), x ~ N(0, I_100), 2000 train / 5000 test, 2-layer NTK FCN width "
                 "1024 (biases N(0, 1)), GD with the rate raised to [8, 16, 30, 50, 75, 80] at "
                 "iterations [50, 150, 220, 280, 350, 400], decayed after a catapult if "
                 "necessary")
        ours = (f"{target}, n {res['n']}, {res['n_test']} test, 2-layer FCN width "
                f"{res['width']}, GD at {res['lr_init']:.3g} raised to [{rates}] at "
                f"{res['raise_at']}, post-catapult decay {decay}, {res['steps']} steps; AGOP on "
                f"{min(FLAGS.probe, res['n_test'])} test points every {FLAGS.agop_every} steps")
        dev.append(f"initial rate 0.5 x eta_crit = {res['lr_init']:.3g} (the thesis does not "
                   f"state it; 0.5 x eta_crit is its choice for the same task in Fig. 4.9)")
        dev.append(f"decay rule ours: once a raise's catapult has settled, eta > eta_crit(t) "
                   f"sets eta = {decay} x eta_crit(t) (the thesis: 'if necessary')")
        if fig == "fullrank":
            dev.append("the thesis gives no schedule for Fig. C.17; the rank-2 schedule is used")
    return {"paper": paper, "ours": ours, "deviations": dev}


def _plot(res, name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["curves"]
    panels = 4 if "agop" in c else 3
    fig, ax = plt.subplots(1, panels, figsize=(4 * panels, 3.6))
    ax[0].semilogy(range(len(c["train_loss"])), c["train_loss"])
    ax[0].set(xlabel="step", title="training loss")
    ax[1].semilogy(c["step"], c["eta"], label="$\\eta$")
    ax[1].semilogy(c["step"], c["eta_crit"], "--", label="$\\eta_{crit}$")
    ax[1].set(xlabel="step", title="learning rate vs critical")
    ax[1].legend(fontsize="small")
    ax[2].semilogy(range(len(c["test_loss"])), c["test_loss"])
    ax[2].set(xlabel="step", title="test loss")
    if "agop" in c:
        ax[3].plot(c["agop_step"], c["agop"])
        ax[3].set(xlabel="step", title="AGOP alignment cos(G, G*)")
    for a in ax:
        for s in res["raise_at"]:
            a.axvline(s, color="grey", lw=0.5, ls=":")
    _common.save_figure(fig, name)


if __name__ == "__main__":
    app.run(main)
