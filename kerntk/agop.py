"""Average gradient outer product (AGOP) and AGOP alignment (thesis Eq. 4.5-4.6).

For a model (or any differentiable callable) ``f: R^d -> R^c`` and inputs ``x_1..x_n`` (any shape,
flattened to ``d`` features)

    G = (1/n) sum_i sum_o grad_x f_o(x_i) grad_x f_o(x_i)^T = (1/n) sum_i J(x_i)^T J(x_i)   (Eq. 4.5)

and the alignment of two AGOPs is the cosine ``Tr(G^T G*) / (||G||_F ||G*||_F)`` (Eq. 4.6).

Everything here can work from the *gradient factor* ``F`` (``n c x d``, row ``i c + o`` =
``grad_x f_o(x_i)``) with ``G = F^T F / n`` instead of the ``d x d`` matrix, so large ``d``
(images) never needs a ``d x d`` array: ``Tr(G G*) = ||F F*^T||_F^2 / (n n*)``.
"""

from __future__ import annotations

import weakref
from typing import Callable, NamedTuple, Optional, Union

import numpy as np

from kerntk import _validation as checks
from kerntk._backend import require_tensorflow

__all__ = ["AGOPFactor", "NonFiniteGradientsError", "agop", "egop", "alignment", "alignment_fn"]


class NonFiniteGradientsError(ValueError):
    """The model's input gradients on finite inputs contain NaN or inf: the model itself has
    diverged or overflowed, so there is no AGOP to report. A ``ValueError``, told apart from bad
    arguments (NaN in ``x``, or in an AGOP matrix or factor passed in, which raise a plain
    ``ValueError``) so that a caller can record "no value" for a diverged net."""


class AGOPFactor(NamedTuple):
    """Low-rank form of an AGOP: ``G = factor^T factor / n``.

    Attributes:
        factor: ``(n c, d)`` float64 gradient rows (sample-major: row ``i c + o``), centered
            per output when the AGOP was centered.
        n: number of samples the AGOP averages over.
    """

    factor: np.ndarray
    n: int

    def matrix(self) -> np.ndarray:
        """The ``d x d`` AGOP (O(n c d^2))."""
        return self.factor.T @ self.factor / self.n


METRICS = ("cosine", "pearson")
_GRAD_FNS = weakref.WeakKeyDictionary()


def _compiled(key, fn: Callable):
    """One ``tf.function`` per model/callable ``key`` (kept while it lives), so repeated AGOPs
    (e.g. in a callback) do not retrace. It returns ``(b, c, d)`` Jacobians and ``F^T F``."""
    import tensorflow as tf

    try:
        cached = _GRAD_FNS.get(key)
    except TypeError:                        # unhashable / not weak-referenceable callables
        cached = None
    if cached is not None:
        return cached

    @tf.function(reduce_retracing=True)
    def grads(xb, with_gram, scale):
        J = _input_jacobian(fn, xb)                         # (b, c, d)
        if not with_gram:
            return J, tf.zeros((0, 0), J.dtype)
        # (F/sqrt(n))^T (F/sqrt(n)) in the compute dtype (the O(n c d^2) part; scaling the small
        # factor instead of the d x d result). Transpose-then-matmul is faster than
        # transpose_a=True on oneDNN. Symmetric up to rounding.
        F = tf.reshape(J, (tf.shape(J)[0] * J.shape[1], -1)) * tf.cast(tf.sqrt(scale), J.dtype)
        return J, tf.matmul(tf.transpose(F), F)

    try:
        _GRAD_FNS[key] = grads
    except TypeError:
        pass
    return grads


def _input_jacobian(fn: Callable, xb):
    """Per-example input Jacobians ``(b, c, d)`` of ``fn`` at ``xb`` (traced): one backward pass
    per output of ``sum_i f_o(x_i)``, which is ``grad f_o(x_i)`` for independent samples."""
    import tensorflow as tf

    b = tf.shape(xb)[0]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xb)
        out = fn(xb)
    c = int(np.prod(out.shape[1:])) if out.shape.rank and out.shape.rank > 1 else 1
    rows = []
    for o in range(c):
        # Cotangent e_o on every sample: the gradient of sum_i f_o(x_i).
        seed = tf.reshape(tf.one_hot(tf.fill([b], o), c, dtype=out.dtype), tf.shape(out))
        g = tape.gradient(out, xb, output_gradients=seed, unconnected_gradients="zero")
        rows.append(tf.reshape(g, (b, -1)))
    del tape
    return tf.stack(rows, axis=1)


def _check_batch(x) -> np.ndarray:
    """``x`` as a numpy batch (a 1-D ``x`` is ``n`` samples of one feature); ``ValueError`` if
    empty or not finite."""
    x = checks.inputs("x", x)
    return x[:, None] if x.ndim == 1 else x


def _input_gradients(fn: Callable, key, x: np.ndarray, dtype, batch_size: Optional[int],
                     with_gram: bool):
    """``(n, c, d)`` per-example input Jacobians (float64) and, with ``with_gram``, the AGOP
    ``(1/n) sum_i J_i^T J_i`` (products in ``dtype``, returned in float64).

    One backward pass per output of ``sum_i f_o(x_i)``: the gradient in ``x_i`` of that sum is
    ``grad f_o(x_i)`` because samples are independent (the model must not mix the batch, which
    holds for inference-mode Keras models).
    """
    import tensorflow as tf

    grads = _compiled(key, fn)
    n = x.shape[0]
    bs = n if batch_size is None else batch_size
    chunks, gram = [], None
    for start in range(0, n, bs):
        xb = tf.convert_to_tensor(x[start:start + bs], dtype=dtype)
        J, G = grads(xb, with_gram, tf.constant(1.0 / n, tf.float64))
        chunks.append(np.asarray(J, dtype=np.float64))
        if with_gram:
            G = np.asarray(G, dtype=np.float64)
            gram = G if gram is None else gram + G
    return np.concatenate(chunks, axis=0), gram


def _callable_and_dtype(model_or_callable):
    import keras

    if isinstance(model_or_callable, keras.Model) or isinstance(model_or_callable,
                                                                  keras.layers.Layer):
        model = model_or_callable
        dtype = model.dtype_policy.compute_dtype if hasattr(model, "dtype_policy") else "float32"
        if dtype in ("float16", "bfloat16"):
            raise ValueError("Mixed-precision model: input gradients in float16 are too coarse; "
                             "compute the AGOP of a float32 copy.")
        _check_model_inputs(model)
        return (lambda t: model(t, training=False)), model, dtype
    if not callable(model_or_callable):
        raise ValueError(f"Expected a Keras model or a callable; got {model_or_callable!r}.")
    return model_or_callable, model_or_callable, "float64"


def _check_model_inputs(model) -> None:
    """The AGOP differentiates with respect to the one input: refuse models with several inputs
    or integer inputs (token ids: their gradient is undefined, TensorFlow returns zeros)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):      # subclassed or not yet built: nothing declared
        return
    if len(inputs) > 1:
        raise ValueError(f"The model has {len(inputs)} inputs; the AGOP is defined here for a "
                         f"model of one input array: wrap the model so that it takes one array.")
    if inputs and not str(inputs[0].dtype).startswith(("float", "bfloat")):
        raise ValueError(f"The model's input has dtype {inputs[0].dtype}: the AGOP needs float "
                         f"inputs, since it averages gradients with respect to the inputs (for "
                         f"integer inputs such as token ids they are undefined). Compute the AGOP "
                         f"of the part of the model that starts at float features (e.g. after an "
                         f"Embedding).")


def _check_metrics(metrics) -> tuple:
    """``metrics`` as a non-empty tuple of names in :data:`METRICS`; one name is one metric."""
    given = metrics
    metrics = (metrics,) if isinstance(metrics, str) else metrics
    try:
        metrics = tuple(metrics)
    except TypeError:
        metrics = ()
    if not metrics or any(m not in METRICS for m in metrics):
        raise ValueError(f"`metrics` must be a metric name or a non-empty sequence of them, from "
                         f"{METRICS}; got {given!r}.")
    return metrics


def agop(model_or_callable, x, *, center: bool = False, low_rank: bool = False,
         batch_size: Optional[int] = None, dtype=None) -> Union[np.ndarray, AGOPFactor]:
    """AGOP ``G = (1/n) sum_i J(x_i)^T J(x_i)`` of a model or callable on ``x`` (thesis Eq. 4.5).

    Args:
        model_or_callable: a Keras model (called with ``training=False``, in its compute dtype) or
            a callable mapping a ``tf.Tensor`` ``(b, ...)`` to ``(b,)`` or ``(b, c)`` with
            TensorFlow ops (called in float64 unless ``dtype`` is given).
        x: ``(n, ...)`` inputs, one array; ``d = prod(x.shape[1:])``. Integer ``x`` is cast
            to the float dtype the model runs in (a model whose declared input is an integer, e.g.
            token ids for an ``Embedding``, is refused: its input gradients are undefined).
        center: subtract the mean gradient per output: ``G_c = (1/n) sum_i sum_o
            (g_io - gbar_o)(g_io - gbar_o)^T = G - sum_o gbar_o gbar_o^T`` (the gradient
            covariance; removes the contribution of a globally linear part of ``f``).
        low_rank: return an :class:`AGOPFactor` (``F`` of shape ``(n c, d)``, ``G = F^T F / n``)
            instead of the ``d x d`` matrix.
        batch_size: process ``x`` in chunks of this many samples (memory).
        dtype: dtype to run the callable/model in (default: model compute dtype / float64).

    Returns:
        ``(d, d)`` float64 array, or :class:`AGOPFactor`.

    Raises:
        NonFiniteGradientsError: NaN/inf in the gradients of finite inputs (a diverged model).
        ValueError: empty ``x``, several input arrays, NaN/inf in ``x``, bad ``batch_size``, a
            model with several or integer inputs.

    Cost: ``c`` backward passes of the batch (one per output) plus ``O(n c d^2)`` for ``F^T F``
    (``O(n c d)`` memory with ``low_rank=True``).
    """
    require_tensorflow("kerntk.agop.agop")
    x = _check_batch(x)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
    fn, key, default_dtype = _callable_and_dtype(model_or_callable)
    # The Gram F^T F (the O(n c d^2) part) runs in the compute dtype inside the compiled function.
    J, gram = _input_gradients(fn, key, x, dtype or default_dtype, batch_size,
                               with_gram=not low_rank)
    if not np.all(np.isfinite(J)):
        raise NonFiniteGradientsError("The input gradients contain NaN or inf.")
    n, c, d = J.shape
    if low_rank:
        if center:
            J = J - J.mean(axis=0, keepdims=True)
        return AGOPFactor(J.reshape(n * c, d), n)
    G = gram
    if center:
        gbar = J.mean(axis=0)                              # (c, d)
        G = G - gbar.T @ gbar
    return G


def egop(f_star: Callable, x, *, center: bool = False, low_rank: bool = False,
         batch_size: Optional[int] = None, dtype="float64") -> Union[np.ndarray, AGOPFactor]:
    """Expected gradient outer product of a target ``f*`` estimated on samples ``x``:
    ``G* = (1/n) sum_i grad f*(x_i) grad f*(x_i)^T`` — :func:`agop` of a callable (TensorFlow
    ops, float64 by default). E.g. ``f*(x) = x_1 x_2`` on ``N(0, I_d)`` has ``G* -> diag(1, 1,
    0, ..., 0)``. Arguments as :func:`agop`."""
    require_tensorflow("kerntk.agop.egop")
    return agop(f_star, x, center=center, low_rank=low_rank, batch_size=batch_size, dtype=dtype)


def _stats(g):
    """``(kind, data, n, d)`` of a matrix or factor, after validation."""
    if isinstance(g, AGOPFactor):
        F = np.asarray(g.factor, dtype=np.float64)
        if F.ndim != 2 or F.shape[0] == 0 or g.n < 1:
            raise ValueError("An AGOPFactor needs a non-empty 2-D factor and n >= 1.")
        if not np.all(np.isfinite(F)):
            raise ValueError("The AGOP factor contains NaN or inf.")
        return "factor", F, int(g.n), F.shape[1]
    G = np.asarray(g, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"An AGOP matrix must be square and non-empty; got shape {G.shape}.")
    if not np.all(np.isfinite(G)):
        raise ValueError("The AGOP matrix contains NaN or inf.")
    return "matrix", G, 1, G.shape[0]


def _inner(a, b) -> float:
    """Frobenius inner product ``<G_a, G_b> = Tr(G_a^T G_b)`` from matrices and/or factors."""
    ka, A, na, _ = a
    kb, B, nb, _ = b
    if ka == "matrix" and kb == "matrix":
        return float(np.sum(A * B))
    if ka == "factor" and kb == "factor":
        # Tr(F^T F F*^T F*) / (n n*) = ||F F*^T||_F^2 / (n n*): through the (rows x rows*) Gram
        # in row chunks when d is the larger side, else through the two d x d matrices.
        d = A.shape[1]
        if d * d <= A.shape[0] * B.shape[0]:
            return float(np.sum((A.T @ A) * (B.T @ B)) / (na * nb))
        step = max(1, (1 << 22) // max(B.shape[0], 1))
        total = sum(float(np.sum((A[i:i + step] @ B.T) ** 2)) for i in range(0, A.shape[0], step))
        return total / (na * nb)
    F, n, G = (A, na, B) if ka == "factor" else (B, nb, A)
    # Tr(F^T F G)/n = sum_rows f^T G f / n  (G symmetric or not: <F^T F, G> = sum f^T G f).
    return float(np.einsum("ij,ij->", F @ G, F) / n)


def _entry_sum(s) -> float:
    """Sum of all entries ``1^T G 1``."""
    kind, A, n, _ = s
    if kind == "matrix":
        return float(A.sum())
    return float(np.sum(A.sum(axis=1) ** 2) / n)


def alignment(G, G_star, metric: str = "cosine") -> float:
    """AGOP alignment of ``G`` and ``G*`` (thesis Eq. 4.6).

    * ``"cosine"``: ``<G, G*>_F / (||G||_F ||G*||_F)`` with ``<A, B>_F = Tr(A^T B)`` (Eq. 4.6).
    * ``"pearson"``: the Pearson correlation of the ``d^2`` entries, i.e. the cosine after
      subtracting from each matrix the mean of its entries ``mu = 1^T G 1 / d^2``:
      ``(<G, G*> - d^2 mu mu*) / sqrt((||G||^2 - d^2 mu^2)(||G*||^2 - d^2 mu*^2))``.

    Each argument is a ``(d, d)`` matrix or an :class:`AGOPFactor`; with factors nothing ``d x d``
    is formed (``<G, G*> = ||F F*^T||_F^2 / (n n*)``, ``1^T G 1 = ||F 1||^2 / n``).

    Returns:
        A float in ``[-1, 1]`` (``[0, 1]`` for cosine of PSD matrices).

    Raises:
        ValueError: different ``d``, NaN/inf, a zero matrix (undefined alignment), bad metric.

    Cost: matrices O(d^2); factors O(n c n* c* d); mixed O(n c d^2).
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be 'cosine' or 'pearson'; got {metric!r}.")
    a, b = _stats(G), _stats(G_star)
    if a[3] != b[3]:
        raise ValueError(f"The AGOPs have different dimensions d={a[3]} and d={b[3]}.")
    return _from_inner(_inner(a, b), _inner(a, a), _inner(b, b), _entry_sum(a), _entry_sum(b),
                       a[3], metric)


def _from_inner(ab: float, aa: float, bb: float, sa: float, sb: float, d: int,
                metric: str) -> float:
    """The alignment from ``<G, G*>``, ``||G||^2``, ``||G*||^2`` and the entry sums."""
    if metric == "pearson":
        d2 = float(d) ** 2
        ab, aa, bb = ab - sa * sb / d2, aa - sa * sa / d2, bb - sb * sb / d2
    if aa <= 0 or bb <= 0:
        raise ValueError("Alignment is undefined for a zero (or, for pearson, constant) matrix.")
    return float(np.clip(ab / np.sqrt(aa * bb), -1.0, 1.0))


def alignment_fn(model, x, reference: AGOPFactor, *, metrics=("cosine",),
                 center: bool = False, jit_compile: Optional[bool] = None
                 ) -> Callable[[], dict]:
    """A compiled, repeatable measurement of ``alignment(agop(model, x), reference)``.

    For callbacks that measure the same probe many times: the input gradients ``F`` (as in
    :func:`agop`), ``F F^T``, ``F B^T`` and ``F 1`` (with ``reference = B^T B / n*``) run in one
    ``tf.function`` in the model's compute dtype, only four scalars reach the host (accumulated in
    float64), and nothing ``d x d`` or ``n x d`` is copied. The reference's own norms are
    computed once.

    Args:
        model: a Keras model (traced at the first call: in the dtype context of that call).
        x: ``(n, ...)`` inputs, validated once here.
        reference: the reference AGOP as an :class:`AGOPFactor` (same ``d``).
        metrics: ``"cosine"``, ``"pearson"`` or a sequence of them.
        center: center the model's gradients per output (as ``agop(center=True)``).
        jit_compile: compile with XLA. ``None`` (default): XLA for a Keras model without
            convolutions (the rule of :func:`kerntk.ntk.empirical_ntk`), falling back to the
            plain graph if XLA cannot compile it. On CPU TensorFlow's own kernel for the
            backward product ``dz W^T`` ran 2.5x slower than the forward product of the same
            size (measured on the 3072 x 1024 first layer of ``benchmarks/callbacks.py``'s fcn);
            under XLA the whole measurement took ~0.6x the time.

    Returns:
        ``measure() -> {metric: alignment}``; it raises :class:`NonFiniteGradientsError` (a
        ``ValueError``) if the gradients are not finite.
    """
    import tensorflow as tf

    require_tensorflow("kerntk.agop.alignment_fn")
    x = _check_batch(x)
    if not isinstance(reference, AGOPFactor):
        raise ValueError("`reference` must be an AGOPFactor.")
    metrics = _check_metrics(metrics)
    b = _stats(reference)
    d = b[3]
    if int(np.prod(x.shape[1:])) != d:
        raise ValueError(f"The inputs have d={int(np.prod(x.shape[1:]))} features, the "
                         f"reference d={d}.")
    bb, sb = _inner(b, b), _entry_sum(b)
    n, nb = x.shape[0], b[2]
    fn, owner, _ = _callable_and_dtype(model)
    if jit_compile is not None and not isinstance(jit_compile, bool):
        raise ValueError(f"`jit_compile` must be None or a bool; got {jit_compile!r}.")
    if jit_compile is None:
        import keras

        from kerntk.ntk.empirical import _xla_friendly

        jit_compile = isinstance(owner, keras.Model) and owner.built and _xla_friendly(owner)

    def inner_products(xt, B):
        J = _input_jacobian(fn, xt)                                  # (n, c, d)
        if center:
            J = J - tf.reduce_mean(J, axis=0, keepdims=True)
        F = tf.reshape(J, (-1, d))
        sq = lambda t: tf.reduce_sum(tf.square(tf.cast(t, tf.float64)))
        return (sq(tf.matmul(F, B, transpose_b=True)), sq(tf.matmul(F, F, transpose_b=True)),
                sq(tf.reduce_sum(F, axis=1)), tf.reduce_all(tf.math.is_finite(F)))

    from kerntk.ntk.cache import Compiled

    compiled = Compiled(lambda jit: tf.function(inner_products, autograph=False,
                                                jit_compile=jit), jit_compile)
    inputs = {}

    def measure() -> dict:
        # Constants are made on first use, in the dtype the model computes in at that time.
        if "x" not in inputs:
            inputs["x"] = tf.constant(x, dtype=model.compute_dtype)
            inputs["B"] = tf.constant(b[1], dtype=model.compute_dtype)
        ab, aa, fs, finite = compiled(inputs["x"], inputs["B"])
        if not bool(finite):
            raise NonFiniteGradientsError("The input gradients contain NaN or inf.")
        ab, aa, sa = float(ab) / (n * nb), float(aa) / n ** 2, float(fs) / n
        return {m: _from_inner(ab, aa, bb, sa, sb, d, m) for m in metrics}

    return measure
