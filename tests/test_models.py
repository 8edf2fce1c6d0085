"""Model zoo: shapes, parameterization pass-through, one fit step, save/load."""

import os

import keras
import numpy as np
import pytest

from kerntk import layers, models
from tests import numpy_reference as ref
from tests.layer_harness import check_one_sgd_step

ZOO = [
    ("fcn", lambda **kw: models.fcn(3, 16, out_dim=2, **kw), (5,)),
    ("fcn_images", lambda **kw: models.fcn(2, 8, **kw), (4, 4, 1)),
    ("cnn", lambda **kw: models.cnn(3, 4, out_dim=2, **kw), (8, 8, 3)),
    ("pnn", lambda **kw: models.pnn(3, 16, **kw), (4,)),
    ("pnn_ccp", lambda **kw: models.pnn(4, 8, form="ccp", blocks=2, **kw), (4,)),
    ("poly_cnn", lambda **kw: models.poly_cnn(2, 4, out_dim=3, **kw), (8, 8, 1)),
    ("myrtle5", lambda **kw: models.myrtle(5, 4, **kw), (16, 16, 3)),
    ("myrtle7", lambda **kw: models.myrtle(7, 4, **kw), (16, 16, 3)),
    ("myrtle10", lambda **kw: models.myrtle(10, 4, **kw), (16, 16, 3)),
]


@pytest.mark.parametrize("name,build,input_shape", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_fit_step_and_save_load(name, build, input_shape, tmp_path):
    rng = np.random.default_rng(0)
    model = build(input_shape=input_shape, seed=3)
    x = rng.standard_normal((32,) + input_shape).astype("float32")
    y = rng.standard_normal((32,) + tuple(model.output_shape[1:])).astype("float32")
    # Linear output layer: the last layer is an NTKDense without activation.
    assert isinstance(model.layers[-1], layers.NTKDense)
    assert model.layers[-1].activation is keras.activations.linear
    # NTK-parameterized weights are O(1) and their gradients carry 1/sqrt(fan_in): at the O(1)
    # learning rates this parameterization trains with, one step is resolvable in float32 (at
    # 1e-3 it was ~1e-8 against a float32 spacing of ~1e-7, i.e. rounding decided the test).
    check_one_sgd_step(model, x, y, learning_rate=1.0)
    path = os.path.join(str(tmp_path), f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_seed_makes_builders_reproducible():
    x = np.ones((2, 5), "float32")
    a = models.fcn(3, 8, input_shape=(5,), seed=1)(x)
    b = models.fcn(3, 8, input_shape=(5,), seed=1)(x)
    c = models.fcn(3, 8, input_shape=(5,), seed=2)(x)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_parameterization_reaches_every_layer(parameterization):
    for model in (models.fcn(3, 8, parameterization=parameterization, input_shape=(4,)),
                  models.cnn(2, 4, parameterization=parameterization, input_shape=(6, 6, 1)),
                  models.pnn(2, 8, parameterization=parameterization, input_shape=(4,))):
        weighted = [l for l in model.layers if l.weights]
        assert weighted and all(l.parameterization == parameterization for l in weighted)


def test_unbuilt_model_builds_on_first_call():
    model = models.fcn(2, 8)
    assert not model.built
    assert model(np.zeros((3, 7), "float32")).shape == (3, 1)


@pytest.mark.parametrize("make,argument", [
    (lambda: models.fcn(0, 8), "depth"),
    (lambda: models.fcn(3, 0), "width"),
    (lambda: models.cnn(3, 0), "channels"),
    (lambda: models.pnn(0, 8), "degree"),
    (lambda: models.pnn(2, 8, blocks=0), "blocks"),
    (lambda: models.myrtle(6), "depth"),
    (lambda: models.fcn(3, 8, out_dim=0), "out_dim"),
])
def test_bad_builder_arguments(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


def _numpy_forward(model, x):
    """float64 forward of a zoo fcn/pnn from its weights (tests/numpy_reference.py)."""
    a = x.reshape(len(x), -1)
    for layer in model.layers:
        if not isinstance(layer, layers.NTKDense):
            continue
        bias = None if layer.bias is None else layer.bias.numpy()
        z = ref.linear(a, layer.kernel.numpy(), bias, layer.W_std, layer.b_std,
                       layer.parameterization)
        if isinstance(layer, layers.PolyDense):
            a = ref.polynomial(z, layer.degree, "relu" if layer.activation is
                               keras.activations.relu else None, layer.skip, layer.W_std,
                               layer.b_std, layer.use_bias)
        else:
            a = ref.relu(z) if layer.activation is keras.activations.relu else z
    return a


@pytest.mark.parametrize("precision", ["floatx", "dtype_policy"])
@pytest.mark.parametrize("build", [
    lambda: models.fcn(3, 16, out_dim=2, input_shape=(5,), seed=0),
    lambda: models.pnn(2, 16, form="pnn", input_shape=(5,), seed=0),
], ids=["fcn", "pnn"])
def test_float64_model_does_not_round_its_inputs(build, precision):
    """A float64 zoo model matches a float64 numpy forward to ~1e-12: its keras.Input is float64,
    not float32 (inputs rounded to float32 give errors ~1e-7 relative)."""
    if precision == "floatx":
        keras.config.set_floatx("float64")
        keras.utils.clear_session()      # no global policy set: it follows floatx
    else:
        keras.config.set_dtype_policy("float64")
    model = build()
    assert model.inputs[0].dtype == "float64"
    x = np.random.default_rng(1).standard_normal((8, 5))
    want = _numpy_forward(model, x)
    got = [np.asarray(model(x)), model.predict_on_batch(x)]
    if precision == "floatx":
        # Keras' fit/predict cast float64 numpy inputs to floatx, so only here is predict exact.
        got.append(model.predict(x, verbose=0))
    for y in got:
        assert y.dtype == np.float64
        assert np.abs(y - want).max() <= 1e-12 * np.abs(want).max()


def test_mixed_precision_model_keeps_floatx_inputs():
    keras.config.set_dtype_policy("mixed_float16")
    assert models.fcn(2, 8, input_shape=(3,)).inputs[0].dtype == "float32"
