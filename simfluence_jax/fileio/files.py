"""Atomic files and folders (see :mod:`simfluence_jax.fileio`): temporary names, atomic writes of
files, atomic replacement of folders, and the removal of temporaries left by dead processes."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io as _io
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Temporary names.

_HOST = socket.gethostname().replace("~", "-").replace("/", "-") or "localhost"
#: ``.NAME.TAG.PID@HOST~RANDOM``, possibly followed by a suffix a library added (orbax).
_TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?P<tag>new|old|del)\.(?P<pid>\d+)@(?P<host>[^~]+)~[0-9a-f]+(\..*)?$"
)


def hostname() -> str:
    """This machine's name, as written into temporary names and lock files."""
    return _HOST


def _temp_name(name: str, tag: str) -> str:
    return f".{name}.{tag}.{os.getpid()}@{_HOST}~{secrets.token_hex(4)}"


def temp_sibling(path: str | os.PathLike, tag: str = "new") -> Path:
    """A fresh temporary name next to ``path`` (not created), owned by this process."""
    path = Path(path)
    return path.with_name(_temp_name(path.name, tag))


def is_temporary(name: str) -> bool:
    """Whether a file name is one of our temporaries (``.NAME.new.PID@HOST~RANDOM``, ...)."""
    return _TEMP.match(name) is not None


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes a rename inside ``path`` durable (best effort where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Removes temporaries in ``folder`` (of ``name`` only, if given) left by processes of
    this host that no longer run; returns what was removed. Temporaries of live processes
    and of other hosts are kept."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if match["host"] != _HOST or process_alive(int(match["pid"])):
            continue
        if match["tag"] == "old" and not (folder / match["name"]).exists():
            continue  # the only copy left of a folder whose replacement was interrupted
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------------
# Atomic writes.


def atomic_write(
    path: str | os.PathLike, data: bytes | str, *, check: Callable[[Path], Any] | None = None
) -> None:
    """Writes ``data`` (``str`` as UTF-8) to ``path`` atomically (see module docstring).

    ``check``, if given, is called with the temporary file once the data is on disk and
    before it is renamed into place; if it raises, the temporary file is removed, ``path``
    is left as it was and the error propagates (used to read a file back before it counts).
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = temp_sibling(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented, key-sorted JSON (``ValueError`` if not serialisable)."""
    try:
        return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8")
    except TypeError as err:
        raise ValueError(f"not JSON-serialisable: {err}") from None


def atomic_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json_bytes(obj))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of plain arrays; object arrays are refused (no pickle)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise ValueError(f"array {key!r} holds Python objects; only plain arrays are saved")
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def atomic_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    atomic_write(path, npz_bytes(arrays))


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` (folders follow the umask)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# Directory replacement ------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths atomically (``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the system cannot, and :func:`replace_directory` renames the old version aside instead."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    res = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _aside_versions(path: Path) -> list[Path]:
    """Old versions set aside by an interrupted replacement of ``path``, newest first."""
    prefix = f".{path.name}.old."
    try:
        found = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def resolve_directory(path: str | os.PathLike) -> Path:
    """``path``, or the old version a crash left set aside if ``path`` itself is missing."""
    path = Path(path)
    if path.exists():
        return path
    aside = _aside_versions(path)
    return aside[0] if aside else path


@contextlib.contextmanager
def replace_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder; when the block ends without error, the folder
    replaces ``path`` atomically (see module docstring); on error it is removed and ``path``
    is left as it was. Every file written into it is fsync'ed before the swap."""
    path = Path(path)
    make_dirs(path.parent)
    remove_stale(path.parent, path.name)
    tmp = temp_sibling(path)
    os.mkdir(tmp)  # 0o777 less the umask, unlike tempfile.mkdtemp's 0o700
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for f in files:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(root)
        if path.exists() and _exchange(tmp, path):
            fsync_dir(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
            return
        if path.exists():
            old = temp_sibling(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
            fsync_dir(path.parent)
        for stale in _aside_versions(path):
            shutil.rmtree(stale, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files(folder: Path, files: Mapping[str, bytes | str]) -> None:
    """Writes small files into a fresh folder (made by :func:`replace_directory`)."""
    for name, data in files.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
