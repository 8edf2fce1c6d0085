"""Helper of tests/test_callbacks_distributed.py (not a test module): one fit with the callbacks,
on one device or under ``tf.distribute.MirroredStrategy`` over ``--replicas`` logical CPUs.

Logical devices must be configured before TensorFlow initializes its devices, hence a fresh
process per configuration. Prints the callbacks' histories as one JSON line.

    python tests/distributed_callbacks_scenario.py WEIGHTS.npz REPLICAS
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402


def main(weights_path: str, replicas: int) -> None:
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras
    import numpy as np

    import kerntk
    from kerntk.callbacks import (AGOPAlignmentLogger, CriticalLRMonitor, DivergenceGuard,
                                  NTKSpectrumTracker)

    data = np.load(weights_path)
    x, y, probe = data["x"], data["y"], data["probe"]
    weights = [data[f"w{i}"] for i in range(int(data["n_weights"]))]
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
                if replicas > 1 else tf.distribute.get_strategy())
    with strategy.scope():
        model = kerntk.models.fcn(2, 64, input_shape=(x.shape[1],), seed=0)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(float(data["lr"])), loss="mse")
    tracker = NTKSpectrumTracker(probe, k=3, top_s=3, every_n_steps=1, every_n_epochs=None)
    monitor = CriticalLRMonitor()
    agop = AGOPAlignmentLogger(probe, np.eye(x.shape[1]), every_n_epochs=1)
    history = model.fit(x, y, batch_size=len(x), epochs=int(data["epochs"]), shuffle=False,
                        verbose=0, callbacks=[tracker, monitor, agop])
    # A diverging rate under the guard (heavy-ball SGD, so slots are snapshotted and restored).
    with strategy.scope():
        guarded_model = kerntk.models.fcn(2, 64, input_shape=(x.shape[1],), seed=0)
        guarded_model.set_weights(weights)
        guarded_model.compile(loss="mse", optimizer=keras.optimizers.SGD(
            float(data["guard_lr"]), momentum=0.5))
    guard = DivergenceGuard(factor=10.0, patience=1, backoff=0.1, max_restores=6,
                            snapshot_every=1000)
    # Two batches an epoch, the second with a NaN row (on the second replica's shard).
    x_nan = x.copy()
    x_nan[-1, 0] = np.nan
    guarded = guarded_model.fit(x_nan, y, batch_size=len(x) // 2, epochs=int(data["guard_epochs"]),
                        shuffle=False, verbose=0, callbacks=[guard])
    print(json.dumps({
        "replicas": int(strategy.num_replicas_in_sync),
        "guard_restores": guard.restores, "guard_skipped": guard.skipped, "guard_loss": guarded.history["loss"],
        "guard_lr": float(keras.ops.convert_to_numpy(guarded_model.optimizer.learning_rate)),
        "guard_weights": [w.ravel().tolist() for w in guarded_model.get_weights()],
        "tracker": tracker.history, "monitor": monitor.history, "agop": agop.history,
        "fit_loss": history.history["loss"],
        "final_weights": [w.ravel().tolist() for w in model.get_weights()],
    }))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
