"""Independent numpy re-implementations of the layers' forward math, written from the formulas."""

from __future__ import annotations

import math

import numpy as np


def relu(x):
    return np.maximum(x, 0.0)


def conv_nd(x, kernel, strides, padding):
    """Cross-correlation as TF computes it (channels_last, TF's "same" padding split)."""
    spatial = x.shape[1:-1]
    ks = kernel.shape[:-2]
    if padding == "same":
        out = [math.ceil(n / s) for n, s in zip(spatial, strides)]
        pads = []
        for n, k, s, o in zip(spatial, ks, strides, out):
            total = max((o - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    else:
        out = [(n - k) // s + 1 for n, k, s in zip(spatial, ks, strides)]
    y = np.zeros((x.shape[0], *out, kernel.shape[-1]))
    for idx in np.ndindex(*out):
        window = tuple(slice(i * s, i * s + k) for i, s, k in zip(idx, strides, ks))
        patch = x[(slice(None),) + window + (slice(None),)]  # (b, *ks, cin)
        y[(slice(None),) + idx + (slice(None),)] = np.tensordot(
            patch, kernel, axes=(list(range(1, len(ks) + 2)), list(range(len(ks) + 1))))
    return y


def linear(a, kernel, bias, W_std, b_std, parameterization, conv=None):
    """``W_std a W / sqrt(fan_in) + b_std b`` (ntk) or ``a W + b`` (standard)."""
    fan_in = int(np.prod(kernel.shape[:-1]))
    z = a @ kernel if conv is None else conv_nd(a, kernel, *conv)
    if parameterization == "ntk":
        z = z * W_std / math.sqrt(fan_in)
    if bias is not None:
        z = z + (b_std * bias if parameterization == "ntk" else bias)
    return z


def polynomial(z, degree, activation, skip, W_std, b_std, use_bias):
    """Hadamard-product recursion of paper 000 Eq. 1 / CCP with the documented scales."""
    var = W_std ** 2 + (b_std ** 2 if use_bias else 0.0)
    act = relu if activation == "relu" else (lambda t: t)
    s = math.sqrt((2.0 if activation == "relu" else 1.0) / var)
    c = math.sqrt(2.0 + (2.0 / math.sqrt(math.pi) if activation == "relu" else 0.0))
    units = z.shape[-1] // degree
    y = s * act(z[..., :units])
    for n in range(1, degree):
        t = s * act(z[..., n * units:(n + 1) * units])
        y = (t * y + y) / c if skip else t * y
    return y
