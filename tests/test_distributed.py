"""Two local CPU processes joined by ``jax.distributed`` share one run store."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from run_factory_worker import toy_factory, toy_plan

from simfluence_jax.store import open_store
from simfluence_jax.training.distributed import free_port

WORKER = Path(__file__).with_name("run_factory_worker.py")


@pytest.mark.slow  # about 30 s: two worker processes start JAX, then the runs again in one
def test_two_processes_equal_one_process(tmp_path):
    store_dir = tmp_path / "s"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(WORKER.parents[1]))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--store",
                str(store_dir),
                "--process-id",
                str(i),
                "--num-processes",
                "2",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "collected 4 runs" in outs[0]

    store = open_store(store_dir)
    # groups of 2: process 0 made runs 0, 1 and process 1 made runs 2, 3
    assert store.complete_runs() == [0, 1, 2, 3]
    assert [store.run_meta(r)["process_index"] for r in range(4)] == [0, 0, 1, 1]
    from simfluence_jax.store import collect

    runset = collect(store_dir, require_all=True)
    batches, seeds = toy_plan()
    one_process = toy_factory().run(batches, seeds, group_size=2)
    np.testing.assert_array_equal(runset.losses, one_process)
    # Every process wrote the data of its own checkpoints, not only their metadata: each
    # reads back, holds its step, and step 0 of every run is the starting parameters.
    from simfluence_jax.store import checkpoint_steps, load_checkpoint

    start = jax.tree_util.tree_leaves(jax.device_get(toy_factory().trainable0))
    for run in range(4):
        assert checkpoint_steps(store, run) == [0, 6, 12]
        for step in (0, 6, 12):
            ckpt = load_checkpoint(store, run, step)
            assert ckpt["step"] == step and np.isfinite(ckpt["learning_rate"])
            leaves = jax.tree_util.tree_leaves(ckpt["trainable"])
            assert len(leaves) == len(start) and all(np.isfinite(x).all() for x in leaves)
            if step == 0:
                for got, want in zip(leaves, start):
                    np.testing.assert_array_equal(got, want)
