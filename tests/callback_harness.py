"""One harness that runs every kerntk callback through the same contract (after keras-hub's
``run_layer_test``; see :mod:`tests.layer_harness` for the layers' counterpart).

A callback under test is described by a :class:`CallbackSpec`: how to make a fresh instance
from the training data (``make(x, y)``), which of its log keys may be undefined (NaN by
definition, e.g. a rate with no event yet), and how to read the optimizer steps it recorded.
Its scalar log keys are discovered from its own record of its first fit (``latest`` of a
:class:`~kerntk.callbacks.base.MeasuringCallback`, the ``history`` keys of a monitor) or taken
from its documented list (``keys``).

:func:`run_callback_test` runs the contract's cases (:data:`CASES`) on a tiny model
(``model_kind``: ``"sequential"``, ``"functional"`` or ``"subclassed"``, the last one a
``keras.Model`` subclass whose ``call`` takes no ``training`` argument):

``logs_spe1``, ``logs_spe3``
    ``fit`` with ``steps_per_execution`` 1 / 3: the callback's scalar keys reach ``History`` and
    ``CSVLogger`` columns, finite (undefined keys aside); measurements are labelled with
    optimizer steps: increasing, the first the step the fit started at when the callback
    measures at the start, none past ``optimizer.iterations`` (every step when the spec says it
    measures every step).
``two_fits``
    The same instance in two fits in a row: the second works and its series is the second
    fit's (every kerntk callback documents/implements a per-fit record: ``history`` is reset at
    ``on_train_begin``), its logs are the second fit's.
``interrupted``
    Another callback, after the kerntk one, raises at batch 1: the exception propagates; a plain
    ``fit`` of the same model then trains exactly like a fresh model with the same weights and
    optimizer iterations, and leaves no hook on the model.
``no_stale_hook``
    Right after that interrupted fit, ``"train_step" not in model.__dict__`` (else
    :class:`StaleHook`).
``mixed_precision``
    Under the ``mixed_float16`` global policy (reset in ``finally``) ``fit`` runs and logs
    finite values.
``side_by_side``
    Two instances in one ``fit`` (the spec's ``partner``, default another instance of the same
    spec): both record to the end of the fit and their logs reach ``History``; two identical
    instances record the same series; two different callbacks log disjoint keys (else
    :class:`LogKeyCollision`).
``plot``
    ``plot(path)`` writes a non-empty PNG (skipped without matplotlib, or without ``plot``).
``unchanged_training``
    Weights and optimizer variables after ``N`` steps (SGD with momentum, ``shuffle=False``)
    equal those of the same fit without the callback, to float32 round-off.

The cases read five scenarios (:data:`_SCENARIOS`: ``main``, ``spe3``, ``interrupted``,
``mixed``, ``pair``), each a few fits from the test seed whose observations (plain numbers and
arrays, no model) a ``cache`` dict shares among the cases: each case can then be its own test,
with its own ``xfail``, at the cost of the fits once. Known failures raise their own
``AssertionError`` subclass, so an ``xfail(raises=...)`` does not hide any other failure.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Callable, Iterable, List, Optional, Sequence

import keras
import numpy as np
import pytest

from tests.conftest import TEST_SEED

CASES = ("logs_spe1", "logs_spe3", "two_fits", "interrupted", "no_stale_hook",
         "mixed_precision", "side_by_side", "plot", "unchanged_training")
MODEL_KINDS = ("sequential", "functional", "subclassed")

#: The tiny problem: 40 samples of 6 features, batches of 8 (5 steps an epoch, so
#: ``steps_per_execution=3`` gives blocks of 3 and 2), 2 epochs.
N_SAMPLES, N_FEATURES, UNITS, BATCH, EPOCHS = 40, 6, 12, 8, 2
STEPS_PER_EPOCH = N_SAMPLES // BATCH
LEARNING_RATE = 0.05

#: ``history`` entries of a monitor that are records, not logged scalars (its docstring).
_RECORD_ONLY = frozenset({"step", "epoch", "event", "spike", "loss_after"})


# ----------------------------------------------------------------------------- data and models
def make_data(seed: int = TEST_SEED, n: int = N_SAMPLES, d: int = N_FEATURES):
    """``(x, y)`` float32: Gaussian inputs, a smooth target (a few steps of SGD reduce the
    loss without any catapult)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype("float32")
    y = np.sin(x[:, :2].sum(axis=1, keepdims=True)).astype("float32")
    return x, y


class NoTrainingArgModel(keras.Model):
    """A subclassed model whose ``call`` takes no ``training`` argument."""

    def __init__(self, units: int = UNITS, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(units, activation="tanh")
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


def make_model(kind: str = "sequential", d: int = N_FEATURES, units: int = UNITS,
               seed: int = TEST_SEED) -> keras.Model:
    """A built, uncompiled ``Dense(units, tanh) -> Dense(1)`` net of the given kind, its
    weights drawn from ``keras.utils.set_random_seed(seed)`` (same seed: same weights, whatever
    the kind)."""
    keras.utils.set_random_seed(seed)
    if kind == "sequential":
        return keras.Sequential([keras.Input((d,)), keras.layers.Dense(units, activation="tanh"),
                                 keras.layers.Dense(1)])
    if kind == "functional":
        inputs = keras.Input((d,))
        h = keras.layers.Dense(units, activation="tanh")(inputs)
        return keras.Model(inputs, keras.layers.Dense(1)(h))
    if kind == "subclassed":
        model = NoTrainingArgModel(units)
        model(np.zeros((1, d), "float32"))  # creates the weights (build() would not)
        return model
    raise ValueError(f"unknown model kind {kind!r}")


def compile_model(model: keras.Model, steps_per_execution: int = 1, momentum: float = 0.0):
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=momentum), loss="mse",
                  steps_per_execution=steps_per_execution)
    return model


def fresh_copy(model: keras.Model, kind: str, steps_per_execution: int = 1,
               momentum: float = 0.0) -> keras.Model:
    """A new compiled model of ``kind`` with ``model``'s weights and optimizer iterations."""
    other = compile_model(make_model(kind), steps_per_execution, momentum)
    other.set_weights(model.get_weights())
    other.optimizer.build(other.trainable_variables)
    other.optimizer.iterations.assign(int(model.optimizer.iterations.numpy()))
    return other


def fit(model, x, y, callbacks=(), epochs: int = EPOCHS):
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=list(callbacks))


def iterations(model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def state(model) -> List[np.ndarray]:
    """Weights and optimizer variables (iterations, learning rate, slots) as arrays."""
    return [np.array(keras.ops.convert_to_numpy(v))
            for v in list(model.weights) + list(model.optimizer.variables)]


def assert_same_state(a: Sequence[np.ndarray], b: Sequence[np.ndarray], what: str) -> None:
    """Equal to float32 round-off (a few ulps of the largest entry, per array)."""
    assert len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, f"{what}: array {i} has shape {u.shape} vs {v.shape}"
        scale = max(float(np.max(np.abs(v))), 1.0) if v.size else 1.0
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=f"{what}: array {i} differs")


class StaleHook(AssertionError):
    """A hook left on the model (``model.__dict__['train_step']``) after an interrupted fit."""


class LogKeyCollision(AssertionError):
    """Two different callbacks of one fit write the same key into the logs (History and
    CSVLogger then keep only the value of the one that runs last)."""


class Interrupt(Exception):
    """Raised by :class:`RaiseAtBatch`."""


class RaiseAtBatch(keras.callbacks.Callback):
    def __init__(self, batch: int = 1):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise Interrupt(f"interrupted at batch {batch}")


# ----------------------------------------------------------------------------- callback specs
@dataclasses.dataclass
class CallbackSpec:
    """How the harness makes and reads one kerntk callback.

    Args:
        name: test id (and cache key).
        make: ``make(x, y) -> callback``, a fresh instance (probe sets drawn from ``x``, ``y``).
        keys: its documented scalar log keys; ``None`` discovers them from its first fit.
        undefined_keys: keys whose value may be NaN by definition (a rate of no event yet).
        every_step: it measures every optimizer step (its steps are ``start .. end - 1``).
        at_start: it measures at the start of each fit (its first step is the fit's start).
        steps: ``steps(callback) -> list`` of the steps it recorded in its last fit; default
            ``history["step"]``.
        steps_from_fit_start: ``steps`` counts from the start of each fit (documented so for
            :class:`~kerntk.callbacks.DivergenceGuard`), not from ``optimizer.iterations`` 0.
        partner: the spec of the second callback of the ``side_by_side`` case; default this
            one (two identical instances).
    """

    name: str
    make: Callable
    keys: Optional[Iterable[str]] = None
    undefined_keys: Iterable[str] = ()
    every_step: bool = False
    at_start: bool = False
    steps: Optional[Callable] = None
    steps_from_fit_start: bool = False
    partner: Optional["CallbackSpec"] = None

    def __str__(self):
        return self.name

    def recorded_steps(self, callback, start: int) -> List[int]:
        """The optimizer steps ``callback`` labelled its records of the fit that started at
        optimizer step ``start`` with."""
        steps = self.steps(callback) if self.steps is not None else callback.history.get(
            "step", [])
        return [int(s) + (start if self.steps_from_fit_start else 0) for s in steps]

    def log_keys(self, callback) -> List[str]:
        """The scalar keys the callback logs: the documented list, else those of its latest
        measurement (``latest``), else its ``history`` keys that are not records."""
        if self.keys is not None:
            return sorted(self.keys)
        if isinstance(getattr(callback, "latest", None), dict) and callback.latest:
            return sorted(callback.latest)
        history = getattr(callback, "history", None)
        if isinstance(history, dict) and history:
            return sorted(set(history) - _RECORD_ONLY)
        raise AssertionError(f"{self}: no documented keys and nothing measured")


def series(callback, keys) -> Optional[dict]:
    """The callback's own per-measurement record of ``keys`` (``None`` if it keeps none)."""
    history = getattr(callback, "history", None)
    if not isinstance(history, dict):
        return None
    return {k: np.asarray(history[k], np.float64) for k in keys if k in history}


# ----------------------------------------------------------------------------- checks
def _check_finite(values, key: str, spec: CallbackSpec, where: str) -> None:
    values = np.asarray(values, np.float64)
    if key in set(spec.undefined_keys):
        assert not np.any(np.isinf(values)), f"{where}: {key} = {values}"
    else:
        assert np.all(np.isfinite(values)), f"{where}: {key} = {values} not finite"


def check_history_logs(history: dict, keys: Sequence[str], spec: CallbackSpec,
                       epochs: int = EPOCHS) -> None:
    """``history``: ``History.history`` of a fit."""
    for key in keys:
        assert key in history, f"{key} missing from History ({sorted(history)})"
        assert len(history[key]) == epochs, (key, history[key])
        _check_finite(history[key], key, spec, "History")


def check_csv_logs(rows: List[dict], keys: Sequence[str], spec: CallbackSpec,
                   epochs: int = EPOCHS) -> None:
    """``rows``: the ``csv.DictReader`` rows of a ``CSVLogger`` file."""
    assert len(rows) == epochs, rows
    for key in keys:
        assert key in rows[0], f"{key} is no CSVLogger column ({sorted(rows[0])})"
        _check_finite([float(r[key]) for r in rows], key, spec, "CSVLogger")


def check_steps(steps: List[int], spec: CallbackSpec, start: int, end: int) -> None:
    """Measurements of a fit from optimizer step ``start`` to ``end`` are labelled with its
    optimizer steps, in order."""
    assert steps, f"{spec}: recorded nothing"
    assert all(b > a for a, b in zip(steps, steps[1:])), f"{spec}: steps {steps} not increasing"
    assert start <= steps[0] and steps[-1] <= end, (
        f"{spec}: steps {steps} outside this fit's [{start}, {end}]")
    if spec.every_step:
        assert steps == list(range(start, end)), f"{spec}: steps {steps} != {start}..{end - 1}"
    if spec.at_start:
        assert steps[0] == start, f"{spec}: first step {steps[0]}, fit started at {start}"


# ----------------------------------------------------------------------------- scenarios
class Run(dict):
    """Observations of one scenario (one or more fits). Reading one the scenario never reached
    re-raises the error that stopped it, so each case fails with the scenario's own error."""

    error: Optional[BaseException] = None

    def __getitem__(self, key):
        if key not in self and self.error is not None:
            raise self.error
        return super().__getitem__(key)


def _read_csv(path: str) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scenario_main(spec, kind, tmp_path, run):
    """SGD with momentum, spe=1: a fit with the callback and a CSVLogger, the same fit of a
    copy without the callback, then a second (one-epoch) fit with the same instance."""
    x, y = make_data()
    model = compile_model(make_model(kind), momentum=0.9)
    plain = compile_model(make_model(kind), momentum=0.9)
    plain.set_weights(model.get_weights())
    callback = spec.make(x, y)
    path = os.path.join(str(tmp_path), f"{spec.name}_{kind}_spe1.csv")
    history = fit(model, x, y, [callback, keras.callbacks.CSVLogger(path)])
    run.update(history=history.history, rows=_read_csv(path), keys=spec.log_keys(callback),
               steps=spec.recorded_steps(callback, 0), end=iterations(model),
               restores=list(getattr(callback, "restores", [])),
               series=series(callback, spec.log_keys(callback)))
    plain_history = fit(plain, x, y)
    run.update(state_with=state(model), state_without=state(plain),
               loss_with=history.history["loss"], loss_without=plain_history.history["loss"],
               end_without=iterations(plain))
    start = iterations(model)
    second = fit(model, x, y, [callback], epochs=1)
    run.update(history2=second.history, start2=start, end2=iterations(model),
               steps2=spec.recorded_steps(callback, start), series2=series(callback, run["keys"]),
               restores2=list(getattr(callback, "restores", [])))
    # The plot of the two fits' callback, here so that the cache keeps no model alive.
    run["has_plot"] = hasattr(callback, "plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        run["plot"] = None
        return
    if run["has_plot"]:
        path = os.path.join(str(tmp_path), f"{spec.name}_{kind}.png")
        try:
            callback.plot(path)
        except Exception as e:
            run["plot"] = e
        else:
            with open(path, "rb") as f:
                run["plot"] = f.read()


def _scenario_spe3(spec, kind, tmp_path, run):
    x, y = make_data()
    model = compile_model(make_model(kind), steps_per_execution=3)
    callback = spec.make(x, y)
    path = os.path.join(str(tmp_path), f"{spec.name}_{kind}_spe3.csv")
    history = fit(model, x, y, [callback, keras.callbacks.CSVLogger(path)])
    run.update(history=history.history, rows=_read_csv(path), keys=spec.log_keys(callback),
               steps=spec.recorded_steps(callback, 0), end=iterations(model))


def _scenario_interrupted(spec, kind, tmp_path, run):
    """A fit interrupted at batch 1 by a callback after the kerntk one, then a plain fit of
    the model and of a fresh copy (same weights, optimizer iterations)."""
    x, y = make_data()
    model = compile_model(make_model(kind))
    try:
        fit(model, x, y, [spec.make(x, y), RaiseAtBatch(1)])
    except Interrupt as e:
        run["raised"] = e.with_traceback(None)  # its frames would keep the model alive
    else:
        run["raised"] = None
    stale = model.__dict__.get("train_step")
    run.update(iterations=iterations(model), train_step=None if stale is None else repr(stale))
    plain = fresh_copy(model, kind)
    h_model, h_plain = fit(model, x, y), fit(plain, x, y)
    run.update(after_plain_fit={k for k in ("train_step", "make_train_function")
                                if k in model.__dict__},
               state_model=state(model), state_fresh=state(plain),
               loss_model=h_model.history["loss"], loss_fresh=h_plain.history["loss"])


def _scenario_mixed(spec, kind, tmp_path, run):
    x, y = make_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_model(make_model(kind))
        run["compute_dtype"] = model.compute_dtype
        callback = spec.make(x, y)
        history = fit(model, x, y, [callback])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keys = spec.log_keys(callback)
    run.update(history=history.history, keys=keys, series=series(callback, keys),
               steps=spec.recorded_steps(callback, 0), end=iterations(model))


def _scenario_pair(spec, kind, tmp_path, run):
    x, y = make_data()
    model = compile_model(make_model(kind))
    partner = spec.partner or spec
    first, second = spec.make(x, y), partner.make(x, y)
    history = fit(model, x, y, [first, second])
    run.update(history=history.history, end=iterations(model),
               first=(spec, spec.recorded_steps(first, 0), spec.log_keys(first),
                      series(first, spec.log_keys(first)), type(first).__name__),
               second=(partner, partner.recorded_steps(second, 0), partner.log_keys(second),
                       series(second, partner.log_keys(second)), type(second).__name__))


_SCENARIOS = {"main": _scenario_main, "spe3": _scenario_spe3, "interrupted": _scenario_interrupted,
              "mixed": _scenario_mixed, "pair": _scenario_pair}


# ----------------------------------------------------------------------------- the cases
def _case_logs(spec, run):
    keys = run["keys"]
    assert keys, f"{spec}: no scalar keys"
    check_history_logs(run["history"], keys, spec)
    check_csv_logs(run["rows"], keys, spec)
    check_steps(run["steps"], spec, 0, run["end"])
    assert run["end"] == EPOCHS * STEPS_PER_EPOCH


def _case_two_fits(spec, run):
    keys, start, end = run["keys"], run["start2"], run["end2"]
    assert end == start + STEPS_PER_EPOCH
    check_history_logs(run["history2"], keys, spec, epochs=1)
    # A per-fit record (reset at on_train_begin, as each callback implements it): the steps of
    # the second fit only, none of the first's.
    check_steps(run["steps2"], spec, start, end)
    current = run["series2"]
    if current is not None:
        for key in keys:
            assert len(current[key]) == len(run["steps2"]), key
            # The epoch log of the second fit is its latest measurement.
            logged, measured = run["history2"][key][-1], current[key][-1]
            assert (math.isnan(logged) and math.isnan(measured)) or logged == measured, (
                key, logged, measured)
    if "ntk_drift" in keys:
        assert current["ntk_drift"][0] == 0.0, "drift is against the fit's first kernel"
    assert run["restores2"] == []


def _case_interrupted(spec, run):
    assert isinstance(run["raised"], Interrupt), "the callback's exception did not propagate"
    assert run["iterations"] == 2
    assert run["after_plain_fit"] == set(), (
        f"the plain fit after the interrupted one left {run['after_plain_fit']} on the model")
    np.testing.assert_allclose(run["loss_model"], run["loss_fresh"], rtol=1e-6)
    assert_same_state(run["state_model"], run["state_fresh"],
                      f"{spec}: plain fit after the interrupted one vs a fresh model")


def _case_no_stale_hook(spec, run):
    assert isinstance(run["raised"], Interrupt), "the callback's exception did not propagate"
    if run["train_step"] is not None:
        raise StaleHook(f"stale hook: model.__dict__['train_step'] = {run['train_step']} "
                        f"after the interrupted fit")


def _case_mixed_precision(spec, run):
    assert run["compute_dtype"] == "float16"
    check_history_logs(run["history"], run["keys"], spec)
    if run["series"] is not None:
        for key, values in run["series"].items():
            _check_finite(values, key, spec, "callback.history")
    check_steps(run["steps"], spec, 0, run["end"])


def _case_side_by_side(spec, run):
    end = run["end"]
    for s, steps, keys, _, _ in (run["first"], run["second"]):
        check_steps(steps, s, 0, end)
        # Both recorded to the end of the fit (its last update, or the state after it).
        assert steps[-1] >= end - 1, (s.name, steps, end)
        check_history_logs(run["history"], keys, s)
    (s1, steps1, keys1, a, name1), (s2, steps2, keys2, b, name2) = run["first"], run["second"]
    if s1 is s2:  # two identical instances record the same series
        assert steps1 == steps2
        if a is not None:
            for key in keys1:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)
    elif set(keys1) & set(keys2):
        # Checked last: the checks above hold whatever this one finds.
        raise LogKeyCollision(
            f"{name1} and {name2} both log "
            f"{sorted(set(keys1) & set(keys2))}: History keeps one value per epoch, the one "
            f"written last")


def _case_plot(spec, run, tmp_path):
    if not run["has_plot"]:
        pytest.skip(f"{spec} has no plot method")
    pytest.importorskip("matplotlib")
    png = run["plot"]
    if isinstance(png, Exception):
        raise png
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "plot(path) wrote no PNG"
    assert len(png) > 1000, f"plot(path) wrote a PNG of {len(png)} bytes"


def _case_unchanged_training(spec, run):
    assert run["end"] == run["end_without"] == EPOCHS * STEPS_PER_EPOCH
    np.testing.assert_allclose(run["loss_with"], run["loss_without"], rtol=1e-6)
    assert_same_state(run["state_with"], run["state_without"],
                      f"{spec}: with vs without the callback")
    assert run["restores"] == []


#: case -> (scenario it reads, check).
_CASES = {
    "logs_spe1": ("main", lambda spec, run, tmp: _case_logs(spec, run)),
    "logs_spe3": ("spe3", lambda spec, run, tmp: _case_logs(spec, run)),
    "two_fits": ("main", lambda spec, run, tmp: _case_two_fits(spec, run)),
    "interrupted": ("interrupted", lambda spec, run, tmp: _case_interrupted(spec, run)),
    "no_stale_hook": ("interrupted", lambda spec, run, tmp: _case_no_stale_hook(spec, run)),
    "mixed_precision": ("mixed", lambda spec, run, tmp: _case_mixed_precision(spec, run)),
    "side_by_side": ("pair", lambda spec, run, tmp: _case_side_by_side(spec, run)),
    "plot": ("main", _case_plot),
    "unchanged_training": ("main", lambda spec, run, tmp: _case_unchanged_training(spec, run)),
}
assert tuple(_CASES) == CASES


def scenario(spec: CallbackSpec, kind: str, name: str, tmp_path, cache: Optional[dict] = None
             ) -> Run:
    """The observations of scenario ``name`` for ``spec`` on a ``kind`` model, run now (from
    the test seed, float32 policy) unless ``cache`` holds them."""
    key = (spec.name, kind, name)
    if cache is not None and key in cache:
        return cache[key]
    run = Run()
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session(free_memory=False)  # as conftest, less its slow gc.collect()
    keras.utils.set_random_seed(TEST_SEED)
    try:
        _SCENARIOS[name](spec, kind, tmp_path, run)
    except Exception as e:  # the cases that need what was not observed fail with it
        run.error = e
    finally:
        keras.config.set_dtype_policy("float32")
    if cache is not None:
        cache[key] = run
    return run


def run_callback_test(spec: CallbackSpec, *, tmp_path, model_kind: str = "sequential",
                      cases: Sequence[str] = CASES, cache: Optional[dict] = None) -> None:
    """Runs the contract ``cases`` (default: all of :data:`CASES`) for the callback of
    ``spec`` on a tiny model of ``model_kind``.

    Cases that read the same scenario share its fits; with ``cache`` (a dict kept across
    calls, e.g. by a module-scoped fixture) they share them across tests too, so that each
    case can be its own test (and its own ``xfail``) without refitting."""
    unknown = set(cases) - set(_CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; known: {CASES}")
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {model_kind!r}; known: {MODEL_KINDS}")
    cache = {} if cache is None else cache
    for case in cases:
        name, check = _CASES[case]
        check(spec, scenario(spec, model_kind, name, tmp_path, cache), tmp_path)
