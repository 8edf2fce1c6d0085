"""Critical learning rate monitor: eta_crit, sharpness, catapult events, loss spikes.

Thesis Ch. 3-4: GD on MSE catapults when ``eta > eta_crit = 2/lambda_max(H_L)``; for a batch,
``eta_crit(X_batch) = b c / lambda_max(K_batch)`` (App. C.1, :func:`kerntk.spectral.critical_lr`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from kerntk import spectral
from kerntk._backend import require_tensorflow
from kerntk._validation import is_integer, is_real
from kerntk.callbacks._summary import summary_log
from kerntk.callbacks.base import assign_values, check_probe, copy_values
from kerntk.callbacks.train_step_hook import TrainStepHook
from kerntk.ntk import empirical as ntk_empirical
from kerntk.ntk.forward import (batch_mixing_layers, compute_dtype, forward, output_shapes,
                                read_values, resolve_dtype)
from kerntk.ntk.jacobian import preconditioned_kernel
from kerntk.ntk.in_step import top_eigenvalue
from kerntk.ntk.traced import kernel_graph

ESTIMATES = ("auto", "ntk", "gauss_newton", "hessian")
# Arguments of the monitor before measurement and control were split (issue 11).
_MOVED = {"raise_policy", "guard", "guard_factor", "patience", "backoff"}


class CriticalLRMonitor(keras.callbacks.Callback):
    """Critical learning rate, sharpness, catapult events and loss spikes during ``fit`` (thesis
    Ch. 4). It measures only; :class:`~kerntk.callbacks.CatapultRaise` and
    :class:`~kerntk.callbacks.DivergenceGuard` act on what it measures (the split of Keras'
    own ``ReduceLROnPlateau``/``EarlyStopping``).

    At every ``every_n_steps``-th update ``w_t -> w_{t+1}`` taken on batch ``X_t`` it measures,
    at the weights ``w_t`` the step started from and with the optimizer's own stability rule
    (:mod:`kerntk.spectral.stability`: SGD with or without momentum/Nesterov, Adam, AdamW,
    RMSprop; another optimizer is a ``ValueError`` at the start of ``fit``):

    * ``sharpness``: ``lambda_max(P^{-1/2} G P^{-1/2})`` of the Gauss-Newton matrix ``G`` of
      the compiled loss on ``X_t`` (any loss with curvature, several outputs with their loss
      weights; for MSE ``2 lambda_max(K(X_t))/(b c)``), ``P`` the diagonal an adaptive optimizer
      divides its step by, read from its state before this step (``I`` for SGD; at step 0 an
      adaptive optimizer has none and the values are NaN). ``estimate="hessian"`` uses the exact
      loss Hessian instead (Lanczos on the host). With ``probe=(x, y)`` the fixed probe set
      replaces ``X_t``.
    * ``sharpness_threshold``: ``coefficient / eta`` (``2/eta`` for SGD, ``38/eta`` for Adam at
      ``beta_1 = 0.9``); ``eta_crit = coefficient / sharpness``; ``eta_over_crit``.
    * a **catapult event** when ``eta - eta_crit > 1e-8`` (the thesis's count,
      ``catapult_events``) and **distinct catapults** (``catapults``: runs of consecutive events;
      ``catapults_margin``: events with ``eta > margin * eta_crit``);
    * a **loss spike** when the monitored loss of ``X_t`` grows over the step,
      ``L(w_{t+1}; X_t) > (1 + spike_rtol) L(w_t; X_t)`` — computed here, since Keras batch logs
      hold running epoch means. ``spike_event_match_rate`` is the fraction of spikes that
      coincide with an event, ``event_spike_rate`` the converse. (By the descent lemma a step
      below ``eta_crit`` on a locally quadratic loss cannot raise its own batch's loss, so
      this count is close to implied by an event.)
    * with ``spike_data=(x, y)`` (the training set), a **total-loss spike** when the loss over
      all of it grows over the step, ``L(w_{t+1}) > (1 + spike_rtol) L(w_t)``: the count of
      thesis Table 4.2, matched with events (``eta > eta_crit(X_t)``):
      ``total_loss_spikes``, ``total_spike_event_match_rate`` (spikes with an event / spikes),
      ``event_total_spike_rate``, and ``total_loss`` (``L(w_t)``). Costs two forward passes
      over ``spike_data`` per measured step.

    Logs (batch logs when measured, latest values in epoch logs): ``eta``, ``eta_crit``,
    ``eta_over_crit``, ``sharpness``, ``sharpness_threshold``, ``matrix_free`` (1 when the
    matrix-free Lanczos path measured, see ``eigensolver``), ``monitor_loss``,
    ``catapult_events``, ``catapults``, ``catapults_margin``, ``loss_spikes``,
    ``spike_event_match_rate``, ``event_spike_rate``. ``self.history`` keeps every measurement
    (lists keyed like the logs plus ``"step"`` (``optimizer.iterations`` before the update),
    ``"event"``, ``"spike"``, ``"loss_after"``).

    Notes:
        * How it measures: the monitor wraps ``model.train_step`` (:mod:`train_step_hook`; other
          in-step callbacks compose with it), so the measurement is traced into the compiled
          step, next to the update. Kernel: the structured NTK at ``w_t``, sharing Keras' own
          forward pass when the model allows it (no Dropout, BatchNormalization or other
          ``training``-dependent layers, no mixed precision, every trainable variable in a
          factorizable layer, Keras' own ``train_step``, SGD); otherwise a separate NTK pass.
          With one output unit the shared path also takes ``df/dz`` from Keras' own backward
          pass (``dL/dz`` over ``dL/df``, :class:`kerntk.ntk.empirical.ForwardNTK`), and a
          backward pass of its own only on steps where some ``dL/df_i`` is zero or tiny.
          Measured on ``benchmarks/callbacks.py``'s fcn at batch 128 (CPU time per step, 2
          shared cores): the loss of the batch after the update (a forward pass at
          ``w_{t+1}``) ~0.3 of a training step, the kernel and ``eigvalsh`` ~0.15-0.2.
          Models whose layers couple the batch in training mode (BatchNormalization) are
          measured in training mode, as ``fit`` trains them, through the Jacobian of the
          batched function (exact, slower); other models in inference mode (Dropout off).
          Adaptive optimizers: the Jacobian route with the metric ``P^{-1}``. Training is the
          same with and without the monitor.
        * With ``steps_per_execution = k > 1`` every due step of a block is measured, except
          with ``estimate="hessian"``, which runs Lanczos on the host at the weights of the
          first step of each block, the only step it measures.
        * Under a ``tf.distribute`` strategy the batch shards are gathered and the kernel of the
          global batch is computed on replica 0.
        * Scalars reach the host through a device-side buffer, so XLA ``jit_compile`` stays as
          compiled. ``estimate="hessian"`` sends the batch through a host callback, which turns
          ``jit_compile`` off while the monitor is attached. Sample weights are ignored.
        * A model whose output for one example depends on the rest of the batch through layers
          kerntk does not know is rejected (``f(x[:2]) != f(x)[:2]`` on the first measured step).

    Args:
        estimate: ``"auto"`` (the Gauss-Newton sharpness; for MSE the NTK estimate, which is
            the same number), ``"ntk"`` (MSE only), ``"gauss_newton"`` or ``"hessian"``.
        probe: optional ``(x, y)``: measure on this fixed set instead of the current batch.
        every_n_steps: measure every this many updates.
        margin: threshold factor of ``catapults_margin``.
        spike_rtol: relative tolerance of a loss spike.
        loss: loss to monitor (default: the model's compiled loss).
        method: empirical-NTK method (``"auto"``, ``"structured"``, ``"jacobian"``).
        eigensolver: where the forward pass is shared: ``"dense"`` (the ``n c x n c`` kernel
            and ``eigvalsh``), ``"lanczos"`` (matrix-free products with the factorized NTK,
            never the Gram, and ``lanczos_steps`` Lanczos steps warm-started from the previous
            measurement's Ritz vector: a lower bound that converges quadratically in the warm
            start's angle) or ``"auto"``: Lanczos past the batch size where its cost model
            (:func:`kerntk.ntk.in_step.prefer_matrix_free`, dense layers) says it is cheaper,
            when the loss Hessian is positive semi-definite. ``history["matrix_free"]`` says
            which ran. Under XLA (``jit_compile=True``) the dense path always runs: XLA
            compiles no variable of unknown shape (the warm start). Measured at n = 2000 on ``fcn(2, 1024)`` (``benchmarks/in_step.py``):
            the measurement with 2 Lanczos steps ~1.7-2.7x a plain GD step, 4 steps
            ~2.6-4.9x, vs ~110x with the dense kernel.
        spike_data: optional ``(x, y)``, the training set of the total-loss spikes (above).
        lanczos_steps: Lanczos steps per measurement (each one product; the last a
            vector-Jacobian product only). Accuracy measured against the dense value
            (``tests/test_monitor_setups.py``): MSE with one output, 2 steps: 8% low at the
            first warm start, then ~3.5x better per training step; 3-class cross-entropy
            stayed near 1% low with 2 and below ~1e-4 with 4 (the default).
        log_dir: optional TensorBoard directory (str or PathLike). Under ``<log_dir>/kerntk``
            (see :mod:`kerntk.callbacks._summary`) it writes the tag
            ``kerntk/critical_lr_figure``: the :meth:`plot` figure (loss with spikes, ``eta``
            vs ``eta_crit`` with catapult events) as an image, once per fit at its end, if
            anything was measured (step: the optimizer step then). The scalars are in ``logs``.
            ``None`` writes nothing.
    """

    def __init__(self, estimate: str = "auto", probe=None, every_n_steps: int = 1,
                 margin: float = 1.2, spike_rtol: float = 1e-6, loss=None, method: str = "auto",
                 eigensolver: str = "auto", lanczos_steps: int = 4, spike_data=None,
                 log_dir=None, **removed):
        require_tensorflow("kerntk.callbacks.CriticalLRMonitor")
        super().__init__()
        moved = sorted(set(removed) & _MOVED)
        if moved:
            raise ValueError(f"CriticalLRMonitor only measures; {', '.join(moved)} moved to "
                             f"their own callbacks: kerntk.callbacks.CatapultRaise(monitor, ...) "
                             f"raises the rate, kerntk.callbacks.DivergenceGuard(...) restores "
                             f"and backs off. Place them after the monitor in `callbacks`.")
        if removed:
            raise TypeError(f"CriticalLRMonitor got unexpected arguments: {sorted(removed)}.")
        self.log_dir = log_dir
        self._summary = summary_log(log_dir)
        if estimate not in ESTIMATES:
            raise ValueError(f"`estimate` must be one of {ESTIMATES}; got {estimate!r}.")
        if probe is not None:
            if not isinstance(probe, (tuple, list)) or len(probe) != 2:
                raise ValueError("`probe` must be a tuple (x, y).")
            px, py = check_probe("probe x", probe[0]), check_probe("probe y", probe[1])
            if px.shape[0] != py.shape[0]:
                raise ValueError("`probe` x and y have different numbers of rows.")
            probe = (px, py)
        if not is_integer(every_n_steps) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive integer; got {every_n_steps!r}.")
        if not (is_real(margin) and margin >= 1):
            raise ValueError(f"`margin` must be >= 1; got {margin!r}.")
        if not (is_real(spike_rtol) and spike_rtol >= 0):
            raise ValueError(f"`spike_rtol` must be >= 0; got {spike_rtol!r}.")
        self.estimate, self.probe, self.every_n_steps = estimate, probe, int(every_n_steps)
        self.margin, self.spike_rtol = float(margin), float(spike_rtol)
        if eigensolver not in ("auto", "dense", "lanczos"):
            raise ValueError(f"`eigensolver` must be 'auto', 'dense' or 'lanczos'; got "
                             f"{eigensolver!r}.")
        if not is_integer(lanczos_steps) or lanczos_steps < 1:
            raise ValueError(f"`lanczos_steps` must be a positive integer; got "
                             f"{lanczos_steps!r}.")
        self._spike = None
        if spike_data is not None:
            if not isinstance(spike_data, (tuple, list)) or len(spike_data) != 2:
                raise ValueError("`spike_data` must be a tuple (x, y): the training set.")
            sx = check_probe("spike_data x", spike_data[0])
            sy = np.asarray(spike_data[1])
            if sx.shape[0] != sy.shape[0]:
                raise ValueError("`spike_data` x and y have different numbers of rows.")
            self._spike = (tf.constant(sx), tf.constant(sy))
        self.spike_data = spike_data
        self.loss, self.method = loss, method
        self.eigensolver, self.lanczos_steps = eigensolver, int(lanczos_steps)
        self.history: Dict[str, List[float]] = {}
        self._hook = None
        # The previous Ritz vector (the warm start of the matrix-free Lanczos), flattened, and
        # its length in a variable of its own: Grappler infers the length of a variable of
        # unknown shape from an assignment in the same graph and folds a comparison of it
        # (measured: a stale warm start of the wrong length was used).
        self._warm_start = tf.Variable(tf.zeros((0,), tf.float64), trainable=False,
                                       shape=tf.TensorShape([None]))
        self._warm_size = tf.Variable(0, dtype=tf.int32, trainable=False)

    # ------------------------------------------------------------------ helpers
    @property
    def _optimizer(self):
        return self.model.optimizer

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self._optimizer.iterations))

    # ------------------------------------------------------------------ in the train step
    def _outputs(self, x) -> tf.Tensor:
        """``f(x)`` (n, c) float64 at the variables' current values (traced, inference mode,
        float32 or wider)."""
        with compute_dtype(self.model, self._dtype):
            vals, ntvals = read_values(self.model)
            return tf.cast(forward(self.model, vals, ntvals, x, False, self._dtype), tf.float64)

    def _mean_loss(self, y, f) -> tf.Tensor:
        """The monitored loss of outputs ``f`` (float64, traced): the model's compiled loss
        (or ``loss=``) as Keras' step computes it, without regularization terms."""
        return tf.cast(self._loss_of(y, tf.cast(f, tf.float64)), tf.float64)

    @staticmethod
    def _when(condition: tf.Tensor, fn) -> None:
        """Runs ``fn`` (which pushes records) in the graph when ``condition`` holds."""

        def run():
            fn()
            return tf.constant(True)

        tf.cond(condition, run, lambda: tf.constant(False))

    def _when_due(self, due: tf.Tensor, fn) -> None:
        """Runs ``fn`` when ``due`` (always true, and no ``tf.cond``, for every step on one
        replica)."""
        if self.every_n_steps == 1 and self._replicas == 1:
            fn()
        else:
            self._when(due, fn)

    def _graph_step(self, data, train_step, push):
        """The monitored training step (traced): the update ``w_t -> w_{t+1}`` on ``X_t`` plus,
        when due, a record for the host: the rate, ``lambda_max`` of the NTK of ``X_t`` (or of
        the probe) at ``w_t``, and the loss of ``X_t`` at ``w_t`` and ``w_{t+1}``."""
        model = self.model
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        opt = model.optimizer
        iteration = tf.cast(opt.iterations, tf.int64)  # read before the update
        lr = tf.cast(opt.learning_rate, tf.float64)
        if self.probe is not None:
            xm, ym = tf.constant(self.probe[0]), tf.constant(self.probe[1])
        else:
            if y is None:
                raise ValueError("CriticalLRMonitor needs targets y to monitor the loss.")
            if isinstance(x, (list, tuple, dict)):
                raise ValueError("CriticalLRMonitor supports models with one input array (the "
                                 "targets may be several, one per output).")
            xm, ym = x, y
            if self._replicas > 1:  # eta_crit of the global batch: gather the shards
                context = tf.distribute.get_replica_context()
                xm, ym = (tf.ensure_shape(context.all_gather(t, axis=0), [None] + t.shape[1:])
                          for t in (x, y))
        due = tf.equal(iteration % self.every_n_steps, 0) & tf.equal(TrainStepHook.replica(), 0)
        if self._loss_of is None:
            self._loss_of = spectral.output_loss(model, self.loss, output_shapes(model, xm))

        def total(key):
            """``{key: L(w; spike_data)}``, the loss over the whole ``spike_data`` now."""
            if self._spike is None:
                return {}
            xs, ys = self._spike
            return {key: self._mean_loss(ys, self._outputs(xs))}

        def after():
            """Record of ``w_{t+1}``: the loss of the same batch after the update."""
            push(dict(step=iteration, loss_after=self._mean_loss(ym, self._outputs(xm)),
                      **total("total_after")))

        if self._spike is not None:  # the total loss at w_t, before the update
            self._when_due(due, lambda: push(dict(step=iteration, **total("total_before"))))

        def before(K, f):
            """Record of ``w_t``: the sharpness from the kernel ``K`` (``J J^T``, or ``J P^-1
            J^T`` for adaptive optimizers) and the loss Hessian at the outputs ``f``, and the
            loss of ``f``."""
            f64 = tf.cast(f, tf.float64)
            H = spectral.loss_hessian_blocks(self._loss_of, ym, f64)
            push(dict(step=iteration, lr=lr, sharpness=spectral.gauss_newton_sharpness(K, H),
                      loss_before=self._mean_loss(ym, f64)))

        def coupling(f, f2):
            """Record of the batch-coupling check: ``f(x)[:2]`` vs ``f(x[:2])``."""
            push(dict(step=iteration, coupled=ntk_empirical.mixes_batch(
                f[:tf.shape(f2)[0]], f2, self._dtype)))

        if self.estimate == "hessian":
            # The Hessian spectrum needs Lanczos on the host, at w_t (on_train_batch_begin).
            self._when_due(due, lambda: push(dict(step=iteration, lr=lr, x=xm, y=ym,
                                                  loss_before=self._mean_loss(
                                                      ym, self._outputs(xm)))))
            logs = train_step(data)
            self._when_due(due, after)
            return logs
        shared = (self.probe is None and self._replicas == 1 and self.method != "jacobian"
                  and self._hook.keras_default_step and not self._rule.preconditioned
                  and not self._training)
        if shared:
            shared = ntk_empirical.shareable_forward(model, xm[:2], self._dtype)
        if shared:
            # The NTK shares the forward pass of Keras' own step (no NTK forward of its own).
            recorder = ntk_empirical.ForwardNTK(model, outputs="full")
            # Batch coupling is a property of the model: checked on the first measured step
            # only (its 2-row forward pass reads every weight: ~10% of a step of the fcn).
            self._when(due & (iteration < self._first_step + self.every_n_steps),
                       lambda: coupling(self._outputs(xm), self._outputs(xm[:2])))
            # With one output unit the cotangents df/dz come from Keras' own backward pass
            # too (ForwardNTK share_backward: dL/dz over dL/df, exact up to round-off).
            with recorder.recording(share_backward=True):
                logs = train_step(data)

            def measure():
                f64 = tf.cast(recorder.outputs_recorded, tf.float64)
                push(dict(step=iteration, lr=lr, loss_before=self._mean_loss(ym, f64),
                          **self._shared_sharpness(recorder, f64, ym)))
                after()

            self._when_due(due, measure)
            return logs
        def measure_before():
            with compute_dtype(model, self._dtype):
                if self._rule.preconditioned:
                    # P of the optimizer's latest update (the state before this step's).
                    inv_p = spectral.inverse_preconditioner(opt, model.trainable_variables)
                    K, f = preconditioned_kernel(
                        model, xm, inv_p, self._training, self._dtype, self._coupled)
                    f2 = f[:2] if self._coupled else self._outputs(xm[:2])
                else:
                    K, f, f2 = kernel_graph(
                        model, xm, None, "batched" if self._coupled else self.method, "full",
                        self._dtype, self._training)
            before(K, f)
            coupling(tf.cast(f, tf.float64), tf.cast(f2, tf.float64))

        self._when_due(due, measure_before)
        logs = train_step(data)
        self._when_due(due, after)
        return logs

    def _shared_sharpness(self, recorder, f64, ym) -> dict:
        """The Gauss-Newton sharpness from the recorded forward pass (traced): the dense kernel
        and ``eigvalsh``, or, past the batch size where it is cheaper (or always with
        ``eigensolver="lanczos"``), ``lanczos_steps`` matrix-free products with
        ``L^T K L`` (``H = L L^T`` the loss Hessian in the outputs) and Lanczos warm-started
        from the previous measurement's Ritz vector."""
        H = spectral.loss_hessian_blocks(self._loss_of, ym, f64)
        c = int(f64.shape[1])
        n_star = None
        if self.model.jit_compile:
            pass  # XLA compiles no variable of unknown shape (the warm start): dense
        elif self.eigensolver == "lanczos":
            n_star = 0
        elif self.eigensolver == "auto":
            n_star = recorder.matrix_free_min_batch(c, self.lanczos_steps)

        def dense():
            K, _ = recorder.kernel()
            return spectral.gauss_newton_sharpness(K, H)

        if n_star is None:
            return dict(sharpness=dense(), matrix_free=tf.constant(0.0, tf.float64))
        s, U = tf.linalg.eigh(0.5 * (H + tf.linalg.matrix_transpose(H)))
        # Positive semi-definite up to round-off (softmax cross-entropy has an exact zero).
        tol = 1e-10 * tf.reduce_max(tf.abs(s))
        use_free = ((tf.shape(f64)[0] >= n_star) & tf.reduce_all(s >= -tol)
                    & tf.reduce_all(tf.math.is_finite(f64)))

        def free():
            L = U * tf.sqrt(tf.maximum(s, 0.0))[:, None, :]
            op = recorder.operator()

            def matvec(u):
                return tf.einsum("iba,ib->ia", L, tf.cast(op(tf.einsum("iab,ib->ia", L, u)),
                                                          tf.float64))

            def quadratic_form(u):
                return op.quadratic_form(tf.einsum("iab,ib->ia", L, u))

            size = tf.size(f64)
            padded = tf.concat([self._warm_start.value(), tf.zeros([size], tf.float64)], 0)
            # A warm start of another batch size is zero: top_eigenvalue starts afresh.
            v0 = tf.reshape(padded[:size], tf.shape(f64)) * tf.cast(
                tf.equal(self._warm_size.value(), size), tf.float64)
            lam, v = top_eigenvalue(matvec, v0, self.lanczos_steps,
                                    quadratic_form=quadratic_form)
            with tf.control_dependencies([
                    self._warm_start.assign(tf.reshape(v, [-1]), read_value=False),
                    self._warm_size.assign(size, read_value=False)]):
                return tf.maximum(tf.identity(lam), tf.constant(0.0, tf.float64))

        return dict(sharpness=tf.cond(use_free, free, dense),
                    matrix_free=tf.cast(use_free, tf.float64))

    # ------------------------------------------------------------------ on the host
    def _records(self) -> List[dict]:
        """The steps measured since the last hook, in order (the records of a step merged)."""
        merged: Dict[int, dict] = {}
        for record in self._hook.pop():
            merged.setdefault(int(record["step"]), {}).update(record)
        return [merged[k] for k in sorted(merged)]

    def _sharpness(self, record: dict) -> float:
        if self._rule.preconditioned and int(record["step"]) == 0:
            return math.nan  # no preconditioner before the optimizer's first update
        if self.estimate != "hessian":
            if record.get("coupled", 0) == 1 and not self._coupled:
                raise ValueError("CriticalLRMonitor needs independent examples, but the "
                                 "model's output for an example depends on the rest of the "
                                 "batch (f(x[:2]) != f(x)[:2]) through layers kerntk does not "
                                 "know; use estimate='hessian'.")
            return float(record["sharpness"])
        end_weights = copy_values(self._weights())
        assign_values(self._weights(), self._start_weights)  # Lanczos at w_t
        try:
            return spectral.sharpness(self.model, record["x"], record["y"], loss=self.loss,
                                      optimizer=self._optimizer, estimate="hessian",
                                      training=False)
        finally:
            assign_values(self._weights(), end_weights)

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs=None):
        if self.model.optimizer is None:
            raise ValueError("CriticalLRMonitor needs a compiled model.")
        if self.estimate == "ntk" and not spectral.is_mse(
                self.loss if self.loss is not None else self.model.loss):
            raise ValueError("estimate='ntk' holds for Keras MSE (mean reduction) only; use "
                             "estimate='gauss_newton' (the same number for MSE) or 'hessian'.")
        self._rule = spectral.stability_rule(self.model.optimizer)
        if not self.model.optimizer.built:
            # An adaptive optimizer's slots are read in the step: create them now (Keras
            # would at the first update, after this hook).
            self.model.optimizer.build(self.model.trainable_variables)
        self._dtype = resolve_dtype(self.model, None)
        self._training = spectral.critical.resolve_training(self.model, None)
        self._coupled = bool(batch_mixing_layers(self.model, self._training))
        self._loss_of = None  # built at the first trace (the outputs' shapes need a batch)
        self._warm_start.assign(tf.zeros((0,), tf.float64))
        self._warm_size.assign(0)
        self._replicas = self.model.distribute_strategy.num_replicas_in_sync
        self._first_step = self._step()
        self.history = {}
        self.counts = dict(catapult_events=0, catapults=0, catapults_margin=0, loss_spikes=0,
                           matched=0)
        if self._spike is not None:
            self.counts.update(total_loss_spikes=0, total_matched=0)
        self._in_event_run = False
        self._start_weights, self._start_step = None, None
        self._hook = TrainStepHook(owner=self)
        # estimate="ntk" records only scalars: a device-side buffer keeps jit_compile working.
        fields = (None if self.estimate == "hessian" else
                  ("step", "lr", "sharpness", "loss_before", "loss_after", "coupled",
                   "matrix_free", "total_before", "total_after"))
        self._hook.install(self.model, self._graph_step, fields, fit=self.params)

    def on_train_end(self, logs=None):
        if self._hook is not None:
            self._hook.uninstall()
            self._hook = None
        if self._summary is not None:
            if self.history:
                self._summary.figure("kerntk/critical_lr_figure", self.plot, self._step())
            self._summary.flush()

    def on_train_batch_begin(self, batch, logs=None):
        if self.estimate != "hessian":
            return
        # Lanczos runs on the host and needs the weights the step starts from: only the first
        # step of a steps_per_execution block has them.
        step = self._step()
        due = step % self.every_n_steps == 0
        self._start_weights = copy_values(self._weights()) if due else None
        self._start_step = step

    def on_train_batch_end(self, batch, logs=None):
        try:
            self._process(self._records(), logs)
        except BaseException:
            # Keras skips on_train_end when fit raises: leave the model's train step as found.
            self._hook.uninstall()
            self._hook = None
            raise

    def _process(self, records: List[dict], logs) -> None:
        for record in records:
            step = int(record["step"])
            if self.estimate == "hessian" and (self._start_weights is None
                                           or step != self._start_step):
                continue
            loss_before, loss_after = float(record["loss_before"]), float(record["loss_after"])
            sharp = self._sharpness(record) if math.isfinite(loss_before) else math.nan
            eta_crit = self._rule.critical_lr(sharp) if math.isfinite(sharp) else math.nan
            totals = (float(record.get("total_before", math.nan)),
                      float(record.get("total_after", math.nan)))
            self._update(step, float(record["lr"]), eta_crit, loss_before, loss_after, logs,
                         sharp, totals, float(record.get("matrix_free", 0) == 1))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs.update(self._latest)

    # ------------------------------------------------------------------ bookkeeping
    def _update(self, step, eta, eta_crit, loss_before, loss_after, logs, sharp=math.nan,
                totals=(math.nan, math.nan), matrix_free=0.0):
        c = self.counts
        event = math.isfinite(eta_crit) and eta - eta_crit > 1e-8
        spike = not math.isfinite(loss_after) or loss_after > (1 + self.spike_rtol) * loss_before
        c["catapult_events"] += event
        c["catapults"] += event and not self._in_event_run
        c["catapults_margin"] += math.isfinite(eta_crit) and eta > self.margin * eta_crit
        c["loss_spikes"] += spike
        c["matched"] += spike and event
        self._in_event_run = event
        total_spike = None
        if self._spike is not None:
            before, after = totals
            total_spike = not math.isfinite(after) or after > (1 + self.spike_rtol) * before
            c["total_loss_spikes"] += total_spike
            c["total_matched"] += total_spike and event
        values = dict(eta=eta, eta_crit=eta_crit, eta_over_crit=eta / eta_crit if eta_crit else
                      math.inf, monitor_loss=loss_before, sharpness=sharp,
                      sharpness_threshold=self._rule.threshold(eta), matrix_free=matrix_free,
                      catapult_events=c["catapult_events"], catapults=c["catapults"],
                      catapults_margin=c["catapults_margin"], loss_spikes=c["loss_spikes"],
                      spike_event_match_rate=c["matched"] / c["loss_spikes"]
                      if c["loss_spikes"] else math.nan,
                      event_spike_rate=c["matched"] / c["catapult_events"]
                      if c["catapult_events"] else math.nan)
        if total_spike is not None:
            values.update(total_loss=totals[0], total_loss_spikes=c["total_loss_spikes"],
                          total_spike_event_match_rate=c["total_matched"] /
                          c["total_loss_spikes"] if c["total_loss_spikes"] else math.nan,
                          event_total_spike_rate=c["total_matched"] / c["catapult_events"]
                          if c["catapult_events"] else math.nan)
        self._latest = {k: float(v) for k, v in values.items()}
        h = self.history
        if total_spike is not None:
            h.setdefault("total_spike", []).append(bool(total_spike))
        h.setdefault("step", []).append(step)
        h.setdefault("event", []).append(bool(event))
        h.setdefault("spike", []).append(bool(spike))
        h.setdefault("loss_after", []).append(loss_after)
        for k, v in self._latest.items():
            h.setdefault(k, []).append(v)
        if logs is not None:
            logs.update(self._latest)

    # ------------------------------------------------------------------ plotting
    def plot(self, path: str) -> None:
        """Saves loss (log scale) with spikes, and eta vs eta_crit with catapult events, against
        the step."""
        import matplotlib.pyplot as plt  # optional dependency: pip install kerntk[plot]

        h = self.history
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        steps = np.asarray(h.get("step", []))
        axes[0].semilogy(steps, h.get("monitor_loss", []), label="loss")
        spikes = np.asarray(h.get("spike", []), bool)
        if spikes.any():
            axes[0].semilogy(steps[spikes], np.asarray(h["monitor_loss"])[spikes], "r.",
                             label="spike")
        axes[0].set(title="monitored loss", xlabel="step")
        axes[0].legend()
        axes[1].semilogy(steps, h.get("eta", []), label="$\\eta$")
        axes[1].semilogy(steps, h.get("eta_crit", []), label="$\\eta_{crit}$")
        events = np.asarray(h.get("event", []), bool)
        if events.any():
            axes[1].semilogy(steps[events], np.asarray(h["eta"])[events], "r.",
                             label="catapult event")
        axes[1].set(title="learning rate vs critical", xlabel="step")
        axes[1].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
