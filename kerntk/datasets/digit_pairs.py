"""MNIST digit-pair sums: arithmetic extrapolation of paper 000 §4.2, Table 1 (after Bloice et al.
2020).

Construction:

* There are 100 ordered digit pairs (a, b), a, b ∈ 0..9. An example of pair (a, b) is an MNIST image
  of digit a and an MNIST image of digit b placed side by side (a on the left), a 28×56 image, with
  the regression label a + b.
* The pairs are split into 90 seen pairs (training and "interpolation" testing) and 10 unseen pairs
  ("extrapolation" testing). For k-fold cross validation (k = 3 in the paper), the 100 pairs are
  shuffled once with ``seed`` and fold i's unseen pairs are positions 10i..10i+9 of that order, so
  the folds' unseen sets are disjoint.
* An example draws its pair uniformly from the allowed pairs, then each digit image uniformly (with
  replacement) among the source images of that digit. Training examples use MNIST training images;
  test examples (seen and unseen pairs) use MNIST test images, so no test image was seen in training.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from kerntk._validation import is_whole

#: All 100 ordered digit pairs (a, b), as an int array ``(100, 2)`` in row-major order.
ALL_PAIRS = np.array([(a, b) for a in range(10) for b in range(10)], dtype=np.int64)


def digit_pair_folds(n_folds: int = 3, n_unseen: int = 10, seed: int = 0) -> list:
    """Seen/unseen splits of the 100 ordered pairs for ``n_folds``-fold cross validation.

    Returns:
        list of ``n_folds`` dicts with ``seen`` ``(100 - n_unseen, 2)`` and ``unseen``
        ``(n_unseen, 2)`` int arrays of pairs. Unseen sets of different folds are disjoint.
    """
    if not is_whole(n_folds) or n_folds < 1 or not is_whole(n_unseen) or n_unseen < 1:
        raise ValueError(f"n_folds and n_unseen must be positive integers; got {n_folds}, "
                         f"{n_unseen}.")
    n_folds, n_unseen = int(n_folds), int(n_unseen)
    if n_folds * n_unseen > len(ALL_PAIRS):
        raise ValueError(f"{n_folds} folds of {n_unseen} unseen pairs need more than the "
                         f"{len(ALL_PAIRS)} pairs there are.")
    order = np.random.default_rng(seed).permutation(len(ALL_PAIRS))
    folds = []
    for i in range(int(n_folds)):
        unseen_idx = order[i * n_unseen:(i + 1) * n_unseen]
        seen_mask = np.ones(len(ALL_PAIRS), dtype=bool)
        seen_mask[unseen_idx] = False
        folds.append(dict(seen=ALL_PAIRS[seen_mask], unseen=ALL_PAIRS[np.sort(unseen_idx)]))
    return folds


def make_digit_pairs(x: np.ndarray, y: np.ndarray, pairs: Sequence, n: int,
                     seed: Optional[int] = None) -> tuple:
    """Build ``n`` side-by-side examples of the given digit pairs from single-digit images.

    Args:
        x: single-digit images ``(N, H, W)`` or ``(N, H, W, C)``.
        y: their digit labels ``(N,)``.
        pairs: allowed pairs ``(P, 2)``.
        n: number of examples.
        seed: seed of the sampling (pair choice, then one image for each side).

    Returns:
        ``images`` ``(n, H, 2W[, C])`` (left digit a, right digit b), ``sums`` float32 ``(n,)`` = a + b,
        ``pair_of`` int ``(n, 2)``: the pair (a, b) of each example.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(pairs) == 0:
        raise ValueError("pairs is empty.")
    if pairs.min() < 0 or pairs.max() > 9:
        raise ValueError("pairs must hold digits 0..9.")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels.")
    if not is_whole(n) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}.")
    n = int(n)
    by_digit = {d: np.flatnonzero(y == d) for d in range(10)}
    missing = sorted({int(d) for d in np.unique(pairs)} - {d for d, i in by_digit.items() if len(i)})
    if missing:
        raise ValueError(f"no source image of digit(s) {missing}.")
    rng = np.random.default_rng(seed)
    pair_of = pairs[rng.integers(len(pairs), size=int(n))]
    left = np.empty(int(n), dtype=np.int64)
    right = np.empty(int(n), dtype=np.int64)
    for d in range(10):
        for side, col in ((left, 0), (right, 1)):
            rows = pair_of[:, col] == d
            if rows.any():
                side[rows] = rng.choice(by_digit[d], size=int(rows.sum()))
    images = np.concatenate([x[left], x[right]], axis=2)
    return images, pair_of.sum(axis=1).astype(np.float32), pair_of


def load_digit_pair_sums(fold: int = 0, *, n_folds: int = 3, n_train: int = 9000,
                         n_test: int = 1000, split_seed: int = 0, seed: Optional[int] = 0,
                         data_dir: Optional[str] = None, normalize: str = "unit",
                         flatten: bool = False, download="auto") -> dict:
    """One fold of the MNIST digit-pair sum task (paper 000 Table 1), ready for ``fit``.

    Args:
        fold: which of the ``n_folds`` seen/unseen splits (:func:`digit_pair_folds`).
        n_folds: number of folds (3 in the paper).
        n_train: training examples (seen pairs, MNIST train images).
        n_test: examples in each test set (seen pairs and unseen pairs, MNIST test images).
        split_seed: seed of the pair split (keep it fixed across folds).
        seed: seed of the example sampling.
        data_dir, normalize, download: passed to :func:`kerntk.datasets.load`.
        flatten: flatten images to ``(n, 28*56)``.

    Returns:
        dict with ``x_train``, ``y_train`` (sums, float32 ``(n, 1)``), ``x_test_seen``,
        ``y_test_seen`` (interpolation), ``x_test_unseen``, ``y_test_unseen`` (extrapolation),
        ``seen_pairs``, ``unseen_pairs`` and ``pairs_train`` / ``pairs_test_seen`` /
        ``pairs_test_unseen`` (the (a, b) of every example). Images are float32 ``(n, 28, 56, 1)``.
    """
    folds = digit_pair_folds(n_folds, seed=split_seed)
    if not is_whole(fold) or not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}; got {fold!r}.")
    from kerntk.datasets.images import load

    split = folds[int(fold)]
    x_tr, y_tr = load("mnist", "train", data_dir=data_dir, normalize=normalize, download=download)
    x_te, y_te = load("mnist", "test", data_dir=data_dir, normalize=normalize, download=download)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(2 ** 31, size=3)
    out = dict(seen_pairs=split["seen"], unseen_pairs=split["unseen"])
    for key, (x, y, pairs, n, s) in dict(
            train=(x_tr, y_tr, split["seen"], n_train, seeds[0]),
            test_seen=(x_te, y_te, split["seen"], n_test, seeds[1]),
            test_unseen=(x_te, y_te, split["unseen"], n_test, seeds[2])).items():
        images, sums, pair_of = make_digit_pairs(x, y, pairs, n, seed=int(s))
        if flatten:
            images = images.reshape(len(images), -1)
        out[f"x_{key}"], out[f"y_{key}"], out[f"pairs_{key}"] = images, sums[:, None], pair_of
    return out
