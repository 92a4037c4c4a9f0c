"""A fit and a rollout over a test-example mesh that spans two processes (``jax.distributed``,
CPU collectives over gloo, one device each) equal the one-process ones."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from solver_worker import results

from simfluence_jax.training.distributed import free_port

WORKER = Path(__file__).with_name("solver_worker.py")


@pytest.mark.slow  # two processes start JAX and compile the solvers
def test_two_process_fit_and_rollout_equal_one_process(tmp_path):
    out = tmp_path / "two.npz"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(WORKER.parents[1]))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--process-id",
                str(i),
                "--num-processes",
                "2",
                "--port",
                str(port),
                "--out",
                str(out),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    two = dict(np.load(out))
    one = results(mesh=None)
    assert set(two) == set(one)
    for key in one:
        assert two[key].shape == one[key].shape, key
        # Each process runs the same per-test code on its half (in other chunks): the float64
        # exact solver agrees to rounding, CG (whose chunks stop on their own residuals) to
        # its tolerance, the float32 fit and rollout to float32 rounding of the chunks' sums.
        tol = {"direct_A": 1e-10, "direct_B": 1e-10, "cg_A": 1e-8, "cg_B": 1e-8}.get(key, 1e-4)
        scale = np.abs(one[key]).max()
        assert np.abs(two[key] - one[key]).max() <= tol * scale, key
