"""Shared machinery of kerntk's NTK-parameterized linear layers (dense and conv)."""

from __future__ import annotations

from typing import Optional

import keras

from kerntk.layers.parameterization import (LinearParameterization, check_parameterization,
                                            check_positive, check_seed)


class NTKLinearBase(keras.layers.Layer):
    """Base of NTKDense and the NTK convolutions: ``activation(m_W * lin(a, W) + m_b * b)``.

    Subclasses implement ``_linear(inputs)`` (``a @ W`` or ``conv(a, W)``) and ``build`` (calling
    :meth:`_build_linear`). The engine reads ``kernel``, ``bias`` (or ``None``),
    ``kernel_multiplier``/``bias_multiplier`` (``m_W``, ``m_b``) and calls :meth:`preactivation`
    and :meth:`postactivation`, whose composition is :meth:`call`.
    """

    def __init__(self, activation=None, use_bias: bool = True, W_std: float = 1.0,
                 b_std: float = 1.0, parameterization: str = "ntk", seed: Optional[int] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.W_std = check_positive("W_std", W_std)
        self.b_std = check_positive("b_std", b_std, allow_zero=True)
        self.parameterization = check_parameterization(parameterization)
        self.seed = check_seed(seed)

    def _linear_units(self) -> int:
        """Width of the linear map; layers with several branches widen it."""
        raise NotImplementedError

    def _linear(self, inputs):
        raise NotImplementedError

    def _build_linear(self, fan_in: int, kernel_shape: tuple) -> None:
        self._param = LinearParameterization(self.parameterization, self.W_std, self.b_std,
                                             int(fan_in), self.seed)
        self.kernel = self.add_weight(name="kernel", shape=kernel_shape,
                                      initializer=self._param.kernel_initializer())
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self._linear_units(),),
                                        initializer=self._param.bias_initializer())

    @property
    def kernel_multiplier(self) -> float:
        return self._param.kernel_multiplier

    @property
    def bias_multiplier(self) -> float:
        return self._param.bias_multiplier

    def preactivation(self, inputs):
        """The linear part ``z`` (before the activation)."""
        z = self._linear(inputs) * self.kernel_multiplier
        if self.bias is not None:
            z = z + self.bias * self.bias_multiplier
        return z

    def postactivation(self, z):
        return self.activation(z)

    def call(self, inputs):
        return self.postactivation(self.preactivation(inputs))

    def get_config(self):
        config = super().get_config()
        config.update(activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias, W_std=self.W_std, b_std=self.b_std,
                      parameterization=self.parameterization, seed=self.seed)
        return config
