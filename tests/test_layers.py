"""Layer behaviour: exact forward math, the shared harness, argument validation."""

import keras
import numpy as np
import pytest

from kerntk.layers import NTKConv1D, NTKConv2D, NTKDense, PolyConv2D, PolyDense
from tests import numpy_reference as ref
from tests.layer_harness import run_layer_test


def _weights(layer):
    kernel = layer.kernel.numpy().astype(np.float64)
    bias = None if layer.bias is None else layer.bias.numpy().astype(np.float64)
    return kernel, bias


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("activation,use_bias", [("relu", True), (None, False), ("tanh", True)])
def test_ntk_dense_forward_matches_numpy(parameterization, activation, use_bias, rng):
    x = rng.standard_normal((5, 7)).astype("float32")
    layer = NTKDense(6, activation=activation, use_bias=use_bias, W_std=1.7, b_std=0.3,
                     parameterization=parameterization)
    y = layer(x).numpy()
    kernel, bias = _weights(layer)
    z = ref.linear(x.astype(np.float64), kernel, bias, 1.7, 0.3, parameterization)
    expected = {"relu": ref.relu, None: lambda t: t, "tanh": np.tanh}[activation](z)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_parameterizations_agree_in_distribution(rng):
    """NTK and standard parameterization define the same function distribution at init."""
    x = rng.standard_normal((2000, 50)).astype("float32")
    outs = {}
    for p in ("ntk", "standard"):
        layer = NTKDense(4000, W_std=2.0, b_std=0.5, parameterization=p, seed=1)
        outs[p] = layer(x[:1]).numpy().ravel()
    # Per-unit variance of z is W_std^2 |x|^2 / fan_in + b_std^2 under both.
    expected = 4.0 * np.sum(x[0] ** 2) / 50 + 0.25
    for p, out in outs.items():
        assert abs(out.var() / expected - 1) < 0.1, p


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("layer_cls", [NTKDense, lambda units, **kw: NTKConv2D(units, 3, **kw)],
                         ids=["dense", "conv2d"])
def test_effective_bias_is_gaussian_with_std_b_std(layer_cls, parameterization):
    """The bias the layer adds, ``bias_multiplier * b``, is ``N(0, b_std^2)`` under both
    parameterizations (neural-tangents' standard init, not Keras' zero biases)."""
    units, b_std = 20000, 0.7
    layer = layer_cls(units, b_std=b_std, parameterization=parameterization, seed=4)
    layer.build((None, 5, 5, 3) if isinstance(layer, NTKConv2D) else (None, 3))
    b = layer.bias.numpy().astype(np.float64) * layer.bias_multiplier
    # For n i.i.d. N(0, s^2) draws the sample std has standard error s / sqrt(2 n) and the mean
    # s / sqrt(n); 5 standard errors (the seed is fixed, so the test is deterministic).
    assert abs(b.std() - b_std) < 5 * b_std / np.sqrt(2 * units)
    assert abs(b.mean()) < 5 * b_std / np.sqrt(units)
    raw_std = 1.0 if parameterization == "ntk" else b_std
    assert abs(layer.bias.numpy().std() - raw_std) < 5 * raw_std / np.sqrt(2 * units)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_b_std_zero_gives_exactly_zero_trainable_biases(parameterization, rng):
    x = rng.standard_normal((4, 6)).astype("float32")
    layer = NTKDense(8, b_std=0.0, parameterization=parameterization, seed=0)
    no_bias = NTKDense(8, use_bias=False, parameterization=parameterization, seed=0)
    np.testing.assert_array_equal(layer(x).numpy(), no_bias(x).numpy())
    assert np.all(layer.bias.numpy() == 0)
    assert any(w is layer.bias for w in layer.trainable_weights)
    conv = NTKConv2D(3, 2, b_std=0, parameterization=parameterization)
    conv.build((None, 4, 4, 2))
    assert np.all(conv.bias.numpy() == 0)
    # Under "ntk" the bias multiplier is b_std = 0: the bias never reaches the output.
    assert layer.bias_multiplier == (0.0 if parameterization == "ntk" else 1.0)


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "same"), (2, "valid"), (1, "valid")])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_ntk_conv2d_forward_matches_numpy(strides, padding, parameterization, rng):
    x = rng.standard_normal((2, 7, 6, 3)).astype("float32")
    layer = NTKConv2D(4, (3, 2), strides=strides, padding=padding, activation="relu",
                      W_std=1.3, b_std=0.7, parameterization=parameterization)
    y = layer(x).numpy()
    kernel, bias = _weights(layer)
    z = ref.linear(x.astype(np.float64), kernel, bias, 1.3, 0.7, parameterization,
                   conv=((strides, strides), padding))
    np.testing.assert_allclose(y, ref.relu(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strides,padding", [(1, "same"), (3, "valid")])
def test_ntk_conv1d_forward_matches_numpy(strides, padding, rng):
    x = rng.standard_normal((2, 11, 3)).astype("float32")
    layer = NTKConv1D(5, 4, strides=strides, padding=padding)
    y = layer(x).numpy()
    kernel, bias = _weights(layer)
    z = ref.linear(x.astype(np.float64), kernel, bias, 1.0, 1.0, "ntk",
                   conv=((strides,), padding))
    np.testing.assert_allclose(y, z, rtol=1e-5, atol=1e-5)


POLY_CASES = [
    dict(form="pnn"),
    dict(form="ccp"),
    dict(form="pnn", skip=True, use_bias=True, b_std=0.5),
    dict(form="ccp", activation="relu", W_std=2.0),
]


def _poly_expected(layer, kwargs, z):
    return ref.polynomial(z, layer.degree, "relu" if layer.activation is keras.activations.relu
                          else None, layer.skip, kwargs.get("W_std", 1.0),
                          kwargs.get("b_std", 1.0), kwargs.get("use_bias", False))


@pytest.mark.parametrize("kwargs", POLY_CASES)
@pytest.mark.parametrize("degree", [1, 2, 4])
def test_poly_dense_forward_matches_numpy(kwargs, degree, rng):
    x = rng.standard_normal((5, 6)).astype("float32")
    layer = PolyDense(3, degree, **kwargs)
    y = layer(x).numpy()
    kernel, bias = _weights(layer)
    assert kernel.shape == (6, 3 * degree)
    z = ref.linear(x.astype(np.float64), kernel, bias, kwargs.get("W_std", 1.0),
                   kwargs.get("b_std", 1.0), "ntk")
    np.testing.assert_allclose(y, _poly_expected(layer, kwargs, z), rtol=1e-4, atol=1e-5)


def test_form_defaults():
    pnn, ccp = PolyDense(4, 2), PolyDense(4, 2, form="ccp")
    assert pnn.activation is keras.activations.relu and pnn.skip is False
    assert ccp.activation is keras.activations.linear and ccp.skip is True


@pytest.mark.parametrize("kwargs", POLY_CASES[:3])
def test_poly_conv2d_forward_matches_numpy(kwargs, rng):
    x = rng.standard_normal((2, 6, 5, 2)).astype("float32")
    layer = PolyConv2D(3, 3, 3, strides=2, padding="same", **kwargs)
    y = layer(x).numpy()
    kernel, bias = _weights(layer)
    z = ref.linear(x.astype(np.float64), kernel, bias, kwargs.get("W_std", 1.0),
                   kwargs.get("b_std", 1.0), "ntk", conv=((2, 2), "same"))
    np.testing.assert_allclose(y, _poly_expected(layer, kwargs, z), rtol=1e-4, atol=1e-5)


HARNESS_CASES = [
    (NTKDense, dict(units=5, activation="relu"), (7,), (5,)),
    (NTKDense, dict(units=3, parameterization="standard", use_bias=False), (4, 6), (4, 3)),
    (NTKConv2D, dict(filters=4, kernel_size=3, strides=2, padding="same", activation="relu"),
     (8, 8, 3), (4, 4, 4)),
    (NTKConv1D, dict(filters=4, kernel_size=3), (9, 2), (7, 4)),
    (PolyDense, dict(units=6, degree=3), (5,), (6,)),
    (PolyDense, dict(units=6, degree=2, form="ccp", use_bias=True), (5,), (6,)),
    (PolyConv2D, dict(filters=4, kernel_size=3, degree=2, padding="same"), (6, 6, 2), (6, 6, 4)),
]


@pytest.mark.parametrize("layer_cls,kwargs,input_shape,output_shape", HARNESS_CASES,
                         ids=lambda v: getattr(v, "__name__", None))
def test_layer_harness(layer_cls, kwargs, input_shape, output_shape, tmp_path):
    run_layer_test(layer_cls, kwargs, input_shape, output_shape, tmp_path)


@pytest.mark.parametrize("make,argument", [
    (lambda: NTKDense(0), "units"),
    (lambda: NTKDense(-3), "units"),
    (lambda: NTKDense(2.5), "units"),
    (lambda: NTKDense(4, W_std=0.0), "W_std"),
    (lambda: NTKDense(4, W_std=-1.0), "W_std"),
    (lambda: NTKDense(4, W_std=float("nan")), "W_std"),
    (lambda: NTKDense(4, b_std=-1.0), "b_std"),
    (lambda: NTKDense(4, b_std=True), "b_std"),
    (lambda: NTKDense(4, W_std="2"), "W_std"),
    (lambda: NTKDense(True), "units"),
    (lambda: NTKDense(4, seed=1.5), "seed"),
    (lambda: NTKConv2D(4, 3.0), "kernel_size"),
    (lambda: NTKDense(4, parameterization="mup"), "parameterization"),
    (lambda: NTKConv2D(0, 3), "filters"),
    (lambda: NTKConv2D(4, 0), "kernel_size"),
    (lambda: NTKConv2D(4, 3, strides=(1, 2, 3)), "strides"),
    (lambda: NTKConv2D(4, 3, padding="causal"), "padding"),
    (lambda: NTKConv2D(4, 3, W_std=0), "W_std"),
    (lambda: PolyDense(4, 0), "degree"),
    (lambda: PolyDense(0, 2), "units"),
    (lambda: PolyDense(4, 2, form="tensor"), "form"),
    (lambda: PolyDense(4, 2, activation="tanh"), "activation"),
    (lambda: PolyDense(4, 2, skip="yes"), "skip"),
    (lambda: PolyDense(4, 2, W_std=-2), "W_std"),
    (lambda: PolyConv2D(4, 3, degree=0), "degree"),
    (lambda: PolyConv2D(4, 3, 2, parameterization="x"), "parameterization"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


def test_numpy_scalars_are_accepted_as_numbers(rng):
    x = rng.standard_normal((2, 5, 5, 3)).astype("float32")
    dense = NTKDense(np.int64(4), W_std=np.float32(1.5), b_std=np.float64(0.5), seed=np.int64(3))
    conv = NTKConv2D(np.int32(2), (np.int64(3), np.int64(3)), strides=np.int64(1), seed=np.int8(1))
    poly = PolyDense(np.int64(4), np.int64(2), W_std=np.float32(1.0))
    assert dense(x[:, 0, 0]).shape == (2, 4) and conv(x).shape == (2, 3, 3, 2)
    assert poly(x[:, 0, 0]).shape == (2, 4)
    config = dense.get_config()
    assert type(config["units"]) is int and type(config["seed"]) is int
    assert type(config["W_std"]) is float
    assert all(type(v) is int for v in conv.get_config()["kernel_size"])


def test_wrong_input_shape_is_rejected():
    layer = NTKDense(3)
    layer(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError):
        layer(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError):
        NTKConv2D(3, 3)(np.zeros((2, 5, 3), "float32"))
