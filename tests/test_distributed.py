"""Two local CPU processes joined by ``jax.distributed`` share one run store."""

from pathlib import Path

import jax
import numpy as np
import pytest
from run_factory_worker import toy_factory, toy_plan
from worker_processes import run_workers

from simfluence_jax.store import open_store

WORKER = Path(__file__).with_name("run_factory_worker.py")


@pytest.mark.slow  # about 30 s: two worker processes start JAX, then the runs again in one
def test_two_processes_equal_one_process(tmp_path):
    store_dir = tmp_path / "s"
    outs = run_workers(WORKER, ["--store", str(store_dir)], timeout=240)
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
