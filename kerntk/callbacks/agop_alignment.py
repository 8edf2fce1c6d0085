"""AGOP alignment logger (thesis §4.4, Eq. 4.5-4.6)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np

from kerntk import agop as agop_lib
from kerntk.callbacks.base import MeasuringCallback, check_probe, full_precision



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
        metrics: subset of ``("cosine", "pearson")``.
        center: use centered AGOPs (gradient covariances) for the model and a callable/model
            reference.
        top_eigenvectors: also keep the top eigenvectors of ``G`` (``self.eigenvectors``) for
            plotting; 0 disables.

    Cost per measurement: ``c`` backward passes over the probe plus the alignment from the
    ``(n c) x d`` gradient factor, O(n c (n c + r) d) for a reference of rank ``r``, all in one
    compiled function (:func:`kerntk.agop.alignment_fn`; a matrix reference is factorized once,
    at the start of training, with one ``d x d`` eigendecomposition). About 0.9 of a training
    step on the 128-point probe of ``benchmarks/callbacks.py``. A reference matrix that is not
    PSD, or ``top_eigenvectors``, takes the host path (:func:`kerntk.agop.agop` + ``alignment``).
    """

    def __init__(self, probe_x, reference, every_n_epochs: Optional[int] = 1,
                 metrics: Sequence[str] = ("cosine",), center: bool = False,
                 every_n_steps: Optional[int] = None,
                 schedule: Optional[Callable[[int], bool]] = None, top_eigenvectors: int = 0):
        super().__init__(every_n_steps, every_n_epochs, schedule)
        self.probe_x = check_probe("probe_x", probe_x)
        metrics = tuple(metrics)
        if not metrics or any(m not in agop_lib.METRICS for m in metrics):
            raise ValueError(f"`metrics` must be a non-empty subset of {agop_lib.METRICS}; "
                             f"got {metrics!r}.")
        d = int(np.prod(self.probe_x.shape[1:]))
        if not callable(reference):
            reference = np.asarray(reference, np.float64)
            if reference.shape != (d, d):
                raise ValueError(f"A matrix `reference` must have shape (d, d) = {(d, d)}; got "
                                 f"{reference.shape}.")
            if not np.all(np.isfinite(reference)):
                raise ValueError("`reference` contains NaN or inf.")
        self.reference, self.metrics, self.center = reference, metrics, center
        self.top_eigenvectors = top_eigenvectors
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
