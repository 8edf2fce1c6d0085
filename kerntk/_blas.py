"""Thread control of numpy's BLAS/LAPACK next to TensorFlow.

A multi-threaded OpenBLAS ``eigh`` of a 128 x 128 kernel took 30-100 ms instead of ~1 ms on a
2-core machine busy with TensorFlow's own threads (measured here), and after a small numpy
product during ``fit`` the next training step ran up to 3x slower: OpenBLAS threads spin-wait
after each call, against TF's. The callbacks' small host-side linear algebra therefore runs on
one BLAS thread.
"""

from __future__ import annotations

import contextlib

_SINGLE_THREAD_MAX = 1024
_controller = None


def single_threaded(size: int = 0):
    """Context with numpy's BLAS/LAPACK on one thread when ``size`` (the problem's largest
    dimension, 0 = always) is at most ``_SINGLE_THREAD_MAX``; a no-op context otherwise."""
    global _controller
    if size > _SINGLE_THREAD_MAX:
        return contextlib.nullcontext()
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
