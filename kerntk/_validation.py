"""Argument validation shared by kerntk's public API: one rule for x, probes, counts and scales,
one message style.

A count or a scale may be a Python number or a NumPy scalar (``np.int64(4)``, ``np.float32(1.5)``,
e.g. read from an array or a config); ``bool`` is refused where a number is meant, and so are
non-finite reals. Array arguments are one array: a list, tuple or dict of arrays is what Keras
passes to a model with several inputs, which kerntk's engine does not support, so it is refused
with that reason instead of being stacked into one array by ``np.asarray``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def is_integer(value) -> bool:
    """Whether ``value`` is an integer (``int`` or a NumPy integer), not a ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """Whether ``value`` is a finite real number (Python or NumPy), not a ``bool``."""
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def is_whole(value) -> bool:
    """Whether ``value`` is an integer or a finite real with an integral value (``128.0``)."""
    return is_integer(value) or (is_real(value) and float(value).is_integer())


def array(name: str, x) -> np.ndarray:
    """``x`` as one numeric numpy array; ``ValueError`` naming ``name`` for several inputs, a
    ragged nest or a non-numeric dtype."""
    if isinstance(x, dict) or (isinstance(x, (list, tuple)) and x and all(
            hasattr(v, "dtype") and len(getattr(v, "shape", ())) >= 1 for v in x)):
        what = (f"a dict with keys {sorted(map(str, x))}" if isinstance(x, dict)
                else f"a {type(x).__name__} of {len(x)} arrays")
        raise ValueError(f"`{name}` must be one array; got {what}. Models with several inputs "
                         f"are not supported: wrap the model so that it takes one array (e.g. "
                         f"concatenate the inputs and split them again inside the model).")
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as err:  # e.g. ragged nested lists
        raise ValueError(f"`{name}` could not be converted to one array: {err}") from None
    if x.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric; got dtype {x.dtype}.")
    return x


def inputs(name: str, x, *, feature_axis: bool = False) -> np.ndarray:
    """The one rule for model inputs and probes: ``x`` as one numeric numpy array (see
    :func:`array`) with a batch axis of at least one example and only finite values.

    ``feature_axis`` also requires a feature axis after the batch axis (``x.ndim >= 2``), as the
    NTK engine does; without, a 1-D ``x`` is a batch of scalars. ``ValueError`` naming ``name``
    and the reason otherwise."""
    x = array(name, x)
    if x.ndim < (2 if feature_axis else 1):
        raise ValueError(f"`{name}` must have a batch axis" +
                         (" and at least one feature axis" if feature_axis else "") +
                         f"; got shape {x.shape}.")
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"`{name}` is empty (shape {x.shape}); at least one example is needed.")
    finite = np.isfinite(x)
    if not np.all(finite):
        raise ValueError(f"`{name}` contains {int(np.sum(~finite))} NaN or inf value(s); inputs "
                         f"must be finite.")
    return x
