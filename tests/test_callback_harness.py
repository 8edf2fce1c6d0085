"""Every kerntk callback through the one contract of :mod:`tests.callback_harness` (issue 11)."""

import keras
import numpy as np
import pytest

from kerntk.callbacks import (AGOPAlignmentLogger, CriticalLRMonitor, DivergenceGuard,
                              NTKSpectrumTracker)
from tests.callback_harness import CASES, CallbackSpec, StaleHook, run_callback_test

TRACKER = CallbackSpec(
    "tracker",
    # Measures at the start, every 2 steps and at each epoch end (a step schedule and an epoch
    # one); with probe_y it also logs the loss split.
    lambda x, y: NTKSpectrumTracker(x[:8], y[:8], k=3, top_s=3, every_n_steps=2),
    at_start=True)
AGOP = CallbackSpec(
    "agop",
    lambda x, y: AGOPAlignmentLogger(x[:16], reference=np.eye(x.shape[1]),
                                     metrics=("cosine", "pearson")),
    at_start=True)
MONITOR = CallbackSpec(
    "monitor", lambda x, y: CriticalLRMonitor(),
    # Rates over spikes / events: NaN (undefined) while there is none.
    undefined_keys=("spike_event_match_rate", "event_spike_rate"), every_step=True)
GUARD = CallbackSpec(
    "guard", lambda x, y: DivergenceGuard(snapshot_every=3),
    keys=("guard_restores", "skipped_batches", "guard_lr"),  # its documented logs
    # No per-step history: the last step its in-step checks reached, counted (as documented)
    # from the start of each fit.
    steps=lambda guard: [] if guard._last_step < 0 else [guard._last_step],
    steps_from_fit_start=True,
    partner=MONITOR)  # "a monitor and a guard" side by side (the monitor in the guard's step)
SPECS = (TRACKER, AGOP, MONITOR, GUARD)

_STALE_HOOK = (StaleHook, (
    "stale hook: after a fit that another callback interrupted (exception at batch 1), "
    "model.__dict__['train_step'] is still the hook's wrapper "
    "(_Chain.rebuild.<locals>.train_step): Keras skips on_train_end when fit raises, and the "
    "wrapper is removed only by the next fit's make_train_function"))

#: (spec, case, model kind) -> (the exception of a known contract failure, its exact symptom);
#: xfail(strict, raises=...): any other failure of the case still fails.
XFAIL = {(name, "no_stale_hook", kind): _STALE_HOOK
         for name in ("monitor", "guard") for kind in ("sequential", "functional", "subclassed")}


def _params(kinds, cases, specs=SPECS):
    out = []
    for kind in kinds:
        for spec in specs:
            for case in cases:
                known = XFAIL.get((spec.name, case, kind))
                marks = [pytest.mark.xfail(strict=True, raises=known[0], reason=known[1])
                         ] if known else []
                out.append(pytest.param(spec, case, kind, marks=marks,
                                        id=f"{kind}-{spec.name}-{case}"))
    return out


@pytest.fixture(scope="module")
def scenarios():
    """Fits shared by the cases of one callback and model kind (see run_callback_test)."""
    cache = {}
    yield cache
    cache.clear()


@pytest.mark.parametrize("spec,case,kind", _params(["sequential"], CASES))
def test_callback_contract(spec, case, kind, tmp_path, scenarios):
    run_callback_test(spec, tmp_path=tmp_path, model_kind=kind, cases=[case], cache=scenarios)


@pytest.mark.parametrize("spec,case,kind", _params(["functional", "subclassed"], CASES,
                                                   (TRACKER, MONITOR)))
def test_callback_contract_on_other_models(spec, case, kind, tmp_path, scenarios):
    """The same contract on a functional model and on a subclassed one whose ``call`` takes no
    ``training`` argument."""
    run_callback_test(spec, tmp_path=tmp_path, model_kind=kind, cases=[case], cache=scenarios)


class _Broken(keras.callbacks.Callback):
    """Breaks the contract twice: logs a NaN, and halves the learning rate at train begin."""

    def on_train_begin(self, logs=None):
        self.history = {"step": [0], "broken": [float("nan")]}
        self.model.optimizer.learning_rate = self.model.optimizer.learning_rate / 2

    def on_epoch_end(self, epoch, logs=None):
        logs["broken"] = float("nan")


@pytest.mark.parametrize("case,symptom", [("logs_spe1", "broken = .*nan.* not finite"),
                                          ("unchanged_training", "Not equal to tolerance")])
def test_the_harness_catches_a_broken_callback(case, symptom, tmp_path):
    spec = CallbackSpec("broken", lambda x, y: _Broken())
    with pytest.raises(AssertionError, match=symptom):
        run_callback_test(spec, tmp_path=tmp_path, cases=[case])
