"""Hadamard-product polynomial blocks (paper 000 Eq. 1; CCP form of Chrysos et al.'s P-nets).

A block of degree ``N`` has ``N`` linear branches of the same input, ``z_n = W_std W_n a / sqrt(fan_in)
(+ b_std b_n)``, stored as one kernel whose output axis holds the branches side by side
(``kernel[..., n * units + j]`` is unit ``j`` of branch ``n``). With ``t_n = s * act(z_n)``:

* without skip (``form="pnn"``, paper 000 Eq. 1):  ``y_1 = t_1``, ``y_n = t_n * y_{n-1}``;
* with skip (``form="ccp"``):  ``y_1 = t_1``, ``y_n = (t_n * y_{n-1} + y_{n-1}) / c``.

Scales (derived, not taken from the garbled ``sqrt(2/m)`` of the text extraction): for standardized
inputs (``|a|^2 = fan_in``, i.e. O(1) features, the NTK convention) each ``z_n`` has variance
``v = W_std^2 (+ b_std^2)`` at init, independent across branches and units. ``s = 1/sqrt(E[act(sqrt(v)
g)^2])`` (``sqrt(2/v)`` for ReLU, ``1/sqrt(v)`` for linear) makes ``E[t_n^2] = 1``, so without skip
``E[y_N^2] = 1`` for every degree and width. With skip ``E[(1 + t)^2] = 2 + 2 E[t]`` and
``c = sqrt(2 + 2 E[t])`` (``E[t] = 1/sqrt(pi)`` for ReLU, 0 for linear) keeps it at 1 as well.
For inputs of another scale ``q = |a|^2/fan_in`` the second moment is ``q^N`` without skip.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from kerntk.layers.ntk_conv import BaseNTKConv
from kerntk.layers.ntk_dense import NTKDense
from kerntk.layers.parameterization import check_units

FORMS = {"pnn": ("relu", False), "ccp": (None, True)}
_AUTO = "auto"


def _resolve(form, activation, skip):
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {tuple(FORMS)}; got {form!r}.")
    default_activation, default_skip = FORMS[form]
    activation = default_activation if activation == _AUTO else activation
    if activation in (None, "linear"):
        activation = None
    elif activation != "relu":
        raise ValueError(f"`activation` of a polynomial block must be 'relu' or None; "
                         f"got {activation!r}.")
    skip = default_skip if skip == _AUTO else skip
    if not isinstance(skip, bool):
        raise ValueError(f"`skip` must be a bool or 'auto'; got {skip!r}.")
    return activation, skip


class PolynomialMixin:
    """Degree, form and the Hadamard-product combination shared by PolyDense and PolyConv2D."""

    def _init_polynomial(self, degree, form, skip):
        self.degree = check_units("degree", degree)
        self.form = form
        self.skip = skip
        variance = self.W_std ** 2 + (self.b_std ** 2 if self.use_bias else 0.0)
        relu = self.activation is keras.activations.relu
        # Branch scale s with E[t^2] = 1 and the skip normaliser c (module docstring).
        self.branch_scale = math.sqrt((2.0 if relu else 1.0) / variance)
        mean_t = 1.0 / math.sqrt(math.pi) if relu else 0.0
        self.skip_normalizer = math.sqrt(2.0 + 2.0 * mean_t)

    def _linear_units(self) -> int:
        return self.degree * super()._linear_units()

    def postactivation(self, z):
        """Hadamard-product combination of the ``degree`` branches in ``z``."""
        branches = ops.split(z, self.degree, axis=-1)
        y = None
        for zn in branches:
            t = self.activation(zn) * self.branch_scale
            if y is None:
                y = t
            elif self.skip:
                y = (t * y + y) / self.skip_normalizer
            else:
                y = t * y
        return y

    def _polynomial_config(self, config):
        config.update(degree=self.degree, form=self.form, skip=self.skip)
        return config


@keras.saving.register_keras_serializable(package="kerntk")
class PolyDense(PolynomialMixin, NTKDense):
    """Dense Hadamard-product polynomial block of degree ``N`` (paper 000 Eq. 1).

    ``y = t_1 * t_2 * ... * t_N`` with ``t_n = s * act(W_std W_n a / sqrt(fan_in))`` (``form="pnn"``)
    or the CCP recursion ``y_n = (t_n * y_{n-1} + y_{n-1}) / c`` (``form="ccp"``); the scales keep
    the output's second moment at 1 at init for every degree and width (see
    :mod:`kerntk.layers.polynomial`). Follow it with a linear ``NTKDense`` head for a PNN
    (``kerntk.models.pnn``).

    Args:
        units: positive int, width of the block's output (and of each branch).
        degree: positive int ``N``, number of Hadamard factors.
        form: ``"pnn"`` (defaults: ReLU, no skip) or ``"ccp"`` (defaults: linear, skip).
        activation: ``"relu"`` or ``None``; ``"auto"`` takes the form's default.
        skip: bool; ``"auto"`` takes the form's default.
        use_bias: branch biases (default off, as in Eq. 1).
        W_std, b_std, parameterization, seed: as :class:`kerntk.layers.NTKDense`.

    Input shape: ``(batch, ..., fan_in)``. Output shape: ``(batch, ..., units)``.
    The kernel has shape ``(fan_in, degree * units)``.

    Example:
        >>> y = PolyDense(256, degree=3)(keras.random.normal((8, 10)))   # (8, 256)
    """

    def __init__(self, units: int, degree: int, form: str = "pnn", activation=_AUTO, skip=_AUTO,
                 use_bias: bool = False, W_std: float = 1.0, b_std: float = 1.0,
                 parameterization: str = "ntk", seed=None, **kwargs):
        activation, skip = _resolve(form, activation, skip)
        super().__init__(units, activation=activation, use_bias=use_bias, W_std=W_std,
                         b_std=b_std, parameterization=parameterization, seed=seed, **kwargs)
        self._init_polynomial(degree, form, skip)

    def get_config(self):
        return self._polynomial_config(super().get_config())


@keras.saving.register_keras_serializable(package="kerntk")
class PolyConv2D(PolynomialMixin, BaseNTKConv):
    """Convolutional Hadamard-product polynomial block (paper 000 Table 1 "NN-Hp (Conv)").

    The branches of :class:`PolyDense` become NTK-parameterized 2-D convolutions of the same input
    (one kernel of shape ``(kh, kw, in_channels, degree * filters)``); the combination is the same.

    Args:
        filters: positive int, output channels.
        kernel_size, strides, padding: as :class:`kerntk.layers.NTKConv2D`.
        degree, form, activation, skip, use_bias, W_std, b_std, parameterization, seed: as
            :class:`PolyDense`.

    Input shape: ``(batch, height, width, channels)``; output ``(batch, h', w', filters)``.
    """

    def __init__(self, filters: int, kernel_size, degree: int, strides=1, padding="valid",
                 form: str = "pnn", activation=_AUTO, skip=_AUTO, use_bias: bool = False,
                 W_std: float = 1.0, b_std: float = 1.0, parameterization: str = "ntk", seed=None,
                 **kwargs):
        activation, skip = _resolve(form, activation, skip)
        super().__init__(2, filters, kernel_size, strides, padding, activation, use_bias, W_std,
                         b_std, parameterization, seed, **kwargs)
        self._init_polynomial(degree, form, skip)

    def get_config(self):
        return self._polynomial_config(super().get_config())
