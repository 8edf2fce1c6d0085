"""Specification of kerntk.ntk.registry: teaching the structured NTK a user-defined layer.

Kernels are checked against the brute-force per-example Jacobian of tests/test_empirical_ntk.py.
"""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from kerntk.layers import NTKDense
from kerntk.ntk import empirical_ntk, registry
from kerntk.ntk.registry import Factorization, explain, register_factorization
from tests.test_empirical_ntk import brute_jacobian, brute_kernels, rel

ntk = functools.partial(empirical_ntk, jit_compile=False)


class ScaledDense(keras.layers.Layer):
    """``x @ W * c + b``."""

    def __init__(self, units, scale, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="random_normal",
                                    name="bias")

    def call(self, x):
        return ops.matmul(x, self.kernel) * self.scale + self.bias


class UnregisteredScaledDense(ScaledDense):
    pass


class ReversedNTKDense(NTKDense):
    """An NTKDense whose ``call`` differs from ``post(pre(x))``: its rule must not apply."""

    def call(self, inputs):
        return ops.flip(super().call(inputs), axis=-1) * 1.5


def scaled_dense_rule(layer):
    return Factorization(
        "dense", layer.kernel, bias=layer.bias, kernel_multiplier=layer.scale,
        preactivation=lambda a: ops.matmul(a, layer.kernel) * layer.scale + layer.bias)


@pytest.fixture
def registered():
    register_factorization(ScaledDense, scaled_dense_rule)
    yield
    registry._RULES.pop(ScaledDense, None)


def model_of(layer_cls, **kwargs):
    return keras.Sequential([keras.Input((5,)), NTKDense(7, activation="tanh"),
                             layer_cls(4, **kwargs), keras.layers.Activation("relu"),
                             NTKDense(2)])


def test_registered_user_layer_matches_brute_force_float64(registered, rng):
    keras.config.set_dtype_policy("float64")
    model = model_of(ScaledDense, scale=0.7)
    x = rng.standard_normal((6, 5))
    report = {r.class_name: r for r in explain(model)}
    assert report["ScaledDense"].structured and report["ScaledDense"].kind == "dense"
    trace, full = brute_kernels(brute_jacobian(model, x))
    # "structured" refuses any variable it cannot factorize: the rule covers the layer.
    assert rel(ntk(model, x, method="structured", outputs="full"), full) < 1e-10
    assert rel(ntk(model, x, method="structured"), trace) < 1e-10


def test_unregistered_layer_falls_back_and_says_why(rng):
    keras.config.set_dtype_policy("float64")
    model = model_of(UnregisteredScaledDense, scale=0.7)
    x = rng.standard_normal((5, 5))
    report = {r.class_name: r for r in explain(model)}
    assert not report["UnregisteredScaledDense"].structured
    assert "no factorization registered" in report["UnregisteredScaledDense"].reason
    assert report["NTKDense"].structured
    with pytest.raises(ValueError, match="cannot factorize"):
        ntk(model, x, method="structured")
    assert rel(ntk(model, x, outputs="full"), brute_kernels(brute_jacobian(model, x))[1]) < 1e-10


def test_subclass_of_registered_layer_inherits_rule(registered, rng):
    # Not overriding `call`, it is the same computation: the parent's rule applies.
    keras.config.set_dtype_policy("float64")
    model = model_of(UnregisteredScaledDense, scale=1.3)
    assert {r.class_name: r.structured for r in explain(model)}["UnregisteredScaledDense"]
    x = rng.standard_normal((4, 5))
    K = ntk(model, x, method="structured", outputs="full")
    assert rel(K, brute_kernels(brute_jacobian(model, x))[1]) < 1e-10


def test_subclass_overriding_call_falls_back(rng):
    keras.config.set_dtype_policy("float64")
    model = model_of(ReversedNTKDense)
    x = rng.standard_normal((5, 5))
    report = {r.class_name: r for r in explain(model)}
    assert not report["ReversedNTKDense"].structured
    assert "overrides `call`" in report["ReversedNTKDense"].reason
    with pytest.raises(ValueError, match="cannot factorize"):
        ntk(model, x, method="structured")
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, outputs="full"), full) < 1e-10
    assert rel(ntk(model, x), trace) < 1e-10


def test_explain_lists_partially_covered_and_keras_layers():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization(), NTKDense(2, use_bias=False)])
    report = {r.class_name: r for r in explain(model)}
    assert set(report) == {"Dense", "BatchNormalization", "NTKDense"}
    assert report["Dense"].structured and report["NTKDense"].structured
    assert not report["BatchNormalization"].structured
    assert "BatchNormalization" in str(report["BatchNormalization"])


def test_bad_registrations_and_rules_are_refused(rng):
    with pytest.raises(TypeError, match="subclass of keras.layers.Layer"):
        register_factorization(int, scaled_dense_rule)
    with pytest.raises(TypeError, match="must be a callable"):
        register_factorization(ScaledDense, "dense")
    with pytest.raises(ValueError, match="no method"):
        register_factorization(ScaledDense, scaled_dense_rule, methods=("preactivation",))
    layer = ScaledDense(3, scale=2.0)
    layer.build((None, 4))
    with pytest.raises(ValueError, match="kind must be one of"):
        Factorization("elementwise", layer.kernel, lambda a: a)
    with pytest.raises(TypeError, match="keras.Variable"):
        Factorization("dense", np.ones((4, 3)), lambda a: a)
    with pytest.raises(ValueError, match="1-, 2- or 3-D kernel_size"):
        Factorization("conv", layer.kernel, lambda a: a)
    register_factorization(ScaledDense, lambda layer: {"kind": "dense"})
    try:
        with pytest.raises(TypeError, match="must return a kerntk.ntk.registry.Factorization"):
            explain(keras.Sequential([keras.Input((4,)), layer]))
    finally:
        registry._RULES.pop(ScaledDense, None)
