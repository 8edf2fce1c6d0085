"""Low-rank polynomial regression tasks with exact targets and exact EGOPs (thesis Ch. 4,
Table 4.1 / Fig. 4.9 and Fig. C.17).

Inputs are ``x ~ N(0, I_d)`` and labels ``y = f*(x) + ε``, ``ε ~ N(0, noise²)`` (noise 0.1 in the
thesis). The targets:

==========  =======================================  ==================================================
name        f*(x)                                    EGOP  G* = E[∇f*(x) ∇f*(x)ᵀ]
==========  =======================================  ==================================================
rank2       x₁x₂                                     diag(1, 1, 0, …)
rank3       x₁x₂ s,  s = Σ_{i≤10} xᵢ                 on coordinates 1..10: G₁₁ = G₂₂ = 15, G₁₂ = 5,
                                                     G₁ⱼ = G₂ⱼ = 2 and Gᵢⱼ = 1 for i, j ∈ 3..10; else 0
rank4       Σ_{j≤4} Π_{i≤j} xᵢ                       diag(4, 3, 2, 1, 0, …)
fullrank    ‖x‖ / √d                                 I / d²
==========  =======================================  ==================================================

Derivations (all moments of independent standard normals; E x² = 1, E x⁴ = 3, odd moments 0):

* rank2: ∇f = (x₂, x₁, 0, …), so G₁₁ = E x₂² = 1, G₂₂ = 1, G₁₂ = E x₁x₂ = 0.
* rank3: write s = x₁ + x₂ + r with r = Σ_{3≤i≤10} xᵢ (variance 8). Then
  ∂₁f = 2x₁x₂ + x₂² + x₂r, ∂₂f = x₁² + 2x₁x₂ + x₁r and ∂ᵢf = x₁x₂ for 3 ≤ i ≤ 10.
  E(∂₁f)² = 4·1 + 3 + 8 = 15 (cross terms have an odd power), E ∂₁f∂₂f = 4 E x₁²x₂² + E x₁²x₂² = 5,
  E ∂₁f ∂ᵢf = 2 E x₁²x₂² = 2, E ∂ᵢf ∂ⱼf = E x₁²x₂² = 1. G* has rank 3.
* rank4: f = x₁ + x₁x₂ + x₁x₂x₃ + x₁x₂x₃x₄; ∂ₖf is a sum of 4 − k + 1 distinct multilinear
  monomials, which are orthonormal under N(0, I), so E(∂ₖf)² = 5 − k. For a < b every term of ∂_b f
  holds x_a to the first power while ∂_a f does not hold x_a, so E ∂_a f ∂_b f = 0.
* fullrank: ∇f = x / (√d ‖x‖), so G* = E[x xᵀ / ‖x‖²] / d = I / d² (the direction x/‖x‖ is
  uniform on the sphere, whose second moment is I/d).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from kerntk._validation import is_real, is_whole

#: Task names and the smallest input dimension each needs.
RANK_TASKS = {"rank2": 2, "rank3": 10, "rank4": 4, "fullrank": 1}


def _check(name: str, d: int) -> None:
    if name not in RANK_TASKS:
        raise ValueError(f"Unknown rank task {name!r}; known: {sorted(RANK_TASKS)}.")
    if not is_whole(d) or d < RANK_TASKS[name]:
        raise ValueError(f"Task {name!r} needs input dimension d >= {RANK_TASKS[name]}; got {d}.")


def _as_inputs(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d); got {x.shape}.")
    _check(name, x.shape[1])
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values.")
    return x


def rank_target(name: str, x: np.ndarray) -> np.ndarray:
    """Noise-free target ``f*(x)`` of shape ``(n,)`` for inputs ``x`` of shape ``(n, d)``."""
    x = _as_inputs(x, name)
    if name == "rank2":
        f = x[:, 0] * x[:, 1]
    elif name == "rank3":
        f = x[:, 0] * x[:, 1] * x[:, :10].sum(axis=1)
    elif name == "rank4":
        f = np.cumprod(x[:, :4], axis=1).sum(axis=1)
    else:
        f = np.linalg.norm(x, axis=1) / np.sqrt(x.shape[1])
    return f


def rank_target_gradient(name: str, x: np.ndarray) -> np.ndarray:
    """Analytic gradient ``∇f*(x)`` of shape ``(n, d)``."""
    x = _as_inputs(x, name)
    n, d = x.shape
    g = np.zeros((n, d))
    if name == "rank2":
        g[:, 0], g[:, 1] = x[:, 1], x[:, 0]
    elif name == "rank3":
        s = x[:, :10].sum(axis=1)
        p = x[:, 0] * x[:, 1]
        g[:, :10] = p[:, None]
        g[:, 0] += x[:, 1] * s
        g[:, 1] += x[:, 0] * s
    elif name == "rank4":
        # ∂_k f = Σ_{j>=k} Π_{i<=j, i!=k} x_i
        for k in range(4):
            for j in range(k, 4):
                g[:, k] += np.prod(np.delete(x[:, :j + 1], k, axis=1), axis=1)
    else:
        g = x / (np.sqrt(d) * np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300))
    return g


def rank_egop(name: str, d: int = 100) -> np.ndarray:
    """Closed-form EGOP ``G* = E_{x~N(0,I_d)}[∇f*(x) ∇f*(x)ᵀ]`` of shape ``(d, d)`` (module docstring)."""
    _check(name, d)
    d = int(d)
    g = np.zeros((d, d))
    if name == "rank2":
        g[0, 0] = g[1, 1] = 1.0
    elif name == "rank3":
        g[:10, :10] = 1.0
        g[0, :10] = g[:10, 0] = 2.0
        g[1, :10] = g[:10, 1] = 2.0
        g[0, 0] = g[1, 1] = 15.0
        g[0, 1] = g[1, 0] = 5.0
    elif name == "rank4":
        g[np.arange(4), np.arange(4)] = [4.0, 3.0, 2.0, 1.0]
    else:
        g = np.eye(d) / d ** 2
    return g


def rank_task(name: str, n: int, d: int = 100, *, noise: float = 0.1,
              seed: Optional[int] = None, dtype: str = "float32") -> tuple:
    """Sample ``(x, y)`` for a low-rank polynomial task (thesis Table 4.1: rank2, d=100, n=2000).

    Args:
        name: ``"rank2"``, ``"rank3"``, ``"rank4"`` or ``"fullrank"`` (module docstring).
        n: number of examples.
        d: input dimension.
        noise: standard deviation of the additive Gaussian label noise (0 for clean labels).
        seed: seed of the NumPy generator; the same seed gives the same data.
        dtype: dtype of the returned arrays.

    Returns:
        ``x`` of shape ``(n, d)`` and ``y = f*(x) + noise·ε`` of shape ``(n, 1)``.
    """
    _check(name, d)
    if not is_whole(n) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}.")
    if not is_real(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0; got {noise!r}.")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((int(n), int(d)))
    y = rank_target(name, x) + noise * rng.standard_normal(int(n))
    return x.astype(dtype), y[:, None].astype(dtype)
