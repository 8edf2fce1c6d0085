"""Benchmarks of kerntk.agop and kerntk.spectral (issue 3, performance section).

Rows (medians over repeats, float32, this machine's CPU):
  * compiled train step (SGD, MSE) on the reference net: 5-layer ReLU fcn, width 1024,
    d = 3072, n = 128 — the yardstick;
  * AGOP of that net on the batch (goal: <= 2x the train step);
  * 20 Lanczos iterations on ``kerntk.ntk.ntk_operator`` of that net (reported);
  * top-10 eigenpairs of an n = 50,000 NTK through the operator (reported; ``--scale-width`` /
    ``--scale-d`` choose the net, default a 3-layer fcn of width 256 on d = 32 so the run stays
    within minutes on 2 cores).

Usage: ``python benchmarks/agop_spectral.py [--repeats 7] [--skip-scale]``.

One run on the shared 2-core CPU (other jobs running, so absolute times are noisy):

    benchmark                                                      seconds   x step
    train step (compiled, fcn5 w1024 d3072 n128)                    0.0741     1.00
    agop (d x d)                                                    0.1424     1.92
    agop low_rank (n x d factor)                                    0.0728     0.98
    20 Lanczos iterations, NTK operator n128                        1.8116    24.44
    top-10 eigenpairs n=50000 (fcn3 w256 d32), 29 its, rel res 9e-5 39.9408   538.93
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerntk  # noqa: E402
from kerntk import agop, spectral  # noqa: E402
from kerntk.ntk import ntk_operator  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--scale-n", type=int, default=50_000)
    p.add_argument("--scale-width", type=int, default=256)
    p.add_argument("--scale-d", type=int, default=32)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    n, d = 128, 3072
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.normal(size=(n, 1)).astype("float32")
    model = kerntk.models.fcn(5, 1024, input_shape=(d,), seed=0)
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    rows = []
    step = median_time(lambda: model.train_on_batch(x, y), args.repeats)
    rows.append(("train step (compiled, fcn5 w1024 d3072 n128)", step, 1.0))
    t = median_time(lambda: agop.agop(model, x), args.repeats)
    rows.append(("agop (d x d)", t, t / step))
    t = median_time(lambda: agop.agop(model, x, low_rank=True), args.repeats)
    rows.append(("agop low_rank (n x d factor)", t, t / step))
    op = ntk_operator(model, x)
    with warnings.catch_warnings():             # exactly 20 steps: "not converged" is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        t = median_time(lambda: spectral.top_eigenpairs(op, 1, "lanczos", maxiter=20,
                                                        tol=1e-300),
                        max(3, args.repeats // 2), warmup=1)
    rows.append(("20 Lanczos iterations, NTK operator n128", t, t / step))

    if not args.skip_scale:
        m2 = kerntk.models.fcn(3, args.scale_width, input_shape=(args.scale_d,), seed=1)
        xs = rng.normal(size=(args.scale_n, args.scale_d)).astype("float32")
        op2 = ntk_operator(m2, xs)
        t0 = time.perf_counter()
        res = spectral.top_eigenpairs(op2, 10, "lanczos", tol=1e-4)
        t = time.perf_counter() - t0
        rows.append((f"top-10 eigenpairs n={args.scale_n} (fcn3 w{args.scale_width} "
                     f"d{args.scale_d}), {res.iterations} its, max rel res "
                     f"{res.residual_norms.max() / res.eigenvalues[0]:.1e}", t, t / step))

    print(f"{'benchmark':<78} {'seconds':>10} {'x step':>8}")
    for name, sec, ratio in rows:
        print(f"{name:<78} {sec:>10.4f} {ratio:>8.2f}")


if __name__ == "__main__":
    main()
