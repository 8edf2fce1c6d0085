"""Divergence guard: skip batches with non-finite data, roll back a diverging learning rate.

Shaped like ``keras.callbacks.EarlyStopping(restore_best_weights=True)``, but it acts inside the
run: a bad batch costs one undone step, a diverging rate costs a rollback to the latest healthy
snapshot and a smaller rate, and only repeated failure stops training.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from kerntk import _keras_compat as compat
from kerntk._backend import require_tensorflow
from kerntk._validation import is_integer, is_real
from kerntk.callbacks.base import assign_values, copy_values
from kerntk.callbacks.train_step_hook import TrainStepHook

# Scalars each step sends to the host (through the hook's device-side buffer: XLA-compatible).
FIELDS = ("step", "data_finite", "loss", "loss_known", "state_finite")


def _unique(variables) -> list:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def _all_finite(tensors) -> tf.Tensor:
    """Whether every floating tensor of ``tensors`` holds only finite values (a bool scalar)."""
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
              if t is not None and t.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _host_finite(variables) -> bool:
    return all(np.all(np.isfinite(keras.ops.convert_to_numpy(v))) for v in variables
               if np.issubdtype(np.dtype(v.dtype), np.floating))


def _undo_unless(ok: tf.Tensor, variables: list, saved: list) -> None:
    """In the traced step: assigns ``saved`` back to ``variables`` unless ``ok``.

    One device: a ``tf.cond``. Under a ``tf.distribute`` strategy (replica context) a mirrored
    variable cannot be assigned inside control flow (its assignment is a cross-replica
    ``merge_call``): every variable is assigned ``where(ok, current, saved)``, mirrored ones
    through ``merge_call`` + ``extended.update`` as Keras' optimizer does, sync-on-read ones
    (metrics) per replica. ``ok`` is the same on every replica (all-reduced by the caller)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        def undo():
            assign_values(variables, saved)
            return tf.constant(False)

        tf.cond(ok, lambda: tf.constant(True), undo)
        return
    on_read = tf.VariableSynchronization.ON_READ
    mirrored = []
    for v, value in zip(variables, saved):
        var = v.value if isinstance(v, keras.Variable) else v
        if getattr(var, "synchronization", None) == on_read:
            var.assign(tf.where(ok, var.read_value(), value))
        else:
            mirrored.append((var, value))

    def update(var, value, keep):
        return var.assign(tf.where(keep, var.read_value(), value))

    def merge(strategy, keep, pairs):
        for var, value in pairs:
            strategy.extended.update(var, update, args=(value, keep), group=False)

    context.merge_call(merge, args=(ok, mirrored))


class DivergenceGuard(keras.callbacks.Callback):
    """Keeps a run finite: skips batches with non-finite data, and rolls a diverging learning
    rate back to the latest healthy snapshot with a smaller rate.

    Every training step reports (from inside the compiled step, :mod:`train_step_hook`) whether
    its batch ``x``, ``y`` and ``sample_weight`` were finite, the batch loss Keras' step computed
    (at the weights before the update) and whether the weights and optimizer state are finite
    after the update. Then:

    * **Bad data** (NaN/inf anywhere in ``x``, ``y`` or ``sample_weight``): the update of that
      batch is undone inside the step (weights, optimizer state, ``iterations`` included, and
      the metrics, which therefore exclude the batch), as if the batch were not in the data; the
      run goes on. The step is appended to :attr:`skipped` and a ``RuntimeWarning`` names it.
    * **A diverging rate**, judged on steps with finite data: a non-finite loss or state
      diverges at once; a loss above ``factor`` times the reference loss diverges after
      ``patience`` consecutive such steps. The reference is the lowest loss at which a
      snapshot was taken (the first measured loss for the snapshot at the start). On
      divergence the latest snapshot is restored and the learning rate set to
      ``backoff**k`` times its value in the snapshot, ``k`` the number of restores from that
      snapshot (repeated failures compound). The ``max_restores``-th restore of the fit stops
      training instead (``model.stop_training``, ``RuntimeWarning``; the rate is left at the
      snapshot's).
    * **Snapshots** (weights, trainable and not, and every optimizer variable, slots included:
      the optimizer is built at ``on_train_begin`` so that its slots exist) are taken at the
      start and refreshed after every ``snapshot_every`` steps all of which were healthy, so a
      restore does not throw the whole run away.
    * At the end of the fit, non-finite weights or optimizer state (e.g. training stopped by
      another callback in the middle of a divergence) are replaced by the latest snapshot: a
      run under the guard never ends non-finite.

    A restore is a true rollback: every optimizer variable, ``iterations`` included, equals its
    snapshot bit for bit (except the learning rate, backed off as above), so Adam's bias
    correction and step-based schedules of other callbacks match the restored weights. The
    guard's own ``step`` (in :attr:`restores`, :attr:`skipped` and warnings) counts every step
    this fit ran, skipped and rolled-back ones included; it does not rely on ``iterations``,
    which a mixed-precision ``LossScaleOptimizer`` does not advance on the steps it skips. The
    metrics are restored with the weights when the snapshot is from the current epoch, and
    reset otherwise (the epoch's logged means then cover the steps kept).

    Logs (batch logs at every batch hook, and epoch logs): ``guard_restores``,
    ``skipped_batches``, ``guard_lr``. :attr:`restores` is a list of dicts (``step``,
    ``reason``, ``lr_before``, ``lr_after``); :attr:`skipped` the steps whose batch was skipped.

    Notes:
        * With ``steps_per_execution = k > 1`` the batch hooks, hence the checks, restores and
          snapshots, come every ``k`` steps; skipping is in the step and unaffected.
        * The learning rate must be settable: with a ``LearningRateSchedule`` (or a callable)
          ``on_train_begin`` raises a ``ValueError``; wrap the schedule in a callback instead.
        * Cost: every step keeps a copy of the weights, optimizer state and metrics until its
          update is known good (for the in-step undo), and checks them for non-finite values.
        * The batch loss is read from Keras' own loss tracker (the mean of the epoch's batch
          losses); a custom ``train_step`` that does not update it is judged on its logged
          ``loss``, or on finiteness alone when it logs none.
        * Not tested under ``tf.distribute`` strategies.

    Args:
        factor: a loss above ``factor`` times the reference loss counts as diverging (> 1).
        patience: consecutive diverging (finite) losses before a restore (positive int).
        backoff: learning-rate factor applied per restore, in ``(0, 1)``.
        max_restores: the restore with this number ends training (positive int).
        snapshot_every: steps between snapshot refreshes (positive int).
    """

    def __init__(self, factor: float = 100.0, patience: int = 5, backoff: float = 0.5,
                 max_restores: int = 5, snapshot_every: int = 100):
        require_tensorflow("kerntk.callbacks.DivergenceGuard")
        super().__init__()
        if not (is_real(factor) and factor > 1):
            raise ValueError(f"`factor` must be a real number > 1; got {factor!r}.")
        if not (is_real(backoff) and 0 < backoff < 1):
            raise ValueError(f"`backoff` must be in (0, 1); got {backoff!r}.")
        for name, value in (("patience", patience), ("max_restores", max_restores),
                            ("snapshot_every", snapshot_every)):
            if not is_integer(value) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        self.factor, self.backoff = float(factor), float(backoff)
        self.patience, self.max_restores = int(patience), int(max_restores)
        self.snapshot_every = int(snapshot_every)
        self.restores: List[dict] = []
        self.skipped: List[int] = []
        self._hook: Optional[TrainStepHook] = None
        self._counter: Optional[tf.Variable] = None

    # ------------------------------------------------------------------ state
    def _weights(self) -> list:
        return self.model.weights

    def _optimizer_variables(self) -> list:
        return self.model.optimizer.variables

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _take_snapshot(self, loss: Optional[float], epoch: Optional[int]) -> None:
        """Snapshot of the state now; ``epoch`` is the epoch its metrics belong to (``None``
        before the first: Keras resets them only at each epoch's start)."""
        self._snapshot = dict(weights=copy_values(self._weights()),
                              optimizer=copy_values(self._optimizer_variables()),
                              metrics=copy_values(self.model.metrics_variables), epoch=epoch,
                              step=self._last_step, loss=loss, lr=self._lr())
        if loss is not None and math.isfinite(loss):
            self._reference = loss if self._reference is None else min(self._reference, loss)
        self._from_snapshot = 0  # restores from this snapshot (the backoff exponent)
        self._window, self._window_ok = 0, True

    def _restore(self) -> None:
        snap = self._snapshot
        assign_values(self._weights(), snap["weights"])
        assign_values(self._optimizer_variables(), snap["optimizer"])
        if snap["epoch"] == self._epoch:
            assign_values(self.model.metrics_variables, snap["metrics"])
        else:  # the steps of this epoch so far are all undone
            self.model.reset_metrics()

    # ------------------------------------------------------------------ in the train step
    def _graph_step(self, data, train_step, push):
        """The guarded step (traced): the original step, undone when the batch was not finite,
        and a record for the host."""
        model = self.model
        data_ok = _all_finite(tf.nest.flatten(data))
        if model.distribute_strategy.num_replicas_in_sync > 1:
            # The update is all-reduced: one bad shard spoils every replica's update. (ReduceOp
            # has SUM and MEAN only: count the bad shards.)
            data_ok = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(data_ok), tf.int32)) == 0
        state = _unique(list(model.weights) + list(model.optimizer.variables)
                        + list(model.metrics_variables))
        saved = copy_values(state)
        tracker = compat.loss_tracker(model)
        before = copy_values([tracker.total, tracker.count]) if tracker is not None else None
        logs = train_step(data)
        loss, known = self._batch_loss(tracker, before, logs)
        state_ok = _all_finite([v.value for v in list(model.trainable_variables)
                                + list(model.optimizer.variables)])

        _undo_unless(data_ok, state, saved)
        step = self._counter.assign_add(1) - 1
        push(dict(step=step, data_finite=data_ok, loss=loss, loss_known=known,
                  state_finite=state_ok))
        return logs

    @staticmethod
    def _batch_loss(tracker, before, logs):
        """The step's batch loss (float64) and whether it is known: from the growth of Keras'
        loss tracker (its logged ``loss`` is the epoch's running mean), else the logged
        ``loss`` of a custom step."""
        logged = logs.get("loss") if isinstance(logs, dict) else None
        if logged is not None and logged.shape.rank == 0:
            logged = tf.cast(logged, tf.float64)
        else:
            logged = None
        if tracker is None:
            return (logged, tf.constant(True)) if logged is not None else (
                tf.constant(0.0, tf.float64), tf.constant(False))
        total = tf.cast(tracker.total.value, tf.float64) - tf.cast(before[0], tf.float64)
        count = tf.cast(tracker.count.value, tf.float64) - tf.cast(before[1], tf.float64)
        grew = count > 0
        loss = total / tf.where(grew, count, tf.ones_like(count))
        if logged is None:
            return loss, grew
        return tf.where(grew, loss, logged), tf.constant(True)

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs=None):
        model = self.model
        if model.optimizer is None:
            raise ValueError("DivergenceGuard needs a compiled model.")
        if not compat.assignable_learning_rate(model.optimizer):
            raise ValueError("DivergenceGuard backs the learning rate off after a restore, but "
                             "it is a LearningRateSchedule (or a callable) here, which cannot "
                             "be set; compile with a float learning rate.")
        if not model.optimizer.built:
            # Keras creates the slots (momentum, Adam moments) at the first step, after this
            # hook: build now so the first snapshot holds them.
            model.optimizer.build(model.trainable_variables)
        if self._counter is None:
            with model.distribute_strategy.scope():
                self._counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._counter.assign(0)
        self.restores, self.skipped = [], []
        self._epoch, self._last_step, self._bad, self._reference = 0, -1, 0, None
        self._last_loss = None
        self._take_snapshot(None, None)
        self._hook = TrainStepHook(owner=self)
        self._hook.install(model, self._graph_step, FIELDS, fit=self.params, transparent=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        try:
            self._process(self._hook.pop())
        except BaseException:
            # Keras skips on_train_end when fit raises: leave the model's train step as found.
            self._hook.uninstall()
            raise
        if logs is not None:
            logs.update(self._logs())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._logs())

    def on_train_end(self, logs=None):
        if self._hook is not None:
            self._hook.uninstall()
            self._hook = None
        if not _host_finite(list(self._weights()) + list(self._optimizer_variables())):
            lr = self._lr()
            self._restore()
            self.restores.append(dict(step=self._last_step, reason="non-finite state at the end",
                                      lr_before=lr, lr_after=self._lr()))

    # ------------------------------------------------------------------ on the host
    def snapshot(self) -> None:
        """Takes a snapshot of the state now, during ``fit`` (e.g. right after a learning-rate
        raise by :class:`~kerntk.callbacks.CatapultRaise`, so that a raise that diverges rolls
        back to just before it and retries at ``backoff`` times the raised rate)."""
        if self._hook is None:
            raise RuntimeError("DivergenceGuard.snapshot() works during fit only.")
        self._take_snapshot(self._last_loss, self._epoch)

    def _logs(self) -> Dict[str, float]:
        return dict(guard_restores=float(len(self.restores)),
                    skipped_batches=float(len(self.skipped)), guard_lr=self._lr())

    def _process(self, records: List[dict]) -> None:
        """Checks the steps of one execution in order; after a restore (or a stop) the rest
        are from the abandoned trajectory."""
        loss = None
        for record in records:
            self._last_step = int(record["step"])
            if not record["data_finite"]:
                self._skip(self._last_step)
                continue
            loss = float(record["loss"]) if record["loss_known"] else None
            if loss is not None and math.isfinite(loss):
                self._last_loss = loss
            if self._diverged(loss, bool(record["state_finite"])):
                return
            self._window += 1
        if self._window >= self.snapshot_every:
            if self._window_ok and self._bad == 0:
                self._take_snapshot(loss, self._epoch)
            else:  # a bad loss in this window: start a new one rather than snapshot near it
                self._window, self._window_ok = 0, True

    def _skip(self, step: int) -> None:
        self.skipped.append(step)
        warnings.warn(f"DivergenceGuard: the batch of step {step} has non-finite values in x, y "
                      f"or sample_weight; its update was undone and the batch skipped.",
                      RuntimeWarning, stacklevel=2)

    def _diverged(self, loss: Optional[float], state_finite: bool) -> bool:
        """Applies the rules to one step with finite data; True when it restored."""
        finite = state_finite and (loss is None or math.isfinite(loss))
        if finite and loss is not None and self._reference is None:
            self._reference = self._snapshot["loss"] = loss  # the first snapshot's loss
        if not finite:
            self._rollback("non-finite loss or state")
            return True
        if loss is not None and loss > self.factor * self._reference:
            self._bad += 1
            self._window_ok = False
            if self._bad >= self.patience:
                self._rollback(f"loss > {self.factor:g} x reference for {self.patience} steps")
                return True
        else:
            self._bad = 0
        return False

    def _rollback(self, reason: str) -> None:
        lr_before = self._lr()
        self._restore()
        self._bad, self._window, self._window_ok = 0, 0, True
        stop = len(self.restores) + 1 >= self.max_restores
        if stop:
            self.model.stop_training = True
        else:
            self._from_snapshot += 1
            self.model.optimizer.learning_rate = (
                self._snapshot["lr"] * self.backoff ** self._from_snapshot)
        self.restores.append(dict(step=self._last_step, reason=reason, lr_before=lr_before,
                                  lr_after=self._lr()))
        if stop:
            warnings.warn(f"DivergenceGuard: training diverged ({reason}) at step "
                          f"{self._last_step} after {len(self.restores) - 1} backed-off "
                          f"restores; weights and optimizer restored to the snapshot of step "
                          f"{self._snapshot['step']} and training stopped.",
                          RuntimeWarning, stacklevel=2)
