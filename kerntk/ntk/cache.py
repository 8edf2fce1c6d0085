"""The engine's one compile cache: compiled kernel functions kept on the model.

:func:`empirical_ntk`, :func:`kernel_fn` and :func:`ntk_operator` compile one ``tf.function`` per
configuration and keep it on the model, so that repeated calls (e.g. a callback measuring every
epoch) do not retrace. A key names the user (``"empirical"``, ``"operator"``) and the
configuration; the ids of the model's trainable variables are added, so a model whose variables
change (e.g. after ``trainable = False``) gets fresh functions. Deleting the model's
``_kerntk_ntk_cache`` attribute empties the cache.
"""

from __future__ import annotations

from typing import Callable, Hashable

import tensorflow as tf

from kerntk import _keras_compat as compat

__all__ = ["Compiled", "cached"]

# Attribute of the model holding the cache.
CACHE_ATTR = "_kerntk_ntk_cache"


class Compiled:
    """A compiled function built by ``make(jit)``; an XLA one falls back to the plain graph if XLA
    cannot compile it (some ops have no XLA kernel)."""

    def __init__(self, make: Callable[[bool], Callable], jit: bool):
        self.make, self.jit = make, jit
        self.fn = make(jit)

    def __call__(self, *args):
        if not self.jit:
            return self.fn(*args)
        try:
            return self.fn(*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.InternalError):
            self.jit = False
            self.fn = self.make(False)
            return self.fn(*args)


def cached(model, key: tuple, make: Callable[[bool], Callable], jit: bool = False) -> Compiled:
    """The :class:`Compiled` ``make(jit)`` for ``key`` on ``model``, built on first use."""
    store = compat.model_store(model, CACHE_ATTR)
    full_key: Hashable = tuple(key) + (jit, tuple(id(v) for v in model.trainable_variables))
    if full_key not in store:
        store[full_key] = Compiled(make, jit)
    return store[full_key]
