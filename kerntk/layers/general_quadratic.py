"""General quadratic model of thesis Eq. 3.3 as a Keras layer."""

from __future__ import annotations

from typing import Optional

import keras
from keras import ops

from kerntk.layers.parameterization import check_positive, check_units

FEATURE_MAPS = ("normalize", "identity", "random_projection")
SIGMAS = ("random_sign", "identity", "zero")


@keras.saving.register_keras_serializable(package="kerntk")
class GeneralQuadratic(keras.layers.Layer):
    """General quadratic model ``g(w; x) = wᵀφ(x) + (γ/2) wᵀ Σ w`` (thesis Eq. 3.3).

    ``w ∈ Rᵖ`` is the only trainable weight (initialized ``N(0, I)`` by default, thesis App. B.14).
    The feature map ``φ`` and the diagonal ``Σ`` are fixed at build time:

    * ``feature_map="normalize"``: ``φ(x) = x / ‖x‖`` with ``p = d`` (App. B.14, where the inputs
      themselves are random, ``x ~ N(0, I_d)``); ``"identity"``: ``φ(x) = x``;
      ``"random_projection"``: ``φ(x) = R x / ‖x‖`` with a fixed ``R ∈ R^{p×d}``,
      ``R_ij ~ N(0, 1/p)`` (random features; ``features`` sets ``p``).
    * ``sigma="random_sign"``: ``Σ = diag(s)``, ``s_i ∈ {−1, +1}`` i.i.d. uniform, drawn once
      (App. B.14); ``"identity"``: ``Σ = I``; ``"zero"``: ``Σ = 0`` (a linear model).
      As in App. B.14, ``Σ`` does not depend on ``x``.
    * ``gamma`` (γ > 0 in the thesis; 0 allowed) controls the distance from linearity: the
      tangent kernel ``∇_w g(x)ᵀ∇_w g(x') = (φ(x) + γΣw)ᵀ(φ(x') + γΣw)`` changes at rate γ
      (thesis Sec. 3.3). App. B.14 uses ``d = 100``, ``γ = 1e-3`` and learning rate 2.8.

    Args:
        feature_map: one of ``"normalize"``, ``"identity"``, ``"random_projection"``.
        sigma: one of ``"random_sign"``, ``"identity"``, ``"zero"``.
        gamma: γ >= 0.
        features: ``p`` for ``"random_projection"`` (must be None otherwise: ``p = d``).
        kernel_initializer: initializer of ``w`` (default ``RandomNormal(0, 1)``).
        seed: optional int seed for ``w``, ``Σ`` and ``R``.

    Input shape: ``(batch, d)``. Output shape: ``(batch, 1)``.

    Example:
        >>> g = GeneralQuadratic(gamma=1e-3, seed=0)
        >>> y = g(keras.random.normal((20, 100)))   # y.shape == (20, 1)
    """

    def __init__(self, feature_map: str = "normalize", sigma: str = "random_sign",
                 gamma: float = 1e-3, features: Optional[int] = None,
                 kernel_initializer=None, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"`feature_map` must be one of {FEATURE_MAPS}; got {feature_map!r}.")
        if sigma not in SIGMAS:
            raise ValueError(f"`sigma` must be one of {SIGMAS}; got {sigma!r}.")
        if feature_map == "random_projection":
            if features is None:
                raise ValueError('`features` (p) is required with feature_map="random_projection".')
            check_units("features", features)
        elif features is not None:
            raise ValueError(f"`features` is only used with feature_map='random_projection'; "
                             f"with {feature_map!r} p equals the input dimension.")
        self.feature_map = feature_map
        self.sigma = sigma
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.features = features
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(0.0, 1.0, seed=seed))
        self.seed = seed
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None:
            raise ValueError("GeneralQuadratic needs a known input dimension.")
        p = self.features if self.feature_map == "random_projection" else int(d)
        self.projection = None
        if self.feature_map == "random_projection":
            self.projection = self.add_weight(
                name="projection", shape=(int(d), p), trainable=False,
                initializer=keras.initializers.RandomNormal(
                    0.0, 1.0 / p ** 0.5, seed=None if self.seed is None else self.seed + 2))
        if self.sigma == "random_sign":
            sigma_init = _RandomSign(None if self.seed is None else self.seed + 1)
        else:
            sigma_init = "ones" if self.sigma == "identity" else "zeros"
        self.sigma_diag = self.add_weight(name="sigma_diag", shape=(p,), trainable=False,
                                          initializer=sigma_init)
        self.kernel = self.add_weight(name="kernel", shape=(p, 1),
                                      initializer=self.kernel_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: d})

    def phi(self, inputs):
        """The feature map ``φ(x)``, shape ``(batch, p)``."""
        if self.feature_map == "identity":
            return inputs
        x = inputs / ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True))
        if self.projection is not None:
            x = ops.matmul(x, self.projection)
        return x

    def call(self, inputs):
        w = self.kernel
        quad = 0.5 * self.gamma * ops.sum(self.sigma_diag[:, None] * ops.square(w), axis=0)
        return ops.matmul(self.phi(inputs), w) + quad

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(feature_map=self.feature_map, sigma=self.sigma, gamma=self.gamma,
                      features=self.features,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="kerntk")
class _RandomSign(keras.initializers.Initializer):
    """I.i.d. uniform ±1 entries (the diagonal Σ of thesis App. B.14 / paper 001)."""

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        bits = keras.random.randint(shape, 0, 2, seed=self.seed)
        return ops.cast(2 * bits - 1, dtype or keras.config.floatx())

    def get_config(self):
        return {"seed": self.seed}
