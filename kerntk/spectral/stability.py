"""The stability rule of each optimizer: the one place that says when a step size is too large.

Every optimizer kerntk supports updates, near a minimum and with its state frozen, like a linear
dynamical system on the quadratic model ``L(w) ~ 1/2 w^T H w``; the step is stable iff

    eta * lambda_max(P^{-1} H) < coefficient,

with ``P`` the diagonal the optimizer divides its step by (``I`` for SGD) and ``coefficient`` set
by its momentum. The **sharpness** is ``lambda_max(P^{-1} H)`` (computed as the symmetric
``P^{-1/2} H P^{-1/2}``), the **threshold** ``coefficient / eta`` and the **critical learning
rate** ``eta_crit = coefficient / sharpness``:

===============================  ==================================  ===========================
optimizer (Keras)                ``P``                               ``coefficient``
===============================  ==================================  ===========================
``SGD()``                        ``I``                               ``2`` (thesis Eq. 3.6)
``SGD(momentum=b)``              ``I``                               ``2 (1 + b)`` (heavy ball)
``SGD(momentum=b, nesterov)``    ``I``                               ``2 (1 + b) / (1 + 2 b)``
``Adam``/``AdamW`` (b1, b2)      ``(sqrt(v) + eps)/sqrt(1 - b2^t)``  ``(2 + 2 b1) / (1 - b1)``
``RMSprop(rho, momentum=b)``     ``sqrt(v + eps)`` (centered:        ``2 (1 + b)``
                                 ``sqrt(v - g_avg^2 + eps)``)
===============================  ==================================  ===========================

Adam (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability"): Keras' Adam
steps by ``eta sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps)``, i.e. ``eta * m_hat / P`` with
``P`` above and ``m_hat = m/(1 - b1^t)``; ``m`` is an exponential average of the gradients,
which is heavy-ball momentum ``b1`` with the rate scaled by ``1 - b1``, hence the coefficient
``2 (1 + b1)/(1 - b1)`` (38 at ``b1 = 0.9``). The bias correction ``1/(1 - b1^t)`` tends to 1 and
is left out (it is above 1.5 only in the first ``log(3)/(1 - b1)`` ~ 11 steps at ``b1 = 0.9``).
AdamW's decoupled weight decay adds ``eta * weight_decay`` (~0.004 eta) to the step's
contraction and is not modelled. ``P`` is read from the optimizer's own state after its
latest update (the preconditioner that update used); before the first update it does not
exist. RMSprop divides by ``sqrt(v + eps)`` (no bias correction); its momentum accumulates the
scaled steps (heavy ball).

Anything else (Adagrad, Nadam, Lion, ...) raises a ``ValueError`` naming what is supported:
a wrong threshold would be a silent wrong number.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

__all__ = ["StabilityRule", "stability_rule", "inverse_preconditioner", "SUPPORTED"]

SUPPORTED = ("SGD (plain, momentum, Nesterov)", "Adam", "AdamW", "RMSprop (plain, momentum, "
             "centered)")


@dataclasses.dataclass(frozen=True)
class StabilityRule:
    """When a step of one optimizer is stable: ``eta * sharpness < coefficient``.

    Attributes:
        optimizer: the optimizer's kind (``"sgd"``, ``"adam"``, ``"rmsprop"``), or ``"gd"``
            for a plain rule given by a momentum only.
        coefficient: ``eta_crit = coefficient / sharpness``.
        preconditioned: whether the sharpness is that of ``P^{-1} H`` (adaptive optimizers).
        formula: the rule in words, for logs and messages.
    """

    optimizer: str
    coefficient: float
    preconditioned: bool
    formula: str

    def critical_lr(self, sharpness: float) -> float:
        """``coefficient / sharpness``; ``inf`` when ``sharpness <= 0`` (no unstable
        direction)."""
        return float("inf") if not sharpness > 0 else self.coefficient / float(sharpness)

    def threshold(self, learning_rate: float) -> float:
        """The largest stable sharpness at this rate, ``coefficient / eta``."""
        return float("inf") if not learning_rate > 0 else self.coefficient / float(learning_rate)


def _unwrap(optimizer):
    import keras

    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):  # mixed precision
        return optimizer.inner_optimizer
    return optimizer


def _momentum_rule(kind: str, beta: float, nesterov: bool = False) -> StabilityRule:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"The momentum must be in [0, 1); got {beta!r}.")
    if nesterov:
        return StabilityRule(kind, 2.0 * (1 + beta) / (1 + 2 * beta), False,
                             f"eta < 2(1+b)/((1+2b) lambda_max(H)), b={beta:g} (Nesterov)")
    return StabilityRule(kind, 2.0 * (1 + beta), False,
                         f"eta < 2(1+b)/lambda_max(H), b={beta:g}" if beta else
                         "eta < 2/lambda_max(H)")


def stability_rule(optimizer=None, *, momentum: float = 0.0) -> StabilityRule:
    """The :class:`StabilityRule` of a Keras optimizer (``LossScaleOptimizer`` unwrapped), or,
    with ``optimizer=None``, of GD with heavy-ball ``momentum``.

    Raises:
        ValueError: an optimizer without a rule here (the message lists those supported), or
            ``momentum`` outside ``[0, 1)``.
    """
    if optimizer is None:
        return _momentum_rule("gd", float(momentum))
    if momentum:
        raise ValueError("Pass either `optimizer` or `momentum`, not both (the optimizer's own "
                         "momentum is used).")
    import keras

    opt = _unwrap(optimizer)
    if isinstance(opt, keras.optimizers.SGD):
        return _momentum_rule("sgd", float(opt.momentum or 0.0), bool(opt.nesterov))
    if isinstance(opt, keras.optimizers.Adam):  # AdamW too
        b1 = float(opt.beta_1)
        return StabilityRule("adam", (2.0 + 2.0 * b1) / (1.0 - b1), True,
                             f"eta < (2+2b1)/((1-b1) lambda_max(P^-1 H)), b1={b1:g}")
    if isinstance(opt, keras.optimizers.RMSprop):
        b = float(opt.momentum or 0.0)
        rule = _momentum_rule("rmsprop", b)
        return dataclasses.replace(rule, preconditioned=True,
                                   formula=rule.formula.replace("H)", "P^-1 H)"))
    raise ValueError(f"No stability rule for {type(opt).__name__}; supported: "
                     f"{', '.join(SUPPORTED)}.")


def inverse_preconditioner(optimizer, variables) -> Optional[List]:
    """``P^{-1}`` of an adaptive optimizer, one tensor per variable of ``variables`` (its
    trainable variables, same shapes), read from its state after its latest update; ``None``
    for SGD. Works eagerly and inside a ``tf.function``.

    Raises:
        ValueError: before the optimizer's first update (the state is empty), or an optimizer
            without a rule (see :func:`stability_rule`).
    """
    import tensorflow as tf

    rule = stability_rule(optimizer)
    if not rule.preconditioned:
        return None
    opt = _unwrap(optimizer)
    if not opt.built:
        raise ValueError(f"{type(opt).__name__} has no state yet: its preconditioner exists after "
                         f"its first update.")
    if tf.executing_eagerly() and int(opt.iterations.numpy()) == 0:
        raise ValueError(f"{type(opt).__name__} has taken no step yet: its preconditioner exists "
                         f"after its first update.")
    from kerntk._keras_compat import optimizer_slot

    out = []
    t = tf.cast(opt.iterations, tf.float64)
    for v in variables:
        if rule.optimizer == "adam":
            vel = tf.cast(optimizer_slot(opt, "_velocity_hats" if opt.amsgrad else
                                         "_velocities", v), tf.float64)
            # P = (sqrt(v) + eps)/sqrt(1 - b2^t): Keras folds sqrt(1 - b2^t) into the rate.
            correction = tf.sqrt(1.0 - tf.pow(tf.constant(float(opt.beta_2), tf.float64), t))
            out.append(correction / (tf.sqrt(vel) + float(opt.epsilon)))
        else:  # rmsprop
            denominator = tf.cast(optimizer_slot(opt, "_velocities", v), tf.float64)
            if opt.centered:
                avg = tf.cast(optimizer_slot(opt, "_average_gradients", v), tf.float64)
                denominator = denominator - tf.square(avg)
            out.append(tf.math.rsqrt(denominator + float(opt.epsilon)))
    return out
