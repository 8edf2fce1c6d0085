"""Empirical and analytic neural tangent kernels.

* :func:`empirical_ntk` — the exact n x n (or nc x nc) empirical NTK of a Keras model
  (:mod:`kerntk.ntk.empirical`: conventions and the cost of each method).
* :func:`ntk_operator` — the matrix-free ``K @ v`` as a scipy ``LinearOperator``.
* :mod:`kerntk.ntk.analytic` — infinite-width NTK/NNGP and NTK-regime kernel regression.
* Inside a compiled training step: :func:`kerntk.ntk.empirical.kernel_fn` and
  :class:`kerntk.ntk.empirical.ForwardNTK` (the NTK from the step's own forward pass).
"""

from kerntk.ntk import analytic
from kerntk.ntk.empirical import empirical_ntk
from kerntk.ntk.operator import ntk_operator

__all__ = ["analytic", "empirical_ntk", "ntk_operator"]
