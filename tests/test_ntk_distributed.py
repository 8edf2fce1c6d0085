"""Kernels across tf.distribute workers: MultiWorkerMirroredStrategy over two worker processes
on localhost (one CPU device each), through tests/multiworker_ntk_scenario.py."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

SCENARIO = os.path.join(os.path.dirname(__file__), "multiworker_ntk_scenario.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(k):
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_share_the_tiles_and_gather_the_single_process_kernel(tmp_path):
    ports = ",".join(map(str, _free_ports(2)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    outs = [tmp_path / f"worker{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, SCENARIO, str(i), ports, str(outs[i])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-4000:]
    finally:
        for p in procs:
            p.kill()
    reports = [json.loads(o.read_text()) for o in outs]
    for r in reports:
        assert r["replicas"] == 2
        # n = 2048 in blocks of 512: 4 diagonal + 6 off-diagonal tiles alone.
        assert r["tiles_alone"] == 10
        assert r["kernel_rel_diff"] < 1e-5 and r["operator_rel_diff"] < 1e-5
        assert np.all(np.isfinite(r["loss"])) and np.all(np.isfinite(r["eigenvalues"]))
    # Each worker computed its share (tile 0, which tells batch coupling, by both).
    assert sorted(r["tiles_distributed"] for r in reports) == [5, 6]
    # The workers trained the same model and measured the same spectrum.
    np.testing.assert_allclose(reports[0]["loss"], reports[1]["loss"], rtol=1e-6)
    np.testing.assert_allclose(reports[0]["eigenvalues"], reports[1]["eigenvalues"], rtol=1e-6)
