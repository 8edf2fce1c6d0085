"""CIFAR-2 data and the thesis's 5-layer fcn/CNN, shared by the thesis Ch. 4 trainers
(``catapult_gd.py``, ``sgd_spikes.py``). Not a trainer itself."""

import numpy as np

import kerntk


def load_cifar2(n, seed, arch, image_stride, data_dir):
    """``n`` CIFAR-10 points of classes 7/9 (labels -1/+1, ``(n, 1)``), standardized per image;
    flattened for the fcn, every ``image_stride``-th pixel for the CNN. ``seed=None``: the first
    ``n`` class-7/9 training images (the same from kerntk's packaged subset and a full copy);
    an int: ``n`` drawn at random from the whole split with that seed."""
    x, y = kerntk.datasets.load("cifar10", "train", classes=(7, 9), n=n, seed=seed,
                                flatten=arch == "fcn", normalize="standardize", labels="pm1",
                                data_dir=data_dir)
    if arch == "cnn" and image_stride > 1:
        x = x[:, ::image_stride, ::image_stride]
    return x.astype(np.float32), y.reshape(-1, 1).astype(np.float32)


def build_model(arch, depth, width, channels, input_shape, use_bias, b_std, seed):
    """``kerntk.models.fcn(depth, width)`` or ``kerntk.models.cnn(depth, channels)``."""
    kw = dict(use_bias=use_bias, b_std=b_std, seed=seed, input_shape=input_shape)
    if arch == "fcn":
        return kerntk.models.fcn(depth, width, **kw)
    return kerntk.models.cnn(depth, channels, **kw)
