"""Top eigenpairs of kernels and loss Hessians, stability rules and the critical learning rate
(thesis Ch. 3-4).

* :mod:`~kerntk.spectral.eigen` — :func:`top_eigenpairs`: dense ``eigh`` or Lanczos on a matrix
  or any ``LinearOperator`` (e.g. ``kerntk.ntk.ntk_operator``); float64 throughout.
* :mod:`~kerntk.spectral.curvature` — the exact loss Hessian and its Gauss-Newton part as
  matrix-free operators; the loss Hessian in the outputs; the Gauss-Newton sharpness from a
  kernel.
* :mod:`~kerntk.spectral.stability` — the stability rule of each optimizer (SGD, momentum,
  Nesterov, Adam/AdamW, RMSprop): the one place that says when a rate is too large.
* :mod:`~kerntk.spectral.critical` — :func:`critical_lr` and :func:`sharpness` of a model on a
  batch, for any loss and supported optimizer.
"""

from kerntk.spectral.critical import (ESTIMATES, batch_sharpness, critical_lr, is_mse,
                                      ntk_critical_lr, sharpness)
from kerntk.spectral.curvature import (gauss_newton_operator, gauss_newton_sharpness,
                                       gauss_newton_top_eigenpairs, hessian_operator,
                                       hessian_top_eigenpairs, loss_hessian_blocks, output_loss)
from kerntk.spectral.eigen import EigenResult, top_eigenpairs
from kerntk.spectral.stability import StabilityRule, inverse_preconditioner, stability_rule

__all__ = ["EigenResult", "top_eigenpairs", "hessian_operator", "gauss_newton_operator",
           "hessian_top_eigenpairs", "gauss_newton_top_eigenpairs", "gauss_newton_sharpness",
           "loss_hessian_blocks", "output_loss", "critical_lr", "sharpness", "batch_sharpness",
           "ntk_critical_lr", "is_mse", "StabilityRule", "stability_rule",
           "inverse_preconditioner", "ESTIMATES"]
