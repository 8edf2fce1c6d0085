"""LR raises that trigger repeated catapults (thesis §4.3), read from a CriticalLRMonitor."""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import keras

from kerntk import _keras_compat as compat
from kerntk._validation import is_integer, is_real


class CatapultRaise(keras.callbacks.Callback):
    """Raises the learning rate after each settled catapult to trigger the next (thesis §4.3,
    "multiple catapults"); the control half of :class:`~kerntk.callbacks.CriticalLRMonitor`,
    in the shape of Keras' ``ReduceLROnPlateau``.

    Place it after its monitor (and guard) in ``callbacks``; at each batch hook it reads the
    monitor's new measurements (``monitor.history``: every measured step, also those of a
    ``steps_per_execution`` block) and acts at that hook:

    * A catapult starts at a step that is both an event (``eta > eta_crit``) and a loss spike;
      it has settled once ``eta_crit > eta`` again (the kernel flattened).
    * **Raise**: when no catapult is running, ``eta_crit > eta``, ``eta_crit`` changed by at
      most ``stable_rtol`` since the previous measurement (the kernel stopped sharpening), the
      loss is back to its pre-spike level, and ``cooldown`` measurements passed since the last
      raise (or the start), the rate is set to ``factor * eta_crit``; at most ``max_raises``
      times. ``eta_crit`` is the optimizer's own critical rate (Adam's
      ``38/sharpness`` at ``beta_1 = 0.9``, not an SGD number), so the raise is relative to the
      optimizer that trains.
    * **Decay**: after a raise's catapult has settled, ``lambda_max`` may grow back (progressive
      sharpening) until ``eta > eta_crit`` again; the rate is then lowered to
      ``decay * eta_crit`` (thesis App. C.6: "we decay the learning rate if necessary after the
      catapult"). ``decay=None`` disables it.
    * With ``guard`` (a :class:`~kerntk.callbacks.DivergenceGuard` of the same fit), a snapshot
      is taken right after each raise, so a raise that diverges is rolled back to just before
      it and retried at ``backoff`` times the raised rate (compounding).

    Logs: ``lr_raises``, ``lr_decays``. :attr:`raises` and :attr:`decays` list the actions
    (``step``, ``from``, ``to``, ``eta_crit``).

    Args:
        monitor: the :class:`~kerntk.callbacks.CriticalLRMonitor` of the same fit.
        factor: new ``eta / eta_crit(t)``; in ``(1, 4)`` (in ``(1, 2)`` a wide net trained with
            GD catapults rather than diverges).
        max_raises: maximum number of raises.
        cooldown: measurements to wait after a raise (or the start) before the next one.
        stable_rtol: largest relative change of ``eta_crit`` between two measurements at which a
            raise is allowed.
        decay: factor of the post-catapult decay in ``(0, 1)``, or ``None``.
        guard: optional :class:`~kerntk.callbacks.DivergenceGuard` to snapshot after a raise.
    """

    def __init__(self, monitor, factor: float = 1.5, max_raises: int = 3, cooldown: int = 10,
                 stable_rtol: float = 0.01, decay: Optional[float] = 0.9, guard=None):
        super().__init__()
        from kerntk.callbacks.critical_lr import CriticalLRMonitor
        from kerntk.callbacks.divergence_guard import DivergenceGuard

        if not isinstance(monitor, CriticalLRMonitor):
            raise ValueError(f"`monitor` must be the CriticalLRMonitor of the fit; got "
                             f"{monitor!r}.")
        if guard is not None and not isinstance(guard, DivergenceGuard):
            raise ValueError(f"`guard` must be None or a DivergenceGuard; got {guard!r}.")
        if not (is_real(factor) and 1.0 < factor < 4.0):
            raise ValueError(f"`factor` must be in (1, 4); got {factor!r}.")
        for name, value in (("max_raises", max_raises), ("cooldown", cooldown)):
            if not is_integer(value) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer; got {value!r}.")
        if decay is not None and not (is_real(decay) and 0 < decay < 1):
            raise ValueError(f"`decay` must be None or in (0, 1); got {decay!r}.")
        if not (is_real(stable_rtol) and stable_rtol > 0):
            raise ValueError(f"`stable_rtol` must be > 0; got {stable_rtol!r}.")
        self.monitor, self.guard = monitor, guard
        self.factor, self.max_raises, self.cooldown = float(factor), int(max_raises), int(cooldown)
        self.stable_rtol = float(stable_rtol)
        self.decay = None if decay is None else float(decay)
        self.raises: List[dict] = []
        self.decays: List[dict] = []

    def on_train_begin(self, logs=None):
        if self.monitor.model is not self.model:
            raise ValueError("CatapultRaise reads a CriticalLRMonitor of the same fit: pass the "
                             "monitor in `callbacks` before CatapultRaise.")
        if not compat.assignable_learning_rate(self.model.optimizer):
            raise ValueError("CatapultRaise sets the learning rate, which is a "
                             "LearningRateSchedule (or a callable) here; compile with a float "
                             "learning rate.")
        self.raises, self.decays = [], []
        self._read = 0  # measurements of the monitor already read
        self._measurements = 0
        self._last_raise = 0
        self._in_catapult, self._pre_spike_loss, self._settled = False, None, False
        self._previous_eta_crit = math.nan

    def on_train_batch_end(self, batch, logs=None):
        h = self.monitor.history
        steps = h.get("step", [])
        for i in range(self._read, len(steps)):
            self._observe(dict(eta=h["eta"][i], eta_crit=h["eta_crit"][i],
                               event=h["event"][i], spike=h["spike"][i],
                               loss=h["monitor_loss"][i], loss_after=h["loss_after"][i]))
        self._read = len(steps)
        if logs is not None:
            logs.update(self._logs())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._logs())

    def _logs(self) -> Dict[str, float]:
        return dict(lr_raises=float(len(self.raises)), lr_decays=float(len(self.decays)))

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _set_lr(self, value: float) -> None:
        self.model.optimizer.learning_rate = value

    def _observe(self, m: dict) -> None:
        """The catapult state machine, one measurement at a time."""
        self._measurements += 1
        eta, eta_crit = self._lr(), m["eta_crit"]
        if m["spike"] and m["event"] and not self._in_catapult:
            self._in_catapult, self._pre_spike_loss = True, m["loss"]
        elif self._in_catapult and eta_crit > eta:  # the kernel has flattened: catapult over
            self._in_catapult, self._settled = False, bool(self.raises)
        previous, self._previous_eta_crit = self._previous_eta_crit, eta_crit
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if (self.decay is not None and self._settled and math.isfinite(eta_crit)
                and eta > eta_crit):
            self._set_lr(self.decay * eta_crit)
            self.decays.append(dict(step=step, **{"from": eta, "to": self.decay * eta_crit,
                                                  "eta_crit": eta_crit}))
            return
        loss_after = m["loss_after"]
        if (len(self.raises) >= self.max_raises or self._in_catapult
                or self.model.stop_training
                or not (math.isfinite(eta_crit) and eta_crit > eta)
                or self._measurements - self._last_raise < self.cooldown
                or not math.isfinite(loss_after)
                or (self._pre_spike_loss is not None and loss_after > self._pre_spike_loss)
                or not math.isfinite(previous)
                or abs(eta_crit - previous) > self.stable_rtol * eta_crit):
            return
        new_lr = self.factor * eta_crit
        self.raises.append(dict(step=step, **{"from": eta, "to": new_lr, "eta_crit": eta_crit}))
        self._settled = False
        self._set_lr(new_lr)
        self._last_raise = self._measurements
        if self.guard is not None:
            self.guard.snapshot()
