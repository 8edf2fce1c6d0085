"""Critical learning rate (thesis Ch. 3-4) for any Keras loss and supported optimizer.

``eta_crit = coefficient / sharpness`` with the optimizer's rule from
:mod:`kerntk.spectral.stability` (plain GD: ``2 / lambda_max(H_L)``, thesis Def. 3.2.2,
Eq. 3.6). The sharpness is that of the loss Hessian, or of its Gauss-Newton part ``J^T H_f J``
(``J`` the ``(n c) x P`` Jacobian of the outputs, ``H_f`` the loss Hessian in the outputs),
computed from the full-output NTK ``K_full = J J^T`` as the top eigenvalue of the small
``(n c) x (n c)`` matrix ``H_f^{1/2} K_full H_f^{1/2}`` (:func:`gauss_newton_sharpness`); with an
adaptive optimizer's diagonal preconditioner ``P`` the kernel is ``J P^{-1} J^T``.

Normalization of the NTK estimate (Keras ``MeanSquaredError`` averages over the batch AND the
outputs): for ``n`` samples with ``c`` outputs, ``L = (1/(n c)) sum_{i,o} (f_io - y_io)^2``, so
``H_f = (2/(n c)) I`` and the Gauss-Newton sharpness is ``2 lambda_max(K_full)/(n c)``, hence

    eta_crit ~= 2 / lambda_max(H_GN) = n c / lambda_max(K_full),

which is the thesis's ``n / lambda_max(K)`` for scalar outputs (App. C.1). (The traced kernel
``sum_o K_oo`` is not interchangeable: at infinite width ``K_full = K ⊗ I_c`` while the traced
one is ``c K``.) For a model linear in its weights ``H_L = H_GN`` exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from kerntk._backend import require_tensorflow
from kerntk.spectral.curvature import (_prepare_model, gauss_newton_operator,
                                      gauss_newton_sharpness, hessian_operator,
                                      loss_hessian_blocks, output_loss, _default_tol)
from kerntk.spectral.eigen import top_eigenpairs
from kerntk.spectral.stability import inverse_preconditioner, stability_rule

__all__ = ["critical_lr", "sharpness", "batch_sharpness", "ntk_critical_lr", "is_mse",
           "ESTIMATES"]

ESTIMATES = ("auto", "ntk", "gauss_newton", "hessian")


def is_mse(loss) -> bool:
    """Whether ``loss`` is Keras' mean squared error averaged over the batch (the loss whose
    critical learning rate :func:`ntk_critical_lr` gives)."""
    import keras

    if isinstance(loss, str):
        return loss.lower() in ("mse", "mean_squared_error", "meansquarederror")
    if isinstance(loss, keras.losses.MeanSquaredError):
        return loss.reduction in ("sum_over_batch_size", "mean", None)
    return loss is keras.losses.mean_squared_error


def ntk_critical_lr(lambda_max: float, rows: int, momentum: float = 0.0) -> float:
    """``eta_crit = (1 + beta) n c / lambda_max(K_full)`` for Keras MSE, from the top eigenvalue
    of the ``n c x n c`` NTK (``rows = n c``); ``inf`` when ``lambda_max <= 0``. See
    :func:`critical_lr`."""
    return math.inf if lambda_max <= 0 else (1.0 + momentum) * rows / lambda_max



def batch_sharpness(model, x, y, loss_of, inverse_p, training: bool, method: str, dtype: str):
    """Traced: ``(sharpness, f)`` on the batch ``x``: ``lambda_max`` of the Gauss-Newton matrix
    ``P^{-1/2} J^T H_f J P^{-1/2}`` at the variables' current values (``inverse_p`` the
    preconditioner's inverse per trainable variable, or ``None``), and the outputs ``f``
    ``(n, c)``. ``loss_of`` from :func:`kerntk.spectral.curvature.output_loss`. The kernel is
    the structured NTK where the engine can prove it (``method``), the Jacobian of the batched
    function for models that couple the batch in this ``training`` mode, and the Jacobian
    with the metric ``P^{-1}`` for adaptive optimizers."""
    import tensorflow as tf

    from kerntk.ntk.forward import batch_mixing_layers
    from kerntk.ntk.jacobian import preconditioned_kernel
    from kerntk.ntk.traced import kernel_graph

    batched = method == "batched" or bool(batch_mixing_layers(model, training))
    if inverse_p is None:
        K, f, _ = kernel_graph(model, x, None, "batched" if batched else method, "full", dtype,
                               training)
    else:
        K, f = preconditioned_kernel(model, x, inverse_p, training, dtype, batched)
    H = loss_hessian_blocks(loss_of, y, tf.cast(f, tf.float64))
    return gauss_newton_sharpness(K, H), f


def resolve_training(model, training: Optional[bool]) -> bool:
    """``None``: the mode ``fit`` trains where it changes the kernel's meaning (layers that
    couple the batch, e.g. BatchNormalization, use batch statistics in ``fit``), inference
    mode otherwise (Dropout off)."""
    if training is not None:
        return bool(training)
    from kerntk.ntk.forward import batch_mixing_layers
    return bool(batch_mixing_layers(model, True))


def sharpness(model, x, y=None, *, loss="mse", optimizer=None, estimate: str = "auto",
              training: Optional[bool] = None, matrix_free: bool = False,
              tol: Optional[float] = None, maxiter: Optional[int] = None,
              seed: int = 0) -> float:
    """The sharpness the optimizer's stability rule compares with ``coefficient / eta``:
    ``lambda_max(P^{-1/2} H P^{-1/2})`` (``P = I`` for SGD), ``H`` the loss Hessian
    (``estimate="hessian"``) or its Gauss-Newton part (otherwise). Arguments as
    :func:`critical_lr`."""
    require_tensorflow("kerntk.spectral.sharpness")
    import tensorflow as tf

    from kerntk.ntk import empirical_ntk
    from kerntk.ntk.forward import batch_mixing_layers, output_shapes, resolve_dtype

    if estimate not in ESTIMATES:
        raise ValueError(f"`estimate` must be one of {ESTIMATES}; got {estimate!r}.")
    if model is None or x is None:
        raise ValueError("`model` and `x` are required.")
    rule = stability_rule(optimizer)
    loss_value = loss
    mse = loss is not None and is_mse(loss)
    if estimate == "auto":
        estimate = "ntk" if mse and not rule.preconditioned else "gauss_newton"
    if estimate == "ntk" and not mse:
        raise ValueError("estimate='ntk' (n c / lambda_max(K)) holds for Keras MSE (mean "
                         "reduction) only; use estimate='gauss_newton' or 'hessian'.")
    if estimate == "ntk" and rule.preconditioned:
        estimate = "gauss_newton"  # the same number for MSE, with the metric P^-1
    if y is None and not mse:
        raise ValueError(f"estimate={estimate!r} with this loss needs the targets `y`.")
    operator = estimate == "hessian" or (matrix_free and estimate == "gauss_newton")
    if not operator:
        _prepare_model(model, x)  # the operators validate and build the model themselves
    training = resolve_training(model, training)
    x = np.asarray(x)
    inv_p = None
    if rule.preconditioned:
        inv_p = inverse_preconditioner(optimizer, model.trainable_variables)
    if operator:
        if training:
            raise ValueError("estimate='hessian' and matrix_free run the model in inference "
                             "mode; pass training=False (or use the dense Gauss-Newton "
                             "estimate for models that couple the batch).")
        if y is None:
            raise ValueError(f"estimate={estimate!r} needs the targets `y`.")
        make = hessian_operator if estimate == "hessian" else gauss_newton_operator
        op = make(model, loss, x, y, inverse_preconditioner=inv_p)
        tol = _default_tol(model.trainable_variables[0].dtype) if tol is None else tol
        res = top_eigenpairs(op, 1, "lanczos", tol=tol, maxiter=maxiter, seed=seed)
        return max(float(res.eigenvalues[0]), 0.0)
    shapes = output_shapes(model, x)
    c = int(sum(np.prod(s) for s in shapes))
    n = x.shape[0]
    if estimate == "ntk":
        if matrix_free:
            from kerntk.ntk import ntk_operator
            op = ntk_operator(model, x, outputs="full" if c > 1 else "trace")
            res = top_eigenpairs(op, 1, "lanczos", tol=tol or 1e-6, maxiter=maxiter, seed=seed)
        else:
            coupled = bool(batch_mixing_layers(model, training))
            K = empirical_ntk(model, x, outputs="full" if c > 1 else "trace", training=training,
                              method="jacobian" if coupled else "auto")
            res = top_eigenpairs(K, 1, "auto", tol=tol or 1e-10, maxiter=maxiter, seed=seed)
        return max(2.0 * float(res.eigenvalues[0]) / (n * c), 0.0)
    # Gauss-Newton from the (n c) x (n c) kernel.
    loss_of = output_loss(model, None if loss_value is None else loss_value, shapes)
    dtype = resolve_dtype(model, None)
    if y is None:
        y = np.zeros((n, c))
    y = tf.nest.map_structure(tf.convert_to_tensor, y)
    if inv_p is None:
        coupled = bool(batch_mixing_layers(model, training))
        K, f = empirical_ntk(model, x, outputs="full", training=training, return_outputs=True,
                             method="jacobian" if coupled else "auto")
        H = loss_hessian_blocks(loss_of, y, tf.constant(f, tf.float64))
        return float(gauss_newton_sharpness(tf.constant(K), H))
    xt = tf.convert_to_tensor(x, dtype=model.inputs[0].dtype if getattr(model, "inputs", None)
                              else dtype)
    fn = tf.function(lambda xb, yb: batch_sharpness(model, xb, yb, loss_of, inv_p, training,
                                                    "auto", dtype), autograph=False)
    return float(fn(xt, y)[0])


def critical_lr(model=None, x=None, y=None, *, loss="mse", optimizer=None,
                estimate: Optional[str] = None, method: Optional[str] = None,
                momentum: float = 0.0, kernel=None, matrix_free: bool = False,
                training: Optional[bool] = None, tol: Optional[float] = None,
                maxiter: Optional[int] = None, seed: int = 0) -> float:
    """Critical learning rate ``eta_crit = coefficient / sharpness`` of ``optimizer`` on the
    batch ``x`` (thesis Eq. 3.6; rules in :mod:`kerntk.spectral.stability`).

    Estimates of the sharpness:
        * ``"ntk"`` (Keras MSE, SGD; thesis App. C.1): ``2 lambda_max(K_full)/(n c)`` from the
          ``nc x nc`` empirical NTK (``matrix_free=True``: ``kerntk.ntk.ntk_operator`` and
          Lanczos), i.e. ``eta_crit = coefficient n c / (2 lambda_max(K_full))``; or from a
          precomputed ``kernel`` (its rows all ``n c`` sample-outputs; ``model``/``x`` then
          not needed).
        * ``"gauss_newton"`` (any loss with curvature: cross-entropies with probabilities or
          logits, Huber, ...; MAE is refused): ``lambda_max(H_f^{1/2} K H_f^{1/2})`` with
          ``K = J P^{-1} J^T`` (:func:`gauss_newton_sharpness`); ``matrix_free=True`` runs
          Lanczos on the Gauss-Newton operator instead of forming ``K``.
        * ``"hessian"``: the exact loss Hessian by HVP Lanczos, preconditioned likewise.
        * ``"auto"`` (default): ``"ntk"`` for MSE with SGD, ``"gauss_newton"`` otherwise.

    Args:
        model, x, y: the model and a batch (``y`` needed except for MSE).
        loss: a Keras loss, its name, or ``None`` for the model's compiled loss (several
            outputs with their loss weights).
        optimizer: a Keras optimizer (SGD with or without momentum/Nesterov, Adam, AdamW,
            RMSprop); an adaptive optimizer's preconditioner is read from its state, so it must
            have taken a step. ``None``: plain GD with heavy-ball ``momentum``.
        estimate: see above. ``method`` is its former name (the same values).
        training: the mode of the forward pass; ``None`` picks the one ``fit`` trains for
            models whose layers couple the batch (BatchNormalization: batch statistics, the
            Jacobian of the batched function), inference mode otherwise.
        tol, maxiter, seed: Lanczos settings (:func:`kerntk.spectral.top_eigenpairs`).

    Returns:
        ``eta_crit`` as a float (``inf`` when the sharpness is ``<= 0``).
    """
    if method is not None:
        if estimate is not None and estimate != method:
            raise ValueError("Pass `estimate` (or its former name `method`), not both.")
        estimate = method
    estimate = "auto" if estimate is None else estimate
    if estimate not in ESTIMATES:
        raise ValueError(f"`estimate` must be one of {ESTIMATES}; got {estimate!r}.")
    if not (0.0 <= momentum < 1.0):
        raise ValueError(f"`momentum` must be in [0, 1); got {momentum!r}.")
    rule = stability_rule(optimizer, momentum=momentum)
    if kernel is not None:
        if estimate not in ("auto", "ntk") or not is_mse(loss) or rule.preconditioned:
            raise ValueError("A precomputed `kernel` gives the NTK estimate (Keras MSE, SGD).")
        res = top_eigenpairs(kernel, 1, "auto", tol=tol or 1e-10, maxiter=maxiter, seed=seed)
        rows = res.eigenvectors.shape[0]
        return rule.critical_lr(2.0 * float(res.eigenvalues[0]) / rows)
    if model is None or x is None:
        raise ValueError("`model` and `x` are required (or a precomputed `kernel`).")
    require_tensorflow("kerntk.spectral.critical_lr" if estimate != "hessian" else
                       f"kerntk.spectral.critical_lr(method={estimate!r})")
    if estimate == "hessian" and y is None:
        raise ValueError("estimate='hessian' needs `model`, `x` and `y`.")
    if estimate == "gauss_newton" and y is None and not (loss is not None and is_mse(loss)):
        raise ValueError("estimate='gauss_newton' needs `model`, `x` and `y`.")
    return rule.critical_lr(sharpness(model, x, y, loss=loss, optimizer=optimizer,
                                      estimate=estimate, training=training,
                                      matrix_free=matrix_free, tol=tol, maxiter=maxiter,
                                      seed=seed))
