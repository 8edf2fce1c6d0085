"""kerntk: kernel-regime tools for Keras 3 (TensorFlow backend).

Layers (``kerntk.layers``), a model zoo (``kerntk.models``) and callbacks (``kerntk.callbacks``).
Importing kerntk never imports matplotlib or tensorflow-datasets.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"kerntk needs the TensorFlow backend of Keras; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras.")

from kerntk import callbacks, layers, models  # noqa: E402
from kerntk import agop, spectral  # noqa: E402

__version__ = "0.1.0"
__all__ = ["agop", "callbacks", "layers", "models", "spectral", "__version__"]
