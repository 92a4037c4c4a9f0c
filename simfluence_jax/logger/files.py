"""The files of a run log (layout: :mod:`simfluence_jax.logger`): durable writes, the steps
file, checks of logged values, a complete run read back, and the run set assembled and saved
next to the logs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.importers import common_length
from simfluence_jax.runs import RunSet

FORMAT_NAME = "simfluence_jax.RunLogger"
FORMAT_VERSION = 1


def atomic_json(path: Path, obj: Any) -> None:
    fileio.atomic_write(path, json.dumps(obj, indent=1).encode())


def read_steps(path: Path, *, repair: bool) -> list[dict]:
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


def check_losses(values, num_test: int, what: str) -> np.ndarray:
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


def check_rate(value, what: str) -> float:
    rate = float(value)
    if not np.isfinite(rate) or rate < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {rate}")
    return rate


def load_run(run_dir: Path) -> tuple[np.ndarray, list[list[int]], list | None]:
    """``(losses float32[T+1, M], batches, learning rates or None)`` of a complete run,
    checked against its completion marker."""
    done = fileio.read_json(
        run_dir / "COMPLETE", what="run completion marker", required=["steps", "sha256"],
        types={"steps": int, "sha256": str},
    )  # fmt: skip
    steps_file = run_dir / "steps.jsonl"
    if fileio.sha256_file(steps_file) != done["sha256"]:
        raise ValueError(
            f"{steps_file} does not match its completion checksum (modified "
            "or damaged after the run ended)"
        )
    steps = read_steps(steps_file, repair=False)
    if len(steps) != done["steps"]:
        raise ValueError(f"{steps_file} has {len(steps)} steps, its marker {done['steps']}")
    start = fileio.read_json(run_dir / "start.json", what="run start record", required=["L0"])
    losses = np.asarray([start["L0"]] + [s["losses"] for s in steps], np.float32)
    rates = [s.get("learning_rate") for s in steps]
    return losses, [s["batch"] for s in steps], None if rates[0] is None else rates


def assemble(loaded: list, *, pad: bool, num_train, train_ids, test_ids, metadata: dict) -> RunSet:
    """The ``RunSet`` of the complete runs as :func:`load_run` read them, in run order, cut to
    the shortest with ``pad`` (``metadata["logged_steps"]`` then records the lengths)."""
    num_runs = len(loaded)
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
    metadata = dict(metadata)
    metadata.update(source="RunLogger", runs=list(range(num_runs)))
    if any(len(b) != T for _, b, _ in loaded):
        metadata["logged_steps"] = [len(b) for _, b, _ in loaded]
    return RunSet(
        batches=batches,
        losses=np.stack([losses[: T + 1] for losses, _, _ in loaded]),
        num_train=num_train,
        train_ids=train_ids,
        test_ids=test_ids,
        metadata=metadata,
        learning_rates=learning_rates,
    )


def save_runset(path: Path, runs: RunSet) -> None:
    """Writes the run set into the log folder ``path``: the arrays under a new name, then
    ``meta.json`` (naming them) in one rename, then removes the arrays files it replaced."""
    data, _ = runs.encode()
    name = f"arrays.{hashlib.sha256(data).hexdigest()[:16]}.npz"
    data, meta = runs.encode(name)
    fileio.atomic_write(path / name, data)
    fileio.atomic_write(path / "meta.json", fileio.json_bytes(meta))
    for old in path.glob("arrays*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)
    fileio.fsync_dir(path)


def remove_temporaries(folder: Path) -> None:
    """Removes what interrupted writes left in ``folder``: ``fileio`` temporaries (``.NAME.new.*``
    of ``end_run`` and ``close``) and the ``.runset.*`` folders of earlier versions' close."""
    for entry in folder.iterdir():
        if fileio.is_temporary(entry.name) or (
            entry.name.startswith(".runset.") and entry.is_dir()
        ):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
