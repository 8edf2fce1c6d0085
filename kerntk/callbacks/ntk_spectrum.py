"""NTK spectrum tracker: top eigenvalues, loss split and kernel drift on a probe set."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from kerntk import ntk, spectral
from kerntk._validation import is_integer
from kerntk.callbacks._summary import summary_log
from kerntk.callbacks.base import MeasuringCallback, check_probe
from kerntk.ntk.forward import count_outputs


class NTKSpectrumTracker(MeasuringCallback):
    """Tracks the empirical NTK of the model on a fixed probe set during ``fit``.

    At each measurement it computes ``K = kerntk.ntk.empirical_ntk(model, probe_x)`` (``n x n``,
    traced over outputs) and logs:

    * ``ntk_lambda_1 .. ntk_lambda_k``: the top eigenvalues of ``K`` (``ntk_norm = ||K||_2``
      equals ``ntk_lambda_1``), ``ntk_trace``;
    * ``ntk_drift``: ``||K_t - K_0||_F / ||K_0||_F`` against the first measurement of the run
      (thesis Ch. 2: ``Theta(1/sqrt(m))`` in the lazy regime);
    * with ``probe_y``: ``loss_top`` / ``loss_rest``, the loss split into the top-``top_s``
      eigenspace of ``K`` and its complement (thesis Eq. 4.2): with the top eigenvectors
      ``U_s`` and residuals ``R = f(X) - Y`` (``n x c``), ``loss_top = ||U_s^T R||_F^2 / (n c)``
      and ``loss_rest = ||R||_F^2 / (n c) - loss_top``; their sum is Keras' MSE on the probe.

    Args:
        probe_x: ``(n, ...)`` inputs of the probe set (fixed for the whole run).
        probe_y: optional targets ``(n, c)`` (``(n,)`` when ``c = 1``) for the loss split,
            compared with the ``c`` outputs entry by entry: one-hot, not integer, class labels.
        k: number of top eigenvalues to log.
        top_s: size of the top eigenspace of the loss split.
        every_n_steps, every_n_epochs, schedule: when to measure (see
            :mod:`kerntk.callbacks.base`); a baseline is measured at the start of training.
        method: passed to :func:`kerntk.ntk.empirical_ntk`.
        log_dir: optional TensorBoard directory (str or PathLike). Under ``<log_dir>/kerntk``
            (see :mod:`kerntk.callbacks._summary`) it writes the tags
            ``kerntk/ntk_eigenvalues``, a histogram of ``ntk_lambda_1 .. ntk_lambda_k`` at each
            measurement (step: the measurement's ``"step"``), and
            ``kerntk/ntk_spectrum_figure``, the :meth:`plot` figure as an image, once per fit at
            its end (a matplotlib render takes a few hundred ms: too slow for every
            measurement). ``None`` writes nothing.

    Attributes:
        history: dict of lists, one entry per measurement (``"step"``, ``"epoch"``, the scalars).

    Cost per measurement: one empirical NTK on ``n`` probe points (about one training step with
    the structured method) plus an ``n x n`` eigendecomposition.
    """

    def __init__(self, probe_x, probe_y=None, k: int = 5, top_s: int = 5,
                 every_n_steps: Optional[int] = None, every_n_epochs: Optional[int] = 1,
                 schedule: Optional[Callable[[int], bool]] = None, method: str = "auto",
                 log_dir=None):
        super().__init__(every_n_steps, every_n_epochs, schedule)
        self.log_dir = log_dir
        self._summary = summary_log(log_dir)
        self.probe_x = check_probe("probe_x", probe_x)
        n = self.probe_x.shape[0]
        self.probe_y = None
        if probe_y is not None:
            probe_y = check_probe("probe_y", probe_y)
            if probe_y.shape[0] != n:
                raise ValueError(f"`probe_y` has {probe_y.shape[0]} rows; `probe_x` has {n}.")
            self._probe_y_shape, self._probe_y_labels = probe_y.shape, probe_y.dtype.kind in "iub"
            self.probe_y = probe_y.astype(np.float64).reshape(n, -1)
        for name, value in (("k", k), ("top_s", top_s)):
            if not is_integer(value) or not 1 <= value <= n:
                raise ValueError(f"`{name}` must be an integer in [1, n={n}]; got {value!r}.")
        self.k, self.top_s, self.method = int(k), int(top_s), method
        self._K0 = None

    def _on_train_begin(self) -> None:
        self._K0 = None
        if self.probe_y is not None:
            self._check_targets(count_outputs(self.model, self.probe_x))

    def _check_targets(self, c: int) -> None:
        """The loss split compares ``probe_y`` with the ``c`` outputs entry by entry (MSE)."""
        n, given = self.probe_y.shape
        if given == c:
            return
        if self._probe_y_labels and given == 1:
            raise ValueError(
                f"`probe_y` has shape {self._probe_y_shape} with integer labels but the model has "
                f"c={c} outputs; the loss split is of the squared error of the outputs, so pass "
                f"one-hot targets of shape ({n}, {c}) (e.g. keras.utils.to_categorical(probe_y, "
                f"{c})).")
        raise ValueError(f"`probe_y` has shape {self._probe_y_shape} ({given} value(s) per example) "
                         f"but the model has c={c} outputs; pass targets of shape ({n}, {c}).")

    def measure(self) -> Dict[str, float]:
        # The outputs come from the NTK's own forward pass (full precision, no extra pass).
        K, pred = ntk.empirical_ntk(self.model, self.probe_x, method=self.method,
                                    return_outputs=True)
        eig = spectral.top_eigenpairs(K, max(self.k, self.top_s))
        evals = eig.eigenvalues
        if self._K0 is None:
            self._K0 = K
        values = {f"ntk_lambda_{i + 1}": evals[i] for i in range(self.k)}
        values["ntk_norm"] = evals[0]
        values["ntk_trace"] = float(np.trace(K))
        values["ntk_drift"] = float(np.linalg.norm(K - self._K0) / np.linalg.norm(self._K0))
        if self.probe_y is not None:
            residual = pred.reshape(self.probe_y.shape) - self.probe_y
            n, c = residual.shape
            top = eig.eigenvectors[:, :self.top_s]
            values["loss_top"] = float(np.sum((top.T @ residual) ** 2) / (n * c))
            values["loss_rest"] = float(np.sum(residual ** 2) / (n * c)) - values["loss_top"]
        return values

    def _record(self, values: Dict[str, float], logs) -> None:
        super()._record(values, logs)
        if self._summary is not None:
            self._summary.histogram("kerntk/ntk_eigenvalues",
                                    [values[f"ntk_lambda_{i + 1}"] for i in range(self.k)],
                                    self.history["step"][-1])

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self._summary is not None:
            self._summary.figure("kerntk/ntk_spectrum_figure", self.plot, self.step)
            self._summary.flush()

    def plot(self, path: str) -> None:
        """Saves the paper-style figure (thesis Fig. 4.3): loss split, top eigenvalues, drift."""
        plt, fig, axes = self._figure(3)
        steps = self.history.get("step", [])
        if "loss_top" in self.history:
            axes[0].semilogy(steps, self.history["loss_top"], label=f"$L_{{\\leq {self.top_s}}}$")
            axes[0].semilogy(steps, np.maximum(self.history["loss_rest"], 1e-300),
                             label=f"$L_{{> {self.top_s}}}$")
            axes[0].legend()
        axes[0].set(title="loss split (probe)", xlabel="step")
        for i in range(self.k):
            axes[1].plot(steps, self.history[f"ntk_lambda_{i + 1}"], label=f"$\\lambda_{i + 1}$")
        axes[1].set(title="top NTK eigenvalues", xlabel="step")
        axes[1].legend(fontsize="small")
        axes[2].plot(steps, self.history.get("ntk_drift", []))
        axes[2].set(title="$\\|K_t - K_0\\|_F / \\|K_0\\|_F$", xlabel="step")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
