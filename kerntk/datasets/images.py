"""Image classification datasets as NumPy arrays: MNIST, Fashion-MNIST, CIFAR-10 (and CIFAR-2 style
class subsets) and USPS.

Where the data come from, in order (the first that can serve the load wins):

1. A local directory of ``.npz`` files laid out as ``<dir>/<name>/<split>*.npz`` with arrays ``x``
   (images, ``(N, H, W)`` or ``(N, H, W, C)``) and ``y`` (integer labels, ``(N,)``). The directory is
   the ``data_dir=`` argument, else ``$KERNTK_DATA_DIR``. A split file may carry a size suffix
   (``train_4k.npz``, ``test_1k.npz``); ``train.npz`` is preferred over suffixed files when both
   exist.
2. The real data shipped inside kerntk (:data:`PACKAGED_SUBSETS`): the first 256 CIFAR-10
   training images of classes 7 (horse) and 9 (truck), in the training set's original order
   (124 horses, 132 trucks). It serves a :func:`load` only when it gives exactly what a full copy
   of the split would: CIFAR-10 ``"train"``, ``classes`` given and among (7, 9), ``n`` given and
   at most the number of images of those classes it holds, and no ``seed`` (the first ``n``; a
   seeded draw from 256 images is not the draw from the whole split). Anything else
   (``n=4000``, ``n=None``, a ``seed``, other classes or splits, :func:`load_raw`) is never cut
   down to the subset; it goes on to the next sources.
3. tensorflow-datasets data that is already prepared (``tfds.load(..., download=False)``).
4. A tensorflow-datasets download, only when ``download=True``, or ``download="auto"``, the
   network answers a 2-second probe and ``$KERNTK_NO_DOWNLOAD`` is not set. Offline this fails
   within seconds with a message that says how to point kerntk at local files, instead of
   tfds's minutes-long retry loop.

The packaged subset is what lets the README's demo (128 CIFAR-2 points, classes 7/9) run from a
bare install without a network. CIFAR-10 is by Alex Krizhevsky, "Learning Multiple Layers of
Features from Tiny Images", tech. report, University of Toronto, 2009
(https://www.cs.toronto.edu/~kriz/cifar.html).

tensorflow-datasets is imported inside the functions that need it, so ``import kerntk`` (and
``import kerntk.datasets``) never imports it.
"""

from __future__ import annotations

import glob
import importlib.resources
import os
import socket
import threading
from typing import Optional, Sequence, Union

import numpy as np

from kerntk._validation import is_whole

#: Datasets ``load`` knows, with their image shape (H, W, C), number of classes and value range of
#: the stored pixels. USPS is the Hastie/Tibshirani/Friedman "zip code" version, stored in [-1, 1].
DATASETS = {
    "mnist": dict(shape=(28, 28, 1), num_classes=10, raw_range=(0.0, 255.0), tfds="mnist"),
    "fashion_mnist": dict(shape=(28, 28, 1), num_classes=10, raw_range=(0.0, 255.0),
                          tfds="fashion_mnist"),
    "cifar10": dict(shape=(32, 32, 3), num_classes=10, raw_range=(0.0, 255.0), tfds="cifar10"),
    "usps": dict(shape=(16, 16, 1), num_classes=10, raw_range=(-1.0, 1.0), tfds=None),
}

SPLITS = ("train", "test")
NORMALIZATIONS = ("unit", "raw", "standardize", "sphere")
LABEL_MODES = ("int", "pm1", "onehot")

#: Environment variable naming a local ``.npz`` data directory.
DATA_DIR_ENV = "KERNTK_DATA_DIR"

#: Environment variable that, set to ``1``, turns ``download="auto"`` into ``download=False``: a
#: machine (or a test run) that must never fetch data fails fast instead.
NO_DOWNLOAD_ENV = "KERNTK_NO_DOWNLOAD"

#: Host and port the network probe connects to (where tensorflow-datasets downloads from).
PROBE_ADDRESS = ("storage.googleapis.com", 443)


class DatasetNotFoundError(FileNotFoundError):
    """No local file, no prepared tfds data, and no (allowed or reachable) download."""


#: Real data shipped in ``kerntk/datasets/data/``: ``(name, split)`` → the file and the classes it
#: holds. Each file holds arrays ``x``, ``y`` (stored layout, as a local ``.npz``) and ``index``
#: (each image's index in the original split). See the module docstring for when one is used.
PACKAGED_SUBSETS = {
    ("cifar10", "train"): dict(file="cifar10_train_classes7_9_256.npz", classes=(7, 9)),
}


def candidate_data_dirs(data_dir: Optional[str] = None) -> list:
    """Local directories searched for ``<name>/<split>*.npz``: ``[data_dir]`` if given, else
    ``[$KERNTK_DATA_DIR]`` if set, else ``[]``."""
    if data_dir is not None:
        return [os.fspath(data_dir)]
    if os.environ.get(DATA_DIR_ENV):
        return [os.environ[DATA_DIR_ENV]]
    return []


def _packaged_path(name: str, split: str) -> Optional[str]:
    entry = PACKAGED_SUBSETS.get((name, split))
    if entry is None:
        return None
    return str(importlib.resources.files(__package__) / "data" / entry["file"])


def _packaged_file_for(name: str, split: str, classes: Optional[Sequence[int]],
                       n: Optional[int], seed: Optional[int]) -> Optional[str]:
    """The packaged subset's path when it gives a load exactly what a full copy would (the first
    ``n`` images of ``classes``, unseeded), else None."""
    entry = PACKAGED_SUBSETS.get((name, split))
    if (entry is None or classes is None or n is None or seed is not None
            or not set(classes) <= set(entry["classes"])):
        return None
    path = _packaged_path(name, split)
    if not os.path.isfile(path):
        return None
    with np.load(path) as f:
        available = int(np.isin(f["y"], list(classes)).sum())
    return path if n <= available else None


def find_local_file(name: str, split: str, data_dir: Optional[str] = None) -> Optional[str]:
    """Path of the local ``.npz`` file for ``name``/``split``, or None when there is none.

    Looks for ``<dir>/<name>/<split>.npz``, then ``<dir>/<name>/<split>_*.npz`` (e.g.
    ``train_10k.npz``), in each of :func:`candidate_data_dirs`.
    """
    for d in candidate_data_dirs(data_dir):
        exact = os.path.join(d, name, f"{split}.npz")
        if os.path.isfile(exact):
            return exact
        suffixed = sorted(glob.glob(os.path.join(glob.escape(os.path.join(d, name)),
                                                 f"{split}_*.npz")))
        if suffixed:
            return suffixed[0]
    return None


def network_available(timeout: float = 2.0) -> bool:
    """True when a TCP connection to :data:`PROBE_ADDRESS` opens within ``timeout`` seconds.

    The probe runs in a daemon thread so that a hanging DNS lookup (which the socket timeout does
    not cover) cannot hold the caller longer than ``timeout``.
    """
    result = []

    def probe():
        try:
            with socket.create_connection(PROBE_ADDRESS, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _not_found_message(name: str, split: str, data_dir: Optional[str], reason: str) -> str:
    searched = candidate_data_dirs(data_dir)
    entry = PACKAGED_SUBSETS.get((name, split))
    packaged = "" if entry is None else (
        f" kerntk's packaged subset of this split ({entry['file']}: classes "
        f"{list(entry['classes'])} only) serves only loads with classes among those and an n it "
        f"holds in full; this load asks for more.")
    return (
        f"Could not load {name!r} split {split!r}: {reason}. Local directories searched: "
        f"{searched or f'none (data_dir not given, {DATA_DIR_ENV} not set)'}.{packaged} Point "
        f"kerntk at local .npz files with "
        f"`kerntk.datasets.load({name!r}, {split!r}, data_dir=DIR)` or by setting the environment "
        f"variable {DATA_DIR_ENV}=DIR, where DIR/{name}/{split}.npz (or {split}_*.npz) holds "
        f"arrays x (images) and y (integer labels)."
    )


def _load_tfds(name: str, split: str, data_dir: Optional[str], tfds_data_dir: Optional[str],
               download: Union[bool, str]) -> tuple:
    """Prepared tfds data first; a download only if allowed and the network answers."""
    tfds_name = DATASETS[name]["tfds"]
    if tfds_name is None:
        raise DatasetNotFoundError(_not_found_message(
            name, split, data_dir, "no local file, and tensorflow-datasets has no such dataset"))
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetNotFoundError(_not_found_message(
            name, split, data_dir, "no local file, and tensorflow-datasets is not installed"))

    def as_arrays(ds) -> tuple:
        xs, ys = [], []
        # Iterating in batches: `batch_size=-1` aborts the process on some mocked datasets.
        for xb, yb in tfds.as_numpy(ds.batch(4096)):
            xs.append(xb)
            ys.append(yb)
        return np.concatenate(xs), np.concatenate(ys)

    try:
        ds = tfds.load(tfds_name, split=split, as_supervised=True, download=False,
                       data_dir=tfds_data_dir)
        return as_arrays(ds)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as err:
        prepared_error = err
    if download is False:
        raise DatasetNotFoundError(_not_found_message(
            name, split, data_dir, "no local file, no prepared tensorflow-datasets data, and "
            "download=False")) from prepared_error
    if download == "auto" and os.environ.get(NO_DOWNLOAD_ENV, "") not in ("", "0"):
        raise DatasetNotFoundError(_not_found_message(
            name, split, data_dir, "no local file, no prepared tensorflow-datasets data, and "
            f"downloads are off (${NO_DOWNLOAD_ENV} is set)")) from prepared_error
    if download == "auto" and not network_available():
        raise DatasetNotFoundError(_not_found_message(
            name, split, data_dir, "no local file, no prepared tensorflow-datasets data, and the "
            f"network is unreachable (probe of {PROBE_ADDRESS[0]}:{PROBE_ADDRESS[1]} failed)"))
    ds = tfds.load(tfds_name, split=split, as_supervised=True, download=True,
                   data_dir=tfds_data_dir)
    return as_arrays(ds)


def load_raw(name: str, split: str, *, data_dir: Optional[str] = None,
             tfds_data_dir: Optional[str] = None,
             download: Union[bool, str] = "auto") -> tuple:
    """The stored arrays of a split, unprocessed: ``(x, y, source)``.

    ``x`` keeps its stored dtype and layout (``(N, H, W)`` or ``(N, H, W, C)``), ``y`` is the integer
    labels ``(N,)``, ``source`` is the ``.npz`` path or ``"tfds:<name>"``. Always the whole split,
    so never the packaged subset. See :func:`load` for the arguments.
    """
    return _load_split(name, split, data_dir, tfds_data_dir, download)


def _load_split(name: str, split: str, data_dir: Optional[str], tfds_data_dir: Optional[str],
                download: Union[bool, str], classes: Optional[Sequence[int]] = None,
                n: Optional[int] = None, seed: Optional[int] = None) -> tuple:
    """``(x, y, source)`` from the first source that can serve ``n`` examples of ``classes``
    (module docstring); ``classes=None`` or ``n=None`` asks for the whole split."""
    _check_name_split(name, split)
    if download not in (True, False, "auto"):
        raise ValueError(f"download must be True, False or 'auto'; got {download!r}.")
    path = find_local_file(name, split, data_dir)
    if path is None:
        path = _packaged_file_for(name, split, classes, n, seed)
    if path is not None:
        with np.load(path) as f:
            if "x" not in f or "y" not in f:
                raise ValueError(f"{path} must hold arrays 'x' and 'y'; it has {sorted(f.files)}.")
            x, y = f["x"], f["y"]
        source = path
    else:
        x, y = _load_tfds(name, split, data_dir, tfds_data_dir, download)
        source = f"tfds:{DATASETS[name]['tfds']}"
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} examples but y has {len(y)}.")
    return x, y, source


def _check_name_split(name: str, split: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; known: {sorted(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {name!r}; use one of {SPLITS}.")


def _normalize(x: np.ndarray, name: str, normalize: Union[str, bool]) -> np.ndarray:
    if normalize is True:
        normalize = "unit"
    elif normalize is False or normalize is None:
        normalize = "raw"
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS} (or True/False); "
                         f"got {normalize!r}.")
    x = x.astype(np.float32)
    if normalize == "raw":
        return x
    lo, hi = DATASETS[name]["raw_range"]
    x = (x - np.float32(lo)) / np.float32(hi - lo)
    if normalize == "unit":
        return x
    flat = x.reshape(len(x), -1)
    if normalize == "standardize":
        mean = flat.mean(axis=1, keepdims=True)
        std = flat.std(axis=1, keepdims=True)
        flat = (flat - mean) / np.maximum(std, np.float32(1e-12))
    else:  # "sphere"
        norm = np.linalg.norm(flat, axis=1, keepdims=True)
        flat = flat / np.maximum(norm, np.float32(1e-12))
    return flat.reshape(x.shape).astype(np.float32)


def _encode_labels(y: np.ndarray, num_classes: int, labels: str) -> np.ndarray:
    if labels == "int":
        return y.astype(np.int64)
    onehot = np.eye(num_classes, dtype=np.float32)[y]
    if labels == "onehot":
        return onehot
    # "pm1"
    if num_classes == 2:
        return np.where(y == 1, 1.0, -1.0).astype(np.float32)
    return 2.0 * onehot - 1.0


def load(name: str, split: str = "train", *, data_dir: Optional[str] = None,
         classes: Optional[Sequence[int]] = None, n: Optional[int] = None,
         normalize: Union[str, bool] = "unit", flatten: bool = False, labels: str = "int",
         relabel: bool = True, seed: Optional[int] = None, tfds_data_dir: Optional[str] = None,
         download: Union[bool, str] = "auto") -> tuple:
    """Load an image classification split as NumPy arrays ``(x, y)``.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"usps"``.
        split: ``"train"`` or ``"test"``.
        data_dir: local directory with ``<name>/<split>*.npz`` files (see the module docstring);
            default ``$KERNTK_DATA_DIR``. When neither is given (or has the split), the packaged
            CIFAR-10 subset serves the loads it holds in full, then tensorflow-datasets.
        classes: keep only these original class ids, e.g. ``(7, 9)`` or ``(0, 2)`` for a CIFAR-2
            task. With ``relabel=True`` (default) label ``classes[i]`` becomes ``i``.
        n: keep this many examples (after the class filter): the first ``n`` in the source's
            order, or a random ``n`` when ``seed`` is given. ``None`` keeps all. A source holding
            fewer than ``n`` raises ``ValueError``, except the packaged subset, which is then
            skipped (never truncated) for the next source. The packaged subset holds the first
            images of its classes in the original order and serves only unseeded loads, so it
            gives the same examples as a full copy in that order (e.g. the official CIFAR-10
            batches); a seeded load goes on to the next sources.
        normalize: ``"unit"`` (default) maps the stored range to [0, 1]: ``x / 255`` for the uint8
            sets, ``(x + 1) / 2`` for USPS (stored in [-1, 1]). ``"raw"`` (or False) keeps the
            stored values as float32. ``"standardize"``: unit-range, then each example has zero
            mean and unit standard deviation. ``"sphere"``: unit-range, then each flattened example
            has Euclidean norm 1.
        flatten: return ``x`` as ``(N, H*W*C)`` instead of ``(N, H, W, C)``.
        labels: ``"int"`` → int64 ``(N,)``; ``"onehot"`` → float32 ``(N, C)``; ``"pm1"`` →
            float32 ±1: ``(N,)`` when there are two classes (class index 0 → −1, index 1 → +1),
            else ``2·onehot − 1`` of shape ``(N, C)``. C is ``len(classes)`` when ``relabel``,
            else 10.
        relabel: renumber ``classes`` as ``0..len(classes)-1`` in the order given.
        seed: shuffle the source's examples (after the class filter) with
            ``np.random.default_rng(seed).permutation`` before taking ``n``, and return them in
            shuffled order.
        tfds_data_dir: tensorflow-datasets data directory (its default when None).
        download: ``"auto"`` (default) downloads through tfds only if the network answers a
            2-second probe and ``$KERNTK_NO_DOWNLOAD`` is not set; ``True`` always tries;
            ``False`` never does.

    Returns:
        ``x`` float32 ``(N, H, W, C)`` (greyscale sets get ``C = 1``) or ``(N, H*W*C)`` with
        ``flatten``; ``y`` as set by ``labels``. Shapes: MNIST/Fashion-MNIST 28×28×1, CIFAR-10
        32×32×3 (RGB), USPS 16×16×1.

    Raises:
        ValueError: unknown name, split, normalization or label mode; ``classes`` out of range or
            repeated; ``n`` larger than what is available; non-finite pixels.
        DatasetNotFoundError: the data are nowhere to be found (the message says how to point
            kerntk at local files with ``data_dir=`` or ``$KERNTK_DATA_DIR``).

    Example:
        >>> x, y = load("cifar10", "train", classes=(0, 2), n=128, labels="pm1", flatten=True)
    """
    _check_name_split(name, split)
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}; got {labels!r}.")
    info = DATASETS[name]
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < info["num_classes"]]
        if bad:
            raise ValueError(f"classes {bad} out of range for {name!r} "
                             f"(0..{info['num_classes'] - 1}).")
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError(f"classes must be distinct and non-empty; got {classes}.")
    if n is not None and (not is_whole(n) or n < 1):
        raise ValueError(f"n must be a positive integer or None; got {n!r}.")
    n = None if n is None else int(n)

    x, y, source = _load_split(name, split, data_dir, tfds_data_dir, download, classes, n, seed)
    y = y.astype(np.int64)
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    order = np.arange(len(y))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(len(y))
    if n is not None:
        if n > len(y):
            raise ValueError(f"n={n} but {name!r} {split!r}"
                             f"{'' if classes is None else f' with classes {classes}'} has only "
                             f"{len(y)} examples ({source}).")
        order = order[:n]
    x, y = x[order], y[order]

    x = _normalize(x, name, normalize)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{source}: images contain NaN or infinite values.")
    if x.ndim == 3:
        x = x[..., None]
    if flatten:
        x = x.reshape(len(x), -1)

    num_classes = info["num_classes"]
    if classes is not None and relabel:
        lookup = np.full(info["num_classes"], -1, dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        y = lookup[y]
        num_classes = len(classes)
    return x, _encode_labels(y, num_classes, labels)
