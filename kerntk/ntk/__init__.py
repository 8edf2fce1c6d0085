"""Empirical (and analytic) neural tangent kernels.

* :func:`empirical_ntk` — the exact n x n (or nc x nc) empirical NTK of a Keras model.
* :func:`ntk_operator` — the matrix-free ``K @ v`` as a scipy ``LinearOperator``.
"""

from kerntk.ntk.empirical import empirical_ntk
from kerntk.ntk.operator import ntk_operator

__all__ = ["empirical_ntk", "ntk_operator"]
