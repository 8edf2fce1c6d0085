"""Taylor-expanded models (thesis Ch. 3 Eq. 3.1–3.3) and paper 001's randomized two-layer net.

Every expected value is derived independently of the implementation: autodiff of the base model,
exact algebra of models that are polynomial in their weights, convergence orders, closed forms of
the paper, or brute force over sign patterns.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerntk.layers import GeneralQuadratic, NTKDense, SymmetricTwoLayer
from kerntk.models import TaylorModel, linearize, quadratic, taylor, taylor_term


@pytest.fixture
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield


def _net(d=4, width=16, depth=2, activation="tanh", use_bias=True, seed=0):
    layers = [keras.Input((d,))]
    layers += [NTKDense(width, activation=activation, use_bias=use_bias, seed=seed + 2 * i)
               for i in range(depth - 1)]
    layers.append(NTKDense(2, use_bias=use_bias, seed=seed + 2 * depth))
    return keras.Sequential(layers)


def _moved(model, directions, eps):
    """A copy of `model` with weights w0 + eps * v."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for w, v in zip(clone.trainable_variables, directions):
        w.assign(w + eps * v)
    return clone


def _directions(model, rng):
    return [rng.standard_normal(w.shape) for w in model.trainable_variables]


def _set_delta(tm, directions, eps):
    for d, v in zip(tm.delta, directions):
        d.assign(eps * v)


def test_linearized_matches_value_and_gradient_at_w0(float64, rng):
    model = _net(depth=3)
    x = rng.standard_normal((5, 4))
    c = rng.standard_normal((5, 2))
    f_lin = linearize(model)
    assert len(f_lin.trainable_weights) == len(model.trainable_weights)
    np.testing.assert_allclose(f_lin(x), model(x), rtol=1e-12, atol=1e-12)
    with tf.GradientTape() as tape:
        a = tf.reduce_sum(model(x) * c)
    ga = tape.gradient(a, model.trainable_variables)
    with tf.GradientTape() as tape:
        b = tf.reduce_sum(f_lin(x) * c)
    gb = tape.gradient(b, f_lin.trainable_variables)
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(v, u, rtol=1e-10, atol=1e-12)


def test_linearized_is_affine_in_delta(float64, rng):
    model = _net()
    x = rng.standard_normal((3, 4))
    v = _directions(model, rng)
    f_lin = linearize(model)
    f0 = model(x).numpy()
    _set_delta(f_lin, v, 0.7)
    a = f_lin(x).numpy() - f0
    _set_delta(f_lin, v, -2.1)
    b = f_lin(x).numpy() - f0
    np.testing.assert_allclose(b, -3.0 * a, rtol=1e-9, atol=1e-12)


def test_quadratic_is_exact_for_a_model_quadratic_in_its_weights(float64, rng):
    # f(W1, W2; x) = x W1 W2 (2-layer linear net) is a quadratic polynomial in the weights.
    model = _net(width=8, activation=None, use_bias=False)
    x = rng.standard_normal((6, 4))
    v = _directions(model, rng)
    f_quad = quadratic(model)
    _set_delta(f_quad, v, 1.5)  # far from w0: exactness, not approximation
    np.testing.assert_allclose(f_quad(x), _moved(model, v, 1.5)(x), rtol=1e-10, atol=1e-10)
    f_lin = linearize(model)
    _set_delta(f_lin, v, 1.5)
    assert np.max(np.abs(f_lin(x) - _moved(model, v, 1.5)(x))) > 1e-3


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taylor_error_scales_as_eps_to_the_order_plus_one(float64, rng, order):
    model = _net(depth=3, width=12)
    x = rng.standard_normal((4, 4))
    v = _directions(model, rng)
    tm = taylor(model, order=order)
    eps = np.geomspace(1e-2, 1e-1, 5)
    err = []
    for e in eps:
        _set_delta(tm, v, e)
        err.append(np.linalg.norm(_moved(model, v, e)(x) - tm(x)))
    slope = np.polyfit(np.log(eps), np.log(err), 1)[0]
    assert abs(slope - (order + 1)) < 0.25, (order, slope)


def test_terms_sum_to_the_taylor_polynomial(float64, rng):
    model = _net(depth=3, width=8)
    x = rng.standard_normal((3, 4))
    v = _directions(model, rng)
    models = [taylor(model, order=3)] + [taylor_term(model, k) for k in (1, 2, 3)]
    for tm in models:
        _set_delta(tm, v, 0.3)
    total = model(x) + sum(t(x) for t in models[1:])
    np.testing.assert_allclose(models[0](x), total, rtol=1e-10, atol=1e-12)


def test_generic_kth_term_matches_closed_form_of_paper_001(float64, rng):
    d, m = 3, 10
    layer = SymmetricTwoLayer(m, activation="tanh", eval_mode="deterministic", seed=1)
    model = keras.Sequential([keras.Input((d,)), layer])
    x = rng.standard_normal((5, d))
    w = 0.4 * rng.standard_normal((d, m))
    terms = {k: taylor_term(model, k) for k in (1, 2, 3)}  # expanded around W = 0
    layer.kernel.assign(w)
    for k, t in terms.items():
        t.delta[0].assign(w)
        np.testing.assert_allclose(t(x), layer.kth_order_term(x, k), rtol=1e-9, atol=1e-12)
    # Hand-written f^(2) for tanh: σ'' = -2 tanh sech², halves ±1.
    pre = x @ layer.w0_half.numpy()
    s2 = -2 * np.tanh(pre) / np.cosh(pre) ** 2
    move = x @ w
    f2 = (s2 / 2 * (move[:, :m // 2] ** 2 - move[:, m // 2:] ** 2)).sum(1) / np.sqrt(m)
    np.testing.assert_allclose(layer.kth_order_term(x, 2)[:, 0], f2, rtol=1e-9)


def test_expected_mode_removes_odd_taylor_terms(float64, rng):
    d, m = 3, 8
    layer = SymmetricTwoLayer(m, activation="tanh", eval_mode="expected", seed=2)
    model = keras.Sequential([keras.Input((d,)), layer])
    x = rng.standard_normal((4, d))
    w = 0.3 * rng.standard_normal((d, m))
    t1, t2 = taylor_term(model, 1), taylor_term(model, 2)
    layer.kernel.assign(w)
    t1.delta[0].assign(w)
    t2.delta[0].assign(w)
    np.testing.assert_allclose(t1(x), 0.0, atol=1e-12)
    np.testing.assert_allclose(t2(x), layer.kth_order_term(x, 2), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["expected", "sample", "deterministic"])
def test_symmetric_initialization_outputs_exactly_zero(rng, mode):
    layer = SymmetricTwoLayer(64, activation="relu3", eval_mode=mode, seed=3)
    x = rng.standard_normal((16, 10)).astype("float32")
    assert np.all(layer(x).numpy() == 0.0)
    assert np.all(layer(x, training=True).numpy() == 0.0)
    w0 = layer.w0.numpy()
    np.testing.assert_array_equal(w0[:, :32], w0[:, 32:])
    np.testing.assert_array_equal(layer.output_weights.numpy(), [1.0] * 32 + [-1.0] * 32)


def test_expected_mode_is_the_average_over_all_sign_matrices(float64, rng):
    d, m = 3, 4
    layer = SymmetricTwoLayer(m, activation="relu3", seed=4)
    x = rng.standard_normal((5, d))
    layer(x)
    w = rng.standard_normal((d, m))
    layer.kernel.assign(w)
    w0, a = layer.w0.numpy(), layer.output_weights.numpy()
    brute = np.zeros(5)
    for signs in itertools.product([-1.0, 1.0], repeat=m):
        z = x @ (w0 + w * np.array(signs))
        brute += (np.maximum(z, 0) ** 3 @ a) / np.sqrt(m)
    np.testing.assert_allclose(layer(x)[:, 0], brute / 2 ** m, rtol=1e-10)


def test_randomized_training_gradient_matches_paper_expression(float64, rng):
    # 001 Sec. 3.1: loss ℓ(y, f_{W0+WΣ}(x)); ∂f/∂w_r = a_r σ'((w0_r + Σ_rr w_r)ᵀx) Σ_rr x / √m.
    n, d, m = 5, 3, 8
    layer = SymmetricTwoLayer(m, activation="relu3", seed=5)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, 1))
    layer(x)
    layer.kernel.assign(0.5 * rng.standard_normal((d, m)))
    draws = []
    for _ in range(4):
        with tf.GradientTape() as tape:
            f = layer(x, training=True)
            loss = tf.reduce_mean((f - y) ** 2)
        grad = tape.gradient(loss, layer.kernel).numpy()
        s = layer.last_signs.numpy()
        draws.append(s.copy())
        w0, w, a = layer.w0.numpy(), layer.kernel.numpy(), layer.output_weights.numpy()
        z = x @ (w0 + w * s)
        f_ref = (np.maximum(z, 0) ** 3 @ a)[:, None] / np.sqrt(m)
        np.testing.assert_allclose(f, f_ref, rtol=1e-10)
        dfdw = (x[:, :, None] * (a * 3 * np.maximum(z, 0) ** 2 * s)[:, None, :]) / np.sqrt(m)
        grad_ref = np.einsum("i,ijr->jr", 2 * (f_ref - y)[:, 0] / n, dfdw)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-9, atol=1e-12)
    assert set(np.unique(np.concatenate(draws))) == {-1.0, 1.0}
    assert any(not np.array_equal(draws[0], s) for s in draws[1:])  # fresh Σ per step


def test_general_quadratic_formula_gradient_and_exact_nqm(float64, rng):
    d, gamma = 6, 0.3
    layer = GeneralQuadratic(gamma=gamma, seed=0)
    model = keras.Sequential([keras.Input((d,)), layer])
    x = rng.standard_normal((4, d))
    w, s = layer.kernel.numpy()[:, 0], layer.sigma_diag.numpy()
    assert set(np.unique(s)) <= {-1.0, 1.0}
    phi = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(model(x)[:, 0], phi @ w + 0.5 * gamma * np.sum(s * w ** 2),
                               rtol=1e-12)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(model(x)[0])
    np.testing.assert_allclose(tape.gradient(out, layer.kernel)[:, 0], phi[0] + gamma * s * w,
                               rtol=1e-12)
    # Eq. 3.3 is quadratic in w, so its neural quadratic model (Eq. 3.2) reproduces it exactly.
    v = [rng.standard_normal((d, 1))]
    nqm = quadratic(model)
    _set_delta(nqm, v, 2.0)
    np.testing.assert_allclose(nqm(x), _moved(model, v, 2.0)(x), rtol=1e-10)


def test_general_quadratic_random_projection_and_validation(rng):
    layer = GeneralQuadratic(feature_map="random_projection", features=7, sigma="identity")
    assert layer(rng.standard_normal((3, 5)).astype("float32")).shape == (3, 1)
    assert layer.projection.shape == (5, 7)
    np.testing.assert_array_equal(layer.sigma_diag.numpy(), np.ones(7))
    with pytest.raises(ValueError, match="feature_map"):
        GeneralQuadratic(feature_map="fourier")
    with pytest.raises(ValueError, match="sigma"):
        GeneralQuadratic(sigma="full")
    with pytest.raises(ValueError, match="features"):
        GeneralQuadratic(feature_map="random_projection")
    with pytest.raises(ValueError, match="features"):
        GeneralQuadratic(features=3)


def test_validation_errors():
    built = _net()
    with pytest.raises(ValueError, match="order"):
        taylor(built, order=0)
    with pytest.raises(ValueError, match="order"):
        TaylorModel(built, order=True)
    with pytest.raises(ValueError, match="built"):
        quadratic(keras.Sequential([NTKDense(3)]))
    with pytest.raises(ValueError, match="Keras model"):
        quadratic(lambda x: x)
    with pytest.raises(ValueError, match="even"):
        SymmetricTwoLayer(5)
    with pytest.raises(ValueError, match="eval_mode"):
        SymmetricTwoLayer(4, eval_mode="mean")
    with pytest.raises(ValueError, match="activation"):
        SymmetricTwoLayer(4, activation="nope")


def test_fit_trains_delta_and_leaves_base_unchanged(rng):
    model = _net(d=5, width=32, activation="relu")
    x = rng.standard_normal((32, 5)).astype("float32")
    y = rng.standard_normal((32, 2)).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    for tm in (linearize(model), quadratic(model), taylor(model, order=3)):
        tm.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        hist = tm.fit(x, y, epochs=8, batch_size=32, verbose=0).history["loss"]
        assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
        assert any(np.abs(d.numpy()).max() > 0 for d in tm.delta)
        np.testing.assert_array_equal(tm.w0[0].numpy(), before[0])
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_randomized_net_trains_with_fit(rng):
    x = rng.standard_normal((64, 6)).astype("float32")
    y = np.prod(x[:, :2], axis=1, keepdims=True).astype("float32")
    model = keras.Sequential([keras.Input((6,)), SymmetricTwoLayer(256, seed=0)])
    # 0.01: at 0.02 one draw of x in seven blew up (the training-mode loss, with Σ redrawn every
    # step, is noisy and its stable range depends on x); over eight draws 120 steps at 0.01 cut
    # the eval loss to 0.57-0.97 of its start.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    before = model.evaluate(x, y, verbose=0)  # eval mode: the expectation over Σ
    hist = model.fit(x, y, epochs=120, batch_size=64, verbose=0).history["loss"]
    assert np.all(np.isfinite(hist))
    # The eval-mode loss is deterministic (no Σ draw), so any decrease is the training's.
    assert model.evaluate(x, y, verbose=0) < before


def test_stateless_call_and_trainable_weights_behave_for_an_ntk_engine(float64, rng):
    model = _net(depth=3)
    x = rng.standard_normal((3, 4))
    tm = quadratic(model)
    v = _directions(model, rng)
    tvals = [tf.constant(0.2 * a) for a in v]
    ntvals = [w.value for w in tm.non_trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(tvals)
        out, _ = tm.stateless_call(tvals, ntvals, x)
        s = tf.reduce_sum(out)
    g_stateless = tape.gradient(s, tvals)
    _set_delta(tm, v, 0.2)
    np.testing.assert_allclose(out, tm(x), rtol=1e-12)
    with tf.GradientTape() as tape:
        s2 = tf.reduce_sum(tm(x))
    for a, b in zip(g_stateless, tape.gradient(s2, tm.trainable_variables)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # The gradient of f_quad is ∇f(w0) + H Δ: at Δ = 0.2 v it differs from ∇f(w0) by O(0.2).
    assert [w.path for w in tm.trainable_weights] == [w.path for w in tm.delta]


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # f^(2) has no output-bias term
@pytest.mark.parametrize("builder", [linearize, quadratic, lambda m: taylor(m, order=3),
                                     lambda m: taylor_term(m, 2)])
def test_taylor_models_save_and_load(tmp_path, rng, builder):
    model = _net(d=5, width=16)
    x = rng.standard_normal((8, 5)).astype("float32")
    y = rng.standard_normal((8, 2)).astype("float32")
    tm = builder(model)
    tm.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    tm.fit(x, y, epochs=2, verbose=0)
    path = str(tmp_path / "taylor.keras")
    tm.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TaylorModel)
    assert (loaded.order, loaded.term_only) == (tm.order, tm.term_only)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), tm.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    loaded.reset_delta()  # back to w0, i.e. the original network's weights
    if not tm.term_only:
        np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    loaded.fit(x, y, epochs=1, verbose=0)  # still trainable after loading


@pytest.mark.parametrize("layer", [lambda: GeneralQuadratic(seed=0),
                                   lambda: SymmetricTwoLayer(8, eval_mode="sample", seed=0)])
def test_layers_save_and_load(tmp_path, rng, layer):
    model = keras.Sequential([keras.Input((5,)), layer()])
    x = rng.standard_normal((8, 5)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, epochs=2, verbose=0)
    path = str(tmp_path / "layer.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.layers[-1].get_config() == model.layers[-1].get_config()
    if isinstance(model.layers[-1], GeneralQuadratic):
        np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_k_th_order_term_at_zero_and_factorial(rng):
    layer = SymmetricTwoLayer(6, activation="square", eval_mode="deterministic", seed=0)
    x = rng.standard_normal((3, 2)).astype("float32")
    layer(x)
    w = rng.standard_normal((2, 6)).astype("float32")
    layer.kernel.assign(w)
    # σ = t²: f = f^(1) + f^(2) exactly, f^(0) = 0 and f^(k>2) = 0.
    total = sum(layer.kth_order_term(x, k) for k in range(5))
    np.testing.assert_allclose(total, layer(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.kth_order_term(x, 3), 0.0, atol=1e-7)


def test_ntk_engine_differentiates_taylor_models(rng):
    empirical_ntk = pytest.importorskip("kerntk.ntk").empirical_ntk
    model = _net(d=5, width=32, activation="relu")
    x = rng.standard_normal((6, 5)).astype("float32")
    K0 = empirical_ntk(model, x)
    f_lin, f_quad = linearize(model), quadratic(model)
    scale = np.abs(K0).max()
    for tm in (f_lin, f_quad):  # at Δw = 0 both have the tangent kernel of f at w0
        np.testing.assert_allclose(empirical_ntk(tm, x), K0, atol=1e-5 * scale)
    v = _directions(model, rng)
    _set_delta(f_lin, v, 0.5)
    _set_delta(f_quad, v, 0.5)
    # f_lin is linear in its weights, so its kernel never changes; f_quad's does (Hessian ≠ 0).
    np.testing.assert_allclose(empirical_ntk(f_lin, x), K0, atol=1e-5 * scale)
    assert np.abs(empirical_ntk(f_quad, x) - K0).max() > 1e-2 * scale


@pytest.mark.parametrize("kwargs", [dict(seed=0), dict(feature_map="random_projection",
                                                       features=6, sigma="identity", seed=1)])
def test_general_quadratic_passes_the_layer_harness(tmp_path, kwargs):
    from tests.layer_harness import run_layer_test
    run_layer_test(GeneralQuadratic, kwargs, (5,), (1,), tmp_path)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_symmetric_two_layer_mixed_precision(rng, policy):
    x = rng.standard_normal((4, 5)).astype("float32")
    layer = SymmetricTwoLayer(8, dtype=policy, seed=0)
    for training in (False, True):
        out = layer(x, training=training)
        assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
        assert np.all(keras.ops.convert_to_numpy(out) == 0)
    assert layer.kernel.dtype == "float32"
