"""Measurements traced into the training step, delivered to a callback on the host.

Keras gives callbacks no access to the data of a step, nor to the weights a step started from.
:class:`TrainStepHook` replaces ``model.train_step`` by ``body(data, step, push)``, traced into
the compiled train function: ``step(data)`` runs the original step and returns its logs, and
``push(record)`` (a dict of tensors, called inside ``body``, possibly under ``tf.cond``) sends a
record to the host. Everything a measurement needs (the batch, the
weights before and after the update) is thus at hand in the graph, and nothing is copied or
swapped on the host.

Under a ``tf.distribute`` strategy ``body`` runs once per replica; :meth:`TrainStepHook.replica`
gives the replica id so that the measurement runs on replica 0 only. XLA cannot compile host
callbacks: records of scalars can instead go through a device-side buffer (``fields``), which
keeps ``jit_compile`` (nor would a TPU run a host callback); otherwise ``jit_compile`` is off
while the hook is installed (restored afterwards).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from kerntk import _keras_compat as compat


class TrainStepHook:
    """Installs ``body`` as the model's train step; :meth:`pop` returns the records pushed since
    the last call, in the order the steps ran."""

    def __init__(self, owner: Optional[object] = None):
        self._lock = threading.Lock()
        self._records: List[Dict[str, np.ndarray]] = []
        self._model = None
        self._fit = None
        self._owner = owner  # the callback, for messages
        self.keras_default_step = False

    @staticmethod
    def replica() -> tf.Tensor:
        """Id of the replica running the step (0 without a strategy), an int32 tensor."""
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.cast(replica, tf.int32)

    def install(self, model: keras.Model, body: Callable,
                fields: Optional[Sequence[str]] = None, fit: Optional[object] = None) -> None:
        """Installs ``body`` as the train step. With ``fields`` (names of scalar record entries,
        ``"step"`` among them) records go through a device-side buffer that the host reads
        after each execution: no host callback in the step, so XLA ``jit_compile`` keeps
        working. Without, records of any shape go through ``tf.numpy_function`` and
        ``jit_compile`` is off while installed.

        ``fit`` identifies the running ``fit`` (the callback's ``params`` dict, which Keras
        shares among the callbacks of one fit): a hook installed by another callback of the same
        fit is an error (one hooked callback per fit), while one left by an interrupted fit is
        replaced."""
        if self._model is not None:
            raise RuntimeError("TrainStepHook is already installed.")
        # A wrapper left by a fit that was interrupted (Keras skips on_train_end then) is
        # replaced, not wrapped again: one hooked callback per model.
        stale = getattr(compat.instance_override(model, "train_step"), "_kerntk_hook", None)
        if stale is not None and fit is not None and stale._fit is fit:
            stale.uninstall()  # the fit stops here: leave the model's own step in place
            raise ValueError(
                f"Two kerntk callbacks that measure inside the training step are attached to "
                f"the same fit ({type(stale._owner).__name__} and {type(self._owner).__name__}"
                f"); attach one (it already logs everything they would measure).")
        self._model, self._fit = model, fit
        if stale is not None:
            stale.uninstall()
        self._instance_step = compat.instance_override(model, "train_step")  # a user's own
        self._jit = model.jit_compile
        # Whether the step is Keras' own (one forward pass of the model, then the update): a
        # custom step may call the model several times, or not at all.
        self.keras_default_step = self._instance_step is None and getattr(
            type(model).train_step, "__qualname__", "") == "TensorFlowTrainer.train_step"
        original = model.train_step
        self._buffer = None
        if fields is None:
            push = self._host_push
            if self._jit:
                model.jit_compile = False
        else:
            push = self._buffer_push(model, list(fields))

        def train_step(data):
            return body(data, original, push)

        train_step._kerntk_hook = self
        model.train_step = train_step
        build = model.make_train_function

        def make_train_function(force=False):
            # Keras calls this at the start of every fit (and train_on_batch), never again
            # within one: a call while the hook is installed means the fit that installed it
            # ended in an error (Keras skips on_train_end then). Remove the stale hook so that
            # this fit trains with the model's own step.
            self.uninstall()
            return model.make_train_function(force=True)

        compat.set_untracked(model, "make_train_function", make_train_function)
        build(force=True)

    def _host_push(self, record: Dict[str, tf.Tensor]) -> None:
        keys = sorted(record)

        def store(*arrays):
            with self._lock:
                self._records.append({k: np.asarray(a) for k, a in zip(keys, arrays)})
            return []

        tf.numpy_function(store, [record[k] for k in keys], [], stateful=True)

    def _buffer_push(self, model: keras.Model, fields: List[str]) -> Callable:
        """A ``push`` writing scalar records into row ``step % k`` of a ``(k, fields)`` float64
        buffer, ``k = steps_per_execution`` (the steps between two host reads)."""
        if "step" not in fields:
            raise ValueError("A buffered record needs a 'step' field.")
        k = max(1, int(model.steps_per_execution or 1))
        init = np.full((k, len(fields)), np.nan)
        init[:, fields.index("step")] = -1.0
        strategy = model.distribute_strategy
        with strategy.scope():
            # One copy per replica; the host reads the first replica's (which measures).
            sync = {} if strategy.num_replicas_in_sync == 1 else dict(
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self._buffer = tf.Variable(init, trainable=False, dtype=tf.float64, **sync)
        self._fields, self._last_step = fields, -1.0

        def push(record: Dict[str, tf.Tensor]) -> None:
            row = tf.cast(record["step"], tf.int64) % k
            keys = sorted(record)
            indices = tf.stack([tf.stack([row, tf.constant(fields.index(key), tf.int64)])
                                for key in keys])
            updates = tf.stack([tf.cast(tf.reshape(record[key], ()), tf.float64)
                                for key in keys])
            # Read-modify-assign: sync-on-read (per-replica) variables have no scatter update.
            self._buffer.assign(tf.tensor_scatter_nd_update(
                tf.identity(self._buffer), indices, updates))

        return push

    def uninstall(self) -> None:
        model, self._model = self._model, None
        if model is None:
            return
        if self._instance_step is None:
            del model.train_step
        else:
            model.train_step = self._instance_step
        compat.clear_untracked(model, "make_train_function")
        model.jit_compile = self._jit
        model.train_function = None  # the next fit builds a plain one
        self._records, self._buffer = [], None

    def pop(self) -> List[Dict[str, np.ndarray]]:
        if self._buffer is not None:
            rows = self._buffer.numpy()
            step = self._fields.index("step")
            new = sorted((r for r in rows if r[step] > self._last_step), key=lambda r: r[step])
            if new:
                self._last_step = new[-1][step]
            return [dict(zip(self._fields, r)) for r in new]
        with self._lock:
            records, self._records = self._records, []
        return records
