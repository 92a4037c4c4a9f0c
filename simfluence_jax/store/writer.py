"""Writing one run of a run store (:class:`RunWriter`): its directory, loss rows, resume
snapshots, checkpoints and completion marker, in the order the store's guarantees need."""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from simfluence_jax import checkpoints as ckpt
from simfluence_jax import fileio
from simfluence_jax.locks import FileLock
from simfluence_jax.store.errors import storage_guard
from simfluence_jax.store.layout import run_checkpoint_path

if TYPE_CHECKING:
    from simfluence_jax.store.reader import RunStore


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
        return storage_guard(path or self.dir, f"{what} of run {self.run}")

    def begin(self, *, num_test: int, meta: dict, config_text: str = "") -> int:
        """Prepares the directory; returns the rows already on disk (0 for a new run).

        Partial files of an earlier attempt that are damaged (so the run cannot resume from
        them) are removed with a warning and the run starts again from step 0.
        """
        rows = self.store.num_steps + 1
        losses_file = self.dir / "losses.npy"
        with self._guard("the run directory"):
            fileio.make_dirs(self.dir)
            fileio.remove_stale(self.dir)
            fileio.remove_stale(self.dir / "checkpoints")
            if (self.dir / "meta.json").exists():
                try:
                    self.store.run_meta(self.run)
                    if losses_file.exists():
                        fileio.read_npy(
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
                fileio.atomic_write(self.dir / "config.txt", config_text)
                fileio.atomic_json(self.dir / "meta.json", meta)
            tmp = fileio.temp_sibling(losses_file)
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, num_test))
            mm[:] = np.nan
            mm.flush()
            del mm
            os.replace(tmp, losses_file)
            fileio.atomic_json(self.dir / "progress.json", {"rows": 0})
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
            fileio.atomic_json(self.dir / "progress.json", {"rows": start + len(rows)})

    def save_state(self, step: int, state) -> None:
        """Snapshots a train-state pytree (host arrays) taken after ``step`` updates."""
        leaves = jax.tree_util.tree_leaves(state)
        arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays["step"] = np.asarray(step, np.int64)
        with self._guard("the resume snapshot", self.dir / "state.npz"):
            fileio.atomic_npz(self.dir / "state.npz", arrays)

    def load_state(self, template) -> tuple[int, Any] | None:
        """The latest snapshot as ``(step, state)`` shaped like ``template``, or ``None``.

        Raises:
          ValueError: naming ``state.npz`` if it is damaged or does not match ``template``.
        """
        path = self.dir / "state.npz"
        if not path.exists():
            return None
        leaves, treedef = jax.tree_util.tree_flatten(template)
        specs = {f"leaf_{i:05d}": fileio.ArraySpec() for i in range(len(leaves))}
        specs["step"] = fileio.ArraySpec("iu", ())
        z = fileio.read_npz(path, specs, what="resume snapshot")
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
        return run_checkpoint_path(self.dir, step)

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
        losses = fileio.read_npy(self.dir / "losses.npy", what="losses file")
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
            fileio.atomic_json(
                self.dir / "COMPLETE",
                {"rows": rows, "sha256": fileio.sha256_file(self.dir / "losses.npy")},
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / "state.npz")
        self.close()
