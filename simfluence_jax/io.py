"""Files on disk: atomic writes, directory replacement, validated reads, format versions.

Every module that writes or reads our files goes through these functions, so the guarantees
hold in one place:

* **Atomic files.** :func:`atomic_write` writes to a temporary sibling, flushes, fsyncs,
  renames over the target and fsyncs the folder: a reader sees the old file or the new one,
  never a torn one, even after a crash.
* **Atomic folders.** :func:`replace_directory` fills a temporary sibling folder, then swaps
  it in: with one atomic exchange of the two names where the system has it (Linux
  ``renameat2(RENAME_EXCHANGE)``), else by renaming the old folder aside, renaming the new
  one in and only then removing the old. It never deletes before renaming. Readers go through
  :func:`resolve_directory`, which finds the set-aside old version if a crash fell between
  the two renames, so a reader always finds the old or the new version.
* **Temporaries** are named ``.NAME.new.PID@HOST~RANDOM`` (``old`` for a set-aside folder,
  ``del`` for one being deleted);
  :func:`remove_stale` deletes those whose process is gone (same host), so a killed save
  leaves nothing behind after the next save or store open.
* **Permissions follow the umask**, as ``open`` and ``mkdir`` do (``tempfile`` would make
  files 0600 and folders 0700, unreadable to colleagues sharing results).
* **Reads are validated where they happen**: :func:`read_json` and :func:`read_npz` turn a
  missing, truncated or garbled file, text that is not UTF-8, a wrong JSON type, missing
  keys, object arrays (never unpickled) and arrays of the wrong dtype or shape into a
  ``ValueError`` that names the file and the problem.
* :func:`check_format` checks a file's format name and version (a newer version says so).
* :func:`git_revision` is the one way to record the code's commit.

This module is part of the core: it imports only the standard library and NumPy.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import io as _io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
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
#: Use ``renameat2(RENAME_EXCHANGE)`` where available (tests switch it off to exercise the
#: rename-aside path).
USE_EXCHANGE = True


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two existing paths atomically; ``False`` where the system cannot."""
    if not USE_EXCHANGE:
        return False
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


# ---------------------------------------------------------------------------------------------
# Validated reads.


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} is missing") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} is a folder, not a file") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied reading the {what}") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_bytes(path: str | os.PathLike, *, what: str = "file") -> bytes:
    """A file's bytes; ``ValueError`` naming the file if missing, a folder or unreadable."""
    return _read_bytes(Path(path), what)


def read_text(path: str | os.PathLike, *, what: str = "file") -> str:
    """A UTF-8 text file; ``ValueError`` naming the file if missing or not UTF-8."""
    path = Path(path)
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: {what} is not UTF-8 text (byte {err.start}); the file is damaged"
        ) from None


def read_json(
    path: str | os.PathLike,
    *,
    what: str = "JSON file",
    expect: type = dict,
    required: Sequence[str] = (),
    types: Mapping[str, type | tuple[type, ...]] | None = None,
) -> Any:
    """Reads a JSON file and checks it.

    Args:
      path: the file.
      what: how to call it in messages.
      expect: the type of the top-level value (``dict``, ``list``, ...).
      required: keys a ``dict`` must have.
      types: expected types of some keys (checked when present; ``int`` excludes ``bool``).

    Raises:
      ValueError: naming the file and the problem (missing, not UTF-8, not JSON, wrong type,
        missing key, wrong key type).
    """
    path = Path(path)
    text = read_text(path, what=what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {what} is not valid JSON ({err}); the file is damaged") from None
    if not isinstance(value, expect):
        raise ValueError(
            f"{path}: {what} must hold a JSON {_json_type(expect)}, found a "
            f"{_json_type(type(value))}; the file is damaged or not ours"
        )
    if isinstance(value, dict):
        check_keys(path, value, required=required, types=types, what=what)
    return value


def check_keys(
    path: str | os.PathLike,
    value: Mapping,
    *,
    required: Sequence[str] = (),
    types: Mapping[str, type | tuple[type, ...]] | None = None,
    what: str = "JSON file",
) -> None:
    """Checks that ``value`` (read from ``path``) has the ``required`` keys and that keys
    present have the given ``types``; ``ValueError`` naming the file and the key."""
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{path}: {what} lacks the key(s) {missing}; the file is damaged")
    for key, kinds in (types or {}).items():
        if key in value and not _is_instance(value[key], kinds):
            raise ValueError(
                f"{path}: key {key!r} of the {what} must be {_type_names(kinds)}, "
                f"found {value[key]!r}"
            )


def _is_instance(value, kinds) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _type_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(_json_type(k) for k in kinds)


def _json_type(t: type) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(t, t.__name__)


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What an array must look like.

    Attributes:
      kinds: allowed ``dtype.kind`` letters (``"f"`` float, ``"iu"`` integer, ``"b"`` bool,
        ``"U"`` unicode); empty allows any plain dtype.
      shape: one entry per axis: an ``int`` (that size), a ``str`` (a named size that must
        agree across every array that names it, e.g. ``"M"``, ``"N"``) or ``None`` (any);
        ``None`` for the whole shape allows any rank.
      finite: float values must be finite.
      optional: the array may be absent.
    """

    kinds: str = ""
    shape: tuple[int | str | None, ...] | None = None
    finite: bool = False
    optional: bool = False


def check_arrays(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    specs: Mapping[str, ArraySpec],
    sizes: Mapping[str, int] | None = None,
    *,
    what: str = "arrays",
) -> dict[str, int]:
    """Checks ``arrays`` against ``specs``; returns the named sizes (given ``sizes`` plus
    those read off the arrays). ``ValueError`` names the file, the array and the problem."""
    bound = dict(sizes or {})
    origin = {k: "the metadata" for k in bound}
    for name, spec in specs.items():
        if name not in arrays:
            if spec.optional:
                continue
            raise ValueError(f"{path}: array {name!r} is missing from the {what}; damaged")
        arr = np.asarray(arrays[name])
        if arr.dtype.hasobject:
            raise ValueError(f"{path}: array {name!r} holds Python objects; refused")
        if spec.kinds and arr.dtype.kind not in spec.kinds:
            raise ValueError(
                f"{path}: array {name!r} has dtype {arr.dtype}, expected {_kinds(spec.kinds)}"
            )
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise ValueError(
                    f"{path}: array {name!r} has shape {list(arr.shape)}, expected "
                    f"{_shape(spec.shape)}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
                if isinstance(want, int) and want != got:
                    raise ValueError(
                        f"{path}: array {name!r} has shape {list(arr.shape)}, expected "
                        f"{_shape(spec.shape)} (axis {axis} must be {want})"
                    )
                if isinstance(want, str):
                    if want in bound and bound[want] != got:
                        raise ValueError(
                            f"{path}: array {name!r} has shape {list(arr.shape)}: {want} = "
                            f"{got} on axis {axis}, but {want} = {bound[want]} in "
                            f"{origin[want]}; the file is damaged or inconsistent"
                        )
                    bound.setdefault(want, int(got))
                    origin.setdefault(want, f"array {name!r}")
        if spec.finite and arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))
            where = tuple(int(i) for i in bad[0]) if arr.ndim else ()
            raise ValueError(
                f"{path}: array {name!r} has {len(bad)} NaN or infinite value(s) (first at "
                f"index {list(where)}); the file is damaged"
            )
    return bound


def _kinds(kinds: str) -> str:
    names = {"f": "float", "i": "integer", "u": "unsigned", "b": "bool", "U": "unicode"}
    return " or ".join(names.get(k, k) for k in kinds)


def _shape(shape) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def read_npz(
    path: str | os.PathLike,
    specs: Mapping[str, ArraySpec] | None = None,
    sizes: Mapping[str, int] | None = None,
    *,
    what: str = "arrays file",
) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` with ``allow_pickle=False`` and checks them.

    Args:
      path: the file.
      specs: :class:`ArraySpec` per expected array (others are read unchecked).
      sizes: named sizes known from metadata (e.g. ``{"M": 5}``) the arrays must agree with.
      what: how to call the file in messages.

    Raises:
      ValueError: naming the file: missing, truncated or garbled, object arrays, missing
        arrays, wrong dtype or shape.
    """
    path = Path(path)
    data = _read_bytes(path, what)
    if not data.startswith(b"PK"):  # else np.load takes it for a pickle and says so
        raise ValueError(f"{path}: the {what} is truncated or garbled (not a zip archive)")
    try:
        with np.load(_io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{path}: the {what} holds object arrays (pickled); refused") from None
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    except _NPZ_ERRORS as err:
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    if specs:
        check_arrays(path, arrays, specs, sizes, what=what)
    return arrays


def read_npy(
    path: str | os.PathLike,
    *,
    shape: tuple[int, ...] | None = None,
    dtype=None,
    mmap_mode: str | None = None,
    what: str = "array file",
) -> np.ndarray:
    """Reads a ``.npy`` file (``allow_pickle=False``), checking its shape and dtype."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} is missing") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied reading the {what}") from None
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"{path}: the {what} holds object arrays (pickled); refused") from None
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: the {what} is truncated or garbled ({err})") from None
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise ValueError(f"{path}: the {what} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{path}: the {what} has shape {list(arr.shape)}, expected {list(shape)}")
    return arr


# ---------------------------------------------------------------------------------------------
# Format names and versions.


def check_format(path: str | os.PathLike, meta: Mapping, *, name: str, version: int, what: str):
    """Checks ``meta["format"] == name`` and ``meta["version"] == version``.

    Raises:
      ValueError: naming ``path``: not our format, a version that is not an integer, a newer
        version ("written by a newer version of simfluence_jax") or an older one.
    """
    found = meta.get("format")
    if found != name:
        raise ValueError(
            f"{path} is not a simfluence_jax {what} (format {found!r}, expected {name!r})"
        )
    got = meta.get("version")
    if not isinstance(got, int) or isinstance(got, bool):
        raise ValueError(f"{path}: the {what} format version {got!r} is not an integer")
    if got != version:
        hint = (
            "written by a newer version of simfluence_jax; upgrade simfluence_jax to read it"
            if got > version
            else "written by an older version of simfluence_jax; read it with that version"
        )
        raise ValueError(
            f"{path}: the {what} has format version {got}; this version of simfluence_jax "
            f"reads version {version} ({hint})"
        )


# ---------------------------------------------------------------------------------------------
# Storage errors.


def free_space(path: str | os.PathLike) -> str:
    """``"1.2 GiB free"`` on the file system holding ``path`` (or its nearest parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


def storage_errno(err: BaseException) -> int | None:
    """The errno of a storage failure behind ``err`` (an ``OSError``, or a library error
    that wraps one, such as orbax's ``ValueError`` with ``os_error_code='28'``), else
    ``None``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            return err.errno
        text = str(err)
        code = re.search(r"os_error_code='?(\d+)", text)
        if code and int(code.group(1)) in _STORAGE_ERRNOS:
            return int(code.group(1))
        if "No space left on device" in text or "RESOURCE_EXHAUSTED" in text:
            return errno.ENOSPC
        if "Disk quota exceeded" in text:
            return errno.EDQUOT
        if "Permission denied" in text or "PERMISSION_DENIED" in text:
            return errno.EACCES
        if "Read-only file system" in text:
            return errno.EROFS
        err = err.__cause__ or err.__context__
    return None


def storage_advice(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "fix the permissions"
    return "fix the cause"


def storage_reason(code: int | None, err: BaseException) -> str:
    """A short reason: the system's words for ``code``, else the error's first line."""
    if code is not None:
        return os.strerror(code)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# ---------------------------------------------------------------------------------------------
# The code's revision.


def git_revision(path: str | os.PathLike | None = None) -> str:
    """The git commit of the code at ``path`` (default: this package), with ``+dirty`` if
    tracked files are edited, or ``"unknown"`` outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if head and dirty else "")


def split_revision(revision: str) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of a :func:`git_revision` string (``dirty`` is ``None`` if
    unknown)."""
    if revision == "unknown":
        return revision, None
    return revision.removesuffix("+dirty"), revision.endswith("+dirty")
