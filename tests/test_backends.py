"""kerntk under the JAX backend of Keras (issue #13).

The layers, the model zoo, the DAG layer, ``.keras`` saving and the numpy-side tools work under
JAX; the TensorFlow-only engine raises one clear error (:class:`kerntk.BackendError`) when called,
not at import. This process runs on TensorFlow (conftest) and Keras fixes its backend at import,
so the JAX side runs in fresh processes: tests/backend_scenario.py (everything, one launch) and the
issue's one-liner. Models cross the backend boundary as ``.keras`` files both ways and must
predict the same to float32 rounding, which fails if a layer computes different math under JAX.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytest.importorskip("jax")

from kerntk._backend import BackendError, require_tensorflow  # noqa: E402
from tests import backend_scenario as scenario  # noqa: E402

ISSUE_ONE_LINER = ("import kerntk, numpy as np; m = kerntk.models.pnn(degree=3, width=64, "
                   "input_shape=(4,)); m.compile('adam', 'mse'); "
                   "m.fit(np.ones((8, 4)), np.ones((8, 1)), verbose=0)")


def _jax_env(**extra) -> dict:
    return dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", **extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(directory, report)``: the TensorFlow models saved, then the JAX scenario run on them."""
    directory = str(tmp_path_factory.mktemp("backends"))
    scenario.train_and_save(directory, "tensorflow", fit=False)
    # XLA:CPU at optimization level 0 compiles the scenario's ~100 tiny programs (one per weight
    # shape for the initializers alone) several times faster; the math is the same.
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    out = subprocess.run([sys.executable, scenario.__file__, directory], capture_output=True,
                         text=True, timeout=900, env=_jax_env(XLA_FLAGS=flags))
    assert out.returncode == 0, out.stderr[-5000:]
    return directory, json.loads(out.stdout.strip().splitlines()[-1])


def test_issue_one_liner_fits_a_pnn_under_jax():
    out = subprocess.run([sys.executable, "-c", ISSUE_ONE_LINER], capture_output=True, text=True,
                         timeout=600, env=_jax_env())
    assert out.returncode == 0, out.stderr[-5000:]


def test_import_under_jax_needs_neither_matplotlib_nor_tfds(run):
    _, report = run
    assert report["backend"] == "jax"
    assert report["blocked_modules"] == []


def test_every_layer_and_zoo_model_runs_fits_and_reloads_under_jax(run):
    _, report = run
    assert set(report["models"]) == set(scenario.inputs())
    for name, result in report["models"].items():
        assert result["finite"], name
        assert result["moved"] > 0, f"{name}: one fit step changed nothing"
        assert result["reload_diff"] == 0.0, f"{name}: predictions changed by a .keras round trip"


def _assert_same_predictions(expected: dict, actual: dict) -> None:
    assert set(actual) == set(expected)
    for name, want in expected.items():
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(actual[name], want, rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=name)


def test_models_saved_under_tensorflow_predict_the_same_under_jax(run):
    directory, _ = run
    expected = dict(np.load(os.path.join(directory, "tensorflow.npz")))
    actual = dict(np.load(os.path.join(directory, "tensorflow_models_under_jax.npz")))
    _assert_same_predictions(expected, actual)


def test_models_saved_under_jax_predict_the_same_under_tensorflow(run):
    directory, _ = run
    expected = dict(np.load(os.path.join(directory, "jax.npz")))
    _assert_same_predictions(expected, scenario.load_and_predict(directory, "jax"))


def test_numpy_side_tools_work_under_jax(run):
    _, report = run
    failed = {name: result for name, result in report["numpy_side"].items() if result is not True}
    assert not failed


def test_tensorflow_only_entry_points_raise_the_backend_error_under_jax(run):
    _, report = run
    assert "kerntk.ntk.empirical_ntk" in report["tensorflow_only"]
    for feature, result in report["tensorflow_only"].items():
        assert result["error"] == "BackendError" and result["backend_error"], (feature, result)
        message = result["message"]
        assert message.startswith(feature + " "), message
        assert "needs the TensorFlow backend of Keras" in message
        assert "the active backend is 'jax'" in message
        assert "KERAS_BACKEND=tensorflow" in message


def test_require_tensorflow_names_the_feature_and_the_backend(monkeypatch):
    require_tensorflow("feature")                  # the backend of this process: no error
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(BackendError, match=r"^kerntk\.thing needs the TensorFlow backend of "
                                           r"Keras; the active backend is 'torch'\. "):
        require_tensorflow("kerntk.thing")
    with pytest.raises(RuntimeError, match="needs the TensorFlow or JAX backend"):
        require_tensorflow("kerntk.other", also=("jax",))
