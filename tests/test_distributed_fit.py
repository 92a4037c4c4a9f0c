"""A fit and a rollout over a test-example mesh that spans two processes (``jax.distributed``,
CPU collectives over gloo, one device each) equal the one-process ones."""

from pathlib import Path

import numpy as np
import pytest
from solver_worker import results
from worker_processes import run_workers

WORKER = Path(__file__).with_name("solver_worker.py")


@pytest.mark.slow  # two processes start JAX and compile the solvers
def test_two_process_fit_and_rollout_equal_one_process(tmp_path):
    out = tmp_path / "two.npz"
    run_workers(WORKER, ["--out", str(out)], timeout=400)
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
