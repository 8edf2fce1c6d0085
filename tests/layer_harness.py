"""One harness that exercises every kerntk layer the same way (after keras-hub's run_layer_test).

Checks: config round trip, symbolic vs eager output shape, one ``fit`` step that applies a non-zero
SGD update to every trainable weight, the mixed_float16 / mixed_bfloat16 policies, and a ``.keras`` save/load round trip
with identical predictions.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from tests.conftest import TEST_SEED


def _model(layer_cls, init_kwargs, input_shape):
    inputs = keras.Input(shape=input_shape)
    h = layer_cls(**init_kwargs)(inputs)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


#: Samples in the one-step fit. Through a ReLU Hadamard product of several branches a unit is
#: non-zero on a sample with probability 2^-degree, so on 4 samples whole layers can be dead and
#: the head's gradient exactly zero; on 32 every unit is live with overwhelming probability.
_FIT_BATCH = 32
_LEARNING_RATE = 1e-2


def check_one_sgd_step(model, x, y, learning_rate: float = _LEARNING_RATE):
    """One ``fit`` step of plain SGD on ``(x, y)`` (MSE, one batch) moves every trainable weight by
    exactly ``-learning_rate * g``, with ``g`` the gradient computed here by a ``GradientTape``.

    Asserted per weight: ``g`` is not zero, and the largest step ``learning_rate * |g|`` is larger
    than the float32 spacing of the weight it updates (else the update is rounded away and no
    test can see it), and ``w_1 - w_0 = -learning_rate * g`` to float32 round-off: the rounding of
    the update itself (``2 eps (|w_0| + learning_rate |g|)``) plus a relative ``1e-3`` of the step
    for the two graphs (fit's and this tape's) summing the gradient in different orders.
    """
    import tensorflow as tf

    x, y = np.asarray(x, "float32"), np.asarray(y, "float32")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x, training=True))
    grads = [np.zeros(w.shape, "float32") if g is None else g.numpy()
             for w, g in zip(model.trainable_weights, tape.gradient(loss, model.trainable_weights))]
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    eps = np.finfo(np.float32).eps
    for w0, g, w in zip(before, grads, model.trainable_weights):
        step = learning_rate * np.abs(g)
        assert np.any(g != 0), f"no gradient reaches {w.path}"
        assert np.max(step - 2 * eps * np.abs(w0)) > 0, (
            f"the gradient of {w.path} (max |g| = {np.max(np.abs(g)):.2e}) is below what one step "
            f"at learning rate {learning_rate} can resolve in float32")
        tol = 2 * eps * (np.abs(w0) + step) + 1e-3 * step.max()
        np.testing.assert_array_less(np.abs(w.numpy() - (w0 - learning_rate * g)), tol + 1e-30,
                                     err_msg=f"{w.path} did not take the SGD step -lr * grad")


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape, tmp_path,
                   seed: int | None = None):
    rng = np.random.default_rng(TEST_SEED if seed is None else seed)
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

    # One fit step applies a non-zero gradient to every trainable weight.
    model = _model(layer_cls, init_kwargs, input_shape)
    check_one_sgd_step(model, rng.standard_normal((_FIT_BATCH,) + tuple(input_shape)),
                       rng.standard_normal((_FIT_BATCH, 1)))

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
