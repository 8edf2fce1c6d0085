"""Eigenvalue decay of the FCN and PNN NTKs on the sphere (paper 000 Theorem 7).

On the unit sphere S^d of R^(d+1) a dot-product kernel K(x, x') = kappa(<x, x'>) has the
spherical harmonics of degree k as eigenfunctions, with eigenvalue (Funk-Hecke)

    mu_k = (|S^(d-1)| / |S^d|) * int_{-1}^{1} kappa(t) P_k(t) (1 - t^2)^((d-2)/2) dt,

P_k the Gegenbauer polynomial of index (d-1)/2 normalized to P_k(1) = 1. We take kappa from the
infinite-width NTKs kerntk ships (``kerntk.ntk.analytic.fcn_kernels`` for the ReLU fcn of
``--fcn_depth`` layers, ``pnn_kernels`` for the paper 000 Eq. 1 PNN of degree N: ReLU branches
multiplied together, no biases), evaluate it at x = e_1, x' = cos(theta) e_1 + sin(theta) e_2, and
integrate in theta = arccos(t) by Gauss-Legendre quadrature with ``--nodes`` nodes (in theta the
integrand is smooth, so the quadrature converges fast).

Theorem 7 (paper 000): for PNNs of degree N >= 2, mu_k = Omega((N^2 k)^(-d/2)) for k >> d; the
paper contrasts this with Omega(k^(-d)) for deep fcns (Belfer et al. 2021), i.e. the PNN NTK's
eigenvalues decay more slowly, so PNNs learn high frequencies faster (Fig. 5). We measure the
log-log slope of mu_k (least squares of log mu_k on log k over k in [--k_min, --k_max]) per kernel
and compare it with the theorem's exponents. Even and odd k are fitted separately too (a ReLU
kernel without biases has vanishing odd eigenvalues beyond k = 1; the fit uses the k with
mu_k > 0).

Writes ``<out_dir>/eigenvalue_decay.png`` (mu_k / mu_0 vs k, log-log, one panel per d) and
``.json``.

    python examples/eigenvalue_decay.py [--dims 2,4] [--degrees 2,3,4,6] [--k_max 128] [--smoke]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (quiet TensorFlow start-up, shared flags, results file)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy import special  # noqa: E402

from kerntk.ntk import analytic  # noqa: E402

NAME = "eigenvalue_decay"

_common.define_flags()
flags.DEFINE_list("dims", ["2", "4"], "Sphere dimensions d (inputs on S^d in R^(d+1)).")
flags.DEFINE_list("degrees", ["2", "3", "4", "6"], "PNN degrees N (Theorem 7: N >= 2).")
flags.DEFINE_integer("fcn_depth", 3, "NTKDense layers of the ReLU fcn (2 hidden + head).")
flags.DEFINE_bool("fcn_bias", True, "Biases (b_std = 1) in the fcn.")
flags.DEFINE_integer("k_min", 16, "Smallest harmonic degree of the slope fit (k >> d).")
flags.DEFINE_integer("k_max", 128, "Largest harmonic degree computed and fitted.")
flags.DEFINE_integer("nodes", 6000, "Gauss-Legendre nodes in theta.")
flags.DEFINE_float("slope_tol", 0.1, "Tolerance of the rate comparisons (log-log slope units).")
FLAGS = flags.FLAGS


def kernel_on_sphere(kind, d, theta, degree=None):
    """kappa(cos theta) of the NTK ``kind`` ('fcn' or 'pnn') for inputs on S^d."""
    x = np.zeros((1, d + 1))
    x[0, 0] = 1.0
    xp = np.zeros((len(theta), d + 1))
    xp[:, 0], xp[:, 1] = np.cos(theta), np.sin(theta)
    if kind == "fcn":
        k = analytic.fcn_kernels(x, xp, depth=FLAGS.fcn_depth, use_bias=FLAGS.fcn_bias)
    else:
        k = analytic.pnn_kernels(x, xp, degree=degree)
    return np.asarray(k.ntk, np.float64)[0]


def eigenvalues(kappa, theta, weights, d, k_max):
    """mu_0..mu_k_max by the Funk-Hecke formula (module docstring), quadrature in theta."""
    t = np.cos(theta)
    lam = (d - 1) / 2.0
    # dt (1 - t^2)^((d-2)/2) = sin(theta)^(d-1) dtheta
    w = weights * np.sin(theta) ** (d - 1) * kappa
    ratio = special.gamma((d + 1) / 2.0) / (np.sqrt(np.pi) * special.gamma(d / 2.0))
    mus = []
    for k in range(k_max + 1):
        if lam == 0:  # d = 1: Chebyshev
            p = np.cos(k * theta)
        else:
            p = special.eval_gegenbauer(k, lam, t) / special.eval_gegenbauer(k, lam, 1.0)
        mus.append(ratio * float(np.sum(w * p)))
    return np.array(mus)


def slope(mu, k_min, k_max, parity=None):
    """Least-squares slope of log mu_k on log k over k_min <= k <= k_max with mu_k > 0 (and k of
    the given parity); nan when fewer than 3 such k."""
    k = np.arange(len(mu))
    sel = (k >= k_min) & (k <= k_max) & (mu > 0)
    if parity is not None:
        sel &= (k % 2) == parity
    if sel.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(k[sel]), np.log(mu[sel]), 1)[0])


def main(argv):
    del argv
    dims, degrees = [int(d) for d in FLAGS.dims], [int(n) for n in FLAGS.degrees]
    k_min, k_max, nodes = FLAGS.k_min, FLAGS.k_max, FLAGS.nodes
    if FLAGS.smoke:
        k_min, k_max, nodes = 4, 16, 400
        dims, degrees = dims[:1], degrees[:2]
    z, wz = np.polynomial.legendre.leggauss(nodes)
    theta, weights = (z + 1) * np.pi / 2, wz * np.pi / 2
    spectra, fits = {}, {}
    for d in dims:
        kernels = {"fcn": kernel_on_sphere("fcn", d, theta)}
        kernels.update({f"pnn_N{n}": kernel_on_sphere("pnn", d, theta, n) for n in degrees})
        spectra[d], fits[d] = {}, {}
        for name, kappa in kernels.items():
            mu = eigenvalues(kappa, theta, weights, d, k_max)
            spectra[d][name] = mu
            fits[d][name] = {"rel_mu": mu[k_min:k_max + 1] / mu[1],
                             "slope": slope(mu, k_min, k_max),
                             "slope_even_k": slope(mu, k_min, k_max, 0),
                             "slope_odd_k": slope(mu, k_min, k_max, 1),
                             "mu_kmax_over_mu0": float(mu[k_max] / mu[0]),
                             "negative_mu": int(np.sum(mu < -1e-12 * abs(mu[0])))}
        print(f"S^{d}: log-log slope of mu_k over k in [{k_min}, {k_max}] "
              + ", ".join(f"{n} {f['slope']:.2f}" for n, f in fits[d].items()), flush=True)

    claims = _claims(dims, degrees, fits, k_min, k_max)
    tol = FLAGS.slope_tol
    setting = {
        "paper": "paper 000 Theorem 7 (Sec. 3.3): NTK eigenvalues of N-degree PNNs on the "
                 "sphere decay as Omega((N^2 k)^(-d/2)) for k >> d, vs Omega(k^(-d)) for deep "
                 "fcns (Belfer et al. 2021); no numerical experiment in the paper",
        "ours": f"exact infinite-width NTKs of kerntk's fcn (depth {FLAGS.fcn_depth}, "
                f"{'with' if FLAGS.fcn_bias else 'without'} biases) and Eq. 1 PNNs of degree "
                f"{degrees}, on S^d for d in {dims}; mu_k for k <= {k_max} by Funk-Hecke "
                f"projection ({nodes} Gauss-Legendre nodes in theta); slopes fitted over "
                f"k in [{k_min}, {k_max}] (tolerance {tol})",
        "deviations": ["Theorem 7 is asymptotic (k >> d) and a lower bound; we can only "
                       f"measure a finite range of k (up to {k_max}) and compare fitted slopes"]}
    results = {"fits": {str(d): {n: {k: v for k, v in f.items() if k != "rel_mu"}
                                 for n, f in fits[d].items()} for d in dims},
               "spectra": {str(d): {n: (mu / mu[0]).tolist() for n, mu in spectra[d].items()}
                           for d in dims},
               "k_range": [k_min, k_max]}
    _common.write_results(NAME, setting=setting, config=_common.flag_values(), claims=claims,
                          results=results)
    _common.save_figure(_plot(spectra, fits, k_min, k_max), NAME)
    _common.print_claims(claims)


def _claims(dims, degrees, fits, k_min, k_max):
    tol = FLAGS.slope_tol
    pnns = [f"pnn_N{n}" for n in degrees]
    slower = {d: {p: fits[d][p]["slope"] > fits[d]["fcn"]["slope"] + tol for p in pnns}
              for d in dims}
    claims = [_common.claim(
        "thm7/pnn_decay_exponent_smaller",
        paper="PNN NTK eigenvalues decay more slowly than the fcn NTK's: (N^2 k)^(-d/2) vs k^(-d)",
        measured={f"d={d}": {n: round(fits[d][n]["slope"], 2) for n in ["fcn"] + pnns}
                  for d in dims},
        holds=bool(all(all(v.values()) for v in slower.values())),
        rule=f"for every d and every N, the fitted log-log slope of the PNN's mu_k over k in "
             f"[{k_min}, {k_max}] exceeds the fcn's by more than {tol}")]
    # Relative size of the high-frequency eigenvalues: mu_k / mu_1 (mu_1: the linear mode, the
    # largest non-constant one here), PNN over fcn, at every k in the fit range.
    rel = {d: {p: fits[d][p]["rel_mu"] / fits[d]["fcn"]["rel_mu"] for p in pnns} for d in dims}
    claims.append(_common.claim(
        "thm7/pnn_high_frequencies_relatively_larger",
        paper="slower eigenvalue decay for PNNs, hence faster learning of high frequencies",
        measured={f"d={d}": {p: f"{min(r[p]):.2f}-{max(r[p]):.2f}" for p in pnns}
                  for d, r in rel.items()},
        holds=bool(all(min(r[p]) > 1 for r in rel.values() for p in pnns)),
        rule=f"for every d and N, (mu_k / mu_1) of the PNN exceeds that of the fcn at every k in "
             f"[{k_min}, {k_max}]",
        note="measured: the range over k of the PNN's (mu_k / mu_1) divided by the fcn's"))
    mono = {d: all(np.all(fits[d][b]["rel_mu"] > fits[d][a]["rel_mu"])
                   for a, b in zip(pnns, pnns[1:])) for d in dims}
    claims.append(_common.claim(
        "thm7/higher_degree_relatively_larger",
        paper="the Omega((N^2 k)^(-d/2)) form and Fig. 5: more multiplicative interactions, "
              "faster learning of high frequencies",
        measured={f"d={d}": [f"{fits[d][p]['rel_mu'][-1]:.3g}" for p in pnns] for d in dims},
        holds=bool(all(mono.values())),
        rule=f"for every d, (mu_k / mu_1) strictly increases with N (N in {degrees}) at every k "
             f"in [{k_min}, {k_max}]",
        note=f"measured: mu_k / mu_1 at k = {k_max}, in the order of N"))
    pnn_ok = {d: {p: fits[d][p]["slope"] >= -d / 2.0 - tol for p in pnns} for d in dims}
    claims.append(_common.claim(
        "thm7/pnn_rate",
        paper="mu_k = Omega((N^2 k)^(-d/2)): slope >= -d/2",
        measured={f"d={d}": {p: round(fits[d][p]["slope"], 2) for p in pnns} for d in dims},
        holds=bool(all(all(v.values()) for v in pnn_ok.values())),
        rule=f"for every d and N the fitted slope over k in [{k_min}, {k_max}] is >= -d/2 - "
             f"{tol} (consistent with the lower bound at these k)"))
    fcn_ok = {d: fits[d]["fcn"]["slope"] >= -d - tol for d in dims}
    claims.append(_common.claim(
        "thm7/fcn_rate",
        paper="deep fcn: mu_k = Omega(k^(-d)) (cited from Belfer et al. 2021): slope >= -d",
        measured={f"d={d}": round(fits[d]["fcn"]["slope"], 2) for d in dims},
        holds=bool(all(fcn_ok.values())),
        rule=f"for every d the fcn's fitted slope over k in [{k_min}, {k_max}] is >= -d - {tol}",
        note="for ReLU NTKs on S^d in R^(d+1) the known asymptotic rate is k^(-(d+1)) "
             "(Bietti & Mairal 2019); Belfer et al. state k^(-d) for S^(d-1), so the paper's "
             "comparison may mix the two conventions"))
    return claims


def _plot(spectra, fits, k_min, k_max):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(spectra), figsize=(5.5 * len(spectra), 4.2))
    axes = np.atleast_1d(axes)
    for ax, (d, spec) in zip(axes, spectra.items()):
        k = np.arange(1, len(next(iter(spec.values()))))
        for i, (name, mu) in enumerate(spec.items()):
            rel = mu[1:] / mu[0]
            pos = rel > 0
            ax.plot(k[pos], rel[pos], "o-" if name == "fcn" else ".-", ms=3,
                    color="k" if name == "fcn" else f"C{i}",
                    label=f"{name} (slope {fits[d][name]['slope']:.2f})")
        ref = k[k >= k_min].astype(float)
        for p, style in ((d / 2.0, "--"), (float(d), ":")):
            ax.plot(ref, 0.5 * (ref / ref[0]) ** (-p) * spec["fcn"][k_min] / spec["fcn"][0],
                    "grey", ls=style, label=f"$k^{{-{p:g}}}$")
        ax.axvspan(k_min, k_max, color="C9", alpha=0.08)
        ax.set(xscale="log", yscale="log", xlabel="harmonic degree k",
               ylabel="$\\mu_k / \\mu_0$", title=f"NTK eigenvalues on $S^{d}$")
        ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    app.run(main)
