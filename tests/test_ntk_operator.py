"""Specification of kerntk.ntk.ntk_operator: K v without a Jacobian, equal to the dense kernel."""

import keras
import numpy as np
import pytest
import scipy.sparse.linalg as spla

import kerntk
from kerntk.ntk import empirical_ntk, ntk_operator
from tests.test_empirical_ntk import brute_jacobian, brute_kernels, rel


@pytest.mark.parametrize("block_size", [None, 3])
def test_operator_matches_brute_force_kernel(block_size, rng):
    keras.config.set_dtype_policy("float64")
    model = kerntk.models.cnn(2, 3, 2, input_shape=(5, 5, 2))
    x = rng.standard_normal((7, 5, 5, 2))
    J = brute_jacobian(model, x)
    trace, full = brute_kernels(J)
    for outputs, K in (("trace", trace), ("full", full), (1, full[1::2, 1::2])):
        op = ntk_operator(model, x, outputs, block_size=block_size)
        assert isinstance(op, spla.LinearOperator) and op.shape == K.shape
        V = rng.standard_normal((K.shape[0], 2))
        assert rel(op.matmat(V), K @ V) < 1e-10
        assert op.matvec(V[:, 0]).dtype == np.float64


def test_operator_eigenvalues_match_dense(rng):
    model = kerntk.models.fcn(3, 16, 1, input_shape=(4,))
    x = rng.standard_normal((12, 4)).astype("float32")
    K = empirical_ntk(model, x)
    top = spla.eigsh(ntk_operator(model, x), k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(K)[-3:], rtol=1e-4)


def test_operator_bad_input(rng):
    model = kerntk.models.fcn(2, 4, input_shape=(3,))
    x = rng.standard_normal((4, 3))
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ntk_operator(model, x)
    op = ntk_operator(model, rng.standard_normal((4, 3)))
    with pytest.raises(ValueError, match="dimension mismatch|length"):
        op.matvec(np.ones(5))
