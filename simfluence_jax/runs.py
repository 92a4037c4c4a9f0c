"""Run records: the curricula of R training runs and the test losses they produced.

A run set stacks R runs of T steps with batch size B over a pool of N training examples,
evaluated on M test examples (docs/design.md, section 2):

* ``batches: int32[R, T, B]``, training-example ids; ``-1`` pads a ragged batch, and an id
  repeated inside a batch counts twice;
* ``losses: float32[R, T+1, M]``; row 0 is L_0, the losses before any update, row t the
  losses right after step t;
* optionally ``learning_rates: float32[R, T]``, the learning rate of every step of every run
  (what ``lr_scaled`` simulators need, docs/design.md, section 3.2).

Run sets are saved as a directory holding ``arrays.npz`` (plain numeric and unicode arrays,
read with ``allow_pickle=False``) and ``meta.json`` (format version, ids, free metadata, the
arrays file's name and SHA-256), written to a temporary directory first and swapped into
place (:func:`simfluence_jax.fileio.replace_directory`), so a crash never leaves a half-written
run set under the final name and a reader finds the old or the new one. Loading checks both
files (format, version, JSON types, array dtypes and shapes, and that the arrays are the ones
``meta.json`` was written with) and names the file at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import fileio

FORMAT_NAME = "simfluence_jax.RunSet"
#: Metadata keys holding one entry per run; ``select`` and ``concatenate`` keep them aligned.
PER_RUN_KEYS = ("runs", "seeds")
FORMAT_VERSION = 1
#: The arrays file of a run set folder (``meta.json`` may name another: ``arrays.<hex>.npz``).
ARRAYS_FILE = "arrays.npz"
_ARRAYS_NAME = re.compile(r"^arrays(\.[0-9a-f]{8,64})?\.npz$")


def _as_id_array(values: Sequence[Any] | None, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.arange(n)
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "iuU":
        raise ValueError(f"{what} must hold integers or strings, got dtype {arr.dtype}")
    values, first, counts = np.unique(arr, return_index=True, return_counts=True)
    if np.any(counts > 1):
        k = int(np.argmax(counts > 1))
        again = int(np.flatnonzero(arr == values[k])[1])
        raise ValueError(
            f"{what} name example {values[k].item()!r} twice (positions {first[k]} and {again}); "
            "every example needs its own id"
        )
    return arr


def check_learning_rates(learning_rates, num_runs: int, num_steps: int) -> np.ndarray:
    """``float32[R, T]`` learning rates, checked: the right shape, finite and >= 0."""
    lr = np.asarray(learning_rates)
    if lr.dtype.kind not in "iuf":
        raise ValueError(f"learning_rates must be numbers, got dtype {lr.dtype}")
    lr = lr.astype(np.float32)
    if lr.shape != (num_runs, num_steps):
        raise ValueError(
            f"learning_rates must have shape [R, T] = [{num_runs}, {num_steps}] (one rate per "
            f"step of every run), got shape {lr.shape}"
        )
    if not np.all(np.isfinite(lr)):
        bad = np.argwhere(~np.isfinite(lr))[0]
        raise ValueError(
            f"learning_rates contain NaN or infinite values (first at run "
            f"{bad[0]}, step {bad[1] + 1})"
        )
    if np.any(lr < 0):
        bad = np.argwhere(lr < 0)[0]
        raise ValueError(
            f"learning_rates must be >= 0, got {lr[tuple(bad)]} at run {bad[0]}, step {bad[1] + 1}"
        )
    return lr


@dataclasses.dataclass(frozen=True, eq=False)
class RunSet:
    """R training runs: their curricula and every test example's loss after every step.

    Args:
      batches: ``int32[R, T, B]`` training-example ids per step; ``-1`` is padding.
      losses: ``float32[R, T+1, M]`` test losses; row 0 is L_0.
      num_train: the pool size N. Defaults to ``len(train_ids)`` when ids are given, else to
        ``max(batches) + 1``.
      train_ids: ``[N]`` names of the training examples (ints or strings); defaults to 0..N-1.
      test_ids: ``[M]`` names of the test examples; defaults to 0..M-1.
      metadata: JSON-serialisable free-form information (texts, seed, model and config that
        made the runs).
      learning_rates: optional ``float32[R, T]``, each step's learning rate (finite, >= 0).

    Raises:
      ValueError: naming the problem, for shapes that disagree, ids out of range, NaN or
        infinite losses, or empty runs.
    """

    batches: np.ndarray
    losses: np.ndarray
    num_train: int | None = None
    train_ids: np.ndarray | None = None
    test_ids: np.ndarray | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    learning_rates: np.ndarray | None = None

    def __post_init__(self):
        batches = np.asarray(self.batches)
        losses = np.asarray(self.losses)
        if batches.ndim != 3:
            raise ValueError(f"batches must have shape [R, T, B], got shape {batches.shape}")
        if losses.ndim != 3:
            raise ValueError(f"losses must have shape [R, T+1, M], got shape {losses.shape}")
        if batches.dtype.kind not in "iu":
            raise ValueError(f"batches must hold integer ids, got dtype {batches.dtype}")
        R, T, B = batches.shape
        if R == 0:
            raise ValueError("the run set is empty: batches has R = 0 runs")
        if T == 0 or B == 0:
            raise ValueError(f"runs are empty: batches has T = {T} steps and B = {B} slots")
        if losses.shape[0] != R:
            raise ValueError(f"batches has {R} runs but losses has {losses.shape[0]}")
        if losses.shape[1] != T + 1:
            raise ValueError(
                f"losses must have T+1 = {T + 1} rows per run (row 0 is L_0) for T = {T} "
                f"steps, got {losses.shape[1]}; a truncated run?"
            )
        if losses.shape[2] == 0:
            raise ValueError("losses has M = 0 test examples")
        if not np.all(np.isfinite(losses)):
            bad = np.argwhere(~np.isfinite(losses))[0]
            raise ValueError(
                f"losses contain NaN or infinite values (first at run {bad[0]}, "
                f"step {bad[1]}, test example {bad[2]})"
            )
        if batches.min() < -1:
            raise ValueError(f"batches contain id {batches.min()}; only -1 may pad")
        if np.all(batches < 0):
            raise ValueError("every batch slot is padding (-1): the runs train on nothing")
        empty_steps = np.argwhere(np.all(batches < 0, axis=2))
        if len(empty_steps):
            r, t = empty_steps[0]
            raise ValueError(f"run {r}, step {t} is all padding; drop empty steps")

        train_ids = self.train_ids
        num_train = self.num_train
        if num_train is None:
            num_train = len(train_ids) if train_ids is not None else int(batches.max()) + 1
        num_train = int(num_train)
        train_ids = _as_id_array(train_ids, num_train, "train_ids")
        if len(train_ids) != num_train:
            raise ValueError(f"train_ids has {len(train_ids)} entries but num_train = {num_train}")
        if batches.max() >= num_train:
            raise ValueError(
                f"batches contain id {batches.max()}, out of range for a pool of "
                f"{num_train} training examples (ids 0..{num_train - 1})"
            )
        test_ids = _as_id_array(self.test_ids, losses.shape[2], "test_ids")
        if len(test_ids) != losses.shape[2]:
            raise ValueError(
                f"test_ids has {len(test_ids)} entries but losses has {losses.shape[2]} "
                "test examples"
            )
        try:
            json.dumps(self.metadata)
        except TypeError as e:
            raise ValueError(f"metadata must be JSON-serialisable: {e}") from None
        learning_rates = self.learning_rates
        if learning_rates is not None:
            learning_rates = check_learning_rates(learning_rates, R, T)
        set_ = object.__setattr__
        set_(self, "learning_rates", learning_rates)
        set_(self, "batches", batches.astype(np.int32))
        set_(self, "losses", losses.astype(np.float32))
        set_(self, "num_train", num_train)
        set_(self, "train_ids", train_ids)
        set_(self, "test_ids", test_ids)
        set_(self, "metadata", dict(self.metadata))

    # Sizes ---------------------------------------------------------------------------
    @property
    def num_runs(self) -> int:
        return self.batches.shape[0]

    @property
    def num_steps(self) -> int:
        return self.batches.shape[1]

    @property
    def batch_size(self) -> int:
        return self.batches.shape[2]

    @property
    def num_test(self) -> int:
        return self.losses.shape[2]

    @property
    def L0(self) -> np.ndarray:
        """``float32[R, M]``: the losses before the first update."""
        return self.losses[:, 0]

    def __repr__(self) -> str:
        return (
            f"RunSet(R={self.num_runs}, T={self.num_steps}, B={self.batch_size}, "
            f"N={self.num_train}, M={self.num_test})"
        )

    # Selection -----------------------------------------------------------------------
    def select(self, runs: Sequence[int] | np.ndarray) -> RunSet:
        """The run set restricted to the given run indices (in that order)."""
        idx = np.asarray(runs, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.num_runs or idx.max() >= self.num_runs):
            raise ValueError(f"run index out of range for {self.num_runs} runs: {idx.tolist()}")
        meta = dict(self.metadata)
        for key in PER_RUN_KEYS:
            if isinstance(meta.get(key), list) and len(meta[key]) == self.num_runs:
                meta[key] = [meta[key][i] for i in idx]
        lr = None if self.learning_rates is None else self.learning_rates[idx]
        return dataclasses.replace(
            self,
            batches=self.batches[idx],
            losses=self.losses[idx],
            metadata=meta,
            learning_rates=lr,
        )

    def select_test(self, test: Sequence[int] | np.ndarray) -> RunSet:
        """The run set restricted to some test examples (columns of ``losses``)."""
        idx = np.asarray(test, dtype=np.int64).reshape(-1)
        return dataclasses.replace(self, losses=self.losses[:, :, idx], test_ids=self.test_ids[idx])

    def split(
        self, num_fit: int, num_val: int, num_test: int | None = None, *, seed: int | None = None
    ) -> tuple[RunSet, RunSet | None, RunSet | None]:
        """Splits runs into (fit, validation, held-out).

        Runs are taken in order unless ``seed`` is given, in which case they are permuted
        first. ``num_test`` defaults to all remaining runs; a part of size 0 is ``None``.
        GPTfluence uses 25 / 2 / 5.
        """
        if num_test is None:
            num_test = self.num_runs - num_fit - num_val
        if min(num_fit, num_val, num_test) < 0 or num_fit == 0:
            raise ValueError(
                f"invalid split sizes fit={num_fit}, val={num_val}, test={num_test}; "
                "each must be >= 0 and fit >= 1"
            )
        if num_fit + num_val + num_test > self.num_runs:
            raise ValueError(
                f"split needs {num_fit}+{num_val}+{num_test} runs but the run set has "
                f"{self.num_runs}"
            )
        order = np.arange(self.num_runs)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(self.num_runs)
        a, b = num_fit, num_fit + num_val
        parts = (order[:a], order[a:b], order[b : b + num_test])
        return tuple(self.select(p) if len(p) else None for p in parts)

    @staticmethod
    def concatenate(runsets: Sequence[RunSet]) -> RunSet:
        """Stacks run sets made over the same pool and test examples."""
        if not runsets:
            raise ValueError("cannot concatenate an empty list of run sets")
        first = runsets[0]
        for i, rs in enumerate(runsets[1:], start=1):
            if rs.num_train != first.num_train or not np.array_equal(rs.test_ids, first.test_ids):
                raise ValueError(f"run set {i} has a different pool or test set than run set 0")
            if rs.batches.shape[1:] != first.batches.shape[1:]:
                raise ValueError(
                    f"run set {i} has steps x batch {rs.batches.shape[1:]}, run set 0 has "
                    f"{first.batches.shape[1:]}"
                )
        has_lr = [r.learning_rates is not None for r in runsets]
        if any(has_lr) and not all(has_lr):
            raise ValueError(
                f"run sets {[i for i, h in enumerate(has_lr) if not h]} have no learning rates "
                "but others do; give every run set its schedule or none"
            )
        lr = np.concatenate([r.learning_rates for r in runsets]) if all(has_lr) else None
        meta = dict(first.metadata)
        for key in PER_RUN_KEYS:
            parts = [r.metadata.get(key) for r in runsets]
            if all(isinstance(p, list) and len(p) == r.num_runs for p, r in zip(parts, runsets)):
                meta[key] = [x for p in parts for x in p]
            else:
                meta.pop(key, None)
        return dataclasses.replace(
            first,
            batches=np.concatenate([r.batches for r in runsets]),
            losses=np.concatenate([r.losses for r in runsets]),
            metadata=meta,
            learning_rates=lr,
        )

    def used_ids(self) -> np.ndarray:
        """``bool[N]``: which training ids occur in at least one batch."""
        seen = np.zeros(self.num_train, bool)
        ids = self.batches[self.batches >= 0]
        seen[ids] = True
        return seen

    # Persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes the run set to directory ``path`` atomically; returns the path.

        An existing run set is replaced only with ``overwrite=True``, by an atomic swap (a
        reader finds the old or the new version, never neither); temporaries left by a killed
        save are removed.
        """
        path = Path(path)
        if fileio.resolve_directory(path).exists() and not overwrite:
            raise ValueError(f"{path} already exists; pass overwrite=True to replace it")
        arrays, meta = self.encode()
        files = {ARRAYS_FILE: arrays, "meta.json": fileio.json_bytes(meta)}
        with fileio.replace_directory(path) as tmp:
            fileio.write_files(tmp, files)
        return path

    def encode(self, arrays_file: str = ARRAYS_FILE) -> tuple[bytes, dict]:
        """The bytes of the arrays file and the ``meta.json`` record that names it.

        ``meta.json`` holds the arrays file's name and SHA-256, so a folder whose two files
        come from different saves is an error at load, never a silent mix. A writer that
        cannot swap a whole folder (``RunLogger.close``) writes the arrays under a new name
        first and then replaces ``meta.json``: that one rename commits the new record.
        """
        if not _ARRAYS_NAME.match(arrays_file):
            raise ValueError(f"bad arrays file name {arrays_file!r}")
        arrays = {"batches": self.batches, "losses": self.losses}
        for key in ("train_ids", "test_ids"):
            arrays[key] = getattr(self, key)
        if self.learning_rates is not None:
            arrays["learning_rates"] = self.learning_rates
        data = fileio.npz_bytes(arrays)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "num_train": self.num_train,
            "metadata": self.metadata,
            "arrays_file": arrays_file,
            "arrays_sha256": hashlib.sha256(data).hexdigest(),
        }
        return data, meta

    @staticmethod
    def load(path: str | os.PathLike) -> RunSet:
        """Reads a run set written by ``save``.

        Raises:
          ValueError: naming the file and the problem: not a run set, another format version,
            ``meta.json`` not UTF-8 / not JSON / not an object / missing keys,
            ``arrays.npz`` truncated, garbled, holding object arrays, missing arrays or
            arrays of the wrong dtype or shape, or contents that fail ``RunSet``'s checks.
        """
        path = fileio.resolve_directory(path)
        meta_file = path / "meta.json"
        if not path.is_dir():
            raise ValueError(f"no run set at {path}: not a directory")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"permission denied reading the run set folder {path}")
        meta = fileio.read_json(meta_file, what="run set metadata")
        fileio.check_format(
            meta_file, meta, name=FORMAT_NAME, version=FORMAT_VERSION, what="run set"
        )
        fileio.check_keys(
            meta_file, meta, required=["num_train"],
            types={"num_train": int, "metadata": dict, "arrays_file": str, "arrays_sha256": str},
            what="run set metadata",
        )  # fmt: skip
        name = meta.get("arrays_file", ARRAYS_FILE)
        if not _ARRAYS_NAME.match(name):
            raise ValueError(f"{meta_file}: bad arrays file name {name!r}; the file is damaged")
        arrays_file = path / name
        arrays = fileio.read_npz(
            arrays_file,
            {
                "batches": fileio.ArraySpec("iu", ("R", "T", "B")),
                "losses": fileio.ArraySpec("f", ("R", None, "M")),
                "train_ids": fileio.ArraySpec("iuU", ("N",)),
                "test_ids": fileio.ArraySpec("iuU", ("M",)),
                "learning_rates": fileio.ArraySpec("iuf", ("R", "T"), optional=True),
            },
            {"N": meta["num_train"]},
            what="run set arrays file",
        )
        if "arrays_sha256" in meta:
            data = fileio.read_bytes(arrays_file, what="run set arrays file")
            if hashlib.sha256(data).hexdigest() != meta["arrays_sha256"]:
                raise ValueError(
                    f"{arrays_file} does not match {meta_file} (their SHA-256 differ): the two "
                    "files come from different saves or the arrays were changed since"
                )
        try:
            return RunSet(
                batches=arrays["batches"],
                losses=arrays["losses"],
                num_train=meta["num_train"],
                train_ids=arrays["train_ids"],
                test_ids=arrays["test_ids"],
                metadata=meta.get("metadata", {}),
                learning_rates=arrays.get("learning_rates"),
            )
        except ValueError as err:
            raise ValueError(f"{arrays_file}: {err}") from None
