"""kerntk: kernel-regime tools for Keras 3 (TensorFlow backend).

What goes in a model (``kerntk.layers``, ready architectures in ``kerntk.models``), what goes in
``fit`` (``kerntk.callbacks``), what is computed (``kerntk.ntk``, ``kerntk.spectral``,
``kerntk.agop``) and data (``kerntk.datasets``).
Importing kerntk never imports matplotlib or tensorflow-datasets.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"kerntk needs the TensorFlow backend of Keras; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras.")

from kerntk import agop, callbacks, datasets, layers, models, ntk, spectral  # noqa: E402

__version__ = "0.1.0"
__all__ = ["agop", "callbacks", "datasets", "layers", "models", "ntk", "spectral", "__version__"]
