"""Specification of kerntk.ntk.memory: the peak memory of an NTK request is estimated from the
shapes before anything is allocated; blocks are chosen to fit, or the request is refused with the
estimate and a block size that would fit. Also the progress bar of long kernels."""

import functools
import time

import numpy as np
import pytest

import kerntk
from kerntk.ntk import NTKMemoryError, empirical_ntk, memory, ntk_operator

ntk = functools.partial(empirical_ntk, jit_compile=False)
GiB = 2 ** 30


def fcn():
    return kerntk.models.fcn(3, 64, 2, input_shape=(16,), seed=0)


def test_a_request_over_the_limit_raises_within_a_second_with_the_estimate():
    model = fcn()
    x = np.zeros((20000, 16), np.float32)   # K alone: 20000^2 float64 = 3 GiB
    model(x[:1])
    with memory.using_memory_limit(GiB):
        start = time.perf_counter()
        with pytest.raises(NTKMemoryError, match=r"would need about 2\.\d+ GiB.*limit of 1 GiB"):
            ntk(model, x)
        elapsed = time.perf_counter() - start
        with pytest.raises(NTKMemoryError, match="ntk_operator"):
            ntk(model, x, outputs="full")
    assert elapsed < 1.0
    assert issubclass(NTKMemoryError, MemoryError)


def test_an_explicit_block_size_that_does_not_fit_names_one_that_does(rng):
    model = fcn()
    x = rng.standard_normal((64, 16)).astype(np.float32)
    exact = ntk(model, x)
    plan = memory.plan_kernel(model, x.shape, "jacobian", "trace", 2, "float32")
    assert plan.block_size == 64
    # A limit just under the estimate for all 64 at once.
    with memory.using_memory_limit(plan.peak_bytes - 1):
        with pytest.raises(NTKMemoryError, match=r"block_size=(\d+) would fit") as err:
            ntk(model, x, method="jacobian", block_size=64)
        fits = int(err.value.args[0].split("block_size=")[-1].split()[0])
        assert 1 <= fits < 64
        np.testing.assert_allclose(ntk(model, x, method="jacobian", block_size=fits), exact,
                                   rtol=1e-5, atol=1e-6 * np.abs(exact).max())


def test_no_block_size_picks_the_largest_halving_that_fits(rng):
    model = fcn()
    x = rng.standard_normal((64, 16)).astype(np.float32)
    exact = ntk(model, x)
    full = memory.plan_kernel(model, x.shape, "jacobian", "trace", 2, "float32")
    with memory.using_memory_limit(full.peak_bytes - 1):
        plan = memory.plan_kernel(model, x.shape, "jacobian", "trace", 2, "float32")
        assert plan.block_size in (32, 16, 8, 4, 2, 1) and plan.peak_bytes < full.peak_bytes
        # The halving before it did not fit.
        with pytest.raises(NTKMemoryError):
            memory.plan_kernel(model, x.shape, "jacobian", "trace", 2, "float32",
                               block_size=min(64, 2 * plan.block_size))
        np.testing.assert_allclose(ntk(model, x, method="jacobian"), exact, rtol=1e-5,
                                   atol=1e-6 * np.abs(exact).max())


def test_the_estimate_counts_what_must_exist():
    """Lower bounds the estimate must respect whatever its constants: the float64 result, and
    for the Jacobian method the per-example Jacobian of one group of variables."""
    model = fcn()
    model(np.zeros((1, 16), np.float32))
    P = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    n, c = 256, 2
    for outputs, reps in (("trace", 1), ("full", c)):
        plan = memory.plan_kernel(model, (n, 16), "jacobian", outputs, c, "float32")
        assert plan.result_bytes == 8 * (n * reps) ** 2
        assert plan.peak_bytes >= plan.result_bytes + 4 * n * c * P
    small = memory.plan_kernel(model, (n // 2, 16), "auto", "trace", c, "float32")
    large = memory.plan_kernel(model, (n, 16), "auto", "trace", c, "float32")
    assert small.peak_bytes < large.peak_bytes


def test_operator_plans_chunks(rng):
    model = fcn()
    x = rng.standard_normal((32, 16)).astype(np.float32)
    v = rng.standard_normal(32)
    exact = ntk(model, x) @ v
    whole = memory.plan_operator(model, x.shape, 2, "float32")
    with memory.using_memory_limit(whole.peak_bytes - 1):
        assert memory.plan_operator(model, x.shape, 2, "float32").block_size < 32
        np.testing.assert_allclose(ntk_operator(model, x) @ v, exact, rtol=1e-4)
    with memory.using_memory_limit(1000):
        with pytest.raises(NTKMemoryError, match="ntk_operator"):
            ntk_operator(model, x)


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("KERNTK_MEMORY_LIMIT", "1.5GB")
    assert memory.memory_limit() == int(1.5 * GiB)
    monkeypatch.setenv("KERNTK_MEMORY_LIMIT", "123456")
    assert memory.memory_limit() == 123456
    with memory.using_memory_limit(1000):
        assert memory.memory_limit() == 1000
    assert memory.memory_limit() == 123456
    monkeypatch.setenv("KERNTK_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="KERNTK_MEMORY_LIMIT"):
        memory.memory_limit()
    with pytest.raises(ValueError, match="positive number of bytes"):
        memory.set_memory_limit(-1)


def test_verbose_shows_a_progress_bar_over_the_tiles(rng, capsys):
    model = fcn()
    x = rng.standard_normal((8, 16)).astype(np.float32)
    K = ntk(model, x, block_size=2, verbose=1)
    out = capsys.readouterr().out
    assert "10/10" in out  # 4 blocks: 4 diagonal + 6 off-diagonal tiles
    np.testing.assert_allclose(K, ntk(model, x), rtol=1e-5, atol=1e-6 * np.abs(K).max())
    ntk(model, x, block_size=2)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="verbose"):
        ntk(model, x, verbose=2)


def test_lanczos_verbose_shows_a_progress_bar(rng, capsys):
    from kerntk.spectral import top_eigenpairs
    A = rng.standard_normal((300, 300))
    A = A @ A.T
    quiet = top_eigenpairs(A, 2, method="lanczos")
    assert capsys.readouterr().out == ""
    loud = top_eigenpairs(A, 2, method="lanczos", verbose=1)
    out = capsys.readouterr().out
    assert "rel_residual" in out and f"{loud.iterations}/300" in out
    np.testing.assert_allclose(loud.eigenvalues, quiet.eigenvalues)
