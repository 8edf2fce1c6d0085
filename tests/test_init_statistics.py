"""Second moments at initialization: NTK scaling keeps them O(1) and width-independent."""

import math

import keras
import numpy as np
import pytest

from kerntk.layers import PolyDense
from kerntk.models import fcn


def _unit_sphere(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def _nngp_second_moment(depth, d, W_std, b_std):
    """Infinite-width E[f(x)^2] of fcn(depth) for |x| = 1 (ReLU: E[relu(h)^2] = q/2)."""
    q = W_std ** 2 / d + b_std ** 2
    for _ in range(depth - 1):
        q = W_std ** 2 * q / 2 + b_std ** 2
    return q


@pytest.mark.parametrize("W_std,b_std", [(1.0, 1.0), (math.sqrt(2.0), 0.1)])
def test_fcn_output_second_moment_is_width_independent(W_std, b_std):
    rng = np.random.default_rng(0)
    d = 32
    x = _unit_sphere(rng, 512, d)
    expected = _nngp_second_moment(5, d, W_std, b_std)
    moments = {}
    for width in (128, 256, 512, 1024, 2048):
        seeds = 4096 // width  # same total number of hidden units per width
        vals = []
        for s in range(seeds):
            model = fcn(5, width, out_dim=512, W_std=W_std, b_std=b_std,
                        input_shape=(d,), seed=1000 * s + width)
            vals.append(np.mean(keras.ops.convert_to_numpy(model(x)) ** 2))
        moments[width] = float(np.mean(vals))
        keras.utils.clear_session()
    values = np.array(list(moments.values()))
    assert values.max() / values.min() <= 1.15, moments
    np.testing.assert_allclose(values, expected, rtol=0.15, err_msg=str(moments))


def _branch_factor_moments(layer, x):
    """Unbiased estimate of E[y^2] of a polynomial block at init.

    Units are i.i.d. and each unit's branches use independent weight rows, so E[y^2 | x] is the
    product over branches of E[factor_n^2 | x]; averaging each factor over the units is the mean of
    y^2 over all m^N recombinations of the units' branches. A plain mean of y^2 over units is
    unusable at high degree: y^2 is a product of N independent factors, so its relative variance is
    E[t^4]^N (6^10 for ReLU at degree 10) and a sample mean almost always underestimates it.
    """
    z = keras.ops.convert_to_numpy(layer.preactivation(x)).astype(np.float64)
    branches = np.split(z, layer.degree, axis=-1)
    act = (lambda t: np.maximum(t, 0)) if layer.activation is keras.activations.relu else (
        lambda t: t)
    t = [layer.branch_scale * act(zn) for zn in branches]
    factors = [t[0] ** 2] + [((1 + tn) / layer.skip_normalizer) ** 2 if layer.skip else tn ** 2
                             for tn in t[1:]]
    per_input = np.prod([f.mean(axis=-1) for f in factors], axis=0)
    return float(per_input.mean())


@pytest.mark.parametrize("kwargs", [dict(form="pnn"), dict(form="ccp"),
                                    dict(form="pnn", skip=True, use_bias=True, b_std=0.5)])
def test_poly_dense_second_moment_stays_order_one_for_every_degree(kwargs):
    rng = np.random.default_rng(1)
    d = 64
    # Standardized inputs (|x|^2 = d), the NTK convention for every layer.
    x = _unit_sphere(rng, 256, d) * math.sqrt(d)
    moments = []
    for degree in range(1, 11):
        for width in (256, 2048):
            layer = PolyDense(width, degree, seed=degree * 7 + width, **kwargs)
            layer.build(x.shape)
            moments.append((degree, width, _branch_factor_moments(layer, x)))
    base = {w: m for deg, w, m in moments if deg == 1}
    for degree, width, m in moments:
        assert 0.25 <= m / base[width] <= 4.0, (degree, width, m)
        assert 0.5 <= m <= 2.0, (degree, width, m)


@pytest.mark.parametrize("form", ["pnn", "ccp"])
def test_poly_dense_output_second_moment_direct_at_low_degree(form):
    """The plain output mean of y^2 (no estimator tricks) where it is statistically reliable."""
    rng = np.random.default_rng(2)
    d = 128
    x = _unit_sphere(rng, 1024, d) * math.sqrt(d)
    first = None
    for degree in (1, 2, 3, 4):
        layer = PolyDense(1024, degree, form=form, seed=degree)
        m = float(np.mean(keras.ops.convert_to_numpy(layer(x)).astype(np.float64) ** 2))
        first = m if first is None else first
        assert 0.25 <= m / first <= 4.0 and 0.5 <= m <= 2.0, (degree, m)
