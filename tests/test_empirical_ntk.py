"""Specification of kerntk.ntk.empirical_ntk.

Every kernel is checked against an independent brute force: per-example gradients from a plain
``tf.GradientTape`` loop (one example, one output unit at a time), ``K = J J^T`` in float64.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import kerntk
from kerntk.layers import NTKConv1D, NTKConv2D, NTKDense
from kerntk.ntk import empirical_ntk, ntk_operator

# Most tests skip XLA compilation (seconds per model) to stay fast; test_xla_default covers the
# default jit_compile=None path.
ntk = functools.partial(empirical_ntk, jit_compile=False)


def brute_jacobian(model, x, training=False):
    """(n, c, P) per-example Jacobian from a plain GradientTape loop, float64."""
    rows = []
    for i in range(x.shape[0]):
        with tf.GradientTape(persistent=True) as tape:
            out = model(x[i:i + 1], training=training)
            flat = tf.concat([tf.reshape(o, (-1,)) for o in tf.nest.flatten(out)], axis=0)
            units = [flat[k] for k in range(flat.shape[0])]
        per_unit = []
        for unit in units:
            grads = tape.gradient(unit, model.trainable_variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            per_unit.append(np.concatenate([np.asarray(tf.convert_to_tensor(g), np.float64).ravel()
                                            for g in grads]))
        rows.append(per_unit)
        del tape
    return np.array(rows)


def brute_kernels(J):
    n, c, _ = J.shape
    full = J.reshape(n * c, -1) @ J.reshape(n * c, -1).T
    trace = np.einsum("ikp,jkp->ij", J, J)
    return trace, full


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# ---------------------------------------------------------------------------------- models


def strided_cnn():
    return keras.Sequential([
        keras.Input((7, 6, 2)),
        NTKConv2D(3, 3, strides=2, padding="same", activation="relu"),
        NTKConv2D(4, (2, 3), strides=(1, 2), padding="valid", activation="relu"),
        keras.layers.Flatten(), NTKDense(2)])


def keras_layers():
    # Plain Keras Dense (also on rank-3 input) / Conv1D / Conv2D, and an NTKConv1D.
    inputs = keras.Input((6, 5, 2))
    h = keras.layers.Conv2D(3, 3, strides=(2, 1), padding="same", activation="tanh")(inputs)
    h = keras.layers.Reshape((3 * 5, 3))(h)
    h = keras.layers.Conv1D(4, 2, strides=2, activation="relu")(h)
    h = NTKConv1D(3, 3, padding="same", activation="relu")(h)
    h = keras.layers.Dense(4, activation="relu")(h)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    return keras.Model(inputs, out)


def mixed_multi_output():
    # A layer with weights and no factorization (PReLU) and two output heads (c = 3).
    inputs = keras.Input((5,))
    h = NTKDense(8, activation="tanh")(inputs)
    h = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.3))(h)
    h = NTKDense(6, activation="tanh")(h)
    return keras.Model(inputs, [NTKDense(2)(h), keras.layers.Dense(1)(h)])


MODELS = {
    "fcn": (lambda: kerntk.models.fcn(3, 12, 2, input_shape=(5,)), (5,)),
    "cnn": (lambda: kerntk.models.cnn(3, 3, 1, input_shape=(5, 5, 2)), (5, 5, 2)),
    "cnn_strided": (strided_cnn, (7, 6, 2)),
    "pnn": (lambda: kerntk.models.pnn(3, 6, 2, use_bias=True, input_shape=(4,)), (4,)),
    "ccp": (lambda: kerntk.models.pnn(2, 6, 1, form="ccp", blocks=2, input_shape=(4,)), (4,)),
    "poly_cnn": (lambda: kerntk.models.poly_cnn(2, 3, 2, blocks=1, input_shape=(6, 6, 1)),
                 (6, 6, 1)),
    "keras_layers": (keras_layers, (6, 5, 2)),
    "mixed_multi_output": (mixed_multi_output, (5,)),
}
STRUCTURED = {name: "auto" if name == "mixed_multi_output" else "structured" for name in MODELS}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_structured_matches_jacobian_and_brute_force_float64(name, rng):
    keras.config.set_dtype_policy("float64")
    build, shape = MODELS[name]
    model = build()
    x = rng.standard_normal((6,) + shape)
    trace, full = brute_kernels(brute_jacobian(model, x))
    method = STRUCTURED[name]
    K_full = ntk(model, x, method=method, outputs="full")
    assert K_full.dtype == np.float64 and K_full.shape == full.shape
    assert rel(K_full, full) < 1e-10
    assert rel(ntk(model, x, method=method), trace) < 1e-10
    assert rel(ntk(model, x, method="jacobian", outputs="full"), full) < 1e-10
    c = full.shape[0] // x.shape[0]
    last = ntk(model, x, method=method, outputs=-1)
    assert rel(last, full[c - 1::c, c - 1::c]) < 1e-10


@pytest.mark.parametrize("name", sorted(MODELS))
def test_structured_matches_jacobian_float32(name, rng):
    build, shape = MODELS[name]
    model = build()
    x = rng.standard_normal((5,) + shape).astype("float32")
    K_jac = ntk(model, x, method="jacobian")
    assert rel(ntk(model, x, method=STRUCTURED[name]), K_jac) < 1e-5
    assert rel(K_jac, brute_kernels(brute_jacobian(model, x))[0]) < 1e-5


def test_conv_patch_and_gradient_forms_agree(rng, monkeypatch):
    # The per-layer form is chosen by a FLOP estimate; force each one in turn.
    from kerntk.ntk import blocks
    keras.config.set_dtype_policy("float64")
    model = strided_cnn()
    x = rng.standard_normal((4, 7, 6, 2))
    kernels = {}
    for form in ("patch", "grad"):
        monkeypatch.setattr(blocks, "choose_form",
                            lambda n1, n2, S, F, C, c, full, form=form: "patch" if S == 1 else form)
        kernels[form] = ntk(model, x, method="structured", outputs="full")
        # Fresh compiled functions for the next form.
        model.__dict__.pop("_kerntk_ntk_cache", None)
    assert rel(kernels["patch"], kernels["grad"]) < 1e-10


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_block_size_gives_the_same_kernel(method, rng):
    keras.config.set_dtype_policy("float64")
    model = MODELS["cnn_strided"][0]()
    x = rng.standard_normal((6, 7, 6, 2))
    for outputs in ("trace", "full"):
        K = ntk(model, x, method=method, outputs=outputs)
        K_blocks = ntk(model, x, method=method, outputs=outputs, block_size=3)
        assert rel(K_blocks, K) < 1e-12
        np.testing.assert_array_equal(K_blocks, K_blocks.T)


def test_kernel_is_symmetric_psd(rng):
    model = kerntk.models.fcn(3, 16, 2, input_shape=(5,))
    K = ntk(model, rng.standard_normal((8, 5)), outputs="full")
    np.testing.assert_allclose(K, K.T, rtol=1e-5, atol=1e-6 * np.abs(K).max())
    assert np.linalg.eigvalsh((K + K.T) / 2).min() > -1e-5 * np.abs(K).max()


# ------------------------------------------------------------------------------- bad input


def test_non_finite_and_empty_inputs_raise(rng):
    model = kerntk.models.fcn(2, 8, input_shape=(3,))
    for bad in (np.nan, np.inf, -np.inf):
        x = rng.standard_normal((4, 3))
        x[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            ntk(model, x)
    with pytest.raises(ValueError, match="empty"):
        ntk(model, np.zeros((0, 3)))


def test_wrong_shapes_and_arguments_raise(rng):
    model = kerntk.models.fcn(2, 8, 2, input_shape=(3,))
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="expects"):
        ntk(model, rng.standard_normal((4, 5)))
    with pytest.raises(ValueError, match="batch axis"):
        ntk(model, np.ones(3))
    with pytest.raises(ValueError, match="method"):
        ntk(model, x, method="magic")
    with pytest.raises(ValueError, match="outputs"):
        ntk(model, x, outputs="diag")
    with pytest.raises(ValueError, match="out of range"):
        ntk(model, x, outputs=2)
    with pytest.raises(ValueError, match="block_size"):
        ntk(model, x, block_size=0)
    with pytest.raises(ValueError, match="dtype"):
        ntk(model, x, dtype="float16")


def test_structured_refuses_unfactorizable_layers_and_restores_calls(rng):
    model = mixed_multi_output()
    with pytest.raises(ValueError, match="p_re_lu.*auto"):
        ntk(model, rng.standard_normal((3, 5)), method="structured")
    for layer in model._flatten_layers(include_self=True, recursive=True):
        assert "call" not in layer.__dict__


def batchnorm_model():
    return keras.Sequential([keras.Input((4,)), NTKDense(6, activation="relu"),
                             keras.layers.BatchNormalization(), NTKDense(1)])


def test_batchnorm_in_training_mode_is_refused_by_structured(rng):
    model = batchnorm_model()
    x = rng.standard_normal((6, 4)).astype("float32")
    with pytest.raises(ValueError, match="independent examples"):
        ntk(model, x, method="structured", training=True)
    with pytest.raises(ValueError, match="independent examples"):
        ntk(model, x, method="jacobian", training=True, block_size=3)
    stats = [v.numpy().copy() for v in model.non_trainable_variables]
    with pytest.warns(UserWarning, match="jacobian"):
        K_auto = ntk(model, x, training=True)
    np.testing.assert_allclose(K_auto, ntk(model, x, method="jacobian", training=True),
                               rtol=1e-6)
    for before, v in zip(stats, model.non_trainable_variables):  # no moving-stat update
        np.testing.assert_array_equal(before, v.numpy())
    # Brute force of the batched function: one gradient per row of f(x) with batch statistics.
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)[:, 0]
        units = [out[i] for i in range(x.shape[0])]
    J = np.array([np.concatenate([np.ravel(g) for g in tape.gradient(u, model.trainable_variables)])
                  for u in units], dtype=np.float64)
    assert rel(K_auto, J @ J.T) < 1e-5
    # Inference mode: samples are independent again and structured is exact.
    K = ntk(model, x, method="auto", training=False)
    assert rel(K, brute_kernels(brute_jacobian(model, x))[0]) < 1e-5


def test_any_batch_mixing_is_detected(rng):
    model = keras.Sequential([
        keras.Input((4,)), NTKDense(6, activation="relu"),
        keras.layers.Lambda(lambda t: t - ops.mean(t, axis=0, keepdims=True)), NTKDense(1)])
    x = rng.standard_normal((5, 4)).astype("float32")
    with pytest.raises(ValueError, match="depends on the rest of the batch"):
        ntk(model, x, method="structured")
    with pytest.warns(UserWarning, match="jacobian"):
        K = ntk(model, x)
    np.testing.assert_allclose(K, ntk(model, x, method="jacobian"), rtol=1e-6)


def test_unbuilt_model_is_built(rng):
    keras.config.set_dtype_policy("float64")
    model = kerntk.models.fcn(3, 8, 1)  # no input_shape
    assert not model.built
    x = rng.standard_normal((5, 3))
    K = ntk(model, x, method="structured")
    assert model.built
    assert rel(K, brute_kernels(brute_jacobian(model, x))[0]) < 1e-10


def test_mixed_precision_model_is_computed_in_float32(rng):
    keras.config.set_dtype_policy("mixed_float16")
    model = kerntk.models.fcn(3, 32, 1, input_shape=(6,), seed=1)
    keras.config.set_dtype_policy("float32")
    reference = kerntk.models.fcn(3, 32, 1, input_shape=(6,))
    reference.set_weights(model.get_weights())
    x = rng.standard_normal((6, 6)).astype("float32")
    K_ref = brute_kernels(brute_jacobian(reference, x))[0]
    for method in ("structured", "jacobian"):
        K = ntk(model, x, method=method)
        assert K.dtype == np.float64
        assert rel(K, K_ref) < 1e-5  # float16 arithmetic would be off by ~1e-3
    assert model.layers[1].compute_dtype == "float16"  # policy restored


def test_float64_compute_of_a_float32_model(rng):
    model = kerntk.models.fcn(3, 16, 1, input_shape=(4,))
    x = rng.standard_normal((5, 4)).astype("float32")
    K64 = ntk(model, x, dtype="float64")
    K32 = ntk(model, x)
    assert rel(K64, K32) < 1e-5
    assert model.layers[1].compute_dtype == "float32"


@pytest.mark.parametrize("name", ["fcn", "cnn_strided", "mixed_multi_output"])
def test_xla_default_matches_brute_force(name, rng):
    keras.config.set_dtype_policy("float64")
    build, shape = MODELS[name]
    model = build()
    x = rng.standard_normal((5,) + shape)
    _, full = brute_kernels(brute_jacobian(model, x))
    assert rel(empirical_ntk(model, x, outputs="full"), full) < 1e-10
    with pytest.raises(ValueError, match="jit_compile"):
        empirical_ntk(model, x, jit_compile="yes")


@pytest.mark.parametrize("block_size", [None, 3])
def test_return_outputs_are_the_model_outputs(block_size):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 5)).astype("float32")
    model = kerntk.models.fcn(3, 16, out_dim=2, input_shape=(5,), seed=3)
    K, f = empirical_ntk(model, x, outputs="full", block_size=block_size, return_outputs=True)
    np.testing.assert_allclose(f, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(K, empirical_ntk(model, x, outputs="full",
                                                   block_size=block_size))


# ------------------------------------------------------------- in-graph (training-step) API


@pytest.mark.parametrize("name", sorted(MODELS))
def test_kernel_fn_with_unknown_batch_size_matches_brute_force(name, rng):
    # Inside a tf.function traced for (None, ...) inputs, as in a Keras training step.
    make, shape = MODELS[name]
    model = make()
    x = rng.standard_normal((5,) + shape).astype("float32")
    model(x)
    fn = kerntk.ntk.empirical.kernel_fn(model, method=STRUCTURED[name], outputs="full")
    graph = tf.function(lambda t: fn(t), input_signature=[
        tf.TensorSpec((None,) + shape, tf.float32)])
    for n in (5, 3):  # one trace, two batch sizes
        K, f, _ = graph(x[:n])
        full = brute_kernels(brute_jacobian(model, x[:n]))[1]
        assert rel(K.numpy(), full) < 1e-5
        np.testing.assert_allclose(f.numpy(), np.concatenate(
            [np.reshape(o, (n, -1)) for o in tf.nest.flatten(model(x[:n]))], axis=1), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"mixed_multi_output"}))
@pytest.mark.parametrize("outputs", ["full", "trace"])
def test_forward_ntk_shares_a_training_step_and_gives_the_kernel_before_it(name, outputs, rng):
    make, shape = MODELS[name]
    model = make()
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = rng.standard_normal((4,) + shape).astype("float32")
    y = rng.standard_normal((4,) + model(x).shape[1:]).astype("float32")
    trace, full = brute_kernels(brute_jacobian(model, x))  # at w_t
    f_before = model(x).numpy().reshape(4, -1)

    @tf.function(input_signature=[tf.TensorSpec((None,) + shape, tf.float32),
                                  tf.TensorSpec((None,) + y.shape[1:], tf.float32)])
    def step(xb, yb):
        assert kerntk.ntk.empirical.shareable_forward(model, xb[:2], "float32")
        recorder = kerntk.ntk.empirical.ForwardNTK(model, outputs=outputs)
        with recorder.recording():
            model.train_step((xb, yb))  # Keras' own forward pass, then the update
        return recorder.kernel()

    K, f = step(x, y)
    assert rel(K.numpy(), full if outputs == "full" else trace) < 1e-5
    np.testing.assert_allclose(f.numpy(), f_before, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model(x).numpy().reshape(4, -1), f_before)  # the step happened
    assert "call" not in model.__dict__


def test_shareable_forward_refuses_what_it_cannot_share(rng):
    x = tf.constant(rng.standard_normal((2, 5)).astype("float32"))
    dropout = keras.Sequential([keras.Input((5,)), NTKDense(4), keras.layers.Dropout(0.5),
                                NTKDense(1)])
    share = kerntk.ntk.empirical.shareable_forward
    assert share(kerntk.models.fcn(2, 4, input_shape=(5,)), x, "float32")
    assert not share(dropout, x, "float32")                       # training-dependent layer
    assert not share(mixed_multi_output(), x, "float32")          # PReLU weights
    assert not share(kerntk.models.fcn(2, 4, input_shape=(5,)), x, "float64")  # other dtype


class NoTrainingArg(keras.Model):
    """A subclassed model whose ``call`` takes no ``training`` (issue 11: every engine entry
    point raised TypeError, since ``stateless_call`` passes it through unfiltered)."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.head = keras.layers.Dense(2)

    def call(self, x):
        return self.head(self.hidden(x))


def test_subclassed_model_without_training_argument(rng):
    keras.config.set_dtype_policy("float64")
    model = NoTrainingArg()
    x = rng.standard_normal((5, 3))
    model(x)
    rows = []
    for i in range(5):
        with tf.GradientTape(persistent=True) as tape:
            out = tf.reshape(model(x[i:i + 1]), [-1])
            units = [out[k] for k in range(2)]
        rows.append([np.concatenate([np.ravel(g) for g in
                                     tape.gradient(u, model.trainable_variables)])
                     for u in units])
    trace, full = brute_kernels(np.array(rows))
    assert rel(ntk(model, x, outputs="full"), full) < 1e-10
    assert rel(ntk(model, x, method="jacobian"), trace) < 1e-10
    v = rng.standard_normal(5)
    assert rel(ntk_operator(model, x) @ v, trace @ v) < 1e-10
    # critical_lr's NTK estimate: n c / lambda_max(K_full) for Keras MSE.
    expected = 5 * 2 / np.linalg.eigvalsh(full)[-1]
    assert abs(kerntk.spectral.critical_lr(model, x) / expected - 1) < 1e-8
