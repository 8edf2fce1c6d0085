"""NTK-parameterized fully connected layer (thesis App. C.6)."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from kerntk.layers.ntk_base import NTKLinearBase
from kerntk.layers.parameterization import check_units


@keras.saving.register_keras_serializable(package="kerntk")
class NTKDense(NTKLinearBase):
    """Densely connected layer in NTK parameterization.

    Computes ``activation(W_std * a @ W / sqrt(fan_in) + b_std * b)`` with ``W, b ~ N(0, 1)``
    (thesis App. C.6; neural-tangents' ``stax.Dense``). With ``parameterization="standard"`` the same
    function at initialization comes from ``W ~ N(0, W_std^2/fan_in)``, ``b ~ N(0, b_std^2)`` and no
    forward multipliers: neural-tangents' standard parameterization, whose Gaussian biases differ
    from Keras' zero and PyTorch's uniform bias initialization
    (:mod:`kerntk.layers.parameterization`).

    Args:
        units: positive int, output dimension.
        activation: activation name or callable; ``None`` is linear (use it for output layers).
        use_bias: whether to add a bias.
        W_std: weight scale (> 0).
        b_std: bias scale (>= 0); ignored when ``use_bias=False``. ``0`` starts the bias at exactly
            zero under both parameterizations; under ``"ntk"`` it then also multiplies the bias by
            0 for good (no effect on the output, zero gradient).
        parameterization: ``"ntk"`` (default) or ``"standard"``.
        seed: optional int seed for the initializers.

    Input shape: ``(batch, ..., fan_in)``. Output shape: ``(batch, ..., units)``.

    Example:
        >>> layer = NTKDense(512, activation="relu")
        >>> y = layer(keras.random.normal((8, 100)))   # y.shape == (8, 512)

    Attributes read by the engine: ``kernel`` (fan_in, units), ``bias`` (units,) or ``None``,
    ``kernel_multiplier`` and ``bias_multiplier`` (the constant forward scales), and
    :meth:`preactivation` / :meth:`postactivation`, whose composition is :meth:`call`.
    """

    def __init__(self, units: int, activation=None, use_bias: bool = True, W_std: float = 1.0,
                 b_std: float = 1.0, parameterization: str = "ntk", seed: Optional[int] = None,
                 **kwargs):
        super().__init__(activation, use_bias, W_std, b_std, parameterization, seed, **kwargs)
        self.units = check_units("units", units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError("NTKDense needs a known last input dimension.")
        self._build_linear(fan_in, (fan_in, self._linear_units()))
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: fan_in})

    def _linear_units(self) -> int:
        return self.units

    def _linear(self, inputs):
        return ops.matmul(inputs, self.kernel)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config
