"""kerntk: kernel-regime tools for Keras 3.

What goes in a model (``kerntk.layers``, ready architectures in ``kerntk.models``), what goes in
``fit`` (``kerntk.callbacks``), what is computed (``kerntk.ntk``, ``kerntk.spectral``,
``kerntk.agop``) and data (``kerntk.datasets``).
Importing kerntk never imports matplotlib or tensorflow-datasets.

Backends: without a choice of the user (``KERAS_BACKEND`` unset) kerntk selects TensorFlow, which
only takes effect if keras was not imported yet. The layers, the model zoo (``fcn``, ``cnn``,
``pnn``, ``poly_cnn``, ``myrtle``), ``.keras`` saving, ``kerntk.ntk.analytic``, ``kerntk.datasets``
and the matrix functions ``kerntk.spectral.top_eigenpairs``/``ntk_critical_lr`` and
``kerntk.agop.alignment`` are pure ``keras.ops``/numpy: they run under JAX too (tested) and
PyTorch (not tested). What differentiates a model with TensorFlow tapes
(``kerntk.ntk.empirical_ntk``, ``ntk_operator``, ``kernel_fn``, ``ForwardNTK``, the model-based
``kerntk.spectral`` functions, ``kerntk.agop.agop``/``egop``/``alignment_fn``, the Taylor models,
every callback) raises :class:`BackendError` when called under another backend; importing never
does.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kerntk import agop, callbacks, datasets, layers, models, ntk, spectral  # noqa: E402
from kerntk._backend import BackendError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BackendError", "agop", "callbacks", "datasets", "layers", "models", "ntk", "spectral",
           "__version__"]
