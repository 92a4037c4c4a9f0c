"""Creating a run store for planned runs (:func:`create_store`), safe when the processes of
one job create it at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.locks import FileLock, StoreBusyError
from simfluence_jax.store.errors import storage_guard
from simfluence_jax.store.layout import FORMAT_NAME, FORMAT_VERSION
from simfluence_jax.store.reader import RunStore, open_store

#: Seconds ``create_store`` waits for another process that is creating the same store.
CREATE_WAIT = 120.0


def _plan_arrays(batches, seeds, train_ids, test_ids, num_train, num_test) -> dict:
    batches = np.asarray(batches)
    if batches.ndim != 3 or batches.dtype.kind not in "iu":
        raise ValueError(f"batches must be int[R, T, B], got {batches.dtype}{list(batches.shape)}")
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    if seeds.shape != (batches.shape[0],):
        raise ValueError(f"need one seed per run: {batches.shape[0]} runs, {seeds.size} seeds")
    train_ids = np.arange(num_train) if train_ids is None else np.asarray(train_ids)
    test_ids = np.arange(num_test) if test_ids is None else np.asarray(test_ids)
    for name, ids in [("train_ids", train_ids), ("test_ids", test_ids)]:
        if ids.dtype.kind not in "iuU":
            raise ValueError(f"{name} must hold integers or strings, got dtype {ids.dtype}")
    if len(train_ids) != num_train or len(test_ids) != num_test:
        raise ValueError(
            f"train_ids/test_ids have {len(train_ids)}/{len(test_ids)} entries, "
            f"expected {num_train}/{num_test}"
        )
    if batches.max() >= num_train or batches.min() < -1:
        raise ValueError(
            f"batches use ids outside the pool of {num_train} examples "
            f"(min {batches.min()}, max {batches.max()}; -1 is padding)"
        )
    return {
        "batches": batches.astype(np.int32),
        "seeds": seeds,
        "train_ids": train_ids,
        "test_ids": test_ids,
    }


def create_store(
    path: str | Path,
    *,
    batches: np.ndarray,
    seeds,
    num_train: int,
    num_test: int,
    train_ids=None,
    test_ids=None,
    metadata: dict | None = None,
    fingerprint: str = "",
) -> RunStore:
    """Creates a store for R planned runs, or opens it if it already holds the same plan.

    Concurrent calls (the processes of a multi-host job) are safe: one creates the store
    under its lock, the others wait for it and open it.

    Args:
      path: the store directory.
      batches: ``int32[R, T, B]`` curricula.
      seeds: ``int[R]`` per-run seeds (step rng ``fold_in(PRNGKey(seed), t)``).
      num_train, num_test: N and M.
      train_ids, test_ids: names of the examples (ints or strings).
      metadata: JSON-serialisable information shared by all runs (model, method, optimizer).
      fingerprint: a digest of the training settings; resuming with other settings fails.

    Raises:
      ValueError: if ``path`` holds a store with another plan, fingerprint or version.
      StoreWriteError: if the store cannot be written (disk full, permissions).
    """
    path = Path(path)
    plan = _plan_arrays(batches, seeds, train_ids, test_ids, num_train, num_test)
    metadata = dict(metadata or {})
    try:
        fileio.json_bytes(metadata)
    except ValueError as err:
        raise ValueError(f"store metadata must be JSON-serialisable: {err}") from None
    deadline = time.monotonic() + CREATE_WAIT
    while not (path / "store.json").exists():
        with storage_guard(path, "the run store folder", resume=False):
            fileio.make_dirs(path)
        lock = FileLock(path / "LOCK", what=f"the run store {path}", doing="creating the store")
        try:
            with storage_guard(path / "LOCK", "the lock file", resume=False):
                lock.acquire(wait=False)
        except StoreBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        try:
            if not (path / "store.json").exists():
                _write_new_store(path, plan, metadata, fingerprint, num_train, num_test)
                return open_store(path)
        finally:
            lock.release()
    store = open_store(path)
    same = store.batches.shape == plan["batches"].shape and all(
        np.array_equal(getattr(store, k), plan[k])
        for k in ("batches", "seeds", "train_ids", "test_ids")
    )
    if not same:
        raise ValueError(
            f"{path} already holds a run store with another plan (curricula, seeds or "
            "ids differ); use a new directory"
        )
    store.check_fingerprint(fingerprint)
    return store


def _write_new_store(path, plan, metadata, fingerprint, num_train, num_test) -> None:
    r, t, b = plan["batches"].shape
    info = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_runs": r,
        "num_steps": t,
        "batch_size": b,
        "num_train": int(num_train),
        "num_test": int(num_test),
        "metadata": metadata,
        "fingerprint": fingerprint,
    }
    with storage_guard(path, "the run store", resume=False):
        fileio.remove_stale(path)
        fileio.make_dirs(path / "runs")
        fileio.atomic_npz(path / "plan.npz", plan)
        fileio.atomic_json(path / "store.json", info)  # last: the store exists once this does
