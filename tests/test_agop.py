"""AGOP vs per-example batch_jacobian, alignment identities (matrices vs factors, numpy Pearson),
and the AGOP of the rank-2 target x1 x2."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerntk
from kerntk import agop as ag


def reference_jacobians(model, x):
    """(n, c, d) per-example input Jacobians by tf batch_jacobian."""
    xt = tf.constant(x, dtype=model.trainable_variables[0].dtype)
    with tf.GradientTape() as t:
        t.watch(xt)
        out = tf.reshape(model(xt), (x.shape[0], -1))
    J = t.batch_jacobian(out, xt).numpy().astype(np.float64)
    return J.reshape(x.shape[0], out.shape[1], -1)


def model_and_data(dtype="float64", c=3):
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    x = np.random.default_rng(0).normal(size=(9, 2, 3)).astype(dtype)   # flattened d = 6
    return kerntk.models.fcn(3, 32, out_dim=c, input_shape=(2, 3), seed=0), x


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_agop_equals_batch_jacobian(dtype, rtol):
    m, x = model_and_data(dtype)
    J = reference_jacobians(m, x)
    G_ref = np.einsum("ncd,nce->de", J, J) / x.shape[0]
    G = ag.agop(m, x)
    assert G.shape == (6, 6) and G.dtype == np.float64
    np.testing.assert_allclose(G, G_ref, rtol=rtol, atol=rtol * np.abs(G_ref).max())
    np.testing.assert_allclose(ag.agop(m, x, batch_size=4), G_ref, rtol=rtol,
                               atol=rtol * np.abs(G_ref).max())
    # low-rank factor: G = F^T F / n with sample-major rows
    fac = ag.agop(m, x, low_rank=True)
    assert fac.factor.shape == (27, 6) and fac.n == 9
    np.testing.assert_allclose(fac.factor, J.reshape(27, 6), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(fac.matrix(), G_ref, rtol=rtol, atol=rtol * np.abs(G_ref).max())


def test_centered_agop_is_the_gradient_covariance():
    m, x = model_and_data()
    J = reference_jacobians(m, x)
    gbar = J.mean(axis=0)                                   # (c, d)
    G_ref = np.einsum("ncd,nce->de", J, J) / 9 - gbar.T @ gbar
    np.testing.assert_allclose(ag.agop(m, x, center=True), G_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ag.agop(m, x, center=True, low_rank=True).matrix(), G_ref,
                               rtol=1e-10, atol=1e-12)


def test_alignment_identities_and_factor_path():
    m, x = model_and_data()
    m2 = kerntk.models.fcn(2, 16, out_dim=1, input_shape=(2, 3), seed=5)
    G, F = ag.agop(m, x), ag.agop(m, x, low_rank=True)
    x2 = np.random.default_rng(9).normal(size=(13, 2, 3))
    H, Fh = ag.agop(m2, x2), ag.agop(m2, x2, low_rank=True)
    for metric in ("cosine", "pearson"):
        assert abs(ag.alignment(G, G, metric) - 1) < 1e-12
        assert abs(ag.alignment(F, F, metric) - 1) < 1e-12
        assert abs(ag.alignment(G, 3.7 * G, metric) - 1) < 1e-12
        ref = ag.alignment(G, H, metric)
        for a, b in ((F, Fh), (F, H), (G, Fh)):
            assert abs(ag.alignment(a, b, metric) - ref) < 1e-12
    cos = np.sum(G * H) / np.linalg.norm(G) / np.linalg.norm(H)
    assert abs(ag.alignment(G, H) - cos) < 1e-12
    assert abs(ag.alignment(G, H, "pearson") - np.corrcoef(G.ravel(), H.ravel())[0, 1]) < 1e-12


def test_alignment_bad_input():
    G = np.eye(4)
    with pytest.raises(ValueError):
        ag.alignment(G, np.eye(5))
    with pytest.raises(ValueError):
        ag.alignment(G, np.zeros((4, 4)))
    with pytest.raises(ValueError) as err:
        ag.alignment(G, np.full((4, 4), np.nan))
    assert not isinstance(err.value, ag.NonFiniteGradientsError)  # a bad argument, not a model
    with pytest.raises(ValueError):
        ag.alignment(G, G, metric="spearman")


def test_agop_bad_input():
    m, x = model_and_data()
    x[0, 0, 0] = np.inf
    with pytest.raises(ValueError):
        ag.agop(m, x)
    with pytest.raises(ValueError):
        ag.agop(m, x[:0])
    with pytest.raises(ValueError):
        ag.agop(m, np.ones((3, 2, 3)), batch_size=0)


def test_a_diverged_model_is_told_apart_from_bad_input():
    # Finite inputs through an overflowed weight: the model has diverged, there is no AGOP
    # (NonFiniteGradientsError, a ValueError); a NaN in the inputs is a bad argument instead.
    m, x = model_and_data()
    factor = ag.AGOPFactor(np.ones((2, 6)), 2)
    w = m.trainable_weights[0]
    w.assign(np.full(w.shape, np.inf))
    with pytest.raises(ag.NonFiniteGradientsError):
        ag.agop(m, x)
    with pytest.raises(ag.NonFiniteGradientsError):
        ag.alignment_fn(m, x, factor)()
    m, x = model_and_data()
    x[0, 0, 0] = np.nan
    with pytest.raises(ValueError) as err:
        ag.agop(m, x)
    assert not isinstance(err.value, ag.NonFiniteGradientsError)


def test_egop_of_x1x2_tends_to_diag_110():
    d = 6
    target = np.zeros((d, d))
    target[0, 0] = target[1, 1] = 1.0
    target /= np.linalg.norm(target)

    def f_star(x):
        return x[:, 0] * x[:, 1]

    errs = []
    for n in (100, 100_000):
        x = np.random.default_rng(n).normal(size=(n, d))
        G = ag.egop(f_star, x)
        # Per-sample gradient (x2, x1, 0, ...): exact AGOP from the samples.
        g = np.zeros_like(x)
        g[:, 0], g[:, 1] = x[:, 1], x[:, 0]
        np.testing.assert_allclose(G, g.T @ g / n, rtol=1e-12, atol=1e-14)
        errs.append(np.linalg.norm(G / np.linalg.norm(G) - target))
    assert errs[1] < 0.02 and errs[1] < errs[0] / 5
    x = np.random.default_rng(0).normal(size=(100_000, d))
    assert ag.alignment(ag.egop(f_star, x, low_rank=True), target) > 0.999


@pytest.mark.parametrize("d", [5, 300])
def test_alignment_from_random_factors_matches_matrices(d):
    rng = np.random.default_rng(d)
    F, Fs = rng.normal(size=(12, d)), rng.normal(size=(7, d)) + 0.3
    G, Gs = F.T @ F / 4, Fs.T @ Fs / 7
    for metric in ("cosine", "pearson"):
        ref = ag.alignment(G, Gs, metric)
        got = ag.alignment(ag.AGOPFactor(F, 4), ag.AGOPFactor(Fs, 7), metric)
        assert abs(got - ref) < 1e-12
    assert abs(ag.alignment(G, Gs) - np.sum(G * Gs) / np.linalg.norm(G) / np.linalg.norm(Gs)) \
        < 1e-12


@pytest.mark.parametrize("center", [False, True])
def test_alignment_fn_matches_agop_then_alignment(center):
    rng = np.random.default_rng(3)
    model = kerntk.models.fcn(3, 32, 2, input_shape=(4, 3))  # c = 2 outputs, d = 12
    x = rng.standard_normal((20, 4, 3)).astype("float32")
    reference = ag.AGOPFactor(rng.standard_normal((5, 12)), 7)
    measure = ag.alignment_fn(model, x, reference, metrics=("cosine", "pearson"), center=center)
    G = ag.agop(model, x, center=center)                            # d x d matrix path
    for metric in ("cosine", "pearson"):
        expected = ag.alignment(G, reference.matrix(), metric=metric)
        np.testing.assert_allclose(measure()[metric], expected, rtol=1e-5)
    model.layers[-1].kernel.assign(model.layers[-1].kernel * 0.5 + 0.1)  # new weights, same fn
    expected = ag.alignment(ag.agop(model, x, center=center), reference.matrix())
    np.testing.assert_allclose(measure()["cosine"], expected, rtol=1e-5)


def test_alignment_fn_bad_input():
    model = kerntk.models.fcn(2, 8, input_shape=(3,))
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="AGOPFactor"):
        ag.alignment_fn(model, x, np.eye(3))
    with pytest.raises(ValueError, match="features"):
        ag.alignment_fn(model, x, ag.AGOPFactor(np.ones((2, 5)), 2))
    with pytest.raises(ValueError, match="finite"):
        ag.alignment_fn(model, np.full((4, 3), np.nan), ag.AGOPFactor(np.ones((2, 3)), 2))


def test_alignment_fn_xla_matches_plain_graph():
    """``jit_compile`` (None picks XLA for a dense model) gives the plain graph's numbers."""
    rng = np.random.default_rng(4)
    model = kerntk.models.fcn(3, 32, 2, input_shape=(12,))
    x = rng.standard_normal((20, 12)).astype("float32")
    reference = ag.AGOPFactor(rng.standard_normal((5, 12)), 7)
    G = ag.agop(model, x)
    expected = ag.alignment(G, reference.matrix(), metric="pearson")
    for jit in (None, True, False):
        got = ag.alignment_fn(model, x, reference, metrics="pearson", jit_compile=jit)()
        np.testing.assert_allclose(got["pearson"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="jit_compile"):
        ag.alignment_fn(model, x, reference, jit_compile="yes")
