"""Measurements traced into the training step, delivered to a callback on the host.

Keras gives callbacks no access to the data of a step, nor to the weights a step started from.
:class:`TrainStepHook` replaces ``model.train_step`` by ``body(data, step, push)``, traced into
the compiled train function: ``step(data)`` runs the original step and returns its logs, and
``push(record)`` (a dict of tensors, called inside ``body``, possibly under ``tf.cond``) sends a
record to the host. Everything a measurement needs (the batch, the
weights before and after the update) is thus at hand in the graph, and nothing is copied or
swapped on the host.

Several hooks of one ``fit`` compose: the model's step becomes
``body_1(data, lambda d: body_2(d, ... original ...), push_1)`` in install order, each hook with
its own records. Removing one rebuilds the chain of the others; removing the last gives the
model back its own step (a user's instance-level ``train_step`` included) and ``jit_compile``.

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

_KERAS_STEP = "TensorFlowTrainer.train_step"


class _Chain:
    """The hooks installed on one model, outermost first, and what uninstalling restores.

    Kept on the wrapper step it installs (``train_step._kerntk_chain``), so a chain is found
    exactly while its step is the model's."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.hooks: List["TrainStepHook"] = []
        self.instance_step = compat.instance_override(model, "train_step")  # a user's own
        self.original = model.train_step  # the step the innermost hook runs
        self.jit = model.jit_compile
        # Whether the step is Keras' own (one forward pass of the model, then the update): a
        # custom step may call the model several times, or not at all.
        self.keras_step = self.instance_step is None and getattr(
            type(model).train_step, "__qualname__", "") == _KERAS_STEP

    @staticmethod
    def of(model: keras.Model) -> Optional["_Chain"]:
        return getattr(compat.instance_override(model, "train_step"), "_kerntk_chain", None)

    def same_fit(self, fit: Optional[object]) -> bool:
        """Whether every hook was installed by the fit identified by ``fit`` (Keras' params
        dict, shared by the callbacks of one fit)."""
        return fit is not None and all(h._fit is fit for h in self.hooks)

    def clear(self) -> None:
        """Removes every hook (stale ones: a fit ended in an error, skipping on_train_end)."""
        for hook in list(self.hooks):
            hook._forget()
        self.hooks = []
        self.rebuild()

    def rebuild(self) -> None:
        """Installs the composition of the hooks (or the model's own step when none is left)
        and a fresh train function (the next call retraces)."""
        model = self.model
        if not self.hooks:
            if self.instance_step is None:
                if "train_step" in model.__dict__:
                    del model.train_step
            else:
                model.train_step = self.instance_step
            compat.clear_untracked(model, "make_train_function")
            model.jit_compile = self.jit
            model.train_function = None  # the next fit builds a plain one
            return
        step = self.original
        transparent = True  # every hook inside this one leaves the model's calls to `original`
        for hook in reversed(self.hooks):
            hook.keras_default_step = self.keras_step and transparent
            step = hook._wrap(step)
            transparent = transparent and hook._transparent
        # XLA cannot compile a host callback: off while any hook pushes through one.
        model.jit_compile = self.jit and all(h._buffer is not None for h in self.hooks)

        def train_step(data):
            return step(data)

        train_step._kerntk_chain = self
        model.train_step = train_step

        def make_train_function(force=False):
            # Keras calls this at the start of every fit (and train_on_batch), before
            # on_train_begin, never again within one: hooks still installed then were left by
            # a fit that ended in an error (Keras skips on_train_end). Remove them so that this
            # fit trains with the model's own step (its callbacks install theirs afterwards).
            self.clear()
            return model.make_train_function(force=True)

        compat.set_untracked(model, "make_train_function", make_train_function)
        type(model).make_train_function(model, force=True)


class TrainStepHook:
    """Installs ``body`` as the model's train step; :meth:`pop` returns the records pushed since
    the last call, in the order the steps ran."""

    def __init__(self, owner: Optional[object] = None):
        self._lock = threading.Lock()
        self._records: List[Dict[str, np.ndarray]] = []
        self._chain: Optional[_Chain] = None
        self._fit = None
        self._buffer = None
        self._owner = owner  # the callback, for messages
        self.keras_default_step = False

    @staticmethod
    def replica() -> tf.Tensor:
        """Id of the replica running the step (0 without a strategy), an int32 tensor."""
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.cast(replica, tf.int32)

    def install(self, model: keras.Model, body: Callable,
                fields: Optional[Sequence[str]] = None, fit: Optional[object] = None,
                transparent: bool = False) -> None:
        """Installs ``body`` as the train step. With ``fields`` (names of scalar record entries,
        ``"step"`` among them) records go through a device-side buffer that the host reads
        after each execution: no host callback in the step, so XLA ``jit_compile`` keeps
        working. Without, records of any shape go through ``tf.numpy_function`` and
        ``jit_compile`` is off while installed.

        ``fit`` identifies the running ``fit`` (the callback's ``params`` dict, which Keras
        shares among the callbacks of one fit): hooks of the same fit compose (this one runs
        inside those installed before it), while hooks left by another fit (interrupted: Keras
        skips on_train_end then) are removed first. ``transparent`` declares that ``body``
        calls neither the model nor anything else an outer hook could mistake for the step's
        own forward pass (so an outer hook may still share Keras' forward pass,
        :attr:`keras_default_step`)."""
        if self._chain is not None:
            raise RuntimeError("TrainStepHook is already installed.")
        chain = _Chain.of(model)
        if chain is not None and not chain.same_fit(fit):
            chain.clear()  # stale: leaves the model's own step
            chain = None
        if chain is None:
            chain = _Chain(model)
        self._fit, self._transparent = fit, bool(transparent)
        self._buffer = None
        if fields is None:
            self._push = self._host_push
        else:
            self._push = self._buffer_push(model, list(fields))
        self._body = body
        self._chain = chain
        chain.hooks.append(self)
        chain.rebuild()

    def _wrap(self, inner: Callable) -> Callable:
        body, push = self._body, self._push

        def step(data):
            return body(data, inner, push)

        return step

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
        self._fields, self._empty = fields, init

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

    def _forget(self) -> None:
        """Drops this hook's state (the chain is rebuilt by the caller)."""
        self._chain, self._fit = None, None
        self._records, self._buffer = [], None
        self.keras_default_step = False

    def uninstall(self) -> None:
        """Removes this hook; the others of its chain keep running (the chain is rebuilt)."""
        chain = self._chain
        if chain is None:
            return
        if self in chain.hooks:
            chain.hooks.remove(self)
        self._forget()
        if _Chain.of(chain.model) is chain:  # not replaced by a later fit's hooks meanwhile
            chain.rebuild()

    def pop(self) -> List[Dict[str, np.ndarray]]:
        if self._buffer is not None:
            rows = self._buffer.numpy()
            step = self._fields.index("step")
            new = sorted((r for r in rows if r[step] >= 0), key=lambda r: r[step])
            if new:
                # Rows read are emptied (not told apart by a growing step): a restore that
                # rewinds ``optimizer.iterations`` must not hide the steps that follow it.
                self._buffer.assign(self._empty)
            return [dict(zip(self._fields, r)) for r in new]
        with self._lock:
            records, self._records = self._records, []
        return records
