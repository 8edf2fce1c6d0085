"""DAG wiring (thesis Ch. 2, Def. 2.2.2-2.2.7, App. A.1/A.4/A.5): graph spec, DAG layer, helpers."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from kerntk.graph import Edge, Graph, Node, cnn_graph, densenet_graph, fcn_graph, random_dag
from kerntk.layers import DAG, NTKDense
from tests.layer_harness import run_layer_test


def _np(x):
    return keras.ops.convert_to_numpy(x)


# ---------------------------------------------------------------------------- exact forward passes
def test_fcn_graph_equals_ntkdense_stack_with_same_weights():
    graph = fcn_graph(7, [16, 12], out_dim=3, activation="relu")
    dag = DAG(graph, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 7)).astype("float32")
    y_dag = _np(dag(x))

    stack = keras.Sequential([keras.Input((7,)),
                              NTKDense(16, activation="relu", use_bias=False),
                              NTKDense(12, activation="relu", use_bias=False),
                              NTKDense(3, use_bias=False)])
    kernels = [dag.kernels[i] for i in range(len(graph.edges))]
    for layer, kernel in zip(stack.layers, kernels):
        layer.kernel.assign(kernel.numpy())
    np.testing.assert_array_equal(y_dag, _np(stack(x)))


def test_cnn_graph_equals_ntkconv_stack_with_same_weights():
    from kerntk.layers import NTKConv2D

    graph = cnn_graph((6, 6, 3), channels=4, depth=3, out_dim=2)
    dag = DAG(graph, seed=0)
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 3)).astype("float32")
    y_dag = _np(dag(x))
    stack = keras.Sequential([keras.Input((6, 6, 3)),
                              NTKConv2D(4, 3, padding="same", activation="relu", use_bias=False),
                              NTKConv2D(4, 3, padding="same", activation="relu", use_bias=False),
                              keras.layers.Flatten(), NTKDense(2, use_bias=False)])
    convs = [layer for layer in stack.layers if hasattr(layer, "kernel")]
    for layer, i in zip(convs, sorted(dag.kernels)):
        layer.kernel.assign(dag.kernels[i].numpy())
    np.testing.assert_allclose(y_dag, _np(stack(x)), rtol=1e-6, atol=1e-6)


def _reference_forward(graph, kernels, masks, inputs):
    """Neuron-by-neuron numpy evaluation of thesis Eq. 2.2: for every neuron, list its live incoming
    (weight, source value) pairs over all edges, then divide the sum by sqrt(len(list))."""
    acts = {None: lambda z: z, "linear": lambda z: z, "relu": lambda z: np.maximum(z, 0.0),
            "tanh": np.tanh}
    values = dict(inputs)
    counts = {}
    for v in graph.topological_order:
        if v in values:
            continue
        shape = graph.nodes[v].shape
        batch = next(iter(inputs.values())).shape[0]
        pre = np.zeros((batch,) + shape)
        count = np.zeros(shape, int)
        for idx in np.ndindex(*shape):
            terms = []
            for i, e in enumerate(graph.edges):
                if e.dst != v or e.kind == "skip":
                    continue
                k = kernels[i].astype(np.float64)
                m = np.ones_like(k) if masks[i] is None else masks[i]
                src = values[e.src]
                if e.kind == "dense":
                    flat = src.reshape(batch, -1)
                    col = int(np.ravel_multi_index(idx, shape))
                    terms += [(k[r, col], flat[:, r]) for r in range(flat.shape[1])
                              if m[r, col]]
                else:  # 1-D "same" conv, odd kernel: zero-padded taps still count
                    t, c_out = idx
                    width, c_in = src.shape[1], src.shape[2]
                    half = k.shape[0] // 2
                    for tap in range(k.shape[0]):
                        pos = t + tap - half
                        for c in range(c_in):
                            if m[tap, c, c_out]:
                                val = src[:, pos, c] if 0 <= pos < width else np.zeros(batch)
                                terms.append((k[tap, c, c_out], val))
            count[idx] = len(terms)
            pre[(slice(None),) + idx] = sum(w * f for w, f in terms) / np.sqrt(len(terms))
        out = pre if v in graph.outputs else acts[graph.nodes[v].activation](pre)
        for e in graph.edges:
            if e.dst == v and e.kind == "skip":
                out = out + values[e.src]
        values[v] = out
        counts[v] = count
    return values, counts


def _hand_made_graph():
    nodes = [Node("x", 3), Node("s", (5, 2)), Node("a", 4, "tanh"), Node("b", 4, "relu"),
             Node("c", (5, 3), "relu"), Node("y", 2)]
    edges = [Edge("x", "a", drop=0.5, seed=1),
             Edge("x", "b"), Edge("a", "b", drop=0.5, seed=2), Edge("a", "b", "skip"),
             Edge("s", "c", "conv", drop=0.4, seed=3, kernel_size=3),
             Edge("b", "y"), Edge("c", "y", drop=0.3, seed=4), Edge("x", "y", drop=0.5, seed=5)]
    return Graph(nodes, edges, inputs=["x", "s"], outputs=["y"])


def test_per_neuron_scaling_matches_numpy_for_unequal_in_degrees():
    graph = _hand_made_graph()
    dag = DAG(graph, seed=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype("float32")
    s = rng.standard_normal((4, 5, 2)).astype("float32")
    y = _np(dag([x, s]))
    kernels = {i: k.numpy() for i, k in dag.kernels.items()}
    masks = {i: graph.mask(i) for i in kernels}
    values, counts = _reference_forward(graph, kernels, masks, {"x": x, "s": s})

    # The graph really has unequal per-neuron in-degrees, within and across nodes.
    for v in ("a", "b", "c"):
        assert len(np.unique(counts[v])) > 1, v
    for v, deg in graph.in_degrees().items():
        np.testing.assert_array_equal(deg, counts[v])
    np.testing.assert_allclose(y, values["y"], rtol=1e-5, atol=1e-5)


def test_conv_edge_in_degree_counts_padded_taps_and_channels():
    graph = cnn_graph((6, 6, 3), channels=5, depth=3)
    deg = graph.in_degrees()
    assert np.all(deg["c1"] == 3 * 3 * 3)          # kernel taps x input channels, at borders too
    assert np.all(deg["c2"] == 3 * 3 * 5)
    assert np.all(deg["y"] == 6 * 6 * 5)


# ---------------------------------------------------------------------------- init statistics
def _output_second_moment(graph, seeds, batch=32, in_dim=None):
    rng = np.random.default_rng(123)
    total = []
    for seed in seeds:
        x = rng.standard_normal((batch, in_dim)).astype("float32")  # E[x_i^2] = 1
        y = _np(DAG(graph, seed=1000 * seed)(x))
        total.append(np.mean(y.astype(np.float64) ** 2))
    return float(np.mean(total))


@pytest.mark.parametrize("kind", ["densenet", "random_dag"])
def test_output_second_moment_is_order_one_and_width_independent(kind):
    # The DenseNet output mixes the input (E x^2 = 1) with hidden neurons in proportion d : m, so
    # its exact second moment drifts by O(d / m); widths >> d keep that drift well inside 15%.
    in_dim, out_dim = 32, 256
    moments = []
    for width in (512, 1024, 4096) if kind == "densenet" else (64, 256, 1024):
        if kind == "densenet":
            graph = densenet_graph(in_dim, width, depth=3, out_dim=out_dim, drop=0.5, seed=width)
        else:
            graph = random_dag(in_dim, 5, width, out_dim=out_dim, edge_prob=0.5, seed=7)
        moments.append(_output_second_moment(graph, seeds=range(6), in_dim=in_dim))
    moments = np.array(moments)
    assert np.all((moments > 0.05) & (moments < 20)), moments
    assert moments.max() / moments.min() < 1.15, moments


# ---------------------------------------------------------------------------- introspection
def test_layer_indices_in_degrees_width_and_params():
    d, m = 10, 6
    graph = densenet_graph(d, m, depth=4, out_dim=2)
    assert graph.layer_indices() == {"x": 0, "h1": 1, "h2": 2, "h3": 3, "y": 4}
    deg = graph.in_degrees()
    for l, v in enumerate(["h1", "h2", "h3", "y"]):
        assert np.all(deg[v] == d + l * m)                # Eq. A.5: size of all previous layers
    assert graph.width() == d + m                          # min in-degree over layers >= 2
    assert graph.num_params() == d * m + (d + m) * m + (d + 2 * m) * m + (d + 3 * m) * 2

    fcn = fcn_graph(5, [16, 12], out_dim=1)
    assert fcn.width() == 12                              # Remark 2.2.8: min hidden size for FCNs
    assert fcn_graph(5, [7], 1).width() == 7

    dropped = densenet_graph(d, 64, depth=3, drop=0.5, seed=0)
    layer = DAG(dropped)
    layer.build((None, d))
    live = sum(int(layer.edge_masks[i].sum()) for i in layer.kernels)
    assert dropped.num_params() == live
    assert 0.4 < live / layer.count_params() < 0.6


def test_text_and_dot_rendering_name_every_node_and_edge():
    graph = _hand_made_graph()
    text = graph.summary()
    dot = graph.to_dot()
    for v in graph.nodes:
        assert v in text and f'"{v}"' in dot
    assert dot.count("->") == len(graph.edges)
    assert "style=dashed" in dot                           # the skip edge
    assert f"width m = {graph.width()}" in text


def test_graph_json_round_trip_and_random_dag_is_seeded():
    graph = _hand_made_graph()
    assert Graph.from_json(graph.to_json()) == graph
    assert json.loads(graph.to_json()) == graph.to_config()
    a, b, c = random_dag(4, 8, 3, seed=5), random_dag(4, 8, 3, seed=5), random_dag(4, 8, 3, seed=6)
    assert a == b and a != c
    reach_out = {"y"}
    for v in reversed(a.topological_order):
        if any(e.src == v and e.dst in reach_out for e in a.edges):
            reach_out.add(v)
    assert reach_out == set(a.nodes)                       # every node lies on a path to y
    same = [densenet_graph(6, 5, drop=0.5, seed=1).mask(i) for _ in range(2) for i in [0]]
    np.testing.assert_array_equal(same[0], same[1])


def test_skip_connections_add_identity():
    graph = fcn_graph(4, [6, 6, 6], out_dim=1, skip=True)
    assert sum(e.kind == "skip" for e in graph.edges) == 2
    plain = fcn_graph(4, [6, 6, 6], out_dim=1)
    assert graph.in_degrees().keys() == plain.in_degrees().keys()
    for v, deg in graph.in_degrees().items():
        np.testing.assert_array_equal(deg, plain.in_degrees()[v])   # skips carry no weights


# ---------------------------------------------------------------------------- validation
def _nodes(*ids, size=3):
    return [Node(i, size, None if i in ("x", "y") else "relu") for i in ids]


@pytest.mark.parametrize("make, culprit", [
    (lambda: Graph(_nodes("x", "a", "b", "y"), [Edge("x", "a"), Edge("a", "b"), Edge("b", "a"),
                                               Edge("b", "y")], ["x"], ["y"]),
     r"cycle: '(a|b)' -> '(a|b)' -> '(a|b)'"),
    (lambda: Graph(_nodes("x", "y"), [Edge("x", "zz")], ["x"], ["y"]), "unknown node id 'zz'"),
    (lambda: Graph(_nodes("x", "y"), [Edge("x", "y")], ["x"], ["q"]), "'q'"),
    (lambda: Graph([Node("x", 1), Node("a", 32, "relu"), Node("y", 1)],
                   [Edge("x", "a", drop=0.9, seed=0), Edge("a", "y")], ["x"], ["y"]),
     "'a' has .* no incoming edge after dropping"),
    (lambda: Graph(_nodes("x", "a", "z", "y"), [Edge("x", "a"), Edge("a", "y"), Edge("z", "y")],
                   ["x"], ["y"]), "'z' has no incoming"),
    (lambda: Graph(_nodes("x", "q", "y"), [Edge("q", "y")], ["x"], ["y"]),
     "Output node 'y' is not reachable"),
    (lambda: Graph([Node("x", (6, 6, 2)), Node("c", (5, 5, 4), "relu"), Node("y", 1)],
                   [Edge("x", "c", "conv", kernel_size=3), Edge("c", "y")], ["x"], ["y"]),
     "'x'->'c': spatial shape mismatch"),
    (lambda: Graph([Node("x", 12), Node("c", (2, 2, 3), "relu"), Node("y", 1)],
                   [Edge("x", "c", "conv", kernel_size=1), Edge("c", "y")], ["x"], ["y"]),
     "'x'->'c': both ends must be feature maps"),
    (lambda: Graph([Node("x", 3), Node("a", 4, "relu"), Node("y", 1)],
                   [Edge("x", "a"), Edge("x", "a", "skip"), Edge("a", "y")], ["x"], ["y"]),
     "Skip edge 'x'->'a': shape mismatch"),
    (lambda: Graph([Node("x", 3), Node("y", 1, "relu")], [Edge("x", "y")], ["x"], ["y"]),
     "Output node 'y' has activation 'relu'"),
    (lambda: Graph(_nodes("x", "a", "y"), [Edge("x", "a"), Edge("a", "x"), Edge("a", "y")],
                   ["x"], ["y"]), "cycle"),
    (lambda: Graph(_nodes("x", "w", "y"), [Edge("x", "y"), Edge("w", "x")], ["x", "w"], ["y"]),
     "Input node 'x' has an incoming edge"),
    (lambda: Graph(_nodes("x", "x", "y"), [Edge("x", "y")], ["x"], ["y"]), "Duplicate node id 'x'"),
    (lambda: Graph(_nodes("x", "y"), [Edge("x", "y", drop=0.5)], ["x"], ["y"]), "`seed` must be"),
    (lambda: Graph([Node("x", 3), Node("y", 1, "no_such_act")], [Edge("x", "y")], ["x"], ["y"]),
     "unknown activation"),
])
def test_validation_errors_name_the_culprit(make, culprit):
    with pytest.raises(ValueError, match=culprit):
        make()


def test_input_tensor_shape_mismatch_names_the_input_node():
    layer = DAG(fcn_graph(5, [4], 1))
    with pytest.raises(ValueError, match="Input node 'x' has size"):
        layer(np.zeros((2, 6), "float32"))
    two = DAG(_hand_made_graph())
    with pytest.raises(ValueError, match="Input node 's' has size"):
        two([np.zeros((2, 3), "float32"), np.zeros((2, 5, 3), "float32")])


# ---------------------------------------------------------------------------- Keras integration
def test_layer_harness_config_fit_save_and_mixed_precision(tmp_path):
    graph = densenet_graph(6, 8, depth=3, out_dim=2, drop=0.5, seed=4)
    run_layer_test(DAG, {"graph": graph.to_config(), "seed": 0}, (6,), (2,), tmp_path)


def test_multi_input_conv_dag_in_functional_model_save_load_and_fit(tmp_path):
    graph = _hand_made_graph()
    x_in, s_in = keras.Input((3,)), keras.Input((5, 2))
    h = DAG(graph, seed=0)([x_in, s_in])
    out = keras.layers.Dense(1)(h)
    model = keras.Model([x_in, s_in], out)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype("float32")
    s = rng.standard_normal((8, 5, 2)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    before = [w.numpy().copy() for w in model.trainable_weights]
    hist = model.fit([x, s], rng.standard_normal((8, 1)).astype("float32"), epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert all(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    # Dropped weights get no gradient, so they never move.
    layer = model.layers[2]
    for (i, kernel), b in zip(layer.kernels.items(), before):
        mask = layer.edge_masks[i]
        if mask is not None:
            np.testing.assert_array_equal(kernel.numpy()[mask == 0], b[mask == 0])
    path = os.path.join(str(tmp_path), "dag.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict([x, s], verbose=0),
                                  loaded.predict([x, s], verbose=0))
    assert loaded.layers[2].graph == graph


def test_empirical_ntk_auto_matches_jacobian_on_dag_models():
    ntk = pytest.importorskip("kerntk.ntk")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype("float32")
    for graph in (densenet_graph(5, 16, depth=3, drop=0.5, seed=0),
                  random_dag(5, 4, 8, out_dim=2, seed=1),
                  fcn_graph(5, [8, 8], out_dim=1, skip=True)):
        model = keras.Sequential([keras.Input((5,)), DAG(graph, seed=2)])
        auto = _np(ntk.empirical_ntk(model, x, method="auto"))
        jac = _np(ntk.empirical_ntk(model, x, method="jacobian"))
        np.testing.assert_allclose(auto, jac, rtol=1e-4, atol=1e-4 * np.abs(jac).max())
