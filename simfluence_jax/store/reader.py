"""An existing run store (:class:`RunStore`, :func:`open_store`): its plan and sizes, its
locks, and the validated files of its runs."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.locks import FileLock
from simfluence_jax.store.errors import storage_guard
from simfluence_jax.store.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INFO_TYPES,
    PLAN_SPECS,
    run_checkpoint_path,
)
from simfluence_jax.store.writer import RunWriter


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
        return run_checkpoint_path(self.run_dir(run), step)

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
        with storage_guard(self.path / "LOCK", "the lock file", resume=False):
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
        with storage_guard(path, "the lock file", resume=False):
            fileio.make_dirs(folder)
            return lock.acquire(wait=wait)

    # Reading -----------------------------------------------------------------------------
    def rows_done(self, run: int) -> int:
        """Rows of ``losses`` durably written (0 .. T+1)."""
        progress = self.run_dir(run) / "progress.json"
        if not progress.exists():
            return 0
        rows = fileio.read_json(
            progress, what="progress file", required=["rows"], types={"rows": int}
        )
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
        done = fileio.read_json(
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
        if fileio.sha256_file(losses_file) != done["sha256"]:
            raise ValueError(
                f"run {run} in {self.path}: {losses_file} does not match its completion "
                "checksum (modified or damaged after completion)"
            )
        losses = fileio.read_npy(
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
        meta = fileio.read_json(
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
    info = fileio.read_json(info_file, what="run store description")
    fileio.check_format(info_file, info, name=FORMAT_NAME, version=FORMAT_VERSION, what="run store")
    fileio.check_keys(
        info_file, info, required=list(INFO_TYPES), types=INFO_TYPES, what="store description"
    )
    sizes = {
        "R": info["num_runs"],
        "T": info["num_steps"],
        "B": info["batch_size"],
        "N": info["num_train"],
        "M": info["num_test"],
    }
    plan = fileio.read_npz(path / "plan.npz", PLAN_SPECS, sizes, what="run plan")
    batches = plan["batches"]
    if batches.size and (batches.min() < -1 or batches.max() >= sizes["N"]):
        raise ValueError(
            f"{path / 'plan.npz'}: batches use ids outside the pool of {sizes['N']} examples; "
            "the file is damaged"
        )
    plan["batches"] = batches.astype(np.int32)
    plan["seeds"] = plan["seeds"].astype(np.int64)
    return RunStore(path, info, plan)
