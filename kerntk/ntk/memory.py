"""Memory before allocation: the peak memory of an NTK request, estimated from shapes alone.

:func:`plan_kernel` (for :func:`kerntk.ntk.empirical_ntk`) and :func:`plan_operator` (for
:func:`kerntk.ntk.ntk_operator`) estimate the peak memory of a request from the model's shapes
(one symbolic pass over the layers; nothing is allocated) and pick the examples per block:

* ``block_size=None``: the largest block (``n``, else halving) whose estimated peak fits in
  :func:`memory_limit`; if no block of one example fits, :class:`NTKMemoryError`.
* an explicit ``block_size`` is used as given if it fits; otherwise :class:`NTKMemoryError`
  says the estimate and the largest ``block_size`` that would fit.

The limit is :func:`set_memory_limit` (or the ``KERNTK_MEMORY_LIMIT`` environment variable, in
bytes or with a ``KB``/``MB``/``GB`` suffix), else 90 % of the memory the OS reports available
when the request is made (Linux ``MemAvailable``), else no limit.

What is counted, per block of ``m`` examples (``2 b`` for an off-diagonal tile of ``b``), in the
compute dtype (``e`` bytes): the forward activations kept for the backward passes and their
``c`` cotangents (``m (1 + c) A e``, ``A`` the per-example activation size summed over layers);
each structured layer's Gram work in the form :mod:`kerntk.ntk.blocks` would choose; the
per-example Jacobian of the variables no factorization covers (``m c P_rest e``, at most
:data:`kerntk.ntk.jacobian.MAX_JACOBIAN` entries at a time, times 3 for ``pfor``'s temporaries);
the float64 tile and the float64 result ``K``. It is an estimate (TensorFlow's allocator and
fused kernels differ by a small factor), meant to refuse requests that cannot fit before they
run for minutes and fail inside TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from kerntk import _validation as checks

__all__ = ["NTKMemoryError", "Plan", "memory_limit", "plan_kernel", "plan_operator",
           "set_memory_limit", "using_memory_limit"]

_LIMIT: Optional[int] = None
_UNITS = {"": 1, "B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}


class NTKMemoryError(MemoryError):
    """A kernel request whose estimated peak memory exceeds :func:`memory_limit`."""


def _parse(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+(?:[eE][0-9]+)?)\s*([KMGT]?B?)\s*", text.upper())
    if not m:
        raise ValueError(f"KERNTK_MEMORY_LIMIT must be bytes, optionally with a KB/MB/GB/TB "
                         f"suffix; got {text!r}.")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def set_memory_limit(limit_bytes: Optional[int]) -> None:
    """Set the memory the NTK engine may plan for (bytes), or ``None`` for the default (the
    ``KERNTK_MEMORY_LIMIT`` environment variable, else 90 % of the available memory)."""
    global _LIMIT
    if limit_bytes is not None and not (checks.is_whole(limit_bytes) and limit_bytes > 0):
        raise ValueError(f"The memory limit must be a positive number of bytes or None; got "
                         f"{limit_bytes!r}.")
    _LIMIT = None if limit_bytes is None else int(limit_bytes)


@contextlib.contextmanager
def using_memory_limit(limit_bytes: Optional[int]) -> Iterator[None]:
    """Context: :func:`set_memory_limit` for its duration (restored on exit)."""
    global _LIMIT
    previous = _LIMIT
    set_memory_limit(limit_bytes)
    try:
        yield
    finally:
        _LIMIT = previous


def _available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_limit() -> Optional[int]:
    """The memory (bytes) the engine plans for now; ``None``: unknown, no limit."""
    if _LIMIT is not None:
        return _LIMIT
    env = os.environ.get("KERNTK_MEMORY_LIMIT")
    if env:
        return _parse(env)
    available = _available()
    return None if available is None else int(0.9 * available)


@dataclass(frozen=True)
class Plan:
    """The block size chosen for a request and its estimated peak memory (bytes)."""

    block_size: int
    peak_bytes: int
    limit_bytes: Optional[int]
    result_bytes: int

    def __str__(self):
        limit = "no limit" if self.limit_bytes is None else f"limit {_gb(self.limit_bytes)}"
        return (f"block_size={self.block_size}: estimated peak {_gb(self.peak_bytes)} "
                f"({limit})")


def _gb(b: float) -> str:
    return f"{b / 2 ** 30:.3g} GiB"


@dataclass(frozen=True)
class _Shapes:
    """Per-example sizes of a model (elements), from one symbolic pass."""

    activations: int          # sum of every layer's output size
    params: int               # trainable parameters
    uncovered: int            # trainable parameters no factorization covers
    sites: tuple              # (kind, F, C) per factorized step with a kernel


def _shapes(model, x_shape) -> _Shapes:
    import keras

    from kerntk import _keras_compat as compat
    from kerntk.ntk.registry import find_sites
    layers = compat.flatten_layers(model, include_self=False)
    activations = 0
    for layer in layers:
        try:
            outs = layer.output
        except Exception:  # not called symbolically (subclassed models), or called twice
            outs = None
        for o in (keras.tree.flatten(outs) if outs is not None else []):
            activations += int(np.prod([d or 1 for d in o.shape[1:]]))
    if activations == 0:  # subclassed models: no symbolic outputs; count the input instead
        activations = int(np.prod(x_shape[1:])) * max(len(layers), 1)
    tvars = model.trainable_variables
    steps = find_sites(model, {id(v): i for i, v in enumerate(tvars)})
    covered = {i for s in steps for i in s.indices}
    sites = [(s.fact.kind, int(np.prod(s.fact.kernel.shape[:-1])), int(s.fact.kernel.shape[-1]))
             for s in steps if s.kernel_index is not None]
    params = sum(int(np.prod(v.shape)) for v in tvars)
    uncovered = sum(int(np.prod(v.shape)) for i, v in enumerate(tvars) if i not in covered)
    return _Shapes(activations, params, uncovered, tuple(sites))


def _tile_elements(sh: _Shapes, m: int, c: int, structured: bool) -> float:
    """Elements alive while one block of ``m`` examples is computed."""
    from kerntk.ntk.jacobian import MAX_JACOBIAN
    total = m * (1 + c) * sh.activations
    if structured:
        # Gram work per factorized step: the per-example gradients (m c F C, the form chosen
        # for large layers) or a patch Gram (m^2 positions^2), bounded by the larger of both
        # estimates that the blocks module caps at MAX_PATCH_GRAM elements.
        from kerntk.ntk.blocks import MAX_PATCH_GRAM
        for kind, F, C in sh.sites:
            if kind in ("dense", "diagonal"):
                total += m * c * C + m * m
            elif kind == "gather":
                total += min(m * c * F * C, MAX_PATCH_GRAM) + m * m
            else:
                total += min(m * c * F * C, MAX_PATCH_GRAM)
        rest = sh.uncovered
    else:
        rest = sh.params
    if rest:
        total += 3 * min(m * c * rest, MAX_JACOBIAN)
    return total


def _fit(n: int, cost, limit: Optional[int], block_size: Optional[int], what: str,
         hint: str = "") -> Plan:
    """Choose the block size for ``n`` examples given ``cost(b) -> (peak, result)`` bytes."""
    if block_size is not None:
        bs = min(int(block_size), n)
        peak, result = cost(bs)
        if limit is None or peak <= limit:
            return Plan(bs, peak, limit, result)
    else:
        bs = n
        while True:
            peak, result = cost(bs)
            if limit is None or peak <= limit:
                return Plan(bs, peak, limit, result)
            if bs == 1:
                break
            bs = max(1, bs // 2)
    fits = next((b for b in _halvings(n) if cost(b)[0] <= limit), None)
    if fits:
        advice = f"block_size={fits} would fit (estimated {_gb(cost(fits)[0])})"
    else:
        advice = f"no block size fits ({hint})" if hint else "no block size fits"
    asked = f"block_size={bs}" if block_size is not None else "even block_size=1"
    raise NTKMemoryError(
        f"{what} on {n} examples with {asked} would need about {_gb(peak)}, over the "
        f"memory limit of {_gb(limit)} (kerntk.ntk.memory.set_memory_limit or "
        f"KERNTK_MEMORY_LIMIT to change it); {advice}.")


def _halvings(n: int):
    b = n
    while b >= 1:
        yield b
        if b == 1:
            return
        b = max(1, b // 2)


def plan_kernel(model, x_shape, method: str, outputs, c: int, dtype: str,
                block_size: Optional[int] = None, batched: bool = False) -> Plan:
    """The block size and estimated peak memory of ``empirical_ntk`` on inputs of shape
    ``x_shape`` (the model built); see the module docstring. Raises :class:`NTKMemoryError`
    when nothing fits."""
    n = int(x_shape[0])
    e = np.dtype(dtype).itemsize
    reps = c if outputs == "full" else 1
    cols = 1 if isinstance(outputs, int) else c
    sh = _shapes(model, x_shape)
    result = 8 * (n * reps) ** 2

    def cost(b):
        m = b if b >= n else 2 * b
        work = _tile_elements(sh, m, cols, method in ("structured", "auto") and not batched)
        if batched:  # the Jacobian of the batched function: m c rows of all parameters
            work += 3 * m * cols * sh.params
        return int(e * work + 16 * (b * reps) ** 2 + result), result

    hint = f"the {n * reps} x {n * reps} float64 result alone takes {_gb(result)}; " \
        f"ntk_operator gives products with K without forming it" + \
        ("; outputs='trace' is c^2 times smaller" if reps > 1 else "")
    return _fit(n, cost, memory_limit(), block_size, "empirical_ntk", hint)


def plan_operator(model, x_shape, c: int, dtype: str,
                  block_size: Optional[int] = None) -> Plan:
    """The chunk size and estimated peak memory of one ``ntk_operator`` product: the
    activations of a chunk and its cotangents, and a few parameter-sized vectors."""
    n = int(x_shape[0])
    e = np.dtype(dtype).itemsize
    sh = _shapes(model, x_shape)

    def cost(b):
        return int(e * (3 * b * (1 + c) * sh.activations + 4 * sh.params) + 24 * n * c), 0

    return _fit(n, cost, memory_limit(), block_size, "ntk_operator")
