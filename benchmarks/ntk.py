"""Empirical-NTK benchmark: exact NTK vs one compiled training step vs the Jacobian method.

Prints one side-by-side table of medians and ratios measured in a single run (issue 3,
"Performance"). Timings are interleaved (train step, NTK, train step, NTK, ...) so that the ratios
see the same machine load; peak RSS of each method is measured in a fresh subprocess.

    python benchmarks/ntk.py                          # fcn n=128, fcn n=512, cnn n=64
    python benchmarks/ntk.py --rows=fcn128 --repeats=11
    python benchmarks/ntk.py --rows=blocks10k,op50k   # the scale rows (minutes)
    python benchmarks/ntk.py --rows=fcn128 --nt_python=.nt-venv/bin/python   # vs neural-tangents
    python benchmarks/ntk.py --rows=lnmlp256,sepcnn64 --nt_python=.nt-venv/bin/python

Rows:
  fcn128     5-layer ReLU fcn, width 1024, d=3072, n=128, float32 (the reference)
  fcn512     same net, n=512
  cnn64      5-layer cnn, 128 channels, 32x32x3, n=64
  lnmlp256   plain Keras MLP with LayerNormalization: 784 -> [Dense 512, LayerNorm, ReLU] x 2
             -> Dense 10, n=256
  sepcnn64   plain Keras depthwise-separable CNN on 32x32x3: Conv2D 32, SeparableConv2D 64,
             DepthwiseConv2D, Conv2D 1x1 64 (3x3 "same", ReLU), global average pool,
             Dense 10, n=64
  blocks10k  same fcn, n=10,000, empirical_ntk(block_size=--block_size)
  op50k      top-10 eigenpairs of the trace NTK through ntk_operator, n=50,000
             (3-layer fcn, width 512, d=784; --op_n/--op_k), scipy eigsh (or
             kerntk.spectral.top_eigenpairs when --use_spectral and it exists)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["fcn128", "fcn512", "cnn64"], "Rows to run (see module docstring).")
flags.DEFINE_integer("repeats", 7, "Timed repetitions of the train step and the exact NTK.")
flags.DEFINE_integer("jacobian_repeats", 3, "Timed repetitions of the jacobian method.")
flags.DEFINE_list("jacobian_rows", ["fcn128", "cnn64", "lnmlp256", "sepcnn64"],
                  "Rows on which the (slow, memory-hungry) jacobian method is timed.")
flags.DEFINE_bool("rss", True, "Measure the peak RSS of each method in a fresh subprocess.")
flags.DEFINE_integer("block_size", 1000, "block_size of the blocks10k row.")
flags.DEFINE_integer("blocks_n", 10_000, "n of the blocks10k row.")
flags.DEFINE_integer("op_n", 50_000, "n of the op50k row.")
flags.DEFINE_integer("op_k", 10, "Number of eigenpairs of the op50k row.")
flags.DEFINE_float("op_tol", 1e-6, "Relative residual tolerance of the op50k eigensolver.")
flags.DEFINE_integer("op_block_size", 5000, "block_size of the operator in the op50k row.")
flags.DEFINE_bool("use_spectral", True,
                  "op50k: use kerntk.spectral.top_eigenpairs when available, else scipy eigsh.")
flags.DEFINE_string("nt_python", None,
                    "Optional interpreter with neural-tangents 0.6.5 (jax 0.4.25): times NT's three "
                    "empirical-NTK implementations on the fcn rows and prints kerntk/NT ratios.")
flags.DEFINE_string("child", None, "Internal: 'row:what' measured in a subprocess.")

ROWS = {
    # name: (builder args, per-example input shape, n)
    "fcn128": ("fcn", (3072,), 128),
    "fcn512": ("fcn", (3072,), 512),
    "cnn64": ("cnn", (32, 32, 3), 64),
    "lnmlp256": ("lnmlp", (784,), 256),
    "sepcnn64": ("sepcnn", (32, 32, 3), 64),
}


def _keras_model(arch: str, shape):
    """The rows made of plain Keras layers (the ones users put in models)."""
    import keras
    L = keras.layers
    keras.utils.set_random_seed(0)
    if arch == "lnmlp":
        layers = []
        for _ in range(2):
            layers += [L.Dense(512), L.LayerNormalization(), L.Activation("relu")]
        layers.append(L.Dense(10))
    else:
        layers = [L.Conv2D(32, 3, padding="same", activation="relu"),
                  L.SeparableConv2D(64, 3, padding="same", activation="relu"),
                  L.DepthwiseConv2D(3, padding="same", activation="relu"),
                  L.Conv2D(64, 1, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(10)]
    return keras.Sequential([keras.Input(shape)] + layers)


def _setup(row: str):
    import keras
    import numpy as np
    import tensorflow as tf

    import kerntk
    arch, shape, n = ROWS[row]
    if arch == "fcn":
        model = kerntk.models.fcn(5, 1024, input_shape=shape, seed=0)
    elif arch == "cnn":
        model = kerntk.models.cnn(5, 128, input_shape=shape, seed=0)
    else:
        model = _keras_model(arch, shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n,) + shape).astype("float32")
    y = rng.standard_normal((n, model.output_shape[-1])).astype("float32")
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.MeanSquaredError()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    xt, yt = tf.constant(x), tf.constant(y)
    return model, x, lambda: train_step(xt, yt).numpy()


def _methods(model, x):
    from kerntk.ntk import empirical_ntk
    return {
        "train": None,
        "auto": lambda: empirical_ntk(model, x, method="auto"),
        "jacobian": lambda: empirical_ntk(model, x, method="jacobian"),
    }


def _peak_rss_gb() -> float:
    """Peak resident set size of this process in GB (VmHWM; ru_maxrss survives fork+exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _child(spec: str) -> None:
    row, what = spec.split(":")
    model, x, train = _setup(row)
    fn = train if what == "train" else _methods(model, x).get(what)
    if what == "base":
        model(x[:2])
    else:
        fn()
        fn()
    print(json.dumps({"rss_gb": _peak_rss_gb()}))


def _rss(row: str, what: str) -> float:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={row}:{what}"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)["rss_gb"]
    return float("nan")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _row(row: str) -> dict:
    model, x, train = _setup(row)
    methods = _methods(model, x)
    train(), methods["auto"]()  # compile
    t_train, t_auto = [], []
    for _ in range(FLAGS.repeats):
        t_train.append(_time(train))
        t_auto.append(_time(methods["auto"]))
    from kerntk.ntk.registry import explain
    result = {"row": row, "n": x.shape[0], "train_ms": 1e3 * statistics.median(t_train),
              "auto_ms": 1e3 * statistics.median(t_auto),
              "exact_jacobian_layers": [r.name for r in explain(model) if not r.structured]}
    if row in FLAGS.jacobian_rows:
        import numpy as np
        K_jac = methods["jacobian"]()  # compile
        K_auto = methods["auto"]()
        result["max_rel_diff"] = float(np.max(np.abs(K_auto - K_jac)) / np.max(np.abs(K_jac)))
        t_jac = [_time(methods["jacobian"]) for _ in range(FLAGS.jacobian_repeats)]
        result["jacobian_ms"] = 1e3 * statistics.median(t_jac)
    if FLAGS.rss:
        result["rss_base_gb"] = _rss(row, "base")
        result["rss_train_gb"] = _rss(row, "train")
        result["rss_auto_gb"] = _rss(row, "auto")
        if row in FLAGS.jacobian_rows:
            result["rss_jacobian_gb"] = _rss(row, "jacobian")
    return result


def _blocks_row() -> dict:
    import numpy as np

    import kerntk
    from kerntk.ntk import empirical_ntk
    model = kerntk.models.fcn(5, 1024, input_shape=(3072,), seed=0)
    x = np.random.default_rng(0).standard_normal((FLAGS.blocks_n, 3072)).astype("float32")
    t = _time(lambda: empirical_ntk(model, x, block_size=FLAGS.block_size))
    return {"row": "blocks10k", "n": FLAGS.blocks_n, "seconds": t, "rss_gb": _peak_rss_gb(),
            "block_size": FLAGS.block_size}


def _op_row() -> dict:
    import numpy as np
    import scipy.sparse.linalg as spla

    import kerntk
    from kerntk.ntk import ntk_operator
    model = kerntk.models.fcn(3, 512, input_shape=(784,), seed=0)
    x = np.random.default_rng(0).standard_normal((FLAGS.op_n, 784)).astype("float32")
    op = ntk_operator(model, x, block_size=FLAGS.op_block_size)
    calls = [0]
    counted = spla.LinearOperator(op.shape, matvec=lambda v: (calls.__setitem__(0, calls[0] + 1),
                                                              op.matvec(v))[1],
                                  dtype=np.float64)
    t = time.perf_counter()
    solver = "scipy eigsh"
    try:
        if not FLAGS.use_spectral:
            raise ImportError
        from kerntk.spectral import top_eigenpairs
        out = top_eigenpairs(counted, FLAGS.op_k, method="lanczos", tol=FLAGS.op_tol)
        solver = f"kerntk.spectral.top_eigenpairs, tol {FLAGS.op_tol:g}"
        top = np.asarray(out.eigenvalues)
    except ImportError:
        top = spla.eigsh(counted, k=FLAGS.op_k, which="LA", tol=FLAGS.op_tol,
                         return_eigenvectors=False)
    return {"row": "op50k", "n": FLAGS.op_n, "seconds": time.perf_counter() - t,
            "matvecs": calls[0], "solver": solver, "lambda_max": float(np.max(top)),
            "rss_gb": _peak_rss_gb()}


NT_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np, jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax
a = json.loads(sys.argv[1])
key = jax.random.PRNGKey(0)
conv = lambda h, W, groups=1: jax.lax.conv_general_dilated(
    h, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
if a["arch"] == "fcn":
    layers = []
    for _ in range(a["depth"] - 1):
        layers += [stax.Dense(a["width"], W_std=1.0, b_std=1.0, parameterization="ntk"),
                   stax.Relu()]
    layers.append(stax.Dense(1, W_std=1.0, b_std=1.0, parameterization="ntk"))
    init_fn, apply_fn, _ = stax.serial(*layers)
    _, params = init_fn(key, (-1,) + tuple(a["shape"]))
elif a["arch"] == "lnmlp":  # Dense, LayerNorm (gamma, beta), ReLU; x 2; Dense 10
    dims = [a["shape"][0], 512, 512]
    params = [(jax.random.normal(key, (dims[i], dims[i + 1])) / np.sqrt(dims[i]),
               jnp.zeros(dims[i + 1]), jnp.ones(dims[i + 1]), jnp.zeros(dims[i + 1]))
              for i in range(2)] + [(jax.random.normal(key, (512, 10)) / np.sqrt(512),
                                     jnp.zeros(10))]
    def apply_fn(params, x, **kw):
        h = x
        for W, b, g, be in params[:-1]:
            h = h @ W + b
            mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
            h = jax.nn.relu((h - mu) / jnp.sqrt(var + 1e-3) * g + be)
        return h @ params[-1][0] + params[-1][1]
else:  # sepcnn: Conv2D 32, SeparableConv2D 64 (depthwise + pointwise), DepthwiseConv2D,
       # Conv2D 1x1 64, global average pool, Dense 10; 3x3 "same", ReLU, biases
    n = lambda *s: jax.random.normal(key, s) * 0.1
    params = dict(c1=(n(3, 3, 3, 32), jnp.zeros(32)), dw=n(3, 3, 1, 32),
                  pw=(n(1, 1, 32, 64), jnp.zeros(64)), dw2=(n(3, 3, 1, 64), jnp.zeros(64)),
                  c2=(n(1, 1, 64, 64), jnp.zeros(64)), out=(n(64, 10), jnp.zeros(10)))
    def apply_fn(p, x, **kw):
        h = jax.nn.relu(conv(x, p["c1"][0]) + p["c1"][1])
        h = jax.nn.relu(conv(conv(h, p["dw"], 32), p["pw"][0]) + p["pw"][1])
        h = jax.nn.relu(conv(h, p["dw2"][0], 64) + p["dw2"][1])
        h = jax.nn.relu(conv(h, p["c2"][0]) + p["c2"][1]).mean(axis=(1, 2))
        return h @ p["out"][0] + p["out"][1]
x = jnp.asarray(np.random.default_rng(0).standard_normal([a["n"]] + a["shape"]), jnp.float32)
out = {"nt_version": nt.__version__, "jax_version": jax.__version__}
for name in ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES"):
    # NT's Jacobian-contraction and vector-product implementations take minutes on the larger
    # fcn and on the conv row (measured: > 10 min for sepcnn64 on 2 cores); only NT's fastest,
    # structured derivatives, is timed there.
    if name != "STRUCTURED_DERIVATIVES" and (a["n"] > 128 and a["arch"] == "fcn"
                                             or a["arch"] == "sepcnn"):
        continue
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                     implementation=getattr(nt.NtkImplementation, name)))
    fn(x, None, params).block_until_ready()
    times = []
    for _ in range(a["repeats"]):
        t = time.perf_counter()
        fn(x, None, params).block_until_ready()
        times.append(time.perf_counter() - t)
    out[name.lower() + "_ms"] = 1e3 * statistics.median(times)
print(json.dumps(out))
"""


def _nt_row(row: str) -> dict:
    """Neural-tangents' implementations on the same architecture (the fcn in ``stax``, the
    Keras-layer rows as plain JAX functions), in the interpreter --nt_python."""
    arch, shape, n = ROWS[row]
    args = json.dumps({"arch": arch, "depth": 5, "width": 1024, "shape": list(shape), "n": n,
                       "repeats": FLAGS.repeats})
    out = subprocess.run([FLAGS.nt_python, "-c", NT_SCRIPT, args], capture_output=True, text=True)
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (out.stderr or out.stdout)[-500:]}


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv):
    del argv
    if FLAGS.child:
        _child(FLAGS.child)
        return
    results = []
    for row in FLAGS.rows:
        if row in ROWS:
            results.append(_row(row))
            if FLAGS.nt_python and ROWS[row][0] != "cnn":
                results[-1]["nt"] = _nt_row(row)
        elif row == "blocks10k":
            results.append(_blocks_row())
        elif row == "op50k":
            results.append(_op_row())
        else:
            raise app.UsageError(f"unknown row {row!r}")
        print(json.dumps(results[-1]), flush=True)

    table = [r for r in results if "train_ms" in r]
    if table:
        _print_table(table)
        _print_coverage(table)
    _print_nt(results)
    _print_scale_rows(results)


def _print_table(results):
    print(f"\nkerntk empirical NTK, float32, {os.cpu_count()} CPU core(s); medians of "
          f"{FLAGS.repeats} (jacobian: {FLAGS.jacobian_repeats}) interleaved runs\n")
    head = ("| row | n | train step ms | exact NTK (auto) ms | NTK / train | jacobian ms | "
            "jacobian / NTK | peak RSS GB: base / train / NTK / jacobian | max rel diff |")
    print(head)
    print("|" + "---|" * 9)
    for r in results:
        jac = r.get("jacobian_ms")
        rss = " / ".join(_fmt(r.get(k), ".2f") for k in
                         ("rss_base_gb", "rss_train_gb", "rss_auto_gb", "rss_jacobian_gb"))
        print(f"| {r['row']} | {r['n']} | {r['train_ms']:.1f} | {r['auto_ms']:.1f} | "
              f"{r['auto_ms'] / r['train_ms']:.2f}x | {_fmt(jac)} | "
              f"{_fmt(None if jac is None else jac / r['auto_ms'], _ratio_spec(jac, r))}"
              f"{'' if jac is None else 'x'} | {rss} | {_fmt(r.get('max_rel_diff'), '.1e')} |")


def _ratio_spec(jac, r) -> str:
    return ".2f" if jac is not None and jac / r["auto_ms"] < 10 else ".0f"


def _print_coverage(results):
    for r in results:
        if r.get("exact_jacobian_layers"):
            print(f"{r['row']}: layers on the exact Jacobian inside 'auto': "
                  f"{', '.join(r['exact_jacobian_layers'])}")


def _print_nt(results):
    rows = [r for r in results if "nt" in r]
    if not rows:
        return
    print("\nneural-tangents (same architecture, jit, float32, n x n trace kernel) in the same "
          "run:\n")
    print("| row | NT implementation | NT ms | kerntk auto ms | kerntk / NT |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r["nt"]:
            print(f"| {r['row']} | error: {r['nt']['error']!r} | | | |")
            continue
        for key, value in r["nt"].items():
            if key.endswith("_ms"):
                print(f"| {r['row']} | {key[:-3]} | {value:.1f} | {r['auto_ms']:.1f} | "
                      f"{r['auto_ms'] / value:.2f}x |")


def _print_scale_rows(results):
    for r in results:
        if r["row"] == "blocks10k":
            print(f"\nexact NTK n={r['n']} in blocks of {r['block_size']}: {r['seconds']:.1f} s, "
                  f"peak RSS {r['rss_gb']:.2f} GB")
        if r["row"] == "op50k":
            print(f"\ntop-{FLAGS.op_k} eigenpairs of the n={r['n']} NTK via ntk_operator "
                  f"({r['solver']}): {r['seconds']:.1f} s, {r['matvecs']} products, "
                  f"lambda_max {r['lambda_max']:.4g}, peak RSS {r['rss_gb']:.2f} GB")


if __name__ == "__main__":
    app.run(main)
