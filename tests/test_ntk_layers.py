"""Specification of the structured NTK on the Keras layers users put in models.

Each layer's factorization (kerntk.ntk.registry) is checked against the brute-force per-example
Jacobian of tests/test_empirical_ntk.py (a GradientTape loop, float64): to 1e-10 relative in
float64 (round-off of sums of a few hundred terms) and to 1e-4 in float32 (unit round-off 6e-8
times the same sums, with a wide margin). ``method="structured"`` refuses any trainable variable
it cannot factorize, so passing it also proves the layer is covered.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerntk.ntk import empirical_ntk, registry
from kerntk.ntk.registry import Factorization, explain, register_factorization
from tests.test_empirical_ntk import brute_jacobian, brute_kernels, rel

ntk = functools.partial(empirical_ntk, jit_compile=False)
# LayerNormalization(rms_scaling=True) is deprecated in Keras but still computes what it did.
pytestmark = pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
L = keras.layers


def _gauss(shape):
    return lambda rng: rng.standard_normal((6,) + shape)


def _ids(vocab, shape):
    return lambda rng: rng.integers(0, vocab, (6,) + shape).astype(np.float64)


# name -> (the model's layers (fresh each call), input shape, draw of x, the factorization
# kinds of its one layer that is not a Dense)
CASES = {
    "layer_norm": (lambda: [L.Dense(7), L.LayerNormalization(), L.Dense(3)], (5,),
                   _gauss((5,)), "diagonal"),
    "layer_norm_two_axes": (lambda: [L.Dense(4), L.LayerNormalization(axis=[1, 2]), L.Flatten(),
                                     L.Dense(2)], (3, 5), _gauss((3, 5)), "diagonal"),
    "layer_norm_scale_only": (lambda: [L.Dense(7), L.LayerNormalization(center=False),
                                       L.Dense(3)], (5,), _gauss((5,)), "diagonal"),
    "layer_norm_offset_only": (lambda: [L.Dense(7), L.LayerNormalization(scale=False),
                                        L.Dense(3)], (5,), _gauss((5,)), "diagonal"),
    "rms_norm": (lambda: [L.Dense(7), L.RMSNormalization(), L.Dense(3)], (5,), _gauss((5,)),
                 "diagonal"),
    "layer_norm_rms_scaling": (lambda: [L.Dense(7), L.LayerNormalization(rms_scaling=True,
                                                                         center=False),
                                        L.Dense(3)], (5,), _gauss((5,)), "diagonal"),
    "embedding": (lambda: [L.Embedding(11, 4), L.Flatten(), L.Dense(3)], (5,), _ids(11, (5,)),
                  "gather"),
    "embedding_one_token": (lambda: [L.Embedding(11, 4), L.Flatten(), L.Dense(3)], (1,),
                            _ids(11, (1,)), "gather"),
    "depthwise_conv2d": (lambda: [L.DepthwiseConv2D(3, depth_multiplier=2, activation="tanh"),
                                  L.Flatten(), L.Dense(2)], (6, 6, 3), _gauss((6, 6, 3)),
                         "conv"),
    "depthwise_conv1d": (lambda: [L.DepthwiseConv1D(3, strides=2, padding="same"), L.Flatten(),
                                  L.Dense(2)], (7, 3), _gauss((7, 3)), "conv"),
    "separable_conv2d": (lambda: [L.SeparableConv2D(4, 3, strides=2, padding="same",
                                                    depth_multiplier=2, activation="tanh"),
                                  L.Flatten(), L.Dense(2)], (7, 7, 3), _gauss((7, 7, 3)),
                         "conv+dense"),
    "separable_conv1d": (lambda: [L.SeparableConv1D(4, 3, padding="same"), L.Flatten(),
                                  L.Dense(2)], (7, 3), _gauss((7, 3)), "conv+dense"),
    "grouped_conv2d": (lambda: [L.Conv2D(4, 3, groups=2, activation="tanh"), L.Flatten(),
                                L.Dense(2)], (6, 6, 4), _gauss((6, 6, 4)), "conv"),
    "conv1d": (lambda: [L.Conv1D(4, 3, strides=2, activation="tanh"), L.Flatten(), L.Dense(2)],
               (9, 3), _gauss((9, 3)), "conv"),
    "conv3d": (lambda: [L.Conv3D(3, 2, padding="same", activation="tanh"), L.Flatten(),
                        L.Dense(2)], (4, 4, 4, 2), _gauss((4, 4, 4, 2)), "conv"),
    "conv2d_transpose_same": (lambda: [L.Conv2DTranspose(3, 3, strides=2, padding="same",
                                                         activation="tanh"), L.Flatten(),
                                       L.Dense(2)], (4, 4, 2), _gauss((4, 4, 2)),
                              "conv_transpose"),
    "conv2d_transpose_valid": (lambda: [L.Conv2DTranspose(3, 3, strides=2), L.Flatten(),
                                        L.Dense(2)], (4, 4, 2), _gauss((4, 4, 2)),
                               "conv_transpose"),
    "conv1d_transpose": (lambda: [L.Conv1DTranspose(3, 3, strides=2, padding="same"),
                                  L.Flatten(), L.Dense(2)], (5, 2), _gauss((5, 2)),
                         "conv_transpose"),
    "conv3d_transpose": (lambda: [L.Conv3DTranspose(2, 2, strides=2), L.Flatten(), L.Dense(2)],
                         (2, 3, 2, 2), _gauss((2, 3, 2, 2)), "conv_transpose"),
}
# One case per factorization kind for the float32 check.
FLOAT32_CASES = ("layer_norm", "embedding", "depthwise_conv2d", "separable_conv2d",
                 "conv3d", "conv2d_transpose_same")


def build(name):
    layers, shape, draw, kind = CASES[name]
    return keras.Sequential([keras.Input(shape)] + layers()), draw, kind


@pytest.mark.parametrize("name", sorted(CASES))
def test_structured_matches_brute_force_float64(name, rng):
    keras.config.set_dtype_policy("float64")
    model, draw, kind = build(name)
    x = draw(rng)
    reports = explain(model)
    assert all(r.structured and not r.reason for r in reports), [str(r) for r in reports]
    assert [r.kind for r in reports if r.class_name != "Dense"] == [kind]
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, method="structured", outputs="full"), full) < 1e-10
    assert rel(ntk(model, x, method="structured"), trace) < 1e-10


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_structured_matches_brute_force_float32(name, rng):
    keras.config.set_dtype_policy("float64")
    model, draw, _ = build(name)
    x = draw(rng)
    trace, _ = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, method="structured", dtype="float32"), trace) < 1e-4


def test_jacobian_method_handles_grouped_convolutions(rng):
    """pfor mis-vectorizes grouped conv filter gradients; the exact fallback must not crash."""
    keras.config.set_dtype_policy("float64")
    model, draw, _ = build("grouped_conv2d")
    x = draw(rng)
    trace, _ = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, method="jacobian"), trace) < 1e-10


@pytest.mark.parametrize("form", ["patch", "grad"])
def test_embedding_both_forms_match_brute_force(form, rng, monkeypatch):
    """The id-equality (patch) form and the per-example-gradient form over the ids in the batch
    are chosen by cost; each gives the brute-force kernel, tiles included."""
    keras.config.set_dtype_policy("float64")
    monkeypatch.setattr("kerntk.ntk.blocks.choose_gather_form", lambda *args: form)
    model = keras.Sequential([keras.Input((6,)), L.Embedding(5, 3), L.Flatten(), L.Dense(2)])
    x = rng.integers(0, 5, (7, 6)).astype(np.float64)
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, method="structured", outputs="full"), full) < 1e-10
    assert rel(ntk(model, x, method="structured", block_size=3), trace) < 1e-10


class TiedLM(keras.Model):
    """Embedding whose table is also the output projection (tied weights), as in many LMs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = L.Embedding(9, 4)
        self.mix = L.Dense(4, activation="tanh")

    def call(self, ids, training=None):
        h = ops.mean(self.mix(self.embed(ids)), axis=1)
        return ops.matmul(h, ops.transpose(self.embed.embeddings))


def test_tied_weights_fall_back_to_the_exact_jacobian(rng):
    """A variable used outside its layer's call cannot be factorized by that layer: the engine
    proves it while tracing and uses the exact Jacobian for it (structured refuses)."""
    keras.config.set_dtype_policy("float64")
    model = TiedLM()
    x = rng.integers(0, 9, (5, 3)).astype(np.float64)
    model(x)
    report = {r.class_name: r for r in explain(model)}
    assert report["Embedding"].structured  # statically it looks factorizable...
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, outputs="full"), full) < 1e-10  # ...but the kernel is exact
    assert rel(ntk(model, x), trace) < 1e-10
    with pytest.raises(ValueError, match="embeddings"):
        ntk(model, x, method="structured")


class TiedAutoencoder(keras.Model):
    """Decoder ``h @ enc.kernel^T``: the encoder's kernel is also used outside its layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enc = L.Dense(3, activation="tanh")

    def call(self, x, training=None):
        return ops.matmul(self.enc(x), ops.transpose(self.enc.kernel))


def test_tied_autoencoder_is_exact(rng):
    """Issue 11's repro (structured NTK off by 52 % before the tie proof)."""
    keras.config.set_dtype_policy("float64")
    model = TiedAutoencoder()
    x = rng.standard_normal((6, 5))
    model(x)
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, outputs="full"), full) < 1e-10
    assert rel(ntk(model, x), trace) < 1e-10


def test_layer_called_twice_falls_back(rng):
    keras.config.set_dtype_policy("float64")
    shared = L.LayerNormalization()
    inp = keras.Input((4,))
    out = L.Dense(2)(shared(L.Dense(4, activation="tanh")(shared(inp))))
    model = keras.Model(inp, out)
    x = rng.standard_normal((5, 4))
    trace, _ = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x), trace) < 1e-10
    with pytest.raises(ValueError, match="layer_normalization"):
        ntk(model, x, method="structured")


@pytest.mark.parametrize("layer,shape,reason", [
    (lambda: L.Conv2D(3, 3, dilation_rate=2), (7, 7, 2), "dilated"),
    (lambda: L.Conv1D(3, 3, padding="causal"), (7, 2), "causal"),
    (lambda: L.Conv2DTranspose(3, 3, strides=2, output_padding=1), (4, 4, 2), "output_padding"),
])
def test_unsupported_options_fall_back_with_reason(layer, shape, reason, rng):
    keras.config.set_dtype_policy("float64")
    layer = layer()
    model = keras.Sequential([keras.Input(shape), layer, L.Flatten(), L.Dense(2)])
    report = {r.name: r for r in explain(model)}[layer.name]
    assert not report.structured and reason in report.reason
    x = rng.standard_normal((4,) + shape)
    trace, _ = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x), trace) < 1e-10


class Scale(L.Layer):
    """``x * gamma`` over the last axis: a scale-only elementwise layer."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.gamma


class Shift(L.Layer):
    """``x + beta`` over the last two axes: a bias-only elementwise layer."""

    def build(self, input_shape):
        self.beta = self.add_weight(shape=tuple(input_shape[-2:]), initializer="random_normal")

    def call(self, x):
        return x + self.beta


@pytest.fixture
def elementwise_rules():
    register_factorization(Scale, lambda layer: Factorization(
        "diagonal", layer.gamma, lambda a: a * layer.gamma, axes=(-1,)))
    register_factorization(Shift, lambda layer: Factorization(
        "diagonal", None, lambda a: a + layer.beta, bias=layer.beta, axes=(-2, -1)))
    yield
    registry._RULES.pop(Scale, None)
    registry._RULES.pop(Shift, None)


def test_scale_only_and_bias_only_elementwise_layers(elementwise_rules, rng):
    keras.config.set_dtype_policy("float64")
    model = keras.Sequential([keras.Input((3, 4)), L.Dense(5, activation="tanh"), Scale(),
                              Shift(), L.Activation("tanh"), L.Flatten(), L.Dense(2)])
    x = rng.standard_normal((6, 3, 4))
    kinds = {r.class_name: r.kind for r in explain(model)}
    assert kinds["Scale"] == kinds["Shift"] == "diagonal"
    trace, full = brute_kernels(brute_jacobian(model, x))
    assert rel(ntk(model, x, method="structured", outputs="full"), full) < 1e-10
    assert rel(ntk(model, x, method="structured"), trace) < 1e-10


def test_bad_diagonal_and_gather_factorizations_are_refused():
    layer = Scale()
    layer.build((None, 4))
    with pytest.raises(ValueError, match="needs `axes`"):
        Factorization("diagonal", layer.gamma, lambda a: a)
    with pytest.raises(ValueError, match="needs `axes`"):
        Factorization("diagonal", layer.gamma, lambda a: a, axes=(0,))
    with pytest.raises(ValueError, match="kernel, a bias or both"):
        Factorization("diagonal", None, lambda a: a, axes=(1,))
    with pytest.raises(ValueError, match="no bias"):
        Factorization("gather", layer.gamma, lambda a: a, bias=layer.gamma)
    with pytest.raises(ValueError, match="groups"):
        Factorization("dense", layer.gamma, lambda a: a, groups=2)
