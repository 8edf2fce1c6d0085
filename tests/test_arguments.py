"""Arguments across the public API: NumPy scalars count as numbers, and what a user can get wrong
(several input arrays, sparse labels for an MSE split, integer model inputs for an AGOP, one metric
name) is answered by a ValueError that names the argument and says what to pass."""

import keras
import numpy as np
import pytest

from kerntk import agop, callbacks, datasets, models, ntk, spectral
from kerntk.ntk import analytic

I64, F32 = np.int64, np.float32


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((6, 4)).astype("float32")


@pytest.fixture
def model():
    return models.fcn(2, 8, out_dim=3, input_shape=(4,), seed=0)


# ------------------------------------------------------------------------- NumPy scalars


def test_builders_and_engine_accept_numpy_scalars(x, model):
    m = models.fcn(I64(2), I64(8), out_dim=I64(1), input_shape=(I64(4),), seed=I64(1),
                   W_std=F32(1.5))
    assert m(x).shape == (6, 1) and m.layers[-1].W_std == 1.5
    assert models.pnn(I64(2), I64(8), blocks=I64(1), input_shape=(4,)).built
    assert models.myrtle(I64(5), I64(2), input_shape=(8, 8, 3)).built
    assert models.taylor(m, I64(2)).order == 2
    assert analytic.fcn_kernels(x, depth=I64(2), W_std=F32(1.2)).ntk.shape == (6, 6)
    assert analytic.pnn_kernels(x, degree=I64(2), blocks=I64(1)).ntk.shape == (6, 6)
    assert spectral.top_eigenpairs(np.eye(5), k=I64(2)).eigenvalues.shape == (2,)
    assert agop.agop(model, x, batch_size=I64(4)).shape == (4, 4)
    assert ntk.empirical_ntk(model, x, outputs=I64(1)).shape == (6, 6)


def test_callbacks_accept_numpy_scalars_and_store_python_numbers(x):
    tracker = callbacks.NTKSpectrumTracker(x, k=I64(2), top_s=I64(3), every_n_steps=I64(2))
    assert (tracker.k, tracker.top_s, tracker.every_n_steps) == (2, 3, 2)
    assert all(type(v) is int for v in (tracker.k, tracker.top_s, tracker.every_n_steps))
    monitor = callbacks.CriticalLRMonitor(every_n_steps=I64(2), margin=F32(1.25),
                                          spike_rtol=F32(1e-6))
    assert type(monitor.every_n_steps) is int and type(monitor.margin) is float
    assert monitor.margin == 1.25
    guard = callbacks.DivergenceGuard(factor=F32(10), patience=I64(3), backoff=F32(0.5))
    assert type(guard.patience) is int and type(guard.backoff) is float
    policy = callbacks.CatapultRaise(monitor, factor=F32(1.5), max_raises=I64(2),
                                     cooldown=I64(3), stable_rtol=F32(0.01), decay=F32(0.5))
    assert (policy.factor, policy.max_raises, policy.cooldown, policy.decay) == (1.5, 2, 3, 0.5)
    logger = callbacks.AGOPAlignmentLogger(x, np.eye(4), every_n_epochs=I64(2),
                                           top_eigenvectors=I64(1))
    assert logger.every_n_epochs == 2 and type(logger.top_eigenvectors) is int


def test_datasets_accept_numpy_integers():
    assert datasets.rank_task("rank2", I64(16), I64(5), seed=I64(0))[0].shape == (16, 5)
    assert datasets.extrapolation_task("cubic", I64(16), I64(8), seed=I64(0))["x_test"].shape[0] \
        == 8
    assert datasets.spherical_harmonic_task(I64(16), I64(5), seed=I64(0))[0].shape == (16, 5)
    assert len(datasets.digit_pair_folds(I64(3), I64(10), seed=I64(0))) == 3
    assert datasets.rank_egop("rank2", I64(5)).shape == (5, 5)
    assert datasets.harmonic_dimension(I64(3), I64(2)) == 5
    # Integral floats were accepted before and still are.
    assert datasets.rank_egop("rank2", 5.0).shape == (5, 5)
    assert len(datasets.digit_pair_folds(3.0, 10.0)) == 3


def test_load_accepts_a_numpy_n():
    # The CIFAR-10 classes 7/9 subset ships with kerntk: no data directory or network needed.
    x, y = datasets.load("cifar10", "train", classes=(7, 9), n=I64(16))
    assert x.shape[0] == 16 and y.shape[0] == 16


@pytest.mark.parametrize("make,argument", [
    (lambda: datasets.rank_task("rank2", True), "n must"),
    (lambda: datasets.rank_task("rank2", float("nan")), "n must"),
    (lambda: datasets.rank_task("rank2", 8, noise="0.1"), "noise must"),
    (lambda: datasets.extrapolation_task("cubic", float("inf")), "n_train and n_test must"),
    (lambda: datasets.harmonic_dimension(5, True), "k >= 0"),
    (lambda: datasets.gegenbauer(float("nan"), np.zeros(2), 3), "k must"),
    (lambda: datasets.digit_pair_folds(True), "n_folds and n_unseen must"),
    (lambda: datasets.SphericalHarmonicTarget(5).sample(4, noise=float("nan")), "noise must"),
])
def test_datasets_refuse_bool_and_non_finite_counts(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


@pytest.mark.parametrize("make,argument", [
    (lambda: models.fcn(True, 8), "depth"),
    (lambda: models.fcn(2, 8, input_shape=(4.0,)), "input_shape"),
    (lambda: models.taylor(models.fcn(2, 4, input_shape=(3,)), True), "order"),
    (lambda: analytic.fcn_kernels(np.eye(3), depth=True), "depth"),
    (lambda: callbacks.NTKSpectrumTracker(np.eye(4), k=True), "k"),
    (lambda: callbacks.CriticalLRMonitor(every_n_steps=np.bool_(True)), "every_n_steps"),
    (lambda: callbacks.DivergenceGuard(factor=float("inf")), "factor"),
    (lambda: callbacks.DivergenceGuard(backoff="0.5"), "backoff"),
    (lambda: callbacks.CatapultRaise(callbacks.CriticalLRMonitor(), factor=True), "factor"),
    (lambda: callbacks.CatapultRaise(callbacks.CriticalLRMonitor(), decay=float("nan")),
     "decay"),
    (lambda: callbacks.AGOPAlignmentLogger(np.eye(4), np.eye(4), top_eigenvectors=-1),
     "top_eigenvectors"),
])
def test_bool_and_non_finite_are_not_numbers(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


# ------------------------------------------------------------------------- metrics


def test_one_metric_name_is_one_metric(x, model):
    reference = agop.agop(model, x, low_rank=True)
    measure = agop.alignment_fn(model, x, reference, metrics="pearson")
    assert set(measure()) == {"pearson"}
    assert callbacks.AGOPAlignmentLogger(x, np.eye(4), metrics="cosine").metrics == ("cosine",)
    for bad in ("cos", ("cosine", "l2"), (), 3):
        with pytest.raises(ValueError, match="`metrics`"):
            agop.alignment_fn(model, x, reference, metrics=bad)
        with pytest.raises(ValueError, match="`metrics`"):
            callbacks.AGOPAlignmentLogger(x, np.eye(4), metrics=bad)


# ------------------------------------------------------------------------- several inputs


@pytest.mark.parametrize("make,argument", [
    (lambda m, x: agop.agop(m, [x, x]), "x"),
    (lambda m, x: agop.alignment_fn(m, (x, x), agop.AGOPFactor(np.ones((1, 4)), 1)), "x"),
    (lambda m, x: ntk.empirical_ntk(m, [x, x]), "x"),
    (lambda m, x: ntk.ntk_operator(m, {"a": x, "b": x}), "x"),
    (lambda m, x: spectral.hessian_top_eigenpairs(m, "mse", [x, x], np.zeros((6, 3))), "x"),
    (lambda m, x: callbacks.NTKSpectrumTracker([x, x]), "probe_x"),
    (lambda m, x: callbacks.NTKSpectrumTracker({"a": x}), "probe_x"),
    (lambda m, x: callbacks.AGOPAlignmentLogger([x, x], np.eye(4)), "probe_x"),
    (lambda m, x: callbacks.CriticalLRMonitor(probe=([x, x], np.zeros((6, 3)))), "probe x"),
], ids=["agop", "alignment_fn", "empirical_ntk", "ntk_operator", "hessian", "tracker_list",
        "tracker_dict", "agop_logger", "critical_lr_probe"])
def test_several_input_arrays_are_refused_with_the_reason(make, argument, model, x):
    with pytest.raises(ValueError, match=f"`{argument}` must be one array.*several inputs"):
        make(model, x)


def test_nested_lists_are_still_one_array(model, x):
    K = ntk.empirical_ntk(model, x.tolist())
    np.testing.assert_allclose(K, ntk.empirical_ntk(model, x), rtol=1e-6)
    with pytest.raises(ValueError, match="`x` could not be converted"):
        ntk.empirical_ntk(model, [[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="`probe_x` must be numeric"):
        callbacks.NTKSpectrumTracker(np.array([["a", "b"]]))


def test_agop_of_a_model_with_several_inputs_is_refused(x):
    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="2 inputs"):
        agop.agop(two, x)


# ------------------------------------------------------------------------- integer inputs


def test_agop_refuses_integer_model_inputs_and_casts_integer_x(model):
    tokens = np.random.default_rng(0).integers(0, 5, size=(6, 4))
    inp = keras.Input((4,), dtype="int32")
    embed = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Embedding(5, 3)(inp))))
    with pytest.raises(ValueError, match="dtype int32: the AGOP needs float inputs"):
        agop.agop(embed, tokens)
    with pytest.raises(ValueError, match="float inputs"):
        agop.alignment_fn(embed, tokens, agop.AGOPFactor(np.ones((1, 4)), 1))
    # Integer x for a float model: the AGOP at those points, as for float x.
    np.testing.assert_allclose(agop.agop(model, tokens), agop.agop(model, tokens.astype("float32")),
                               rtol=1e-6)


# ------------------------------------------------------------------------- sparse labels


@pytest.mark.parametrize("probe_y,message", [
    (np.array([0, 1, 2, 0, 1, 2]), r"shape \(6,\) with integer labels.*c=3.*one-hot"),
    (np.zeros((6, 2)), r"shape \(6, 2\).*c=3.*\(6, 3\)"),
])
def test_tracker_probe_y_must_match_the_outputs(probe_y, message, model, x):
    model.compile(optimizer="sgd", loss="mse")
    tracker = callbacks.NTKSpectrumTracker(x, probe_y, k=2, top_s=2)
    with pytest.raises(ValueError, match="`probe_y` has " + message):
        model.fit(x, np.zeros((6, 3)), epochs=1, verbose=0, callbacks=[tracker])
