"""Catapult demo, the README's main command (thesis Fig. 4.3): GD above the critical learning rate.

The first 128 CIFAR-2 training points (classes 7/9; ``--data_sample=first``: they are in the
subset shipped with kerntk, so the demo runs offline and gives the same points as a full copy
named by ``--data_dir`` or ``$KERNTK_DATA_DIR``; see ``kerntk.datasets.load``), a 5-layer
NTK-parameterized ReLU fcn of width 1024 without biases, full-batch GD at 1.6 x
``eta_crit = n / lambda_max(K)`` for 80 steps, watched by kerntk's ``NTKSpectrumTracker`` (top
NTK eigenvalues, loss split into the top-5 eigenspace L<=5 and the rest L>5; eta_crit(t) =
n / lambda_1(t)). Expected: the loss spikes, the spike lives in L<=5 while L>5 keeps decreasing,
lambda_1 drops until eta < eta_crit, then the loss converges. Prints a summary; writes
``<out_dir>/catapult_demo.png`` (3 panels) and ``catapult_demo.json`` (in the results format of
``examples/_common.py``: the thesis's claims with verdicts computed from the run). About 5 min
on this project's busy 2-core machine.

This is ``examples/catapult_gd.py`` with the demo's defaults; every flag of that trainer applies
(``--help``), e.g. ``--width``, ``--steps``, ``--lr_factor``, ``--data_dir``, ``--smoke``.

    python examples/catapult_demo.py [--out_dir out]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402

import catapult_gd  # noqa: E402

DEMO_DEFAULTS = {"arch": "fcn", "lr_factor": 1.6, "steps": 80, "data_sample": "first",
                 "name": "catapult_demo"}

if __name__ == "__main__":
    for flag, value in DEMO_DEFAULTS.items():
        flags.FLAGS.set_default(flag, value)
    app.run(catapult_gd.main)
