"""The run store: training runs written step by step to disk, safe against crashes.

Layout (``FORMAT_VERSION`` 1)::

    store/
      store.json            format name and version, sizes, shared metadata, fingerprint
      plan.npz              batches int32[R, T, B], seeds int64[R], train_ids, test_ids
      LOCK                  the writers' lock (pid and host of each holder)
      locks/run_000007.lock the lock of one run
      runs/run_000007/
        meta.json           seed, git revision, learning rates eta_1..eta_T, run metadata
        config.txt          the operative configuration text that made the run
        losses.npy          float32[T+1, M], preallocated (NaN), filled row by row
        progress.json       {"rows": k}: rows 0..k-1 of losses.npy are on disk
        state.npz           resume snapshot of the train state at some step s < T
        checkpoints/step_000032.npz  checkpoint {trainable, learning_rate, step}
                            (stores written before: orbax folders step_000032/, still read)
        COMPLETE            {"rows": T+1, "sha256": ...}: written last, atomically

Guarantees:

* **Atomic small files.** Every JSON/npz file is written through
  :func:`simfluence_jax.io.atomic_write` (temporary name, fsync, ``os.replace``); a reader
  sees the old file or the new.
* **Ordering.** Loss rows are written into the memory map and flushed *before*
  ``progress.json`` names them, and ``COMPLETE`` is written after every row and every
  checkpoint of the run is on disk and verified; so a run is complete only once its marker
  exists, and :func:`collect` never reads another run. The marker holds the SHA-256 of
  ``losses.npy`` and ``collect`` checks it.
* **Checkpoints** (:mod:`simfluence_jax.checkpoints`) are written under a temporary name,
  read back and compared with what was saved, and only then renamed into place; each process
  of a multi-process job writes the checkpoints of its own runs. A checkpoint found damaged on
  resume is redone (its run replays from a step before it), never skipped. Orbax checkpoint
  folders kept by stores of earlier versions are read as well; one that does not hold the
  tree a replay reproduces is replaced by a ``.npz`` file.
* **One writer.** Every process that writes a store holds its ``LOCK`` (``fcntl.flock``,
  with its pid and host written in it): one process alone holds it exclusively; the
  processes of one multi-process job (``process_count > 1``) share it, and each also holds
  the lock of every run it writes, so they write disjoint runs. A second writer stops at
  once with :class:`StoreBusyError` naming the other process, or waits (``wait=True`` or a
  number of seconds). Locks die with their process, so a crash leaves nothing locked.
* **Resume.** A killed job is resumed by re-running it: a run restarts from its last
  ``state.npz`` snapshot (step s, taken every ``snapshot_every`` steps, stored as plain npz
  and read with ``allow_pickle=False``) or from step 0, and replays the steps after s.
  Because step t depends only on the state after step t-1, the batch ids of step t and
  ``fold_in(seed, t)``, and the replay runs the same compiled program, the rows it rewrites
  are bit-identical to those lost, and the final record equals an uninterrupted run's
  (``tests/test_store.py`` and ``tests/test_reliability.py`` kill workers to check this).
  An incomplete run whose partial files are damaged is redone from step 0.
* **Validation.** Every file is checked where it is read; a damaged one is a ``ValueError``
  naming the file and the problem. ``open_store`` refuses a store of another format
  version, naming both (and saying so when a newer version wrote it).
* **Write errors** (a full disk, missing permissions) raise
  :class:`StoreWriteError` naming the path and the free space; runs already complete are
  never opened for writing again, so they stay intact, and the run that failed resumes
  later.

Checkpoints for TracIn-CP (Pruthi et al., 2020) hold the trainable parameters at chosen
steps, each with the learning rate of the update taken from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from simfluence_jax import checkpoints as ckpt
from simfluence_jax import io as sio
from simfluence_jax.locks import FileLock, StoreBusyError

FORMAT_NAME = "simfluence_jax.RunStore"
FORMAT_VERSION = 1
#: Seconds ``create_store`` waits for another process that is creating the same store.
CREATE_WAIT = 120.0

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RunStore",
    "RunWriter",
    "StoreBusyError",
    "StoreWriteError",
    "checkpoint_steps",
    "collect",
    "create_store",
    "load_checkpoint",
    "open_store",
    "remove_incomplete",
]


class StoreWriteError(OSError):
    """Writing to the run store failed (disk full, permissions, ...); the message names the
    path and the free space."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _write_error(err: BaseException, path: Path, what: str, *, resume: bool = True):
    """A :class:`StoreWriteError` for a storage failure behind ``err``, else ``None``."""
    if isinstance(err, StoreWriteError):
        return err
    code = sio.storage_errno(err)
    if code is None and not isinstance(err, OSError):
        return None
    tail = (
        f"Runs already complete are intact; {sio.storage_advice(code)} and rerun to resume"
        if resume
        else f"{sio.storage_advice(code).capitalize()} and retry"
    )
    return StoreWriteError(
        code or getattr(err, "errno", None) or 0,
        f"could not write {what} ({path}): {sio.storage_reason(code, err)}; "
        f"{sio.free_space(path)} there. {tail}",
    )


@contextlib.contextmanager
def _storage_guard(path: Path, what: str, *, resume: bool = True) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        wrapped = _write_error(err, path, what, resume=resume)
        if wrapped is None:
            raise
        raise wrapped from None


# ---------------------------------------------------------------------------------------------

_INFO_TYPES = {
    "num_runs": int,
    "num_steps": int,
    "batch_size": int,
    "num_train": int,
    "num_test": int,
    "metadata": dict,
    "fingerprint": str,
}
_PLAN_SPECS = {
    "batches": sio.ArraySpec("iu", ("R", "T", "B")),
    "seeds": sio.ArraySpec("iu", ("R",)),
    "train_ids": sio.ArraySpec("iuU", ("N",)),
    "test_ids": sio.ArraySpec("iuU", ("M",)),
}
#: A checkpoint's name: ``step_NNNNNN.npz``, or ``step_NNNNNN`` (an orbax folder of an
#: earlier version; a file of that name is listed too and reported as an unknown format).
_CHECKPOINT_NAME = re.compile(r"^step_(\d{6,})(\.npz)?$")


def _checkpoint_path(run_dir: Path, step: int) -> Path:
    """The checkpoint of ``step`` in a run directory: the ``.npz`` file, else an older
    orbax folder, else (neither exists) the ``.npz`` file a save would write."""
    new = run_dir / "checkpoints" / f"step_{step:06d}{ckpt.SUFFIX}"
    old = new.with_suffix("")
    return old if not new.exists() and old.exists() else new


class RunStore:
    """A run store directory (see module docstring). Make one with :func:`create_store` or
    :func:`open_store`."""

    def __init__(self, path: Path, info: dict, plan: dict[str, np.ndarray]):
        self.path = path
        self.info = info
        self.batches: np.ndarray = plan["batches"]
        self.seeds: np.ndarray = plan["seeds"]
        self.train_ids: np.ndarray = plan["train_ids"]
        self.test_ids: np.ndarray = plan["test_ids"]
        self._held_runs: dict[int, FileLock] = {}

    # Sizes -------------------------------------------------------------------------------
    @property
    def num_runs(self) -> int:
        return int(self.batches.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.batches.shape[1])

    @property
    def num_test(self) -> int:
        return int(self.info["num_test"])

    @property
    def fingerprint(self) -> str:
        return self.info.get("fingerprint", "")

    def run_dir(self, run: int) -> Path:
        if not 0 <= run < self.num_runs:
            raise ValueError(f"run index {run} out of range for a store of {self.num_runs} runs")
        return self.path / "runs" / f"run_{run:06d}"

    def checkpoint_path(self, run: int, step: int) -> Path:
        """Where run ``run`` keeps its checkpoint of ``step`` (``checkpoints/step_NNNNNN.npz``,
        or the orbax folder ``checkpoints/step_NNNNNN`` of an earlier version if only that
        exists); it need not exist."""
        return _checkpoint_path(self.run_dir(run), step)

    def is_complete(self, run: int) -> bool:
        return (self.run_dir(run) / "COMPLETE").exists()

    def complete_runs(self) -> list[int]:
        return [r for r in range(self.num_runs) if self.is_complete(r)]

    # Locks -------------------------------------------------------------------------------
    def lock(self, *, shared: bool = False, wait: bool | float = False, doing: str = ""):
        """Takes the store's writer lock (exclusive, or shared among the processes of one
        job) and returns it; release it with ``.release()`` or a ``with`` block.

        Raises:
          StoreBusyError: naming the process that holds it, unless waited for.
        """
        lock = FileLock(self.path / "LOCK", what=f"the run store {self.path}", doing=doing)
        with _storage_guard(self.path / "LOCK", "the lock file", resume=False):
            return lock.acquire(shared=shared, wait=wait)

    @contextlib.contextmanager
    def holding_runs(self, runs: Sequence[int], *, wait: bool | float = False, doing: str = ""):
        """Holds the locks of ``runs`` for the ``with`` block (writers of these runs made
        inside it use them)."""
        taken = []
        try:
            for run in runs:
                self.run_dir(run)  # range check
                taken.append((run, self._run_lock(run, wait=wait, doing=doing)))
                self._held_runs[run] = taken[-1][1]
            yield
        finally:
            for run, lock in taken:
                self._held_runs.pop(run, None)
                lock.release()

    def _run_lock(self, run: int, *, wait: bool | float, doing: str) -> FileLock:
        folder = self.path / "locks"
        path = folder / f"run_{run:06d}.lock"
        lock = FileLock(path, what=f"run {run} of the run store {self.path}", doing=doing)
        with _storage_guard(path, "the lock file", resume=False):
            sio.make_dirs(folder)
            return lock.acquire(wait=wait)

    # Reading -----------------------------------------------------------------------------
    def rows_done(self, run: int) -> int:
        """Rows of ``losses`` durably written (0 .. T+1)."""
        progress = self.run_dir(run) / "progress.json"
        if not progress.exists():
            return 0
        rows = sio.read_json(progress, what="progress file", required=["rows"], types={"rows": int})
        rows = rows["rows"]
        if not 0 <= rows <= self.num_steps + 1:
            raise ValueError(f"{progress}: rows = {rows} is outside 0..{self.num_steps + 1}")
        return rows

    def writer(self, run: int, *, wait: bool | float = False) -> RunWriter:
        """A writer for one incomplete run. It holds the run's lock (taken here unless held
        through :meth:`holding_runs`) until ``finish`` or ``close``.

        Raises:
          ValueError: if the run is complete (complete runs are never rewritten).
          StoreBusyError: if another process writes this run.
        """
        if self.is_complete(run):
            raise ValueError(f"run {run} in {self.path} is complete; it is never rewritten")
        lock = None
        if run not in self._held_runs:
            lock = self._run_lock(run, wait=wait, doing="writing the run")
            if self.is_complete(run):
                lock.release()
                raise ValueError(f"run {run} in {self.path} is complete; it is never rewritten")
        return RunWriter(self, run, lock=lock)

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raises if the store was made with other training settings."""
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ValueError(
                f"the run store {self.path} was made with other training settings "
                f"(fingerprint {self.fingerprint}, now {fingerprint}); use a new store directory"
            )

    def completion(self, run: int) -> dict:
        """The validated ``COMPLETE`` marker of a complete run."""
        marker = self.run_dir(run) / "COMPLETE"
        if not marker.exists():
            raise ValueError(f"run {run} in {self.path} is not complete")
        done = sio.read_json(
            marker,
            what="completion marker",
            required=["rows", "sha256"],
            types={"rows": int, "sha256": str},
        )
        if done["rows"] != self.num_steps + 1:
            raise ValueError(
                f"{marker}: rows = {done['rows']}, expected {self.num_steps + 1}; the marker "
                "is damaged (delete it to redo the run)"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", done["sha256"]):
            raise ValueError(f"{marker}: sha256 is not a SHA-256 digest; the marker is damaged")
        return done

    def load_losses(self, run: int) -> np.ndarray:
        """``float32[T+1, M]`` of a complete run, checked against its completion marker."""
        run_dir = self.run_dir(run)
        done = self.completion(run)
        losses_file = run_dir / "losses.npy"
        if not losses_file.exists():
            raise ValueError(f"{losses_file}: the losses of complete run {run} are missing")
        if sio.sha256_file(losses_file) != done["sha256"]:
            raise ValueError(
                f"run {run} in {self.path}: {losses_file} does not match its completion "
                "checksum (modified or damaged after completion)"
            )
        losses = sio.read_npy(
            losses_file,
            shape=(self.num_steps + 1, self.num_test),
            dtype=np.float32,
            what="losses file",
        )
        if not np.all(np.isfinite(losses)):
            raise ValueError(f"{losses_file}: the losses of complete run {run} are not finite")
        return np.asarray(losses, np.float32)

    def run_meta(self, run: int) -> dict:
        """The validated ``meta.json`` of a run."""
        path = self.run_dir(run) / "meta.json"
        meta = sio.read_json(
            path,
            what="run metadata",
            types={"seed": int, "git_revision": str, "learning_rates": list, "group_size": int},
        )
        rates = meta.get("learning_rates")
        if rates is not None:
            ok = len(rates) == self.num_steps and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < np.inf
                for x in rates
            )
            if not ok:
                raise ValueError(
                    f"{path}: learning_rates must be {self.num_steps} finite numbers >= 0 "
                    "(one per step); the file is damaged"
                )
        return meta


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


def open_store(path: str | Path) -> RunStore:
    """Opens an existing store, validating ``store.json`` and ``plan.npz``.

    Raises:
      ValueError: if absent, of another format version, or damaged (naming the file).
    """
    path = Path(path)
    info_file = path / "store.json"
    if not info_file.exists():
        if path.exists() and not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"permission denied reading the run store folder {path}")
        raise ValueError(f"no run store at {path}: {info_file} is missing")
    info = sio.read_json(info_file, what="run store description")
    sio.check_format(info_file, info, name=FORMAT_NAME, version=FORMAT_VERSION, what="run store")
    sio.check_keys(
        info_file, info, required=list(_INFO_TYPES), types=_INFO_TYPES, what="store description"
    )
    sizes = {
        "R": info["num_runs"],
        "T": info["num_steps"],
        "B": info["batch_size"],
        "N": info["num_train"],
        "M": info["num_test"],
    }
    plan = sio.read_npz(path / "plan.npz", _PLAN_SPECS, sizes, what="run plan")
    batches = plan["batches"]
    if batches.size and (batches.min() < -1 or batches.max() >= sizes["N"]):
        raise ValueError(
            f"{path / 'plan.npz'}: batches use ids outside the pool of {sizes['N']} examples; "
            "the file is damaged"
        )
    plan["batches"] = batches.astype(np.int32)
    plan["seeds"] = plan["seeds"].astype(np.int64)
    return RunStore(path, info, plan)


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
        sio.json_bytes(metadata)
    except ValueError as err:
        raise ValueError(f"store metadata must be JSON-serialisable: {err}") from None
    deadline = time.monotonic() + CREATE_WAIT
    while not (path / "store.json").exists():
        with _storage_guard(path, "the run store folder", resume=False):
            sio.make_dirs(path)
        lock = FileLock(path / "LOCK", what=f"the run store {path}", doing="creating the store")
        try:
            with _storage_guard(path / "LOCK", "the lock file", resume=False):
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
    with _storage_guard(path, "the run store", resume=False):
        sio.remove_stale(path)
        sio.make_dirs(path / "runs")
        sio.atomic_npz(path / "plan.npz", plan)
        sio.atomic_json(path / "store.json", info)  # last: the store exists once this does


# ---------------------------------------------------------------------------------------------


class RunWriter:
    """Writes one run's directory; every method is safe to call again after a crash.

    Made by :meth:`RunStore.writer`, which takes the run's lock; ``finish`` or ``close``
    releases a lock the writer took itself.
    """

    def __init__(self, store: RunStore, run: int, *, lock: FileLock | None = None):
        self.store = store
        self.run = run
        self.dir = store.run_dir(run)
        self._lock = lock

    def close(self) -> None:
        """Releases the run's lock if this writer took it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _guard(self, what: str, path: Path | None = None):
        return _storage_guard(path or self.dir, f"{what} of run {self.run}")

    def begin(self, *, num_test: int, meta: dict, config_text: str = "") -> int:
        """Prepares the directory; returns the rows already on disk (0 for a new run).

        Partial files of an earlier attempt that are damaged (so the run cannot resume from
        them) are removed with a warning and the run starts again from step 0.
        """
        rows = self.store.num_steps + 1
        losses_file = self.dir / "losses.npy"
        with self._guard("the run directory"):
            sio.make_dirs(self.dir)
            sio.remove_stale(self.dir)
            sio.remove_stale(self.dir / "checkpoints")
            if (self.dir / "meta.json").exists():
                try:
                    self.store.run_meta(self.run)
                    if losses_file.exists():
                        sio.read_npy(
                            losses_file,
                            shape=(rows, num_test),
                            dtype=np.float32,
                            mmap_mode="r",
                            what="losses file",
                        )
                        return self.store.rows_done(self.run)
                except ValueError as err:
                    warnings.warn(
                        f"run {self.run} of {self.store.path} is redone from step 0: {err}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self.reset()
            if not (self.dir / "meta.json").exists():
                sio.atomic_write(self.dir / "config.txt", config_text)
                sio.atomic_json(self.dir / "meta.json", meta)
            tmp = sio.temp_sibling(losses_file)
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, num_test))
            mm[:] = np.nan
            mm.flush()
            del mm
            os.replace(tmp, losses_file)
            sio.atomic_json(self.dir / "progress.json", {"rows": 0})
        return 0

    def reset(self) -> None:
        """Removes the partial files of this (incomplete) run, checkpoints included."""
        if self.store.is_complete(self.run):
            raise ValueError(f"run {self.run} in {self.store.path} is complete; never reset")
        with self._guard("the run directory"):
            for entry in self.dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Writes ``rows float32[k, M]`` at rows ``start .. start+k-1``, then records them."""
        rows = np.asarray(rows, np.float32)
        with self._guard("loss rows", self.dir / "losses.npy"):
            mm = np.load(self.dir / "losses.npy", mmap_mode="r+", allow_pickle=False)
            mm[start : start + len(rows)] = rows
            mm.flush()
            del mm
            sio.atomic_json(self.dir / "progress.json", {"rows": start + len(rows)})

    def save_state(self, step: int, state) -> None:
        """Snapshots a train-state pytree (host arrays) taken after ``step`` updates."""
        leaves = jax.tree_util.tree_leaves(state)
        arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays["step"] = np.asarray(step, np.int64)
        with self._guard("the resume snapshot", self.dir / "state.npz"):
            sio.atomic_npz(self.dir / "state.npz", arrays)

    def load_state(self, template) -> tuple[int, Any] | None:
        """The latest snapshot as ``(step, state)`` shaped like ``template``, or ``None``.

        Raises:
          ValueError: naming ``state.npz`` if it is damaged or does not match ``template``.
        """
        path = self.dir / "state.npz"
        if not path.exists():
            return None
        leaves, treedef = jax.tree_util.tree_flatten(template)
        specs = {f"leaf_{i:05d}": sio.ArraySpec() for i in range(len(leaves))}
        specs["step"] = sio.ArraySpec("iu", ())
        z = sio.read_npz(path, specs, what="resume snapshot")
        stored = [z[f"leaf_{i:05d}"] for i in range(len(leaves))]
        step = int(z["step"])
        if len(z) != len(leaves) + 1 or any(
            a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype for a, b in zip(stored, leaves)
        ):
            raise ValueError(
                f"{path}: the resume snapshot does not match the train state of these settings"
            )
        if not 0 < step < self.store.num_steps:
            raise ValueError(
                f"{path}: snapshot step {step} is outside 1..{self.store.num_steps - 1}"
            )
        return step, jax.tree_util.tree_unflatten(treedef, stored)

    def checkpoint_path(self, step: int) -> Path:
        """See :meth:`RunStore.checkpoint_path`."""
        return _checkpoint_path(self.dir, step)

    def save_checkpoint(self, step: int, trainable, learning_rate: float) -> None:
        """A checkpoint (``checkpoints/step_NNNNNN.npz``) of the trainable parameters after
        ``step`` updates, with the learning rate of the next update (the rate TracIn-CP
        weighs this checkpoint by).

        It is written under a temporary name, read back and compared with ``trainable``,
        then renamed into place (:func:`simfluence_jax.checkpoints.save`). A checkpoint
        already there (this format or an earlier version's orbax folder) is kept if it holds
        this tree (written before a crash; the replay reproduces it bit for bit) and
        replaced if not.
        """
        target = self.checkpoint_path(step)
        tree = {
            "trainable": jax.device_get(trainable),
            "learning_rate": np.asarray(learning_rate, np.float32),
            "step": np.asarray(step, np.int32),
        }
        if target.exists() and ckpt.problem(target, expected=tree) is None:
            return
        new = target.with_name(f"step_{step:06d}{ckpt.SUFFIX}")
        with self._guard(f"the checkpoint of step {step}", new):
            if target != new:  # an older orbax folder, or an entry in an unknown format
                ckpt.discard(target)
            ckpt.save(new, tree)

    def finish(self, *, checkpoint_steps: Sequence[int] = ()) -> None:
        """Marks the run complete and drops the snapshot, after checking that every row is
        on disk and finite and that the checkpoints of ``checkpoint_steps`` are complete."""
        rows = self.store.rows_done(self.run)
        if rows != self.store.num_steps + 1:
            raise ValueError(f"run {self.run} has {rows} of {self.store.num_steps + 1} rows")
        losses = sio.read_npy(self.dir / "losses.npy", what="losses file")
        if not np.all(np.isfinite(losses)):
            bad = np.argwhere(~np.isfinite(losses))[0]
            raise ValueError(
                f"run {self.run} has a non-finite loss at step {bad[0]}, test example "
                f"{bad[1]}: training diverged (lower the learning rate)"
            )
        for step in checkpoint_steps:
            path = self.checkpoint_path(step)
            problem = ckpt.problem(path)
            if problem is not None:
                raise ValueError(f"run {self.run} is not complete: checkpoint {path} {problem}")
        with self._guard("the completion marker", self.dir / "COMPLETE"):
            sio.atomic_json(
                self.dir / "COMPLETE",
                {"rows": rows, "sha256": sio.sha256_file(self.dir / "losses.npy")},
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / "state.npz")
        self.close()


_CHECKPOINT_KEYS = {"trainable", "learning_rate", "step"}


def checkpoint_problem(path: Path, step: int | None = None) -> str | None:
    """What is wrong with a run's checkpoint (a ``.npz`` file or an older orbax folder), or
    ``None``: with ``step``, it is read back and must hold that step; else only its files
    are checked."""
    if step is None:
        return ckpt.problem(path)

    def same_step(tree):
        held = int(np.asarray(tree["step"]))
        return None if held == step else f"holds step {held}, not {step}"

    return ckpt.problem(path, keys=_CHECKPOINT_KEYS, check=same_step)


def checkpoint_steps(store: RunStore | str | Path, run: int) -> list[int]:
    """Steps at which run ``run`` kept a checkpoint: ``.npz`` files and the orbax folders of
    earlier versions (temporaries left by a killed save are not counted)."""
    store = store if isinstance(store, RunStore) else open_store(store)
    folder = store.run_dir(run) / "checkpoints"
    if not folder.exists():
        return []
    steps = set()
    for p in folder.iterdir():
        match = _CHECKPOINT_NAME.match(p.name)
        if match:
            steps.add(int(match.group(1)))
    return sorted(steps)


def load_checkpoint(store: RunStore | str | Path, run: int, step: int) -> dict:
    """``{"trainable", "learning_rate", "step"}`` saved by run ``run`` after ``step`` updates.

    ``trainable`` is the method's trainable pytree; combine it with the base parameters via
    the training method (e.g. ``method.reference_loss(model, params, trainable, batch)``).

    Both the ``.npz`` checkpoints and the orbax folders of earlier versions are read.

    Raises:
      ValueError: if there is no such checkpoint, or naming the file or folder if it is
        incomplete, damaged or in an unknown format.
    """
    store = store if isinstance(store, RunStore) else open_store(store)
    target = store.checkpoint_path(run, step)
    if not target.exists():
        have = checkpoint_steps(store, run)
        raise ValueError(f"run {run} kept no checkpoint at step {step}; it has steps {have}")
    try:
        tree = ckpt.restore(target, keys=_CHECKPOINT_KEYS)
    except ValueError as err:
        raise ValueError(f"{err}; the store is damaged (rerun the job to redo it)") from None
    return {
        "trainable": tree["trainable"],
        "learning_rate": float(tree["learning_rate"]),
        "step": int(tree["step"]),
    }


def collect(store_dir: str | Path, *, require_all: bool = False):
    """Merges the complete runs of a store into a ``RunSet``; never reads incomplete runs.

    Args:
      store_dir: the store directory.
      require_all: raise if some planned run is not complete yet.

    Returns:
      A ``simfluence_jax.runs.RunSet`` of the complete runs in run order; its metadata holds
      the store metadata plus ``runs`` (store indices), ``seeds``, ``learning_rates``
      (``[T]``, the schedule eta_1..eta_T of the first run) and ``git_revisions``; its
      ``learning_rates`` array holds every run's schedule, ``[R, T]``.

    Raises:
      ValueError: if no run (or, with ``require_all``, not every run) is complete, or naming
        a damaged file.
    """
    from simfluence_jax.runs import RunSet

    store = open_store(store_dir)
    done = store.complete_runs()
    missing = sorted(set(range(store.num_runs)) - set(done))
    if require_all and missing:
        raise ValueError(
            f"{len(missing)} of {store.num_runs} runs are not complete: {missing[:10]}"
        )
    if not done:
        raise ValueError(f"no complete run in {store.path} yet")
    losses = np.stack([store.load_losses(r) for r in done])
    metas = [store.run_meta(r) for r in done]
    metadata = dict(store.info.get("metadata", {}))
    metadata.update(
        runs=done,
        seeds=[int(store.seeds[r]) for r in done],
        learning_rates=metas[0].get("learning_rates"),
        git_revisions=sorted({m.get("git_revision", "unknown") for m in metas}),
        store=str(store.path),
    )
    rates = [m.get("learning_rates") for m in metas]
    learning_rates = None
    if all(r is not None for r in rates):
        learning_rates = np.asarray(rates, np.float32)
    return RunSet(
        batches=store.batches[done],
        losses=losses,
        num_train=int(store.info["num_train"]),
        train_ids=store.train_ids,
        test_ids=store.test_ids,
        metadata=metadata,
        learning_rates=learning_rates,
    )


def remove_incomplete(store_dir: str | Path, *, wait: bool | float = False) -> list[int]:
    """Deletes the directories of incomplete runs (to restart them from scratch), holding
    the store's lock (``StoreBusyError`` if a writer is at work)."""
    store = open_store(store_dir)
    lock = store.lock(wait=wait, doing="removing incomplete runs")
    try:
        removed = []
        for r in range(store.num_runs):
            if not store.is_complete(r) and store.run_dir(r).exists():
                ckpt.discard(store.run_dir(r))
                removed.append(r)
        return removed
    finally:
        lock.release()
