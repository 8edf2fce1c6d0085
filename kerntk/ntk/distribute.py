"""Kernels across ``tf.distribute`` replicas and workers.

Inside ``strategy.scope()`` (or during ``model.fit`` under a strategy, where Keras enters it),
:func:`kerntk.ntk.empirical_ntk` hands its tiles out round-robin: tile ``j`` is computed by worker
``j mod W`` on that worker's local device ``j mod L``; the first tile is computed by every
worker (it tells whether the model couples the examples, which every worker must know). Each
worker fills its tiles into a zero matrix and one cross-worker sum gathers ``K`` on all of them.
:func:`kerntk.ntk.ntk_operator` does the same with its chunks: each worker takes the VJPs of its
chunks, the parameter-space vectors are summed across workers, and the JVP rows are gathered the
same way. Every worker runs the same program (SPMD), so every worker must make the same calls
in the same order, as Keras' own multi-worker training does.

The same code runs on a multi-host GPU/TPU cluster: start one process per host with its
``TF_CONFIG`` (``MultiWorkerMirroredStrategy``) or use ``TPUStrategy``, build the model and call
kerntk inside ``strategy.scope()``; nothing in kerntk depends on the device type. With a single
worker, ``MirroredStrategy`` spreads the tiles over that machine's devices (GPUs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import tensorflow as tf

__all__ = ["Distribution", "current"]


@dataclass(frozen=True)
class Distribution:
    """The strategy in scope, this worker's index among ``workers`` and its local devices."""

    strategy: tf.distribute.Strategy
    workers: int
    worker: int
    devices: tuple

    def mine(self, j: int) -> bool:
        """Whether tile (or chunk) ``j`` is computed by this worker."""
        return j % self.workers == self.worker

    def device(self, j: int):
        """The local device of tile ``j`` (round-robin over this worker's devices)."""
        if len(self.devices) <= 1:
            return contextlib.nullcontext()
        return tf.device(self.devices[j % len(self.devices)])

    def all_sum(self, arrays: List[np.ndarray]) -> List[np.ndarray]:
        """The elementwise sums over workers of ``arrays`` (each worker passes its own), returned
        on every worker. Each worker's array counts once, whatever its number of replicas."""
        if self.workers == 1:
            return arrays
        local = max(1, self.strategy.num_replicas_in_sync // self.workers)
        tensors = [tf.constant(a) for a in arrays]

        def contribution():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group % local, 0)
            return [tf.where(first, t, tf.zeros_like(t)) for t in tensors]

        per_replica = self.strategy.run(contribution)
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, p, axis=None).numpy()
                for p in per_replica]


def current() -> Optional[Distribution]:
    """The distribution in scope, or ``None`` outside any strategy (or with one replica)."""
    if not tf.distribute.has_strategy() or not tf.distribute.in_cross_replica_context():
        return None
    strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    workers, worker = 1, 0
    if resolver is not None and resolver.cluster_spec().as_dict():
        spec = resolver.cluster_spec()
        jobs = spec.jobs
        names = [j for j in ("chief", "worker") if j in jobs]
        workers = sum(spec.num_tasks(j) for j in names)
        worker = (resolver.task_id if resolver.task_type != "worker" or "chief" not in jobs
                  else spec.num_tasks("chief") + resolver.task_id)
    devices = tuple(getattr(strategy.extended, "worker_devices", ()) or ())
    if workers == 1 and len(devices) <= 1:
        return None
    return Distribution(strategy, workers, worker, devices)
