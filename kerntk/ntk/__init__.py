"""Empirical and analytic neural tangent kernels.

* :func:`empirical_ntk` — the exact n x n (or nc x nc) empirical NTK of a Keras model
  (:mod:`kerntk.ntk.empirical`: conventions and the cost of each method).
* :func:`ntk_operator` — the matrix-free ``K @ v`` as a scipy ``LinearOperator``.
* :mod:`kerntk.ntk.analytic` — infinite-width NTK/NNGP and NTK-regime kernel regression.
* Inside a compiled training step: :func:`kerntk.ntk.empirical.kernel_fn` and
  :class:`kerntk.ntk.empirical.ForwardNTK` (the NTK from the step's own forward pass; defined in
  :mod:`kerntk.ntk.in_step`).
* :func:`register_factorization` — teach the structured NTK a layer (:mod:`kerntk.ntk.registry`;
  ``registry.explain(model)`` says which layers are structured).
* :mod:`kerntk.ntk.memory` — the peak memory of a request, estimated before anything is
  allocated; blocks chosen to fit, :class:`~kerntk.ntk.memory.NTKMemoryError` otherwise.

Engine modules, one job each: :mod:`~kerntk.ntk.forward` (stateless forward, dtype, output
flattening), :mod:`~kerntk.ntk.registry` (layer factorizations), :mod:`~kerntk.ntk.blocks`
(per-layer Gram blocks), :mod:`~kerntk.ntk.jacobian` (exact fallback), :mod:`~kerntk.ntk.cache`
(compile cache), :mod:`~kerntk.ntk.traced` (the kernel of one batch), :mod:`~kerntk.ntk.memory`
(memory plans), :mod:`~kerntk.ntk.empirical` (tiling API), :mod:`~kerntk.ntk.in_step` (in-step
API), :mod:`~kerntk.ntk.operator` (matrix-free products).
"""

from kerntk.ntk import analytic
from kerntk.ntk import memory
from kerntk.ntk import registry
from kerntk.ntk.empirical import empirical_ntk
from kerntk.ntk.memory import NTKMemoryError
from kerntk.ntk.operator import ntk_operator
from kerntk.ntk.registry import register_factorization

__all__ = ["NTKMemoryError", "analytic", "empirical_ntk", "memory", "ntk_operator",
           "register_factorization", "registry"]
