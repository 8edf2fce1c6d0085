"""Layer factorizations: how a layer tells the NTK engine the structure of its per-example gradient.

The structured NTK (SPEC §3) never forms per-example gradients of a layer computing
``z = m_W lin(a, W) + m_b b`` followed by any ``out = post(z)``: the gradient of output ``k``
of example ``i`` is ``m_W sum_s a_is d_is^T`` with ``a`` the layer's input (what multiplies the
weight) and ``d = dL/dz`` the cotangent of the pre-activation, so its Gram is formed from ``A``
and ``D`` alone (:mod:`kerntk.ntk.blocks`). This module says which layers have that structure.

Protocol
--------
A *rule* is registered for a layer class with :func:`register_factorization`. Called on a built
layer, it returns a :class:`Factorization`, or a ``str`` saying why this instance has none (the
engine then uses the exact per-example Jacobian for its variables). A :class:`Factorization`
gives:

* ``kind``: how the Gram block is formed: ``"dense"`` (``z = a W`` on the last axis of an input
  of any rank) or ``"conv"`` (a channels_last 1-D/2-D convolution without dilation, with
  ``kernel_size``, ``strides`` and ``padding``); the kinds are the keys of
  :data:`kerntk.ntk.blocks.BLOCKS`.
* ``kernel`` / ``bias``: the variables the layer owns in the factorization (``bias`` may be
  ``None``); trainable variables of the layer not named here use the exact Jacobian.
* ``preactivation``: ``a -> z``, the linear part; the engine records ``a`` and ``z`` and takes the
  cotangents ``D`` at ``z``.
* ``postactivation``: ``z -> output`` (anything, e.g. an activation); the layer's ``call`` must
  equal ``postactivation(preactivation(a))``.
* ``kernel_multiplier`` / ``bias_multiplier``: ``m_W``, ``m_b`` (1 for a standard layer).

Exactness
---------
Rules are looked up through the class's MRO, but a fast path must prove it applies: a rule
describes the ``call`` of the class it is registered for (and the other ``methods`` named at
registration), so a subclass that overrides any of them does not inherit the rule and falls back
to the exact Jacobian. The engine further requires each structured layer to be called exactly
once per forward pass (checked while tracing). :func:`explain` tells which layers of a model are
structured and why the others are not.

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
``Conv1D`` and ``Conv2D`` are registered below through the same function.
"""

from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import keras
from keras import ops

from kerntk import _keras_compat as compat
from kerntk.layers import BaseNTKConv, NTKDense
from kerntk.ntk.blocks import BLOCKS

__all__ = ["Factorization", "LayerReport", "explain", "factorization_of",
           "register_factorization", "registered_rule"]

Rule = Callable[[keras.layers.Layer], Union["Factorization", str]]


def _identity(z):
    return z


@dataclass(frozen=True)
class Factorization:
    """The per-example gradient structure of one layer instance (see the module docstring)."""

    kind: str
    kernel: Any
    preactivation: Callable
    bias: Any = None
    postactivation: Callable = _identity
    kernel_multiplier: float = 1.0
    bias_multiplier: float = 1.0
    kernel_size: tuple = ()
    strides: tuple = ()
    padding: str = "valid"

    def __post_init__(self):
        if self.kind not in BLOCKS:
            raise ValueError(f"Factorization kind must be one of {tuple(BLOCKS)}; got "
                             f"{self.kind!r}.")
        if not isinstance(self.kernel, keras.Variable):
            raise TypeError(f"Factorization.kernel must be the layer's keras.Variable; got "
                            f"{type(self.kernel).__name__}.")
        if self.bias is not None and not isinstance(self.bias, keras.Variable):
            raise TypeError(f"Factorization.bias must be a keras.Variable or None; got "
                            f"{type(self.bias).__name__}.")
        for name in ("preactivation", "postactivation"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Factorization.{name} must be callable.")
        for name in ("kernel_multiplier", "bias_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"Factorization.{name} must be a real number; got {value!r}.")
            object.__setattr__(self, name, float(value))
        if self.kind == "conv":
            size, strides = tuple(self.kernel_size), tuple(self.strides)
            if len(size) not in (1, 2) or len(strides) != len(size):
                raise ValueError(f"A 'conv' Factorization needs a 1-D or 2-D kernel_size and "
                                 f"strides of the same rank; got kernel_size={size}, "
                                 f"strides={strides}.")
            if self.padding not in ("valid", "same"):
                raise ValueError(f"A 'conv' Factorization needs padding 'valid' or 'same'; got "
                                 f"{self.padding!r}.")
            object.__setattr__(self, "kernel_size", tuple(int(k) for k in size))
            object.__setattr__(self, "strides", tuple(int(s) for s in strides))


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
        rule: ``rule(layer) -> Factorization | str`` for a built instance; a ``str`` is the
            reason this instance has no factorization (e.g. an unsupported option).
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
                        f"rule(layer) -> Factorization | str; got {type(rule).__name__}.")
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


def factorization_of(layer) -> Tuple[Optional[Factorization], str]:
    """``(factorization, "")`` for a layer the engine can factorize, else ``(None, reason)``."""
    cls = type(layer)
    reg = next((_RULES[k] for k in cls.__mro__ if k in _RULES), None)
    if reg is None:
        return None, f"no factorization registered for {cls.__name__} or its base classes"
    for name in reg.methods:
        if getattr(cls, name, None) is not getattr(reg.cls, name, None):
            return None, (f"{cls.__name__} overrides `{name}` of {reg.cls.__name__}, whose "
                          f"registered factorization describes {reg.cls.__name__}.{name} "
                          f"(register a rule for {cls.__name__})")
    if compat.is_lora_or_quantized(layer):
        return None, "LoRA or quantized layers are not factorized"
    result = reg.rule(layer)
    if isinstance(result, str):
        return None, result
    if not isinstance(result, Factorization):
        raise TypeError(f"The factorization rule registered for {reg.cls.__name__} returned "
                        f"{type(result).__name__}; it must return a "
                        f"kerntk.ntk.registry.Factorization or a str (why it does not apply).")
    return result, ""


# ------------------------------------------------------------------------- use by the engine


@dataclass
class Site:
    """One factorized layer of a model, with the positions of its variables in
    ``model.trainable_variables`` and the ``(a, z)`` pairs recorded by :func:`capture`."""

    layer: keras.layers.Layer
    fact: Factorization
    kernel_index: int
    bias_index: Optional[int]
    records: List[tuple] = field(default_factory=list)


def _site(layer, index_of: Dict[int, int]) -> Tuple[Optional[Site], str]:
    fact, reason = factorization_of(layer)
    if fact is None:
        return None, reason
    if id(fact.kernel) not in index_of:
        return None, "its kernel is not trainable"
    bias_index = index_of.get(id(fact.bias)) if fact.bias is not None else None
    return Site(layer, fact, index_of[id(fact.kernel)], bias_index), ""


def find_sites(model, index_of: Dict[int, int]) -> List[Site]:
    """The factorizable layers of ``model``; ``index_of`` maps ``id(variable)`` to its position
    in ``model.trainable_variables``."""
    sites = []
    for layer in compat.flatten_layers(model, include_self=False):
        if not layer.trainable_variables:
            continue
        site, _ = _site(layer, index_of)
        if site is not None:
            sites.append(site)
    return sites


@contextlib.contextmanager
def capture(sites: List[Site]) -> Iterator[None]:
    """Run each site's layer as ``post(pre(a))``, recording ``(a, z)`` in ``site.records``.
    Restored on exit, even on error."""
    with contextlib.ExitStack() as stack:
        for site in sites:
            def call(inputs, *args, _site=site, **kwargs):
                z = _site.fact.preactivation(inputs)
                _site.records.append((inputs, z))
                return _site.fact.postactivation(z)

            stack.enter_context(compat.override(site.layer, "call", call))
        yield


def coverage(sites: List[Site], n_vars: int):
    """``(active, rest)``: the sites called exactly once by the traced forward pass, and the
    indices of the trainable variables they do not cover."""
    active = [s for s in sites if len(s.records) == 1]
    covered = set()
    for s in active:
        covered.add(s.kernel_index)
        if s.bias_index is not None:
            covered.add(s.bias_index)
    return active, [i for i in range(n_vars) if i not in covered]


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

    One :class:`LayerReport` per layer owning trainable variables. A structured layer whose
    factorization leaves some of its trainable variables out says so in ``reason``. Whether each
    structured layer is called exactly once per forward pass is checked when the kernel is
    traced (a layer called twice falls back too).
    """
    tvars = model.trainable_variables
    index_of = {id(v): i for i, v in enumerate(tvars)}
    reports = []
    for layer in compat.flatten_layers(model, include_self=True):
        own = compat.own_trainable_variables(layer)
        if not own:
            continue
        site, reason = _site(layer, index_of)
        kind = None
        if site is not None:
            kind = site.fact.kind
            covered = {id(site.fact.kernel), id(site.fact.bias)}
            rest = [v.path for v in own if id(v) not in covered]
            if rest:
                reason = f"these variables use the exact Jacobian: {', '.join(rest)}"
        reports.append(LayerReport(layer.name, type(layer).__name__, site is not None, kind,
                                   reason))
    return reports


# ------------------------------------------------------------------ kerntk's and Keras' layers


def _ntk_linear(layer) -> Union[Factorization, str]:
    """kerntk's NTK-parameterized layers: ``post(m_W lin(a, W) + m_b b)``."""
    geometry = {}
    if isinstance(layer, BaseNTKConv):
        if len(layer.kernel_size) not in (1, 2):
            return "only 1-D and 2-D convolutions are factorized"
        geometry = dict(kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
                        padding=layer.padding)
    return Factorization("conv" if geometry else "dense", layer.kernel, layer.preactivation,
                         bias=layer.bias, postactivation=layer.postactivation,
                         kernel_multiplier=float(layer.kernel_multiplier),
                         bias_multiplier=float(layer.bias_multiplier), **geometry)


def _keras_dense(layer) -> Factorization:
    def pre(a):
        z = ops.matmul(a, layer.kernel)
        return z + layer.bias if layer.bias is not None else z
    return Factorization("dense", layer.kernel, pre, bias=layer.bias,
                         postactivation=layer.activation)


def _keras_conv(layer) -> Union[Factorization, str]:
    if layer.data_format != "channels_last":
        return "only channels_last convolutions are factorized"
    if layer.groups != 1:
        return "grouped convolutions are not factorized"
    if any(r != 1 for r in layer.dilation_rate):
        return "dilated convolutions are not factorized"
    if layer.padding not in ("valid", "same"):
        return f"padding {layer.padding!r} is not factorized"

    def pre(a):
        z = layer.convolution_op(a, layer.kernel)
        return z + layer.bias if layer.bias is not None else z
    return Factorization("conv", layer.kernel, pre, bias=layer.bias,
                         postactivation=layer.activation, kernel_size=tuple(layer.kernel_size),
                         strides=tuple(layer.strides), padding=layer.padding)


_NTK_METHODS = ("call", "preactivation", "_linear")
register_factorization(NTKDense, _ntk_linear, methods=_NTK_METHODS)
register_factorization(BaseNTKConv, _ntk_linear, methods=_NTK_METHODS)
register_factorization(keras.layers.Dense, _keras_dense)
register_factorization(keras.layers.Conv1D, _keras_conv, methods=("call", "convolution_op"))
register_factorization(keras.layers.Conv2D, _keras_conv, methods=("call", "convolution_op"))
