"""kerntk.datasets: the data of the papers' experiments, as NumPy arrays.

* Image classification (:func:`load`): MNIST, Fashion-MNIST, CIFAR-10 (and CIFAR-2 style subsets via
  ``classes=``), USPS; from local ``.npz`` files, the CIFAR-10 classes 7/9 subset shipped with
  kerntk (enough for the README demo, offline), prepared tensorflow-datasets data, or a download
  when the network answers.
* Low-rank polynomial regression with exact EGOPs (thesis Ch. 4): :func:`rank_task`,
  :func:`rank_target`, :func:`rank_target_gradient`, :func:`rank_egop`.
* Extrapolation targets of paper 000 Fig. 1–2: :func:`extrapolation_task`.
* Spherical-harmonic targets of paper 000 Fig. 5: :class:`SphericalHarmonicTarget`,
  :func:`gegenbauer`.
* MNIST digit-pair sums of paper 000 Table 1: :func:`load_digit_pair_sums`,
  :func:`digit_pair_folds`, :func:`make_digit_pairs`.

Nothing here imports tensorflow-datasets until a loader needs it.
"""

from kerntk.datasets.digit_pairs import (ALL_PAIRS, digit_pair_folds, load_digit_pair_sums,
                                         make_digit_pairs)
from kerntk.datasets.extrapolation import (EXTRAPOLATION_TARGETS, cos2x, cubic,
                                           extrapolation_task, in_region, sum_squares,
                                           train_region)
from kerntk.datasets.images import (DATA_DIR_ENV, DATASETS, NO_DOWNLOAD_ENV, PACKAGED_SUBSETS,
                                    DatasetNotFoundError, candidate_data_dirs, find_local_file,
                                    load, load_raw, network_available)
from kerntk.datasets.spherical import (PAPER_FREQUENCIES, SphericalHarmonicTarget, gegenbauer,
                                       harmonic_dimension, sample_sphere, spherical_harmonic_task)
from kerntk.datasets.synthetic import (RANK_TASKS, rank_egop, rank_target, rank_target_gradient,
                                       rank_task)

__all__ = [
    "ALL_PAIRS", "DATASETS", "DATA_DIR_ENV", "DatasetNotFoundError", "EXTRAPOLATION_TARGETS",
    "NO_DOWNLOAD_ENV", "PACKAGED_SUBSETS", "PAPER_FREQUENCIES", "RANK_TASKS",
    "SphericalHarmonicTarget", "candidate_data_dirs", "cos2x",
    "cubic", "digit_pair_folds", "extrapolation_task", "find_local_file", "gegenbauer",
    "harmonic_dimension", "in_region", "load", "load_digit_pair_sums", "load_raw",
    "make_digit_pairs", "network_available", "rank_egop", "rank_target", "rank_target_gradient",
    "rank_task", "sample_sphere", "spherical_harmonic_task", "sum_squares", "train_region",
]
