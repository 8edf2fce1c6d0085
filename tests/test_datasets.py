"""kerntk.datasets: image loaders (local files, tfds mock, offline path) and synthetic tasks."""

import os
import re
import subprocess
import sys
import time
from math import comb

import numpy as np
import pytest

import kerntk.datasets as kd
from kerntk.datasets import images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A full offline data directory (CI sets it; see .ci/run), or None.
ENV_DATA_DIR = os.environ.get(kd.DATA_DIR_ENV) or None


# ----------------------------------------------------------------------------- fixtures / helpers

def _write_split(root, name, fname, x, y):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    np.savez(os.path.join(root, name, fname), x=x, y=y)


@pytest.fixture
def local_dir(tmp_path):
    """A tiny data directory in the shared layout: suffixed and plain split files."""
    rng = np.random.default_rng(1)
    _write_split(tmp_path, "mnist", "train_3k.npz",
                 rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), np.arange(30) % 10)
    _write_split(tmp_path, "mnist", "test.npz",
                 rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10)
    _write_split(tmp_path, "cifar10", "train_4k.npz",
                 rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10)
    _write_split(tmp_path, "usps", "test.npz",
                 rng.uniform(-1, 1, (10, 16, 16)).astype(np.float32), np.arange(10) % 10)
    return str(tmp_path)


@pytest.fixture
def no_default_dir(monkeypatch):
    """Hide $KERNTK_DATA_DIR so that only what a test names (and the packaged subset) is
    searched."""
    monkeypatch.delenv(kd.DATA_DIR_ENV, raising=False)


def _raw(root, name, fname):
    with np.load(os.path.join(root, name, fname)) as f:
        return f["x"], f["y"]


# ----------------------------------------------------------------------------- local loaders

def test_load_local_shapes_and_unit_normalization(local_dir, no_default_dir):
    x_raw, y_raw = _raw(local_dir, "mnist", "train_3k.npz")
    x, y = kd.load("mnist", "train", data_dir=local_dir)
    assert x.shape == (30, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], x_raw / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, y_raw)
    assert y.dtype == np.int64

    xr, _ = kd.load("mnist", "train", data_dir=local_dir, normalize="raw", flatten=True)
    assert xr.shape == (30, 784)
    np.testing.assert_array_equal(xr, x_raw.reshape(30, -1).astype(np.float32))


def test_usps_unit_range_and_sphere_and_standardize(local_dir, no_default_dir):
    x_raw, _ = _raw(local_dir, "usps", "test.npz")
    x, _ = kd.load("usps", "test", data_dir=local_dir)
    np.testing.assert_allclose(x[..., 0], (x_raw + 1) / 2, rtol=1e-6)
    xs, _ = kd.load("usps", "test", data_dir=local_dir, normalize="sphere", flatten=True)
    np.testing.assert_allclose(np.linalg.norm(xs, axis=1), 1.0, rtol=1e-5)
    xz, _ = kd.load("usps", "test", data_dir=local_dir, normalize="standardize", flatten=True)
    np.testing.assert_allclose(xz.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(xz.std(axis=1), 1.0, rtol=1e-4)


def test_plain_split_file_preferred_over_suffixed(local_dir, no_default_dir):
    x_raw, _ = _raw(local_dir, "mnist", "train_3k.npz")
    _write_split(local_dir, "mnist", "train.npz", x_raw[:5], np.arange(5))
    assert kd.find_local_file("mnist", "train", local_dir).endswith(os.path.join("mnist",
                                                                                 "train.npz"))
    assert len(kd.load("mnist", "train", data_dir=local_dir)[0]) == 5


def test_classes_relabel_and_label_modes(local_dir, no_default_dir):
    _, y_raw = _raw(local_dir, "cifar10", "train_4k.npz")
    x, y = kd.load("cifar10", "train", data_dir=local_dir, classes=(7, 9))
    assert len(y) == np.isin(y_raw, (7, 9)).sum() and x.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(y, (y_raw[np.isin(y_raw, (7, 9))] == 9).astype(int))

    _, ypm = kd.load("cifar10", "train", data_dir=local_dir, classes=(7, 9), labels="pm1")
    np.testing.assert_array_equal(ypm, 2.0 * y - 1.0)
    _, yoh = kd.load("cifar10", "train", data_dir=local_dir, classes=(9, 7, 3), labels="onehot")
    _, yint = kd.load("cifar10", "train", data_dir=local_dir, classes=(9, 7, 3))
    assert yoh.shape == (len(yint), 3)
    np.testing.assert_array_equal(yoh.argmax(axis=1), yint)
    np.testing.assert_array_equal(yoh.sum(axis=1), 1.0)
    _, yorig = kd.load("cifar10", "train", data_dir=local_dir, classes=(9, 7, 3), relabel=False)
    np.testing.assert_array_equal(np.array([9, 7, 3])[yint], yorig)
    _, ypm3 = kd.load("cifar10", "train", data_dir=local_dir, classes=(9, 7, 3), labels="pm1")
    np.testing.assert_array_equal(ypm3, 2 * yoh - 1)


def test_n_and_seed_subsets(local_dir, no_default_dir):
    x_all, y_all = kd.load("mnist", "test", data_dir=local_dir, flatten=True)
    x5, _ = kd.load("mnist", "test", data_dir=local_dir, n=5, flatten=True)
    np.testing.assert_array_equal(x5, x_all[:5])
    xa, ya = kd.load("mnist", "test", data_dir=local_dir, n=8, seed=3, flatten=True)
    xb, _ = kd.load("mnist", "test", data_dir=local_dir, n=8, seed=3, flatten=True)
    np.testing.assert_array_equal(xa, xb)
    # each drawn example is one of the file's examples, with its own label, and none repeats
    idx = [int(np.flatnonzero((x_all == row).all(axis=1))[0]) for row in xa]
    assert len(set(idx)) == 8
    np.testing.assert_array_equal(y_all[idx], ya)


def test_env_var_data_dir(local_dir, no_default_dir, monkeypatch):
    monkeypatch.setenv(kd.DATA_DIR_ENV, local_dir)
    x, _ = kd.load("usps", "test")
    assert x.shape == (10, 16, 16, 1)
    assert kd.candidate_data_dirs()[0] == local_dir
    # an explicit data_dir wins over the environment variable
    assert kd.candidate_data_dirs("/elsewhere")[0] == "/elsewhere"


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="svhn", split="train"), "Unknown dataset"),
    (dict(name="mnist", split="validation"), "Unknown split"),
    (dict(name="mnist", split="test", classes=(3, 10)), "out of range"),
    (dict(name="mnist", split="test", classes=(3, 3)), "distinct"),
    (dict(name="mnist", split="test", labels="binary"), "labels"),
    (dict(name="mnist", split="test", normalize="minmax"), "normalize"),
    (dict(name="mnist", split="test", n=10_000), "only"),
])
def test_load_value_errors(local_dir, no_default_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd.load(data_dir=local_dir, **kwargs)


def test_nan_images_rejected(tmp_path, no_default_dir):
    x = np.zeros((4, 16, 16), np.float32)
    x[2, 3, 3] = np.nan
    _write_split(tmp_path, "usps", "train.npz", x, np.arange(4))
    with pytest.raises(ValueError, match="NaN"):
        kd.load("usps", "train", data_dir=str(tmp_path))


def _offline_set(*files):
    """$KERNTK_DATA_DIR when it holds the offline data set's files (CI), else None."""
    if ENV_DATA_DIR and all(os.path.isfile(os.path.join(ENV_DATA_DIR, f)) for f in files):
        return ENV_DATA_DIR
    return None


OFFLINE_SET = _offline_set("mnist/test.npz", "cifar10/train_4k.npz", "usps/train.npz")


@pytest.mark.skipif(OFFLINE_SET is None, reason="needs $KERNTK_DATA_DIR with the offline data set "
                    "(mnist/test.npz, cifar10/train_4k.npz, usps/train.npz), as .ci/run sets it")
def test_offline_datasets_directory():
    # Class counts and shapes of the offline data set (mnist test: the official 10k test set;
    # cifar10 train_4k: the first 4000 training images).
    x, y = kd.load("mnist", "test", data_dir=OFFLINE_SET)
    assert x.shape == (10000, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y, minlength=10),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    x, y = kd.load("cifar10", "train", data_dir=OFFLINE_SET, classes=(0, 2), labels="pm1")
    assert x.shape == (396 + 420, 32, 32, 3)
    assert (y == -1).sum() == 396 and (y == 1).sum() == 420
    x, _ = kd.load("usps", "train", data_dir=OFFLINE_SET, normalize="raw")
    assert x.shape == (7291, 16, 16, 1) and x.min() >= -1.0 and x.max() <= 1.0


# ----------------------------------------------------------------------------- packaged subset

def _no_tfds(monkeypatch):
    monkeypatch.setattr(images, "_load_tfds",
                        lambda *a, **k: pytest.fail("tensorflow-datasets was consulted"))


def test_packaged_subset_serves_the_demo_without_any_data_dir(no_default_dir, monkeypatch):
    _no_tfds(monkeypatch)
    assert kd.candidate_data_dirs() == []
    path = images._packaged_path("cifar10", "train")
    assert os.path.getsize(path) < 2 * 2 ** 20
    with np.load(path) as f:
        x_raw, y_raw, index = f["x"], f["y"], f["index"]
    assert x_raw.shape == (256, 32, 32, 3) and x_raw.dtype == np.uint8
    assert set(np.unique(y_raw)) == {7, 9} and np.all(np.diff(index.astype(int)) > 0)
    # the README demo's load (examples/_cifar2.py with --data_sample=first)
    x, y = kd.load("cifar10", "train", classes=(7, 9), n=128, flatten=True,
                   normalize="standardize", labels="pm1")
    assert x.shape == (128, 3072) and set(np.unique(y)) == {-1.0, 1.0}
    # without a seed: the first n in the file's order, labels relabelled in the order given
    x, y = kd.load("cifar10", "train", classes=(9, 7), n=5, normalize="raw")
    np.testing.assert_array_equal(x, x_raw[:5].astype(np.float32))
    np.testing.assert_array_equal(y, (y_raw[:5] == 7).astype(int))


@pytest.mark.parametrize("kwargs", [
    dict(classes=(7, 9), n=4000),   # more than the subset holds
    dict(classes=(7,), n=125),      # 124 horses in the subset
    dict(classes=(7, 9), n=None),   # all of the split's horses and trucks
    dict(classes=(0, 7), n=2),      # a class it does not hold
    dict(n=8),                      # all classes
    dict(classes=(7, 9), n=8, seed=0),  # a seeded draw from 256 is not the draw from the split
])
def test_packaged_subset_never_truncates(tmp_path, no_default_dir, monkeypatch, kwargs):
    monkeypatch.setattr(images, "network_available", lambda timeout=2.0: False)
    with pytest.raises(kd.DatasetNotFoundError, match="packaged subset") as err:
        kd.load("cifar10", "train", tfds_data_dir=str(tmp_path / "tfds"), **kwargs)
    assert "KERNTK_DATA_DIR" in str(err.value)
    # the whole split is never the subset
    with pytest.raises(kd.DatasetNotFoundError):
        kd.load_raw("cifar10", "train", tfds_data_dir=str(tmp_path / "tfds"), download=False)


def test_local_directory_wins_over_packaged_subset(local_dir, no_default_dir, monkeypatch):
    _no_tfds(monkeypatch)
    x_raw, y_raw = _raw(local_dir, "cifar10", "train_4k.npz")
    expected = x_raw[np.isin(y_raw, (7, 9))].astype(np.float32)
    x, _ = kd.load("cifar10", "train", classes=(7, 9), n=len(expected), normalize="raw",
                   data_dir=local_dir)
    np.testing.assert_array_equal(x, expected)
    monkeypatch.setenv(kd.DATA_DIR_ENV, local_dir)
    x, _ = kd.load("cifar10", "train", classes=(7, 9), n=len(expected), normalize="raw")
    np.testing.assert_array_equal(x, expected)


@pytest.mark.skipif(_offline_set("cifar10/train_4k.npz") is None,
                    reason="needs $KERNTK_DATA_DIR with cifar10/train_4k.npz, as .ci/run sets it")
def test_packaged_subset_is_the_head_of_the_full_split(monkeypatch):
    # Unseeded loads agree with a full copy in the original order.
    full = kd.load("cifar10", "train", classes=(7, 9), n=256, normalize="raw",
                   data_dir=ENV_DATA_DIR)
    monkeypatch.delenv(kd.DATA_DIR_ENV)
    _no_tfds(monkeypatch)
    packaged = kd.load("cifar10", "train", classes=(7, 9), n=256, normalize="raw")
    for a, b in zip(full, packaged):
        np.testing.assert_array_equal(a, b)


def test_product_names_no_workspace_path():
    # kerntk and its README work from a bare clone: no path into a workspace next to the repo.
    pattern = re.compile(r"\.\./shared|shared/(datasets|papers|docs|tools)|[\"']shared[\"']")
    offenders = []
    paths = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "setup.py")]
    for top, _, files in os.walk(os.path.join(ROOT, "kerntk")):
        paths += [os.path.join(top, f) for f in files if f.endswith((".py", ".md", ".txt"))]
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if pattern.search(line):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ----------------------------------------------------------------------------- tfds and offline

def test_import_does_not_import_tfds():
    code = ("import sys, kerntk.datasets; "
            "print(any(m.split('.')[0] == 'tensorflow_datasets' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_tfds_prepared_path_with_mock_data(tmp_path, no_default_dir):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        x, y = kd.load("mnist", "train", data_dir=str(tmp_path), download=False)
        assert x.shape == (12, 28, 28, 1) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) <= set(range(10))
        x, y = kd.load("cifar10", "test", data_dir=str(tmp_path), download=False, flatten=True,
                       labels="onehot")
        assert x.shape == (12, 3072) and y.shape == (12, 10)
        assert kd.load_raw("cifar10", "test", data_dir=str(tmp_path))[2] == "tfds:cifar10"


def test_offline_fails_fast_without_download(tmp_path, no_default_dir, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv(kd.NO_DOWNLOAD_ENV, raising=False)  # conftest sets it: test the probe
    monkeypatch.setattr(images, "network_available", lambda timeout=2.0: False)
    real_load = tfds.load
    download_requests = []

    def guarded_load(*args, **kwargs):
        if kwargs.get("download", True):
            download_requests.append(args)
            raise AssertionError("a download was attempted")
        return real_load(*args, **kwargs)

    def no_prepare(*args, **kwargs):
        raise AssertionError("download_and_prepare was called")

    monkeypatch.setattr(tfds, "load", guarded_load)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_prepare)
    start = time.monotonic()
    with pytest.raises(kd.DatasetNotFoundError) as err:
        kd.load("fashion_mnist", "train", data_dir=str(tmp_path / "empty"),
                tfds_data_dir=str(tmp_path / "tfds"))
    assert time.monotonic() - start < 10.0
    assert download_requests == []
    message = str(err.value)
    assert "data_dir" in message and "KERNTK_DATA_DIR" in message and "unreachable" in message

    # download=False never probes and says so
    monkeypatch.setattr(images, "network_available",
                        lambda timeout=2.0: pytest.fail("probed with download=False"))
    with pytest.raises(kd.DatasetNotFoundError, match="download=False"):
        kd.load("mnist", "test", data_dir=str(tmp_path / "empty"),
                tfds_data_dir=str(tmp_path / "tfds"), download=False)


def test_no_download_env_fails_fast_without_probing(tmp_path, no_default_dir, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv(kd.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(images, "network_available",
                        lambda timeout=2.0: pytest.fail("probed with $KERNTK_NO_DOWNLOAD set"))
    with pytest.raises(kd.DatasetNotFoundError, match="KERNTK_NO_DOWNLOAD"):
        kd.load("mnist", "test", data_dir=str(tmp_path / "empty"),
                tfds_data_dir=str(tmp_path / "tfds"))


def test_usps_without_local_file_names_local_options(tmp_path, no_default_dir):
    with pytest.raises(kd.DatasetNotFoundError, match="KERNTK_DATA_DIR"):
        kd.load("usps", "train", data_dir=str(tmp_path))


def test_network_probe_is_bounded(monkeypatch):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routable, so the probe must give up on time.
    monkeypatch.setattr(images, "PROBE_ADDRESS", ("192.0.2.1", 9))
    start = time.monotonic()
    assert kd.network_available(timeout=0.5) is False
    assert time.monotonic() - start < 2.0


# ----------------------------------------------------------------------------- rank-k tasks

@pytest.mark.parametrize("name", sorted(kd.RANK_TASKS))
def test_egop_closed_form_matches_monte_carlo(name):
    d, n = 12, 100_000
    x = np.random.default_rng(0).standard_normal((n, d))
    g = kd.rank_target_gradient(name, x)
    outer = g[:, :, None] * g[:, None, :]
    mc = outer.mean(axis=0)
    se = outer.std(axis=0) / np.sqrt(n)
    exact = kd.rank_egop(name, d)
    assert np.all(np.abs(mc - exact) <= 6 * se + 1e-12), np.abs(mc - exact).max()
    np.testing.assert_allclose(exact, exact.T)


@pytest.mark.parametrize("name, rank", [("rank2", 2), ("rank3", 3), ("rank4", 4),
                                        ("fullrank", 12)])
def test_egop_rank(name, rank):
    assert np.linalg.matrix_rank(kd.rank_egop(name, 12)) == rank


@pytest.mark.parametrize("name", sorted(kd.RANK_TASKS))
def test_analytic_gradient_matches_finite_differences(name):
    x = np.random.default_rng(1).standard_normal((5, 12))
    h = 1e-5
    fd = np.stack([(kd.rank_target(name, x + h * e) - kd.rank_target(name, x - h * e)) / (2 * h)
                   for e in np.eye(12)], axis=1)
    np.testing.assert_allclose(kd.rank_target_gradient(name, x), fd, atol=1e-6)


def test_rank_targets_match_definitions():
    x = np.random.default_rng(2).standard_normal((7, 12))
    np.testing.assert_allclose(kd.rank_target("rank2", x), x[:, 0] * x[:, 1])
    np.testing.assert_allclose(kd.rank_target("rank3", x),
                               x[:, 0] * x[:, 1] * sum(x[:, i] for i in range(10)))
    np.testing.assert_allclose(kd.rank_target("rank4", x),
                               x[:, 0] + x[:, 0] * x[:, 1] + x[:, 0] * x[:, 1] * x[:, 2]
                               + x[:, 0] * x[:, 1] * x[:, 2] * x[:, 3])
    np.testing.assert_allclose(kd.rank_target("fullrank", x),
                               np.sqrt((x ** 2).sum(axis=1) / 12))


def test_rank_task_noise_level_and_seed():
    x, y = kd.rank_task("rank2", 40_000, d=100, seed=3)
    assert x.shape == (40_000, 100) and y.shape == (40_000, 1) and x.dtype == np.float32
    resid = y[:, 0] - kd.rank_target("rank2", x)
    # std of a sample std of N(0, 0.1²) with n = 40000 is 0.1/sqrt(2n) ≈ 3.5e-4
    assert abs(resid.std() - 0.1) < 2e-3 and abs(resid.mean()) < 3e-3
    np.testing.assert_array_equal(kd.rank_task("rank2", 50, seed=3)[0],
                                  kd.rank_task("rank2", 50, seed=3)[0])
    xc, yc = kd.rank_task("rank4", 100, d=8, noise=0.0, seed=0)
    np.testing.assert_allclose(yc[:, 0], kd.rank_target("rank4", xc), rtol=1e-5, atol=1e-5)


def test_rank_task_errors():
    with pytest.raises(ValueError, match="Unknown"):
        kd.rank_egop("rank5", 10)
    with pytest.raises(ValueError, match="d >= 10"):
        kd.rank_task("rank3", 10, d=5)
    with pytest.raises(ValueError, match="NaN"):
        kd.rank_target("rank2", np.array([[np.nan, 1.0]]))


# ----------------------------------------------------------------------------- spherical harmonics

def test_gegenbauer_matches_scipy_and_chebyshev():
    special = pytest.importorskip("scipy.special")
    t = np.linspace(-1, 1, 101)
    for d in (3, 4, 7, 10):
        lam = (d - 2) / 2
        for k in (0, 1, 3, 4, 5, 8, 12):
            ref = special.eval_gegenbauer(k, lam, t) / special.eval_gegenbauer(k, lam, 1.0)
            np.testing.assert_allclose(kd.gegenbauer(k, t, d), ref, atol=1e-10)
    for k in (1, 3, 8):
        np.testing.assert_allclose(kd.gegenbauer(k, t, 2), np.cos(k * np.arccos(t)), atol=1e-10)


def test_harmonic_dimension_formula():
    for d in (3, 5, 10):
        for k in range(1, 13):
            assert kd.harmonic_dimension(d, k) == (2 * k + d - 2) * comb(k + d - 3, k - 1) // k
    assert [kd.harmonic_dimension(3, k) for k in range(5)] == [1, 3, 5, 7, 9]


def test_gegenbauer_orthogonality_on_sphere():
    d, n = 5, 400_000
    x = kd.sample_sphere(n, d, seed=0)
    zeta = kd.sample_sphere(1, d, seed=1)[0]
    t = x @ zeta
    ks = (1, 3, 4, 5)
    p = np.stack([kd.gegenbauer(k, t, d) for k in ks], axis=1)
    prods = p[:, :, None] * p[:, None, :]
    mc, se = prods.mean(axis=0), prods.std(axis=0) / np.sqrt(n)
    exact = np.diag([1.0 / kd.harmonic_dimension(d, k) for k in ks])
    assert np.all(np.abs(mc - exact) <= 6 * se), np.abs(mc - exact).max()


def test_spherical_target_normalization_and_projection():
    target = kd.SphericalHarmonicTarget(d=6, seed=0)
    n = 200_000
    x, y = target.sample(n, seed=1, dtype="float64")
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0)
    # Monte Carlo bounds are 6 standard errors of the estimate, measured from the same samples.
    assert abs(np.mean(y ** 2) - 1.0) <= 6 * np.std(y ** 2) / np.sqrt(n)
    expected = 1.0 / target.normalizer  # A_k = 1
    comps = target.components(x)

    def projection_and_se(r):
        """c_k = mean(P_k r) / mean(P_k^2) as frequency_projection computes it, and its standard
        error by the delta method: std(P_k r - c_k P_k^2) / (sqrt(n) mean(P_k^2))."""
        proj = target.frequency_projection(x, r)
        c = np.array([proj[k] for k in target.frequencies])
        b = (comps ** 2).mean(axis=0)
        np.testing.assert_allclose(c, (comps * r[:, None]).mean(axis=0) / b, rtol=1e-12)
        se = (comps * r[:, None] - c * comps ** 2).std(axis=0) / (np.sqrt(n) * b)
        return proj, c, se

    proj, c, se = projection_and_se(-y[:, 0])
    assert set(proj) == set(kd.PAPER_FREQUENCIES)
    assert np.all(6 * se < 0.5 * expected), se  # the check below can tell c_k from 0 or 2 c_k
    assert np.all(np.abs(c + expected) <= 6 * se), (c, expected, se)
    # a residual made of the k=8 component alone projects only on k=8
    single, c, se = projection_and_se(2.0 * comps[:, target.frequencies.index(8)])
    assert abs(single[8] - 2.0) < 1e-9
    assert all(abs(c[i]) <= 6 * se[i] for i, k in enumerate(target.frequencies) if k != 8)
    # same target_seed → same ζ; noise level
    _, _, t2 = kd.spherical_harmonic_task(10, d=6, target_seed=0, seed=5)
    np.testing.assert_array_equal(t2.zetas, target.zetas)
    xn, yn = target.sample(50_000, noise=0.1, seed=2, dtype="float64")
    assert abs(np.std(yn[:, 0] - target(xn)) - 0.1) < 3e-3


def test_degree_energy_counts_whole_degree_space():
    target = kd.SphericalHarmonicTarget(d=4, frequencies=(1, 3, 4), seed=0)
    x = kd.sample_sphere(3000, 4, seed=3)
    other = kd.sample_sphere(1, 4, seed=9)[0]  # a degree-4 harmonic along a direction ≠ ζ_4
    r = kd.gegenbauer(4, x @ other, 4)
    energy = target.degree_energy(x, r)
    n4 = kd.harmonic_dimension(4, 4)
    assert abs(energy[4] - 1.0 / n4) < 0.25 / n4
    assert abs(energy[1]) < 0.2 / n4 and abs(energy[3]) < 0.2 / n4


# ----------------------------------------------------------------------------- extrapolation

def test_extrapolation_targets_and_regions():
    task = kd.extrapolation_task("cubic", 500, 200, noise=0.0, seed=0)
    t = task["x_train"][:, 0].astype(np.float64)
    np.testing.assert_allclose(task["y_train"][:, 0], t ** 3 + t ** 2 - 10 * t + 5, rtol=1e-4,
                               atol=1e-4)
    lo, hi = task["train_interval"]
    assert lo <= t.min() and t.max() <= hi
    xt = task["x_test"][:, 0]
    assert xt.min() < lo and xt.max() > hi
    np.testing.assert_array_equal(task["in_train_region"], (xt >= lo) & (xt <= hi))

    cos = kd.extrapolation_task("cos2x", 100, 50, seed=0)
    np.testing.assert_allclose(cos["y_test"][:, 0], np.cos(2 * cos["x_test"][:, 0]), atol=1e-6)

    all_dir = kd.extrapolation_task("sum_squares", 2000, 500, seed=0)
    pos = kd.extrapolation_task("sum_squares", 2000, 500, seed=0, positive_only=True)
    assert (all_dir["x_train"] < 0).any(axis=0).all()  # every direction is covered
    assert (pos["x_train"] >= 0).all()
    np.testing.assert_allclose(pos["y_train"][:, 0], (pos["x_train"] ** 2).sum(axis=1), rtol=1e-5)
    assert (~all_dir["in_train_region"]).any() and all_dir["in_train_region"].any()

    noisy = kd.extrapolation_task("cos2x", 40_000, 10, noise=0.1, seed=1)
    resid = noisy["y_train"][:, 0] - np.cos(2 * noisy["x_train"][:, 0].astype(np.float64))
    assert abs(resid.std() - 0.1) < 3e-3
    with pytest.raises(ValueError, match="Unknown"):
        kd.extrapolation_task("sin")
    with pytest.raises(ValueError, match="2-D"):
        kd.extrapolation_task("cubic", positive_only=True)


# ----------------------------------------------------------------------------- digit pairs

def test_digit_pair_folds():
    folds = kd.digit_pair_folds(3, seed=0)
    all_pairs = {tuple(p) for p in kd.ALL_PAIRS}
    assert len(all_pairs) == 100
    unseen_sets = []
    for f in folds:
        seen, unseen = {tuple(p) for p in f["seen"]}, {tuple(p) for p in f["unseen"]}
        assert len(seen) == 90 and len(unseen) == 10
        assert not seen & unseen and seen | unseen == all_pairs
        unseen_sets.append(unseen)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not unseen_sets[i] & unseen_sets[j]
    assert kd.digit_pair_folds(3, seed=1)[0]["unseen"].tolist() != folds[0]["unseen"].tolist()
    with pytest.raises(ValueError):
        kd.digit_pair_folds(11, 10)


def test_make_digit_pairs_places_digits_side_by_side():
    # image i is constant with value i, so each half of an example names its source image
    y = np.arange(50) % 10
    x = np.broadcast_to(np.arange(50, dtype=np.float32)[:, None, None], (50, 4, 3)).copy()
    pairs = [(2, 7), (9, 0), (4, 4)]
    imgs, sums, pair_of = kd.make_digit_pairs(x, y, pairs, 300, seed=0)
    assert imgs.shape == (300, 4, 6)
    left, right = imgs[:, 0, 0].astype(int), imgs[:, 0, 3].astype(int)
    np.testing.assert_array_equal(y[left], pair_of[:, 0])
    np.testing.assert_array_equal(y[right], pair_of[:, 1])
    np.testing.assert_array_equal(sums, pair_of.sum(axis=1))
    assert {tuple(p) for p in pair_of} == set(pairs)


def test_load_digit_pair_sums_fold(tmp_path, no_default_dir):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 40)):
        _write_split(tmp_path, "mnist", f"{split}.npz",
                     rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
    data = kd.load_digit_pair_sums(1, n_train=200, n_test=50, data_dir=str(tmp_path))
    fold = kd.digit_pair_folds(3, seed=0)[1]
    seen, unseen = {tuple(p) for p in fold["seen"]}, {tuple(p) for p in fold["unseen"]}
    assert data["x_train"].shape == (200, 28, 56, 1) and data["y_train"].shape == (200, 1)
    assert {tuple(p) for p in data["pairs_train"]} <= seen
    assert {tuple(p) for p in data["pairs_test_seen"]} <= seen
    assert {tuple(p) for p in data["pairs_test_unseen"]} <= unseen
    np.testing.assert_array_equal(data["y_test_unseen"][:, 0],
                                  data["pairs_test_unseen"].sum(axis=1))
    with pytest.raises(ValueError, match="fold"):
        kd.load_digit_pair_sums(3, data_dir=str(tmp_path))
