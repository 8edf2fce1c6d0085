"""Paper 001's two-layer net with symmetric initialization and sign randomization."""

from __future__ import annotations

import math
from typing import Optional

import keras
import tensorflow as tf
from keras import ops

from kerntk._backend import require_tensorflow
from kerntk._validation import is_integer
from kerntk.layers.parameterization import check_positive, check_units

EVAL_MODES = ("expected", "sample", "deterministic")


def _relu3(t):
    return ops.power(ops.relu(t), 3)


_EXTRA_ACTIVATIONS = {"relu3": _relu3, "square": ops.square}


def get_activation(name: str):
    """Activation by name: Keras' names, plus ``"relu3"`` (``max(t, 0)³``, the smooth activation
    of paper 001 Assumption A) and ``"square"`` (``t²``)."""
    if not isinstance(name, str):
        raise ValueError(f"`activation` must be a string (for serialization); got {name!r}.")
    if name in _EXTRA_ACTIVATIONS:
        return _EXTRA_ACTIVATIONS[name]
    try:
        return keras.activations.get(name)
    except ValueError:
        raise ValueError(f"Unknown activation {name!r}: use a Keras activation name or one of "
                         f"{tuple(_EXTRA_ACTIVATIONS)}.") from None


def nth_derivative(fn, t, n: int):
    """Elementwise n-th derivative ``fn⁽ⁿ⁾(t)`` of an elementwise ``fn`` (nested tapes; nested
    ``jax.grad`` of the sum under JAX)."""
    if n == 0:
        return fn(t)
    if keras.backend.backend() == "jax":
        import jax

        for _ in range(n):
            fn = jax.grad(lambda s, f=fn: ops.sum(f(s)))
        return fn(t)
    require_tensorflow("kerntk.layers.SymmetricTwoLayer.kth_order_term", also=("jax",))
    t = tf.convert_to_tensor(t)
    with tf.GradientTape() as tape:
        tape.watch(t)
        inner = nth_derivative(fn, t, n - 1)
    return tape.gradient(inner, t, unconnected_gradients=tf.UnconnectedGradients.ZERO)


@keras.saving.register_keras_serializable(package="kerntk")
class SymmetricTwoLayer(keras.layers.Layer):
    """Two-layer net of paper 001 with symmetric initialization and randomized training.

    With ``m = width`` neurons (even), fixed output weights ``a_r = +1`` for ``r < m/2`` and
    ``−1`` otherwise, and fixed first-layer weights ``W₀`` whose ``+1`` half is i.i.d.
    ``N(0, B⁻² I_d)`` and copied exactly into the ``−1`` half (001 Eq. 3), the layer computes::

        f(x) = (1/√m) Σ_r a_r σ((w₀,r + Σ_rr w_r)ᵀ x)                            (001 Eq. 1)

    where ``W = [w_1..w_m]`` (shape ``(d, m)``, zeros at init) is the only trainable weight, i.e.
    the movement from ``W₀``, and ``Σ`` is a diagonal sign matrix. At init ``f ≡ 0`` *exactly*
    (``f_{W₀} = 0``): the two halves are computed separately and subtracted, so identical terms
    cancel without rounding.

    Modes:

    * Training (``training=True``) with ``randomize=True``: a fresh ``Σ_rr ~ Unif{±1}`` is drawn
      at every call, i.e. every training step (001 Sec. 3.1, the randomized risk
      ``L(W) = E_Σ[L(WΣ)]``). The last draw is kept in the non-trainable ``last_signs``.
      ``randomize=False`` trains the plain net (``Σ = I``).
    * Evaluation (``training`` False/None), ``eval_mode``:
      ``"expected"`` (default): the exact average over Σ,
      ``E_Σ f(x) = (1/√m) Σ_r a_r ½[σ((w₀,r + w_r)ᵀx) + σ((w₀,r − w_r)ᵀx)]`` (each neuron sees only
      its own sign, so the 2ᵐ-term expectation factorizes). The odd Taylor terms (in particular
      the linear NTK term f⁽¹⁾) average out and the quadratic term f⁽²⁾ remains dominant, which is
      the coupling the paper exploits; ``"sample"``: one fresh random Σ per call (a draw of the
      randomized net, as in training); ``"deterministic"``: ``Σ = I``, the net ``f_{W₀+W}``.

    The k-th order Taylor term in ``W`` (001 Section 6) is :meth:`kth_order_term`.

    Args:
        width: even positive int ``m``.
        activation: ``"relu3"`` (default, 001 Assumption A), ``"square"`` or a Keras name.
        input_norm: ``B`` (``‖x‖ = B`` in 001); ``w₀,r ~ N(0, B⁻² I)`` so ``w₀,rᵀx ~ N(0, 1)``.
            Default ``sqrt(d)`` (standardized inputs).
        randomize: draw a fresh sign matrix at every training call.
        eval_mode: ``"expected"``, ``"sample"`` or ``"deterministic"``.
        seed: optional int seed for ``W₀`` and the signs.

    Input shape: ``(batch, d)``. Output shape: ``(batch, 1)``.

    Example:
        >>> layer = SymmetricTwoLayer(1024, seed=0)
        >>> float(keras.ops.max(keras.ops.abs(layer(x))))   # 0.0 at initialization
    """

    def __init__(self, width: int, activation: str = "relu3", input_norm: Optional[float] = None,
                 randomize: bool = True, eval_mode: str = "expected", seed: Optional[int] = None,
                 **kwargs):
        super().__init__(**kwargs)
        check_units("width", width)
        if width % 2:
            raise ValueError(f"`width` must be even (symmetric halves); got {width}.")
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"`eval_mode` must be one of {EVAL_MODES}; got {eval_mode!r}.")
        self.width = width
        self.activation = activation
        self._sigma = get_activation(activation)
        self.input_norm = None if input_norm is None else check_positive("input_norm", input_norm)
        self.randomize = bool(randomize)
        self.eval_mode = eval_mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(
            None if seed is None else seed + 1, name="sign_seed")
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None:
            raise ValueError("SymmetricTwoLayer needs a known input dimension.")
        norm = self.input_norm if self.input_norm is not None else math.sqrt(d)
        half = self.width // 2
        self.w0_half = self.add_weight(
            name="w0_half", shape=(d, half), trainable=False,
            initializer=keras.initializers.RandomNormal(0.0, 1.0 / norm, seed=self.seed))
        self.kernel = self.add_weight(name="kernel", shape=(d, self.width), initializer="zeros")
        self.last_signs = self.add_weight(name="last_signs", shape=(self.width,), trainable=False,
                                          initializer="ones")
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: d})

    @property
    def output_weights(self):
        """The fixed second layer ``a`` (``+1`` then ``−1``), shape ``(m,)``."""
        half = self.width // 2
        return ops.concatenate([ops.ones((half,)), -ops.ones((half,))])

    @property
    def w0(self):
        """``W₀ = [W₀⁺, W₀⁺]`` (the copied halves), shape ``(d, m)``."""
        return ops.concatenate([self.w0_half, self.w0_half], axis=1)

    def draw_signs(self):
        """A fresh diagonal of ``Σ``: i.i.d. uniform ±1, shape ``(m,)``."""
        bits = keras.random.randint((self.width,), 0, 2, seed=self.seed_generator)
        return ops.cast(2 * bits - 1, self.compute_dtype)

    def forward(self, inputs, signs=None):
        """``f_{W₀ + WΣ}(x)`` for a sign vector ``signs`` (``None``: ``Σ = I``); ``(batch, 1)``."""
        w = self.kernel if signs is None else self.kernel * ops.cast(signs, self.compute_dtype)
        half = self.width // 2
        base = ops.matmul(inputs, self.w0_half)
        move = ops.matmul(inputs, w)
        plus = self._sigma(base + move[:, :half])
        minus = self._sigma(base + move[:, half:])
        # Subtracting the halves (rather than summing a_r σ_r) makes f_{W0} = 0 exactly.
        return ops.sum(plus - minus, axis=-1, keepdims=True) / math.sqrt(self.width)

    def call(self, inputs, training=None):
        if training and self.randomize:
            signs = self.draw_signs()
            self.last_signs.assign(ops.cast(signs, self.last_signs.dtype))
            return self.forward(inputs, signs)
        if self.eval_mode == "deterministic":
            return self.forward(inputs)
        if self.eval_mode == "sample":
            return self.forward(inputs, self.draw_signs())
        return 0.5 * (self.forward(inputs) + self.forward(inputs, -ops.ones((self.width,))))

    def kth_order_term(self, inputs, k: int):
        """The k-th order term of the Taylor series in ``W`` (001 Section 6)::

            f⁽ᵏ⁾_{W₀,W}(x) = (1/√m) Σ_{r ≤ m/2} σ⁽ᵏ⁾(w₀,rᵀx)/k! [(w₊,rᵀx)ᵏ − (w₋,rᵀx)ᵏ]

        with ``W₊``/``W₋`` the halves of the trainable ``W`` (``Σ = I``). ``f⁽⁰⁾ = 0`` by the
        symmetric initialization, ``f⁽¹⁾`` is the linearized (NTK) term, ``f⁽²⁾`` the quadratic
        one. Closed form with ``σ⁽ᵏ⁾`` by autodiff; the generic equivalent for any model is
        :func:`kerntk.models.taylor_term`.
        """
        if not is_integer(k) or k < 0:
            raise ValueError(f"`k` must be an integer >= 0; got {k!r}.")
        k = int(k)
        half = self.width // 2
        pre = ops.matmul(inputs, self.w0_half)
        dk = nth_derivative(self._sigma, pre, k)
        move = ops.matmul(inputs, self.kernel)
        diff = ops.power(move[:, :half], k) - ops.power(move[:, half:], k)
        return (ops.sum(dk * diff, axis=-1, keepdims=True)
                / (math.factorial(k) * math.sqrt(self.width)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width, activation=self.activation, input_norm=self.input_norm,
                      randomize=self.randomize, eval_mode=self.eval_mode, seed=self.seed)
        return config
