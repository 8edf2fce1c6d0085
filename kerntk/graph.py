"""Feed-forward networks on a DAG (thesis Ch. 2, Def. 2.2.2-2.2.7, App. A.1/A.4/A.5).

A :class:`Graph` is a plain, JSON-serializable description of a network whose vertices are *groups
of neurons* (nodes) and whose edges are linear maps between groups. Every neuron ``v`` of a
non-input node computes (thesis Eq. 2.2)::

    f_v = sigma_v(f~_v) + sum_{skip edges (u, v)} f_u,
    f~_v = (1 / sqrt(in(v))) * sum_{u in S_in(v)} w_(u,v) f_u,       w ~ N(0, 1),

where ``in(v)`` is the neuron's *true* in-degree: the number of weights that reach it through all
of its incoming dense/conv edges after dropping. Inputs and outputs use the identity activation
(Remark 2.2.4). :class:`kerntk.layers.DAG` turns a graph into a Keras layer.

Nodes:
    ``Node(id, size, activation)``: ``size`` is an int (a vector of neurons) or a tuple such as
    ``(height, width, channels)`` (a channels-last feature map, for conv edges).

Edges (``Edge(src, dst, kind, ...)``):
    * ``"dense"``: every neuron of ``src`` (flattened) feeds every neuron of ``dst``; one weight
      per pair.
    * ``"conv"``: a convolution with shared weights (App. A.5, Eq. A.14) between two feature maps
      of equal rank; kernel ``kernel_size + (c_src, c_dst)``. **Zero padding** (``padding="same"``)
      follows the thesis (Eq. A.14 lets padded entries be 0 and A.15 divides by ``m * p`` at every
      position): the padded taps count in the in-degree, so ``in(v) = (live kernel taps) * (live
      channels)`` is the same at every spatial position, exactly like
      :class:`kerntk.layers.NTKConv2D`.
    * ``"skip"``: a non-trainable identity connection added after the activation (App. A.4, Eq.
      A.12); ``src`` and ``dst`` must have the same size. Skip edges carry no weights and do not
      count in ``in(v)``.

    A dense or conv edge may carry ``drop=p`` and an int ``seed``: each of its weights is removed
    once, i.i.d. with probability ``p``, by a mask drawn from ``numpy.random.default_rng(seed)``
    (App. A.1, "randomly dropped edges"; fixed for the life of the network, unlike dropout). For
    conv edges a whole shared weight (one kernel entry) is dropped.

Special cases: FCNs (:func:`fcn_graph`, Eq. A.4), DenseNets (:func:`densenet_graph`, Eq. A.5),
randomly dropped edges (``drop``), skip connections (``skip`` edges, ``fcn_graph(skip=True)``),
shared weights (:func:`cnn_graph`, Eq. A.15), random wirings (:func:`random_dag`) and bottleneck
neurons (Fig. 2.3: a node of size 1 between wide nodes; note that it sets the Def. 2.2.7 width to
its in-degree).

Layers and width (Def. 2.2.1, 2.2.5, 2.2.7): the layer index of a node is the longest path (over
all edges) from an input; the width ``m`` is the minimum per-neuron in-degree over the nodes in
layers 2 and up.

Validation (at construction, each error names the culprit): unknown node ids, duplicate ids, cycles
(one is printed), inputs with incoming edges, outputs not reachable from the inputs, non-input
nodes with no incoming dense/conv edge or with a neuron whose in-degree is zero after dropping,
size/channel mismatches of conv and skip edges, non-identity activations on outputs.

Example:
    >>> g = densenet_graph(in_dim=48, width=256, depth=3, drop=0.5, seed=0)
    >>> g.layer_indices()        # {'x': 0, 'h1': 1, 'h2': 2, 'y': 3}
    >>> g.width(), g.num_params()
    >>> print(g.to_dot())
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np

EDGE_KINDS = ("dense", "conv", "skip")
_IDENTITY = (None, "linear")

Size = Union[int, Tuple[int, ...]]


def _check_size(node_id: str, size) -> Tuple[int, ...]:
    shape = (size,) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else size
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0
                         for s in shape)):
        raise ValueError(f"Node {node_id!r}: `size` must be a positive int or a tuple of positive "
                         f"ints (channels last); got {size!r}.")
    return tuple(int(s) for s in shape)


@dataclass(frozen=True)
class Node:
    """A group of neurons sharing one activation.

    Args:
        id: unique string name.
        size: positive int (a vector of neurons) or tuple of positive ints, e.g.
            ``(h, w, channels)``.
        activation: Keras activation name (``None`` / ``"linear"`` is the identity). Inputs
            ignore it; outputs must be the identity (thesis Remark 2.2.4).
    """

    id: str
    size: Size
    activation: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Node ids must be non-empty strings; got {self.id!r}.")
        object.__setattr__(self, "size", _check_size(self.id, self.size))
        if self.activation is not None and not isinstance(self.activation, str):
            raise ValueError(f"Node {self.id!r}: `activation` must be a Keras activation name "
                             f"(str) or None so the graph stays JSON-serializable; got "
                             f"{self.activation!r}.")
        if self.activation is not None:
            try:
                keras.activations.get(self.activation)
            except ValueError:
                raise ValueError(f"Node {self.id!r}: unknown activation "
                                 f"{self.activation!r}.") from None

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.size  # normalized to a tuple in __post_init__

    @property
    def units(self) -> int:
        return int(np.prod(self.size))

    def to_config(self) -> dict:
        size = self.size[0] if len(self.size) == 1 else list(self.size)
        return {"id": self.id, "size": size, "activation": self.activation}


@dataclass(frozen=True)
class Edge:
    """A linear map (or identity skip) from node ``src`` to node ``dst``.

    Args:
        src, dst: node ids.
        kind: ``"dense"``, ``"conv"`` or ``"skip"`` (see the module docstring).
        drop: probability in ``[0, 1)`` of removing each weight once, at construction.
        seed: int seed of the drop mask; required when ``drop > 0``.
        kernel_size: conv only; int or tuple, one entry per spatial axis.
        strides: conv only; int or tuple.
        padding: conv only; ``"same"`` (zero padding, counted in the in-degree) or ``"valid"``.
    """

    src: str
    dst: str
    kind: str = "dense"
    drop: float = 0.0
    seed: Optional[int] = None
    kernel_size: Optional[Union[int, Tuple[int, ...]]] = None
    strides: Union[int, Tuple[int, ...]] = 1
    padding: str = "same"

    def __post_init__(self):
        if self.kind not in EDGE_KINDS:
            raise ValueError(f"Edge {self.name}: `kind` must be one of {EDGE_KINDS}; "
                             f"got {self.kind!r}.")
        drop = float(self.drop)
        if not (0.0 <= drop < 1.0):
            raise ValueError(f"Edge {self.name}: `drop` must be in [0, 1); got {self.drop!r}.")
        object.__setattr__(self, "drop", drop)
        if self.kind == "skip" and drop > 0:
            raise ValueError(f"Edge {self.name}: skip edges have no weights to drop.")
        seed_ok = isinstance(self.seed, (int, np.integer)) and not isinstance(self.seed, bool)
        if drop > 0 and not seed_ok:
            raise ValueError(f"Edge {self.name}: `seed` must be an int when drop > 0, so that the "
                             f"mask is reproducible; got {self.seed!r}.")
        if self.kind == "conv":
            if self.kernel_size is None:
                raise ValueError(f"Edge {self.name}: conv edges need `kernel_size`.")
            padding = str(self.padding).lower()
            if padding not in ("same", "valid"):
                raise ValueError(f"Edge {self.name}: `padding` must be 'same' or 'valid'; "
                                 f"got {self.padding!r}.")
            object.__setattr__(self, "padding", padding)
            for name in ("kernel_size", "strides"):
                value = getattr(self, name)
                if isinstance(value, list):
                    object.__setattr__(self, name, tuple(value))
        elif self.kernel_size is not None:
            raise ValueError(f"Edge {self.name}: `kernel_size` is only for conv edges.")

    @property
    def name(self) -> str:
        return f"{self.src!r}->{self.dst!r}"

    @property
    def weighted(self) -> bool:
        return self.kind != "skip"

    def to_config(self) -> dict:
        config = {"src": self.src, "dst": self.dst, "kind": self.kind}
        if self.drop > 0:
            config.update(drop=self.drop, seed=int(self.seed))
        elif self.seed is not None:
            config["seed"] = int(self.seed)
        if self.kind == "conv":
            ks = self.kernel_size
            st = self.strides
            config.update(kernel_size=ks if isinstance(ks, int) else list(ks),
                          strides=st if isinstance(st, int) else list(st), padding=self.padding)
        return config


def _spatial_tuple(edge: Edge, name: str, value, rank: int) -> Tuple[int, ...]:
    values = (value,) * rank if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != rank or any(isinstance(v, bool) or int(v) != v or v <= 0 for v in values):
        raise ValueError(f"Edge {edge.name}: `{name}` must be a positive int or a tuple of {rank} "
                         f"positive ints; got {value!r}.")
    return tuple(int(v) for v in values)


class Graph:
    """A feed-forward network architecture on a DAG of neuron groups (thesis Def. 2.2.2).

    Args:
        nodes: :class:`Node` objects or their dicts (``{"id", "size", "activation"}``).
        edges: :class:`Edge` objects or their dicts.
        inputs: ids of the input nodes, in the order the layer expects its input tensors.
        outputs: ids of the output nodes, in the order the layer returns them.

    The constructor validates everything (see the module docstring) and raises ``ValueError`` naming
    the offending node, edge or cycle. Graphs are immutable; :meth:`to_config` / :meth:`from_config`
    and :meth:`to_json` / :meth:`from_json` round-trip exactly.
    """

    def __init__(self, nodes: Iterable, edges: Iterable, inputs: Sequence[str],
                 outputs: Sequence[str]):
        self.nodes: Dict[str, Node] = {}
        for n in nodes:
            n = n if isinstance(n, Node) else Node(**n)
            if n.id in self.nodes:
                raise ValueError(f"Duplicate node id {n.id!r}.")
            self.nodes[n.id] = n
        self.edges: List[Edge] = [e if isinstance(e, Edge) else Edge(**e) for e in edges]
        if isinstance(inputs, str) or isinstance(outputs, str):
            raise ValueError("`inputs` and `outputs` must be lists of node ids, not a single "
                             "string.")
        self.inputs: List[str] = list(inputs)
        self.outputs: List[str] = list(outputs)
        self._masks: Dict[int, Optional[np.ndarray]] = {}
        self._validate()

    # ---------------------------------------------------------------- construction / serialization
    def to_config(self) -> dict:
        """Plain dict (JSON-serializable) with ``nodes``, ``edges``, ``inputs``, ``outputs``."""
        return {"nodes": [n.to_config() for n in self.nodes.values()],
                "edges": [e.to_config() for e in self.edges],
                "inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_config(cls, config: dict) -> "Graph":
        return cls(**config)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_config(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        return cls.from_config(json.loads(text))

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self.to_config() == other.to_config()

    def __repr__(self) -> str:
        return (f"Graph({len(self.nodes)} nodes, {len(self.edges)} edges, inputs={self.inputs}, "
                f"outputs={self.outputs})")

    # ------------------------------------------------------------------ validation
    def _validate(self):
        for role, ids in (("input", self.inputs), ("output", self.outputs)):
            if not ids:
                raise ValueError(f"A graph needs at least one {role} node.")
            for i in ids:
                if i not in self.nodes:
                    raise ValueError(f"Unknown {role} node id {i!r}; known ids: "
                                     f"{list(self.nodes)}.")
            if len(set(ids)) != len(ids):
                raise ValueError(f"Duplicate ids in {role}s: {ids}.")
        for e in self.edges:
            for end in (e.src, e.dst):
                if end not in self.nodes:
                    raise ValueError(f"Edge {e.name} refers to unknown node id {end!r}; known ids: "
                                     f"{list(self.nodes)}.")
            if e.src == e.dst:
                raise ValueError(f"Cycle: self-loop {e.src!r} -> {e.dst!r}.")
        seen = set()
        for e in self.edges:
            key = (e.src, e.dst, e.kind)
            if key in seen:
                raise ValueError(f"Duplicate {e.kind} edge {e.name}; merge them into one.")
            seen.add(key)
        self._order = self._topological_order()
        inputs = set(self.inputs)
        for e in self.edges:
            if e.dst in inputs:
                raise ValueError(f"Input node {e.dst!r} has an incoming edge {e.name}; inputs are "
                                 f"fixed by the data.")
        for o in self.outputs:
            act = self.nodes[o].activation
            if o not in inputs and act not in _IDENTITY:
                raise ValueError(f"Output node {o!r} has activation {act!r}; outputs must be the "
                                 f"identity (thesis Remark 2.2.4; a non-linear output breaks "
                                 f"transition to linearity).")
        # Structural reachability first: it names the output, which is the more useful message.
        reached = self._reachable_from_inputs(weighted_only=False)
        for o in self.outputs:
            if o not in reached:
                raise ValueError(f"Output node {o!r} is not reachable from the inputs "
                                 f"{self.inputs}.")
        for v in self._order:
            if v not in inputs and not any(e.dst == v and e.weighted for e in self.edges):
                raise ValueError(f"Non-input node {v!r} has no incoming dense/conv edge, so f~_v "
                                 f"is undefined (skip edges alone do not count).")
        self._check_shapes()
        # Per-neuron in-degrees after dropping (draws and caches every mask).
        self._in_degrees = {}
        for v in self._order:
            if v in inputs:
                continue
            deg = self._compute_in_degree(v)
            if deg.min() == 0:
                idx = np.unravel_index(int(np.argmin(deg)), deg.shape)
                dead = int((deg == 0).sum())
                raise ValueError(
                    f"Non-input node {v!r} has {dead} neuron(s) with no incoming edge after "
                    f"dropping (first at index {tuple(int(i) for i in idx)}); lower `drop`, change "
                    f"the seed or widen the sources.")
            self._in_degrees[v] = deg
        reached = self._reachable_from_inputs(weighted_only=True)
        for o in self.outputs:
            if o not in reached:
                raise ValueError(f"Output node {o!r} is not reachable from the inputs "
                                 f"{self.inputs} after dropping.")

    def _topological_order(self) -> List[str]:
        succ = {v: [] for v in self.nodes}
        for e in self.edges:
            succ[e.src].append(e.dst)
        state = {v: 0 for v in self.nodes}  # 0 new, 1 on stack, 2 done
        order: List[str] = []
        for root in self.nodes:
            if state[root]:
                continue
            stack = [(root, iter(succ[root]))]
            path = [root]
            state[root] = 1
            while stack:
                v, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    path.pop()
                    state[v] = 2
                    order.append(v)
                elif state[nxt] == 1:
                    cycle = path[path.index(nxt):] + [nxt]
                    raise ValueError("The graph has a cycle: " + " -> ".join(map(repr, cycle))
                                     + ".")
                elif state[nxt] == 0:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(succ[nxt])))
        return order[::-1]

    def _reachable_from_inputs(self, weighted_only: bool) -> set:
        reached = set(self.inputs)
        for v in self._order:
            if v in reached:
                continue
            for e in self.edges:
                if e.dst != v or e.src not in reached:
                    continue
                if weighted_only and (not e.weighted or self._live(e) == 0):
                    continue
                reached.add(v)
                break
        return reached

    def _conv_geometry(self, e: Edge):
        src, dst = self.nodes[e.src].shape, self.nodes[e.dst].shape
        rank = len(src) - 1
        ks = _spatial_tuple(e, "kernel_size", e.kernel_size, rank) if rank >= 1 else ()
        st = _spatial_tuple(e, "strides", e.strides, rank) if rank >= 1 else ()
        return src, dst, rank, ks, st

    def _check_shapes(self):
        for e in self.edges:
            src, dst = self.nodes[e.src].shape, self.nodes[e.dst].shape
            if e.kind == "skip":
                if src != dst:
                    raise ValueError(f"Skip edge {e.name}: shape mismatch, {e.src!r} has size "
                                     f"{src} but {e.dst!r} has size {dst}; identity skips need "
                                     f"equal sizes.")
            elif e.kind == "conv":
                if len(src) < 2 or len(src) != len(dst):
                    raise ValueError(f"Conv edge {e.name}: both ends must be feature maps "
                                     f"(spatial..., channels) of the same rank; got sizes {src} "
                                     f"and {dst}.")
                _, _, rank, ks, st = self._conv_geometry(e)
                expected = []
                for n, k, s in zip(src[:-1], ks, st):
                    expected.append(-(-n // s) if e.padding == "same" else (n - k) // s + 1)
                if any(x <= 0 for x in expected) or tuple(expected) != dst[:-1]:
                    raise ValueError(f"Conv edge {e.name}: spatial shape mismatch; a {e.padding!r} "
                                     f"convolution with kernel {ks} and strides {st} maps "
                                     f"{src[:-1]} to {tuple(expected)}, but {e.dst!r} has "
                                     f"spatial shape {dst[:-1]}.")

    # ------------------------------------------------------------------ masks and degrees
    def kernel_shape(self, edge: Union[int, Edge]) -> Tuple[int, ...]:
        """Shape of the weight tensor of a dense/conv edge: ``(units_src, units_dst)`` for dense,
        ``kernel_size + (c_src, c_dst)`` for conv."""
        e = self.edges[edge] if isinstance(edge, int) else edge
        if e.kind == "dense":
            return (self.nodes[e.src].units, self.nodes[e.dst].units)
        if e.kind == "conv":
            src, dst, _, ks, _ = self._conv_geometry(e)
            return ks + (src[-1], dst[-1])
        raise ValueError(f"Skip edge {e.name} has no kernel.")

    def mask(self, edge: Union[int, Edge]) -> Optional[np.ndarray]:
        """Fixed 0/1 float32 mask of the edge's kernel (``None`` when ``drop == 0``)."""
        i = edge if isinstance(edge, int) else self.edges.index(edge)
        if i not in self._masks:
            e = self.edges[i]
            if not e.weighted or e.drop == 0:
                self._masks[i] = None
            else:
                u = np.random.default_rng(int(e.seed)).random(self.kernel_shape(e))
                self._masks[i] = (u >= e.drop).astype(np.float32)
        return self._masks[i]

    def _live(self, e: Edge) -> int:
        m = self.mask(e)
        return int(np.prod(self.kernel_shape(e))) if m is None else int(m.sum())

    def _edge_in_degree(self, e: Edge) -> np.ndarray:
        """Per-neuron in-degree contributed by one edge, as an array of the destination's shape."""
        dst = self.nodes[e.dst].shape
        m = self.mask(e)
        ks = self.kernel_shape(e)
        if e.kind == "dense":
            col = np.full(ks[1], ks[0], np.int64) if m is None else m.sum(axis=0).astype(np.int64)
            return col.reshape(dst)
        # conv: every output position uses all taps (zero padding counts), so only channels vary.
        per_c = np.full(ks[-1], int(np.prod(ks[:-1])), np.int64) if m is None else \
            m.reshape(-1, ks[-1]).sum(axis=0).astype(np.int64)
        return np.broadcast_to(per_c, dst).copy()

    def _compute_in_degree(self, v: str) -> np.ndarray:
        deg = np.zeros(self.nodes[v].shape, np.int64)
        for e in self.edges:
            if e.dst == v and e.weighted:
                deg = deg + self._edge_in_degree(e)
        return deg

    # ------------------------------------------------------------------ introspection
    @property
    def topological_order(self) -> List[str]:
        """Node ids, each after all of its predecessors."""
        return list(self._order)

    def in_edges(self, v: str) -> List[Edge]:
        return [e for e in self.edges if e.dst == v]

    def in_degrees(self) -> Dict[str, np.ndarray]:
        """Per-neuron in-degree ``in(v)`` after dropping, for every non-input node: an int array of
        the node's shape (thesis ``m_i^(l)``)."""
        return {v: d.copy() for v, d in self._in_degrees.items()}

    def layer_indices(self) -> Dict[str, int]:
        """Layer index of every node: the longest path from an input (Def. 2.2.1, 2.2.5)."""
        p = {v: 0 for v in self.nodes}
        for v in self._order:
            for e in self.in_edges(v):
                p[v] = max(p[v], p[e.src] + 1)
        return p

    @property
    def depth(self) -> int:
        """``L``: the largest layer index (``L + 1`` layers in all)."""
        return max(self.layer_indices().values())

    def width(self) -> Optional[int]:
        """Network width ``m`` (Def. 2.2.7): the minimum in-degree over neurons in layers >= 2;
        ``None`` when the graph has no layer >= 2."""
        layers = self.layer_indices()
        degs = [int(d.min()) for v, d in self._in_degrees.items() if layers[v] >= 2]
        return min(degs) if degs else None

    def num_params(self) -> int:
        """Number of live (not dropped) trainable weights."""
        return sum(self._live(e) for e in self.edges if e.weighted)

    def summary(self) -> str:
        """A text table: node, size, activation, layer, in-degree range, incoming edges."""
        layers = self.layer_indices()
        lines = [f"{'node':<12} {'size':<16} {'activation':<10} {'layer':>5} {'in-degree':>13}  "
                 f"incoming edges"]
        for v in sorted(self._order, key=lambda v: (layers[v], self._order.index(v))):
            n = self.nodes[v]
            role = " (input)" if v in self.inputs else (" (output)" if v in self.outputs else "")
            if v in self._in_degrees:
                d = self._in_degrees[v]
                deg = str(int(d.min())) if d.min() == d.max() else f"{int(d.min())}..{int(d.max())}"
            else:
                deg = "-"
            incoming = ", ".join(self._edge_label(e) for e in self.in_edges(v)) or "-"
            act = "identity" if n.activation in _IDENTITY else n.activation
            lines.append(f"{v + role:<12} {str(n.size):<16} {act:<10} {layers[v]:>5} {deg:>13}  "
                         f"{incoming}")
        lines.append(f"width m = {self.width()}, depth L = {self.depth}, "
                     f"live parameters = {self.num_params()}")
        return "\n".join(lines)

    def _edge_label(self, e: Edge) -> str:
        label = e.src + ":" + e.kind
        if e.kind == "conv":
            label += f"{e.kernel_size}"
        if e.drop:
            label += f" drop={e.drop:g}"
        return label

    def to_dot(self, name: str = "dag") -> str:
        """Graphviz dot source (render with ``dot -Tpng``); nodes are ranked by layer index."""
        layers = self.layer_indices()
        lines = [f"digraph {json.dumps(name)} {{", "  rankdir=LR;"]
        for v in self._order:
            n = self.nodes[v]
            shape = "box" if v in self.inputs or v in self.outputs else "ellipse"
            act = "" if n.activation in _IDENTITY else f"\\n{n.activation}"
            lines.append(f"  {json.dumps(v)} [shape={shape}, label=\"{v}\\n{n.size}{act}\\n"
                         f"layer {layers[v]}\"];")
        for e in self.edges:
            attrs = []
            if e.kind == "skip":
                attrs.append("style=dashed")
            label = e.kind if e.kind != "dense" else ""
            if e.kind == "conv":
                label += f" {e.kernel_size}"
            if e.drop:
                label += f" drop={e.drop:g}"
            if label.strip():
                attrs.append(f"label={json.dumps(label.strip())}")
            lines.append(f"  {json.dumps(e.src)} -> {json.dumps(e.dst)}"
                         + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
        for p in sorted(set(layers.values())):
            same = " ".join(json.dumps(v) for v in self._order if layers[v] == p)
            lines.append(f"  {{rank=same; {same}}}")
        lines.append("}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _edge_seed(seed: Optional[int], i: int, drop: float) -> Optional[int]:
    if drop == 0:
        return None
    if seed is None:
        raise ValueError("`seed` must be an int when `drop > 0` so that the masks are "
                         "reproducible.")
    return int(seed) * 100_003 + i


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def fcn_graph(in_dim: int, widths: Union[int, Sequence[int]], out_dim: int = 1, *,
              depth: Optional[int] = None, activation: str = "relu", drop: float = 0.0,
              skip: bool = False, seed: Optional[int] = None) -> Graph:
    """Fully connected network (thesis Eq. A.4) as a graph ``x -> h1 -> ... -> y``.

    Args:
        in_dim: input size.
        widths: hidden sizes, or one int repeated ``depth - 1`` times.
        out_dim: output size.
        depth: number of weight layers ``L`` when ``widths`` is an int.
        activation: hidden activation.
        drop: drop probability of every weight (App. A.1).
        skip: add identity skip edges ``h_(l-1) -> h_l`` between equal-size hidden nodes (Eq. A.12).
        seed: seed of the drop masks (required when ``drop > 0``).
    """
    _positive("in_dim", in_dim)
    _positive("out_dim", out_dim)
    if isinstance(widths, (int, np.integer)):
        widths = [_positive("widths", widths)] * (_positive("depth", depth or 2) - 1)
    widths = [_positive("widths", w) for w in widths]
    ids = ["x"] + [f"h{i + 1}" for i in range(len(widths))] + ["y"]
    nodes = [Node("x", in_dim)] + [Node(f"h{i + 1}", w, activation) for i, w in enumerate(widths)]
    nodes.append(Node("y", out_dim))
    edges = [Edge(a, b, "dense", drop, _edge_seed(seed, i, drop))
             for i, (a, b) in enumerate(zip(ids[:-1], ids[1:]))]
    if skip:
        edges += [Edge(ids[i], ids[i + 1], "skip") for i in range(1, len(widths))
                  if widths[i - 1] == widths[i]]
    return Graph(nodes, edges, ["x"], ["y"])


def densenet_graph(in_dim: int, width: int, depth: int = 3, out_dim: int = 1, *,
                   activation: str = "relu", drop: float = 0.0,
                   seed: Optional[int] = None) -> Graph:
    """DenseNet (thesis Eq. A.5-A.6): ``depth - 1`` hidden nodes of ``width`` and a linear output;
    every non-input node receives a dense edge from the input and from every earlier hidden node, so
    its in-degree is the total size of all previous nodes (times ``1 - drop`` on average).

    With ``drop=0.5`` and ``depth=3`` this is the network of thesis Fig. 2.2.
    """
    _positive("in_dim", in_dim)
    _positive("width", width)
    _positive("depth", depth)
    _positive("out_dim", out_dim)
    ids = ["x"] + [f"h{i + 1}" for i in range(depth - 1)] + ["y"]
    nodes = [Node("x", in_dim)] + [Node(v, width, activation) for v in ids[1:-1]]
    nodes.append(Node("y", out_dim))
    edges = []
    for j in range(1, len(ids)):
        for i in range(j):
            edges.append(Edge(ids[i], ids[j], "dense", drop, _edge_seed(seed, len(edges), drop)))
    return Graph(nodes, edges, ["x"], ["y"])


def random_dag(in_dim: int, num_nodes: int, width: int, out_dim: int = 1, *,
               edge_prob: float = 0.5, activation: str = "relu", drop: float = 0.0,
               seed: int = 0) -> Graph:
    """Erdős–Rényi DAG of ``num_nodes`` hidden nodes (seeded, RandWire-like).

    Hidden nodes ``n0..n{k-1}`` are in a fixed order; each pair ``(ni, nj)``, ``i < j``, gets a
    dense edge with probability ``edge_prob``. A hidden node with no predecessor is fed by the
    input ``x`` and one with no successor feeds the output ``y``, so every node lies on an
    input-output path.

    Args:
        in_dim, out_dim: input / output sizes.
        num_nodes: number of hidden nodes (>= 1).
        width: size of every hidden node.
        edge_prob: edge probability in ``[0, 1]``.
        activation: hidden activation.
        drop: per-weight drop probability of every edge (masks seeded from ``seed``).
        seed: int seed of the structure and the masks.
    """
    _positive("in_dim", in_dim)
    _positive("num_nodes", num_nodes)
    _positive("width", width)
    _positive("out_dim", out_dim)
    if not 0.0 <= float(edge_prob) <= 1.0:
        raise ValueError(f"`edge_prob` must be in [0, 1]; got {edge_prob!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an int; got {seed!r}.")
    rng = np.random.default_rng(seed)
    hidden = [f"n{i}" for i in range(num_nodes)]
    pairs = [(hidden[i], hidden[j]) for j in range(num_nodes) for i in range(j)
             if rng.random() < edge_prob]
    has_pred = {b for _, b in pairs}
    has_succ = {a for a, _ in pairs}
    pairs = [("x", v) for v in hidden if v not in has_pred] + pairs
    pairs += [(v, "y") for v in hidden if v not in has_succ]
    nodes = [Node("x", in_dim)] + [Node(v, width, activation) for v in hidden]
    nodes.append(Node("y", out_dim))
    edges = [Edge(a, b, "dense", drop, _edge_seed(seed, i, drop)) for i, (a, b) in enumerate(pairs)]
    return Graph(nodes, edges, ["x"], ["y"])


def cnn_graph(input_shape: Sequence[int], channels: int, depth: int = 3, out_dim: int = 1, *,
              kernel_size: int = 3, activation: str = "relu", skip: bool = False,
              drop: float = 0.0, seed: Optional[int] = None) -> Graph:
    """Convolutional network with shared weights (thesis Eq. A.15): ``depth - 1`` "same"-padded conv
    nodes of ``channels`` and a dense linear output over the whole last feature map.

    Args:
        input_shape: ``(h, w, c)`` or ``(steps, c)`` (channels last).
        channels: channels of every hidden node.
        skip: identity skip edges between consecutive hidden nodes (Eq. A.12).
        kernel_size, activation, drop, seed: as in :func:`fcn_graph`.
    """
    shape = _check_size("x", tuple(input_shape))
    if len(shape) < 2:
        raise ValueError(f"`input_shape` must be (spatial..., channels); got {input_shape!r}.")
    _positive("channels", channels)
    _positive("depth", depth)
    hid = shape[:-1] + (int(channels),)
    ids = ["x"] + [f"c{i + 1}" for i in range(depth - 1)] + ["y"]
    nodes = [Node("x", shape)] + [Node(v, hid, activation) for v in ids[1:-1]]
    nodes.append(Node("y", _positive("out_dim", out_dim)))
    edges = [Edge(a, b, "conv", drop, _edge_seed(seed, i, drop), kernel_size=kernel_size)
             for i, (a, b) in enumerate(zip(ids[:-2], ids[1:-1]))]
    edges.append(Edge(ids[-2], "y", "dense", drop, _edge_seed(seed, len(edges), drop)))
    if skip:
        edges += [Edge(ids[i], ids[i + 1], "skip") for i in range(1, depth - 1)]
    return Graph(nodes, edges, ["x"], ["y"])


__all__ = ["Edge", "Graph", "Node", "cnn_graph", "densenet_graph", "fcn_graph", "random_dag"]
