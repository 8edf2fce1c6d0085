"""Model zoo: shapes, parameterization pass-through, one fit step, save/load."""

import os

import keras
import numpy as np
import pytest

from kerntk import layers, models

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
    x = rng.standard_normal((6,) + input_shape).astype("float32")
    y = rng.standard_normal((6,) + tuple(model.output_shape[1:])).astype("float32")
    # Linear output layer: the last layer is an NTKDense without activation.
    assert isinstance(model.layers[-1], layers.NTKDense)
    assert model.layers[-1].activation is keras.activations.linear
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.fit(x, y, epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
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
