"""CIFAR-2 data and the thesis's networks (5-layer FCN/CNN, 2-layer "shallow" FCN), shared by the
thesis Ch. 4 trainers (``catapult_gd.py``, ``sgd_spikes.py``, ``eta_crit_hessian_vs_ntk.py``).
Not a trainer itself."""

import numpy as np

import kerntk


def load_cifar2(n, seed, arch, image_stride, data_dir):
    """``n`` CIFAR-10 points of classes 7/9 (labels -1/+1, ``(n, 1)``), standardized per image;
    flattened for the fcn and the shallow net (``arch="shallow"``), every ``image_stride``-th pixel for the CNN. ``seed=None``: the first
    ``n`` class-7/9 training images (the same from kerntk's packaged subset and a full copy);
    an int: ``n`` drawn at random from the whole split with that seed."""
    x, y = kerntk.datasets.load("cifar10", "train", classes=(7, 9), n=n, seed=seed,
                                flatten=arch != "cnn", normalize="standardize", labels="pm1",
                                data_dir=data_dir)
    if arch == "cnn" and image_stride > 1:
        x = x[:, ::image_stride, ::image_stride]
    return x.astype(np.float32), y.reshape(-1, 1).astype(np.float32)


def build_model(arch, depth, width, channels, input_shape, use_bias, b_std, seed):
    """``kerntk.models.cnn(depth, channels)`` for ``arch="cnn"``, else
    ``kerntk.models.fcn(depth, width)`` (``"fcn"``; ``"shallow"`` is the thesis's 2-layer FCN,
    called with ``depth=2``)."""
    kw = dict(use_bias=use_bias, b_std=b_std, seed=seed, input_shape=input_shape)
    if arch == "cnn":
        return kerntk.models.cnn(depth, channels, **kw)
    return kerntk.models.fcn(depth, width, **kw)
