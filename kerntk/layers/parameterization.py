"""NTK vs standard parameterization of a linear map (thesis App. C.6).

A linear map ``z = W_std * a @ W / sqrt(fan_in) + b_std * b`` can be written two ways with the same
function at initialization and different gradient geometry:

* ``"ntk"``: trainable ``W, b ~ N(0, 1)``; the scales ``W_std / sqrt(fan_in)`` and ``b_std`` are
  constant multipliers applied in the forward pass. Gradient descent then sees the NTK of the thesis.
* ``"standard"``: trainable ``W ~ N(0, W_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``, multipliers 1.
  This is neural-tangents' standard parameterization, not the default of Keras or PyTorch layers:
  the weights are Gaussian with variance ``W_std^2 / fan_in`` (Keras' ``Dense`` draws Glorot-uniform
  weights, PyTorch's ``Linear`` uniform ones) and the biases are drawn from ``N(0, b_std^2)`` (Keras
  starts biases at zero, PyTorch draws them uniform in ``±1/sqrt(fan_in)``).

``b_std = 0`` gives biases that are exactly zero at initialization under both parameterizations
(the bias stays a trainable weight). Under ``"ntk"`` the bias then also has multiplier 0, so it
never changes the output and gets zero gradient: the layer is bias-free for good. Under
``"standard"`` it trains from zero as a Keras bias does.

Every kerntk layer with weights uses this one helper, so the engine can read the effective multipliers
(``kernel_multiplier``, ``bias_multiplier``) of any of them in the same way.
"""

from __future__ import annotations

import math
from typing import Optional

import keras

from kerntk._validation import is_integer, is_real

PARAMETERIZATIONS = ("ntk", "standard")


def check_parameterization(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"`parameterization` must be one of {PARAMETERIZATIONS}; got {parameterization!r}."
        )
    return parameterization


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Validates a scale argument such as ``W_std`` (a Python or NumPy real, not a bool) and
    returns it as float."""
    if not is_real(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}; got {value!r}.")
    return float(value)


def check_units(name: str, value) -> int:
    """Validates a count such as ``units`` (a Python or NumPy integer, not a bool) and returns it
    as int."""
    if not is_integer(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def check_seed(value):
    """Validates an initializer ``seed``: None or an integer, returned as int."""
    if value is not None and not is_integer(value):
        raise ValueError(f"`seed` must be None or an integer; got {value!r}.")
    return None if value is None else int(value)


class LinearParameterization:
    """Initializers and forward multipliers of one linear map.

    Args:
        parameterization: ``"ntk"`` or ``"standard"``.
        W_std: weight scale; ``b_std``: bias scale.
        fan_in: number of inputs summed per output (``in_channels * prod(kernel_size)`` for convs).
        seed: optional int seed for the initializers.
    """

    def __init__(self, parameterization: str, W_std: float, b_std: float, fan_in: int,
                 seed: Optional[int] = None):
        self.parameterization = check_parameterization(parameterization)
        self.W_std = W_std
        self.b_std = b_std
        self.fan_in = fan_in
        self.seed = seed

    @property
    def kernel_multiplier(self) -> float:
        if self.parameterization == "ntk":
            return self.W_std / math.sqrt(self.fan_in)
        return 1.0

    @property
    def bias_multiplier(self) -> float:
        return self.b_std if self.parameterization == "ntk" else 1.0

    def kernel_initializer(self) -> keras.initializers.Initializer:
        std = 1.0 if self.parameterization == "ntk" else self.W_std / math.sqrt(self.fan_in)
        return keras.initializers.RandomNormal(0.0, std, seed=self.seed)

    def bias_initializer(self) -> keras.initializers.Initializer:
        if self.b_std == 0:
            # Exact zeros, not N(0, 0) draws (module docstring on what b_std = 0 means).
            return keras.initializers.Zeros()
        std = 1.0 if self.parameterization == "ntk" else self.b_std
        seed = None if self.seed is None else self.seed + 1
        return keras.initializers.RandomNormal(0.0, std, seed=seed)
