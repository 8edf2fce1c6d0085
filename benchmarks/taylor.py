"""Benchmark: a ``fit`` training step of ``quadratic(model)`` vs a step of ``model`` (issue 7).

Claim checked: on the same batch, one training step of the neural quadratic model (thesis
Eq. 3.2, nested JVPs) costs at most 4x a training step of the network itself. The linearized
model (Eq. 3.1) is timed as well, and (``--forward_accumulator``, on by default) the same
quadratic model with its JVPs computed by nested ``tf.autodiff.ForwardAccumulator``s instead of
kerntk's double-VJP transposes, the design alternative that kerntk did not pick. Steps are
interleaved (model, f_lin, f_quad, model, ...) so that load on a shared machine hits all of
them alike; medians are reported.

Recorded (2 shared CPU cores, TF 2.21): width 2048, batch 256: f 25.6 ms, f_lin 30.6 ms,
f_quad 41.7 ms (ratio 1.63), nested-ForwardAccumulator f_quad 104.7 ms (4.09); an earlier run
gave 1.87. depth 3, width 512, batch 128, biases: ratio 2.02.

    python benchmarks/taylor.py                      # 2-layer NTK fcn, width 2048, MNIST batch 256
    python benchmarks/taylor.py --depth=3 --width=512 --batch=128
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                     "datasets", "mnist", "train.npz")

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 2, "Number of NTKDense layers of the fcn.")
flags.DEFINE_integer("width", 2048, "Hidden width.")
flags.DEFINE_integer("batch", 256, "Batch size (MNIST images, flattened to 784).")
flags.DEFINE_integer("steps", 30, "Timed steps per model (after 3 warm-up steps).")
flags.DEFINE_boolean("use_bias", False, "Biases in the fcn.")
flags.DEFINE_string("data", _DATA, "MNIST npz (x uint8 (N,28,28), y); random data if missing.")
flags.DEFINE_float("max_ratio", 4.0, "The claimed bound on step(f_quad) / step(f).")
flags.DEFINE_boolean("forward_accumulator", True, "Also time f_quad with nested "
                     "ForwardAccumulator JVPs (the alternative implementation).")


def _forward_accumulator_quadratic(net):
    import tensorflow as tf

    import kerntk

    def coefficients(fn, primals, tangents, order):
        if order == 0:
            return [fn(primals)]
        with tf.autodiff.ForwardAccumulator(primals, tangents) as acc:
            lower = coefficients(fn, primals, tangents, order - 1)
            top = acc.jvp(lower[-1], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return lower + [top]

    class ForwardAccumulatorTaylor(kerntk.models.TaylorModel):
        def taylor_coefficients(self, inputs):
            w0 = [tf.convert_to_tensor(v.value) for v in self.w0]
            delta = [tf.convert_to_tensor(v.value) for v in self.delta]
            state = [tf.convert_to_tensor(v.value) for v in self.base_state]
            return coefficients(lambda w: self._f(inputs, w, state), w0, delta, self.order)

    return ForwardAccumulatorTaylor(net, order=2, name="fwdacc_quad")


def _batch(n: int):
    if os.path.exists(FLAGS.data):
        d = np.load(FLAGS.data)
        x = d["x"][:n].reshape(n, -1).astype("float32") / 255.0
        y = np.where(d["y"][:n] % 2 == 0, 1.0, -1.0).astype("float32")[:, None]
        return x, y, "mnist"
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, 784)).astype("float32"),
            rng.standard_normal((n, 1)).astype("float32"), "random")


def main(_):
    import keras

    import kerntk

    x, y, source = _batch(FLAGS.batch)
    net = kerntk.models.fcn(FLAGS.depth, FLAGS.width, 1, use_bias=FLAGS.use_bias,
                            input_shape=(x.shape[1],), seed=0)
    models = {"f": net, "f_lin": kerntk.models.linearize(net),
              "f_quad": kerntk.models.quadratic(net)}
    if FLAGS.forward_accumulator:
        models["f_quad_fwdacc"] = _forward_accumulator_quadratic(net)
    for m in models.values():
        m.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        for _ in range(3):
            m.train_on_batch(x, y)
    times = {k: [] for k in models}
    for _ in range(FLAGS.steps):
        for k, m in models.items():
            t = time.perf_counter()
            m.train_on_batch(x, y)
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    ratio_quad = med["f_quad"] / med["f"]
    ratio_lin = med["f_lin"] / med["f"]
    ratios = {k: med[k] / med["f"] for k in models}
    print(f"fcn depth={FLAGS.depth} width={FLAGS.width} batch={FLAGS.batch} data={source} "
          f"params={net.count_params()}")
    for k in models:
        print(f"  {k:13s} median step {med[k]:8.2f} ms  (IQR {np.percentile(times[k], 25)*1e3:.2f}"
              f"-{np.percentile(times[k], 75)*1e3:.2f})")
    print(f"  ratio f_lin/f = {ratio_lin:.2f}   ratio f_quad/f = {ratio_quad:.2f}   "
          f"(claim: <= {FLAGS.max_ratio})  {'OK' if ratio_quad <= FLAGS.max_ratio else 'FAIL'}")
    if "f_quad_fwdacc" in ratios:
        print(f"  ratio f_quad_fwdacc/f = {ratios['f_quad_fwdacc']:.2f} "
              "(nested ForwardAccumulator)")
    print(json.dumps({"median_ms": med, "ratio_quad": ratio_quad, "ratio_lin": ratio_lin,
                      "ratios": ratios}))


if __name__ == "__main__":
    app.run(main)
