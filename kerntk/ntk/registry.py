"""Layer factorizations: how a layer tells the NTK engine the structure of its per-example gradient.

The structured NTK (SPEC §3) never forms per-example gradients of a layer computing
``z = m_W lin(a, W) + m_b b`` followed by any ``out = post(z)``: the gradient of output ``k``
of example ``i`` is ``m_W sum_s a_is d_is^T`` with ``a`` the layer's input (what multiplies the
weight) and ``d = dL/dz`` the cotangent of the pre-activation, so its Gram is formed from ``A``
and ``D`` alone (:mod:`kerntk.ntk.blocks`). This module says which layers have that structure.

Protocol
--------
A *rule* is registered for a layer class with :func:`register_factorization`. Called on a built
layer, it returns a :class:`Factorization`, a tuple of them (a layer made of several factorized
steps, e.g. ``SeparableConv2D`` = depthwise then pointwise), or a ``str`` saying why this instance
has none (the engine then uses the exact per-example Jacobian for its variables). A
:class:`Factorization` gives:

* ``kind``: how the Gram block is formed (the keys of :data:`kerntk.ntk.blocks.BLOCKS`):
  ``"dense"`` (``z = a W`` on the last axis of an input of any rank), ``"conv"`` (a channels_last
  1-, 2- or 3-D convolution without dilation, with ``kernel_size``, ``strides``, ``padding`` and
  ``groups``; depthwise is ``groups`` = input channels), ``"conv_transpose"`` (its transpose,
  same geometry), ``"diagonal"`` (``z = a * gamma`` elementwise, ``gamma`` varying over
  ``axes``) or ``"gather"`` (``z = kernel[a]``, rows of an embedding table picked by the integer
  ids ``a``).
* ``kernel`` / ``bias``: the variables the step owns (either may be ``None``, not both; a
  ``"gather"`` step has no bias); trainable variables of the layer named by no step use the
  exact Jacobian.
* ``features``: layer input ``-> a``, what multiplies the kernel (default: the input itself;
  LayerNormalization's normalized input); for the steps after the first of a tuple, the input is
  the previous step's output.
* ``preactivation``: ``a -> z``, the linear part; the engine records ``a`` and ``z`` and takes the
  cotangents ``D`` at ``z``.
* ``postactivation``: ``z -> output`` (anything, e.g. an activation); the layer's ``call`` must
  equal the composition of ``postactivation(preactivation(features(.)))`` over its steps.
* ``kernel_multiplier`` / ``bias_multiplier``: ``m_W``, ``m_b`` (1 for a standard layer).

Exactness
---------
Rules are looked up through the class's MRO, but a fast path must prove it applies: a rule
describes the ``call`` of the class it is registered for (and the other ``methods`` named at
registration), so a subclass that overrides any of them does not inherit the rule and falls back
to the exact Jacobian. While tracing, the engine further proves for every structured layer that
it is called exactly once per forward pass and that its variables reach the outputs only through
that call (it reads them detached inside the call and checks that the outputs do not depend on
them otherwise): a layer called twice, or whose weights are tied to another layer (a shared
embedding used as the output projection, say), falls back to the exact Jacobian.
:func:`explain` tells which layers of a model are structured and why the others are not.

Worked example
--------------
A layer computing ``x @ W * c + b``::

    class ScaledDense(keras.layers.Layer):
        def __init__(self, units, scale, **kwargs):
            super().__init__(**kwargs)
            self.units, self.scale = units, scale

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], self.units))
            self.bias = self.add_weight(shape=(self.units,), initializer="zeros")

        def call(self, x):
            return ops.matmul(x, self.kernel) * self.scale + self.bias

    def scaled_dense_rule(layer):
        return Factorization(
            "dense", layer.kernel, bias=layer.bias, kernel_multiplier=layer.scale,
            preactivation=lambda a: ops.matmul(a, layer.kernel) * layer.scale + layer.bias)

    register_factorization(ScaledDense, scaled_dense_rule)

The multiplier is ``m_W = c`` because ``z = c (a W) + b``; ``preactivation`` computes ``z``
exactly as ``call`` does and ``postactivation`` defaults to the identity. Kerntk's own
``NTKDense``/``PolyDense``/``NTKConv1D``/``NTKConv2D``/``PolyConv2D`` and Keras' ``Dense``,
``Conv1D``/``Conv2D``/``Conv3D`` (``groups`` included), ``DepthwiseConv1D``/``2D``,
``SeparableConv1D``/``2D``, ``Conv1DTranspose``/``2D``/``3D``, ``LayerNormalization``,
``RMSNormalization`` and ``Embedding`` are registered below through the same function.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf
from keras import ops

from kerntk import _keras_compat as compat
from kerntk.layers import BaseNTKConv, NTKDense
from kerntk.ntk.blocks import BLOCKS

__all__ = ["Factorization", "LayerReport", "explain", "factorization_of",
           "register_factorization", "registered_rule"]

Rule = Callable[[keras.layers.Layer],
                Union["Factorization", Tuple["Factorization", ...], str]]

_GEOMETRY_KINDS = ("conv", "conv_transpose")


def _identity(z):
    return z


@dataclass(frozen=True)
class Factorization:
    """The per-example gradient structure of one step of a layer instance (see the module
    docstring)."""

    kind: str
    kernel: Any
    preactivation: Callable
    bias: Any = None
    postactivation: Callable = _identity
    features: Callable = _identity
    kernel_multiplier: float = 1.0
    bias_multiplier: float = 1.0
    kernel_size: tuple = ()
    strides: tuple = ()
    padding: str = "valid"
    groups: int = 1
    axes: tuple = ()

    def __post_init__(self):
        if self.kind not in BLOCKS:
            raise ValueError(f"Factorization kind must be one of {tuple(BLOCKS)}; got "
                             f"{self.kind!r}.")
        for name in ("kernel", "bias"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, keras.Variable):
                raise TypeError(f"Factorization.{name} must be one of the layer's "
                                f"keras.Variable or None; got {type(value).__name__}.")
        if self.kernel is None and self.bias is None:
            raise ValueError("A Factorization needs a kernel, a bias or both.")
        if self.kind == "gather" and (self.kernel is None or self.bias is not None):
            raise ValueError("A 'gather' Factorization needs a kernel (the table) and no bias.")
        for name in ("preactivation", "postactivation", "features"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Factorization.{name} must be callable.")
        for name in ("kernel_multiplier", "bias_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"Factorization.{name} must be a real number; got {value!r}.")
            object.__setattr__(self, name, float(value))
        if self.kind in _GEOMETRY_KINDS:
            self._check_geometry()
        elif self.groups != 1:
            raise ValueError(f"`groups` applies to 'conv' Factorizations only; got kind "
                             f"{self.kind!r} with groups={self.groups}.")
        if self.kind == "diagonal":
            axes = tuple(self.axes)
            if not axes or any(not isinstance(a, numbers.Integral) or isinstance(a, bool)
                               or a == 0 for a in axes) or len(set(axes)) != len(axes):
                raise ValueError(f"A 'diagonal' Factorization needs `axes`: the distinct "
                                 f"per-example axes of its input its parameters vary over "
                                 f"(not 0, the batch axis; negative counts from the end); got "
                                 f"{axes}.")
            object.__setattr__(self, "axes", tuple(int(a) for a in axes))

    def _check_geometry(self):
        size, strides = tuple(self.kernel_size), tuple(self.strides)
        if len(size) not in (1, 2, 3) or len(strides) != len(size):
            raise ValueError(f"A {self.kind!r} Factorization needs a 1-, 2- or 3-D kernel_size "
                             f"and strides of the same rank; got kernel_size={size}, "
                             f"strides={strides}.")
        if self.padding not in ("valid", "same"):
            raise ValueError(f"A {self.kind!r} Factorization needs padding 'valid' or 'same'; "
                             f"got {self.padding!r}.")
        if not isinstance(self.groups, numbers.Integral) or self.groups < 1 or (
                self.groups > 1 and self.kind != "conv"):
            raise ValueError(f"`groups` must be a positive int (and 1 for {self.kind!r}); got "
                             f"{self.groups!r}.")
        object.__setattr__(self, "kernel_size", tuple(int(k) for k in size))
        object.__setattr__(self, "strides", tuple(int(s) for s in strides))
        object.__setattr__(self, "groups", int(self.groups))


@dataclass(frozen=True)
class _Registration:
    cls: type
    rule: Rule
    methods: Tuple[str, ...]


_RULES: Dict[type, _Registration] = {}


def register_factorization(layer_class: type, rule: Rule, *,
                           methods: Sequence[str] = ("call",)) -> None:
    """Register ``rule`` as the factorization of ``layer_class`` and of its subclasses that do not
    override ``call`` nor any of ``methods``.

    Args:
        layer_class: a subclass of ``keras.layers.Layer``. Registering a class again replaces
            its rule.
        rule: ``rule(layer) -> Factorization | tuple[Factorization, ...] | str`` for a built
            instance; a tuple lists the steps of a layer made of several factorized steps
            applied in order; a ``str`` is the reason this instance has no factorization (e.g.
            an unsupported option).
        methods: the methods whose implementation the rule describes (``"call"`` is always
            included): a subclass overriding one of them falls back to the exact Jacobian.

    Raises:
        TypeError: ``layer_class`` is not a Keras layer class, or ``rule`` is not callable.
        ValueError: a name in ``methods`` is not a method of ``layer_class``.
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(f"register_factorization needs a subclass of keras.layers.Layer; got "
                        f"{layer_class!r}.")
    if not callable(rule):
        raise TypeError(f"The rule for {layer_class.__name__} must be a callable "
                        f"rule(layer) -> Factorization | tuple | str; got "
                        f"{type(rule).__name__}.")
    if isinstance(methods, str):
        methods = (methods,)
    names = ("call",) + tuple(m for m in methods if m != "call")
    missing = [m for m in names if not callable(getattr(layer_class, m, None))]
    if missing:
        raise ValueError(f"{layer_class.__name__} has no method(s) {missing}: `methods` names the "
                         f"methods the rule describes.")
    _RULES[layer_class] = _Registration(layer_class, rule, names)


def registered_rule(layer_class: type) -> Optional[Rule]:
    """The rule registered for exactly ``layer_class`` (not inherited), or ``None``."""
    reg = _RULES.get(layer_class)
    return reg.rule if reg is not None else None


def factorization_of(layer) -> Tuple[Tuple[Factorization, ...], str]:
    """``(steps, "")`` for a layer the engine can factorize (one :class:`Factorization` per
    step), else ``((), reason)``."""
    cls = type(layer)
    reg = next((_RULES[k] for k in cls.__mro__ if k in _RULES), None)
    if reg is None:
        return (), f"no factorization registered for {cls.__name__} or its base classes"
    for name in reg.methods:
        if getattr(cls, name, None) is not getattr(reg.cls, name, None):
            return (), (f"{cls.__name__} overrides `{name}` of {reg.cls.__name__}, whose "
                        f"registered factorization describes {reg.cls.__name__}.{name} "
                        f"(register a rule for {cls.__name__})")
    if compat.is_lora_or_quantized(layer):
        return (), "LoRA or quantized layers are not factorized"
    result = reg.rule(layer)
    if isinstance(result, str):
        return (), result
    steps = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    if not steps or not all(isinstance(f, Factorization) for f in steps):
        raise TypeError(f"The factorization rule registered for {reg.cls.__name__} returned "
                        f"{result!r}; it must return a kerntk.ntk.registry.Factorization, a "
                        f"non-empty tuple of them, or a str (why it does not apply).")
    return steps, ""


# ------------------------------------------------------------------------- use by the engine


@dataclass
class Site:
    """One factorized step of a layer of a model, with the positions of its variables in
    ``model.trainable_variables`` (``None``: absent or not trainable) and the ``(a, z)`` pairs
    recorded by :func:`capture`."""

    layer: keras.layers.Layer
    fact: Factorization
    kernel_index: Optional[int]
    bias_index: Optional[int]
    records: List[tuple] = field(default_factory=list)

    @property
    def indices(self) -> List[int]:
        return [i for i in (self.kernel_index, self.bias_index) if i is not None]


def _sites(layer, index_of: Dict[int, int]) -> Tuple[List[Site], str]:
    steps, reason = factorization_of(layer)
    if not steps:
        return [], reason
    sites = [Site(layer, f, index_of.get(id(f.kernel)) if f.kernel is not None else None,
                  index_of.get(id(f.bias)) if f.bias is not None else None) for f in steps]
    if not any(s.indices for s in sites):
        return [], "none of the variables of its factorization is trainable"
    return sites, ""


def find_sites(model, index_of: Dict[int, int], exclude=()) -> List[Site]:
    """The factorized steps of ``model``'s layers (in layer order, steps in order), leaving out
    the layers whose ``id`` is in ``exclude``; ``index_of`` maps ``id(variable)`` to its position
    in ``model.trainable_variables``."""
    sites = []
    for layer in compat.flatten_layers(model, include_self=False):
        if not layer.trainable_variables or id(layer) in exclude:
            continue
        sites += _sites(layer, index_of)[0]
    return sites


@contextlib.contextmanager
def capture(sites: List[Site], tape: Optional[tf.GradientTape] = None,
            tap: Optional[Callable[[Site, tf.Tensor], tf.Tensor]] = None) -> Iterator[None]:
    """Run each site's layer as the composition of its steps ``post(pre(features(.)))``,
    recording ``(a, z)`` in ``site.records``. With a ``tape`` (recording the forward pass inside
    ``model.stateless_call``) each step reads its kernel and bias detached from the values the
    call maps them to, and ``z`` is watched on ``tape`` (see :func:`unproven_layers`). With a
    ``tap``, ``z`` is replaced by ``tap(site, z)`` (an identity that observes the cotangents of
    later backward passes, see :class:`kerntk.ntk.in_step.ForwardNTK`) before it is recorded
    and used. Restored on exit, even on error."""
    by_layer: Dict[int, List[Site]] = {}
    for site in sites:
        by_layer.setdefault(id(site.layer), []).append(site)
    with contextlib.ExitStack() as stack:
        for steps in by_layer.values():
            def call(inputs, *args, _steps=steps, **kwargs):
                h = inputs
                for s in _steps:
                    a = s.fact.features(h)
                    detach = [s.fact.kernel, s.fact.bias] if tape is not None else []
                    with compat.detached(detach):
                        z = s.fact.preactivation(a)
                    if tap is not None:
                        z = tap(s, z)
                    if tape is not None:
                        tape.watch(z)
                    s.records.append((a, z))
                    h = s.fact.postactivation(z)
                return h

            stack.enter_context(compat.override(steps[0].layer, "call", call))
        yield


def coverage(sites: List[Site], n_vars: int):
    """``(active, rest)``: the sites called exactly once by the traced forward pass that own a
    trainable variable, and the indices of the trainable variables they do not cover."""
    active = [s for s in sites if len(s.records) == 1 and s.indices]
    covered = {i for s in active for i in s.indices}
    return active, [i for i in range(n_vars) if i not in covered]


def unproven_layers(sites: List[Site], tape, total, values) -> set:
    """The ``id`` of each layer whose structured treatment a forward pass traced under
    ``capture(sites, tape)`` did not prove exact: a step not called exactly once, or a
    variable of a step on which the outputs' ``total`` still depends (it is used outside the
    layer's call, e.g. tied to another layer). ``values`` are the tensors
    ``model.stateless_call`` mapped the trainable variables to, watched by ``tape``."""
    bad = {id(s.layer) for s in sites if len(s.records) != 1}
    checked = [(s, i) for s in sites if id(s.layer) not in bad for i in s.indices]
    if checked:
        grads = tape.gradient(total, [values[i] for _, i in checked],
                              unconnected_gradients=tf.UnconnectedGradients.NONE)
        bad |= {id(s.layer) for (s, _), g in zip(checked, grads) if g is not None}
    return bad


@dataclass(frozen=True)
class LayerReport:
    """How the engine treats one layer owning trainable variables."""

    name: str
    class_name: str
    structured: bool
    kind: Optional[str]
    reason: str

    def __str__(self):
        how = f"structured ({self.kind})" if self.structured else "exact Jacobian"
        return f"{self.name} ({self.class_name}): {how}" + (f" — {self.reason}"
                                                          if self.reason else "")


def explain(model) -> List[LayerReport]:
    """Which layers of the built ``model`` the structured NTK factorizes, and why the others
    (whose variables use the exact per-example Jacobian) are not.

    One :class:`LayerReport` per layer owning trainable variables; ``kind`` joins the kinds of a
    layer's steps with ``+`` (e.g. ``"conv+dense"`` for ``SeparableConv2D``). A structured layer
    whose factorization leaves some of its trainable variables out says so in ``reason``. That
    each structured layer is called exactly once per forward pass and that its variables are
    used only there is proven when the kernel is traced (a layer that fails either falls back
    too).
    """
    tvars = model.trainable_variables
    index_of = {id(v): i for i, v in enumerate(tvars)}
    reports = []
    for layer in compat.flatten_layers(model, include_self=True):
        own = compat.own_trainable_variables(layer)
        if not own:
            continue
        sites, reason = _sites(layer, index_of)
        kind = None
        if sites:
            kind = "+".join(s.fact.kind for s in sites)
            covered = {id(v) for s in sites for v in (s.fact.kernel, s.fact.bias)}
            rest = [v.path for v in own if id(v) not in covered]
            if rest:
                reason = f"these variables use the exact Jacobian: {', '.join(rest)}"
        reports.append(LayerReport(layer.name, type(layer).__name__, bool(sites), kind, reason))
    return reports


# ------------------------------------------------------------------ kerntk's and Keras' layers


def _ntk_linear(layer) -> Union[Factorization, str]:
    """kerntk's NTK-parameterized layers: ``post(m_W lin(a, W) + m_b b)``."""
    geometry = {}
    if isinstance(layer, BaseNTKConv):
        geometry = dict(kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
                        padding=layer.padding)
    return Factorization("conv" if geometry else "dense", layer.kernel, layer.preactivation,
                         bias=layer.bias, postactivation=layer.postactivation,
                         kernel_multiplier=float(layer.kernel_multiplier),
                         bias_multiplier=float(layer.bias_multiplier), **geometry)


def _activation(layer) -> Callable:
    return layer.activation if layer.activation is not None else _identity


def _add_bias(layer, z):
    return z + layer.bias if layer.bias is not None else z


def _keras_dense(layer) -> Factorization:
    def pre(a):
        return _add_bias(layer, ops.matmul(a, layer.kernel))
    return Factorization("dense", layer.kernel, pre, bias=layer.bias,
                         postactivation=_activation(layer))


def _conv_geometry_reason(layer) -> str:
    if layer.data_format != "channels_last":
        return "only channels_last convolutions are factorized"
    if any(r != 1 for r in layer.dilation_rate):
        return "dilated convolutions are not factorized"
    if layer.padding not in ("valid", "same"):
        return f"padding {layer.padding!r} is not factorized"
    return ""


def _geometry(layer) -> dict:
    return dict(kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
                padding=layer.padding)


def _keras_conv(layer) -> Union[Factorization, str]:
    reason = _conv_geometry_reason(layer)
    if reason:
        return reason

    def pre(a):
        return _add_bias(layer, layer.convolution_op(a, layer.kernel))
    return Factorization("conv", layer.kernel, pre, bias=layer.bias,
                         postactivation=_activation(layer), groups=layer.groups,
                         **_geometry(layer))


def _keras_depthwise(layer) -> Union[Factorization, str]:
    reason = _conv_geometry_reason(layer)
    if reason:
        return reason

    def pre(a):
        z = ops.depthwise_conv(a, layer.kernel, strides=layer.strides, padding=layer.padding,
                               dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        return _add_bias(layer, z)
    return Factorization("conv", layer.kernel, pre, bias=layer.bias,
                         postactivation=_activation(layer), groups=int(layer.kernel.shape[-2]),
                         **_geometry(layer))


def _keras_separable(layer) -> Union[Tuple[Factorization, ...], str]:
    reason = _conv_geometry_reason(layer)
    if reason:
        return reason

    def depthwise(a):
        return ops.depthwise_conv(a, layer.depthwise_kernel, strides=layer.strides,
                                  padding=layer.padding, dilation_rate=layer.dilation_rate,
                                  data_format=layer.data_format)

    def pointwise(h):
        z = ops.conv(h, layer.pointwise_kernel, strides=1, padding="valid",
                     data_format=layer.data_format)
        return _add_bias(layer, z)
    return (Factorization("conv", layer.depthwise_kernel, depthwise,
                          groups=int(layer.depthwise_kernel.shape[-2]), **_geometry(layer)),
            Factorization("dense", layer.pointwise_kernel, pointwise, bias=layer.bias,
                          postactivation=_activation(layer)))


def _keras_conv_transpose(layer) -> Union[Factorization, str]:
    reason = _conv_geometry_reason(layer)
    if reason:
        return reason
    if layer.output_padding is not None:
        return "transposed convolutions with output_padding are not factorized"

    def pre(a):
        z = ops.conv_transpose(a, layer.kernel, strides=list(layer.strides),
                               padding=layer.padding, output_padding=layer.output_padding,
                               dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        return _add_bias(layer, z)
    return Factorization("conv_transpose", layer.kernel, pre, bias=layer.bias,
                         postactivation=_activation(layer), **_geometry(layer))


def _normalized_affine(layer, normalize: Callable, gamma, beta) -> Factorization:
    """``normalize(x) * gamma + beta`` with ``gamma``/``beta`` varying over ``layer.axis``."""
    axes = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (layer.axis,)

    def broadcast(v, like):
        rank = len(like.shape)
        shape = [1] * rank
        for a in sorted(a % rank for a in axes):
            shape[a] = like.shape[a]
        return ops.reshape(ops.cast(v, like.dtype), shape)

    def pre(xhat):
        z = xhat * broadcast(gamma, xhat) if gamma is not None else xhat
        return z + broadcast(beta, xhat) if beta is not None else z
    return Factorization("diagonal", gamma, pre, bias=beta, features=normalize, axes=axes,
                         postactivation=lambda z: ops.cast(z, layer.compute_dtype))


def _keras_layer_norm(layer) -> Union[Factorization, str]:
    if 0 in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]):
        return "a LayerNormalization over the batch axis couples the examples"
    gamma = layer.gamma if layer.scale else None
    # With rms_scaling Keras ignores beta (it stays a trainable variable with zero gradient).
    beta = layer.beta if layer.center and not layer.rms_scaling else None
    if gamma is None and beta is None:
        return "it has no scale and no offset"
    return _normalized_affine(layer, lambda x: ops.layer_normalization(
        x, None, None, axis=layer.axis, epsilon=layer.epsilon, rms_scaling=layer.rms_scaling),
        gamma, beta)


def _keras_rms_norm(layer) -> Union[Factorization, str]:
    if 0 in layer.axis:
        return "an RMSNormalization over the batch axis couples the examples"
    return _normalized_affine(layer, lambda x: ops.rms_normalization(
        x, None, axis=layer.axis, epsilon=layer.epsilon), layer.scale, None)


def _keras_embedding(layer) -> Factorization:
    def features(ids):
        return ids if ids.dtype in ("int32", "int64") else ops.cast(ids, "int32")
    return Factorization("gather", layer.embeddings,
                         lambda ids: ops.take(layer.embeddings, ids, axis=0), features=features,
                         postactivation=lambda z: ops.cast(z, layer.compute_dtype))


_NTK_METHODS = ("call", "preactivation", "_linear")
register_factorization(NTKDense, _ntk_linear, methods=_NTK_METHODS)
register_factorization(BaseNTKConv, _ntk_linear, methods=_NTK_METHODS)
register_factorization(keras.layers.Dense, _keras_dense)
for _cls in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
    register_factorization(_cls, _keras_conv, methods=("call", "convolution_op"))
for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_factorization(_cls, _keras_depthwise)
for _cls in (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D):
    register_factorization(_cls, _keras_separable)
for _cls in (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Conv3DTranspose):
    register_factorization(_cls, _keras_conv_transpose)
register_factorization(keras.layers.LayerNormalization, _keras_layer_norm)
register_factorization(keras.layers.RMSNormalization, _keras_rms_norm)
register_factorization(keras.layers.Embedding, _keras_embedding)
