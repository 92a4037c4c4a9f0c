"""Several processes producing runs into one shared run store, with ``jax.distributed``.

Every process builds the same :class:`~simfluence_jax.training.loop.RunFactory` (same
model, parameters, method, optimizer and data, hence the same fingerprint), then:

1. ``initialize(process_id=i, num_processes=P, port=...)`` joins the job (CPU collectives
   over gloo, so this works on plain CPU hosts as well as accelerators);
2. process 0 creates the store and writes the plan; a barrier; the others open it;
3. each process makes the run groups ``i, i + P, i + 2P, ...`` (groups as in
   :func:`~simfluence_jax.training.loop.plan_groups`) and writes them into its own run
   directories, with process-local checkpoints (``.npz`` files each process writes itself);
4. a barrier; process 0 merges the complete runs into a ``RunSet``.

A run's losses depend only on its curriculum, its seed and its group's compiled program,
so the P-process result equals the one-process result with the same ``group_size``
(``tests/test_distributed.py`` checks bit equality on two local CPU processes). A process
that dies leaves its runs resumable: rerun the job (with any number of processes).
"""

from __future__ import annotations

import socket
from pathlib import Path

import jax
import numpy as np

from simfluence_jax.store import collect, create_store, open_store
from simfluence_jax.training.loop import RunFactory
from simfluence_jax.training.produce import produce_runs


def initialize(*, process_id: int, num_processes: int, port: int, host: str = "127.0.0.1") -> None:
    """Joins a ``jax.distributed`` job whose coordinator (process 0) listens at host:port."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"{host}:{port}",
        num_processes=num_processes,
        process_id=process_id,
    )


def barrier(name: str) -> None:
    """Blocks until every process of the job reaches the barrier ``name``."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def produce_distributed(
    factory: RunFactory,
    store_dir: str | Path,
    *,
    batches: np.ndarray,
    seeds,
    train_ids=None,
    test_ids=None,
    metadata: dict | None = None,
    **produce_kwargs,
):
    """Makes the planned runs with every process of the job; returns the ``RunSet`` on
    process 0 and ``None`` elsewhere.

    Args:
      factory: this process's run factory (identical settings on every process).
      store_dir: the shared store directory (a file system all processes see).
      batches, seeds, train_ids, test_ids, metadata: the plan (see ``create_store``).
      **produce_kwargs: passed to ``produce_runs`` (``group_size``, ``snapshot_every``,
        ``checkpoint_steps``, ``config_text``, ``progress``, ...).
    """
    index, count = jax.process_index(), jax.process_count()
    if index == 0:
        create_store(
            store_dir,
            batches=batches,
            seeds=seeds,
            num_train=factory.num_train,
            num_test=factory.num_test,
            train_ids=train_ids,
            test_ids=test_ids,
            metadata=metadata,
            fingerprint=factory.fingerprint,
        )
    barrier("simfluence_store_created")
    store = open_store(store_dir)
    produce_runs(factory, store, process_index=index, process_count=count, **produce_kwargs)
    barrier("simfluence_runs_done")
    return collect(store_dir) if index == 0 else None
