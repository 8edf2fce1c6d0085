"""Access to the batch of the current training step from a callback.

Keras gives callbacks no access to the data of a step. :class:`BatchCapture` wraps
``model.train_step`` so each step hands its batch (all replica shards under a ``tf.distribute``
strategy) to the host through ``tf.numpy_function``, and rebuilds the train function. XLA cannot
compile host callbacks, so ``jit_compile`` is switched off while installed and restored afterwards.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf


class BatchCapture:
    """Records the (x, y) batches of ``fit`` steps; :meth:`pop_first` returns the first one since
    the last call (the first step of a ``steps_per_execution`` block) and clears the rest."""

    def __init__(self):
        self._lock = threading.Lock()
        self._records: List[Tuple[int, int, list]] = []
        self._counter = 0
        self._model = None
        self._structure = None

    def install(self, model: keras.Model) -> None:
        if self._model is not None:
            raise RuntimeError("BatchCapture is already installed.")
        self._model = model
        self._had_instance_step = "train_step" in model.__dict__
        self._jit = model.jit_compile
        original = model.train_step

        def train_step(data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            self._structure = (x, y)
            flat = [tf.convert_to_tensor(t) for t in keras.tree.flatten((x, y)) if t is not None]
            context = tf.distribute.get_replica_context()
            replica = context.replica_id_in_sync_group if context is not None else 0
            tf.numpy_function(self._store, [tf.cast(replica, tf.int32)] + flat, [],
                              stateful=True)
            return original(data)

        model.train_step = train_step
        if self._jit:
            model.jit_compile = False
        model.make_train_function(force=True)

    def uninstall(self) -> None:
        model, self._model = self._model, None
        if model is None:
            return
        if not self._had_instance_step:
            del model.train_step
        model.jit_compile = self._jit
        model.train_function = None  # the next fit builds a plain one
        self._records = []

    def _store(self, replica, *arrays):
        with self._lock:
            self._records.append((self._counter, int(replica), [np.asarray(a) for a in arrays]))
            self._counter += 1
        return []

    def pop_first(self, n_replicas: int = 1) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """``(x, y)`` of the first recorded step (replica shards concatenated in replica order),
        or ``None`` when nothing was recorded."""
        with self._lock:
            records, self._records = sorted(self._records, key=lambda r: r[0]), []
        if not records:
            return None
        shards = sorted(records[:n_replicas], key=lambda r: r[1])
        arrays = [np.concatenate([s[2][i] for s in shards]) for i in range(len(shards[0][2]))]
        x_struct, y_struct = self._structure
        n_x = len(keras.tree.flatten(x_struct))
        x = keras.tree.pack_sequence_as(x_struct, arrays[:n_x])
        y = None if y_struct is None else keras.tree.pack_sequence_as(y_struct, arrays[n_x:])
        return x, y
