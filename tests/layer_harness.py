"""One harness that exercises every kerntk layer the same way (after keras-hub's run_layer_test).

Checks: config round trip, symbolic vs eager output shape, one ``fit`` step that changes every
trainable weight, the mixed_float16 / mixed_bfloat16 policies, and a ``.keras`` save/load round trip
with identical predictions.
"""

from __future__ import annotations

import os

import keras
import numpy as np


def _model(layer_cls, init_kwargs, input_shape):
    inputs = keras.Input(shape=input_shape)
    h = layer_cls(**init_kwargs)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape, tmp_path,
                   seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4,) + tuple(input_shape)).astype("float32")

    # Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config

    # Symbolic and eager shapes agree with the declared shape.
    symbolic = layer(keras.Input(shape=input_shape))
    assert tuple(symbolic.shape[1:]) == tuple(expected_output_shape)
    eager = layer(x)
    assert tuple(eager.shape) == (4,) + tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape((4,) + tuple(input_shape))) == tuple(eager.shape)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(eager)))

    # One fit step moves every trainable weight.
    model = _model(layer_cls, init_kwargs, input_shape)
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, rng.standard_normal((4, 1)).astype("float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for b, w in zip(before, model.trainable_weights):
        assert not np.allclose(b, w.numpy()), f"weight {w.path} did not move in one fit step"

    # Save / load gives identical predictions (default safe_mode).
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))

    # Mixed precision: low-precision compute, float32 variables, close to the float32 result.
    ref_layer = layer_cls(**init_kwargs)
    ref = keras.ops.convert_to_numpy(ref_layer(x))
    for policy, tol in (("mixed_float16", 2e-2), ("mixed_bfloat16", 1e-1)):
        mp_layer = layer_cls(dtype=policy, **init_kwargs)
        mp_layer.build((4,) + tuple(input_shape))
        for v_mp, v_ref in zip(mp_layer.weights, ref_layer.weights):
            assert v_mp.dtype == "float32"
            v_mp.assign(v_ref.numpy())
        out = mp_layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
        scale = np.max(np.abs(ref)) + 1e-6
        assert np.max(np.abs(out - ref)) <= tol * scale, policy
