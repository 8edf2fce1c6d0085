"""Taylor-expanded models: linearized, neural quadratic and k-th order models (thesis Ch. 3).

For a network ``f(w; x)`` with weights ``w₀`` at construction time, :class:`TaylorModel` is a
Keras model whose *trainable weights are the displacement* ``Δw = w − w₀`` (initialized to 0)
and whose output is the Taylor polynomial of ``f`` around ``w₀``::

    f_k(w₀ + Δw; x) = Σ_{j=0..k} (1/j!) Dʲf(w₀; x)[Δw, …, Δw]

* ``order=1``: ``f_lin = f(w₀) + ∇f(w₀)ᵀΔw``                      (thesis Eq. 3.1)
* ``order=2``: ``f_quad = f_lin + ½ Δwᵀ H_f(w₀) Δw``               (thesis Eq. 3.2, the NQM)
* ``term_only=True``: only ``(1/k!) Dᵏf(w₀)[Δwᵏ]``, the k-th order term ``f⁽ᵏ⁾`` of paper 001
  Section 6 (for the symmetric two-layer net of :class:`kerntk.layers.SymmetricTwoLayer` this is
  exactly its Eq. for ``f⁽ᵏ⁾_{W₀,W}``).

The directional derivatives ``Dʲf[Δwʲ]`` are computed with nested Jacobian-vector products along
the single direction ``Δw``; the Hessian (or any Jacobian) is never formed. Each JVP uses the
"double-VJP" (transpose) trick: ``J v = ∂/∂u ⟨Jᵀu, v⟩`` for a dummy cotangent ``u``. Inside a
``tf.function`` (as in ``fit``) grappler prunes the dead backward ops, which makes this markedly
faster than nested ``tf.autodiff.ForwardAccumulator``s (see ``benchmarks/taylor.py``) and it works
on Keras 3 variables because the primals are plain tensors fed through a ``StatelessScope``.

Cost: one forward pass of ``f`` plus, for order k, the nested transposes; a ``fit`` step of
``quadratic(model)`` costs about 1.5–2.5× a step of ``model`` on a 2-layer fcn (measured in
``benchmarks/taylor.py``); higher orders grow roughly geometrically in k.

Conventions: the wrapped model is evaluated with ``training=False`` (Dropout off, BatchNorm in
inference mode: a Taylor expansion needs a deterministic ``f``). Only the weights that were
trainable in ``model`` at construction are expanded; its non-trainable state (e.g. BatchNorm
statistics) is frozen. ``model`` itself is only used as a function: its weights are *copied*
into non-trainable ``w₀`` variables, so training ``model`` afterwards does not change the Taylor
model, and saving stores ``w₀`` and ``Δw`` with the model.
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence

import keras
import tensorflow as tf

from kerntk import _keras_compat as compat
from kerntk._backend import require_tensorflow
from kerntk._validation import is_integer


def jvp(fn: Callable, primals: Sequence[tf.Tensor], tangents: Sequence[tf.Tensor]):
    """Jacobian-vector product of ``fn`` at ``primals`` along ``tangents`` by the transpose trick.

    With ``y = fn(p)`` and the VJP ``g(u) = J(p)ᵀu`` (linear in ``u``), ``J(p) v = ∂⟨g(u), v⟩/∂u``
    for any ``u``; the value of ``u`` is irrelevant. Both steps are ordinary reverse-mode tapes,
    so the result can itself be differentiated (nested for higher orders, and by the ``fit`` tape).

    Args:
        fn: maps a list of tensors (same structure as ``primals``) to a tensor or a nest of tensors.
        primals: the point ``p`` (plain tensors).
        tangents: the direction ``v``, same shapes/dtypes as ``primals``.

    Returns:
        ``(fn(primals), J v)`` with ``J v`` of the structure of ``fn(primals)``.
    """
    primals, tangents = list(primals), list(tangents)
    with tf.GradientTape() as transpose_tape:
        with tf.GradientTape() as tape:
            tape.watch(primals)
            out = fn(primals)
        flat_out = tf.nest.flatten(out)
        # A constant-folded zeros would let grappler drop the ops we need: ones is safe (linear).
        cotangents = [tf.ones_like(o) for o in flat_out]
        transpose_tape.watch(cotangents)
        grads = tape.gradient(flat_out, primals, output_gradients=cotangents,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    flat_jvp = transpose_tape.gradient(grads, cotangents, output_gradients=tangents,
                                       unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return out, tf.nest.pack_sequence_as(out, flat_jvp)


def directional_derivatives(fn: Callable, primals: Sequence[tf.Tensor],
                            tangents: Sequence[tf.Tensor], order: int) -> List:
    """``[D⁰f, D¹f[v], …, Dᵏf[vᵏ]]`` at ``primals`` along ``v = tangents`` (nested JVPs).

    ``Dʲf(p)[vʲ] = dʲ/dtʲ f(p + t v)|_{t=0}``. Order ``j`` is the JVP of the function computing
    order ``j − 1``, so the cost grows geometrically in ``order`` and nothing of size
    ``P × P`` (the Hessian) or ``n × P`` (the Jacobian) is materialized.
    """
    if order == 0:
        return [fn(list(primals))]
    lower: List = []

    def top(p):
        lower[:] = directional_derivatives(fn, p, tangents, order - 1)
        return lower[-1]

    _, d = jvp(top, primals, tangents)
    return lower + [d]


def _read(variable) -> tf.Tensor:
    # A plain tensor (inside `stateless_call` the substituted value): tapes watch tensors, and
    # reading here keeps Keras variables out of the autodiff of the base model.
    return tf.convert_to_tensor(variable.value)


def _check_order(order) -> int:
    if not is_integer(order) or order < 1:
        raise ValueError(f"`order` must be an integer >= 1; got {order!r}.")
    return int(order)


@keras.saving.register_keras_serializable(package="kerntk")
class TaylorModel(keras.Model):
    """Order-``k`` Taylor polynomial of a model around its current weights (thesis Eq. 3.1–3.2).

    ``y = Σ_{j≤k} (1/j!) Dʲf(w₀; x)[Δwʲ]`` (or only the ``j = k`` term when ``term_only``), where
    ``w₀`` are the trainable weights of ``model`` when the TaylorModel is built (stored as
    non-trainable weights ``w0_*``) and ``Δw`` are this model's only trainable weights
    (``delta_*``, zeros at construction, same shapes as ``model.trainable_weights``). Hence at
    construction ``f_k = f`` and ``∇_{Δw} f_k = ∇_w f(w₀)``. See the module docstring for the
    computation (nested JVPs, no Hessian) and the conventions.

    Prefer the builders :func:`linearize`, :func:`quadratic`, :func:`taylor`, :func:`taylor_term`.

    Args:
        model: a built Keras model (or layer) with at least one trainable weight, serializable
            if the TaylorModel is to be saved (kerntk layers are).
        order: integer ``k >= 1``.
        term_only: if True, output only the k-th order term ``(1/k!) Dᵏf(w₀)[Δwᵏ]``.
        **kwargs: passed to ``keras.Model`` (``name``, ``dtype``, ...). ``dtype`` defaults to the
            wrapped model's dtype policy.

    Input/output: those of ``model``.

    Example:
        >>> net = kerntk.models.fcn(2, 512, input_shape=(784,))
        >>> f_quad = kerntk.models.quadratic(net)
        >>> f_quad.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        >>> f_quad.fit(x, y)          # trains Δw; `net` is unchanged
    """

    def __init__(self, model, order: int = 2, term_only: bool = False, **kwargs):
        require_tensorflow("kerntk.models.TaylorModel")
        if not isinstance(model, keras.layers.Layer):
            raise ValueError(f"`model` must be a Keras model or layer; got {type(model).__name__}.")
        if not model.built:
            raise ValueError(
                f"`model` ({model.name}) must be built before it is expanded: pass `input_shape` "
                "to the builder, or call it once on a batch.")
        kwargs.setdefault("dtype", model.dtype_policy)
        super().__init__(**kwargs)
        self.order = _check_order(order)
        self.term_only = bool(term_only)
        base_trainable = list(model.trainable_variables)
        if not base_trainable:
            raise ValueError(f"`model` ({model.name}) has no trainable weights to expand around.")
        base_state = list(model.non_trainable_variables)
        # Held outside Keras' tracking: the base is a function; its own variables are never read
        # (every one of them is substituted in `call`) and are not part of this model's weights.
        compat.set_untracked(self, "_base", model)
        compat.set_untracked(self, "_base_trainable", base_trainable)
        compat.set_untracked(self, "_base_state", base_state)

        def _copy(i, v, prefix, trainable, zeros=False):
            w = self.add_weight(name=f"{prefix}_{i}_{v.name}", shape=tuple(v.shape), dtype=v.dtype,
                                initializer="zeros", trainable=trainable)
            if not zeros:
                w.assign(v)
            return w

        self.w0 = [_copy(i, v, "w0", False) for i, v in enumerate(base_trainable)]
        self.base_state = [_copy(i, v, "state", False) for i, v in enumerate(base_state)]
        self.delta = [_copy(i, v, "delta", True, zeros=True) for i, v in enumerate(base_trainable)]
        self.built = True

    @property
    def base_model(self) -> keras.layers.Layer:
        """The wrapped model (used as a function of its weights; its own weights are unused)."""
        return self._base

    def _f(self, inputs, weights, state):
        mapping = list(zip(self._base_trainable, weights)) + list(zip(self._base_state, state))
        with keras.StatelessScope(state_mapping=mapping):
            return self._base(inputs, training=False)

    def taylor_coefficients(self, inputs) -> List:
        """``[Dʲf(w₀; x)[Δwʲ] for j = 0..order]`` (without the 1/j! factors)."""
        w0 = [_read(v) for v in self.w0]
        delta = [_read(v) for v in self.delta]
        state = [_read(v) for v in self.base_state]
        return directional_derivatives(lambda w: self._f(inputs, w, state), w0, delta,
                                       self.order)

    def call(self, inputs, training=None):
        coeffs = self.taylor_coefficients(inputs)
        if self.term_only:
            k = self.order
            return tf.nest.map_structure(lambda c: c / math.factorial(k), coeffs[-1])
        out = coeffs[0]
        for j in range(1, self.order + 1):
            out = tf.nest.map_structure(lambda a, c, j=j: a + c / math.factorial(j), out,
                                        coeffs[j])
        return out

    def compute_output_spec(self, inputs, training=None):
        return self._base.compute_output_spec(inputs)

    def reset_delta(self) -> None:
        """Sets ``Δw = 0`` (back to the expansion point ``w₀``)."""
        for d in self.delta:
            d.assign(keras.ops.zeros_like(d))

    def get_config(self):
        config = super().get_config()
        config.update(model=keras.saving.serialize_keras_object(self._base), order=self.order,
                      term_only=self.term_only)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"),
                                                      custom_objects=custom_objects)
        return cls(model, **config)


def linearize(model, **kwargs) -> TaylorModel:
    """Linearized model ``f_lin(w) = f(w₀) + (w − w₀)ᵀ∇f(w₀)`` (thesis Eq. 3.1) as a Keras model
    training ``Δw = w − w₀`` from 0. See :class:`TaylorModel`."""
    require_tensorflow("kerntk.models.linearize")
    kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_lin")
    return TaylorModel(model, order=1, **kwargs)


def quadratic(model, **kwargs) -> TaylorModel:
    """Neural quadratic model ``f_quad = f_lin + ½(w − w₀)ᵀH_f(w₀)(w − w₀)`` (thesis Eq. 3.2),
    computed with nested JVPs (never forming ``H_f``). See :class:`TaylorModel`."""
    require_tensorflow("kerntk.models.quadratic")
    kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_quad")
    return TaylorModel(model, order=2, **kwargs)


def taylor(model, order: int, **kwargs) -> TaylorModel:
    """Order-``k`` Taylor polynomial ``Σ_{j≤k} (1/j!) Dʲf(w₀)[(w − w₀)ʲ]`` of ``model``; the
    approximation error is ``O(‖w − w₀‖^{k+1})``. See :class:`TaylorModel`."""
    require_tensorflow("kerntk.models.taylor")
    kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_taylor{_check_order(order)}")
    return TaylorModel(model, order=order, **kwargs)


def taylor_term(model, order: int, **kwargs) -> TaylorModel:
    """Only the k-th order term ``f⁽ᵏ⁾ = (1/k!) Dᵏf(w₀)[(w − w₀)ᵏ]`` (paper 001 Section 6, the
    "k-th order NTK" term). With the symmetric two-layer net of paper 001 this extracts
    ``f⁽ᵏ⁾_{W₀,W}``. See :class:`TaylorModel`."""
    require_tensorflow("kerntk.models.taylor_term")
    kwargs.setdefault("name", f"{getattr(model, 'name', 'model')}_term{_check_order(order)}")
    return TaylorModel(model, order=order, term_only=True, **kwargs)
