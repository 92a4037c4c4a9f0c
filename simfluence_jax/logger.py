"""A run logger for training loops written in any framework (PyTorch, NumPy, ...).

It imports neither JAX nor Flax, only NumPy, so it can live inside another framework's
training process::

    logger = RunLogger("runs/mine", num_test=M)
    for r in range(logger.num_complete, num_runs):    # after a crash: resume
        model = make_model(seed=r)
        logger.start_run(initial_losses=test_losses(model))   # L_0, before any update
        for batch_ids in curriculum(r):
            train_step(model, batch_ids)
            logger.log_step(batch_ids, test_losses(model), learning_rate=lr)
        logger.end_run()
    runs = logger.close()      # a RunSet; RunSet.load("runs/mine") reads it back

Layout (``FORMAT_VERSION`` 1)::

    path/
      logger.json              format, version, sizes, ids, metadata
      runs/run_000003/
        start.json             L_0 and the run's learning-rate schedule, if given
        steps.jsonl            one line per step: {"step", "batch", "losses", "learning_rate"}
        COMPLETE               {"steps": T, "sha256": ...}: written last, atomically
      meta.json, arrays.<sha>.npz   the RunSet, written by close()
      LOCK                     held by the one process logging to the folder

Guarantees (the same as the run factory's store, ``simfluence_jax.store``, which this module
cannot use because that store handles JAX train states):

* **One writer.** The logger holds an advisory lock on ``path/LOCK`` (``simfluence_jax.locks``)
  from construction until ``close()`` or ``release()``. A second logger on the same path, in
  this or another process, fails at once with a ``StoreBusyError`` naming the holder (pid,
  host, since when), or waits for it with ``wait=True``. The kernel drops the lock when its
  process dies, so a killed job never leaves the path locked.
* **Durable steps.** ``log_step`` appends one line and flushes and fsyncs it before it
  returns, so a killed process loses at most the step in flight. A torn last line (the step
  in flight) is cut off when the run is reopened.
* **Complete runs only.** ``end_run`` writes the ``COMPLETE`` marker (with the SHA-256 of
  the steps file) last, through a temporary file and ``os.replace``; ``close`` reads only
  complete runs and checks their checksums.
* **Resume.** Reopen the same path: ``num_complete`` says where to start, and ``start_run``
  reopens the interrupted run and returns the number of its steps on disk. Replay the run
  from its start: replayed steps are checked against the record (the same batch ids, losses
  within ``rtol=1e-4``) instead of being written again, and logging continues after them.
  Or, if your loop restored its own checkpoint of the model, pass ``skip_logged=True`` and
  continue after them. A deterministic loop produces the same record as an uninterrupted one.

* **Atomic close.** ``close()`` writes the run set into ``path`` itself, next to the logs, so
  ``RunSet.load(path)`` and ``simfluence fit --runs path`` read it: the arrays go to a new
  file ``arrays.<sha>.npz`` first, then ``meta.json``, which names that file and its SHA-256,
  is replaced in one rename; only then are older arrays files removed. A reader (or a kill at
  any point) finds the old run set or the new one, never one's arrays with the other's
  metadata. Temporaries of interrupted ``close`` and ``end_run`` calls are removed when the
  path is next opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import io as sio
from simfluence_jax.importers import common_length
from simfluence_jax.locks import FileLock
from simfluence_jax.runs import RunSet

FORMAT_NAME = "simfluence_jax.RunLogger"
FORMAT_VERSION = 1
#: Relative tolerance of a replayed step's losses against the logged ones.
REPLAY_RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Durable writes.


_fsync_dir = sio.fsync_dir


def _atomic_json(path: Path, obj: Any) -> None:
    sio.atomic_write(path, json.dumps(obj, indent=1).encode())


def _read_steps(path: Path, *, repair: bool) -> list[dict]:
    """The steps of a steps file; a torn last line is cut off (with ``repair``) or ignored."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    steps = []
    for n, line in enumerate(data[:end].splitlines(), start=1):
        try:
            step = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); the log is damaged") from None
        if step.get("step") != n:
            raise ValueError(f"{path}:{n}: expected step {n}, found {step.get('step')!r}")
        steps.append(step)
    return steps


# ---------------------------------------------------------------------------------------------
# Checks.


def _losses(values, num_test: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64).reshape(-1)
    if arr.shape != (num_test,):
        raise ValueError(f"{what} must hold num_test = {num_test} losses, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        j = int(np.argmax(~np.isfinite(arr)))
        raise ValueError(f"{what}: the loss of test example {j} is {arr[j]} (NaN or infinite)")
    return arr


def _rate(value, what: str) -> float:
    rate = float(value)
    if not np.isfinite(rate) or rate < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {rate}")
    return rate


@dataclasses.dataclass
class _OpenRun:
    index: int
    dir: Path
    schedule: np.ndarray | None
    on_disk: list[dict]  # steps logged before a crash, replayed or skipped
    steps: int = 0
    with_rate: bool | None = None
    file: Any = None


class RunLogger:
    """Logs training runs step by step to a directory; ``close()`` returns the ``RunSet``.

    Args:
      path: the log directory (created, or reopened to resume).
      num_test: M, the number of test examples whose losses every step logs.
      num_train: N, the pool size; defaults to the largest logged id + 1 (or
        ``len(train_ids)``). Batch ids are positions 0..N-1 in the pool.
      train_ids, test_ids: optional names of the examples (integers or strings).
      metadata: JSON-serialisable information kept with the runs (model, optimizer, ...).

    Reopening a directory with other sizes, ids or metadata is a ``ValueError``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_test: int,
        num_train: int | None = None,
        train_ids=None,
        test_ids=None,
        metadata: dict | None = None,
        wait: bool | float = False,
    ):
        self.path = Path(path)
        self._closed = False
        if train_ids is not None:
            train_ids = np.asarray(train_ids).tolist()
            if num_train is None:
                num_train = len(train_ids)
        test_ids = None if test_ids is None else np.asarray(test_ids).tolist()
        settings = {
            "num_test": int(num_test),
            "num_train": None if num_train is None else int(num_train),
            "train_ids": train_ids,
            "test_ids": test_ids,
            "metadata": dict(metadata or {}),
        }
        if settings["num_test"] < 1:
            raise ValueError(f"num_test must be >= 1, got {num_test}")
        if train_ids is not None and len(train_ids) != num_train:
            raise ValueError(f"train_ids has {len(train_ids)} names but num_train = {num_train}")
        if test_ids is not None and len(test_ids) != num_test:
            raise ValueError(f"test_ids has {len(test_ids)} names but num_test = {num_test}")
        sio.make_dirs(self.path)
        self._lock = FileLock(
            self.path / "LOCK", what=f"the run log {self.path}", doing="logging runs"
        ).acquire(wait=wait)
        try:
            self._open(settings)
        except BaseException:
            self._lock.release()
            raise
        self.num_test = settings["num_test"]
        self.num_train = settings["num_train"]
        self._settings = settings
        self._run: _OpenRun | None = None

    def _open(self, settings: dict) -> None:
        """Checks or writes ``logger.json`` and removes temporaries of interrupted writes."""
        info_file = self.path / "logger.json"
        if info_file.exists():
            info = sio.read_json(info_file, what="run log description")
            if info.get("format") != FORMAT_NAME or info.get("version") != FORMAT_VERSION:
                raise ValueError(
                    f"{self.path} holds format {info.get('format')!r} version "
                    f"{info.get('version')}; this logger writes {FORMAT_NAME!r} version "
                    f"{FORMAT_VERSION}"
                )
            for key, value in settings.items():
                if info.get(key) != value:
                    raise ValueError(
                        f"{self.path} was logged with {key} = {info.get(key)!r}, not "
                        f"{value!r}; reopen it with the same settings or use a new directory"
                    )
        else:
            try:
                json.dumps(settings)
            except TypeError as e:
                raise ValueError(f"metadata and ids must be JSON-serialisable: {e}") from None
            (self.path / "runs").mkdir(parents=True, exist_ok=True)
            _atomic_json(info_file, {"format": FORMAT_NAME, "version": FORMAT_VERSION, **settings})
        # We hold the lock: every temporary here is left by a writer that is gone.
        _remove_temporaries(self.path)
        for run_dir in sorted((self.path / "runs").glob("run_*")):
            _remove_temporaries(run_dir)

    def release(self) -> None:
        """Gives up the path without saving (``close()`` saves and releases); logging again
        needs a new ``RunLogger``. Complete runs stay on disk for the next one."""
        if self._run is not None and self._run.file is not None:
            self._run.file.close()
        self._run = None
        self._closed = True
        self._lock.release()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(
                f"this logger of {self.path} was closed; open a new RunLogger to log more runs"
            )

    # Where things are -------------------------------------------------------------------
    def _run_dir(self, run: int) -> Path:
        return self.path / "runs" / f"run_{run:06d}"

    @property
    def num_complete(self) -> int:
        """Runs logged to the end; the next ``start_run`` begins (or resumes) this index."""
        k = 0
        while (self._run_dir(k) / "COMPLETE").exists():
            k += 1
        return k

    # Logging ----------------------------------------------------------------------------
    def start_run(self, initial_losses, learning_rates=None, *, skip_logged: bool = False) -> int:
        """Begins run ``num_complete``, or reopens it if a crash interrupted it.

        Args:
          initial_losses: ``[M]`` test losses of the starting model (L_0).
          learning_rates: optional ``[T]`` schedule of the run, eta_1..eta_T (also fixes T).
          skip_logged: count the steps already on disk as logged, so that the next
            ``log_step`` is the step after them (for a loop that restored its own checkpoint
            of the model). By default they are replayed: the next ``log_step`` calls are
            checked against them instead of being written again.

        Returns:
          The number of steps of this run already on disk (0 for a new run).
        """
        self._check_open()
        if self._run is not None:
            raise ValueError(f"run {self._run.index} is still open; call end_run() first")
        L0 = _losses(initial_losses, self.num_test, "initial_losses")
        schedule = None
        if learning_rates is not None:
            schedule = np.asarray(learning_rates, np.float64).reshape(-1)
            for t, eta in enumerate(schedule, start=1):
                _rate(eta, f"learning_rates[step {t}]")
        index = self.num_complete
        run_dir = self._run_dir(index)
        start_file, steps_file = run_dir / "start.json", run_dir / "steps.jsonl"
        on_disk: list[dict] = []
        if start_file.exists():
            start = sio.read_json(start_file, what="run start record", required=["L0"])
            logged = np.asarray(start["L0"], np.float64)
            if not np.allclose(logged, L0, rtol=REPLAY_RTOL, atol=0):
                raise ValueError(
                    f"run {index} in {self.path} began from other initial losses (largest "
                    f"difference {np.max(np.abs(logged - L0)):.3g}); is this the same run?"
                )
            stored = start.get("learning_rates")
            if (stored is None) != (schedule is None) or (
                schedule is not None and not np.array_equal(np.asarray(stored), schedule)
            ):
                raise ValueError(f"run {index} in {self.path} was begun with another schedule")
            on_disk = _read_steps(steps_file, repair=True)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            steps_file.touch()
            start = {
                "L0": L0.tolist(),
                "learning_rates": None if schedule is None else schedule.tolist(),
            }
            _atomic_json(start_file, start)
        self._run = _OpenRun(index, run_dir, schedule, on_disk)
        if on_disk:
            self._run.with_rate = on_disk[0].get("learning_rate") is not None
            if skip_logged:
                self._run.steps = len(on_disk)
        self._run.file = open(steps_file, "ab")
        return len(on_disk)

    def log_step(self, batch_ids, losses, learning_rate=None) -> None:
        """Logs one training step: its batch and the test losses right after the update.

        Args:
          batch_ids: the training ids of the batch (positions in the pool; -1 entries are
            padding and dropped; an id given twice counts twice).
          losses: ``[M]`` test losses after the update (anything ``np.asarray`` reads; for
            a PyTorch tensor, ``tensor.detach().cpu()``).
          learning_rate: the step's learning rate (or taken from the run's schedule).
        """
        self._check_open()
        run = self._run
        if run is None:
            raise ValueError("no run is open; call start_run() first")
        t = run.steps + 1
        ids = np.asarray(batch_ids).reshape(-1)
        if ids.size == 0:
            raise ValueError(f"step {t}: the batch is empty")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"step {t}: batch_ids must be integers, got dtype {ids.dtype}")
        ids = ids[ids != -1].astype(np.int64)
        if ids.size == 0:
            raise ValueError(f"step {t}: the batch is empty")
        if ids.min() < 0 or (self.num_train is not None and ids.max() >= self.num_train):
            bad = ids[(ids < 0) | (ids >= (self.num_train or np.inf))][0]
            raise ValueError(
                f"step {t}: training id {bad} is outside the pool 0..N-1 (N = {self.num_train})"
            )
        values = _losses(losses, self.num_test, f"step {t}: losses")
        rate = None if learning_rate is None else _rate(learning_rate, f"step {t}: learning_rate")
        if run.schedule is not None:
            if t > len(run.schedule):
                raise ValueError(
                    f"step {t} is past the run's schedule of {len(run.schedule)} steps"
                )
            if rate is not None and not np.isclose(rate, run.schedule[t - 1]):
                raise ValueError(
                    f"step {t}: learning_rate {rate} differs from the schedule's "
                    f"{run.schedule[t - 1]}"
                )
            rate = float(run.schedule[t - 1])
        if run.with_rate is None:
            run.with_rate = rate is not None
        elif run.with_rate != (rate is not None):
            raise ValueError(f"step {t}: give a learning_rate at every step of a run or at none")
        if t <= len(run.on_disk):
            self._check_replay(run.on_disk[t - 1], ids, values, rate)
        else:
            line = {
                "step": t,
                "batch": ids.tolist(),
                "losses": values.tolist(),
                "learning_rate": rate,
            }
            run.file.write((json.dumps(line) + "\n").encode())
            run.file.flush()
            os.fsync(run.file.fileno())
        run.steps = t

    def _check_replay(self, logged: dict, ids, values, rate) -> None:
        t, index = logged["step"], self._run.index
        if logged["batch"] != ids.tolist():
            raise ValueError(
                f"run {index}, step {t}: the replayed batch {ids.tolist()} differs from the "
                f"logged one {logged['batch']}; a resumed run must follow the same curriculum"
            )
        if (logged.get("learning_rate") is None) != (rate is None) or (
            rate is not None and not np.isclose(rate, logged["learning_rate"])
        ):
            raise ValueError(
                f"run {index}, step {t}: the replayed learning rate {rate} differs "
                f"from the logged {logged.get('learning_rate')}"
            )
        if not np.allclose(values, logged["losses"], rtol=REPLAY_RTOL, atol=0):
            warnings.warn(
                f"run {index}, step {t}: the replayed losses differ from the logged ones "
                f"(largest difference {np.max(np.abs(values - logged['losses'])):.3g}); the "
                "logged ones are kept. Is the training loop deterministic?",
                RuntimeWarning,
                stacklevel=3,
            )

    def end_run(self) -> int:
        """Marks the open run complete; returns its index."""
        self._check_open()
        run = self._run
        if run is None:
            raise ValueError("no run is open; call start_run() first")
        if run.steps == 0:
            raise ValueError(f"run {run.index} has no steps; log at least one before end_run()")
        if run.steps < len(run.on_disk):
            raise ValueError(
                f"run {run.index} has {len(run.on_disk)} steps on disk but only {run.steps} "
                "were replayed; replay the whole run, or skip the logged steps"
            )
        if run.schedule is not None and run.steps != len(run.schedule):
            raise ValueError(
                f"run {run.index} has {run.steps} steps but its schedule {len(run.schedule)}"
            )
        run.file.close()
        steps_file = run.dir / "steps.jsonl"
        _atomic_json(
            run.dir / "COMPLETE", {"steps": run.steps, "sha256": sio.sha256_file(steps_file)}
        )
        self._run = None
        return run.index

    # Reading ----------------------------------------------------------------------------
    def _load_run(self, index: int) -> tuple[np.ndarray, list[list[int]], list | None]:
        run_dir = self._run_dir(index)
        done = sio.read_json(
            run_dir / "COMPLETE", what="run completion marker", required=["steps", "sha256"],
            types={"steps": int, "sha256": str},
        )  # fmt: skip
        steps_file = run_dir / "steps.jsonl"
        if sio.sha256_file(steps_file) != done["sha256"]:
            raise ValueError(
                f"{steps_file} does not match its completion checksum (modified "
                "or damaged after the run ended)"
            )
        steps = _read_steps(steps_file, repair=False)
        if len(steps) != done["steps"]:
            raise ValueError(f"{steps_file} has {len(steps)} steps, its marker {done['steps']}")
        start = sio.read_json(run_dir / "start.json", what="run start record", required=["L0"])
        losses = np.asarray([start["L0"]] + [s["losses"] for s in steps], np.float32)
        rates = [s.get("learning_rate") for s in steps]
        return losses, [s["batch"] for s in steps], None if rates[0] is None else rates

    def close(self, *, pad: bool = False) -> RunSet:
        """Collects the complete runs into a ``RunSet`` and saves it into ``path``.

        Args:
          pad: accept runs of different lengths by cutting all of them to the shortest.

        Runs a crash interrupted and nobody resumed are left out (with a warning).
        """
        self._check_open()
        if self._run is not None:
            raise ValueError(f"run {self._run.index} is open; call end_run() before close()")
        num_runs = self.num_complete
        if num_runs == 0:
            raise ValueError(f"{self.path} holds no complete run")
        if (self._run_dir(num_runs) / "start.json").exists():
            warnings.warn(
                f"run {num_runs} in {self.path} was interrupted and is left out; reopen the "
                "logger and resume it to include it",
                RuntimeWarning,
                stacklevel=2,
            )
        loaded = [self._load_run(r) for r in range(num_runs)]
        T = common_length(
            [len(b) for _, b, _ in loaded], [f"run {r}" for r in range(num_runs)], pad=pad
        )
        B = max(len(b) for _, batches, _ in loaded for b in batches[:T])
        batches = np.full((num_runs, T, B), -1, np.int32)
        for r, (_, run_batches, _) in enumerate(loaded):
            for t, b in enumerate(run_batches[:T]):
                batches[r, t, : len(b)] = b
        has_rates = [rates is not None for _, _, rates in loaded]
        if any(has_rates) and not all(has_rates):
            raise ValueError(
                f"runs {[r for r, h in enumerate(has_rates) if not h]} have no learning rates "
                "but others do; give every run its rates or none"
            )
        learning_rates = None
        if all(has_rates):
            learning_rates = np.asarray([rates[:T] for _, _, rates in loaded], np.float32)
        metadata = dict(self._settings["metadata"])
        metadata.update(source="RunLogger", runs=list(range(num_runs)))
        if any(len(b) != T for _, b, _ in loaded):
            metadata["logged_steps"] = [len(b) for _, b, _ in loaded]
        runs = RunSet(
            batches=batches,
            losses=np.stack([losses[: T + 1] for losses, _, _ in loaded]),
            num_train=self.num_train,
            train_ids=self._settings["train_ids"],
            test_ids=self._settings["test_ids"],
            metadata=metadata,
            learning_rates=learning_rates,
        )
        self._save(runs)
        self.release()
        return runs

    def _save(self, runs: RunSet) -> None:
        """Writes the run set into ``path``: the arrays under a new name, then ``meta.json``
        (naming them) in one rename, then removes the arrays files it replaced."""
        data, _ = runs.encode()
        name = f"arrays.{hashlib.sha256(data).hexdigest()[:16]}.npz"
        data, meta = runs.encode(name)
        sio.atomic_write(self.path / name, data)
        sio.atomic_write(self.path / "meta.json", sio.json_bytes(meta))
        for old in self.path.glob("arrays*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)
        _fsync_dir(self.path)


def _remove_temporaries(folder: Path) -> None:
    """Removes what interrupted writes left in ``folder``: ``io`` temporaries (``.NAME.new.*``
    of ``end_run`` and ``close``) and the ``.runset.*`` folders of earlier versions' close."""
    for entry in folder.iterdir():
        if sio.is_temporary(entry.name) or (entry.name.startswith(".runset.") and entry.is_dir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
