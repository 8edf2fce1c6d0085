"""Batch-1 SGD where one training example is scaled x2: the loss spikes only on the steps that
use that example (thesis Fig. 4.5).

Thesis setting (Fig. 4.5, App. C.6): ``n = 100`` points ``x_i`` uniform on the unit sphere of
``R^100`` with ``y_i = 1``; one point ``(x_*, y_*)`` is multiplied by 2, which makes its
critical learning rate ``eta_crit(x_*)`` (``~ 1 / ||x_*||^2``) four times smaller than the
others'. A wide two-layer ReLU network with the second-layer weights fixed is trained by SGD with
batch size one and a constant rate ``eta`` between ``eta_crit(x_*)`` and the critical rates of
the other points, so SGD catapults on ``x_*`` and on no other point. The thesis: "the loss spike
only occurs when the gradient is computed based on that particular training example".

Here ``eta`` is the geometric mean of ``eta_crit(x_*)`` and the smallest ``eta_crit(x_i)`` of
the other points at initialization (both from ``kerntk.spectral.critical_lr`` on the
one-example batch); the example order of every epoch is drawn here, so each step's example is
known. :class:`kerntk.callbacks.CriticalLRMonitor` with ``spike_data`` = the training set
records, at each step, ``eta_crit(x_t)`` and whether the total training loss rose,
``L(w_{t+1}) > L(w_t)``. Training stops when the training loss is below ``--loss_threshold``.

Writes ``<out_dir>/single_example_sgd.json`` (results format of ``_common.py``) and ``.png``.

    python examples/single_example_sgd.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402,F401  (quiet TensorFlow start-up first)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import CriticalLRMonitor  # noqa: E402

flags.DEFINE_integer("n", 100, "Training points on the unit sphere (thesis: 100).")
flags.DEFINE_integer("d", 100, "Input dimension (thesis: 100).")
flags.DEFINE_float("scale", 2.0, "Factor applied to x_* and y_* (thesis: 2).")
flags.DEFINE_integer("max_epochs", 20, "Epoch cap (each epoch visits every point once).")
flags.DEFINE_float("loss_threshold", 1e-3, "Stop at the end of the epoch in which the training "
                   "loss falls below this.")
_common.define_flags(width=2048, seeds=1)
FLAGS = flags.FLAGS


def run(seed, n, d, width, max_epochs):
    """One run; its numbers and the monitor's history (with ``uses_star`` per step)."""
    keras.utils.set_random_seed(seed)
    x = kerntk.datasets.sample_sphere(n, d, seed=seed).astype(np.float32)
    y = np.ones((n, 1), np.float32)
    star = 0  # the points are i.i.d., so the first one is as good as any
    x[star] *= FLAGS.scale
    y[star] *= FLAGS.scale
    model = kerntk.models.fcn(2, width, use_bias=False, input_shape=(d,), seed=seed)
    model.layers[-1].trainable = False  # the thesis fixes the second-layer weights
    crit = np.array([kerntk.spectral.critical_lr(model, x[i:i + 1]) for i in range(n)])
    others = np.delete(crit, star)
    lr = float(np.sqrt(crit[star] * others.min()))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    # The example order of every epoch, drawn here: step t uses example order[t].
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(max_epochs)])
    losses = []

    def stop(batch, logs):
        if (batch + 1) % n == 0:  # the end of an epoch
            losses.append(float(np.mean((model(x, training=False).numpy() - y) ** 2)))
            if losses[-1] < FLAGS.loss_threshold or not np.isfinite(losses[-1]):
                model.stop_training = True

    monitor = CriticalLRMonitor(spike_data=(x, y))
    model.fit(x[order], y[order], batch_size=1, epochs=1, shuffle=False, verbose=0,
              callbacks=[monitor, keras.callbacks.LambdaCallback(on_train_batch_end=stop)])
    h = monitor.history
    steps = np.asarray(h["step"])
    uses_star = order[steps] == star
    spike = np.asarray(h["total_spike"], bool)
    event = np.asarray(h["event"], bool)
    eta_crit = np.asarray(h["eta_crit"])
    total = np.asarray(h["total_loss"])
    # Relative rise of the total loss over each step (the last step's "after" is not recorded).
    rise = np.zeros(len(total))
    rise[:-1] = (total[1:] - total[:-1]) / total[:-1]
    res = {
        "seed": seed, "lr": lr, "eta_crit_star_init": float(crit[star]),
        "eta_crit_others_init_min": float(others.min()),
        "eta_crit_others_init_median": float(np.median(others)),
        "steps": int(len(steps)), "epochs": len(losses), "train_loss_final": losses[-1],
        "converged": bool(losses[-1] < FLAGS.loss_threshold),
        "star_steps": int(uses_star.sum()),
        "total_loss_spikes": int(spike.sum()),
        "spikes_on_star_steps": int((spike & uses_star).sum()),
        "spikes_on_other_steps": int((spike & ~uses_star).sum()),
        "events": int(event.sum()), "events_on_star_steps": int((event & uses_star).sum()),
        "events_on_other_steps": int((event & ~uses_star).sum()),
        "max_rel_rise_on_star_steps": float(rise[uses_star].max(initial=0.0)),
        "max_rel_rise_on_other_steps": float(rise[~uses_star].max(initial=0.0)),
        "eta_crit_star_final": float(eta_crit[uses_star][-1]) if uses_star.any() else None,
        "eta_crit_others_min_along_run": float(eta_crit[~uses_star].min()),
    }
    h = dict(h, uses_star=uses_star.tolist())
    return res, h


def main(argv):
    del argv
    n, d, width, max_epochs, seeds = FLAGS.n, FLAGS.d, FLAGS.width, FLAGS.max_epochs, FLAGS.seeds
    if FLAGS.smoke:
        n, d, width, max_epochs, seeds = 20, 20, 256, 2, 1
    runs, first = [], None
    for seed in range(FLAGS.seed, FLAGS.seed + seeds):
        res, hist = run(seed, n, d, width, max_epochs)
        runs.append(res)
        first = hist if first is None else first
        print(f"  seed {seed}: lr {res['lr']:.4g} (eta_crit(x_*) {res['eta_crit_star_init']:.4g},"
              f" others >= {res['eta_crit_others_init_min']:.4g}); {res['steps']} steps, final "
              f"loss {res['train_loss_final']:.2g}; total-loss spikes {res['total_loss_spikes']} "
              f"({res['spikes_on_star_steps']} on x_* steps); events {res['events']} "
              f"({res['events_on_star_steps']} on x_* steps)", flush=True)
    spikes = sum(r["total_loss_spikes"] for r in runs)
    on_star = sum(r["spikes_on_star_steps"] for r in runs)
    events = sum(r["events"] for r in runs)
    ev_star = sum(r["events_on_star_steps"] for r in runs)
    per_seed = ", ".join(f"{r['spikes_on_star_steps']}/{r['total_loss_spikes']}" for r in runs)
    claims = [
        _common.claim(
            "fig4.5/spikes_only_on_scaled_example",
            paper="the loss spike only occurs when the gradient is computed based on that "
                  "particular (scaled) training example",
            measured=f"{on_star} of {spikes} total-loss spikes on steps using x_* "
                     f"(per seed: {per_seed}); largest relative rise of the loss on an x_* step "
                     f"{max(r['max_rel_rise_on_star_steps'] for r in runs):.3g}, on another "
                     f"step {max(r['max_rel_rise_on_other_steps'] for r in runs):.3g}",
            holds=bool(all(r["total_loss_spikes"] > 0 and r["spikes_on_other_steps"] == 0
                           for r in runs)),
            rule="in every seed there is at least one total-loss spike L(w_t+1) > L(w_t) "
                 "(rtol 1e-6, over the whole training set) and every one of them is on a step "
                 "whose batch is x_*"),
        _common.claim(
            "fig4.5/largest_rises_on_scaled_example",
            paper="the visible loss spikes of Fig. 4.5 are on the steps that use x_* (a weaker "
                  "reading of 'only': rises on other steps may exist but are smaller)",
            measured="largest relative rise on an x_* step vs on another step, per seed: "
                     + ", ".join(f"{r['max_rel_rise_on_star_steps']:.3g} vs "
                                 f"{r['max_rel_rise_on_other_steps']:.3g}" for r in runs),
            holds=bool(all(r["max_rel_rise_on_star_steps"] > r["max_rel_rise_on_other_steps"]
                           for r in runs)),
            rule="in every seed the largest relative rise (L(w_t+1) - L(w_t)) / L(w_t) of the "
                 "training loss over a step that uses x_* is larger than the largest over any "
                 "step that uses another example"),
        _common.claim(
            "fig4.5/events_only_on_scaled_example",
            paper="eta is above eta_crit(X_batch) for x_* only (the setting's design: eta "
                  "between eta_crit(x_*) and the other points' eta_crit), and the spikes "
                  "match these occasions exactly",
            measured=f"{ev_star} of {events} catapult events (eta > eta_crit(x_t)) on steps "
                     f"using x_*; at least one in {sum(r['events_on_star_steps'] > 0 for r in runs)}"
                     f" of {len(runs)} seeds",
            holds=bool(all(r["events_on_star_steps"] > 0 and r["events_on_other_steps"] == 0
                           for r in runs)),
            rule="in every seed at least one step on x_* has eta > eta_crit(x_*) and no step on "
                 "another example has eta > eta_crit(x_t), along the whole run"),
    ]
    setting = {
        "paper": "Thesis Fig. 4.5 (App. C.6): 100 points uniform on the unit sphere of R^100, "
                 "y = 1, one (x_*, y_*) multiplied by 2; wide 2-layer ReLU net, second layer "
                 "fixed; SGD batch 1 with eta between eta_crit(x_*) and the other points' "
                 "eta_crit",
        "ours": f"{n} points on the sphere of R^{d}, y = 1, (x_*, y_*) x {FLAGS.scale:g}; "
                f"kerntk.models.fcn(2, {width}) (NTK parameterization, no biases), second layer "
                f"frozen; SGD batch 1, eta = geometric mean of eta_crit(x_*) and the smallest "
                f"other eta_crit(x_i) at initialization; until the training loss < "
                f"{FLAGS.loss_threshold:g} or {max_epochs} epochs; {seeds} seed(s)",
        "deviations": [
            "the thesis does not state its width, eta or number of steps: width "
            f"{width}, eta and the stopping rule as above"]
            + ([f"{seeds} seeds where the thesis shows one run"] if seeds > 1 else []),
    }
    _common.write_results("single_example_sgd", setting=setting, config=_common.flag_values(),
                          claims=claims, results={"n": n, "d": d, "width": width, "runs": runs,
                                                  "first_seed": {k: first[k] for k in (
                                                      "step", "eta", "eta_crit", "total_loss",
                                                      "total_spike", "event", "uses_star")}})
    _common.save_figure(_plot(first), "single_example_sgd")
    _common.print_claims(claims)


def _plot(h):
    import matplotlib.pyplot as plt

    steps = np.asarray(h["step"])
    star = np.asarray(h["uses_star"], bool)
    spike = np.asarray(h["total_spike"], bool)
    loss = np.asarray(h["total_loss"])
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].semilogy(steps, loss, "k", lw=0.8, label="training loss $L(w_t)$")
    ax[0].semilogy(steps[star], loss[star], "o", mfc="none", color="C1", ms=6,
                   label="step on $x_*$")
    ax[0].semilogy(steps[spike], loss[spike], "r.", label="$L(w_{t+1}) > L(w_t)$")
    ax[0].set(xlabel="step", title="batch-1 SGD, $x_*$ scaled x2 (first seed)")
    ax[0].legend(fontsize="small")
    ax[1].semilogy(steps[~star], np.asarray(h["eta_crit"])[~star], ".", ms=2, color="C0",
                   label="$\\eta_{crit}(x_i)$, other points")
    ax[1].semilogy(steps[star], np.asarray(h["eta_crit"])[star], "o", color="C1", ms=4,
                   label="$\\eta_{crit}(x_*)$")
    ax[1].semilogy(steps, h["eta"], "k", lw=1, label="$\\eta$")
    ax[1].set(xlabel="step", title="learning rate vs critical, per step")
    ax[1].legend(fontsize="small")
    return fig


if __name__ == "__main__":
    app.run(main)
