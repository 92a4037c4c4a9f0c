"""The run logger (:class:`RunLogger`; see :mod:`simfluence_jax.logger`)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.locks import FileLock
from simfluence_jax.logger.files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    assemble,
    atomic_json,
    check_losses,
    check_rate,
    load_run,
    read_steps,
    remove_temporaries,
    save_runset,
)
from simfluence_jax.runs import RunSet

#: Relative tolerance of a replayed step's losses against the logged ones.
REPLAY_RTOL = 1e-4


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
        fileio.make_dirs(self.path)
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
            info = fileio.read_json(info_file, what="run log description")
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
            atomic_json(info_file, {"format": FORMAT_NAME, "version": FORMAT_VERSION, **settings})
        # We hold the lock: every temporary here is left by a writer that is gone.
        remove_temporaries(self.path)
        for run_dir in sorted((self.path / "runs").glob("run_*")):
            remove_temporaries(run_dir)

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
        L0 = check_losses(initial_losses, self.num_test, "initial_losses")
        schedule = None
        if learning_rates is not None:
            schedule = np.asarray(learning_rates, np.float64).reshape(-1)
            for t, eta in enumerate(schedule, start=1):
                check_rate(eta, f"learning_rates[step {t}]")
        index = self.num_complete
        run_dir = self._run_dir(index)
        start_file, steps_file = run_dir / "start.json", run_dir / "steps.jsonl"
        on_disk: list[dict] = []
        if start_file.exists():
            start = fileio.read_json(start_file, what="run start record", required=["L0"])
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
            on_disk = read_steps(steps_file, repair=True)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            steps_file.touch()
            start = {
                "L0": L0.tolist(),
                "learning_rates": None if schedule is None else schedule.tolist(),
            }
            atomic_json(start_file, start)
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
        values = check_losses(losses, self.num_test, f"step {t}: losses")
        rate = (
            None if learning_rate is None else check_rate(learning_rate, f"step {t}: learning_rate")
        )
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
        atomic_json(
            run.dir / "COMPLETE", {"steps": run.steps, "sha256": fileio.sha256_file(steps_file)}
        )
        self._run = None
        return run.index

    # Reading ----------------------------------------------------------------------------

    # Reading ----------------------------------------------------------------------------
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
        loaded = [load_run(self._run_dir(r)) for r in range(num_runs)]
        runs = assemble(
            loaded, pad=pad, num_train=self.num_train, train_ids=self._settings["train_ids"],
            test_ids=self._settings["test_ids"], metadata=self._settings["metadata"],
        )  # fmt: skip
        save_runset(self.path, runs)
        self.release()
        return runs
