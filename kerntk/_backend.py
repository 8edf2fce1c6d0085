"""Which Keras backend kerntk runs on, and the one error for features that need TensorFlow.

Layers, the model zoo, ``.keras`` saving and the numpy-side tools (``kerntk.ntk.analytic``,
``kerntk.datasets``, ``kerntk.spectral.top_eigenpairs``, ``kerntk.agop.alignment``) are pure
``keras.ops``/numpy and run under every Keras 3 backend. The engine that differentiates a model
(empirical NTK, Hessian and Gauss-Newton operators, AGOP, Taylor models, the callbacks) is built on
TensorFlow tapes and ``tf.function``; it checks the backend when called, not at import, so
``import kerntk`` works under any backend.
"""

from __future__ import annotations

from typing import Sequence

_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch", "numpy": "NumPy"}


class BackendError(RuntimeError):
    """A kerntk feature was used under a Keras backend it does not support."""


def require_tensorflow(feature: str, also: Sequence[str] = ()) -> None:
    """Raises :class:`BackendError` naming ``feature`` and the active backend unless Keras runs
    on TensorFlow (or on one of the backends in ``also``)."""
    import keras

    backend = keras.backend.backend()
    supported = ("tensorflow",) + tuple(also)
    if backend in supported:
        return
    names = " or ".join(_NAMES.get(b, b) for b in supported)
    raise BackendError(
        f"{feature} needs the {names} backend of Keras; the active backend is {backend!r}. "
        f"Set KERAS_BACKEND=tensorflow before importing keras.")
