"""Shared by the example trainers (not a trainer itself): the common flags, a quiet TensorFlow
start-up, and the results file every trainer writes.

A trainer imports this module first (it sets ``TF_CPP_MIN_LOG_LEVEL`` before TensorFlow loads),
calls :func:`define_flags` with its own defaults, and ends with :func:`write_results`, which
writes ``<out_dir>/<name>.json``::

    {"name": ..., "command": "python examples/x.py --flag=...", "smoke": false, "wall_s": ...,
     "versions": {...},
     "setting": {"paper": "what the paper ran", "ours": "what this run did",
                 "deviations": ["what differs, and why"]},
     "config": {... every flag value ...},
     "claims": [{"id": "table4.1/alignment_increases", "paper": "the paper's number or statement",
                 "measured": "ours", "rule": "the stated rule the verdict is computed by",
                 "holds": true, "note": "..."}],
     "results": {... the trainer's own numbers ...}}

``holds`` is computed by the trainer from the run, by the rule it states; nothing is typed in by
hand. ``examples/make_results.py`` builds ``RESULTS.md`` from these files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
_STARTED = time.time()

CLAIM_KEYS = ("id", "paper", "measured", "rule", "holds")
SETTING_KEYS = ("paper", "ours", "deviations")


def _caller_module() -> str:
    """The module name absl files a flag under for the trainer calling :func:`define_flags`
    (``sys.argv[0]`` for a script run as ``__main__``, as absl itself does)."""
    name = sys._getframe(2).f_globals.get("__name__", "__main__")
    return sys.argv[0] if name == "__main__" else name


def define_flags(*, width: int | None = None, use_bias: bool | None = None,
                 b_std: float | None = None, seeds: int | None = None,
                 data_dir: bool = False) -> None:
    """Defines the flags every trainer shares, with the calling trainer's defaults.

    Always: ``--seed`` (first random seed), ``--out_dir``, ``--smoke`` (a tiny run for tests).
    ``width``, ``use_bias``/``b_std``, ``seeds`` and ``data_dir`` define those flags only when the
    trainer has them (its default is the paper's setting). The flags are filed under the calling
    trainer, so ``--help`` lists them with its own.
    """
    module = _caller_module()
    kw = {"module_name": module}
    flags.DEFINE_integer("seed", 0, "First random seed (data and initialization).", **kw)
    flags.DEFINE_string("out_dir", "out", "Where the JSON and PNG go.", **kw)
    flags.DEFINE_bool("smoke", False, "A tiny, fast run for tests (its results are never "
                      "quoted in RESULTS.md).", **kw)
    if width is not None:
        flags.DEFINE_integer("width", width, f"Hidden width (paper setting: {width}).", **kw)
    if use_bias is not None:
        flags.DEFINE_bool("use_bias", use_bias, "NTK-parameterized biases in every layer.", **kw)
        flags.DEFINE_float("b_std", 1.0 if b_std is None else b_std,
                           "Standard deviation of the biases when --use_bias.", **kw)
    if seeds is not None:
        flags.DEFINE_integer("seeds", seeds, f"Independent runs (paper setting: {seeds}).", **kw)
    if data_dir:
        flags.DEFINE_string("data_dir", None, "Data directory for kerntk.datasets.load "
                            "(default: $KERNTK_DATA_DIR, then the subset shipped with kerntk).",
                            **kw)


def claim(id: str, *, paper: Any, measured: Any, holds: bool, rule: str,
          note: str = "") -> dict:
    """One claim of a paper and its verdict on this run.

    ``paper``: the paper's number or statement; ``measured``: ours; ``rule``: how ``holds`` was
    computed from the run (e.g. "alignment strictly increases as the batch shrinks, in every
    seed"); ``holds``: that computation's result (a bool computed by the trainer).
    """
    if type(holds).__name__ not in ("bool", "bool_"):  # Python or numpy bool
        raise TypeError(f"claim {id!r}: holds must be a bool computed from the run, got "
                        f"{type(holds).__name__}")
    if not rule or not str(rule).strip():
        raise ValueError(f"claim {id!r}: state the rule the verdict is computed by")
    return {"id": str(id), "paper": _plain(paper), "measured": _plain(measured),
            "rule": str(rule), "holds": bool(holds), "note": str(note)}


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays become Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def validate_results(results: dict, where: str = "results") -> None:
    """Raises ``ValueError`` unless ``results`` has the structure :func:`write_results` writes."""
    for key in ("name", "command", "smoke", "wall_s", "setting", "config", "claims"):
        if key not in results:
            raise ValueError(f"{where}: no {key!r}")
    missing = [k for k in SETTING_KEYS if k not in results["setting"]]
    if missing:
        raise ValueError(f"{where}: setting lacks {missing}")
    if not isinstance(results["setting"]["deviations"], list):
        raise ValueError(f"{where}: setting.deviations must be a list of strings")
    if not results["claims"]:
        raise ValueError(f"{where}: no claims")
    ids = [c.get("id") for c in results["claims"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate claim ids {ids}")
    for c in results["claims"]:
        missing = [k for k in CLAIM_KEYS if k not in c]
        if missing:
            raise ValueError(f"{where}: claim {c.get('id')!r} lacks {missing}")
        if not isinstance(c["holds"], bool):
            raise ValueError(f"{where}: claim {c['id']!r}: holds must be true or false")


def flag_values(names: Iterable[str] | None = None) -> dict:
    """The values of the calling trainer's flags (all its own flags when ``names`` is None)."""
    if names is None:
        module = _caller_module()
        names = [f.name for f in FLAGS.get_flags_for_module(module)]
    return {name: _plain(FLAGS[name].value) for name in sorted(names)}


def write_results(name: str, *, setting: dict, config: dict, claims: list[dict],
                  results: dict, out_dir: str | None = None, smoke: bool | None = None,
                  earlier_wall_s: float = 0.0) -> str:
    """Writes ``<out_dir>/<name>.json`` (see the module docstring) and returns its path.

    Non-finite numbers are written as null (JSON has no NaN); ``wall_s`` is the time since the
    trainer started plus ``earlier_wall_s``, the wall time of earlier processes whose runs this
    file reports too (a trainer that merges their results files).
    """
    import keras
    import tensorflow as tf

    out_dir = FLAGS.out_dir if out_dir is None else out_dir
    smoke = FLAGS.smoke if smoke is None else smoke
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else f"{name}.py"
    doc = {
        "name": name,
        "command": " ".join(["python", f"examples/{script}"] + list(sys.argv[1:])),
        "smoke": bool(smoke),
        "wall_s": round(time.time() - _STARTED + earlier_wall_s, 1),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": sys.version.split()[0]},
        "setting": _plain(setting),
        "config": _plain(config),
        "claims": _finite_or_null(_plain(list(claims))),
        "results": _finite_or_null(_plain(results)),
    }
    validate_results(doc, name)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    text = json.dumps(doc, indent=1, allow_nan=False)  # fails before the old file is touched
    with open(path, "w") as f:
        f.write(text)
    return path


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def save_figure(fig, name: str, out_dir: str | None = None, dpi: int = 90) -> str:
    """Saves a matplotlib figure as ``<out_dir>/<name>.png``, closes it, returns the path."""
    import matplotlib.pyplot as plt

    out_dir = FLAGS.out_dir if out_dir is None else out_dir
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def print_claims(claims: list[dict]) -> None:
    """Prints each claim's verdict, one line each."""
    for c in claims:
        print(f"  [{'holds' if c['holds'] else 'FAILS'}] {c['id']}: measured {c['measured']} "
              f"(paper: {c['paper']}; rule: {c['rule']})")


def monotone(values, *, increasing: bool = True, strict: bool = True) -> bool:
    """Whether ``values`` (at least two, all finite) follow a trend: strictly increasing or
    decreasing; with ``strict=False`` never moving against the trend and ending away from the
    start. A sequence of one value, or one with a NaN or inf (a diverged net), has no trend."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if v.size < 2 or not np.all(np.isfinite(v)):
        return False
    d = np.diff(v) if increasing else -np.diff(v)
    return bool(np.all(d > 0) if strict else (np.all(d >= 0) and v[-1] != v[0]))


def reshuffled_batches(x, y, batch_size: int, seed: int):
    """``(x, y)`` as a ``tf.data.Dataset`` of minibatches in a fresh random order every epoch
    (SGD with random reshuffling), reproducible from ``seed``.

    Pass it to ``fit`` (with ``shuffle=False``): with the global seed fixed by
    ``keras.utils.set_random_seed``, Keras' own ``shuffle=True`` on arrays repeats one order in
    every epoch (measured with Keras 3.15), which is cyclic SGD, not the random order of the
    papers' SGD runs.
    """
    import tensorflow as tf

    n = len(x)
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(n, seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size))


def fit_steps(model, x, y, *, batch_size: int, seed: int, max_steps: int, callbacks=(),
              gd_steps_per_epoch: int = 1):
    """``model.fit`` on :func:`reshuffled_batches` that stops after exactly ``max_steps``
    optimizer steps, whatever the batch size (mid-epoch if need be; a callback's
    ``stop_training`` can end it earlier). An epoch-rounded cap gave small batches more steps
    than large ones: a 5000-step cap ran batch 5 (400 steps per epoch) for 5200.

    Full-batch runs (``batch_size >= len(x)``) make Keras epochs of ``gd_steps_per_epoch``
    steps: every GD step sees the same batch, so there is no order to reshuffle, and one Keras
    epoch per step spends about half of a GD step at n = 2000 on epoch overhead (measured with
    agop_batch_size). Keep 1 when a callback must see an epoch end after every GD step."""
    import keras

    class _StepCap(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= max_steps:
                self.model.stop_training = True

    if batch_size >= len(x) and gd_steps_per_epoch > 1:
        import tensorflow as tf

        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        return model.fit(data, epochs=-(-max_steps // gd_steps_per_epoch),
                         steps_per_epoch=gd_steps_per_epoch, shuffle=False, verbose=0,
                         callbacks=[*callbacks, _StepCap()])
    epochs = -(-max_steps // -(-len(x) // batch_size))  # enough epochs to reach the cap
    return model.fit(reshuffled_batches(x, y, batch_size, seed), epochs=epochs, shuffle=False,
                     verbose=0, callbacks=[*callbacks, _StepCap()])
