"""AGOP alignment logger (thesis §4.4, Eq. 4.5-4.6)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import keras
import numpy as np

from kerntk import agop as agop_lib
from kerntk._blas import single_threaded
from kerntk._validation import is_integer
from kerntk.callbacks._summary import summary_log
from kerntk.callbacks.base import MeasuringCallback, check_probe, full_precision


def _positive_int(name: str, value) -> int:
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _image_shape(probe_x: np.ndarray, image_shape) -> Tuple[int, int, int]:
    """``(H, W, C)`` of the probe's images: ``image_shape`` (``(H, W)`` means one channel),
    else ``probe_x.shape[1:]`` of an ``(n, H, W, C)`` probe."""
    d = int(np.prod(probe_x.shape[1:]))
    if image_shape is None:
        if probe_x.ndim != 4:
            raise ValueError("With `log_dir`, AGOPAlignmentLogger writes the AGOP's eigenvectors "
                             "as images: pass image inputs (n, H, W, C) or `image_shape=(H, W, "
                             f"C)`; got `probe_x` of shape {probe_x.shape}.")
        shape = probe_x.shape[1:]
    else:
        shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
        if len(shape) not in (2, 3):
            raise ValueError(f"`image_shape` must be (H, W) or (H, W, C); got {image_shape!r}.")
        shape = tuple(_positive_int("image_shape", v) for v in shape) + (1,) * (3 - len(shape))
        if int(np.prod(shape)) != d:
            raise ValueError(f"`image_shape` {shape} has {int(np.prod(shape))} pixel values; "
                             f"the probe inputs have d = {d}.")
    if shape[2] not in (1, 3):
        raise ValueError(f"AGOP eigenvector images need 1 or 3 channels; got {shape[2]}.")
    return tuple(int(v) for v in shape)



def _psd_factor(G: np.ndarray):
    """``G = L^T L`` as an :class:`kerntk.agop.AGOPFactor` with ``rank(G)`` rows, computed once,
    so each alignment costs O(n c r d) instead of O(n c d^2). A matrix with clearly negative
    eigenvalues is no AGOP and is kept as a matrix."""
    sym = (G + G.T) / 2
    evals, evecs = np.linalg.eigh(sym)
    tol = max(abs(evals[0]), abs(evals[-1])) * len(evals) * np.finfo(np.float64).eps
    if evals[0] < -1e3 * tol or not np.allclose(G, sym, rtol=0, atol=1e3 * tol):
        return G
    keep = evals > tol
    return agop_lib.AGOPFactor((evecs[:, keep] * np.sqrt(evals[keep])).T, 1)


class AGOPAlignmentLogger(MeasuringCallback):
    """Logs the alignment between the model's AGOP and a reference ``G*`` during ``fit``.

    ``G = (1/n) sum_i grad_x f(x_i) grad_x f(x_i)^T`` on the probe inputs
    (:func:`kerntk.agop.agop`, thesis Eq. 4.5) and ``agop_alignment = cos(G, G*) =
    Tr(G^T G*) / (||G||_F ||G*||_F)`` (Eq. 4.6; ``agop_alignment_pearson`` with
    ``metrics=("cosine", "pearson")``). ``G*`` comes from ``reference``:

    * a ``(d, d)`` matrix (e.g. an analytic EGOP of the target);
    * a Keras model (e.g. a strong reference net): its AGOP on the probe;
    * a callable ``f*`` mapping a ``tf.Tensor`` batch to outputs: its EGOP on the probe.

    Args:
        probe_x: ``(n, ...)`` probe inputs (``d = prod(shape[1:])``).
        reference: ``G*`` as above (computed once, at the start of training).
        every_n_epochs, every_n_steps, schedule: when to measure (see :mod:`kerntk.callbacks.base`).
        metrics: ``"cosine"``, ``"pearson"`` or a sequence of them.
        center: use centered AGOPs (gradient covariances) for the model and a callable/model
            reference.
        top_eigenvectors: also keep the top eigenvectors of ``G`` (``self.eigenvectors``) for
            plotting; 0 disables.
        log_dir: optional TensorBoard directory (str or PathLike). Under ``<log_dir>/kerntk``
            (see :mod:`kerntk.callbacks._summary`) it writes the tag
            ``kerntk/agop_eigenvectors``: the top ``image_eigenvectors`` eigenvectors of ``G``
            (the right singular vectors of its factor, :func:`kerntk.agop.agop`), each reshaped
            to the input image and shown as ``|v| / max|v|`` in [0, 1] (an eigenvector's sign
            is arbitrary), in order of eigenvalue — at the start of each fit and at the end of
            every ``image_every_n_epochs``-th epoch (step: the optimizer step then; one image
            set per step). Needs image inputs. ``None`` writes nothing.
        image_shape: ``(H, W, C)`` (or ``(H, W)``, one channel; ``C`` is 1 or 3) of flattened
            ``(n, d)`` probe inputs, read row-major; default: ``probe_x.shape[1:]`` of an
            ``(n, H, W, C)`` probe.
        image_eigenvectors: number of eigenvectors written (at most ``rank(G)``).
        image_every_n_epochs: epochs between eigenvector images.

    Cost per measurement: ``c`` backward passes over the probe plus the alignment from the
    ``(n c) x d`` gradient factor, O(n c (n c + r) d) for a reference of rank ``r``, all in one
    compiled function (:func:`kerntk.agop.alignment_fn`; a matrix reference is factorized once,
    at the start of training, with one ``d x d`` eigendecomposition). About 0.9 of a training
    step on the 128-point probe of ``benchmarks/callbacks.py``. A reference matrix that is not
    PSD, or ``top_eigenvectors``, takes the host path (:func:`kerntk.agop.agop` + ``alignment``).
    Each eigenvector image costs one AGOP factor (``c`` backward passes over the probe) plus an
    SVD of the ``(n c) x d`` factor.
    """

    def __init__(self, probe_x, reference, every_n_epochs: Optional[int] = 1,
                 metrics: Sequence[str] = ("cosine",), center: bool = False,
                 every_n_steps: Optional[int] = None,
                 schedule: Optional[Callable[[int], bool]] = None, top_eigenvectors: int = 0,
                 log_dir=None, image_shape=None, image_eigenvectors: int = 4,
                 image_every_n_epochs: int = 1):
        super().__init__(every_n_steps, every_n_epochs, schedule)
        self.probe_x = check_probe("probe_x", probe_x)
        self.log_dir, self._summary = log_dir, summary_log(log_dir)
        self.image_shape = image_shape
        if image_shape is not None or log_dir is not None:
            self.image_shape = _image_shape(self.probe_x, image_shape)
        self.image_eigenvectors = _positive_int("image_eigenvectors", image_eigenvectors)
        self.image_every_n_epochs = _positive_int("image_every_n_epochs", image_every_n_epochs)
        self._image_step = None
        metrics = agop_lib._check_metrics(metrics)
        d = int(np.prod(self.probe_x.shape[1:]))
        if not callable(reference):
            reference = np.asarray(reference, np.float64)
            if reference.shape != (d, d):
                raise ValueError(f"A matrix `reference` must have shape (d, d) = {(d, d)}; got "
                                 f"{reference.shape}.")
            if not np.all(np.isfinite(reference)):
                raise ValueError("`reference` contains NaN or inf.")
        self.reference, self.metrics, self.center = reference, metrics, center
        if not is_integer(top_eigenvectors) or top_eigenvectors < 0:
            raise ValueError(f"`top_eigenvectors` must be an integer >= 0; got "
                             f"{top_eigenvectors!r}.")
        self.top_eigenvectors = int(top_eigenvectors)
        self.eigenvectors = []
        self._G_star = None
        self._measure_fn = None

    @staticmethod
    def _key(metric: str) -> str:
        return "agop_alignment" if metric == "cosine" else f"agop_alignment_{metric}"

    def _on_train_begin(self) -> None:
        self.eigenvectors = []
        self._measure_fn = None
        if isinstance(self.reference, np.ndarray):
            self._G_star = _psd_factor(self.reference)
        elif isinstance(self.reference, keras.Model):
            with full_precision(self.reference):
                self._G_star = agop_lib.agop(self.reference, self.probe_x, center=self.center,
                                             low_rank=True)
        else:
            self._G_star = agop_lib.egop(self.reference, self.probe_x, center=self.center,
                                         low_rank=True)
        if isinstance(self._G_star, agop_lib.AGOPFactor) and not self.top_eigenvectors:
            # Compiled once: gradients and inner products on the device, four scalars back.
            with full_precision(self.model):
                self._measure_fn = agop_lib.alignment_fn(
                    self.model, self.probe_x, self._G_star, metrics=self.metrics,
                    center=self.center)
        if self._summary is not None:
            self._write_eigenvectors()

    def measure(self) -> Dict[str, float]:
        if self._measure_fn is not None:
            with full_precision(self.model):  # mixed precision: input gradients in float32
                aligned = self._measure_fn()
            return {self._key(metric): value for metric, value in aligned.items()}
        with full_precision(self.model):
            G = agop_lib.agop(self.model, self.probe_x, center=self.center, low_rank=True)
        values = {}
        for metric in self.metrics:
            values[self._key(metric)] = agop_lib.alignment(G, self._G_star, metric=metric)
        if self.top_eigenvectors:
            # Right singular vectors of the factor F are the eigenvectors of G = F^T F / n.
            _, _, vt = np.linalg.svd(G.factor, full_matrices=False)
            self.eigenvectors.append(vt[:self.top_eigenvectors])
        return values

    def _write_eigenvectors(self) -> None:
        """Writes the top eigenvectors of the model's AGOP as images (once per step)."""
        step = self.step
        if step == self._image_step:
            return
        with single_threaded():
            with full_precision(self.model):
                G = agop_lib.agop(self.model, self.probe_x, center=self.center, low_rank=True)
            # Right singular vectors of the factor F are the eigenvectors of G = F^T F / n.
            _, _, vt = np.linalg.svd(G.factor, full_matrices=False)
        v = np.abs(vt[:self.image_eigenvectors])
        v = v / np.maximum(v.max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        self._summary.images("kerntk/agop_eigenvectors", v.reshape((-1,) + self.image_shape),
                             step)
        self._image_step = step

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self._summary is not None and (epoch + 1) % self.image_every_n_epochs == 0:
            self._write_eigenvectors()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self._summary is not None:
            self._summary.flush()

    def plot(self, path: str) -> None:
        """Saves the alignment(s) against the step."""
        plt, fig, axes = self._figure(1)
        for key in self.history:
            if key.startswith("agop_alignment"):
                axes[0].plot(self.history["step"], self.history[key], label=key)
        axes[0].set(title="AGOP alignment", xlabel="step")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
