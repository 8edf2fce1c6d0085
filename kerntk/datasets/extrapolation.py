"""Analytic extrapolation targets of paper 000 §4.1 (Fig. 1–2).

* ``"cubic"``: f(x) = x³ + x² − 10x + 5 (Fig. 1a–b), x ∈ R.
* ``"cos2x"``: f(x) = cos(2x) (Fig. 1c–d), x ∈ R.
* ``"sum_squares"``: f(x) = x₁² + x₂² (Fig. 2), x ∈ R².

A model is trained on a bounded region and tested on a larger one; the interesting part is the
test region outside the training region. The paper's exact intervals are in its appendix E.1, which
our copy lacks; kerntk's defaults are: 1-D targets train on [−3, 3] (both local extrema of the cubic
and ~2 periods of cos 2x lie inside) and test on [−6, 6]; the 2-D target trains on the box
[−1, 1]² ("all directions", Fig. 2 left) or [0, 1]² (``positive_only=True``: both coordinates
positive, Fig. 2 middle) and tests on [−2, 2]². Theorem 6 predicts exact extrapolation of
x₁² + x₂² by a polynomial net only in the all-directions case.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from kerntk._validation import is_real, is_whole

Interval = Tuple[float, float]


def cubic(x: np.ndarray) -> np.ndarray:
    """x³ + x² − 10x + 5, elementwise on the first column of ``x`` ``(n, 1)`` → ``(n,)``."""
    t = np.asarray(x, dtype=np.float64)[:, 0]
    return t ** 3 + t ** 2 - 10.0 * t + 5.0


def cos2x(x: np.ndarray) -> np.ndarray:
    """cos(2x) on the first column of ``x`` ``(n, 1)`` → ``(n,)``."""
    return np.cos(2.0 * np.asarray(x, dtype=np.float64)[:, 0])


def sum_squares(x: np.ndarray) -> np.ndarray:
    """x₁² + x₂² for ``x`` of shape ``(n, 2)`` → ``(n,)``."""
    x = np.asarray(x, dtype=np.float64)
    return x[:, 0] ** 2 + x[:, 1] ** 2


#: name → (function, input dimension, default train interval, default test interval).
EXTRAPOLATION_TARGETS = {
    "cubic": (cubic, 1, (-3.0, 3.0), (-6.0, 6.0)),
    "cos2x": (cos2x, 1, (-3.0, 3.0), (-6.0, 6.0)),
    "sum_squares": (sum_squares, 2, (-1.0, 1.0), (-2.0, 2.0)),
}


def _check_interval(interval, what: str) -> Interval:
    lo, hi = (float(v) for v in interval)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{what} must be a finite (low, high) with low < high; got {interval!r}.")
    return lo, hi


def in_region(x: np.ndarray, interval: Interval) -> np.ndarray:
    """Boolean ``(n,)``: every coordinate of the row lies in the closed ``interval``."""
    lo, hi = _check_interval(interval, "interval")
    x = np.asarray(x)
    return np.all((x >= lo) & (x <= hi), axis=1)


def train_region(name: str, train_interval: Optional[Interval] = None,
                 positive_only: bool = False) -> Interval:
    """The per-coordinate training interval: the default or given one, clipped to [0, ∞) when
    ``positive_only`` (the 2-D target of Fig. 2, middle)."""
    if name not in EXTRAPOLATION_TARGETS:
        raise ValueError(f"Unknown extrapolation target {name!r}; known: "
                         f"{sorted(EXTRAPOLATION_TARGETS)}.")
    lo, hi = _check_interval(train_interval or EXTRAPOLATION_TARGETS[name][2], "train_interval")
    if positive_only:
        if hi <= 0:
            raise ValueError(f"positive_only needs a train interval reaching above 0; got "
                             f"{(lo, hi)}.")
        lo = max(lo, 0.0)
    return lo, hi


def extrapolation_task(name: str, n_train: int = 256, n_test: int = 1024, *,
                       train_interval: Optional[Interval] = None,
                       test_interval: Optional[Interval] = None, positive_only: bool = False,
                       noise: float = 0.0, seed: Optional[int] = None,
                       dtype: str = "float32") -> dict:
    """Training and test sets for one target of paper 000 Fig. 1–2.

    Training inputs are uniform on the training box (every coordinate in ``train_interval``, or in
    its non-negative part with ``positive_only``); labels get N(0, noise²) noise. Test inputs cover
    the test box: an even grid for 1-D targets (ready to plot), uniform points for the 2-D target;
    test labels are noise-free.

    Returns:
        dict with ``x_train`` ``(n_train, d)``, ``y_train`` ``(n_train, 1)``, ``x_test``
        ``(n_test, d)``, ``y_test`` ``(n_test, 1)``, ``in_train_region`` (bool ``(n_test,)``: the
        test point lies inside the training box; its complement is the extrapolation set),
        ``train_interval`` and ``test_interval``.
    """
    fn, dim, _, default_test = EXTRAPOLATION_TARGETS.get(name, (None, 0, None, None))
    train_iv = train_region(name, train_interval, positive_only)
    if positive_only and dim == 1:
        raise ValueError("positive_only applies to the 2-D target 'sum_squares' only.")
    test_iv = _check_interval(test_interval or default_test, "test_interval")
    if not is_whole(n_train) or n_train < 1 or not is_whole(n_test) or n_test < 1:
        raise ValueError(f"n_train and n_test must be positive integers; got {n_train}, {n_test}.")
    if not is_real(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0; got {noise!r}.")
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(train_iv[0], train_iv[1], size=(int(n_train), dim))
    y_train = fn(x_train) + noise * rng.standard_normal(int(n_train))
    if dim == 1:
        x_test = np.linspace(test_iv[0], test_iv[1], int(n_test))[:, None]
    else:
        x_test = rng.uniform(test_iv[0], test_iv[1], size=(int(n_test), dim))
    return dict(
        x_train=x_train.astype(dtype), y_train=y_train[:, None].astype(dtype),
        x_test=x_test.astype(dtype), y_test=fn(x_test)[:, None].astype(dtype),
        in_train_region=in_region(x_test, train_iv), train_interval=train_iv,
        test_interval=test_iv)
