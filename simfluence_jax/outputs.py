"""Output folders: one writer each, and replacing only what simfluence_jax wrote.

Every command that writes a folder (``simfluence run``, ``generate``, ``fit``, ``import``,
``report``) first *claims* it with :func:`claim`:

* **One writer.** An advisory lock (:class:`simfluence_jax.locks.FileLock`) on
  ``.NAME.lock`` beside the folder ``NAME`` is taken before anything is written, the
  operative config included, and held until the command ends. A second process on the same
  folder stops at once with a ``StoreBusyError`` naming the first (pid, host, command, since
  when), or waits for it (``wait``). The lock lives beside the folder, not in it, so a
  folder that is swapped whole (a run set) keeps its lock, and it dies with its process.
* **Ours or nothing.** A folder we write *into* (``kind="folder"``) carries a marker file,
  ``.simfluence_output``, written when it is claimed; an existing folder that is not empty
  and has neither the marker nor an ``operative_config.gin`` (what earlier versions left)
  holds someone else's files and is refused, nothing touched. A folder we *replace*
  (``kind="runset"``, ``simfluence import``) is replaced only with ``overwrite=True`` and
  only if every entry in it is a file of a run set we saved (``meta.json`` of our format and
  its arrays); the replacement itself is atomic (:func:`simfluence_jax.fileio.replace_directory`).
  A ``RunLogger`` folder (its logs are the only copy of the runs) is never replaced.

This module is part of the core: it imports only the standard library and NumPy.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path

from simfluence_jax import fileio
from simfluence_jax.locks import FileLock
from simfluence_jax.runs import FORMAT_NAME as _RUNSET_FORMAT

#: The file that marks a folder as written by simfluence_jax.
MARKER = ".simfluence_output"
MARKER_FORMAT = "simfluence_jax.output"
#: Files whose presence marks a folder written by an earlier version of simfluence_jax.
_LEGACY_MARKERS = ("operative_config.gin",)
KINDS = ("folder", "runset")


def resolve(path: str | os.PathLike) -> Path:
    """The absolute form of an output folder (``.`` becomes the working directory's path);
    ``ValueError`` for a path with no name of its own (``/``) or one that names a file."""
    raw = os.fspath(path)
    if not raw.strip():
        raise ValueError("the output folder is empty text; give a folder name")
    out = Path(os.path.abspath(raw))
    if not out.name:
        raise ValueError(f"cannot write into {raw!r}: the output must be a folder with a name")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is a file, not a folder")
    return out


def lock_file(path: str | os.PathLike) -> Path:
    """The lock of output folder ``path``: ``.NAME.lock`` beside it."""
    out = resolve(path)
    return out.parent / f".{out.name}.lock"


def _entries(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except PermissionError:
        raise ValueError(f"permission denied reading the output folder {path}") from None


def _is_marked(path: Path) -> bool:
    if (path / MARKER).is_file():
        return True
    return any((path / name).is_file() for name in _LEGACY_MARKERS)


def _foreign_runset_entries(path: Path, entries: list[str]) -> list[str]:
    """The entries of ``path`` that are not part of a run set we saved (all of them if its
    ``meta.json`` is not ours)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return entries
    if not isinstance(meta, dict) or meta.get("format") != _RUNSET_FORMAT:
        return entries
    ours = {"meta.json", MARKER, meta.get("arrays_file", "arrays.npz")}
    return [e for e in entries if e not in ours and not fileio.is_temporary(e)]


def check_ownership(path: str | os.PathLike, *, kind: str, overwrite: bool = False) -> None:
    """Raises ``ValueError`` (nothing touched) if writing ``path`` as ``kind`` could destroy
    files simfluence_jax did not write (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; known: {list(KINDS)}")
    out = resolve(path)
    entries = _entries(out)
    if not entries:
        return
    if kind == "folder":
        if not _is_marked(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise ValueError(
                f"{out} is not empty and was not written by simfluence_jax (it holds {shown}); "
                "choose a new or empty folder"
            )
        return
    if "logger.json" in entries:
        raise ValueError(
            f"{out} holds a RunLogger's logs (the only copy of those runs); it is never "
            "replaced: choose another folder"
        )
    foreign = _foreign_runset_entries(out, entries)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"{out} is not a run set written by simfluence_jax (it holds {shown}); it is not "
            "replaced, even with --overwrite: choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(f"{out} already holds a run set; pass --overwrite to replace it")


def _mark(path: Path, command: str) -> None:
    if (path / MARKER).exists():
        return
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    fileio.atomic_json(path / MARKER, {"format": MARKER_FORMAT, "command": command, "since": since})


@contextlib.contextmanager
def claim(
    path: str | os.PathLike,
    *,
    command: str,
    kind: str = "folder",
    overwrite: bool = False,
    wait: bool | float = False,
    shared: bool = False,
) -> Iterator[Path]:
    """Locks output folder ``path`` for this process and checks that it may be written.

    Args:
      path: the output folder (need not exist; its parent is created).
      command: what this process does there (written into the lock, e.g. ``"simfluence fit"``).
      kind: ``"folder"``, a folder written into (created and marked here), or ``"runset"``,
        a folder replaced whole by ``RunSet.save`` (not created here).
      overwrite: for ``"runset"``: replace a run set we saved.
      wait: ``False`` fails at once if another process holds the folder, ``True`` waits, a
        number waits at most that many seconds.
      shared: a shared claim (the processes of one multi-process ``generate``).

    Yields:
      The absolute path of the folder.

    Raises:
      StoreBusyError: another process holds the folder (and it was not waited for).
      ValueError: the folder holds files simfluence_jax did not write, or (``"runset"``)
        already holds a run set and ``overwrite`` is not set.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; known: {list(KINDS)}")
    out = resolve(path)
    fileio.make_dirs(out.parent)
    lock = FileLock(lock_file(out), what=f"the output folder {out}", doing=command)
    lock.acquire(wait=wait, shared=shared)
    try:
        check_ownership(out, kind=kind, overwrite=overwrite)
        if kind == "folder":
            fileio.make_dirs(out)
            _mark(out, command)
        yield out
    finally:
        lock.release()
