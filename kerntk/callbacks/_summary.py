"""TensorBoard pictures of the callbacks: what the scalars in ``logs`` cannot show.

Scalars reach TensorBoard through ``logs`` (``keras.callbacks.TensorBoard`` writes them). A
callback given ``log_dir`` also writes histograms and images, through one :class:`SummaryLog`, into
``<log_dir>/kerntk``: beside the ``train/`` and ``validation/`` runs that
``keras.callbacks.TensorBoard(log_dir)`` writes, so TensorBoard lists it as the run ``kerntk``.
Several callbacks may share a ``log_dir``: each writes its own event file under its own tags.
TensorBoard's summary ops are loaded on the first write and matplotlib on the first figure, so a
callback without ``log_dir`` pays for neither.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import Callable, Optional

import numpy as np

SUBDIR = "kerntk"


def check_log_dir(log_dir) -> Optional[str]:
    """``log_dir`` as a string path (``None`` passes through); ``ValueError`` unless it is a
    non-empty ``str`` or ``os.PathLike``, ``ImportError`` without the tensorboard package."""
    if log_dir is None:
        return None
    path = os.fspath(log_dir) if isinstance(log_dir, (str, os.PathLike)) else None
    if not isinstance(path, str) or not path:
        raise ValueError(f"`log_dir` must be None or a non-empty str or os.PathLike; "
                         f"got {log_dir!r}.")
    if importlib.util.find_spec("tensorboard") is None:
        # tf.summary's histogram and image ops live in the tensorboard package.
        raise ImportError("`log_dir` needs the tensorboard package: pip install tensorboard.")
    return path


def summary_log(log_dir) -> Optional["SummaryLog"]:
    """A :class:`SummaryLog` of ``log_dir`` after :func:`check_log_dir`; ``None`` for ``None``."""
    path = check_log_dir(log_dir)
    return None if path is None else SummaryLog(path)


class SummaryLog:
    """Histograms and images for TensorBoard in ``<log_dir>/kerntk``.

    The ``tf.summary`` file writer is created on the first write and kept for later fits (one
    event file per callback); :meth:`flush` (called by the callbacks at the end of training)
    puts everything on disk. Writes are eager, outside the training step, and always recorded,
    whatever ``tf.summary.record_if`` a ``keras.callbacks.TensorBoard`` has set for batch
    summaries.
    """

    def __init__(self, log_dir: str):
        self.log_dir = os.path.join(log_dir, SUBDIR)
        self._writer = None

    def _write(self, write: Callable) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default(), tf.summary.record_if(True):
            write(tf.summary)

    def histogram(self, tag: str, values, step: int) -> None:
        """Writes the distribution of ``values`` (any shape) at ``step``."""
        values = np.asarray(values, np.float64).reshape(-1)
        self._write(lambda summary: summary.histogram(tag, values, step=int(step)))

    def images(self, tag: str, images: np.ndarray, step: int) -> None:
        """Writes ``images`` ``(k, H, W, C)`` (float in [0, 1] or uint8; ``C`` in 1, 3, 4) at
        ``step``, all ``k`` of them."""
        images = np.asarray(images)
        self._write(lambda summary: summary.image(tag, images, step=int(step),
                                                  max_outputs=len(images)))

    def figure(self, tag: str, plot: Callable, step: int) -> None:
        """Writes the figure that ``plot(file)`` saves (a callback's ``plot``) as an RGB image."""
        import matplotlib  # optional dependency: pip install kerntk[plot]
        import tensorflow as tf

        buffer = io.BytesIO()
        with matplotlib.rc_context({"savefig.format": "png"}):  # a file object has no suffix
            plot(buffer)
        image = tf.image.decode_png(buffer.getvalue(), channels=3)
        self.images(tag, image[None].numpy(), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
