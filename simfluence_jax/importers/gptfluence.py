"""GPTfluence's run directories, read into a ``RunSet`` (:func:`read_gptfluence`).

One directory per run holds

- ``train_samples_id.json``: one JSON object a line, ``{"step": t, "samples_id": [ids]}``,
  the batch of training step t (optionally with ``"learning_rate": eta_t``);
- ``all_loss_trajectory.out``: one JSON object a line per test example,
  ``{"id": j, "loss_trajectory": [{"step": s, "loss": x}, ...]}``.

GPTfluence's published runs log losses from step 1 (the first batch has already been taken),
so there L_0 is the step-1 loss and the curriculum starts at step 2; runs that log the losses
of the starting model at step 0 keep every batch (the convention of
:mod:`simfluence_jax.importers`).

:func:`~simfluence_jax.importers.gptfluence_writer.write_gptfluence` also writes
``simfluence_manifest.json`` beside the run directories: what they cannot hold (the pool with
its unused ids, the order of the test ids, the batch width, the metadata), so that reading
them back is exact; :func:`read_manifest` reads it.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import fileio
from simfluence_jax.importers.assemble import RawRun, assemble, check_id_kind, id_list
from simfluence_jax.importers.checks import (
    Id,
    check_batch_line,
    check_consecutive,
    check_id,
    check_number,
    check_step,
    file_error,
    first_line_after,
)
from simfluence_jax.importers.readers import get_key, json_lines, require_file
from simfluence_jax.importers.registry import Importer, Input
from simfluence_jax.runs import PER_RUN_KEYS, RunSet

GPTFLUENCE_BATCHES = "train_samples_id.json"
GPTFLUENCE_LOSSES = "all_loss_trajectory.out"
#: What :func:`write_gptfluence` writes beside the runs: the pool, test ids, B, metadata.
GPTFLUENCE_MANIFEST = "simfluence_manifest.json"
MANIFEST_FORMAT = "simfluence_jax.gptfluence"
MANIFEST_VERSION = 1


def _read_trajectories(path: Path) -> tuple[int, list[Id], np.ndarray, dict[Id, int]]:
    """``(first step, test ids, float64[T+1, M] losses, line of each test id)``."""
    ids: list[Id] = []
    lines: dict[Id, int] = {}
    columns: list[list[float]] = []
    span = None  # (first step, last step, line)
    for n, obj in json_lines(path):
        tid = check_id(get_key(obj, "id", path, n), path, n, "test id")
        if tid in lines:
            raise file_error(
                path, n, f"test example {tid!r} appears twice (also on line {lines[tid]})"
            )
        trajectory = get_key(obj, "loss_trajectory", path, n)
        if not isinstance(trajectory, list) or not trajectory:
            raise file_error(
                path, n, f"loss_trajectory of test example {tid!r} is empty or not a list"
            )
        by_step: dict[int, float] = {}
        for point in trajectory:
            if not isinstance(point, dict):
                raise file_error(path, n, f"loss_trajectory entry {point!r} is not an object")
            step = check_step(get_key(point, "step", path, n), path, n)
            if step in by_step:
                raise file_error(path, n, f"test example {tid!r}: step {step} appears twice")
            by_step[step] = check_number(
                get_key(point, "loss", path, n),
                path,
                n,
                f"the loss of test example {tid!r} at step {step}",
            )
        steps = sorted(by_step)
        check_consecutive(steps, dict.fromkeys(steps, n), path, f"test example {tid!r}")
        if span is None:
            span = (steps[0], steps[-1], n)
        elif (steps[0], steps[-1]) != span[:2]:
            raise file_error(
                path,
                n,
                f"test example {tid!r} has losses at steps {steps[0]}..{steps[-1]} but "
                f"the one on line {span[2]} has steps {span[0]}..{span[1]}",
            )
        if len(steps) < 2:
            raise file_error(
                path,
                n,
                f"test example {tid!r} has a loss at one step only; a run "
                "needs L_0 and at least one step after it",
            )
        ids.append(tid)
        lines[tid] = n
        columns.append([by_step[s] for s in steps])
    if span is None:
        raise file_error(path, None, "no test examples (the file is empty)")
    return span[0], ids, np.asarray(columns, np.float64).T, lines


def _read_batches(path: Path, first_step: int, last_step: int):
    """Batches of steps ``first_step+1 .. last_step``: ``(batches, lines, learning rates)``."""
    found: dict[int, tuple[int, list[Id], float | None]] = {}
    with_lr: tuple[bool, int] | None = None
    for n, obj in json_lines(path):
        step, ids, lr, with_lr = check_batch_line(
            get_key(obj, "step", path, n), get_key(obj, "samples_id", path, n),
            obj.get("learning_rate"), "learning_rate" in obj, path, n, with_lr, "lines",
        )  # fmt: skip
        if step in found:
            raise file_error(path, n, f"step {step} appears twice (also on line {found[step][0]})")
        if step <= first_step:
            found[step] = (n, ids, lr)  # before L_0: ignored
            continue
        if step > last_step:
            raise file_error(
                path,
                n,
                f"step {step} has a batch but the loss trajectories end at step "
                f"{last_step}; is {GPTFLUENCE_LOSSES} truncated?",
            )
        if not ids:
            raise file_error(path, n, f"step {step} has an empty batch")
        found[step] = (n, ids, lr)
    if not found:
        raise file_error(path, None, "no batches (the file is empty)")
    lines = {s: v[0] for s, v in found.items()}
    for step in range(first_step + 1, last_step + 1):
        if step not in found:
            after = first_line_after(lines, step)
            where = (
                f"the batches jump to step {min(s for s in found if s > step)}"
                if after is not None
                else f"the batches end at step {max(found)} but the losses go on to {last_step}"
            )
            raise file_error(path, after, f"step {step} is missing ({where})")
    steps = range(first_step + 1, last_step + 1)
    batches = [found[s][1] for s in steps]
    rates = [found[s][2] for s in steps] if with_lr and with_lr[0] else None
    return batches, [found[s][0] for s in steps], rates


def _read_gptfluence_run(run_dir: Path) -> RawRun:
    if not run_dir.is_dir():
        raise file_error(
            run_dir,
            None,
            f"not a directory (a GPTfluence run directory holds "
            f"{GPTFLUENCE_BATCHES} and {GPTFLUENCE_LOSSES})",
        )
    losses_file = require_file(run_dir / GPTFLUENCE_LOSSES, "the run's loss trajectories")
    batches_file = require_file(run_dir / GPTFLUENCE_BATCHES, "the run's batches")
    first, test_ids, losses, _ = _read_trajectories(losses_file)
    last = first + losses.shape[0] - 1
    batches, lines, rates = _read_batches(batches_file, first, last)
    return RawRun(
        name=str(run_dir),
        losses_file=losses_file,
        batches_file=batches_file,
        test_ids=test_ids,
        losses=losses,
        batches=batches,
        batch_lines=lines,
        learning_rates=rates,
        first_step=first,
    )


def read_gptfluence(
    run_dirs: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    pad: bool = False,
    train_ids: Sequence[Id] | np.ndarray | None = None,
    test_ids: Sequence[Id] | np.ndarray | None = None,
    batch_size: int | None = None,
) -> RunSet:
    """Reads GPTfluence run directories (one per run, in the order given) into a ``RunSet``.

    Args:
      run_dirs: run directories, each holding ``train_samples_id.json`` and
        ``all_loss_trajectory.out`` (see the module docstring), or parent directories or
        glob patterns, expanded by :func:`find_run_dirs`.
      pad: accept runs of different lengths by cutting all of them to the shortest.
      train_ids: the pool of training ids; batch entries become positions in it. Defaults
        to the sorted distinct ids the runs use.
      test_ids: the test examples in the order to keep (exactly those logged). Defaults to
        the order of the first run's file.
      batch_size: the batch width B (at least the widest batch). Defaults to the widest.

    Run directories written by :func:`write_gptfluence` into one folder are read back
    exactly: its manifest gives the pool (unused ids included), the order of the test ids,
    the batch width and the metadata, unless ``train_ids`` is given. Other directories are
    read as their files say. Ids are compared as the JSON files hold them (``1`` and ``"1"``
    are different kinds, an error). The same directory given twice, or reached twice through
    a symbolic link, is an error.

    Returns:
      A validated ``RunSet``; ``metadata`` holds ``source``, ``runs`` (the directories) and
      ``first_step`` (0 or 1 for the two variants).

    Raises:
      ValueError: ``FILE:LINE: problem`` for every malformed input.
    """
    if isinstance(run_dirs, str | os.PathLike):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no run directories given")
    found = find_run_dirs(run_dirs)
    _check_distinct(found)
    runs = [_read_gptfluence_run(d) for d in found]
    manifest = _manifest_for(found) if train_ids is None else None
    metadata = None
    if manifest is not None:
        train_ids = manifest["train_ids"]
        test_ids = manifest["test_ids"] if test_ids is None else test_ids
        batch_size = manifest["batch_size"] if batch_size is None else batch_size
        metadata = dict(manifest.get("metadata", {}))
        index = [manifest["runs"].index(d.name) for d in found]
        for key in PER_RUN_KEYS:
            values = metadata.get(key)
            if isinstance(values, list) and len(values) == len(manifest["runs"]):
                metadata[key] = [values[k] for k in index]
    return assemble(
        runs, pad=pad, train_ids=train_ids, test_ids=test_ids, batch_size=batch_size,
        source="gptfluence", metadata=metadata,
    )  # fmt: skip


def _check_distinct(run_dirs: Sequence[Path]) -> None:
    """Raises if two of ``run_dirs`` are one directory (after resolving symbolic links)."""
    first: dict[str, Path] = {}
    for run_dir in run_dirs:
        real = os.path.realpath(run_dir)
        if real in first:
            how = "given twice" if run_dir == first[real] else f"reached twice ({real})"
            raise file_error(run_dir, None, f"the same run directory as {first[real]}, {how}; "
                         "each run is read once")  # fmt: skip
        first[real] = run_dir


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _is_gptfluence_run(path: Path) -> bool:
    """Holds either file of a run (the reader names the other one if it is missing)."""
    return (path / GPTFLUENCE_BATCHES).is_file() or (path / GPTFLUENCE_LOSSES).is_file()


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expands run directories for :func:`read_gptfluence`: each path is a run directory, a
    parent directory (its run subdirectories in natural order: ``seed-2`` before
    ``seed-10``) or a glob pattern (its matches in natural order)."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists() and glob.has_magic(str(item)):
            matches = sorted((Path(p) for p in glob.glob(str(item))), key=_natural_key)
            runs = [p for p in matches if _is_gptfluence_run(p)]
            if not runs:
                raise ValueError(f"{item}: the pattern matches no GPTfluence run directory")
            found.extend(runs)
        elif path.is_dir() and not _is_gptfluence_run(path):
            runs = sorted((p for p in path.iterdir() if _is_gptfluence_run(p)), key=_natural_key)
            if not runs:
                raise ValueError(
                    f"{path}: neither a GPTfluence run directory ({GPTFLUENCE_BATCHES} and "
                    f"{GPTFLUENCE_LOSSES}) nor a directory of them"
                )
            found.extend(runs)
        else:
            found.append(path)  # a run directory, or an error reported by the reader
    if not found:
        raise ValueError("no run directories given")
    return found


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a folder written by :func:`write_gptfluence`, checked."""
    what = "GPTfluence manifest"
    meta = fileio.read_json(path, what=what)
    fileio.check_format(path, meta, name=MANIFEST_FORMAT, version=MANIFEST_VERSION, what=what)
    fileio.check_keys(
        path, meta, what=what, required=["runs", "train_ids", "test_ids", "batch_size"],
        types={"runs": list, "train_ids": list, "test_ids": list, "batch_size": int,
               "metadata": dict},
    )  # fmt: skip
    if not all(isinstance(name, str) and name for name in meta["runs"]):
        raise ValueError(f"{path}: the runs of the {what} must be folder names")
    for key in ("runs", "train_ids", "test_ids"):
        values = meta[key]
        if not values or not all(isinstance(i, int | str) and not isinstance(i, bool)
                                 for i in values):  # fmt: skip
            raise ValueError(f"{path}: {key} of the {what} must be integers or strings")
        check_id_kind(values, path, key)
        try:
            id_list(values, key)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    if meta["batch_size"] < 1:
        raise ValueError(f"{path}: batch_size of the {what} is {meta['batch_size']}, not >= 1")
    return meta


def _manifest_for(run_dirs: Sequence[Path]) -> dict[str, Any] | None:
    """The manifest that describes ``run_dirs``, if they were written by
    :func:`write_gptfluence` into one folder; ``None`` if none of them was."""
    holders = {d: d.parent / GPTFLUENCE_MANIFEST for d in run_dirs}
    written = [d for d, m in holders.items() if m.is_file()]
    if not written:
        return None
    first = holders[written[0]]
    for d in run_dirs:
        if holders[d] != first:
            raise file_error(d, None, f"the run is not in the folder of {first} (written by "
                         "write_gptfluence) but is read with its runs; read the folders "
                         "apart, or give the pool (train_ids=, --train_ids)")  # fmt: skip
    manifest = read_manifest(first)
    for d in run_dirs:
        if d.name not in manifest["runs"]:
            raise file_error(first, None, f"the manifest does not list the run {d}; it was not "
                         "written by write_gptfluence (give the pool: train_ids=, "
                         "--train_ids)")  # fmt: skip
    return manifest


EXTENSIONS = {
    "importer": {
        "gptfluence": Importer(
            read=read_gptfluence,
            help="GPTfluence run directories (train_samples_id.json, all_loss_trajectory.out)",
            inputs=(
                Input("run_dirs", "run directories, a folder of them, a glob", nargs="+",
                      metavar="RUN_DIR"),
            ),
        ),
    },
}  # fmt: skip
