"""Ready architectures of the papers, NTK-parameterized by default, with a linear output layer.

Every builder returns an uncompiled ``keras.Sequential``. ``input_shape`` (without the batch axis)
builds it at once, with a ``keras.Input`` in the precision the model computes in (the global
dtype policy's compute dtype when it is one float type, e.g. ``set_dtype_policy("float64")``, else
``keras.config.floatx()``: a float64 model must not round its inputs to float32; note that Keras'
``fit``/``predict`` still cast float64 NumPy inputs to ``floatx``, so set
``keras.config.set_floatx("float64")`` for float64 end to end); without it the model builds on its
first call. Inputs of rank > 1 are flattened before dense layers. ``W_std``,
``b_std``, ``use_bias`` and ``parameterization`` go to every layer (thesis App. C.6 uses
W_std = b_std = 1; see SPEC §5 on why biases matter for catapults).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from kerntk._validation import is_integer
from kerntk.layers import NTKConv2D, NTKDense, PolyConv2D, PolyDense
from kerntk.layers.parameterization import check_units


def _input_dtype() -> str:
    """The dtype of the builders' ``keras.Input``: the global dtype policy's compute dtype when it
    is one float type (e.g. ``keras.config.set_dtype_policy("float64")``), else
    ``keras.config.floatx()``. Under ``mixed_float16``/``mixed_bfloat16`` inputs stay in floatx:
    every layer casts its inputs to its compute dtype anyway."""
    policy = keras.config.dtype_policy()
    if policy.compute_dtype == policy.variable_dtype and "float" in str(policy.compute_dtype):
        return policy.compute_dtype
    return keras.config.floatx()


def _sequential(layers: list, input_shape: Optional[Sequence[int]], name: str) -> keras.Sequential:
    if input_shape is not None:
        try:
            shape = tuple(input_shape)
        except TypeError:
            shape = ()
        if not shape or any(s is not None and (not is_integer(s) or s < 1) for s in shape):
            raise ValueError(f"`input_shape` must be a tuple of positive ints (None for any size), "
                             f"without the batch axis; got {input_shape!r}.")
        shape = tuple(None if s is None else int(s) for s in shape)
        layers = [keras.Input(shape=shape, dtype=_input_dtype())] + layers
    return keras.Sequential(layers, name=name)


def _seed(seed: Optional[int], i: int) -> Optional[int]:
    # Distinct, reproducible seeds per layer (each layer uses seed and seed + 1).
    return None if seed is None else seed + 2 * i


def fcn(depth: int, width: int, out_dim: int = 1, *, activation: str = "relu",
        W_std: float = 1.0, b_std: float = 1.0, use_bias: bool = True,
        parameterization: str = "ntk", input_shape: Optional[Sequence[int]] = None,
        seed: Optional[int] = None, name: str = "fcn") -> keras.Sequential:
    """Fully connected net with ``depth`` NTKDense layers: ``depth - 1`` hidden of ``width`` units,
    then a linear ``out_dim`` head (thesis "L-layer FCN")."""
    check_units("depth", depth)
    check_units("width", width)
    check_units("out_dim", out_dim)
    kw = dict(W_std=W_std, b_std=b_std, use_bias=use_bias, parameterization=parameterization)
    layers = [keras.layers.Flatten()]
    layers += [NTKDense(width, activation=activation, seed=_seed(seed, i), **kw)
               for i in range(depth - 1)]
    layers.append(NTKDense(out_dim, seed=_seed(seed, depth), **kw))
    return _sequential(layers, input_shape, name)


def cnn(depth: int, channels: int, out_dim: int = 1, *, kernel_size: int = 3,
        activation: str = "relu", padding: str = "same", W_std: float = 1.0, b_std: float = 1.0,
        use_bias: bool = True, parameterization: str = "ntk",
        input_shape: Optional[Sequence[int]] = None, seed: Optional[int] = None,
        name: str = "cnn") -> keras.Sequential:
    """``depth - 1`` NTKConv2D layers of ``channels`` (stride 1), flatten, linear head
    (thesis Fig. 4.3 "5-layer CNN")."""
    check_units("depth", depth)
    check_units("channels", channels)
    check_units("out_dim", out_dim)
    kw = dict(W_std=W_std, b_std=b_std, use_bias=use_bias, parameterization=parameterization)
    layers = [NTKConv2D(channels, kernel_size, padding=padding, activation=activation,
                        seed=_seed(seed, i), **kw) for i in range(depth - 1)]
    layers += [keras.layers.Flatten(), NTKDense(out_dim, seed=_seed(seed, depth), **kw)]
    return _sequential(layers, input_shape, name)


def pnn(degree: int, width: int, out_dim: int = 1, *, blocks: int = 1, form: str = "pnn",
        activation="auto", skip="auto", use_bias: bool = False, head_bias: bool = True,
        W_std: float = 1.0, b_std: float = 1.0, parameterization: str = "ntk",
        input_shape: Optional[Sequence[int]] = None, seed: Optional[int] = None,
        name: str = "pnn") -> keras.Sequential:
    """Polynomial net: ``blocks`` PolyDense blocks of ``degree`` and ``width``, then a linear head
    (paper 000 Eq. 1 with ``blocks=1``; ``head_bias`` adds the CCP output bias beta)."""
    check_units("blocks", blocks)
    check_units("out_dim", out_dim)
    kw = dict(W_std=W_std, b_std=b_std, parameterization=parameterization)
    layers = [keras.layers.Flatten()]
    layers += [PolyDense(width, degree, form=form, activation=activation, skip=skip,
                         use_bias=use_bias, seed=_seed(seed, i), **kw) for i in range(blocks)]
    layers.append(NTKDense(out_dim, use_bias=head_bias, seed=_seed(seed, blocks), **kw))
    return _sequential(layers, input_shape, name)


def poly_cnn(degree: int, channels: int, out_dim: int = 1, *, blocks: int = 2,
             kernel_size: int = 3, pool: bool = True, form: str = "pnn", activation="auto",
             skip="auto", use_bias: bool = False, head_bias: bool = True, W_std: float = 1.0,
             b_std: float = 1.0, parameterization: str = "ntk",
             input_shape: Optional[Sequence[int]] = None, seed: Optional[int] = None,
             name: str = "poly_cnn") -> keras.Sequential:
    """Convolutional polynomial net ("NN-Hp (Conv)", paper 000 Table 1): ``blocks`` PolyConv2D
    blocks ("same" padding, each followed by 2x2 average pooling when ``pool``), flatten, linear
    head."""
    check_units("blocks", blocks)
    check_units("out_dim", out_dim)
    kw = dict(W_std=W_std, b_std=b_std, parameterization=parameterization)
    layers = []
    for i in range(blocks):
        layers.append(PolyConv2D(channels, kernel_size, degree, padding="same", form=form,
                                 activation=activation, skip=skip, use_bias=use_bias,
                                 seed=_seed(seed, i), **kw))
        if pool:
            layers.append(keras.layers.AveragePooling2D(2))
    layers += [keras.layers.Flatten(),
               NTKDense(out_dim, use_bias=head_bias, seed=_seed(seed, blocks), **kw)]
    return _sequential(layers, input_shape, name)


_MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def myrtle(depth: int = 5, channels: int = 128, out_dim: int = 10, *, activation: str = "relu",
           W_std: float = 1.0, b_std: float = 1.0, use_bias: bool = True,
           parameterization: str = "ntk", input_shape: Optional[Sequence[int]] = None,
           seed: Optional[int] = None, name: Optional[str] = None) -> keras.Sequential:
    """Myrtle net (Shankar et al. 2020; thesis Fig. 4.9): three stages of 3x3 "same" convolutions
    (2-1-1, 2-2-2 or 3-3-3 layers for depth 5, 7, 10), 2x2 average pooling after each stage, global
    average pooling, linear head."""
    if depth not in _MYRTLE_STAGES:
        raise ValueError(f"`depth` must be one of {tuple(_MYRTLE_STAGES)}; got {depth!r}.")
    check_units("channels", channels)
    check_units("out_dim", out_dim)
    kw = dict(W_std=W_std, b_std=b_std, use_bias=use_bias, parameterization=parameterization)
    layers, i = [], 0
    for n_convs in _MYRTLE_STAGES[depth]:
        for _ in range(n_convs):
            layers.append(NTKConv2D(channels, 3, padding="same", activation=activation,
                                    seed=_seed(seed, i), **kw))
            i += 1
        layers.append(keras.layers.AveragePooling2D(2))
    layers += [keras.layers.GlobalAveragePooling2D(),
               NTKDense(out_dim, seed=_seed(seed, i), **kw)]
    return _sequential(layers, input_shape, name or f"myrtle{depth}")
