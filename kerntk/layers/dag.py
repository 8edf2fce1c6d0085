"""Keras layer of a feed-forward network on a DAG (thesis Ch. 2, Def. 2.2.2)."""

from __future__ import annotations

from typing import Dict, Optional, Union

import keras
import numpy as np
from keras import ops

from kerntk.graph import Graph
from kerntk.layers.parameterization import check_seed


@keras.saving.register_keras_serializable(package="kerntk")
class DAG(keras.layers.Layer):
    """A whole feed-forward network on a directed acyclic graph, as one layer (thesis Eq. 2.2).

    For every non-input node ``v`` of ``graph`` (a :class:`kerntk.graph.Graph`), in topological
    order::

        f~_v = (1 / sqrt(in(v))) * sum_{dense/conv edges e = (u, v)} W_e (x) (M_e * f_u)
        f_v  = activation_v(f~_v) + sum_{skip edges (u, v)} f_u

    where ``W_e ~ N(0, 1)`` is the edge's trainable kernel, ``M_e`` its fixed 0/1 drop mask
    (applied to the kernel), ``(x)`` a matmul (dense, source flattened) or a convolution (conv,
    shared weights, zero padding), and ``in(v)`` the per-neuron in-degree after dropping, summed
    over all incoming edges (see :mod:`kerntk.graph`; padded conv taps count). Inputs and outputs
    are the identity. There are no biases: this is the thesis' DAG network in NTK parameterization
    with ``W_std = 1``, so a chain graph equals a stack of ``NTKDense(..., use_bias=False)`` with
    the same kernels. Dropped weights stay in the kernels but get no gradient.

    Args:
        graph: a :class:`kerntk.graph.Graph` or its ``to_config()`` dict.
        seed: optional int; edge ``i`` (in ``graph.edges`` order) initializes its kernel with seed
            ``seed + i``.

    Input: one tensor ``(batch, *size)`` per input node (a list, in ``graph.inputs`` order, when
    there are several). Output: ``(batch, *size)`` of the output node, or a list in
    ``graph.outputs`` order.

    Example:
        >>> from kerntk.graph import densenet_graph
        >>> layer = DAG(densenet_graph(in_dim=48, width=256, depth=3, drop=0.5, seed=0))
        >>> y = layer(keras.random.normal((8, 48)))            # (8, 1)
        >>> print(layer.graph.summary())

    Attributes: ``graph``; ``kernels`` (dict edge index -> variable, weighted edges only);
    ``edge_masks`` (dict edge index -> numpy mask or ``None``); ``inv_sqrt_in_degree`` (dict node
    id -> float32 numpy array of the node's shape).
    """

    def __init__(self, graph: Union[Graph, dict], seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(graph, dict):
            graph = Graph.from_config(graph)
        if not isinstance(graph, Graph):
            raise ValueError(f"`graph` must be a kerntk.graph.Graph or its config dict; "
                             f"got {type(graph).__name__}.")
        self.seed = check_seed(seed)
        self.graph = graph
        self._activations = {v: keras.activations.get(n.activation)
                             for v, n in graph.nodes.items()}
        self.edge_masks: Dict[int, Optional[np.ndarray]] = {
            i: graph.mask(i) for i, e in enumerate(graph.edges) if e.weighted}
        self.inv_sqrt_in_degree: Dict[str, np.ndarray] = {
            v: (1.0 / np.sqrt(d.astype(np.float64))).astype(np.float32)
            for v, d in graph.in_degrees().items()}

    def _input_shapes(self, input_shape) -> list:
        if len(self.graph.inputs) == 1 and not isinstance(input_shape[0], (list, tuple)):
            return [input_shape]
        shapes = list(input_shape)
        if len(shapes) != len(self.graph.inputs):
            raise ValueError(f"DAG expects {len(self.graph.inputs)} input tensors (for "
                             f"{self.graph.inputs}); got {len(shapes)}.")
        return shapes

    def build(self, input_shape):
        for v, shape in zip(self.graph.inputs, self._input_shapes(input_shape)):
            expected = self.graph.nodes[v].shape
            if tuple(shape[1:]) != expected:
                raise ValueError(f"Input node {v!r} has size {expected}, but its input tensor has "
                                 f"shape {tuple(shape)} (expected (batch, *{expected})).")
        self.kernels = {}
        for i, e in enumerate(self.graph.edges):
            if not e.weighted:
                continue
            self.kernels[i] = self.add_weight(
                name=f"kernel_{i}_{e.src}_to_{e.dst}", shape=self.graph.kernel_shape(i),
                initializer=keras.initializers.RandomNormal(
                    0.0, 1.0, seed=None if self.seed is None else self.seed + i))

    def _edge_output(self, i: int, src):
        e = self.graph.edges[i]
        kernel = self.kernels[i]
        mask = self.edge_masks[i]
        if mask is not None:
            kernel = kernel * ops.cast(mask, kernel.dtype)
        if e.kind == "dense":
            src_node, dst_node = self.graph.nodes[e.src], self.graph.nodes[e.dst]
            if len(src_node.shape) > 1:
                src = ops.reshape(src, (-1, src_node.units))
            out = ops.matmul(src, kernel)
            if len(dst_node.shape) > 1:
                out = ops.reshape(out, (-1,) + dst_node.shape)
            return out
        return ops.conv(src, kernel, strides=e.strides, padding=e.padding,
                        data_format="channels_last")

    def call(self, inputs):
        xs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(xs) != len(self.graph.inputs):
            raise ValueError(f"DAG expects {len(self.graph.inputs)} input tensors (for "
                             f"{self.graph.inputs}); got {len(xs)}.")
        values = dict(zip(self.graph.inputs, xs))
        for v in self.graph.topological_order:
            if v in values:
                continue
            z, skips = None, []
            for i, e in enumerate(self.graph.edges):
                if e.dst != v:
                    continue
                if not e.weighted:
                    skips.append(values[e.src])
                    continue
                term = self._edge_output(i, values[e.src])
                z = term if z is None else z + term
            z = z * ops.cast(self.inv_sqrt_in_degree[v], z.dtype)
            f = self._activations[v](z) if v not in self.graph.outputs else z
            for s in skips:
                f = f + s
            values[v] = f
        outs = [values[v] for v in self.graph.outputs]
        return outs[0] if len(outs) == 1 else outs

    def compute_output_shape(self, input_shape):
        batch = self._input_shapes(input_shape)[0][0]
        shapes = [(batch,) + self.graph.nodes[v].shape for v in self.graph.outputs]
        return shapes[0] if len(shapes) == 1 else shapes

    def get_config(self):
        config = super().get_config()
        config.update(graph=self.graph.to_config(), seed=self.seed)
        return config
