"""The run store: training runs written step by step to disk, safe against crashes.

Layout (``FORMAT_VERSION`` 1)::

    store/
      store.json            format name and version, sizes, shared metadata, fingerprint
      plan.npz              batches int32[R, T, B], seeds int64[R], train_ids, test_ids
      runs/run_000007/
        meta.json           seed, git revision, learning rates eta_1..eta_T, run metadata
        config.txt          the operative configuration text that made the run
        losses.npy          float32[T+1, M], preallocated (NaN), filled row by row
        progress.json       {"rows": k}: rows 0..k-1 of losses.npy are on disk
        state.npz           resume snapshot of the train state at some step s < T
        checkpoints/step_000032/   orbax checkpoint {trainable, learning_rate, step}
        COMPLETE            {"rows": T+1, "sha256": ...}: written last, atomically

Guarantees:

* **Atomic small files.** Every JSON/npz file is written to a temporary name, flushed,
  fsync'ed and moved into place with ``os.replace``; a reader sees the old file or the new.
* **Ordering.** Loss rows are written into the memory map and flushed *before*
  ``progress.json`` names them, and ``COMPLETE`` is written after every row; so a run is
  complete only once its marker exists, and :func:`collect` never reads another run.
  The marker holds the SHA-256 of ``losses.npy`` and ``collect`` checks it.
* **Resume.** A killed job is resumed by re-running it: a run restarts from its last
  ``state.npz`` snapshot (step s, taken every ``snapshot_every`` steps, stored as plain npz
  and read with ``allow_pickle=False``) or from step 0, and replays the steps after s.
  Because step t depends only on the state after step t-1, the batch ids of step t and
  ``fold_in(seed, t)``, and the replay runs the same compiled program, the rows it rewrites
  are bit-identical to those lost, and the final record equals an uninterrupted run's
  (``tests/test_store.py`` kills a worker mid-run to check this).
* **Versioning.** ``open_store`` refuses a store of another format version, naming both.
* **Write errors** (a full disk, say) raise :class:`StoreWriteError` naming the run and the
  file; runs already complete are never opened for writing again, so they stay intact, and
  the run that failed resumes later.

Checkpoints for TracIn-CP (Pruthi et al., 2020) are orbax checkpoints of the trainable
parameters at chosen steps, each with the learning rate of the update taken from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT_NAME = "simfluence_jax.RunStore"
FORMAT_VERSION = 1


class StoreWriteError(OSError):
    """Writing to the run store failed (disk full, permissions, ...)."""


# ---------------------------------------------------------------------------------------------
# Low-level atomic writes.


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the store is damaged") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_revision(path: str | Path | None = None) -> str:
    """The git commit of the code at ``path`` (default: this package), ``+dirty`` if edited,
    or ``"unknown"`` outside a git checkout."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------


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

    def is_complete(self, run: int) -> bool:
        return (self.run_dir(run) / "COMPLETE").exists()

    def complete_runs(self) -> list[int]:
        return [r for r in range(self.num_runs) if self.is_complete(r)]

    def rows_done(self, run: int) -> int:
        """Rows of ``losses`` durably written (0 .. T+1)."""
        progress = self.run_dir(run) / "progress.json"
        if not progress.exists():
            return 0
        return int(_read_json(progress)["rows"])

    def writer(self, run: int) -> RunWriter:
        """A writer for one incomplete run (the caller owns the run while writing it)."""
        if self.is_complete(run):
            raise ValueError(f"run {run} in {self.path} is complete; it is never rewritten")
        return RunWriter(self, run)

    def check_fingerprint(self, fingerprint: str) -> None:
        """Raises if the store was made with other training settings."""
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ValueError(
                f"the run store {self.path} was made with other training settings "
                f"(fingerprint {self.fingerprint}, now {fingerprint}); use a new store directory"
            )

    def load_losses(self, run: int) -> np.ndarray:
        """``float32[T+1, M]`` of a complete run, checked against its completion marker."""
        run_dir = self.run_dir(run)
        marker = run_dir / "COMPLETE"
        if not marker.exists():
            raise ValueError(f"run {run} in {self.path} is not complete")
        done = _read_json(marker)
        if _sha256(run_dir / "losses.npy") != done["sha256"]:
            raise ValueError(
                f"run {run} in {self.path}: losses.npy does not match its completion checksum "
                "(modified or damaged after completion)"
            )
        losses = np.load(run_dir / "losses.npy", allow_pickle=False)
        return np.asarray(losses, np.float32)

    def run_meta(self, run: int) -> dict:
        return _read_json(self.run_dir(run) / "meta.json")


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


def _check_version(path: Path, info: dict) -> None:
    if info.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{path} is not a simfluence_jax run store (format {info.get('format')!r})"
        )
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"the run store {path} has format version {info.get('version')}; this version of "
            f"simfluence_jax reads version {FORMAT_VERSION}. Collect it with the version that "
            "wrote it, or start a new store"
        )


def open_store(path: str | Path) -> RunStore:
    """Opens an existing store; raises ``ValueError`` if absent or of another version."""
    path = Path(path)
    info_file = path / "store.json"
    if not info_file.exists():
        raise ValueError(f"no run store at {path} (store.json missing)")
    info = _read_json(info_file)
    _check_version(path, info)
    with np.load(path / "plan.npz", allow_pickle=False) as z:
        plan = {k: z[k] for k in z.files}
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
    """
    path = Path(path)
    plan = _plan_arrays(batches, seeds, train_ids, test_ids, num_train, num_test)
    if (path / "store.json").exists():
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
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as err:
        raise ValueError(f"store metadata must be JSON-serialisable: {err}") from None
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
    try:
        (path / "runs").mkdir(parents=True, exist_ok=True)
        _atomic_npz(path / "plan.npz", plan)
        _atomic_json(path / "store.json", info)
    except OSError as err:
        raise StoreWriteError(err.errno, f"could not create the run store {path}: {err}") from err
    return RunStore(path, info, plan)


# ---------------------------------------------------------------------------------------------


class RunWriter:
    """Writes one run's directory; every method is safe to call again after a crash."""

    def __init__(self, store: RunStore, run: int):
        self.store = store
        self.run = run
        self.dir = store.run_dir(run)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            if isinstance(err, StoreWriteError):
                raise
            raise StoreWriteError(
                err.errno,
                f"could not write {what} of run {self.run} in {self.dir}: {err}. Runs already "
                "complete are intact; free space and rerun to resume this one",
            ) from err

    def begin(self, *, num_test: int, meta: dict, config_text: str = "") -> int:
        """Prepares the directory; returns the rows already on disk (0 for a new run)."""
        rows = self.store.num_steps + 1
        losses_file = self.dir / "losses.npy"
        with self._guard("the run directory"):
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "meta.json").exists():
                _atomic_json(self.dir / "meta.json", meta)
                _atomic_write(self.dir / "config.txt", config_text.encode())
            if losses_file.exists():
                mm = np.load(losses_file, mmap_mode="r", allow_pickle=False)
                if mm.shape != (rows, num_test) or mm.dtype != np.float32:
                    raise ValueError(
                        f"{losses_file} has shape {mm.shape}, expected {(rows, num_test)}"
                    )
                del mm
                return self.store.rows_done(self.run)
            tmp = self.dir / ".losses.npy.tmp"
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, num_test))
            mm[:] = np.nan
            mm.flush()
            del mm
            os.replace(tmp, losses_file)
            _atomic_json(self.dir / "progress.json", {"rows": 0})
        return 0

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Writes ``rows float32[k, M]`` at rows ``start .. start+k-1``, then records them."""
        rows = np.asarray(rows, np.float32)
        with self._guard("loss rows"):
            mm = np.load(self.dir / "losses.npy", mmap_mode="r+", allow_pickle=False)
            mm[start : start + len(rows)] = rows
            mm.flush()
            del mm
            _atomic_json(self.dir / "progress.json", {"rows": start + len(rows)})

    def save_state(self, step: int, state) -> None:
        """Snapshots a train-state pytree (host arrays) taken after ``step`` updates."""
        leaves = jax.tree_util.tree_leaves(state)
        arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
        arrays["step"] = np.asarray(step, np.int64)
        with self._guard("the resume snapshot"):
            _atomic_npz(self.dir / "state.npz", arrays)

    def load_state(self, template) -> tuple[int, Any] | None:
        """The latest snapshot as ``(step, state)`` shaped like ``template``, or ``None``."""
        path = self.dir / "state.npz"
        if not path.exists():
            return None
        leaves, treedef = jax.tree_util.tree_flatten(template)
        with np.load(path, allow_pickle=False) as z:
            stored = [z[f"leaf_{i:05d}"] for i in range(len(z.files) - 1)]
            step = int(z["step"])
        if len(stored) != len(leaves) or any(
            a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype for a, b in zip(stored, leaves)
        ):
            raise ValueError(
                f"the resume snapshot {path} does not match the train state of these settings"
            )
        return step, jax.tree_util.tree_unflatten(treedef, stored)

    def save_checkpoint(self, step: int, trainable, learning_rate: float) -> None:
        """An orbax checkpoint of the trainable parameters after ``step`` updates, with the
        learning rate of the next update (the rate TracIn-CP weighs this checkpoint by)."""
        target = self.dir / "checkpoints" / f"step_{step:06d}"
        if target.exists():
            return  # written before a crash; the replay reproduces it bit for bit
        tree = {
            "trainable": jax.device_get(trainable),
            "learning_rate": np.asarray(learning_rate, np.float32),
            "step": np.asarray(step, np.int32),
        }
        with self._guard(f"the checkpoint of step {step}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            _orbax_checkpointer().save(target.absolute(), args=_orbax_save_args(tree))

    def finish(self) -> None:
        """Marks the run complete (after every row is on disk) and drops the snapshot."""
        rows = self.store.rows_done(self.run)
        if rows != self.store.num_steps + 1:
            raise ValueError(f"run {self.run} has {rows} of {self.store.num_steps + 1} rows")
        losses = np.load(self.dir / "losses.npy", allow_pickle=False)
        if not np.all(np.isfinite(losses)):
            bad = np.argwhere(~np.isfinite(losses))[0]
            raise ValueError(
                f"run {self.run} has a non-finite loss at step {bad[0]}, test example "
                f"{bad[1]}: training diverged (lower the learning rate)"
            )
        with self._guard("the completion marker"):
            _atomic_json(
                self.dir / "COMPLETE", {"rows": rows, "sha256": _sha256(self.dir / "losses.npy")}
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / "state.npz")


def _orbax_checkpointer():
    import orbax.checkpoint as ocp

    # Each process writes its own runs, so checkpoints are process-local: no barrier with
    # the other processes of a jax.distributed job.
    mp = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    handler = ocp.StandardCheckpointHandler(multiprocessing_options=mp)
    return ocp.Checkpointer(handler, multiprocessing_options=mp)


def _orbax_save_args(tree):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(tree)


def checkpoint_steps(store: RunStore | str | Path, run: int) -> list[int]:
    """Steps at which run ``run`` kept a checkpoint."""
    store = store if isinstance(store, RunStore) else open_store(store)
    folder = store.run_dir(run) / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name.split("_")[1]) for p in folder.glob("step_*") if p.is_dir())


def load_checkpoint(store: RunStore | str | Path, run: int, step: int) -> dict:
    """``{"trainable", "learning_rate", "step"}`` saved by run ``run`` after ``step`` updates.

    ``trainable`` is the method's trainable pytree; combine it with the base parameters via
    the training method (e.g. ``method.reference_loss(model, params, trainable, batch)``).
    """
    store = store if isinstance(store, RunStore) else open_store(store)
    target = store.run_dir(run) / "checkpoints" / f"step_{step:06d}"
    if not target.exists():
        have = checkpoint_steps(store, run)
        raise ValueError(f"run {run} kept no checkpoint at step {step}; it has steps {have}")
    tree = _orbax_checkpointer().restore(target.absolute())
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
    if all(r is not None and len(r) == store.batches.shape[1] for r in rates):
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


def remove_incomplete(store_dir: str | Path) -> list[int]:
    """Deletes the directories of incomplete runs (to restart them from scratch)."""
    store = open_store(store_dir)
    removed = []
    for r in range(store.num_runs):
        if not store.is_complete(r) and store.run_dir(r).exists():
            shutil.rmtree(store.run_dir(r))
            removed.append(r)
    return removed
