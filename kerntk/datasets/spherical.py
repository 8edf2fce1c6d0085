"""Spherical-harmonic regression targets (paper 000 §4.3, Fig. 5; setup of Choraria et al. 2022).

Inputs are uniform on the unit sphere S^{d-1} ⊂ R^d. The target is

    f*(x) = (1 / N(K)) Σ_{k∈K} A_k P_k(⟨x, ζ_k⟩),      K = {1, 3, 4, 5, 8, 12},

where P_k is the degree-k Gegenbauer (ultraspherical) polynomial of the sphere S^{d-1}, i.e.
C_k^{(λ)} with λ = (d − 2)/2, here normalized so that P_k(1) = 1 (the "Legendre" normalization of
the addition theorem), and ζ_k are fixed directions drawn uniformly on the sphere.

By the addition theorem, P_k(⟨x, y⟩) = (1/N(d, k)) Σ_j Y_kj(x) Y_kj(y) for an orthonormal basis
{Y_kj} of degree-k harmonics (orthonormal for the uniform probability measure σ), with
N(d, k) = (2k + d − 2)/k · C(k + d − 3, k − 1) harmonics of degree k. Hence
E_σ[P_k(⟨x, ζ⟩) P_l(⟨x, ζ'⟩)] = δ_kl P_k(⟨ζ, ζ'⟩)/N(d, k), and in particular
E_σ[P_k(⟨x, ζ⟩)²] = 1/N(d, k). The paper's appendix (not in our copy) fixes A_k and N(K); kerntk
uses A_k = 1 by default and chooses N(K) so that E_σ[f*²] = 1:
N(K) = sqrt(Σ_k A_k² / N(d, k)). Every frequency then carries energy A_k²/(N(d,k) N(K)²).

:func:`frequency_projection` measures how much of a residual lies along each component
P_k(⟨·, ζ_k⟩), which is the "error projection length" plotted in Fig. 5;
:meth:`SphericalHarmonicTarget.degree_energy` measures the residual's energy in the whole degree-k
harmonic space. The default dimension d = 10 is kerntk's choice (the paper's is in its appendix).
"""

from __future__ import annotations

from math import comb
from typing import Optional, Sequence

import numpy as np

from kerntk._validation import is_real, is_whole

#: Frequencies of paper 000 Fig. 5.
PAPER_FREQUENCIES = (1, 3, 4, 5, 8, 12)


def harmonic_dimension(d: int, k: int) -> int:
    """N(d, k): the number of linearly independent degree-k spherical harmonics on S^{d-1} ⊂ R^d."""
    if not is_whole(d) or not is_whole(k) or d < 2 or k < 0:
        raise ValueError(f"need d >= 2 and k >= 0; got d={d}, k={k}.")
    d, k = int(d), int(k)
    if k == 0:
        return 1
    return comb(k + d - 1, d - 1) - comb(k + d - 3, d - 1)


def gegenbauer(k: int, t: np.ndarray, d: int) -> np.ndarray:
    """Degree-k Gegenbauer polynomial of the sphere S^{d-1} ⊂ R^d, normalized so P_k(1) = 1.

    P_k = C_k^{(λ)} / C_k^{(λ)}(1) with λ = (d − 2)/2 (d = 3: Legendre; d = 2: Chebyshev T_k),
    evaluated with the three-term recurrence
    (k + d − 2) P_{k+1}(t) = (2k + d − 2) t P_k(t) − k P_{k−1}(t),  P_0 = 1, P_1 = t.
    """
    if not is_whole(k) or k < 0:
        raise ValueError(f"k must be a non-negative integer; got {k!r}.")
    if not is_whole(d) or d < 2:
        raise ValueError(f"d must be an integer >= 2; got {d!r}.")
    k, d = int(k), int(d)
    t = np.asarray(t, dtype=np.float64)
    p_prev, p = np.ones_like(t), t.copy()
    if k == 0:
        return p_prev
    for j in range(1, k):
        p_prev, p = p, ((2 * j + d - 2) * t * p - j * p_prev) / (j + d - 2)
    return p


def sample_sphere(n: int, d: int, seed: Optional[int] = None,
                  rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """``n`` points uniform on the unit sphere S^{d-1} ⊂ R^d, shape ``(n, d)`` (float64)."""
    rng = np.random.default_rng(seed) if rng is None else rng
    z = rng.standard_normal((int(n), int(d)))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


class SphericalHarmonicTarget:
    """f*(x) = (1/N(K)) Σ_{k∈K} A_k P_k(⟨x, ζ_k⟩) on S^{d-1} (paper 000 Fig. 5).

    Args:
        d: ambient dimension (inputs on S^{d-1} ⊂ R^d), at least 2.
        frequencies: the degrees K; default (1, 3, 4, 5, 8, 12).
        amplitudes: A_k, one per frequency; default all 1.
        seed: seed for the directions ζ_k (one independent uniform direction per frequency).

    Attributes:
        zetas: ``(len(K), d)`` unit directions ζ_k.
        normalizer: N(K) = sqrt(Σ_k A_k² / N(d, k)), so that E_σ[f*²] = 1.
    """

    def __init__(self, d: int = 10, frequencies: Sequence[int] = PAPER_FREQUENCIES,
                 amplitudes: Optional[Sequence[float]] = None, seed: Optional[int] = 0):
        if not is_whole(d) or d < 2:
            raise ValueError(f"d must be an integer >= 2; got {d!r}.")
        frequencies = tuple(int(k) for k in frequencies)
        if not frequencies or min(frequencies) < 0 or len(set(frequencies)) != len(frequencies):
            raise ValueError(f"frequencies must be distinct non-negative integers; got "
                             f"{frequencies}.")
        amplitudes = np.ones(len(frequencies)) if amplitudes is None else np.asarray(
            amplitudes, dtype=np.float64)
        if amplitudes.shape != (len(frequencies),) or not np.all(np.isfinite(amplitudes)):
            raise ValueError("amplitudes must be finite, one per frequency.")
        self.d = int(d)
        self.frequencies = frequencies
        self.amplitudes = amplitudes
        self.zetas = sample_sphere(len(frequencies), d, seed=seed)
        self.normalizer = float(np.sqrt(sum(
            a ** 2 / harmonic_dimension(self.d, k) for k, a in zip(frequencies, amplitudes))))

    def components(self, x: np.ndarray) -> np.ndarray:
        """``(n, len(K))`` matrix of P_k(⟨x, ζ_k⟩), one column per frequency (unscaled)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (n, {self.d}); got {x.shape}.")
        t = np.clip(x @ self.zetas.T, -1.0, 1.0)
        return np.stack([gegenbauer(k, t[:, i], self.d)
                         for i, k in enumerate(self.frequencies)], axis=1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """f*(x), shape ``(n,)``."""
        return self.components(x) @ self.amplitudes / self.normalizer

    def sample(self, n: int, *, noise: float = 0.0, seed: Optional[int] = None,
               dtype: str = "float32") -> tuple:
        """``(x, y)``: ``x`` uniform on the sphere ``(n, d)``, ``y = f*(x) + noise·ε`` ``(n, 1)``."""
        if not is_real(noise) or noise < 0:
            raise ValueError(f"noise must be a finite number >= 0; got {noise!r}.")
        rng = np.random.default_rng(seed)
        x = sample_sphere(n, self.d, rng=rng)
        y = self(x) + noise * rng.standard_normal(len(x))
        return x.astype(dtype), y[:, None].astype(dtype)

    def frequency_projection(self, x: np.ndarray, residual: np.ndarray) -> dict:
        """Projection of a residual r = f − f* on each target component, estimated on ``x``.

        For each k returns c_k = E[r(x) P_k(⟨x, ζ_k⟩)] / E[P_k(⟨x, ζ_k⟩)²], the coefficient of r along
        P_k(⟨·, ζ_k⟩), with expectations replaced by sample means over ``x`` (which should be fresh
        uniform points on the sphere). For r = −f* (an untrained, zero predictor) c_k = −A_k/N(K);
        the curves in Fig. 5 show |c_k| over training. Since components of different degrees are
        orthogonal, the c_k are estimated independently of one another.

        Returns:
            ``{k: c_k}`` as Python floats.
        """
        comps = self.components(x)
        r = np.asarray(residual, dtype=np.float64).reshape(-1)
        if r.shape[0] != comps.shape[0]:
            raise ValueError(f"residual has {r.shape[0]} values for {comps.shape[0]} inputs.")
        if not np.all(np.isfinite(r)):
            raise ValueError("residual contains NaN or infinite values.")
        coef = (comps * r[:, None]).mean(axis=0) / (comps ** 2).mean(axis=0)
        return {k: float(c) for k, c in zip(self.frequencies, coef)}

    def degree_energy(self, x: np.ndarray, residual: np.ndarray) -> dict:
        """Energy ‖Π_k r‖² of a residual in the whole degree-k harmonic space, for each k ∈ K.

        Unlike :meth:`frequency_projection` this also counts error along degree-k harmonics other
        than P_k(⟨·, ζ_k⟩). By the addition theorem
        ‖Π_k r‖² = N(d, k) E_{x,x'}[r(x) r(x') P_k(⟨x, x'⟩)] for independent uniform x, x'; the
        estimate is the unbiased U-statistic over pairs i ≠ j of ``x``. Cost O(n²) time and memory.

        Returns:
            ``{k: energy}`` as Python floats (E_σ[r²] = Σ_k ‖Π_k r‖² over all k ≥ 0).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (n, {self.d}); got {x.shape}.")
        r = np.asarray(residual, dtype=np.float64).reshape(-1)
        if r.shape[0] != x.shape[0] or x.shape[0] < 2:
            raise ValueError(f"need one residual per input and at least 2 inputs; got "
                             f"{r.shape[0]} residuals for {x.shape[0]} inputs.")
        if not np.all(np.isfinite(r)):
            raise ValueError("residual contains NaN or infinite values.")
        n = len(r)
        gram = np.clip(x @ x.T, -1.0, 1.0)
        rr = np.outer(r, r)
        np.fill_diagonal(rr, 0.0)
        return {k: float(harmonic_dimension(self.d, k) * (rr * gegenbauer(k, gram, self.d)).sum()
                         / (n * (n - 1))) for k in self.frequencies}


def spherical_harmonic_task(n: int, d: int = 10, *, frequencies: Sequence[int] = PAPER_FREQUENCIES,
                            noise: float = 0.0, target_seed: int = 0,
                            seed: Optional[int] = None) -> tuple:
    """``(x, y, target)``: ``n`` samples of :class:`SphericalHarmonicTarget` and the target itself.

    ``target_seed`` fixes the directions ζ_k (keep it equal between train and test sets), ``seed``
    the inputs and noise.
    """
    target = SphericalHarmonicTarget(d, frequencies, seed=target_seed)
    x, y = target.sample(n, noise=noise, seed=seed)
    return x, y, target
