"""NTK-parameterized convolutions (thesis App. C.6)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import keras
from keras import ops

from kerntk._validation import is_integer
from kerntk.layers.ntk_base import NTKLinearBase
from kerntk.layers.parameterization import check_units

IntOrTuple = Union[int, Sequence[int]]


def _tuple(name: str, value: IntOrTuple, rank: int) -> tuple:
    try:
        values = (value,) * rank if is_integer(value) else tuple(value)
    except TypeError:
        values = ()
    if len(values) != rank or any(not is_integer(v) or v <= 0 for v in values):
        raise ValueError(f"`{name}` must be a positive int or a tuple of {rank} positive ints; "
                         f"got {value!r}.")
    return tuple(int(v) for v in values)


class BaseNTKConv(NTKLinearBase):
    """Shared machinery of the NTK-parameterized convolutions (channels_last only).

    Computes ``activation(W_std * conv(a, W) / sqrt(fan_in) + b_std * b)`` with
    ``fan_in = in_channels * prod(kernel_size)`` and ``W, b ~ N(0, 1)`` under
    ``parameterization="ntk"``; see :class:`kerntk.layers.NTKDense` for ``"standard"``.
    Zero padding for ``padding="same"``.
    """

    def __init__(self, rank: int, filters: int, kernel_size: IntOrTuple, strides: IntOrTuple = 1,
                 padding: str = "valid", activation=None, use_bias: bool = True,
                 W_std: float = 1.0, b_std: float = 1.0, parameterization: str = "ntk",
                 seed: Optional[int] = None, **kwargs):
        super().__init__(activation, use_bias, W_std, b_std, parameterization, seed, **kwargs)
        self.rank = rank
        self.filters = check_units("filters", filters)
        self.kernel_size = _tuple("kernel_size", kernel_size, rank)
        self.strides = _tuple("strides", strides, rank)
        padding = str(padding).lower()
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'; got {padding!r}.")
        self.padding = padding
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    def _linear_units(self) -> int:
        return self.filters

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(f"{type(self).__name__} needs a known channel dimension.")
        fan_in = int(in_channels)
        for k in self.kernel_size:
            fan_in *= k
        self._build_linear(fan_in, self.kernel_size + (in_channels, self._linear_units()))
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={-1: in_channels})

    def _linear(self, inputs):
        return ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding,
                        data_format="channels_last")

    def _spatial_output_shape(self, input_shape):
        spatial = []
        for size, k, s in zip(input_shape[1:-1], self.kernel_size, self.strides):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - k) // s + 1)
        return tuple(spatial)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self._spatial_output_shape(input_shape) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding)
        return config


@keras.saving.register_keras_serializable(package="kerntk")
class NTKConv1D(BaseNTKConv):
    """1-D convolution in NTK parameterization.

    Args: as :class:`NTKConv2D` with ``kernel_size``/``strides`` ints.
    Input shape: ``(batch, steps, channels)``. Output: ``(batch, new_steps, filters)``.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, W_std=1.0, b_std=1.0, parameterization="ntk", seed=None, **kwargs):
        super().__init__(1, filters, kernel_size, strides, padding, activation, use_bias, W_std,
                         b_std, parameterization, seed, **kwargs)


@keras.saving.register_keras_serializable(package="kerntk")
class NTKConv2D(BaseNTKConv):
    """2-D convolution in NTK parameterization (thesis App. C.6).

    Computes ``activation(W_std * conv(a, W) / sqrt(in_channels * kh * kw) + b_std * b)``,
    ``W, b ~ N(0, 1)``.

    Args:
        filters: positive int, output channels.
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw).
        padding: ``"valid"`` or ``"same"`` (zero padding).
        activation: activation name or callable; ``None`` is linear.
        use_bias, W_std, b_std, parameterization, seed: as :class:`kerntk.layers.NTKDense`.

    Input shape: ``(batch, height, width, channels)`` (channels_last).
    Output shape: ``(batch, new_height, new_width, filters)``.

    Example:
        >>> y = NTKConv2D(64, 3, padding="same", activation="relu")(keras.random.normal((2, 32, 32, 3)))
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None,
                 use_bias=True, W_std=1.0, b_std=1.0, parameterization="ntk", seed=None, **kwargs):
        super().__init__(2, filters, kernel_size, strides, padding, activation, use_bias, W_std,
                         b_std, parameterization, seed, **kwargs)
