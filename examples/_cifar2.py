"""CIFAR-2 data and the thesis's networks (5-layer FCN/CNN, 2-layer "shallow" FCN), shared by the
thesis Ch. 4 trainers (``catapult_gd.py``, ``sgd_spikes.py``, ``eta_crit_hessian_vs_ntk.py``).
Not a trainer itself."""

import numpy as np
from absl import flags

import _common
import kerntk


def define_flags(*, batch_size: bool = False) -> None:
    """The CIFAR-2 flags of the thesis Ch. 4 trainers, with the thesis's values as defaults:
    ``--n``, ``--channels``, ``--image_stride`` and (SGD trainers) ``--batch_size``. Filed under
    the calling trainer, so its ``--help`` lists them with its own."""
    kw = {"module_name": _common._caller_module()}
    flags.DEFINE_integer("n", 128, "Training points (CIFAR-10 classes 7 and 9; thesis: 128).",
                         **kw)
    flags.DEFINE_integer("channels", 512, "Channels per conv layer of the CNN (thesis: 512).",
                         **kw)
    flags.DEFINE_integer("image_stride", 1, "CNN: keep every k-th pixel (2: 16x16 images); 1 is "
                         "the thesis's 32x32.", **kw)
    if batch_size:
        flags.DEFINE_integer("batch_size", 32, "SGD batch size (thesis: 32).", **kw)


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
