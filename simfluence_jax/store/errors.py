"""Write errors of a run store: a storage failure (disk full, permissions) becomes a
:class:`StoreWriteError` that names the path and the free space."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from simfluence_jax import fileio


class StoreWriteError(OSError):
    """Writing to the run store failed (disk full, permissions, ...); the message names the
    path and the free space."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def write_error(err: BaseException, path: Path, what: str, *, resume: bool = True):
    """A :class:`StoreWriteError` for a storage failure behind ``err``, else ``None``."""
    if isinstance(err, StoreWriteError):
        return err
    code = fileio.storage_errno(err)
    if code is None and not isinstance(err, OSError):
        return None
    tail = (
        f"Runs already complete are intact; {fileio.storage_advice(code)} and rerun to resume"
        if resume
        else f"{fileio.storage_advice(code).capitalize()} and retry"
    )
    return StoreWriteError(
        code or getattr(err, "errno", None) or 0,
        f"could not write {what} ({path}): {fileio.storage_reason(code, err)}; "
        f"{fileio.free_space(path)} there. {tail}",
    )


@contextlib.contextmanager
def storage_guard(path: Path, what: str, *, resume: bool = True) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        wrapped = write_error(err, path, what, resume=resume)
        if wrapped is None:
            raise
        raise wrapped from None
