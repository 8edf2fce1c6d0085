"""One worker of the two-process MultiWorkerMirroredStrategy test (tests/test_ntk_distributed.py).

Usage: python multiworker_ntk_scenario.py TASK_INDEX PORT0,PORT1 OUT_JSON
TF_CONFIG must be set before TensorFlow starts, hence a process per worker. Each worker computes
the kernel alone and under the strategy, the operator products, and fits with the spectrum
tracker under the strategy, and writes what it measured as JSON.
"""

import json
import os
import sys

task, ports, out_path = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
    "task": {"type": "worker", "index": task}})
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerntk  # noqa: E402
from kerntk.callbacks import NTKSpectrumTracker  # noqa: E402
from kerntk.ntk import empirical, empirical_ntk, ntk_operator  # noqa: E402

N, D, BLOCK = 2048, 16, 512
strategy = tf.distribute.MultiWorkerMirroredStrategy()
rng = np.random.default_rng(0)
x = rng.standard_normal((N, D)).astype("float32")
y = rng.standard_normal((N, 1)).astype("float32")
model = kerntk.models.fcn(3, 64, input_shape=(D,), seed=0)

# Count the tiles this worker computes.
tiles = [0]
original = empirical.cached_kernel_fn


def counting(*args, **kwargs):
    fn = original(*args, **kwargs)

    def call(*a):
        tiles[0] += 1
        return fn(*a)
    return call


empirical.cached_kernel_fn = counting
K_alone = empirical_ntk(model, x, block_size=BLOCK)
alone_tiles = tiles[0]
tiles[0] = 0
with strategy.scope():
    K_dist = empirical_ntk(model, x, block_size=BLOCK)
dist_tiles = tiles[0]
empirical.cached_kernel_fn = original

v = rng.standard_normal(N)
with strategy.scope():
    Kv = ntk_operator(model, x, block_size=BLOCK) @ v

# Training with the spectrum tracker under the same strategy. Keras 3's own `fit` does not run
# under MultiWorkerMirroredStrategy (keras-team/keras#20585: it reduces per-replica data and
# scalar losses along axis 0), so the loop is written out, with the tracker's hooks called where
# `fit` would call them; each worker runs them in lockstep, as in `fit`.
with strategy.scope():
    fitted = kerntk.models.fcn(3, 64, input_shape=(D,), seed=1)
    fitted.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    optimizer = fitted.optimizer
    optimizer.build(fitted.trainable_variables)


@tf.function
def train_step(xb, yb):
    def replica(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((fitted(xb, training=True) - yb) ** 2)
        grads = tape.gradient(loss, fitted.trainable_variables)
        grads = tf.distribute.get_replica_context().all_reduce("MEAN", grads)
        optimizer.apply_gradients(zip(grads, fitted.trainable_variables))
        return loss
    return strategy.reduce("MEAN", strategy.run(replica, args=(xb, yb)), axis=None)


data = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(64))
tracker = NTKSpectrumTracker(x[:64], k=3)
tracker.set_model(fitted)
losses = []
with strategy.scope():
    tracker.on_train_begin({})
    for epoch in range(2):
        tracker.on_epoch_begin(epoch, {})
        epoch_losses = [float(train_step(xb, yb)) for xb, yb in data]
        losses.append(float(np.mean(epoch_losses)))
        tracker.on_epoch_end(epoch, {"loss": losses[-1]})
    tracker.on_train_end({})

scale = np.abs(K_alone).max()
with open(out_path, "w") as f:
    json.dump({"task": task, "replicas": strategy.num_replicas_in_sync,
               "kernel_rel_diff": float(np.abs(K_dist - K_alone).max() / scale),
               "operator_rel_diff": float(np.abs(Kv - K_alone @ v).max()
                                          / np.abs(K_alone @ v).max()),
               "tiles_alone": alone_tiles, "tiles_distributed": dist_tiles,
               "loss": losses,
               "eigenvalues": np.asarray(tracker.history["ntk_lambda_1"]).tolist()}, f)
