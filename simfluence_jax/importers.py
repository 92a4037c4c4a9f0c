"""Runs logged by other frameworks, read into a validated :class:`~simfluence_jax.runs.RunSet`.

Two formats:

* **GPTfluence's run directories** (:func:`read_gptfluence`, written by
  :func:`write_gptfluence`), one directory per run holding

  - ``train_samples_id.json``: one JSON object a line, ``{"step": t, "samples_id": [ids]}``,
    the batch of training step t (optionally with ``"learning_rate": eta_t``);
  - ``all_loss_trajectory.out``: one JSON object a line per test example,
    ``{"id": j, "loss_trajectory": [{"step": s, "loss": x}, ...]}``.

  :func:`write_gptfluence` also writes ``simfluence_manifest.json`` beside the run
  directories: what they cannot hold (the pool with its unused ids, the order of the test
  ids, the batch width, the metadata), so that reading them back is exact.

* **Long form** (:func:`read_long`), CSV (with a header row) or JSON lines:

  - losses: one row per (run, step, test example), columns ``run, step, test_id, loss``;
  - curricula: one row per (run, step), columns ``run, step, train_ids`` (and optionally
    ``learning_rate``); ``train_ids`` is a JSON list or a ``;``-joined string.

Both follow one convention: a run's losses are logged at consecutive steps s0, s0+1, ...,
s0+T; the losses at the first logged step s0 are L_0, and the batch of step t moves the loss
from step t-1 to step t, so the curriculum is the batches of steps s0+1 .. s0+T. GPTfluence's
published runs log losses from step 1 (the first batch has already been taken), so there
L_0 is the step-1 loss and the curriculum starts at step 2; runs that log the losses of
the starting model at step 0 keep every batch. Batches logged at steps up to s0 are
ignored (no logged loss precedes them).

Ids may be integers or strings, and are never guessed: they are compared as the files
spell them (JSON keeps its types; text ids, as CSV holds them, become integers only when
every id of the file is a canonical integer such as ``7``, not ``07``, ``+7`` or `` 7``), and
two spellings of one integer (``1`` and ``01``) are an error naming both. Training ids become
positions in ``train_ids``: the sorted distinct ids of all runs, or the ``train_ids`` you pass
(``train_ids=range(200)`` keeps integer ids 0..199 as they are). Test examples keep the order
of their first appearance, or the order of the ``test_ids`` you pass; every run must log the
same test examples. Batches of different sizes are padded with -1 to the widest batch, or to
the ``batch_size`` you pass.

Every malformed input raises a ``ValueError`` that starts ``FILE:LINE:`` (or ``FILE:`` when
the problem is something missing) and names the problem: a missing file, a line that is not
valid JSON (a truncated file), a step missing from the middle of a run or given twice, a
test example missing in one run, an id given twice, NaN or infinite losses or ones beyond
float32's range, empty batches, one run directory given twice (also through a symbolic
link), and runs of different lengths unless ``pad=True``. Files may start with a UTF-8
byte-order mark; CSV fields may be of any length.

``pad=True`` accepts runs of different lengths by cutting every run to the shortest one
(the later steps of longer runs are dropped, and ``metadata["logged_steps"]`` records the
original lengths). The time axis cannot be padded instead: a run set holds no empty steps,
because under alpha = sum A_i an empty batch would read as the loss collapsing to zero.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simfluence_jax import io as sio
from simfluence_jax.runs import PER_RUN_KEYS, RunSet

GPTFLUENCE_BATCHES = "train_samples_id.json"
GPTFLUENCE_LOSSES = "all_loss_trajectory.out"
#: What :func:`write_gptfluence` writes beside the runs: the pool, test ids, B, metadata.
GPTFLUENCE_MANIFEST = "simfluence_manifest.json"
MANIFEST_FORMAT = "simfluence_jax.gptfluence"
MANIFEST_VERSION = 1
LOSS_COLUMNS = ("run", "step", "test_id", "loss")
CURRICULUM_COLUMNS = ("run", "step", "train_ids")

Id = int | str


def _error(path: Path | str, line: int | None, problem: str) -> ValueError:
    where = f"{path}:{line}" if line is not None else str(path)
    return ValueError(f"{where}: {problem}")


@dataclasses.dataclass
class _Run:
    """One run as read from disk, before ids are mapped (see :func:`_assemble`)."""

    name: str
    losses_file: Path
    batches_file: Path
    test_ids: list[Id]  # in column order of ``losses``
    losses: np.ndarray  # float64[T+1, M]
    batches: list[list[Id]]  # T batches of raw training ids
    batch_lines: list[int]  # the line of each batch in ``batches_file``
    learning_rates: list[float] | None
    first_step: int

    @property
    def num_steps(self) -> int:
        return len(self.batches)


# ---------------------------------------------------------------------------------------------
# Checks of single values.


def _check_id(value: Any, path: Path, line: int, what: str) -> Id:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _error(path, line, f"{what} {value!r} is not an integer or a string")
    return value


def _check_step(value: Any, path: Path, line: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(path, line, f"step {value!r} is not an integer")
    if value < 0:
        raise _error(path, line, f"step {value} is negative")
    return value


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_number(value: Any, path: Path, line: int, what: str) -> float:
    """A finite number that float32 holds (losses and learning rates are stored as float32)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _error(path, line, f"{what} {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(path, line, f"{what} {value!r} is not a number")
    if not math.isfinite(value):
        raise _error(path, line, f"{what} is {value} (NaN or infinite)")
    if abs(value) > _FLOAT32_MAX:
        raise _error(path, line, f"{what} is {value}, beyond float32's range (|x| <= 3.4e38)")
    return float(value)


def _same_lr_presence(first, has_lr: bool, path, n: int, what: str) -> tuple[bool, int]:
    """``(has_lr, line)`` of the first line; a ``ValueError`` if line ``n`` differs from it."""
    if first is None:
        return (has_lr, n)
    if has_lr != first[0]:
        raise _error(
            path, n, f"learning_rate is given on some {what} and not on others (line "
            f"{first[1]} {'has' if first[0] else 'lacks'} it)",
        )  # fmt: skip
    return first


def _check_learning_rate(value: Any, path: Path, line: int) -> float:
    lr = _check_number(value, path, line, "learning_rate")
    if lr < 0:
        raise _error(path, line, f"learning_rate {lr} is negative")
    return lr


def _split_ids(value: Any, path: Path, line: int) -> list[Id]:
    """A batch: a JSON list of ids, or a string of ids joined by ``;`` (or a JSON list)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise _error(
                    path, line, f"train_ids {text!r} is not a JSON list ({e.msg})"
                ) from None
        else:
            value = [x.strip() for x in text.split(";") if x.strip()]
    if not isinstance(value, list):
        raise _error(path, line, f"train_ids must be a list or a ';'-joined string, got {value!r}")
    return [_check_id(x, path, line, "training id") for x in value]


def _first_line_after(lines_by_step: dict[int, int], step: int) -> int | None:
    later = [s for s in lines_by_step if s > step]
    return lines_by_step[min(later)] if later else None


def _check_consecutive(steps: Sequence[int], lines: dict[int, int], path: Path, what: str):
    """Raises unless ``steps`` (sorted, distinct) are consecutive, naming the first gap."""
    for prev, nxt in zip(steps[:-1], steps[1:]):
        if nxt != prev + 1:
            raise _error(
                path,
                lines.get(nxt),
                f"{what}: step {prev + 1} is missing (the steps jump from {prev} to {nxt})",
            )


# ---------------------------------------------------------------------------------------------
# Reading files.


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise _error(path, None, f"file not found ({what})")
    return path


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise _error(
                        path, n, f"not valid JSON ({e.msg} at column {e.colno}); truncated line?"
                    ) from None
                if not isinstance(obj, dict):
                    raise _error(path, n, f"expected a JSON object, got {type(obj).__name__}")
                yield n, obj
    except UnicodeDecodeError as e:
        raise _error(path, None, f"not UTF-8 text ({e.reason})") from None


def _get(obj: dict, key: str, path: Path, line: int) -> Any:
    if key not in obj:
        raise _error(path, line, f"missing key {key!r} (have {sorted(obj)})")
    return obj[key]


def _is_jsonl(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return True
    if suffix in (".csv", ".tsv"):
        return False
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for text in f:
            if text.strip():
                return text.lstrip().startswith("{")
    return False


def _table_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a CSV/TSV file with a header row, or of a JSON-lines file;
    every row has ``columns`` (optional ones may be absent)."""
    if _is_jsonl(path):
        for n, obj in _json_lines(path):
            for key in columns:
                _get(obj, key, path, n)
            yield n, obj
        return
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        # A cut CSV row can still parse (``1.2345`` cut to ``1.2``): refuse the ambiguity.
        raise _error(
            path,
            data.count(b"\n") + 1,
            "the last line does not end with a "
            "newline; truncated line? (end the file with a newline if it is complete)",
        )
    # No field is longer than the file (a 200k-id batch exceeds csv's default 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), len(data) + 1))
    reader = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise _error(
                    path,
                    1,
                    f"the header row lacks columns {missing} (it has {header}); "
                    f"expected {list(columns)}",
                )
            reader.fieldnames = header
            for row in reader:
                if None in row or any(row[c] is None for c in columns):
                    raise _error(
                        path, reader.line_num, f"expected {len(header)} fields; truncated line?"
                    )
                if all(not (v or "").strip() for v in row.values()):
                    continue
                yield reader.line_num, {k: v.strip() for k, v in row.items()}
    except UnicodeDecodeError as e:
        raise _error(path, None, f"not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        line = reader.line_num if reader is not None and reader.line_num else None
        raise _error(path, line, f"not a valid CSV row ({e})") from None


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_CANONICAL = re.compile(r"0|-?[1-9][0-9]*")


def _settle_ids(
    where: dict[Id, tuple[Path, int]], what: str, *, kind: type | None = None
) -> dict[Id, Id]:
    """Maps every id as spelled in a file to the id kept.

    Ids are compared as the file spells them. Strings become integers only when every id is
    a canonical integer (``7``, not ``07``, ``+7`` or `` 7``), or, when ``kind`` is given (the
    kind of a pool passed in), only if ``kind`` is ``int``.

    Args:
      where: every distinct id as read (``str`` from text, ``int`` from JSON), with the file
        and line of its first appearance.
      what: ``"test id"`` or ``"training id"``, for messages.
      kind: the kind of the ids they are compared with, if given.

    Raises:
      ValueError: ``FILE:LINE:`` for integers mixed with strings, or two spellings of one
        integer (``1`` and ``01``), naming both and their lines.
    """
    ints = [i for i in where if isinstance(i, int)]
    strs = [i for i in where if isinstance(i, str)]
    if ints and strs:
        path, line = where[strs[0]]
        other = where[ints[0]]
        raise _error(path, line, f"{what}s mix integers and strings ({strs[0]!r} here, "
                     f"{ints[0]!r} at {other[0]}:{other[1]}); use one kind")  # fmt: skip
    by_value: dict[int, str] = {}
    for spelled in strs:
        if not _INTEGER.fullmatch(spelled):
            continue
        first = by_value.setdefault(int(spelled), spelled)
        if first != spelled:
            path, line = where[spelled]
            other = where[first]
            raise _error(path, line, f"{what} {spelled!r} and {what} {first!r} (at "
                         f"{other[0]}:{other[1]}) spell the same integer; spell every id "
                         "one way")  # fmt: skip
    canonical = strs and all(_CANONICAL.fullmatch(i) for i in strs)
    if canonical and kind in (None, int):
        return {i: int(i) for i in strs}
    return {i: i for i in where}


# ---------------------------------------------------------------------------------------------
# GPTfluence run directories.


def _read_trajectories(path: Path) -> tuple[int, list[Id], np.ndarray, dict[Id, int]]:
    """``(first step, test ids, float64[T+1, M] losses, line of each test id)``."""
    ids: list[Id] = []
    lines: dict[Id, int] = {}
    columns: list[list[float]] = []
    span = None  # (first step, last step, line)
    for n, obj in _json_lines(path):
        tid = _check_id(_get(obj, "id", path, n), path, n, "test id")
        if tid in lines:
            raise _error(path, n, f"test example {tid!r} appears twice (also on line {lines[tid]})")
        trajectory = _get(obj, "loss_trajectory", path, n)
        if not isinstance(trajectory, list) or not trajectory:
            raise _error(path, n, f"loss_trajectory of test example {tid!r} is empty or not a list")
        by_step: dict[int, float] = {}
        for point in trajectory:
            if not isinstance(point, dict):
                raise _error(path, n, f"loss_trajectory entry {point!r} is not an object")
            step = _check_step(_get(point, "step", path, n), path, n)
            if step in by_step:
                raise _error(path, n, f"test example {tid!r}: step {step} appears twice")
            by_step[step] = _check_number(
                _get(point, "loss", path, n),
                path,
                n,
                f"the loss of test example {tid!r} at step {step}",
            )
        steps = sorted(by_step)
        _check_consecutive(steps, dict.fromkeys(steps, n), path, f"test example {tid!r}")
        if span is None:
            span = (steps[0], steps[-1], n)
        elif (steps[0], steps[-1]) != span[:2]:
            raise _error(
                path,
                n,
                f"test example {tid!r} has losses at steps {steps[0]}..{steps[-1]} but "
                f"the one on line {span[2]} has steps {span[0]}..{span[1]}",
            )
        if len(steps) < 2:
            raise _error(
                path,
                n,
                f"test example {tid!r} has a loss at one step only; a run "
                "needs L_0 and at least one step after it",
            )
        ids.append(tid)
        lines[tid] = n
        columns.append([by_step[s] for s in steps])
    if span is None:
        raise _error(path, None, "no test examples (the file is empty)")
    return span[0], ids, np.asarray(columns, np.float64).T, lines


def _read_batches(path: Path, first_step: int, last_step: int):
    """Batches of steps ``first_step+1 .. last_step``: ``(batches, lines, learning rates)``."""
    found: dict[int, tuple[int, list[Id], float | None]] = {}
    with_lr: tuple[bool, int] | None = None
    for n, obj in _json_lines(path):
        step = _check_step(_get(obj, "step", path, n), path, n)
        if step in found:
            raise _error(path, n, f"step {step} appears twice (also on line {found[step][0]})")
        ids = _split_ids(_get(obj, "samples_id", path, n), path, n)
        has_lr = "learning_rate" in obj
        with_lr = _same_lr_presence(with_lr, has_lr, path, n, "lines")
        lr = _check_learning_rate(obj["learning_rate"], path, n) if has_lr else None
        if step <= first_step:
            found[step] = (n, ids, lr)  # before L_0: ignored
            continue
        if step > last_step:
            raise _error(
                path,
                n,
                f"step {step} has a batch but the loss trajectories end at step "
                f"{last_step}; is {GPTFLUENCE_LOSSES} truncated?",
            )
        if not ids:
            raise _error(path, n, f"step {step} has an empty batch")
        found[step] = (n, ids, lr)
    if not found:
        raise _error(path, None, "no batches (the file is empty)")
    lines = {s: v[0] for s, v in found.items()}
    for step in range(first_step + 1, last_step + 1):
        if step not in found:
            after = _first_line_after(lines, step)
            where = (
                f"the batches jump to step {min(s for s in found if s > step)}"
                if after is not None
                else f"the batches end at step {max(found)} but the losses go on to {last_step}"
            )
            raise _error(path, after, f"step {step} is missing ({where})")
    steps = range(first_step + 1, last_step + 1)
    batches = [found[s][1] for s in steps]
    rates = [found[s][2] for s in steps] if with_lr and with_lr[0] else None
    return batches, [found[s][0] for s in steps], rates


def _read_gptfluence_run(run_dir: Path) -> _Run:
    if not run_dir.is_dir():
        raise _error(
            run_dir,
            None,
            f"not a directory (a GPTfluence run directory holds "
            f"{GPTFLUENCE_BATCHES} and {GPTFLUENCE_LOSSES})",
        )
    losses_file = _require_file(run_dir / GPTFLUENCE_LOSSES, "the run's loss trajectories")
    batches_file = _require_file(run_dir / GPTFLUENCE_BATCHES, "the run's batches")
    first, test_ids, losses, _ = _read_trajectories(losses_file)
    last = first + losses.shape[0] - 1
    batches, lines, rates = _read_batches(batches_file, first, last)
    return _Run(
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
    return _assemble(
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
            raise _error(run_dir, None, f"the same run directory as {first[real]}, {how}; "
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


def write_gptfluence(
    runs: RunSet, out_dir: str | os.PathLike, *, first_step: int = 0, overwrite: bool = False
) -> list[Path]:
    """Writes a ``RunSet`` as GPTfluence run directories ``out_dir/run_000``, ..., and a
    manifest ``out_dir/simfluence_manifest.json`` that lets :func:`read_gptfluence` give
    back exactly this run set.

    Ids are written by name (``train_ids[i]``, ``test_ids[j]``), padding is dropped, losses
    are written as exact decimal forms of their float32 values, and the learning rates, when
    the run set has them, go to ``train_samples_id.json`` as ``learning_rate``. The manifest
    holds what the run directories cannot: the pool (``train_ids`` in order, unused ones
    included), the ``test_ids`` in order, the batch width B and the metadata.

    The folder is written whole into a temporary sibling and swapped in
    (:func:`simfluence_jax.io.replace_directory`); files follow the umask.

    Args:
      runs: the run set (its ``train_ids`` and ``test_ids`` distinct).
      out_dir: the folder (created); it must be new or empty, or, with ``overwrite``,
        hold only what this function wrote there before.
      first_step: the step at which L_0 is logged: 0 (the losses of the starting model), or
        1 as GPTfluence's published runs (L_0 is then the loss after step 1 and the
        curriculum starts at step 2; no batch is written for step 1).
      overwrite: replace a folder this function wrote. A folder holding anything else (no
        manifest, or a file the manifest does not list) is never replaced.

    Returns:
      The run directories, in run order.

    Raises:
      ValueError: the folder is not empty (without ``overwrite``) or holds files this
        function did not write, or ids of the run set repeat.
    """
    if first_step < 0:
        raise ValueError(f"first_step must be >= 0, got {first_step}")
    out = Path(out_dir)
    train_ids = _id_list(runs.train_ids, "the run set's train_ids")
    test_ids = _id_list(runs.test_ids, "the run set's test_ids")
    _check_replaceable(out, overwrite=overwrite)
    width = max(3, len(str(runs.num_runs - 1)))
    names = [f"run_{r:0{width}d}" for r in range(runs.num_runs)]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "runs": names,
        "train_ids": train_ids,
        "test_ids": test_ids,
        "batch_size": runs.batch_size,
        "first_step": first_step,
        "metadata": runs.metadata,
    }
    steps = range(first_step, first_step + runs.num_steps + 1)
    with sio.replace_directory(out) as tmp:
        for r, name in enumerate(names):
            lines = []
            for t in range(runs.num_steps):
                entry: dict[str, Any] = {
                    "step": first_step + t + 1,
                    "samples_id": [train_ids[i] for i in runs.batches[r, t] if i >= 0],
                }
                if runs.learning_rates is not None:
                    entry["learning_rate"] = float(runs.learning_rates[r, t])
                lines.append(json.dumps(entry))
            trajectories = [
                json.dumps({
                    "id": tid,
                    "loss_trajectory": [
                        {"step": s, "loss": float(x)} for s, x in zip(steps, runs.losses[r, :, j])
                    ],
                })
                for j, tid in enumerate(test_ids)
            ]  # fmt: skip
            os.mkdir(tmp / name)  # 0o777 less the umask
            sio.write_files(tmp / name, {
                GPTFLUENCE_BATCHES: "\n".join(lines) + "\n",
                GPTFLUENCE_LOSSES: "\n".join(trajectories) + "\n",
            })  # fmt: skip
        sio.write_files(tmp, {GPTFLUENCE_MANIFEST: sio.json_bytes(manifest)})
    return [out / name for name in names]


def _check_replaceable(out: Path, *, overwrite: bool) -> None:
    """Raises unless ``out`` is new, empty, or (with ``overwrite``) holds only what
    :func:`write_gptfluence` wrote there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest_file = out / GPTFLUENCE_MANIFEST
    if not manifest_file.is_file():
        raise ValueError(
            f"{out} is not empty and was not written by write_gptfluence (it has no "
            f"{GPTFLUENCE_MANIFEST}); nothing is replaced: choose a new or empty folder"
        )
    runs = set(_read_manifest(manifest_file)["runs"])
    run_files = {GPTFLUENCE_BATCHES, GPTFLUENCE_LOSSES}

    def plain(path: Path, names: set[str], is_dir: bool) -> bool:
        kind_ok = path.is_dir() if is_dir else path.is_file()
        return path.name in names and kind_ok and not path.is_symlink()

    for entry in sorted(out.iterdir()):
        if entry.name == GPTFLUENCE_MANIFEST:
            continue
        if not plain(entry, runs, is_dir=True):
            foreign = entry
        else:
            foreign = next((f for f in sorted(entry.iterdir()) if not plain(f, run_files, False)),
                           None)  # fmt: skip
        if foreign is not None:
            raise ValueError(
                f"{out} holds {foreign}, which write_gptfluence did not write; nothing is "
                "replaced: move it out or choose another folder"
            )
    if not overwrite:
        raise ValueError(
            f"{out} already holds runs written by write_gptfluence; pass overwrite=True to "
            "replace them"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a folder written by :func:`write_gptfluence`, checked."""
    what = "GPTfluence manifest"
    meta = sio.read_json(path, what=what)
    sio.check_format(path, meta, name=MANIFEST_FORMAT, version=MANIFEST_VERSION, what=what)
    sio.check_keys(
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
        _id_kind(values, path, key)
        try:
            _id_list(values, key)
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
            raise _error(d, None, f"the run is not in the folder of {first} (written by "
                         "write_gptfluence) but is read with its runs; read the folders "
                         "apart, or give the pool (train_ids=, --train_ids)")  # fmt: skip
    manifest = _read_manifest(first)
    for d in run_dirs:
        if d.name not in manifest["runs"]:
            raise _error(first, None, f"the manifest does not list the run {d}; it was not "
                         "written by write_gptfluence (give the pool: train_ids=, "
                         "--train_ids)")  # fmt: skip
    return manifest


# ---------------------------------------------------------------------------------------------
# Id files: the pool or the test ids, for runs whose files do not carry them.


def read_ids(path: str | os.PathLike) -> list[Id]:
    """Ids from a file, in order: a JSON list (ids keep their JSON types), or one id a line
    (blank lines skipped; integers when every id is a canonical integer, as in
    :func:`read_long`). For ``train_ids=`` and ``test_ids=`` (``--train_ids``, ``--test_ids``).

    Raises:
      ValueError: ``FILE:LINE:`` for an id given twice, two spellings of one integer, a
        value that is not an id, or a file with no ids.
    """
    path = _require_file(Path(path), "ids")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _error(path, None, f"not UTF-8 text ({e.reason})") from None
    if text.lstrip().startswith("["):
        try:
            ids = json.loads(text)
        except json.JSONDecodeError as e:
            raise _error(path, e.lineno, f"not a valid JSON list ({e.msg})") from None
        if not isinstance(ids, list):
            raise _error(path, None, "expected a JSON list of ids")
        ids = [_check_id(i, path, None, "id") for i in ids]
        _id_kind(ids, path, "ids")
        try:
            ids = _id_list(ids, "the list") if ids else ids
        except ValueError as err:
            raise _error(path, None, str(err)) from None
    else:
        where: dict[Id, tuple[Path, int]] = {}
        for n, line in enumerate(text.splitlines(), start=1):
            name = line.strip()
            if not name:
                continue
            if name in where:
                raise _error(path, n, f"id {name!r} appears twice (also on line {where[name][1]})")
            where[name] = (path, n)
        ids = list(_settle_ids(where, "id").values())
    if not ids:
        raise _error(path, None, "no ids (the file is empty)")
    return ids


# ---------------------------------------------------------------------------------------------
# Long form.


def read_long(
    losses_path: str | os.PathLike,
    curricula_path: str | os.PathLike,
    *,
    pad: bool = False,
    train_ids: Sequence[Id] | np.ndarray | None = None,
    test_ids: Sequence[Id] | np.ndarray | None = None,
    batch_size: int | None = None,
) -> RunSet:
    """Reads runs in long form (CSV with a header row, or JSON lines) into a ``RunSet``.

    Args:
      losses_path: rows ``run, step, test_id, loss``, one per run, step and test example.
      curricula_path: rows ``run, step, train_ids`` (a JSON list, or ids joined by ``;``),
        optionally ``learning_rate``; one per run and step.
      pad: accept runs of different lengths by cutting all of them to the shortest.
      train_ids: the pool of training ids; batch entries become positions in it. Defaults
        to the sorted distinct ids the runs use.
      test_ids: the test examples in the order to keep (exactly those logged). Defaults to
        the order of their first appearance.
      batch_size: the batch width B (at least the widest batch). Defaults to the widest.

    Runs keep the order of their first appearance in the losses file and are matched to the
    curricula by name. Ids are compared as the file spells them; text ids become integers
    only when every test id (or every training id) of the file is a canonical integer
    (``7``, not ``07`` or ``+7``), and two spellings of one integer are an error. The
    format is told by the suffix (``.csv``, ``.tsv``; ``.jsonl``, ``.json``, ``.ndjson``) or
    else by the first character (``{`` for JSON lines).

    Returns:
      A validated ``RunSet``; ``metadata`` holds ``source``, ``runs`` (the run names, as
      strings) and ``first_step``.

    Raises:
      ValueError: ``FILE:LINE: problem`` for every malformed input.
    """
    losses_path = _require_file(Path(losses_path), "the long-form losses")
    curricula_path = _require_file(Path(curricula_path), "the long-form curricula")

    # run -> step -> test id -> (loss, line)
    losses: dict[str, dict[int, dict[Id, tuple[float, int]]]] = {}
    test_where: dict[Id, tuple[Path, int]] = {}  # first line of every test id, in order
    for n, row in _table_rows(losses_path, LOSS_COLUMNS):
        run = str(row["run"])
        step = _check_step(row["step"], losses_path, n)
        tid = _check_id(row["test_id"], losses_path, n, "test id")
        loss = _check_number(row["loss"], losses_path, n, f"the loss of test example {tid!r}")
        at_step = losses.setdefault(run, {}).setdefault(step, {})
        if tid in at_step:
            raise _error(
                losses_path,
                n,
                f"run {run!r}, step {step}, test example {tid!r} "
                f"appears twice (also on line {at_step[tid][1]})",
            )
        at_step[tid] = (loss, n)
        test_where.setdefault(tid, (losses_path, n))
    if not losses:
        raise _error(losses_path, None, "no rows (the file is empty)")

    # run -> step -> (ids, lr, line)
    curricula: dict[str, dict[int, tuple[list[Id], float | None, int]]] = {}
    train_where: dict[Id, tuple[Path, int]] = {}
    with_lr: tuple[bool, int] | None = None
    for n, row in _table_rows(curricula_path, CURRICULUM_COLUMNS):
        run = str(row["run"])
        step = _check_step(row["step"], curricula_path, n)
        ids = _split_ids(row["train_ids"], curricula_path, n)
        has_lr = row.get("learning_rate") not in (None, "")
        with_lr = _same_lr_presence(with_lr, has_lr, curricula_path, n, "rows")
        lr = _check_learning_rate(row["learning_rate"], curricula_path, n) if has_lr else None
        steps = curricula.setdefault(run, {})
        if step in steps:
            raise _error(
                curricula_path,
                n,
                f"run {run!r}, step {step} appears twice (also on line {steps[step][2]})",
            )
        steps[step] = (ids, lr, n)
        for i in ids:
            train_where.setdefault(i, (curricula_path, n))
    if not curricula:
        raise _error(curricula_path, None, "no rows (the file is empty)")
    for run in curricula:
        if run not in losses:
            line = min(v[2] for v in curricula[run].values())
            raise _error(
                curricula_path, line, f"run {run!r} has batches but no losses in {losses_path}"
            )

    as_test = _settle_ids(test_where, "test id", kind=_kind_of(test_ids))
    as_train = _settle_ids(train_where, "training id", kind=_kind_of(train_ids))
    runs = []
    for run, by_step in losses.items():
        steps = sorted(by_step)
        first_lines = {s: min(v[1] for v in by_step[s].values()) for s in steps}
        _check_consecutive(steps, first_lines, losses_path, f"run {run!r}")
        if len(steps) < 2:
            raise _error(
                losses_path,
                first_lines[steps[0]],
                f"run {run!r} has losses at one "
                "step only; a run needs L_0 and at least one step after it",
            )
        tids = list(by_step[steps[0]])
        for s in steps[1:]:
            missing = [t for t in tids if t not in by_step[s]]
            extra = [t for t in by_step[s] if t not in set(tids)]
            if missing:
                raise _error(
                    losses_path,
                    None,
                    f"run {run!r} has no loss for test example "
                    f"{missing[0]!r} at step {s} (it has one at step {steps[0]})",
                )
            if extra:
                raise _error(
                    losses_path,
                    by_step[s][extra[0]][1],
                    f"run {run!r}: test example "
                    f"{extra[0]!r} has a loss at step {s} but none at step {steps[0]}",
                )
        matrix = np.asarray([[by_step[s][t][0] for t in tids] for s in steps], np.float64)
        first, last = steps[0], steps[-1]
        if run not in curricula:
            raise _error(
                curricula_path, None, f"run {run!r} has losses in {losses_path} but no batches"
            )
        batches = curricula[run]
        lines = {s: v[2] for s, v in batches.items()}
        for s, (ids, _, line) in batches.items():
            if s > last:
                raise _error(
                    curricula_path,
                    line,
                    f"run {run!r}, step {s} has a batch but its losses end at step {last}",
                )
            if s > first and not ids:
                raise _error(curricula_path, line, f"run {run!r}, step {s} has an empty batch")
        for s in range(first + 1, last + 1):
            if s not in batches:
                raise _error(
                    curricula_path,
                    _first_line_after(lines, s),
                    f"run {run!r}: the batch of step {s} is missing",
                )
        kept = range(first + 1, last + 1)
        runs.append(
            _Run(
                name=run,
                losses_file=losses_path,
                batches_file=curricula_path,
                test_ids=[as_test[t] for t in tids],
                losses=matrix,
                batches=[[as_train[i] for i in batches[s][0]] for s in kept],
                batch_lines=[batches[s][2] for s in kept],
                learning_rates=[batches[s][1] for s in kept] if with_lr[0] else None,
                first_step=first,
            )
        )
    return _assemble(
        runs, pad=pad, train_ids=train_ids, test_ids=test_ids, batch_size=batch_size,
        source="long",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# From raw runs to a RunSet.


def common_length(lengths: Sequence[int], sources: Sequence[str], *, pad: bool) -> int:
    """The number of steps all runs keep: the common length, or the shortest with ``pad``."""
    longest = int(np.argmax(lengths))
    for n, source in zip(lengths, sources):
        if n != lengths[longest] and not pad:
            raise ValueError(
                f"{source}: the run has {n} steps but {sources[longest]} has "
                f"{lengths[longest]}; runs must have the same length (pass pad=True, or --pad, "
                f"to cut every run to the shortest, {min(lengths)} steps)"
            )
    return int(min(lengths))


def _id_kind(ids: Iterable[Id], path: Path, what: str) -> None:
    kinds = {type(i) for i in ids}
    if len(kinds) > 1:
        raise _error(path, None, f"{what} mix integers and strings; use one kind")


def _kind_of(ids: Sequence[Id] | np.ndarray | None) -> type | None:
    """``int`` or ``str``: the kind of a pool passed in (``None`` if none is)."""
    if ids is None:
        return None
    kind = np.asarray(ids).dtype.kind
    return int if kind in "iu" else str if kind == "U" else None


def _id_list(ids: Sequence[Id] | np.ndarray, what: str) -> list[Id]:
    """``ids`` as a list of distinct ints or strings; ``ValueError`` naming a duplicate."""
    values = np.asarray(ids)
    if values.ndim != 1 or values.dtype.kind not in "iuU":
        raise ValueError(f"{what} must be a list of integers or strings, got {values!r}")
    values = values.tolist()
    first: dict[Id, int] = {}
    for k, name in enumerate(values):
        if name in first:
            raise ValueError(f"{what} holds {name!r} twice (entries {first[name]} and {k})")
        first[name] = k
    return values


def _test_order(ref: _Run, test_ids) -> list[Id]:
    """The test ids of ``ref`` in the order of ``test_ids`` (the same set), or as logged."""
    if test_ids is None:
        return ref.test_ids
    order = _id_list(test_ids, "test_ids")
    logged = set(ref.test_ids)
    missing = [t for t in ref.test_ids if t not in set(order)]
    if missing:
        raise _error(ref.losses_file, None, f"test example {missing[0]!r} is logged but not "
                     "in test_ids; test_ids must list every logged test example")  # fmt: skip
    extra = [t for t in order if t not in logged]
    if extra:
        raise _error(ref.losses_file, None, f"test_ids holds {extra[0]!r}, which run "
                     f"{ref.name!r} does not log")  # fmt: skip
    return order


def _assemble(
    runs: list[_Run],
    *,
    pad: bool,
    train_ids,
    source: str,
    test_ids=None,
    batch_size: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> RunSet:
    ref = runs[0]
    ref_set = set(ref.test_ids)
    for run in runs[1:]:
        here = set(run.test_ids)
        missing = [t for t in ref.test_ids if t not in here]
        if missing:
            raise _error(
                run.losses_file,
                None,
                f"run {run.name!r} has no test example {missing[0]!r} (run {ref.name!r} has it)",
            )
        extra = [t for t in run.test_ids if t not in ref_set]
        if extra:
            raise _error(
                run.losses_file,
                None,
                f"run {run.name!r} has test example {extra[0]!r}, which run {ref.name!r} lacks",
            )
    _id_kind(ref.test_ids, ref.losses_file, "test ids")
    test_order = _test_order(ref, test_ids)

    steps = common_length(
        [r.num_steps for r in runs], [f"{r.losses_file} (run {r.name!r})" for r in runs], pad=pad
    )
    has_lr = [r.learning_rates is not None for r in runs]
    if any(has_lr) and not all(has_lr):
        bad = runs[has_lr.index(False)]
        raise _error(
            bad.batches_file,
            None,
            f"run {bad.name!r} has no learning rates but "
            f"run {runs[has_lr.index(True)].name!r} does; give all runs or none",
        )

    if train_ids is None:
        seen = {i for r in runs for b in r.batches[:steps] for i in b}
        for r in runs:
            _id_kind([i for b in r.batches for i in b], r.batches_file, "training ids")
        _id_kind(seen, runs[0].batches_file, "training ids (across runs)")
        pool = sorted(seen)
    else:
        pool = _id_list(train_ids, "train_ids")
    position = {name: i for i, name in enumerate(pool)}

    width = max(len(b) for r in runs for b in r.batches[:steps])
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size < width:
            run, t = next((r, t) for r in runs for t in range(steps) if len(r.batches[t]) == width)
            raise _error(run.batches_file, run.batch_lines[t], f"the batch has {width} ids, "
                         f"more than batch_size = {batch_size}")  # fmt: skip
        width = batch_size
    batches = np.full((len(runs), steps, width), -1, np.int32)
    losses = np.empty((len(runs), steps + 1, len(test_order)), np.float32)
    for k, run in enumerate(runs):
        for t, batch in enumerate(run.batches[:steps]):
            for slot, name in enumerate(batch):
                if name not in position:
                    raise _error(
                        run.batches_file,
                        run.batch_lines[t],
                        f"training id {name!r} is not in train_ids",
                    )
                batches[k, t, slot] = position[name]
        column = {t: j for j, t in enumerate(run.test_ids)}
        order = [column[t] for t in test_order]
        losses[k] = run.losses[: steps + 1][:, order]
    learning_rates = None
    if all(has_lr):
        learning_rates = np.asarray([r.learning_rates[:steps] for r in runs], np.float32)
    metadata = {
        **(metadata or {}),
        "source": source,
        "runs": [r.name for r in runs],
        "first_step": ref.first_step
        if all(r.first_step == ref.first_step for r in runs)
        else [r.first_step for r in runs],
    }
    if any(r.num_steps != steps for r in runs):
        metadata["logged_steps"] = {r.name: r.num_steps for r in runs}
    try:
        return RunSet(
            batches=batches,
            losses=losses,
            num_train=len(pool),
            train_ids=np.asarray(pool),
            test_ids=np.asarray(test_order),
            metadata=metadata,
            learning_rates=learning_rates,
        )
    except ValueError as err:  # every value was checked above; name the input all the same
        raise _error(ref.losses_file, None, str(err)) from None
