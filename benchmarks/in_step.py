"""lambda_max of the batch NTK inside the compiled training step (issue 11, "Too slow at full
batch"): dense kernel + ``eigvalsh`` vs the matrix-free product + warm-started Lanczos.

Rows:
  gd2000   full-batch GD on the thesis rank-2 task: ``fcn(2, 1024, use_bias=False,
           input_shape=(100,))``, n = 2000, d = 100, one step = the whole batch
  fcn128   the reference fcn of benchmarks/callbacks.py: ``fcn(5, 1024, input_shape=(3072,))``,
           batch 128 of random data

Configurations (the train step ``model.fit`` runs, SGD, MSE, on the whole batch):
  plain      Keras' own train step
  forward    + one extra forward pass of the batch after the update (the loss the critical-LR
             monitor also records): the floor of any monitored step
  dense      + ``ForwardNTK`` recording of Keras' step, ``kernel()`` (the n c x n c NTK) and
             ``tf.linalg.eigvalsh`` (what ``CriticalLRMonitor`` does today), then the forward
  lanczosK   + ``ForwardNTK.operator()`` and ``top_eigenvalue(..., steps=K)`` warm-started from the
             previous step's Ritz vector (a non-trainable ``tf.Variable``), then the forward
             (lanczos1: the Rayleigh quotient of the warm start and a power step for the next)
  lanczosKq  the same Krylov space with the last product replaced by the operator's
             ``quadratic_form`` (K - 1 products and one VJP)

Each configuration has its own model (same seed) compiled once; its train step (Keras' own
``train_step``, or the monitored one standing in for it, as ``model.fit`` would call it) is
compiled with ``tf.function`` and called on the batch tensors directly, ``--steps`` steps per
timing, configurations interleaved (plain, forward, dense, ..., plain, ...) so that the
ratios see the same machine load. (Timed through ``model.fit`` over a repeated ``tf.data``
pipeline instead, the steps longer than ~30 ms came out quantized at 31, 62, 125, 254 ms on
this 2-core machine, in a pattern the same steps called directly do not show: not the steps'
cost.) Reported: median and fastest time per step over the repeats
and their ratios to ``plain`` (on a shared machine the fastest is the least disturbed); for the
Lanczos rows also the relative error of a warm-started ``lambda_max`` at the final weights
against ``eigvalsh`` of the same kernel (one extra, untimed evaluation).

    python benchmarks/in_step.py            # both rows, 7 repeats of 5 steps
    python benchmarks/in_step.py --quick    # 2 repeats of 2 steps (smoke run)
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["gd2000", "fcn128"], "Rows to run (see the module docstring).")
flags.DEFINE_list("configs", ["plain", "forward", "dense", "lanczos1", "lanczos2q", "lanczos2",
                               "lanczos4", "lanczos8"], "Configurations to time.")
flags.DEFINE_integer("repeats", 7, "Timed fits per configuration (interleaved).")
flags.DEFINE_integer("steps", 5, "Training steps per timed fit.")
flags.DEFINE_float("lr", 0.05, "SGD learning rate.")
flags.DEFINE_bool("quick", False, "Smoke run: 2 repeats of 2 steps.")

ROWS = {
    # name: (depth, width, d, n, use_bias, rank-2 task?)
    "gd2000": (2, 1024, 100, 2000, False, True),
    "fcn128": (5, 1024, 3072, 128, True, False),
}


def _data(row):
    import numpy as np

    import kerntk

    depth, width, d, n, use_bias, rank2 = ROWS[row]
    if rank2:
        return kerntk.datasets.rank_task("rank2", n, d, seed=0)
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, d)).astype("float32"),
            rng.standard_normal((n, 1)).astype("float32"))


def _lanczos(op, v, config: str):
    """``top_eigenvalue`` of a ``lanczosK[q]`` configuration."""
    from kerntk.ntk.in_step import top_eigenvalue

    quadratic = config.endswith("q")
    steps = int(config[len("lanczos"):len(config) - quadratic])
    return top_eigenvalue(op, v, steps, quadratic_form=op.quadratic_form if quadratic else None)


def _model(row, config, probe: dict):
    """A compiled model whose train step is that of ``config``; ``probe`` receives the tensors
    the step leaves behind (the NTK's lambda_max, the warm-start variable)."""
    import keras
    import tensorflow as tf

    import kerntk
    from kerntk.ntk.in_step import ForwardNTK

    depth, width, d, n, use_bias, _ = ROWS[row]
    model = kerntk.models.fcn(depth, width, use_bias=use_bias, input_shape=(d,), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(FLAGS.lr), loss="mse")
    if config == "plain":
        return model
    keras_step = model.train_step
    c = 1
    lam = tf.Variable(0.0, dtype=tf.float64, trainable=False)
    v = tf.Variable(tf.zeros((n, c), tf.float64), trainable=False)
    loss_after = tf.Variable(0.0, dtype=tf.float32, trainable=False)
    probe.update(lam=lam, v=v)

    def step(data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        if config == "forward":
            logs = keras_step(data)
        else:
            fnt = ForwardNTK(model, outputs="full")
            with fnt.recording():
                logs = keras_step(data)
            if config == "dense":
                K, _ = fnt.kernel()
                lam.assign(tf.linalg.eigvalsh(K)[-1])
            else:
                top, vec = _lanczos(fnt.operator(), v, config)
                lam.assign(top)
                v.assign(vec)
        loss_after.assign(tf.reduce_mean(tf.square(model(x) - y)))
        return logs

    model.train_step = step
    return model


def _reference_error(model, x, probe) -> float:
    """Relative error of the warm-started Lanczos at the current weights (from the Ritz vector
    the last step stored: what the next step would measure) against ``eigvalsh`` of the same
    batch NTK."""
    import numpy as np
    import tensorflow as tf

    from kerntk.ntk.in_step import ForwardNTK

    @tf.function(autograph=False)
    def both(x):
        fnt = ForwardNTK(model, outputs="full")
        with fnt.recording():
            model(x, training=True)
        K, _ = fnt.kernel()
        top, _ = _lanczos(fnt.operator(), probe["v"], probe["config"])
        return tf.linalg.eigvalsh(K)[-1], top

    exact, top = (np.float64(t) for t in both(tf.constant(x)))
    return float(abs(top - exact) / exact)


def _lanczos_label(cfg: str) -> str:
    if cfg.endswith("q"):
        m = int(cfg[len("lanczos"):-1])
        return (f"+ ForwardNTK operator() + Lanczos steps={m}, last by quadratic_form "
                f"({m - 1} products + 1 VJP, warm) (+ forward)")
    return f"+ ForwardNTK operator() + Lanczos steps={cfg[len('lanczos'):]} (warm) (+ forward)"


def main(argv):
    del argv
    if FLAGS.quick:
        FLAGS.repeats, FLAGS.steps = 2, 2
    import keras
    import tensorflow as tf

    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
          f"{FLAGS.repeats} interleaved timings of {FLAGS.steps} steps per configuration\n")
    results = {}
    for row in FLAGS.rows:
        depth, width, d, n, use_bias, _ = ROWS[row]
        x, y = _data(row)
        xt, yt = tf.constant(x), tf.constant(y)
        models, probes, steps = {}, {}, {}
        for config in FLAGS.configs:
            keras.utils.set_random_seed(0)
            probes[config] = {"config": config}
            models[config] = model = _model(row, config, probes[config])
            # The step fit runs (Keras' train_step, or the monitored one), compiled as fit
            # compiles it; called on the batch directly (see the module docstring).
            steps[config] = tf.function(lambda xb, yb, m=model: m.train_step((xb, yb)),
                                        autograph=False)
            for _ in range(2):                                   # trace + warm up
                steps[config](xt, yt)["loss"].numpy()
        times = {config: [] for config in FLAGS.configs}
        for r in range(FLAGS.repeats):
            for config in FLAGS.configs:
                t0 = time.perf_counter()
                for _ in range(FLAGS.steps):
                    logs = steps[config](xt, yt)
                logs["loss"].numpy()
                times[config].append((time.perf_counter() - t0) / FLAGS.steps)
            print(f"{row} repeat {r}: " + ", ".join(
                f"{cfg} {times[cfg][-1] * 1e3:.1f}" for cfg in FLAGS.configs) + " ms/step",
                flush=True)
        errors = {cfg: _reference_error(models[cfg], x, probes[cfg])
                  for cfg in FLAGS.configs if cfg.startswith("lanczos")}
        results[row] = (times, errors)

    labels = {"plain": "plain GD step (Keras)", "forward": "+ loss forward after the update",
              "dense": "+ ForwardNTK kernel() + eigvalsh (+ forward)"}
    for row, (times, errors) in results.items():
        depth, width, d, n, use_bias, _ = ROWS[row]
        print(f"\n{row}: fcn({depth}, {width}, use_bias={use_bias}), d={d}, batch {n}\n")
        print("| configuration | ms/step: median | fastest | ratio to plain: median | fastest "
              "| lambda_max rel. error |")
        print("|---|---|---|---|---|---|")
        med = {cfg: statistics.median(t) for cfg, t in times.items()}
        fast = {cfg: min(t) for cfg, t in times.items()}
        for cfg in times:
            label = labels.get(cfg) or _lanczos_label(cfg)
            ratio = (f"{med[cfg] / med['plain']:.2f}x | {fast[cfg] / fast['plain']:.2f}x"
                     if "plain" in med else "- | -")
            err = f"{errors[cfg]:.1e}" if cfg in errors else "-"
            print(f"| {label} | {med[cfg] * 1e3:.1f} | {fast[cfg] * 1e3:.1f} | {ratio} | {err} |")

if __name__ == "__main__":
    app.run(main)
