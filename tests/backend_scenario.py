"""Helper of tests/test_backends.py (not a test module): kerntk under another Keras backend.

Keras fixes its backend when it is first imported, hence a fresh process::

    KERAS_BACKEND=jax python tests/backend_scenario.py DIR

``DIR`` holds what the TensorFlow side wrote with :func:`train_and_save`:
``tensorflow_<name>.keras`` and ``tensorflow.npz`` (the predictions of those models on
:func:`inputs`). The scenario, with matplotlib and tensorflow-datasets blocked (importing kerntk
must not need them):

1. builds every model of :func:`build_models` (each kerntk layer, the DAG layer, the model zoo),
   runs a forward pass, one ``fit`` step, saves ``DIR/<backend>_<name>.keras``, reloads it and
   predicts again; its predictions go to ``DIR/<backend>.npz`` for the TensorFlow side to compare;
2. loads the TensorFlow-saved models and predicts;
3. runs the numpy-side tools (``kerntk.ntk.analytic``, ``kerntk.datasets``, the matrix functions of
   ``kerntk.spectral`` and ``kerntk.agop``);
4. calls every TensorFlow-only entry point and records the error each raises.

It prints one JSON line, the report that tests/test_backends.py asserts on.
"""

import json
import os
import sys

import numpy as np

# SymmetricTwoLayer.kth_order_term orders compared across backends.
TERM_ORDERS = (0, 1, 2, 3)


# Few distinct shapes: under JAX every new weight shape compiles its initializer (~0.1-1 s each).
_VECTOR, _IMAGE, _BIG_IMAGE = (4,), (6, 6, 2), (8, 8, 2)
_SHAPES = {"dense_layers": _VECTOR, "ntk_conv1d": (10, 2), "dag_dense": _VECTOR,
           "dag_conv": _IMAGE, "general_quadratic": _VECTOR, "symmetric_two_layer": _VECTOR,
           "fcn": _VECTOR, "cnn": _IMAGE, "pnn": _VECTOR, "poly_cnn": _BIG_IMAGE,
           "myrtle": _BIG_IMAGE}


def inputs() -> dict:
    """One deterministic float32 batch per model of :func:`build_models` (same in every
    process)."""
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((6,) + shape).astype("float32")
            for name, shape in _SHAPES.items()}


def build_models() -> dict:
    """Every kerntk layer and every model of the zoo, by name: the zoo covers NTKDense,
    NTKConv2D, PolyDense and PolyConv2D in their default forms, small models the rest."""
    import keras

    import kerntk
    from kerntk import layers as kl
    from kerntk.graph import cnn_graph, densenet_graph

    def seq(name, *layers):
        return keras.Sequential([keras.Input(_SHAPES[name])] + list(layers), name=name)

    flat = keras.layers.Flatten
    models = {
        "dense_layers": seq("dense_layers", kl.NTKDense(8, activation="tanh",
                                                        parameterization="standard", seed=0),
                            kl.PolyDense(8, degree=3, form="ccp", seed=1),
                            kl.NTKDense(2, seed=2)),
        "ntk_conv1d": seq("ntk_conv1d", kl.NTKConv1D(4, 3, strides=2, activation="relu",
                                                     seed=0), flat(), kl.NTKDense(1, seed=1)),
        "dag_dense": seq("dag_dense", kl.DAG(densenet_graph(4, 8, depth=3, drop=0.5, seed=0),
                                             seed=0)),
        "dag_conv": seq("dag_conv", kl.DAG(cnn_graph(_IMAGE, 4, depth=3, skip=True, seed=0),
                                           seed=0)),
        "general_quadratic": seq("general_quadratic", kl.GeneralQuadratic(
            feature_map="random_projection", features=8, gamma=0.1, seed=0)),
        "symmetric_two_layer": seq("symmetric_two_layer", kl.SymmetricTwoLayer(8, seed=0)),
        "fcn": kerntk.models.fcn(3, 8, input_shape=_VECTOR, seed=0),
        "cnn": kerntk.models.cnn(3, 4, input_shape=_IMAGE, seed=0),
        "pnn": kerntk.models.pnn(3, 8, input_shape=_VECTOR, seed=0),
        "poly_cnn": kerntk.models.poly_cnn(2, 4, input_shape=_BIG_IMAGE, seed=0),
        "myrtle": kerntk.models.myrtle(5, 4, out_dim=2, input_shape=_BIG_IMAGE, seed=0),
    }
    # Away from the symmetric initialization, whose expected output stays 0 after a first step.
    layer = models["symmetric_two_layer"].layers[0]
    layer.kernel.assign(np.random.default_rng(0).normal(0, 0.3, layer.kernel.shape))
    return models


def predict(model, x) -> np.ndarray:
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)


def kth_order_terms(model, x) -> np.ndarray:
    """``SymmetricTwoLayer.kth_order_term`` of the model's layer for :data:`TERM_ORDERS`."""
    import keras

    layer = model.layers[0]
    return np.stack([keras.ops.convert_to_numpy(layer.kth_order_term(x, k))
                     for k in TERM_ORDERS]).astype(np.float64)


def train_and_save(directory: str, prefix: str, fit: bool = True) -> dict:
    """Builds, fits one step (if ``fit``), saves and reloads every model of
    :func:`build_models`; writes ``<directory>/<prefix>_<name>.keras`` and
    ``<directory>/<prefix>.npz`` (the predictions of the saved models, and the SymmetricTwoLayer
    terms). Returns per model: ``finite`` (forward pass and loss), ``moved`` (max |change| of
    the predictions by the step) and ``reload_diff`` (max |difference| of the predictions after
    reloading)."""
    import keras

    x = inputs()
    report, saved = {}, {}
    for name, model in build_models().items():
        y0 = predict(model, x[name])
        loss = 0.0
        if fit:
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
            # A target away from the outputs, so the step moves every weight.
            loss = float(model.train_on_batch(x[name], np.ones_like(y0, dtype="float32")))
        y1 = predict(model, x[name])
        path = os.path.join(directory, f"{prefix}_{name}.keras")
        model.save(path)
        y2 = predict(keras.saving.load_model(path), x[name])
        saved[name] = y1
        report[name] = {"finite": bool(np.isfinite(y0).all() and np.isfinite(y1).all()
                                       and np.isfinite(loss)),
                        "moved": float(np.max(np.abs(y1 - y0))),
                        "reload_diff": float(np.max(np.abs(y2 - y1)))}
        if name == "symmetric_two_layer":
            saved["symmetric_two_layer_terms"] = kth_order_terms(model, x[name])
    np.savez(os.path.join(directory, f"{prefix}.npz"), **saved)
    return report


def load_and_predict(directory: str, prefix: str) -> dict:
    """Predictions of the models ``<directory>/<prefix>_<name>.keras`` on :func:`inputs`."""
    import keras

    x, out = inputs(), {}
    for name in build_models():
        model = keras.saving.load_model(os.path.join(directory, f"{prefix}_{name}.keras"))
        out[name] = predict(model, x[name])
        if name == "symmetric_two_layer":
            out["symmetric_two_layer_terms"] = kth_order_terms(model, x[name])
    return out


def numpy_side() -> dict:
    """The numpy-side tools, run under the active backend: name -> all finite (or the error)."""
    import kerntk
    from kerntk import datasets, spectral
    from kerntk.ntk import analytic

    rng = np.random.default_rng(1)
    x, x_test = rng.standard_normal((8, 4)), rng.standard_normal((3, 4))
    images, labels = rng.random((40, 6, 6)), np.arange(40) % 10
    fcn = kerntk.models.fcn(3, 16, input_shape=(4,), seed=0)
    K = analytic.fcn_kernels(x, depth=3).ntk
    calls = {
        "analytic.fcn_kernels": lambda: K,
        "analytic.pnn_kernels": lambda: analytic.pnn_kernels(x, x_test, degree=3).ntk,
        "analytic.model_kernels": lambda: analytic.model_kernels(fcn, x).ntk,
        "analytic.kernel_regression": lambda: analytic.kernel_regression(
            K, analytic.fcn_kernels(x_test, x, depth=3).ntk, np.ones((8, 1))),
        "spectral.top_eigenpairs": lambda: spectral.top_eigenpairs(K, 2).eigenvalues,
        "spectral.critical_lr(kernel=K)": lambda: spectral.critical_lr(kernel=K),
        "agop.alignment": lambda: kerntk.agop.alignment(K, K + np.eye(8)),
        "datasets.rank_task": lambda: datasets.rank_task("rank2", 16, d=8, seed=0)[:2],
        "datasets.rank_egop": lambda: datasets.rank_egop("rank4", d=8),
        "datasets.extrapolation_task": lambda: tuple(datasets.extrapolation_task(
            "cubic", 16, 16, seed=0)[k] for k in ("x_train", "y_train", "x_test", "y_test")),
        "datasets.spherical_harmonic_task": lambda: datasets.spherical_harmonic_task(
            16, d=5, seed=0)[:2],
        "datasets.make_digit_pairs": lambda: datasets.make_digit_pairs(
            images, labels, datasets.digit_pair_folds()[0]["seen"], 10, seed=0),
    }
    report = {}
    for name, call in calls.items():
        try:
            value = call()
            arrays = value if isinstance(value, tuple) else (value,)
            report[name] = bool(all(np.isfinite(np.asarray(a, np.float64)).all()
                                    for a in arrays))
        except Exception as e:  # noqa: BLE001 - reported, asserted on by the test
            report[name] = f"{type(e).__name__}: {e}"
    return report


def tensorflow_only() -> dict:
    """Every TensorFlow-only entry point, called with valid arguments: name -> the error."""
    import kerntk
    from kerntk import agop, callbacks, models, spectral
    from kerntk.ntk import empirical

    model = kerntk.models.fcn(2, 8, input_shape=(4,), seed=0)
    x, y = np.ones((3, 4), "float32"), np.ones((3, 1), "float32")
    ref = agop.AGOPFactor(np.ones((3, 4)), 3)
    calls = {
        "kerntk.ntk.empirical_ntk": lambda: kerntk.ntk.empirical_ntk(model, x),
        "kerntk.ntk.ntk_operator": lambda: kerntk.ntk.ntk_operator(model, x),
        "kerntk.ntk.empirical.kernel_fn": lambda: empirical.kernel_fn(model),
        "kerntk.ntk.empirical.ForwardNTK": lambda: empirical.ForwardNTK(model),
        "kerntk.ntk.empirical.shareable_forward": lambda: empirical.shareable_forward(
            model, x, "float32"),
        "kerntk.spectral.hessian_operator": lambda: spectral.hessian_operator(model, "mse", x, y),
        "kerntk.spectral.gauss_newton_operator": lambda: spectral.gauss_newton_operator(
            model, "mse", x, y),
        "kerntk.spectral.hessian_top_eigenpairs": lambda: spectral.hessian_top_eigenpairs(
            model, "mse", x, y),
        "kerntk.spectral.gauss_newton_top_eigenpairs":
            lambda: spectral.gauss_newton_top_eigenpairs(model, "mse", x, y),
        "kerntk.spectral.critical_lr": lambda: spectral.critical_lr(model, x, y),
        "kerntk.spectral.critical_lr(method='hessian')": lambda: spectral.critical_lr(
            model, x, y, method="hessian"),
        "kerntk.agop.agop": lambda: agop.agop(model, x),
        "kerntk.agop.egop": lambda: agop.egop(lambda t: t[:, :1] * t[:, 1:2], x),
        "kerntk.agop.alignment_fn": lambda: agop.alignment_fn(model, x, ref),
        "kerntk.callbacks.NTKSpectrumTracker": lambda: callbacks.NTKSpectrumTracker(x),
        "kerntk.callbacks.AGOPAlignmentLogger": lambda: callbacks.AGOPAlignmentLogger(x, ref),
        "kerntk.callbacks.CriticalLRMonitor": lambda: callbacks.CriticalLRMonitor(),
        "kerntk.callbacks.DivergenceGuard": lambda: callbacks.DivergenceGuard(),
        "kerntk.models.TaylorModel": lambda: models.TaylorModel(model),
        "kerntk.models.linearize": lambda: models.linearize(model),
        "kerntk.models.quadratic": lambda: models.quadratic(model),
        "kerntk.models.taylor": lambda: models.taylor(model, 3),
        "kerntk.models.taylor_term": lambda: models.taylor_term(model, 2),
    }
    report = {}
    for name, call in calls.items():
        try:
            call()
            report[name] = {"error": None}
        except Exception as e:  # noqa: BLE001 - reported, asserted on by the test
            report[name] = {"error": type(e).__name__, "message": str(e),
                            "backend_error": isinstance(e, kerntk.BackendError)}
    return report


def _block_optional_imports() -> None:
    import importlib.abc

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("matplotlib", "tensorflow_datasets"):
                raise ImportError("blocked " + name)

    sys.meta_path.insert(0, Block())


def main(directory: str) -> None:
    _block_optional_imports()
    import keras

    import kerntk  # noqa: F401

    backend = keras.backend.backend()
    report = {"backend": backend, "models": train_and_save(directory, backend)}
    np.savez(os.path.join(directory, f"tensorflow_models_under_{backend}.npz"),
             **load_and_predict(directory, "tensorflow"))
    report["numpy_side"] = numpy_side()
    report["tensorflow_only"] = tensorflow_only()
    report["blocked_modules"] = sorted(
        m for m in sys.modules if m.split(".")[0] in ("matplotlib", "tensorflow_datasets"))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
