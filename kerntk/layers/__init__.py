"""Layers that go in a model: NTK-parameterized linear maps and Hadamard-product polynomial blocks."""

from kerntk.layers.ntk_conv import BaseNTKConv, NTKConv1D, NTKConv2D
from kerntk.layers.ntk_dense import NTKDense
from kerntk.layers.polynomial import PolyConv2D, PolyDense

__all__ = ["BaseNTKConv", "NTKConv1D", "NTKConv2D", "NTKDense", "PolyConv2D", "PolyDense"]

from kerntk.layers.dag import DAG  # noqa: E402

__all__ += ["DAG"]

from kerntk.layers.general_quadratic import GeneralQuadratic  # noqa: E402
from kerntk.layers.symmetric_two_layer import SymmetricTwoLayer  # noqa: E402

__all__ += ["GeneralQuadratic", "SymmetricTwoLayer"]
