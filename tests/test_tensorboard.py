"""The callbacks' TensorBoard pictures (``log_dir=``), read back from the event files."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerntk
from kerntk.callbacks import AGOPAlignmentLogger, CriticalLRMonitor, NTKSpectrumTracker

SIDE = 8  # the probe inputs are flattened SIDE x SIDE x 1 images


def _problem(n=32, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, SIDE * SIDE))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")
    return x, (8 * x[:, :1] * x[:, 1:2]).astype("float32")


def _model():
    model = kerntk.models.fcn(2, 64, input_shape=(SIDE * SIDE,), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")  # eta_crit is about 0.56
    return model


def _callbacks(x, y, log_dir):
    return [NTKSpectrumTracker(x, y, k=3, log_dir=log_dir),
            CriticalLRMonitor(every_n_steps=2, log_dir=log_dir),
            AGOPAlignmentLogger(x, np.eye(x.shape[1]), log_dir=log_dir,
                                image_shape=(SIDE, SIDE, 1), image_eigenvectors=3)]


def _events(run_dir):
    """``{tag: [(step, array), ...]}`` of all event files in ``run_dir``; images decoded to
    ``(k, H, W, C)`` uint8."""
    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if value.tag.endswith(("_figure", "_eigenvectors")):  # [width, height, png...]
                    array = np.stack([tf.image.decode_png(png).numpy() for png in array[2:]])
                out.setdefault(value.tag, []).append((event.step, array))
    return out


def test_pictures_of_two_fits_beside_keras_tensorboard_in_one_log_dir(tmp_path):
    x, y = _problem()
    model = _model()
    callbacks = _callbacks(x, y, str(tmp_path))
    callbacks[1] = CriticalLRMonitor(every_n_steps=2, log_dir=tmp_path)  # os.PathLike
    tracker, monitor, logger = callbacks
    # Batch summaries every 3 steps: its record_if must not drop the kerntk pictures.
    board = keras.callbacks.TensorBoard(str(tmp_path), update_freq=3)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks + [board])
    measured = {key: list(values) for key, values in tracker.history.items()}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks + [board])
    for key, values in tracker.history.items():
        measured[key] += values
    assert measured["step"] == [0, 4, 8, 8, 12]  # a baseline at the start of each fit

    kerntk_dir = tmp_path / "kerntk"
    assert len(glob.glob(str(kerntk_dir / "events.out.tfevents.*"))) == 3  # one writer each
    events = _events(kerntk_dir)
    assert sorted(events) == ["kerntk/agop_eigenvectors", "kerntk/critical_lr_figure",
                              "kerntk/ntk_eigenvalues", "kerntk/ntk_spectrum_figure"]
    # Keras' run holds the scalars of logs (its epoch scalars fall under its own record_if
    # here: the epoch ends, steps 4, 8, 12, are not multiples of update_freq).
    assert {"batch_loss", "batch_eta_crit"} <= set(_events(tmp_path / "train"))

    # One histogram of the k = 3 top eigenvalues per measurement: buckets (left, right, count)
    # spanning [lambda_3, lambda_1] of the tracker's own series.
    histograms = events["kerntk/ntk_eigenvalues"]
    assert [step for step, _ in histograms] == measured["step"]
    for i, (_, buckets) in enumerate(histograms):
        assert buckets.shape[1] == 3 and buckets[:, 2].sum() == 3
        np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]],
                                   [measured["ntk_lambda_3"][i], measured["ntk_lambda_1"][i]],
                                   rtol=1e-6)

    # The figures: once per fit, at its end, the size of the plot() figures at dpi 110.
    for tag, size in (("kerntk/ntk_spectrum_figure", (3.4, 3 * 4.2)),
                      ("kerntk/critical_lr_figure", (3.4, 9))):
        assert [step for step, _ in events[tag]] == [8, 12]
        for _, image in events[tag]:
            assert image.shape == (1, round(110 * size[0]), round(110 * size[1]), 3)

    # AGOP eigenvectors: at the start of each fit and at every epoch end, one set per step.
    eigenvectors = events["kerntk/agop_eigenvectors"]
    assert [step for step, _ in eigenvectors] == [0, 4, 8, 12]
    for _, images in eigenvectors:
        assert images.shape == (3, SIDE, SIDE, 1)
        assert np.all(images.reshape(3, -1).max(axis=1) == 255)
    # The last set is |v| / max|v| of the final model's AGOP eigenvectors.
    G = kerntk.agop.agop(model, x).astype(np.float64)
    _, vectors = np.linalg.eigh(G)
    expected = np.abs(vectors[:, ::-1][:, :3].T)
    expected = 255 * expected / expected.max(axis=1, keepdims=True)
    np.testing.assert_allclose(eigenvectors[-1][1].reshape(3, -1), expected, atol=1.0)


def test_training_is_the_same_with_and_without_log_dir_and_none_writes_nothing(tmp_path,
                                                                                monkeypatch):
    x, y = _problem()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    runs = []
    for log_dir in (None, tmp_path / "logs"):
        keras.utils.clear_session()
        model = _model()
        callbacks = _callbacks(x, y, log_dir)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False,
                            callbacks=callbacks)
        runs.append((model.get_weights(), history.history))
        if log_dir is None:
            assert os.listdir(tmp_path) == ["cwd"] and os.listdir(cwd) == []
    (weights, history), (weights_logged, history_logged) = runs
    for w, w_logged in zip(weights, weights_logged):
        np.testing.assert_array_equal(w, w_logged)
    np.testing.assert_equal(history_logged, history)  # NaN rates compare equal
    assert os.listdir(tmp_path / "logs") == ["kerntk"]


@pytest.mark.parametrize("log_dir", [3, "", b"logs", ["logs"]])
def test_log_dir_must_be_a_path(log_dir):
    x, y = _problem(n=4)
    with pytest.raises(ValueError, match="log_dir"):
        NTKSpectrumTracker(x, log_dir=log_dir, k=2)
    with pytest.raises(ValueError, match="log_dir"):
        CriticalLRMonitor(log_dir=log_dir)


def test_agop_logger_needs_an_image_shape_for_pictures(tmp_path):
    x, _ = _problem(n=4)
    reference = np.eye(x.shape[1])
    with pytest.raises(ValueError, match="image_shape"):
        AGOPAlignmentLogger(x, reference, log_dir=tmp_path)
    with pytest.raises(ValueError, match="pixel values"):
        AGOPAlignmentLogger(x, reference, log_dir=tmp_path, image_shape=(8, 4, 3))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AGOPAlignmentLogger(x, reference, log_dir=tmp_path, image_shape=(4, 8, 2))
    with pytest.raises(ValueError, match="image_eigenvectors"):
        AGOPAlignmentLogger(x, reference, log_dir=tmp_path, image_shape=(8, 8),
                            image_eigenvectors=0)
    assert AGOPAlignmentLogger(x, reference, image_shape=(8, 8)).image_shape == (8, 8, 1)
    images = x.reshape(4, 4, 8, 2)[..., :1]  # (n, H, W, C) probes give their own shape
    assert AGOPAlignmentLogger(images, np.eye(32), log_dir=tmp_path).image_shape == (4, 8, 1)
