"""Callback overhead benchmark (issue 4, "Performance"): fit time per epoch with and without
kerntk's callbacks, measured side by side in one run.

Reference setting: ``kerntk.models.fcn(5, 1024, input_shape=(3072,))`` (d=3072), 1,024 random
samples, batch 128 (8 steps/epoch), plain SGD, MSE. Configurations:

  plain     ``model.fit`` with no callback (Keras default ``jit_compile="auto"``)
  tracker   NTKSpectrumTracker(probe of 128 points, with labels, every_n_steps=10) — target <= 1.10x
  monitor   CriticalLRMonitor(every_n_steps=1), eta_crit of every batch       — target <= 1.5x
  agop      AGOPAlignmentLogger(probe of 128 points, d x d matrix reference,
            every_n_epochs=1)                                                   — target <= 1.10x

and full-batch GD at n = 2000 (thesis Table 4.1's GD row: rank-2 task, d = 100,
``fcn(2, 1024, use_bias=False)``, one step per epoch, ``--gd_epochs`` epochs, the first two
excluded):

  gd_plain    ``model.fit`` with no callback
  gd_monitor  CriticalLRMonitor(every_n_steps=1) (the matrix-free Lanczos path the cost model
              picks at this batch size)                                          — target <= 3x

Each fit uses a fresh model (same seed); the first epoch (tracing, warm-up, baseline
measurements at train begin) is excluded. Configurations are interleaved (plain, tracker,
monitor, agop, plain, ...) so the ratios see the same machine load.

Input: by default a shuffled, repeated ``tf.data`` pipeline over the 1,024 samples with
``steps_per_epoch=8``. With ``fit(x, y)`` on numpy arrays (``--input=numpy``) Keras rebuilds the
data iterator every epoch and, at random, about half of the epochs start with a ~110 ms stall
(plain fit: 0.20 or 0.31 s/epoch, measured here; GC off changes nothing, a single repeated
iterator removes it): that noise is the size of the effects measured, and a stall the callbacks
happen to overlap makes them look cheaper. The repeated pipeline measures the per-step costs.

Fit time is a sum over epochs, so the verdict uses the **mean** epoch time over all measured
epochs of all repeats (a per-epoch median would hide the tracker, which fires on 4 of every 5
epochs). The table also gives the fastest epoch of each configuration and its ratio.

    python benchmarks/callbacks.py            # 6 epochs x 5 repeats
    python benchmarks/callbacks.py --quick    # 3 epochs x 1 repeat (smoke run)
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 6, "Epochs per fit (the first is excluded).")
flags.DEFINE_integer("repeats", 5, "Fits per configuration (interleaved).")
flags.DEFINE_integer("n", 1024, "Training samples.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("probe", 128, "Probe points of the tracker and the AGOP logger.")
flags.DEFINE_integer("tracker_every", 10, "NTKSpectrumTracker every_n_steps.")
flags.DEFINE_float("lr", 0.01, "SGD learning rate.")
flags.DEFINE_list("configs", ["plain", "tracker", "monitor", "agop", "gd_plain", "gd_monitor"],
                  "Configurations to time.")
flags.DEFINE_integer("gd_n", 2000, "Examples of the full-batch GD setting.")
flags.DEFINE_integer("gd_epochs", 12, "Epochs (= GD steps) per fit of the GD setting.")
flags.DEFINE_bool("quick", False, "Short smoke run: 3 epochs, 1 repeat.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "jit_compile of model.compile (Keras' auto is off on CPU, on on GPU).")
flags.DEFINE_enum("input", "dataset", ["dataset", "numpy"],
                  "dataset: a shuffled, repeated tf.data pipeline with steps_per_epoch (one "
                  "iterator per fit); numpy: fit(x, y) (Keras rebuilds the iterator each epoch).")

D = 3072
TARGETS = {"tracker": 1.10, "monitor": 1.5, "agop": 1.10, "gd_monitor": 3.0}
GD_D = 100


class _EpochClock:
    """Wall time at every epoch end (placed last, so it includes the other callbacks' work)."""

    def __init__(self):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(cb):
                super().__init__()
                cb.ends = []

            def on_train_begin(cb, logs=None):
                cb.ends = []

            def on_epoch_end(cb, epoch, logs=None):
                cb.ends.append(time.perf_counter())

        self.callback = Clock()

    def epochs(self) -> list:
        """Durations of the epochs after the first."""
        ends = self.callback.ends
        return [b - a for a, b in zip(ends, ends[1:])]


def _callbacks(config, x, y, probe_x, probe_y, reference):
    from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, NTKSpectrumTracker

    if config == "plain":
        return []
    if config == "tracker":
        return [NTKSpectrumTracker(probe_x, probe_y, every_n_steps=FLAGS.tracker_every,
                                   every_n_epochs=None)]
    if config == "monitor":
        return [CriticalLRMonitor(every_n_steps=1)]
    if config == "agop":
        return [AGOPAlignmentLogger(probe_x, reference, every_n_epochs=1)]
    raise ValueError(f"Unknown configuration {config!r}.")


def _fit_gd(config, x, y) -> dict:
    """Full-batch GD at n = gd_n: one step per epoch; the first two epochs (tracing) excluded."""
    import keras

    import kerntk
    from kerntk.callbacks import CriticalLRMonitor

    keras.utils.clear_session()
    model = kerntk.models.fcn(2, 1024, use_bias=False, input_shape=(GD_D,), seed=0)
    lr = 0.5 * kerntk.spectral.critical_lr(model, x[:256])  # a stable rate for the fcn
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    clock = _EpochClock()
    monitor = CriticalLRMonitor(every_n_steps=1) if config == "gd_monitor" else None
    model.fit(x, y, batch_size=len(x), epochs=FLAGS.gd_epochs, shuffle=False, verbose=0,
              callbacks=([monitor] if monitor else []) + [clock.callback])
    free = monitor.history.get("matrix_free", []) if monitor else []
    return {"epochs": clock.epochs()[1:], "jit": bool(model.jit_compile),
            "matrix_free": bool(free) and all(free)}


def _steps_per_epoch() -> int:
    return -(-FLAGS.n // FLAGS.batch_size)


def _fit(config, x, y, probe_x, probe_y, reference) -> dict:
    import keras

    import kerntk

    keras.utils.clear_session()
    model = kerntk.models.fcn(5, 1024, input_shape=(D,), seed=0)
    jit = {"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile]
    model.compile(optimizer=keras.optimizers.SGD(FLAGS.lr), loss="mse", jit_compile=jit)
    clock = _EpochClock()
    callbacks = _callbacks(config, x, y, probe_x, probe_y, reference)
    steps = _steps_per_epoch()
    if FLAGS.input == "numpy":
        model.fit(x, y, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, shuffle=True,
                  verbose=0, callbacks=callbacks + [clock.callback])
    else:
        import tensorflow as tf

        # One iterator for the whole fit: no per-epoch iterator rebuild (see the docstring).
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(FLAGS.n, seed=0).batch(
            FLAGS.batch_size).repeat()
        model.fit(data, steps_per_epoch=steps, epochs=FLAGS.epochs, verbose=0,
                  callbacks=callbacks + [clock.callback])
    return {"epochs": clock.epochs(), "jit": bool(model.jit_compile)}


def main(argv):
    del argv
    if FLAGS.quick:
        FLAGS.epochs, FLAGS.repeats = 3, 1
    if FLAGS.epochs < 2:
        raise app.UsageError("--epochs must be >= 2 (the first epoch is excluded).")
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.n, D)).astype("float32")
    y = rng.standard_normal((FLAGS.n, 1)).astype("float32")
    probe_x = rng.standard_normal((FLAGS.probe, D)).astype("float32")
    probe_y = rng.standard_normal((FLAGS.probe, 1)).astype("float32")
    # A d x d matrix reference G* (a random PSD matrix of rank 64).
    u = rng.standard_normal((D, 64))
    reference = u @ u.T / 64

    import kerntk

    gx, gy = kerntk.datasets.rank_task("rank2", FLAGS.gd_n, GD_D, seed=0)
    times = {c: [] for c in FLAGS.configs}
    jit, matrix_free = {}, {}
    for r in range(FLAGS.repeats):
        for config in FLAGS.configs:
            if config.startswith("gd_"):
                result = _fit_gd(config, gx, gy)
                matrix_free[config] = result["matrix_free"]
            else:
                result = _fit(config, x, y, probe_x, probe_y, reference)
            times[config].extend(result["epochs"])
            jit[config] = result["jit"]
            print(f"repeat {r}: {config:8s} "
                  f"{statistics.mean(result['epochs']):.3f} s/epoch (mean)", flush=True)

    steps = _steps_per_epoch()
    base = statistics.mean(times["plain"]) if "plain" in times else None
    base_min = min(times["plain"]) if "plain" in times else None
    print(f"\nfcn(5, 1024), d={D}, n={FLAGS.n}, batch {FLAGS.batch_size} ({steps} steps/epoch), "
          f"SGD, {FLAGS.input} input; {FLAGS.epochs} epochs (first excluded) x "
          f"{FLAGS.repeats} repeats; "
          f"TF {tf.__version__}, {os.cpu_count()} CPU cores\n")
    print("| configuration | jit_compile | s/epoch: mean | median | fastest | ratio of means | "
          "ratio of fastest | target (on the mean) |")
    print("|---|---|---|---|---|---|---|---|")
    labels = {"plain": "plain fit",
              "tracker": f"+ NTKSpectrumTracker (every {FLAGS.tracker_every} steps, "
                         f"{FLAGS.probe}-pt probe)",
              "monitor": "+ CriticalLRMonitor (every step, batch eta_crit)",
              "agop": f"+ AGOPAlignmentLogger (per epoch, {FLAGS.probe}-pt probe, d x d ref)"}
    labels.update({"gd_plain": f"GD n={FLAGS.gd_n}: plain fit (1 step/epoch)",
                   "gd_monitor": f"GD n={FLAGS.gd_n}: + CriticalLRMonitor (every step, "
                                 f"matrix-free: {matrix_free.get('gd_monitor')})"})
    gd_base = statistics.mean(times["gd_plain"]) if "gd_plain" in times else None
    gd_min = min(times["gd_plain"]) if "gd_plain" in times else None
    for config in FLAGS.configs:
        t = times[config]
        mean = statistics.mean(t)
        b, b_min = (gd_base, gd_min) if config.startswith("gd_") else (base, base_min)
        ratio = f"{mean / b:.2f}x" if b else "-"
        ratio_min = f"{min(t) / b_min:.2f}x" if b_min else "-"
        target = TARGETS.get(config)
        verdict = "-" if target is None or b is None else (
            f"<= {target:.2f}x " + ("ok" if mean / b <= target else "MISSED"))
        print(f"| {labels[config]} | {jit[config]} | {mean:.3f} | {statistics.median(t):.3f} | "
              f"{min(t):.3f} | {ratio} | {ratio_min} | {verdict} |")

if __name__ == "__main__":
    app.run(main)
