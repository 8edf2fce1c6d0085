"""Shared machinery of kerntk's callbacks: when to measure, where the numbers go.

Every measuring callback (1) decides at each batch/epoch end whether to measure (``every_n_steps``,
``every_n_epochs`` or a ``schedule(step) -> bool`` predicate, where ``step`` is the number of
optimizer updates so far, ``optimizer.iterations``), (2) writes the scalars of a measurement into the
Keras ``logs`` of that hook, so callbacks placed after it (History, CSVLogger, the progress bar,
TensorBoard) see them, and repeats the latest values into the epoch logs, and (3) appends every
measurement to ``self.history`` (a dict of lists, keys ``"step"``, ``"epoch"`` and the scalar names)
for plotting.

With ``steps_per_execution = k > 1`` Keras calls batch hooks once per ``k`` updates, so step-based
schedules can only fire at those points: a measurement is taken when a multiple of
``every_n_steps`` was crossed since the last hook.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import keras
import numpy as np

from kerntk import _validation as checks
from kerntk._backend import require_tensorflow
from kerntk._blas import single_threaded
from kerntk.ntk.forward import compute_dtype, resolve_dtype


def _check_every(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be None or a positive integer; got {value!r}.")
    return int(value)


def check_probe(name: str, x) -> np.ndarray:
    """Validates a probe array: one numeric array (not one per model input), non-empty, finite."""
    if x is None:
        raise ValueError(f"`{name}` is required.")
    return checks.inputs(name, x)


def copy_values(variables) -> list:
    """Tensor copies of the variables' current values (they survive later in-place updates);
    eagerly or inside a traced step."""
    import tensorflow as tf

    return [tf.identity(v.value) for v in variables]


def assign_values(variables, values) -> None:
    """Assigns ``values`` (e.g. from :func:`copy_values`) back to ``variables``."""
    for v, t in zip(variables, values):
        v.assign(t)


def full_precision(model: keras.Model):
    """Context in which ``model`` computes in float32 (float64 for a float64 model): a
    ``mixed_float16``/``mixed_bfloat16`` model's forward passes, input gradients and predictions
    made by the callbacks are lifted to its float32 variables' precision."""
    return compute_dtype(model, resolve_dtype(model, None))


class MeasuringCallback(keras.callbacks.Callback):
    """Base class: schedule, ``logs`` and ``history`` handling. Subclasses implement
    :meth:`measure` returning a dict of float scalars."""

    def __init__(self, every_n_steps: Optional[int] = None, every_n_epochs: Optional[int] = 1,
                 schedule: Optional[Callable[[int], bool]] = None, measure_at_start: bool = True):
        require_tensorflow(f"kerntk.callbacks.{type(self).__name__}")
        super().__init__()
        self.every_n_steps = _check_every("every_n_steps", every_n_steps)
        self.every_n_epochs = _check_every("every_n_epochs", every_n_epochs)
        if schedule is not None and not callable(schedule):
            raise ValueError(f"`schedule` must be a callable step -> bool; got {schedule!r}.")
        self.schedule = schedule
        self.measure_at_start = measure_at_start
        self.history: Dict[str, List[float]] = {}
        self.latest: Dict[str, float] = {}
        self._last_step = 0
        self._epoch = 0

    # -- subclasses
    def measure(self) -> Dict[str, float]:
        raise NotImplementedError

    # -- helpers
    @property
    def _step_scheduled(self) -> bool:
        return self.every_n_steps is not None or self.schedule is not None

    @property
    def async_safe(self) -> bool:
        """Without a step schedule the batch hook does nothing, so Keras may dispatch batch
        hooks asynchronously (it keeps them synchronous for callbacks that are not)."""
        return not self._step_scheduled

    def _measure(self) -> Dict[str, float]:
        # numpy's BLAS on one thread: OpenBLAS threads spin-wait after a call, and on a 2-core
        # machine the next ~4 training steps ran 1.8x slower after a tracker measurement
        # (measured here; see kerntk._blas).
        with single_threaded():
            return self.measure()

    @property
    def step(self) -> int:
        """Optimizer updates applied so far."""
        return int(self.model.optimizer.iterations.numpy())

    def _record(self, values: Dict[str, float], logs: Optional[dict]) -> None:
        self.history.setdefault("step", []).append(self.step)
        self.history.setdefault("epoch", []).append(self._epoch)
        for key, value in values.items():
            self.history.setdefault(key, []).append(float(value))
        self.latest = {k: float(v) for k, v in values.items()}
        if logs is not None:
            logs.update(self.latest)

    def _due_at_batch(self, step: int) -> bool:
        due = False
        if self.every_n_steps is not None:
            due = step // self.every_n_steps > self._last_step // self.every_n_steps
        if self.schedule is not None:
            due = due or any(self.schedule(s) for s in range(self._last_step + 1, step + 1))
        return due

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        self.history = {}
        self.latest = {}
        self._epoch = 0
        self._last_step = self.step
        if self.model.optimizer is None:
            raise ValueError(f"{type(self).__name__} needs a compiled model.")
        self._on_train_begin()
        if self.measure_at_start:
            self._record(self._measure(), None)

    def _on_train_begin(self) -> None:
        """Subclass hook run before the first measurement."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not self._step_scheduled:
            return
        step = self.step
        if self._due_at_batch(step):
            self._record(self._measure(), logs)
        self._last_step = step

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0 and (
                not self.history.get("step") or self.history["step"][-1] != self.step):
            self._record(self._measure(), logs)
        if logs is not None:
            logs.update(self.latest)

    # -- plotting
    def _figure(self, n_panels: int):
        import matplotlib.pyplot as plt  # optional dependency: pip install kerntk[plot]

        fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.4), squeeze=False)
        return plt, fig, axes[0]
