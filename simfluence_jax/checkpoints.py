"""Orbax checkpoints of parameter pytrees, written so that a folder under its final name is
always complete.

:func:`save` writes the checkpoint under a temporary name next to its target, reads it back
and compares it bit for bit with the tree it was given, and only then renames it into place;
a killed or failed save leaves a temporary folder (removed by
:func:`simfluence_jax.io.remove_stale`), never a half-written checkpoint under the final name.
:func:`problem` says what is wrong with a folder (missing, only the commit files of an
interrupted save, unreadable, other contents), :func:`restore` reads one or raises a
``ValueError`` naming the folder.

Checkpoints are process-local: each process of a ``jax.distributed`` job saves and reads its
own (no barrier with the other processes). The run store (``simfluence_jax.store``) keeps
one per chosen step of every run, for TracIn-CP; ``training.pretrain`` keeps the pretrained
parameters with the same checkpointer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from simfluence_jax import io as sio

#: Files every complete orbax checkpoint folder holds.
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "_METADATA")


def checkpointer():
    """A process-local orbax ``Checkpointer`` (``StandardCheckpointHandler``)."""
    import orbax.checkpoint as ocp

    mp = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    handler = ocp.StandardCheckpointHandler(multiprocessing_options=mp)
    return ocp.Checkpointer(handler, multiprocessing_options=mp)


def save_args(tree):
    import orbax.checkpoint as ocp

    return ocp.args.StandardSave(tree)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences orbax's logger, which prints a long traceback per worker thread when a save
    fails (the failure itself still raises, and is reported as one error)."""
    logger = logging.getLogger("absl")
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before


@contextlib.contextmanager
def _numpy_writes_here() -> Iterator[None]:
    """Lets this process write the NumPy leaves of its own checkpoint in a multi-process job.

    orbax 0.12's NumPy handler writes array data only from process 0, so a checkpoint saved
    by process 1 of a ``jax.distributed`` job would hold its metadata and no data. The
    handler's gate is lifted for the duration of this process's save. orbax is pinned
    (setup.py) and every save is read back, so a change in orbax shows as an error, not as
    empty checkpoints; ``tests/test_distributed.py`` exercises it on a second process.
    """
    if jax.process_count() == 1:
        yield
        return
    from orbax.checkpoint._src.serialization import type_handlers

    real = type_handlers.multihost

    class _ThisProcessWrites:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def process_index() -> int:
            return 0

    type_handlers.multihost = _ThisProcessWrites()
    try:
        yield
    finally:
        type_handlers.multihost = real


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}"


def problem(
    folder: str | os.PathLike,
    *,
    keys: set[str] | None = None,
    expected: Any = None,
    check: Any = None,
) -> str | None:
    """What is wrong with a checkpoint folder, or ``None`` if it is complete.

    Only its files are checked unless more is asked: ``keys`` (the top-level keys the tree
    must have), ``expected`` (a tree it must equal bit for bit) or ``check`` (a function of
    the restored tree returning a problem or ``None``) read it back.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "is missing"
    missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
    if missing:
        return f"is incomplete (no {', '.join(missing)})"
    if keys is None and expected is None and check is None:
        return None
    try:
        with quiet():
            tree = checkpointer().restore(folder.absolute())
    except Exception as err:  # orbax raises many kinds; all mean "not readable"
        return f"cannot be read ({_first_line(err)})"
    if keys is not None and (not isinstance(tree, dict) or set(tree) != set(keys)):
        return f"does not hold {sorted(keys)}"
    if check is not None:
        found = check(tree)
        if found is not None:
            return found
    if expected is not None:
        got, want = jax.tree_util.tree_flatten(tree), jax.tree_util.tree_flatten(expected)
        same = got[1] == want[1] and all(
            np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
            for a, b in zip(got[0], want[0])
        )
        if not same:
            return "differs from the tree it should hold"
    return None


def save(folder: str | os.PathLike, tree) -> None:
    """Saves ``tree`` (host arrays) to ``folder``, which must not exist: written under a
    temporary name, read back and compared, then renamed into place.

    Raises:
      ValueError: if the checkpoint does not read back as ``tree``.
      OSError, or orbax's errors: from the file system (the caller names them; see
        ``simfluence_jax.io.storage_errno``).
    """
    folder = Path(folder)
    tmp = sio.temp_sibling(folder)
    sio.make_dirs(folder.parent)
    try:
        with quiet(), _numpy_writes_here():
            checkpointer().save(tmp.absolute(), args=save_args(tree))
        found = problem(tmp, expected=tree)
        if found is not None:
            raise ValueError(f"{folder}: the checkpoint did not read back: {found}")
        os.rename(tmp, folder)
        sio.fsync_dir(folder.parent)
    finally:
        for leftover in folder.parent.glob(f"{tmp.name}*"):  # orbax adds its own suffix
            shutil.rmtree(leftover, ignore_errors=True)


def restore(folder: str | os.PathLike, *, keys: set[str] | None = None):
    """The tree saved in ``folder``.

    Raises:
      ValueError: naming the folder if it is missing, incomplete, unreadable or (with
        ``keys``) does not hold those top-level keys.
    """
    folder = Path(folder)
    found = problem(folder)
    tree = None
    if found is None:
        try:
            with quiet():
                tree = checkpointer().restore(folder.absolute())
        except Exception as err:
            found = f"cannot be read ({_first_line(err)})"
    if found is None and keys is not None and (not isinstance(tree, dict) or set(tree) != keys):
        found = f"does not hold {sorted(keys)}"
    if found is not None:
        raise ValueError(f"{folder}: the checkpoint {found}")
    return tree


def discard(folder: str | os.PathLike) -> None:
    """Removes a folder by renaming it aside first (never half-deleted under its name)."""
    folder = Path(folder)
    aside = sio.temp_sibling(folder, "del")
    os.rename(folder, aside)
    shutil.rmtree(aside, ignore_errors=True)
